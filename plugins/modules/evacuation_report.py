#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) kvm_ras.poison_guard contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

# Documentation only: the work is done by the action plugin plugins/action/evacuation_report.py,
# which also validates its options against the options documented here.

from __future__ import annotations

DOCUMENTATION = r"""
---
module: evacuation_report
short_description: Verify a hypervisor evacuation and write its report on the controller
version_added: 0.1.0
description:
  - Action plugin that runs on the controller, on facts gathered after the migrations. It
    contacts no host.
  - Verifies every VM the source had when the evacuation began. A VM must run exactly once, on
    the source or on one target. A VM that moved must be defined on its new host (when it was
    persistent) and no longer on the source. A VM runs nowhere (V(down)), twice (V(duplicate)),
    or could not be verified (V(unverified)) because a host that might run it did not answer.
    The QEMU process list of a host whose libvirt is down counts as an answer for where a VM
    runs, not for its definition. A VM that runs on a target while the source could not be
    asked is V(unverified), never V(migrated).
  - Lists in RV(restore) the VMs that ran on the source at the start, now run nowhere, and are
    still defined on a reachable host, so the playbook can start them again before the final
    report.
  - With O(write=true), writes the report as JSON and as a table (C(<source>-<UTC time>.json)
    and C(.txt)) to the request's C(evacuate_report_dir) on the controller. The files are
    created new (C(O_EXCL|O_NOFOLLOW)), never written through an existing name or symlink, and
    a directory that climbs with C(..) is refused. Sets
    RV(evacuation_failed) by the exit rule. The evacuation fails when a VM stays on the source
    without the operator's consent, runs nowhere or twice, could not be verified, or has a
    definition in the wrong place. A VM may stay when C(evacuate_leave_vms) names it, or when
    the C(leave) policy that kept it (C(evacuate_poisoned_vm_policy), C(evacuate_unknown_vm_policy))
    was given explicitly; a C(leave) that is only the default fails the run, and so does a clean
    VM the gate blocked. VMs that were not running do not fail it. The report lists the VMs left
    without consent under C(left_without_consent), and the message names each with the way forward.
  - The report files are the run's record, not a change to any managed host, so the task
    reports C(changed=false).
author:
  - kvm_ras maintainers (@kvm-ras)
extends_documentation_fragment:
  - kvm_ras.poison_guard.attributes
  - kvm_ras.poison_guard.attributes.DECISION_ACTION
  - kvm_ras.poison_guard.attributes.ACTION_PLUGIN
options:
  request:
    description: RV(kvm_ras.poison_guard.evacuation_request#module:request) of the run.
    type: dict
    required: true
  run:
    description: RV(kvm_ras.poison_guard.evacuation_request#module:run) of the run.
    type: dict
    required: true
  plan:
    description: RV(kvm_ras.poison_guard.evacuation_plan#module:plan) of the run.
    type: dict
    required: true
  vm_results:
    description:
      - What the steps of each VM that moved registered, one dict per VM with C(name) (the VM, as in
        the plan) and the registered results of its steps under C(journal), C(reboot), C(recheck),
        C(gate), C(migrate), C(holes_check) (M(kvm_ras.poison_guard.poison_info) of the VM on its
        target after a move with its holes) and C(cold) (a step that did not run is missing or
        skipped).
      - A VM of the plan that moves and has no entry here did not start (its outcome says so).
    type: list
    elements: dict
    default: []
  vm_hosts:
    description:
      - Deprecated, use O(vm_results); read only when O(vm_results) is empty, until 1.0.0.
      - Inventory names of the per-VM hosts of the run, whose variables C(evacuation_vm) (the plan entry)
        and C(evacuation_vm_results) (the results) are read from C(hostvars).
    type: list
    elements: str
    default: []
  states:
    description:
      - Results of M(kvm_ras.poison_guard.host_capacity_info) on the source and the targets after the
        run, as the C(results) of a loop (each with its C(item)) or a dict host -> result.
    type: raw
    required: true
  restored:
    description: Results of restarting the VMs from RV(restore) (a loop's C(results) over RV(restore)).
    type: list
    elements: dict
    default: []
  resumed:
    description:
      - RV(kvm_ras.poison_guard.evacuation_journal#module:resumed) of the run, that is the operations an
        interrupted run had in flight and this run finished first. The report lists them under C(resumed).
    type: list
    elements: dict
    default: []
  write:
    description: Write the report files and apply the exit rule.
    type: bool
    default: true
seealso:
  - module: kvm_ras.poison_guard.evacuation_request
  - module: kvm_ras.poison_guard.evacuation_plan
"""

EXAMPLES = r"""
- name: Verify and write the report
  kvm_ras.poison_guard.evacuation_report:
    request: "{{ evacuation.request }}"
    run: "{{ evacuation.run }}"
    plan: "{{ plan.plan }}"
    vm_results:
      - name: web01
        journal: "{{ journal }}"
        migrate: "{{ migrate }}"
    states: "{{ after.results }}"
  register: report
"""

RETURN = r"""
restore:
  description: VMs to start again, each C({name, host}).
  returned: always
  type: list
  elements: dict
  sample: [{name: db01, host: hv1}]
report:
  description:
    - The report (also written as JSON). C(vms) has one entry per VM of the source with
      C(name), C(status) (V(migrated), V(left), V(stayed), V(not_running), V(down),
      V(duplicate), V(unverified)), C(action), C(target), C(running_on), C(defined_on),
      C(duration_s), C(failure_class), C(reason), C(steps), C(problems), C(notes), C(evidence),
      C(with_holes) (planned to move with its poisoned pages carried as holes,
      C(evacuate_poisoned_vm_policy=migrate_with_holes)) and C(holes_carried) (the target QEMU's
      poison list after that migration, RV(kvm_ras.poison_guard.live_migrate#module:holes_carried);
      null otherwise) and C(holes_verified) (V(true) when M(kvm_ras.poison_guard.poison_info) on the
      target found every carried page as a POISONED PTE marker at the same guest address and in the
      target QEMU's list, V(false) when not, null when not checked).
    - C(resumed) lists what the run finished first of an interrupted run, one item per journal entry
      with C(name), C(operation), C(run_id), C(target), C(found), C(action), C(ok) and C(message).
    - C(left_on_source) names the VMs still on the source; C(left_without_consent) those of them the
      operator did not spell out may stay (each fails the run).
  returned: when O(write=true)
  type: dict
  sample:
    source: hv1
    failed: false
    msg: "evacuation done: 5 VM(s) moved, 1 left on the source as asked: db01"
    left_on_source: [db01]
    source_empty: false
lines:
  description: The report as a table, one line per item.
  returned: when O(write=true)
  type: list
  elements: str
  sample: ["Evacuation report: hv1", "VM     STATUS    ACTION  ..."]
files:
  description: Paths of the report files written on the controller.
  returned: when O(write=true)
  type: dict
  sample: {json: /home/ops/evacuation-reports/hv1-20260301T025901Z.json, text: /home/ops/evacuation-reports/hv1-20260301T025901Z.txt}
evacuation_failed:
  description: True when the exit rule says the evacuation failed.
  returned: when O(write=true)
  type: bool
  sample: false
"""
