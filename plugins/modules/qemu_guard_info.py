#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) kvm_ras.poison_guard contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: qemu_guard_info
short_description: Tell whether a QEMU binary refuses to migrate a VM with poisoned memory, and what the host's QEMU packages are
version_added: 0.1.0
description:
  - Read-only. Says whether the QEMU binary O(binary) carries the migration guard of upstream
    QEMU 9.0 (commit 06152b89), by looking for its refusal message in the binary, with the same
    code M(kvm_ras.poison_guard.poison_info) uses for running VMs. So QEMU 9.0+, distribution
    backports and the C(kvm_ras.poison_guard.patched_qemu) role's package are recognised without
    a version table. Also runs C(O(binary) --version).
  - With O(host_facts=true) (the default) also reads the host's QEMU packages from dpkg
    (O(stock_package), O(package), O(module_packages)), apt's candidate for O(stock_package)
    and whether it is newer than the installed version, the holds, who diverts O(binary),
    whether the diverted stock binary O(diverted_binary_path) carries the guard, and the build
    record O(build_info_path) of an installed patched package.
  - With O(compare_with), compares what O(binary) and that binary offer (feature parity) -
    C(-device help), C(-machine help), C(-cpu help), C(-accel help), C(-display help),
    C(-audiodev help), C(-netdev help), C(-object help), C(-chardev help) and C(-vga help),
    stdout and stderr line by line, with version strings and the binary's own name masked.
  - With O(symbols), says where each named symbol is found (the binary or its build-id debug
    file under C(/usr/lib/debug/.build-id/)).
  - The module does not fail when O(binary) is missing; RV(binary.exists) is then false and
    RV(binary.guard) null. It fails on bad options.
  - Needs only the Python standard library; the host facts need C(dpkg) and C(apt-cache)
    (Debian family).
author:
  - kvm_ras maintainers (@kvm-ras)
extends_documentation_fragment:
  - kvm_ras.poison_guard.attributes
  - kvm_ras.poison_guard.attributes.info_module
options:
  binary:
    description:
      - The QEMU binary to inspect (an installed one, the diverted stock one, or one in a build
        tree or an unpacked package).
    type: path
    default: /usr/bin/qemu-system-x86_64
  host_facts:
    description:
      - Also read the host's QEMU packages, apt's candidate, the holds, the diversion of
        O(binary) and the patched package's build record.
      - Turn off for a binary that is not installed (a build tree).
    type: bool
    default: true
  stock_package:
    description:
      - The distribution's package that ships O(binary).
    type: str
    default: qemu-system-x86
  package:
    description:
      - The patched package that diverts O(binary) (the C(kvm_ras.poison_guard.patched_qemu)
        role's).
    type: str
    default: qemu-system-x86-poison-guard
  module_packages:
    description:
      - Other packages of the same source whose modules the binary loads; reported with the
        others and in RV(held).
    type: list
    elements: str
    default: [qemu-system-common, qemu-block-extra, qemu-system-gui]
  diverted_binary_path:
    description:
      - Where the diversion puts the stock binary.
    type: path
    default: /usr/bin/qemu-system-x86_64.distrib
  build_info_path:
    description:
      - The build record of the installed patched package (JSON).
    type: path
    default: /usr/share/qemu-system-x86-poison-guard/build-info.json
  compare_with:
    description:
      - A second binary (the stock one) to compare O(binary) with; the result is RV(parity).
    type: path
  module_dir:
    description:
      - Module directory (C(QEMU_MODULE_DIR)) for O(binary) in the comparison with
        O(compare_with), for a binary that is not installed yet. QEMU looks for its modules
        relative to its own location, so a binary in a build tree or an unpacked package needs
        the directory its installed copy will use. The binary of O(compare_with) runs as it is.
      - Only with O(compare_with).
    type: path
  symbols:
    description:
      - Names of symbols to look up in O(binary) and its build-id debug file; the result is
        RV(symbols).
    type: list
    elements: str
    default: []
  features:
    description:
      - Also list the devices, netdevs, displays, objects, machines, accelerators and chardevs
        O(binary) offers (RV(features)).
    type: bool
    default: false
  timeout:
    description:
      - Seconds each QEMU help query may take.
    type: int
    default: 60
notes:
  - The C(kvm_ras.poison_guard.patched_qemu) role uses this module to detect each host's QEMU,
    to check the binary it built and, before and after the install, that the patched binary
    offers exactly what the stock one offers (docs/patched_qemu.md).
seealso:
  - module: kvm_ras.poison_guard.qemu_guard_selftest
  - module: kvm_ras.poison_guard.poison_info
"""

EXAMPLES = r"""
- name: Does this hypervisor's QEMU refuse to migrate a poisoned VM?
  kvm_ras.poison_guard.qemu_guard_info:
  register: qemu_guard

- name: Say so
  ansible.builtin.debug:
    msg: >-
      QEMU {{ qemu_guard.binary.version }} ({{ qemu_guard.packages['qemu-system-x86'].version }})
      {{ 'carries' if qemu_guard.binary.guard else 'lacks' }} the migration guard.

- name: Does a freshly built binary carry the guard and offer what the stock one offers?
  kvm_ras.poison_guard.qemu_guard_info:
    binary: /var/tmp/build/qemu-system-x86_64
    host_facts: false
    compare_with: /usr/bin/qemu-system-x86_64
    module_dir: /usr/lib/x86_64-linux-gnu/qemu
  register: built

- name: Stop on a difference
  ansible.builtin.assert:
    that:
      - built.binary.guard
      - built.parity.identical
    fail_msg: "{{ built.parity.different }}"

- name: Does the patched binary's debug file resolve QEMU's poison list?
  kvm_ras.poison_guard.qemu_guard_info:
    host_facts: false
    symbols: [hwpoison_page_list, kvm_hwpoison_page_add]
  register: poison_list_symbols
"""

RETURN = r"""
binary:
  description: The binary O(binary).
  returned: always
  type: dict
  contains:
    path:
      description: O(binary).
      type: str
    realpath:
      description: O(binary) with symbolic links resolved.
      type: str
    exists:
      description: Whether it exists.
      type: bool
    guard:
      description: Whether it carries the refusal message (the migration guard); null when it
        does not exist or could not be read.
      type: bool
    poison_holes:
      description:
        - Whether it carries the C(x-poison-holes) migration capability (the
          C(kvm_ras.poison_guard.patched_qemu) role's series that live-migrates a VM with
          poisoned memory by carrying its holes, with QMP C(x-query-hwpoison)); null when it
          does not exist or could not be read.
        - M(kvm_ras.poison_guard.migration_gate) with O(kvm_ras.poison_guard.migration_gate#module:on_poisoned=migrate_with_holes)
          needs it on the target.
      type: bool
    refusal_message:
      description: The message looked for, word for word upstream QEMU's refusal.
      type: str
      returned: when RV(binary.exists)
      sample: Can't migrate this vm with hardware poisoned memory, please reboot the vm and try again
    version_line:
      description: First line of C(--version).
      type: str
      returned: when RV(binary.exists)
      sample: QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)
    version:
      description: Upstream version, null when C(--version) printed none.
      type: str
      returned: when RV(binary.exists)
      sample: 7.2.22
    major:
      description: Major version.
      type: int
      returned: when RV(binary.exists)
    minor:
      description: Minor version.
      type: int
      returned: when RV(binary.exists)
    rc:
      description: Exit status of C(--version).
      type: int
      returned: when RV(binary.exists)
    error:
      description: Why nothing else is reported.
      type: str
      returned: when the binary does not exist
      sample: binary not found
uffd_poison:
  description:
    - Whether this host's running kernel can install a poisoned page with C(UFFDIO_POISON)
      (C(UFFD_FEATURE_POISON), Linux 6.6+), which a destination QEMU with C(x-poison-holes)
      needs; asked with a C(userfaultfd) (C(UFFD_USER_MODE_ONLY)) and its C(UFFDIO_API)
      handshake. Null when it could not be told (see RV(uffd_poison_detail)). The same probe as
      RV(kvm_ras.poison_guard.poison_info#module:host) C(uffd_poison).
  returned: always
  type: bool
  sample: true
uffd_poison_detail:
  description: What the kernel answered to the probe of RV(uffd_poison).
  returned: always
  type: str
  sample: "UFFDIO_API granted UFFD_FEATURE_POISON: UFFDIO_POISON is available"
packages:
  description: Per package of O(stock_package), O(package) and O(module_packages) - C(installed),
    dpkg's C(status) abbreviation, C(version) and C(source_version) (null when not installed).
  returned: when O(host_facts)
  type: dict
  sample: {"qemu-system-x86": {"installed": true, "status": "ii", "version": "1:7.2+dfsg-7+deb12u18+b3",
           "source_version": "1:7.2+dfsg-7+deb12u18"}}
apt:
  description: apt's C(candidate) for O(stock_package) (a held package still shows it), the
    C(candidate_source_version) it is built from, and C(newer_than_installed).
  returned: when O(host_facts)
  type: dict
held:
  description: The packages among O(stock_package), O(package) and O(module_packages) that are
    held (C(dpkg --get-selections)).
  returned: when O(host_facts)
  type: list
  elements: str
diverted_by:
  description: The package that diverts O(binary), null when none does.
  returned: when O(host_facts)
  type: str
  sample: qemu-system-x86-poison-guard
diverted_binary:
  description: C(path), C(guard) and C(poison_holes) of O(diverted_binary_path); null when it does not exist.
  returned: when O(host_facts)
  type: dict
build_info:
  description: >-
    The build record O(build_info_path) of the installed patched package (its C(key) is the
    build key); null when there is none, a dictionary with only C(error) when it could not be
    read.
  returned: when O(host_facts)
  type: dict
parity:
  description: >-
    The comparison of O(binary) (C(patched)) with O(compare_with) (C(stock)): C(identical),
    C(different) (the queries that differ) and per query (C(device), C(machine), C(cpu),
    C(accel), C(display), C(audiodev), C(netdev), C(object), C(chardev), C(vga)) in
    C(queries) - C(identical), C(rc), C(lines) (counts), C(only_stock), C(only_patched) (up to
    50 lines each), C(order_differs), C(errors).
  returned: when O(compare_with) is set
  type: dict
symbols:
  description: C(binary), C(build_id), C(debug_file) (null when not installed) and C(symbols) -
    per name found, C(found_in) (C(binary) or C(debuginfo)) and C(value); C(error) when the
    binary is not a readable ELF file.
  returned: when O(symbols) is not empty
  type: dict
features:
  description: Sorted names per kind (C(device), C(netdev), C(display), C(object), C(machine),
    C(accel), C(chardev)).
  returned: when O(features=true)
  type: dict
"""

import subprocess

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.kvm_ras.poison_guard.plugins.module_utils import qemu_guard
from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.messages import describe_os_error
from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.poison import uffd


def main():
    module = AnsibleModule(
        argument_spec=dict(
            binary=dict(type="path", default="/usr/bin/qemu-system-x86_64"),
            host_facts=dict(type="bool", default=True),
            stock_package=dict(type="str", default="qemu-system-x86"),
            package=dict(type="str", default="qemu-system-x86-poison-guard"),
            module_packages=dict(type="list", elements="str",
                                 default=["qemu-system-common", "qemu-block-extra", "qemu-system-gui"]),
            diverted_binary_path=dict(type="path", default="/usr/bin/qemu-system-x86_64.distrib"),
            build_info_path=dict(type="path", default="/usr/share/qemu-system-x86-poison-guard/build-info.json"),
            compare_with=dict(type="path"),
            module_dir=dict(type="path"),
            symbols=dict(type="list", elements="str", default=[]),
            features=dict(type="bool", default=False),
            timeout=dict(type="int", default=60),
        ),
        required_by={"module_dir": "compare_with"},
        supports_check_mode=True,
    )
    params = module.params
    if not params["binary"]:
        module.fail_json(msg="binary is empty: give the path of a QEMU binary (default /usr/bin/qemu-system-x86_64)")
    if params["timeout"] < 1:
        module.fail_json(msg="timeout must be 1 or more (seconds per QEMU help query), got %s" % params["timeout"])
    if params["host_facts"]:
        for name in ("stock_package", "package"):
            if not (params[name] or "").strip():
                module.fail_json(msg="%s is empty: give a Debian package name, or set host_facts=false" % name)
    if [name for name in params["symbols"] if not name.strip()]:
        module.fail_json(msg="symbols holds an empty name: list symbol names such as hwpoison_page_list")

    try:
        result = read(params)
    except OSError as exc:
        module.fail_json(msg=describe_os_error(exc, "qemu_guard_info could not run or read a QEMU binary"))
    except subprocess.TimeoutExpired as exc:
        module.fail_json(msg="%s did not answer within %s s: raise timeout, or check that the binary is QEMU"
                         % (" ".join(exc.cmd), exc.timeout))
    else:
        module.exit_json(changed=False, **result)


def read(params):
    """Everything the options ask for, as one result dictionary."""
    if params["host_facts"]:
        result = qemu_guard.host_facts(params["binary"], params["stock_package"], params["package"],
                                       params["diverted_binary_path"], params["build_info_path"],
                                       params["module_packages"])
    else:
        result = {"binary": qemu_guard.binary_facts(params["binary"])}
    if params["compare_with"]:
        result["parity"] = qemu_guard.parity(params["binary"], params["compare_with"], params["timeout"],
                                             params["module_dir"])
    if params["symbols"]:
        result["symbols"] = qemu_guard.symbols(params["binary"], params["symbols"])
    if params["features"]:
        result["features"] = qemu_guard.features(params["binary"], params["timeout"])
    result["uffd_poison"], result["uffd_poison_detail"] = uffd.probe()
    return result


if __name__ == "__main__":
    main()
