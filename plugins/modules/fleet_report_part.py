#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) kvm_ras.poison_guard contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

# Documentation only: the work is done on the controller by the action plugin
# plugins/action/fleet_report_part.py, which also validates its options against the options
# documented here.

from __future__ import annotations

DOCUMENTATION = r"""
---
module: fleet_report_part
short_description: Record one hypervisor's poison_info result as a part of a fleet poison report
version_added: 0.1.0
description:
  - Action plugin that runs on the controller for each hypervisor, after
    M(kvm_ras.poison_guard.poison_info). It writes the host's result to
    C(<report_dir>/<report_id>/parts/host-<inventory name>.json), where
    M(kvm_ras.poison_guard.fleet_report) merges every part into one report.
  - One part per host, written with a rename, so any number of jobs (AWX job slices) and forks
    can write parts of the same report at once without a lock.
  - Failed and unreachable hosts are recorded too, so a host is never silently missing from the
    report. Register the C(poison_info) task with C(ignore_errors) and C(ignore_unreachable) and
    pass the registered variable as O(result).
  - A result without a C(vms) list, or with malformed VM entries, is recorded as C(failed)
    with the reason. A VM status the report does not know is recorded as V(unknown). Nothing
    not seen is ever recorded as clean.
author:
  - kvm_ras maintainers (@kvm-ras)
extends_documentation_fragment:
  - kvm_ras.poison_guard.attributes
  - kvm_ras.poison_guard.attributes.ACTION_PLUGIN
  - kvm_ras.poison_guard.attributes.CONTROLLER_ONLY
attributes:
  check_mode:
    details:
      - In check mode the part is built and returned but not written.
options:
  result:
    description:
      - The registered result of M(kvm_ras.poison_guard.poison_info) for this host, including
        failed (C(failed), C(msg)) and unreachable (C(unreachable), C(msg)) results.
    type: dict
    required: true
  report_id:
    description:
      - Id of the report, a directory name of 1 to 128 letters, digits, C(.), C(_) or C(-)
        that starts with a letter or digit.
      - Every job that writes parts of one report, and the merge, must use the same id. Take it
        from the RV(kvm_ras.poison_guard.fleet_report#module:report_id) that
        M(kvm_ras.poison_guard.fleet_report) returns with O(kvm_ras.poison_guard.fleet_report#module:state=started).
    type: str
    required: true
  report_dir:
    description:
      - Directory on the controller that holds the reports, one subdirectory per report id.
        Created when missing.
      - A relative path is taken from the directory C(ansible-playbook) runs in.
      - Under AWX job slicing every slice and the merge job must see the same directory (shared
        storage mounted into the execution environment).
    type: path
    default: reports/poison
  host:
    description:
      - Inventory name of the host the result belongs to.
      - Defaults to the task's C(inventory_hostname).
    type: str
notes:
  - The part format is internal; read the merged C(fleet_report.json) instead, whose schema is
    C(schemas/fleet_report.schema.json) in the collection.
seealso:
  - module: kvm_ras.poison_guard.poison_info
  - module: kvm_ras.poison_guard.fleet_report
"""

EXAMPLES = r"""
- name: Inspect the VMs of this hypervisor
  kvm_ras.poison_guard.poison_info:
  become: true
  register: poison
  ignore_errors: true
  ignore_unreachable: true

- name: Record the result (also when the host failed or was unreachable)
  kvm_ras.poison_guard.fleet_report_part:
    result: "{{ poison }}"
    report_id: "{{ report.report_id }}"
    report_dir: /srv/poison-reports
"""

RETURN = r"""
path:
  description: Absolute path of the part file (written, or that would be written in check mode).
  returned: always
  type: str
  sample: /srv/poison-reports/20250301T101112Z-3fa9c1/parts/host-hv01.json
report_id:
  description: The report id.
  returned: always
  type: str
  sample: 20250301T101112Z-3fa9c1
outcome:
  description: V(ok) (the scan ran), V(failed) or V(unreachable).
  returned: always
  type: str
  sample: ok
status:
  description:
    - The host's status in the report. V(poisoned), V(unknown) or V(clean) when the scan ran,
      V(failed) or V(unreachable) when it did not.
  returned: always
  type: str
  sample: poisoned
error:
  description: Why the host was not scanned (null when it was).
  returned: always
  type: str
  sample: null
poisoned_vms:
  description: Names of the host's poisoned VMs.
  returned: always
  type: list
  elements: str
  sample: [web02]
"""
