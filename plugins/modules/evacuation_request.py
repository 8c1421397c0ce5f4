#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) kvm_ras.poison_guard contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

# Documentation only: the work is done by the action plugin plugins/action/evacuation_request.py,
# which also validates its options against the options documented here.

from __future__ import annotations

DOCUMENTATION = r"""
---
module: evacuation_request
short_description: Check the inputs of a hypervisor evacuation against the inventory, before anything happens
version_added: 0.1.0
description:
  - Action plugin that runs on the controller only; it contacts no host and changes nothing.
    C(evacuate_host.yml) runs it first.
  - Checks every input of the evacuation against the inventory and reports every problem at
    once, each with its fix. The source must be an inventory host. Targets default to the other
    hosts of O(evacuate_group); the source cannot be its own target. Policy words, numbers and
    booleans must be valid. Host names with spaces, quotes or shell metacharacters are refused.
    V(max_parallel) cannot exceed Ansible's forks. Migration URIs must use a network transport
    of libvirt; V(ext) and C(command=) are refused.
  - Extra vars that look like a misspelt input (for example C(max_paralel)) are refused,
    because the input would silently keep its default.
  - Values may be given as YAML types or as the strings C(-e name=value) produces.
author:
  - kvm_ras maintainers (@kvm-ras)
extends_documentation_fragment:
  - kvm_ras.poison_guard.attributes
  - kvm_ras.poison_guard.attributes.DECISION_ACTION
attributes:
  action:
    description: Indicates this has a corresponding action plugin so some parts of the options can be executed on the controller.
    support: full
  async:
    description: Supports being used with the C(async) keyword.
    support: none
options:
  evacuate_source:
    description: Inventory name of the hypervisor to empty.
    type: raw
  evacuate_targets:
    description: Inventory names of the hypervisors that may receive VMs (list or comma-separated string). Default is every other host of O(evacuate_group).
    type: raw
  evacuate_group:
    description: Inventory group of the hypervisors. Default V(hypervisors).
    type: raw
  max_parallel:
    description: At most this many migrations run at once. Default V(2).
    type: raw
  migration_timeout:
    description: Seconds a VM's migration may take, plus O(migration_timeout_per_gib) per GiB of its RAM. Default V(300).
    type: raw
  migration_timeout_per_gib:
    description: Seconds added to O(migration_timeout) per GiB of guest RAM. Default V(60).
    type: raw
  bandwidth:
    description: Bandwidth limit per migration in MiB/s; V(0) means libvirt's default (unlimited). Default V(0).
    type: raw
  poisoned_vm_policy:
    description: V(leave) (default), V(reboot_then_migrate) or V(cold_migrate).
    type: raw
  unknown_vm_policy:
    description: V(leave) (default) or V(migrate).
    type: raw
  reboot_mode:
    description: How V(reboot_then_migrate) reboots a poisoned VM, V(restart) (default, a new QEMU process) or V(reset) (in place).
    type: raw
  cordon:
    description: Cordon the source so nothing new lands on it. Default V(true).
    type: raw
  evacuate_leave_vms:
    description: Names or UUIDs of VMs to leave on the source on purpose.
    type: raw
  evacuate_report_dir:
    description: Directory on the controller for the report files. Default V(evacuation-reports), relative to the current directory.
    type: raw
  cpu_allocation_ratio:
    description: vCPUs a target may run per logical CPU. Default V(4.0).
    type: raw
  memory_reserve_mib:
    description: Memory in MiB each target keeps free for itself. Default V(512).
    type: raw
  migration_copy_storage:
    description: V(none) (default, shared storage), V(all) or V(inc), passed to live migration.
    type: raw
  migration_uri_template:
    description:
      - libvirt URI of a target, with C({address}) and C({host}). Default V(qemu+tcp://{address}/system).
      - A target's C(kvm_ras_migration_uri) host variable wins.
    type: raw
  cold_migrate_shutdown_timeout:
    description: Seconds a guest gets to shut down for a cold migration. Default V(120).
    type: raw
  cold_migrate_force_off:
    description: Power a guest off when it did not shut down in time for a cold migration. Default V(false).
    type: raw
  evacuate_break_lock:
    description: Take the source's evacuation lock even when another run holds it. Default V(false).
    type: raw
  evacuate_lock_stale_after:
    description: Seconds after which another run's lock counts as stale; V(0) (default) never.
    type: raw
  extra_var_names:
    description: Names of the run's extra vars, checked for misspelt inputs. Default is to read them from the command line.
    type: list
    elements: str
notes:
  - The inputs are documented for operators in the collection's C(docs/evacuate_host.md).
seealso:
  - module: kvm_ras.poison_guard.evacuation_plan
  - module: kvm_ras.poison_guard.evacuation_report
"""

EXAMPLES = r"""
- name: Check the evacuation request
  kvm_ras.poison_guard.evacuation_request:
    evacuate_source: "{{ evacuate_source | default(omit) }}"
    max_parallel: "{{ max_parallel | default(omit) }}"
  register: evacuation
"""

RETURN = r"""
request:
  description: The inputs, typed and completed with their defaults, plus C(migration_uris) (target -> libvirt URI).
  returned: success
  type: dict
  sample:
    evacuate_source: hv1
    evacuate_targets: [hv2, hv3]
    max_parallel: 2
    poisoned_vm_policy: leave
    migration_uris: {hv2: "qemu+tcp://hv2/system", hv3: "qemu+tcp://hv3/system"}
run:
  description: Identity of this evacuation run.
  returned: success
  type: dict
  sample: {run_id: hv1-20260301T025901Z-5f2a3c, started_at: "2026-03-01T02:59:01Z", started_compact: 20260301T025901Z,
           controller: awx-task-1, check_mode: false}
problems:
  description: Every problem found (the task fails when there is any).
  returned: failure
  type: list
  elements: str
  sample: ["evacuate_source 'hv9' is not in the inventory (known hypervisors: hv1, hv2, hv3)"]
"""
