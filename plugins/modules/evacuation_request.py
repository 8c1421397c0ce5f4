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
    O(evacuate_max_parallel) cannot exceed Ansible's forks. Migration URIs must use a network transport
    of libvirt; V(ext) and C(command=) are refused, and so is C(qemu+tcp) (no authentication, no encryption)
    unless O(evacuate_allow_plain_tcp=true).
  - Extra vars that look like a misspelt input (for example C(evacuate_max_paralel)) are refused,
    because the input would silently keep its default.
  - Inputs given under their old names without the C(evacuate_) prefix (for example C(-e max_parallel=4)) still
    work as extra vars, with a deprecation warning, until 1.0.0; the old names are not read from inventory
    variables. An old and a new name given with different values are refused.
  - Values may be given as YAML types or as the strings C(-e name=value) produces.
author:
  - kvm_ras maintainers (@kvm-ras)
extends_documentation_fragment:
  - kvm_ras.poison_guard.attributes
  - kvm_ras.poison_guard.attributes.DECISION_ACTION
  - kvm_ras.poison_guard.attributes.ACTION_PLUGIN
options:
  evacuate_source:
    description: Inventory name of the hypervisor to empty. Required in practice (the request names every missing input at once).
    type: str
  evacuate_targets:
    description:
      - Inventory names of the hypervisors that may receive VMs, a list or a comma-separated string.
      - Default is every other host of O(evacuate_group).
    type: raw
  evacuate_group:
    description: Inventory group of the hypervisors.
    type: str
    default: hypervisors
  evacuate_max_parallel:
    description:
      - At most this many migrations run at once (1 to 64, and at most Ansible's forks).
      - Was C(max_parallel) (deprecated name, read as an extra var until 1.0.0, with a deprecation warning).
    type: int
    default: 2
  evacuate_migration_timeout:
    description:
      - Seconds a VM's migration may take (10 to 604800), plus O(evacuate_migration_timeout_per_gib) per GiB of its RAM.
      - Was C(migration_timeout) (deprecated name, read as an extra var until 1.0.0).
    type: int
    default: 300
  evacuate_migration_timeout_per_gib:
    description:
      - Seconds added to O(evacuate_migration_timeout) per GiB of guest RAM (0 to 86400).
      - Was C(migration_timeout_per_gib) (deprecated name, read as an extra var until 1.0.0).
    type: int
    default: 60
  evacuate_bandwidth:
    description:
      - Bandwidth limit per migration in MiB/s; V(0) means libvirt's default (unlimited).
      - Was C(bandwidth) (deprecated name, read as an extra var until 1.0.0).
    type: int
    default: 0
  evacuate_poisoned_vm_policy:
    description:
      - What happens to a poisoned VM. V(leave) keeps it on the source; V(reboot_then_migrate) reboots it, checks it
        again and migrates it only if it is clean; V(cold_migrate) shuts it down and starts it on a target;
        V(migrate_with_holes) live-migrates it without downtime, its poisoned pages carried as holes by QEMU's
        C(x-poison-holes) capability (docs/poison-holes.md), to a target whose QEMU carries the capability and
        whose kernel has C(UFFDIO_POISON) (Linux 6.6+), when its own running QEMU carries it and lists every
        hole; a poisoned VM for which no target qualifies stays, with the reason, and fails the run.
      - A VM left by the default fails the run at its end (after the report); give V(leave) explicitly to leave
        poisoned VMs on purpose.
      - Was C(poisoned_vm_policy) (deprecated name, read as an extra var until 1.0.0).
    type: str
    choices: [leave, reboot_then_migrate, cold_migrate, migrate_with_holes]
    default: leave
  evacuate_unknown_vm_policy:
    description:
      - What happens to a VM whose memory could not be fully inspected. V(leave) keeps it on the source; V(migrate)
        live-migrates it anyway.
      - A VM left by the default fails the run at its end; give V(leave) explicitly to leave such VMs on purpose.
      - Was C(unknown_vm_policy) (deprecated name, read as an extra var until 1.0.0).
    type: str
    choices: [leave, migrate]
    default: leave
  evacuate_reboot_mode:
    description:
      - How V(reboot_then_migrate) reboots a poisoned VM, V(restart) (a new QEMU process) or V(reset) (in place).
      - Was C(reboot_mode) (deprecated name, read as an extra var until 1.0.0).
    type: str
    choices: [restart, reset]
    default: restart
  evacuate_cordon:
    description:
      - Cordon the source so nothing new lands on it.
      - Was C(cordon) (deprecated name, read as an extra var until 1.0.0).
    type: bool
    default: true
  evacuate_leave_vms:
    description:
      - Names or UUIDs of VMs to leave on the source on purpose, a list or a comma-separated string.
      - VMs named here never fail the run.
    type: raw
    default: []
  evacuate_report_dir:
    description: Directory on the controller for the report files, relative to the current directory or absolute, without C(..).
    type: str
    default: evacuation-reports
  evacuate_cpu_allocation_ratio:
    description:
      - vCPUs a target may run per logical CPU (0.1 to 64.0).
      - Was C(cpu_allocation_ratio) (deprecated name, read as an extra var until 1.0.0).
    type: float
    default: 4.0
  evacuate_memory_reserve_mib:
    description:
      - Memory in MiB each target keeps free for itself.
      - Was C(memory_reserve_mib) (deprecated name, read as an extra var until 1.0.0).
    type: int
    default: 512
  evacuate_migration_copy_storage:
    description:
      - V(none) (shared storage), V(all) or V(inc), passed to live migration.
      - Was C(migration_copy_storage) (deprecated name, read as an extra var until 1.0.0).
    type: str
    choices: [none, all, inc]
    default: none
  evacuate_migration_uri_template:
    description:
      - libvirt URI of a target, with C({address}) (the target's C(kvm_ras_migration_address), else its
        C(ansible_host), else its inventory name) and C({host}) (its inventory name).
      - Empty (the default) follows the transport role C(kvm_ras.poison_guard.migration_transport) set up on the
        source. The plan reads the source's local fact C(kvm_ras_migration_transport) (in the directory
        C(migration_transport_facts_dir) of the source, default C(/etc/ansible/facts.d)) and uses its C(uri_template),
        for example C(qemu+tls://{address}/system) (M(kvm_ras.poison_guard.evacuation_transport)). A target with no
        URI is not usable, with the reason in the plan, and gets no VM.
      - A target's C(kvm_ras_migration_uri) host variable wins over this template and over the transport.
      - A C(qemu+tcp) URI is refused unless O(evacuate_allow_plain_tcp=true).
      - Was C(migration_uri_template) (deprecated name, read as an extra var until 1.0.0).
    type: str
    default: ""
  evacuate_allow_plain_tcp:
    description:
      - Accept C(qemu+tcp) migration URIs (template, C(kvm_ras_migration_uri) or the source's transport fact).
      - libvirt's TCP transport has no authentication and no encryption on the migration channel. Anyone who
        reaches libvirtd's TCP port controls libvirt as root. Set up TLS or ssh with the role
        C(kvm_ras.poison_guard.migration_transport) instead; this switch is for closed test networks only.
    type: bool
    default: false
  evacuate_cold_migrate_shutdown_timeout:
    description:
      - Seconds a guest gets to shut down for a cold migration (1 to 86400).
      - Was C(cold_migrate_shutdown_timeout) (deprecated name, read as an extra var until 1.0.0).
    type: int
    default: 120
  evacuate_cold_migrate_force_off:
    description:
      - Power a guest off when it did not shut down in time for a cold migration.
      - Was C(cold_migrate_force_off) (deprecated name, read as an extra var until 1.0.0).
    type: bool
    default: false
  evacuate_break_lock:
    description: Take the source's evacuation lock even when another run holds it.
    type: bool
    default: false
  evacuate_lock_stale_after:
    description: Seconds after which another run's lock counts as stale; V(0) never.
    type: int
    default: 0
  extra_var_names:
    description:
      - Names of the run's extra vars, checked for misspelt inputs and for inputs given under their deprecated old names.
      - Default is to read them from the command line.
    type: list
    elements: str
notes:
  - The inputs are documented for operators in the collection's C(docs/evacuate_host.md).
seealso:
  - module: kvm_ras.poison_guard.evacuation_transport
  - module: kvm_ras.poison_guard.evacuation_plan
  - module: kvm_ras.poison_guard.evacuation_report
"""

EXAMPLES = r"""
- name: Check the evacuation request
  kvm_ras.poison_guard.evacuation_request:
    evacuate_source: "{{ evacuate_source | default(omit) }}"
    evacuate_max_parallel: "{{ evacuate_max_parallel | default(omit) }}"
  register: evacuation
"""

RETURN = r"""
request:
  description:
    - The inputs, typed and completed with their defaults, plus C(migration_uris) (target -> libvirt URI; null for a
      target whose URI comes from the source's transport, which M(kvm_ras.poison_guard.evacuation_transport) fills in),
      C(migration_uri_origins) (target -> V(kvm_ras_migration_uri), V(evacuate_migration_uri_template) or
      V(transport)), C(migration_addresses) (target -> its C({address})), C(targets_defaulted) and C(inputs_given)
      (the inputs given rather than defaulted; the exit rule reads it).
  returned: success
  type: dict
  sample:
    evacuate_source: hv1
    evacuate_targets: [hv2, hv3]
    evacuate_max_parallel: 2
    evacuate_poisoned_vm_policy: leave
    inputs_given: [evacuate_source]
    migration_uris: {hv2: null, hv3: "qemu+ssh://root@hv3/system"}
    migration_uri_origins: {hv2: transport, hv3: kvm_ras_migration_uri}
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
