#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) kvm_ras.poison_guard contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

# Documentation only: the work is done by the action plugin plugins/action/evacuation_plan.py,
# which also validates its options against the options documented here.

from __future__ import annotations

DOCUMENTATION = r"""
---
module: evacuation_plan
short_description: Plan a hypervisor evacuation - which VM goes where, or why it stays
version_added: 0.1.0
description:
  - Action plugin that runs on the controller only, on facts gathered before, namely the source's VMs
    (M(kvm_ras.poison_guard.host_capacity_info)), their poison status
    (M(kvm_ras.poison_guard.poison_info)), the gate's decision
    (M(kvm_ras.poison_guard.migration_gate)) and every target's capacity.
  - Decides per running VM from its poison status, the gate and the policies. A V(clean) VM the
    gate allowed is live-migrated. A V(poisoned) VM follows C(evacuate_poisoned_vm_policy). A V(unknown)
    VM follows C(evacuate_unknown_vm_policy). VMs listed in C(evacuate_leave_vms) stay.
  - Places each VM that moves on a usable target with room. Cordoned targets, targets being
    evacuated themselves and targets whose libvirt did not answer are not used. Room means free
    memory (minus C(evacuate_memory_reserve_mib)) and vCPUs (logical CPUs x C(evacuate_cpu_allocation_ratio)
    minus vCPUs in use). A cold migration also needs the VM's disks on the target. Largest VMs
    are placed first, each on the target that keeps the most headroom on its scarcer resource
    (the smaller of its free shares of memory and of vCPUs after the VM), so the load spreads.
    A VM that fits nowhere stays, with the reason.
  - Returns the plan and its table (RV(lines)). Fails, before anything changes, when VMs should
    move but no target is usable.
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
  source:
    description: Result of M(kvm_ras.poison_guard.host_capacity_info) on the source.
    type: dict
    required: true
  targets:
    description:
      - Results of M(kvm_ras.poison_guard.host_capacity_info) on the targets. Either the C(results)
        of a loop over the targets (each with its C(item)), or a dict target -> result.
    type: raw
    required: true
  poison_info:
    description: Result of M(kvm_ras.poison_guard.poison_info) on the source.
    type: dict
    required: true
  gate:
    description: Result of M(kvm_ras.poison_guard.migration_gate) on the source, for live migration.
    type: dict
    required: true
  preflight:
    description:
      - Result of M(kvm_ras.poison_guard.migration_preflight) on the source. A target it did not
        find usable, and a VM it did not find usable on a target, get no VM there; the plan shows
        its lines (per target and per VM C(usable), and why not, with the fix).
      - Left out, no preflight is applied (the playbook always gives it).
    type: dict
  holes_targets:
    description:
      - With C(evacuate_poisoned_vm_policy=migrate_with_holes), the results of
        M(kvm_ras.poison_guard.qemu_guard_info) on the targets (the C(results) of a loop over the
        targets, or a dict target -> result); read only with that policy.
      - A poisoned VM goes only to a target whose QEMU carries C(x-poison-holes)
        (RV(kvm_ras.poison_guard.qemu_guard_info#module:binary.poison_holes)) and whose kernel
        has C(UFFDIO_POISON) (RV(kvm_ras.poison_guard.qemu_guard_info#module:uffd_poison)), and
        only when its own running QEMU carries the capability and lists every hole
        (M(kvm_ras.poison_guard.migration_gate)'s C(migrate_with_holes) rule). A target whose
        result is missing or failed does not qualify (fail closed). RV(plan.holes_targets) says
        which targets qualify and why the others do not; a VM for which none does stays, with
        the reasons.
    type: raw
  check_mode:
    description: Say in the plan's title that nothing will change.
    type: bool
    default: false
seealso:
  - module: kvm_ras.poison_guard.evacuation_request
  - module: kvm_ras.poison_guard.evacuation_report
"""

EXAMPLES = r"""
- name: Plan the evacuation
  kvm_ras.poison_guard.evacuation_plan:
    request: "{{ evacuation.request }}"
    source: "{{ source_capacity }}"
    targets: "{{ target_capacity.results }}"
    poison_info: "{{ poison }}"
    gate: "{{ gate }}"
  register: plan

- name: Show it
  ansible.builtin.debug:
    msg: "{{ plan.lines }}"
"""

RETURN = r"""
plan:
  description: The plan.
  returned: always
  type: dict
  contains:
    source:
      description: The source.
      type: str
    targets:
      description: Each target with C(usable), C(reason) when not, free memory and vCPUs left after the plan, and the VMs C(assigned).
      type: list
      elements: dict
    vms:
      description:
        - One entry per VM of the source, with C(name), C(uuid), C(status) (poison status or
          C(not running)), C(action) (V(live_migrate), V(reboot_then_migrate), V(cold_migrate),
          V(leave), V(none)), C(target), C(dest_uri), C(timeout), C(memory_mib), C(vcpus),
          C(reason), C(evidence).
      type: list
      elements: dict
    counts:
      description: Number of VMs per action.
      type: dict
    moves:
      description: Number of VMs that move.
      type: int
    holes_targets:
      description:
        - With C(evacuate_poisoned_vm_policy=migrate_with_holes), per target C(name),
          C(qualifies), C(reasons) (each failed condition with its fix) and C(facts)
          (C(poison_holes), C(uffd_poison)); null with another policy.
        - A poisoned VM moved this way has C(with_holes=true) and C(target_facts) in RV(plan.vms).
      type: list
      elements: dict
  sample:
    source: hv1
    moves: 1
    counts: {live_migrate: 1, leave: 1}
    vms:
      - {name: web01, status: clean, action: live_migrate, target: hv2, dest_uri: "qemu+tls://hv2/system", timeout: 360}
      - {name: db01, status: poisoned, action: leave, target: null,
         reason: "Can't migrate this vm with hardware poisoned memory, please reboot the vm and try again"}
lines:
  description: The plan as a table, one line per item.
  returned: always
  type: list
  elements: str
  sample: ["Evacuation plan for hv1", "VM     STATUS    ACTION        TARGET  ..."]
"""
