#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) kvm_ras.poison_guard contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

# Documentation only: the work is done on the controller by the action plugin
# plugins/action/fleet_report.py, which also validates its options against the options
# documented here.

from __future__ import annotations

DOCUMENTATION = r"""
---
module: fleet_report
short_description: Start a fleet poison report, or merge its parts into one JSON and HTML report
version_added: 0.1.0
description:
  - Action plugin that runs on the controller. A fleet report collects the
    M(kvm_ras.poison_guard.poison_info) results of many hypervisors.
    M(kvm_ras.poison_guard.fleet_report_part) records each hypervisor's result as one part
    file, and this plugin merges the parts.
  - O(state=started) checks the settings, picks a new report id when none is given and creates
    C(<report_dir>/<report_id>/). Run it once before the scan, for example with C(run_once).
  - O(state=merged) reads every part of the report and writes C(fleet_report.json), which
    validates against C(schemas/fleet_report.schema.json) in the collection, and
    C(fleet_report.html), a self-contained page for people. Hosts with poisoned VMs come
    first. The page shows each VM's status, evidence and the migration guard of its running
    QEMU, the hosts' memory-failure counters, and a chart of VMs by status per host.
  - Every host in O(hosts) is in the report. Hosts whose scan failed or that were unreachable
    have the error. Hosts without a part are V(missing).
  - Slices of an AWX sliced job template write parts of the same report. A separate job that
    is not sliced merges them. See the collection's C(docs/poison_report.md).
author:
  - kvm_ras maintainers (@kvm-ras)
extends_documentation_fragment:
  - kvm_ras.poison_guard.attributes
  - kvm_ras.poison_guard.attributes.ACTION_PLUGIN
  - kvm_ras.poison_guard.attributes.CONTROLLER_ONLY
attributes:
  check_mode:
    details:
      - In check mode nothing is created or written. O(state=merged) still merges the parts
        already on disk and returns the summary.
options:
  state:
    description:
      - V(started) checks O(report_dir) and O(report_id), chooses a new report id when
        O(report_id) is not given and creates the report's directory.
      - V(merged) merges the parts of O(report_id) and writes the JSON and HTML report.
    type: str
    choices: [started, merged]
    default: merged
  report_id:
    description:
      - Id of the report, a directory name of 1 to 128 letters, digits, C(.), C(_) or C(-)
        that starts with a letter or digit.
      - With O(state=started) it may be left out. A new id is then made from the UTC time and
        a random token, for example C(20250301T101112Z-3fa9c1).
      - Required with O(state=merged).
    type: str
  report_dir:
    description:
      - Directory on the controller that holds the reports, one subdirectory per report id.
      - A relative path is taken from the directory C(ansible-playbook) runs in.
      - Under AWX job slicing every slice and the merge job must see the same directory (shared
        storage mounted into the execution environment).
    type: path
    default: reports/poison
  hosts:
    description:
      - Inventory names of every host the report must account for, usually
        C(ansible_play_hosts_all). Hosts without a part are reported as V(missing).
      - Parts of hosts not listed are left out of the report and named in its
        C(ignored_parts).
      - Not given means the hosts that have parts.
      - Only used with O(state=merged).
    type: list
    elements: str
  hosts_pattern:
    description: The inventory pattern that was scanned, shown in the report.
    type: str
  html_template:
    description:
      - Jinja2 template of the HTML page, looked up like the C(src) of
        M(ansible.builtin.template) (the role's or playbook's C(templates) directory, or a
        path).
      - The template is rendered with autoescaping on. It gets C(report) (the JSON report),
        C(summary), C(chart) (the bar chart's geometry) and C(colors).
      - Not given means the template shipped with the collection,
        C(playbooks/templates/fleet_report.html.j2).
    type: str
notes:
  - Report files are replaced atomically (write, then rename). Merging again, for example after
    re-running a failed slice, replaces the report.
  - Old reports are never deleted.
seealso:
  - module: kvm_ras.poison_guard.fleet_report_part
  - module: kvm_ras.poison_guard.poison_info
"""

EXAMPLES = r"""
- name: Start a report
  kvm_ras.poison_guard.fleet_report:
    state: started
    report_dir: /srv/poison-reports
  run_once: true
  register: report

- name: Merge the parts once every host has been scanned
  kvm_ras.poison_guard.fleet_report:
    state: merged
    report_dir: /srv/poison-reports
    report_id: "{{ report.report_id }}"
    hosts: "{{ ansible_play_hosts_all }}"
  run_once: true
  register: fleet

- name: Show the poisoned VMs
  ansible.builtin.debug:
    msg: "{{ item.name }} on {{ item.host }}"
  loop: "{{ fleet.poisoned_vms }}"
  run_once: true
"""

RETURN = r"""
report_id:
  description: The report id (the one chosen when O(state=started) had none).
  returned: always
  type: str
  sample: 20250301T101112Z-3fa9c1
report_dir:
  description: O(report_dir) as an absolute path.
  returned: always
  type: str
  sample: /srv/poison-reports
path:
  description: Directory of this report.
  returned: always
  type: str
  sample: /srv/poison-reports/20250301T101112Z-3fa9c1
json_path:
  description: Path of C(fleet_report.json).
  returned: when O(state=merged)
  type: str
  sample: /srv/poison-reports/20250301T101112Z-3fa9c1/fleet_report.json
html_path:
  description: Path of C(fleet_report.html).
  returned: when O(state=merged)
  type: str
  sample: /srv/poison-reports/20250301T101112Z-3fa9c1/fleet_report.html
summary:
  description: The report's summary (see C(schemas/fleet_report.schema.json)).
  returned: when O(state=merged)
  type: dict
  contains:
    hosts_total:
      description: Hosts in the report.
      type: int
    hosts:
      description: Hosts per status (V(poisoned), V(unknown), V(failed), V(unreachable), V(missing), V(clean)).
      type: dict
    hosts_not_scanned:
      description: Hosts that are V(failed), V(unreachable) or V(missing).
      type: int
    vms_total:
      description: VMs in the report.
      type: int
    vms:
      description: VMs per status (V(poisoned), V(unknown), V(clean)).
      type: dict
    poisoned_vms_unguarded:
      description: Poisoned VMs whose running QEMU is not known to refuse migration.
      type: int
    complete:
      description: True when every host was scanned and every VM has a definite status.
      type: bool
  sample:
    hosts_total: 3
    hosts: {poisoned: 1, unknown: 0, failed: 0, unreachable: 1, missing: 0, clean: 1}
    hosts_scanned: 2
    hosts_not_scanned: 1
    hosts_with_hardware_corrupted: 1
    vms_total: 5
    vms: {poisoned: 1, unknown: 0, clean: 4}
    poisoned_vms_unguarded: 1
    complete: false
poisoned_vms:
  description: Every poisoned VM of the fleet.
  returned: when O(state=merged)
  type: list
  elements: dict
  sample:
    - host: hv01
      name: web02
      uuid: 6f1c3a2e-41b7-4f4e-9d62-1f0c2b7a9e10
      migration_guard: false
      poisoned_pages: 1
hosts_not_scanned:
  description: Hosts that are V(failed), V(unreachable) or V(missing), with the reason.
  returned: when O(state=merged)
  type: list
  elements: dict
  sample:
    - name: hv07
      status: unreachable
      error: "Failed to connect to the host via ssh: Connection timed out"
"""
