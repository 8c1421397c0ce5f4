#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) kvm_ras.poison_guard contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

# Documentation only: the work is done by the action plugin plugins/action/migration_gate.py,
# which also validates its options against the options documented here.

from __future__ import annotations

DOCUMENTATION = r"""
---
module: migration_gate
short_description: Decide which VMs may be migrated, saved, snapshotted or dumped, given their memory-poison status
version_added: 0.1.0
description:
  - Action plugin, run for the B(source) hypervisor before live migration, C(virsh save),
    memory snapshots or memory dumps. It never changes anything.
  - Reading all of a VM's RAM while a page is hardware-poisoned kills the VM's QEMU with
    SIGBUS. QEMU 9.0 and later refuse C(migrate) for such a VM. Older QEMU (Debian 12 ships
    7.2) crashes. No QEMU release guards internal memory snapshots (C(savevm)) or
    C(dump-guest-memory). The gate therefore blocks V(poisoned) VMs for B(every) O(operation),
    whatever the running QEMU. The reason it reports is QEMU's own refusal, word for word.
  - Fails closed. A VM whose status is V(unknown) is blocked unless O(on_unknown=allow) is
    spelled out. A VM missing from the C(poison_info) result is always blocked.
  - Decides per exact VM identity (the C(poison_info) entry with its UUID, PID and process start
    time). A name or UUID that answers to more than one VM, and every VM that shares its name
    with another, is blocked with a reason that says so, whatever O(on_unknown) says; with
    O(vms) unset every VM of the result is decided on its own.
  - Uses the result of M(kvm_ras.poison_guard.poison_info) given in O(poison_info). Without
    it, the gate runs C(poison_info) on the host itself.
author:
  - kvm_ras maintainers (@kvm-ras)
extends_documentation_fragment:
  - kvm_ras.poison_guard.attributes
  - kvm_ras.poison_guard.attributes.DECISION_ACTION
  - kvm_ras.poison_guard.attributes.ACTION_PLUGIN
options:
  vms:
    description:
      - Names or UUIDs of the VMs to decide on.
      - Default is every VM in the C(poison_info) result, which is every running VM when the
        gate runs C(poison_info) itself.
      - A VM named here but absent from the C(poison_info) result is blocked with status
        V(unknown).
    type: list
    elements: str
  operation:
    description:
      - What is going to read the VMs' memory. The outcome is the same for every operation.
        Each decision explains, in RV(decisions[].operation_note), how that operation meets
        poisoned memory.
      - V(live_migration) uses QMP C(migrate). QEMU 9.0+ refuses it, older QEMU dies.
      - V(save) covers C(virsh save) and C(managedsave), which use C(migrate) to a file and
        behave like a live migration.
      - V(memory_snapshot) covers snapshots with memory. Internal snapshots (C(savevm)) are
        not guarded by any QEMU release.
      - V(dump) covers C(dump-guest-memory) and C(virsh dump --memory-only), which are not
        guarded by any QEMU release.
    type: str
    choices: [live_migration, save, memory_snapshot, dump]
    default: live_migration
  on_poisoned:
    description:
      - V(fail) fails the task when any VM is V(poisoned). The message lists every blocked VM.
      - V(skip) blocks poisoned VMs but lets the task succeed. Loop over RV(allowed) afterwards.
      - V(migrate_with_holes) (O(operation=live_migration) only) allows a poisoned VM to be
        live-migrated with its holes carried to the target by the C(x-poison-holes) migration
        capability of the C(kvm_ras.poison_guard.patched_qemu) role's QEMU (docs/poison-holes.md),
        when B(all) of these hold - the VM's running QEMU binary carries the capability
        (RV(kvm_ras.poison_guard.poison_info#module:vms[].binary_poison_holes)), the target's QEMU
        carries it and the target's kernel has C(UFFDIO_POISON) (O(target_facts)), and every
        hole C(poison_info) found is in QEMU's own poison list
        (RV(kvm_ras.poison_guard.poison_info#module:vms[].holes_unknown_to_qemu) is an empty
        list; null means unknown and blocks). Such a VM is listed in RV(with_holes) as well as
        RV(allowed); migrate it with
        O(kvm_ras.poison_guard.live_migrate#module:poison_holes=true). Otherwise it is blocked,
        the task fails, and RV(decisions[].holes_blockers) names each failed condition and its fix.
    type: str
    choices: [fail, skip, migrate_with_holes]
    default: fail
  target_facts:
    description:
      - The facts of the one target the VMs would go to, needed with
        O(on_poisoned=migrate_with_holes) (and only read then).
      - C(poison_holes) - the target's
        RV(kvm_ras.poison_guard.qemu_guard_info#module:binary.poison_holes); C(uffd_poison) - the
        target's RV(kvm_ras.poison_guard.poison_info#module:host) C(uffd_poison). Each true, false,
        or null (not known, which blocks). C(name) (optional) names the target in the reasons.
    type: dict
  on_unknown:
    description:
      - What to do with VMs whose poison status is V(unknown), meaning their memory could not
        be fully inspected.
      - V(fail) fails the task. V(skip) blocks them and lets the task succeed. V(allow) lets
        them through with a warning. If such a VM turns out to be poisoned, a QEMU without the
        guard crashes (see RV(unguarded)).
      - VMs missing from the C(poison_info) result were never inspected and are blocked even
        with V(allow). They fail the task unless this is V(skip). The same holds for names that
        answer to more than one VM.
    type: str
    choices: [fail, skip, allow]
    default: fail
  poison_info:
    description:
      - A result of M(kvm_ras.poison_guard.poison_info) gathered earlier for this host, for
        example a registered variable.
      - Unset means the gate runs C(kvm_ras.poison_guard.poison_info) on the host itself (with
        O(vms)), which needs become on the hypervisor.
      - The result of a failed or skipped C(poison_info) task is rejected.
      - The result must be this host's, of its current boot, and not older than
        O(max_result_age). The gate reads the host's boot id and uptime
        (C(/proc/sys/kernel/random/boot_id), C(/proc/uptime)) with one raw command over the
        task's connection (no Python, no gathered facts needed) and compares them with the
        result's C(origin) (see RV(kvm_ras.poison_guard.poison_info#module:origin)). A result from another host or boot, without an origin
        (older collection versions), or too old fails the task and blocks every VM.
    type: dict
  max_result_age:
    description:
      - Oldest C(poison_info) result, in seconds, the gate decides on. The age is measured on
        the host's own uptime clock, so clock drift between controller and host does not count.
      - V(0) accepts a result of any age (still only this host's, of its current boot). Spell
        it out only when a later step checks again, for example M(kvm_ras.poison_guard.live_migrate)
        with its default O(kvm_ras.poison_guard.live_migrate#module:poison_check=true).
      - Not used when the gate runs C(poison_info) itself.
    type: int
    default: 300
notes:
  - The decision table is in the collection's C(docs/migration_gate.md).
  - O(on_poisoned=skip) with a loop over RV(allowed) is the pattern for evacuations. Blocked
    poisoned VMs need a guest reboot, which clears QEMU's poison list, before they can be
    migrated.
seealso:
  - module: kvm_ras.poison_guard.poison_info
  - module: kvm_ras.poison_guard.live_migrate
"""

EXAMPLES = r"""
- name: Refuse to go on if any VM of this hypervisor is poisoned or could not be inspected
  kvm_ras.poison_guard.migration_gate:
  become: true

- name: Gate with an earlier poison_info result, skip blocked VMs, migrate the rest
  block:
    - name: Inspect the VMs
      kvm_ras.poison_guard.poison_info:
      become: true
      register: poison

    - name: Decide
      kvm_ras.poison_guard.migration_gate:
        poison_info: "{{ poison }}"
        on_poisoned: skip
        on_unknown: skip
      register: gate

    - name: Migrate what the gate allowed
      kvm_ras.poison_guard.live_migrate:
        name: "{{ item }}"
        dest_uri: qemu+tls://hv2/system
      loop: "{{ gate.allowed }}"
      become: true

- name: Before taking memory dumps of two VMs
  kvm_ras.poison_guard.migration_gate:
    vms:
      - web01
      - db01
    operation: dump
  become: true
"""

RETURN = r"""
allowed:
  description: Names of the VMs that may go ahead, in the order asked.
  returned: always
  type: list
  elements: str
  sample: [web01, db01]
blocked:
  description: The VMs that must not go ahead.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: VM name, or the name/UUID asked for when the VM is missing from C(poison_info).
      type: str
    status:
      description: V(poisoned) or V(unknown).
      type: str
    reason:
      description:
        - For V(poisoned) VMs exactly C(Can't migrate this vm with hardware poisoned memory,
          please reboot the vm and try again), QEMU's own refusal.
        - For V(unknown) VMs, why the status is unknown.
      type: str
    evidence:
      description:
        - The C(poison_info) evidence for the VM, as a list of C({source, detail}). For
          V(unknown) VMs it also holds C(poison_info)'s reasons.
      type: list
      elements: dict
  sample:
    - name: web02
      status: poisoned
      reason: Can't migrate this vm with hardware poisoned memory, please reboot the vm and try again
      evidence: [{source: pagemap, detail: "hwpoison entry at hva 0x7f3a2c5f1000 pfn 0x1ea8ba"}]
unguarded:
  description:
    - Names of the VMs whose running QEMU does not refuse poisoned migration (C(migration_guard)
      false or unknown in C(poison_info)), whatever the decision. Migrating one of these while
      it has an undetected poisoned page crashes it.
  returned: always
  type: list
  elements: str
  sample: [web01]
with_holes:
  description:
    - Names of the allowed VMs that are poisoned and may move only with their holes carried
      (O(on_poisoned=migrate_with_holes)); migrate them with
      O(kvm_ras.poison_guard.live_migrate#module:poison_holes=true).
  returned: always
  type: list
  elements: str
  sample: []
decisions:
  description: One decision per VM asked about.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: VM name.
      type: str
    uuid:
      description: The VM's UUID from C(poison_info), or null.
      type: str
    pid:
      description: PID of the VM's QEMU process from C(poison_info), or null.
      type: int
    start_ticks:
      description: Start time of that process (clock ticks since boot, C(/proc/PID/stat) field 22), or null.
      type: int
    status:
      description: V(poisoned), V(clean) or V(unknown).
      type: str
    operation:
      description: The O(operation) decided for.
      type: str
    decision:
      description: V(allow) or V(block).
      type: str
    fails:
      description: Whether this VM makes the task fail under the chosen policy.
      type: bool
    reason:
      description: Why.
      type: str
    operation_note:
      description: How this operation meets poisoned memory and why the gate guards it.
      type: str
    migration_guard:
      description: Whether the VM's running QEMU refuses poisoned migration (true, false, or null).
      type: bool
    in_poison_info:
      description: False when the VM was asked for but missing from the C(poison_info) result.
      type: bool
    with_holes:
      description: True when the VM is allowed only with its holes carried (O(on_poisoned=migrate_with_holes)).
      type: bool
    holes_blockers:
      description: With O(on_poisoned=migrate_with_holes), each condition a poisoned VM failed, with its fix.
      type: list
      elements: str
      returned: when a poisoned VM was blocked under O(on_poisoned=migrate_with_holes)
operation:
  description: The operation decided for.
  returned: always
  type: str
  sample: live_migration
poison_info_gathered:
  description: True when the gate ran C(poison_info) itself (O(poison_info) was not given).
  returned: always
  type: bool
  sample: true
poison_info_age_seconds:
  description:
    - Age of the given C(poison_info) result on the host's uptime clock; null when the gate ran
      C(poison_info) itself or O(max_result_age=0) and the age could not be told.
  returned: always
  type: float
  sample: 12.4
poison_info:
  description: The C(poison_info) result the gate gathered itself, to reuse in later tasks.
  returned: when O(poison_info) was not given
  type: dict
  sample: {vms: [{name: web01, status: clean, migration_guard: true}], poisoned_vms: []}
msg:
  description: A summary. When the task fails it names every blocked VM, its status and the reason.
  returned: always
  type: str
  sample: "live_migration allowed for 2 VM(s), skipped 1 blocked VM(s): 'web02' (poisoned): Can't migrate ..."
"""
