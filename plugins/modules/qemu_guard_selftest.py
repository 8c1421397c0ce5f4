#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) kvm_ras.poison_guard contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: qemu_guard_selftest
short_description: Prove with a throw-away guest that a QEMU binary refuses to migrate a VM with poisoned memory
version_added: 0.1.0
description:
  - Starts a throw-away guest of its own with the QEMU binary O(binary) (TCG, machine
    O(machine), O(memory_mib) MiB, no disk, no network, QMP on a unix socket in a private
    temporary directory), then asks QMP C(migrate) to C(exec:cat > /dev/null) and reports
    whether the migration completed or was refused, with QEMU's own words, and whether the guest
    still runs afterwards. The guest is stopped (QMP C(quit), SIGKILL after 10 s) and its
    directory removed, whatever happens.
  - With O(inject=true), first adds guest RAM offset C(0x1000) to QEMU's own poison list by
    calling QEMU's function C(kvm_hwpoison_page_add) in the guest's process, which is what QEMU's
    SIGBUS handler does for a poisoned guest page. A binary with the migration guard (upstream
    QEMU 9.0+ or a patched build) must then refuse with the upstream message; a binary without
    it migrates anyway. The call uses plain ptrace on one thread stopped in a system call,
    saving and restoring only the general-purpose registers, so it works on CPUs with AMX,
    where gdb's inferior calls fail; C(ptrace_requests) in RV(injection) lists the requests
    issued.
    It needs QEMU's symbols (the binary's own, or its build-id debug file).
  - Running VMs are never touched. Nothing is left on the host, so the task never reports a
    change.
  - Fails when the self-test could not run to the end (the binary does not start, QMP does not
    answer, the injection fails), with RV(error) and everything seen until then.
  - Needs only the Python standard library. Run as root (C(become=true)), or as a user that may
    ptrace its own children, for O(inject).
author:
  - kvm_ras maintainers (@kvm-ras)
extends_documentation_fragment:
  - kvm_ras.poison_guard.attributes
attributes:
  check_mode:
    support: none
    details:
      - The self-test starts and migrates a guest; there is nothing to predict, so it does not
        run in check mode.
  diff_mode:
    support: none
  platform:
    platforms: posix
options:
  binary:
    description:
      - The QEMU system emulator to test (x86-64, with TCG).
    type: path
    default: /usr/bin/qemu-system-x86_64
  inject:
    description:
      - Add an entry to the guest's QEMU poison list before the migration.
    type: bool
    default: false
  machine:
    description:
      - Machine type of the throw-away guest.
    type: str
    default: q35
  memory_mib:
    description:
      - RAM of the throw-away guest in MiB.
    type: int
    default: 128
  timeout:
    description:
      - Seconds the whole self-test may take (start, injection, migration).
    type: int
    default: 120
  run_guest:
    description:
      - Let the guest run (QMP C(cont)) before the migration; C(false) keeps its CPUs stopped.
    type: bool
    default: true
notes:
  - The C(kvm_ras.poison_guard.patched_qemu) role runs this module on every host after it
    installed the patched QEMU, with and without O(inject), and on the stock (diverted) binary
    as the negative control (docs/patched_qemu.md).
seealso:
  - module: kvm_ras.poison_guard.qemu_guard_info
"""

EXAMPLES = r"""
- name: Start a guest with the installed QEMU and migrate it
  kvm_ras.poison_guard.qemu_guard_selftest:
  become: true
  register: plain

- name: Poison the guest's QEMU poison list and migrate
  kvm_ras.poison_guard.qemu_guard_selftest:
    inject: true
  become: true
  register: poisoned

- name: The guard refused and the guest kept running
  ansible.builtin.assert:
    that:
      - plain.migration == 'completed'
      - poisoned.migration == 'refused'
      - poisoned.refusal == poisoned.refusal_message
      - poisoned.alive_after and poisoned.status_after == 'running'
"""

RETURN = r"""
ok:
  description: Whether the self-test ran to the end (the module fails otherwise).
  returned: always
  type: bool
binary:
  description: O(binary).
  returned: always
  type: str
inject:
  description: O(inject).
  returned: always
  type: bool
refusal_message:
  description: Upstream QEMU's refusal, word for word.
  returned: always
  type: str
  sample: Can't migrate this vm with hardware poisoned memory, please reboot the vm and try again
argv:
  description: The guest's command line.
  returned: always
  type: list
  elements: str
pid:
  description: The guest's QEMU process.
  returned: always
  type: int
qemu_version:
  description: QEMU's version from the QMP greeting (C(major), C(minor), C(micro), C(package)).
  returned: when QMP answered
  type: dict
status_before:
  description: QMP C(query-status) before the migration.
  returned: when QMP answered
  type: str
  sample: running
injection:
  description: >-
    The poison-list injection - C(ok), C(error), C(ram_addr), C(entry_ram_addr),
    C(head_found_by) (C(debuginfo), C(binary) or C(decoded-first-instruction)),
    C(lh_first_before), C(lh_first_after), C(kvm_hwpoisoned_mem) (what QEMU's own check says
    afterwards; null when the binary has no such function) and C(ptrace_requests).
  returned: when O(inject)
  type: dict
migrate_reply:
  description: QMP's reply to C(migrate).
  returned: when the migration was asked for
  type: dict
migration:
  description: C(refused), or the final status of the migration (C(completed), C(failed),
    C(cancelled)), or the last one seen at the timeout.
  returned: when the migration was asked for
  type: str
  sample: refused
refusal:
  description: QEMU's error when it refused C(migrate).
  returned: when RV(migration=refused)
  type: str
migrate_info:
  description: C(status), C(total-time) and C(error-desc) of C(query-migrate) at the end.
  returned: when the migration ended
  type: dict
status_after:
  description: QMP C(query-status) after the migration.
  returned: when RV(ok)
  type: str
  sample: running
alive_after:
  description: Whether the guest's QEMU still ran after the migration.
  returned: always
  type: bool
error:
  description: Why the self-test did not run to the end.
  returned: when not RV(ok)
  type: str
exit_status:
  description: Exit status of the guest's QEMU after it was stopped.
  returned: always
  type: int
stderr_tail:
  description: The last 10 lines QEMU wrote to stderr.
  returned: always
  type: list
  elements: str
events:
  description: Names of the QMP events seen.
  returned: always
  type: list
  elements: str
duration_s:
  description: Seconds the self-test took.
  returned: always
  type: float
"""

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.qemu_selftest import selftest


def main():
    module = AnsibleModule(
        argument_spec=dict(
            binary=dict(type="path", default="/usr/bin/qemu-system-x86_64"),
            inject=dict(type="bool", default=False),
            machine=dict(type="str", default="q35"),
            memory_mib=dict(type="int", default=128),
            timeout=dict(type="int", default=120),
            run_guest=dict(type="bool", default=True),
        ),
        supports_check_mode=False,
    )
    params = module.params
    binary = params["binary"]
    if not binary or not os.path.isfile(binary) or not os.access(binary, os.X_OK):
        module.fail_json(msg="binary %r is not an executable file: give the path of a QEMU system emulator "
                             "(default /usr/bin/qemu-system-x86_64)" % binary)
    if not (params["machine"] or "").strip() or params["machine"].startswith("-"):
        module.fail_json(msg="machine %r is not a machine type: give one such as q35 or pc" % params["machine"])
    if params["memory_mib"] < 16:
        module.fail_json(msg="memory_mib must be 16 or more (MiB of the throw-away guest), got %s" % params["memory_mib"])
    if params["timeout"] < 10:
        module.fail_json(msg="timeout must be 10 or more (seconds for the whole self-test), got %s" % params["timeout"])

    result = selftest(binary, inject=params["inject"], machine=params["machine"].strip(),
                      memory_mib=params["memory_mib"], timeout=params["timeout"], run_guest=params["run_guest"])
    if not result["ok"]:
        module.fail_json(msg="The self-test of %s did not run to the end: %s" % (binary, result.get("error")),
                         changed=False, **result)
    module.exit_json(changed=False, **result)


if __name__ == "__main__":
    main()
