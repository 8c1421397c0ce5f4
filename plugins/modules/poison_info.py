#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) kvm_ras.poison_guard contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: poison_info
short_description: Find the VMs on a hypervisor whose guest RAM holds hardware-poisoned pages
version_added: 0.1.0
description:
  - Inventories the running QEMU VMs of a KVM hypervisor and says for each whether its guest RAM
    holds hardware-poisoned (hwpoison) pages, with the evidence behind the verdict.
  - A poisoned page is a hole in QEMU's address space. Anything that reads all guest RAM (live
    migration, save, memory snapshots, C(dump-guest-memory)) hits it and QEMU dies with SIGBUS,
    unless the running QEMU refuses the migration first (upstream 9.0 and patched builds).
  - "Ground truth is the QEMU process's C(/proc/PID/pagemap): hwpoison swap entries whose offset
    is a PFN with C(KPF_HWPOISON) in C(/proc/kpageflags), PTE poison markers, present pages on
    poisoned PFNs, and (Linux 6.7+, C(PAGEMAP_SCAN)) non-present huge pages of hugetlbfs-backed
    RAM. QEMU's own log lines, the kernel log, C(HardwareCorrupted) and the per-node
    C(memory_failure) counters are reported as evidence."
  - The verdict is V(unknown) whenever a full scan was not possible (not root, process gone, read
    errors, hugetlbfs RAM without C(PAGEMAP_SCAN)); it is never V(clean) for what was not seen.
  - Guest RAM on shared memory (memfd, shmem, hugetlbfs or a file with C(share=on), which
    vhost-user needs) can hide a poisoned page in its page cache behind an empty page table
    entry (QEMU 9.2 and older re-map the same file offset on a guest reset). When the host has
    poisoned PFNs that no scanned page table holds, such a VM is V(clean) only if its backing file
    was read (holes skipped) without error; a read error EIO means V(poisoned), a backing that
    could not be read means V(unknown). See O(backing_read_limit_mib).
  - Every result says where and when it was taken (RV(origin) - host name, boot id, uptime and
    time of the scan), so M(kvm_ras.poison_guard.migration_gate) can refuse a result of another
    host, of an earlier boot, or too old.
  - Also tells whether the running QEMU binary (C(/proc/PID/exe), which may have been deleted by an
    upgrade) refuses the migration of a poisoned VM.
  - Read-only. Must run as root (C(become=true)) to see PFNs. Needs only the Python standard
    library; uses C(python3-libvirt) when it is installed.
author:
  - kvm_ras maintainers (@kvm-ras)
extends_documentation_fragment:
  - kvm_ras.poison_guard.attributes
  - kvm_ras.poison_guard.attributes.info_module
options:
  vms:
    description:
      - Names or UUIDs of the VMs to inspect. Empty means every running QEMU VM.
      - A name that is not running here fails the task with the list of VMs that are.
    type: list
    elements: str
    default: []
  proc_root:
    description:
      - Where procfs is read from (like node_exporter's C(--path.procfs)).
    type: path
    default: /proc
  sys_root:
    description:
      - Where sysfs is read from (like node_exporter's C(--path.sysfs)).
    type: path
    default: /sys
  uri:
    description:
      - libvirt connection URI used to list running domains (and, for a QEMU that carries the
        x-poison-holes series, to read its own poison list).
      - An empty string means do not use libvirt; QEMU processes are then found from procfs alone.
      - Without C(python3-libvirt), or when libvirt cannot be reached, procfs discovery is used and
        the problem is reported under RV(discovery).
      - The alias O(libvirt_uri) is deprecated and will be removed in version 0.2.0 of the
        collection.
    type: str
    default: qemu:///system
    aliases: [libvirt_uri]
  libvirt_run_dir:
    description:
      - libvirt's runtime directory of the QEMU driver, holding C(<name>.pid) files.
    type: path
    default: /run/libvirt/qemu
  qemu_log_dir:
    description:
      - Directory of libvirt's per-domain QEMU logs (C(<name>.log) and its rotated files
        C(<name>.log.0), C(.log.1), ..., C(.log.N.gz) of virtlogd or logrotate).
      - QEMU's C(Guest MCE Memory Error ... injected) lines of the current QEMU lifetime are taken
        from there, reading rotated files (compressed ones included) back to the lifetime's
        C(starting up) header; for a QEMU not started by libvirt, its stderr is read when it is
        a file.
    type: path
    default: /var/log/libvirt/qemu
  boot_dir:
    description:
      - Directory holding the kernel's C(config-<release>) file, used to derive the hwpoison swap
        type (C(<proc_root>/config.gz) is tried next).
    type: path
    default: /boot
  kernel_log:
    description:
      - Where kernel log lines about memory failures are read from.
      - V(auto) reads C(/dev/kmsg) (non-destructively) when O(proc_root) is the host's C(/proc),
        and nothing otherwise. A path reads that file (C(dmesg) output or C(/dev/kmsg) records).
        An empty string disables the kernel log.
    type: str
    default: auto
  scan_method:
    description:
      - How non-present page table entries are found.
      - V(auto) uses the C(PAGEMAP_SCAN) ioctl where the kernel has it (Linux 6.7+), and reads
        the whole pagemap otherwise. When mapped poisoned pages must be checked (the host has
        poisoned PFNs), every present entry is read; C(PAGEMAP_SCAN) then only names the
        populated ranges, and only for processes with less than 1/8 of the scanned pages
        resident (densely populated ones are read whole and their C(scan.method) is V(pread)).
      - V(pread) always reads the whole pagemap of every mapping (hugetlbfs mappings still need
        C(PAGEMAP_SCAN)).
      - V(pagemap_scan) requires C(PAGEMAP_SCAN); without it every VM is V(unknown).
    type: str
    choices: [auto, pagemap_scan, pread]
    default: auto
  backing_read_limit_mib:
    description:
      - Most shared-memory guest RAM, in MiB per VM, read to prove it holds no poisoned page
        (only when the host has poisoned PFNs that no scanned page table holds; holes of the
        backing file are skipped, so only populated pages count towards the time taken).
      - A VM with more shared-memory RAM than this is V(unknown) in that case, with a reason
        that names this option. V(0) never reads.
    type: int
    default: 65536
notes:
  - "C(HardwareCorrupted: 0 kB) means no page of the host is hwpoisoned; the page tables are still
    scanned, because poison PTE markers are not counted there."
  - Poison in the page cache of shared memory (memfd, shmem, hugetlbfs) behind an empty page table
    entry is invisible to pagemap; the backing file is read (a read of a poisoned page fails with
    EIO) for pages QEMU logged as poisoned, and for the whole shared RAM when the host has
    poisoned PFNs no scanned page table holds. See C(docs/poison_info.md) for all limits.
  - A mapping that may be hugetlbfs-backed but cannot be told apart (C(/proc/PID/map_files) and
    C(smaps) unreadable), and guest RAM of a domain whose libvirt XML asks for hugepages where no
    hugetlbfs mapping was recognised, is never scanned as ordinary memory; without
    C(PAGEMAP_SCAN) the VM is V(unknown).
"""

EXAMPLES = r"""
- name: Inventory poisoned VMs on the hypervisors
  kvm_ras.poison_guard.poison_info:
  become: true
  register: poison

- name: Show the poisoned VMs
  ansible.builtin.debug:
    var: poison.poisoned_vms

- name: Inspect two VMs, procfs only (no libvirt)
  kvm_ras.poison_guard.poison_info:
    vms:
      - web01
      - 6f1c2a8e-3a50-4c3e-9d2b-7f1f6c3b9a10
    uri: ""
  become: true
  register: two

- name: Read procfs and sysfs of a container host mounted elsewhere
  kvm_ras.poison_guard.poison_info:
    proc_root: /host/proc
    sys_root: /host/sys
    uri: ""
  become: true
"""

RETURN = r"""
vms:
  description: One entry per inspected VM, sorted by name.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: Domain name (libvirt), C(-name guest=...) of the QEMU command line, or C(qemu-<pid>).
      type: str
      sample: web01
    uuid:
      description: Domain UUID, or null.
      type: str
      sample: 6f1c2a8e-3a50-4c3e-9d2b-7f1f6c3b9a10
    pid:
      description: PID of the QEMU process, or null when none was found.
      type: int
      sample: 4242
    start_ticks:
      description:
        - Start time of the QEMU process in clock ticks since boot (C(/proc/PID/stat) field 22);
          with RV(vms[].pid) and the boot id of RV(origin) it names exactly one process. Null when
          no process was scanned.
      type: int
      sample: 7000
    started_at:
      description: Start time of the QEMU process in epoch seconds, or null.
      type: float
      sample: 1764050070.0
    status:
      description:
        - V(poisoned), V(clean) or V(unknown). V(unknown) blocks like V(poisoned) (fail closed).
      type: str
      sample: poisoned
    poisoned_pages:
      description:
        - Holes found. C(hva), C(pfn) and C(gpa) are hex strings (C(pfn)/C(gpa) null when not
          known); C(gpa) comes from QEMU's log line for the same address.
        - C(source) is one of C(pagemap_hwpoison), C(present_hwpoison), C(pte_marker_poisoned),
          C(swapin_error_entry), C(pagemap_scan_hugetlb), C(backing_read_eio) (a read of the
          shared-memory backing file failed with EIO at that page), C(qemu_log).
        - Also C(mapping), C(guest_ram) (the mapping looks like a QEMU RAM block), C(raw) (the
          pagemap entry), C(kpageflags), C(swap_type), C(size) where they apply.
      type: list
      elements: dict
      sample: [{"hva": "0x7fafe2145000", "pfn": "0xf945", "gpa": "0x2345000", "source": "pagemap_hwpoison"}]
    evidence:
      description: What was looked at and what it showed, as C(source) and C(detail).
      type: list
      elements: dict
      sample: [{"source": "host", "detail": "HardwareCorrupted: 4 kB (1 PFNs with KPF_HWPOISON)"}]
    migration_guard:
      description:
        - True when the running QEMU refuses to migrate this VM while it holds poisoned pages
          (binary guard and KVM); false when it does not; null when it could not be told.
      type: bool
      sample: false
    binary_guard:
      description: True when the running binary is QEMU 9.0+ or carries the refusal message.
      type: bool
      sample: false
    binary_poison_holes:
      description:
        - True when the running binary carries the C(x-poison-holes) migration capability (the
          C(kvm_ras.poison_guard.patched_qemu) role's series that live-migrates a VM with
          poisoned memory by carrying its holes); null when it could not be read.
      type: bool
      sample: true
    qemu_hwpoison:
      description:
        - QEMU's own poison list (QMP C(x-query-hwpoison), through libvirt), one entry per
          poisoned page - C(block), C(offset), C(page-size), C(gpa) (absent when the page is
          not mapped into the guest) and C(hva), as numbers.
        - Read only from a QEMU started by libvirt whose binary carries C(x-poison-holes)
          (RV(vms[].binary_poison_holes)); null otherwise or when it could not be read, with
          the reason in RV(vms[].qemu_hwpoison_problem). Reading it needs a read-write libvirt
          connection (root); libvirt then notes the domain as tainted C(custom-monitor) in its log.
      type: list
      elements: dict
      sample: [{"block": "pc.ram", "offset": 524288, "page-size": 4096, "gpa": 524288, "hva": 139706426195968}]
    qemu_hwpoison_problem:
      description: Why RV(vms[].qemu_hwpoison) is null; null when it was read.
      type: str
      sample: null
    holes_unknown_to_qemu:
      description:
        - The C(hva) of every page of RV(vms[].poisoned_pages) that QEMU's list does not cover
          (hex strings). A live migration with C(x-poison-holes) sends the pages of QEMU's list as
          holes and reads every other page, so it is safe only when this is empty.
        - Null when QEMU's list could not be read (unknown, never empty).
      type: list
      elements: str
      sample: []
    reasons:
      description: Why the status is V(unknown); empty otherwise.
      type: list
      elements: str
      sample: []
    qemu_binary:
      description: Target of C(/proc/PID/exe); ends in C( (deleted)) when the file was replaced.
      type: str
      sample: /usr/bin/qemu-system-x86_64
    qemu_version:
      description: QEMU version of the running process (libvirt log header or the binary).
      type: str
      sample: 7.2.22
    accelerator:
      description: V(kvm) when QEMU holds a KVM VM file descriptor, else V(tcg) (or the command line's).
      type: str
      sample: kvm
    memory_mib:
      description: Guest memory in MiB (libvirt XML or C(-m)).
      type: int
      sample: 4096
    vcpus:
      description: Number of vCPUs (libvirt XML or C(-smp)).
      type: int
      sample: 2
    discovered_by:
      description: V(libvirt) and/or V(procfs).
      type: list
      elements: str
      sample: [libvirt, procfs]
    scan:
      description: Figures of the page-table scan (method, mappings, bytes, seconds, entry counts); null when no scan ran.
      type: dict
      sample: {"method": "pread", "mappings": 210, "bytes": 4395630592, "seconds": 0.09}
poisoned_vms:
  description: Names of the VMs with status V(poisoned), each name once.
  returned: always
  type: list
  elements: str
  sample: [web01]
unknown_vms:
  description: Names of the VMs with status V(unknown), each name once.
  returned: always
  type: list
  elements: str
  sample: []
clean_vms:
  description:
    - Names of the VMs with status V(clean), each name once. A name carried by more than one VM
      is never listed here (see RV(ambiguous_vms)).
  returned: always
  type: list
  elements: str
  sample: [db01]
ambiguous_vms:
  description:
    - Names carried by more than one QEMU process (for example a QEMU started by hand with a
      libvirt domain's name). The task warns about each; RV(vms) lists every process with its own
      verdict, UUID, PID and start time. M(kvm_ras.poison_guard.migration_gate) blocks them.
  returned: always
  type: list
  elements: str
  sample: []
origin:
  description:
    - Where and when the result was taken. C(boot_id) is C(/proc/sys/kernel/random/boot_id) (a
      random UUID per boot), C(uptime_seconds) the host's uptime when the scan started,
      C(scanned_at)/C(scanned_at_iso) the same moment in epoch seconds and UTC.
  returned: always
  type: dict
  sample:
    hostname: hv1
    boot_id: 4c2f6b8e-1d3a-4e5f-9a7b-0c1d2e3f4a5b
    uptime_seconds: 5000.25
    scanned_at: 1764055000.25
    scanned_at_iso: "2025-11-25T07:16:40Z"
host:
  description:
    - Host-level figures. C(hardware_corrupted_kb) is null when the kernel has no
      C(HardwareCorrupted) line (no CONFIG_MEMORY_FAILURE); C(memory_failure) is null before
      Linux 6.3; C(hwpoison_swap_type) is derived from the kernel build config (null when unknown).
    - C(uffd_poison) says whether the running kernel can install a poisoned page with
      C(UFFDIO_POISON) (C(UFFD_FEATURE_POISON), Linux 6.6+), what a destination QEMU with
      C(x-poison-holes) needs - asked with a C(userfaultfd) (C(UFFD_USER_MODE_ONLY)) and its
      C(UFFDIO_API) handshake; null when that could not be told, with C(uffd_poison_detail)
      saying why.
  returned: always
  type: dict
  sample:
    kernel_release: 6.1.0-56-amd64
    hardware_corrupted_kb: 4
    memory_failure: null
    hwpoison_swap_type: 26
    pte_marker_swap_type: 30
    pagemap_scan: false
    cap_sys_admin: true
    poisoned_pfns: 1
    uffd_poison: false
    uffd_poison_detail: "UFFDIO_API refused UFFD_FEATURE_POISON with EINVAL (Invalid argument): the kernel has no UFFDIO_POISON (Linux 6.6 or later needed)"
discovery:
  description: How VMs were found (C(libvirt) and C(procfs), each with a count and any problem).
  returned: always
  type: dict
  sample: {"libvirt": {"uri": "qemu:///system", "domains": 2, "problem": null}, "procfs": {"qemu_processes": 2, "problem": null}}
complete:
  description: False when the VM inventory itself is incomplete (e.g. procfs could not be listed).
  returned: always
  type: bool
  sample: true
reasons:
  description: Why RV(complete) is false.
  returned: always
  type: list
  elements: str
  sample: []
"""

import os
import traceback

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.kvm_ras.poison_guard.plugins.module_utils import libvirt as libvirt_adapter
from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.messages import describe_os_error
from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.poison.inventory import (
    DEFAULT_BACKING_READ_LIMIT_MIB,
    Options,
    UnknownVMError,
    collect,
)

DEFAULTS = {"qemu_log_dir": "/var/log/libvirt/qemu", "boot_dir": "/boot",
            "libvirt_run_dir": libvirt_adapter.QEMU_RUN_DIR}


def main():
    module = AnsibleModule(
        argument_spec=dict(
            vms=dict(type="list", elements="str", default=[]),
            proc_root=dict(type="path", default="/proc"),
            sys_root=dict(type="path", default="/sys"),
            uri=libvirt_adapter.uri_argument("libvirt_uri"),
            libvirt_run_dir=dict(type="path", default=libvirt_adapter.QEMU_RUN_DIR),
            qemu_log_dir=dict(type="path", default="/var/log/libvirt/qemu"),
            boot_dir=dict(type="path", default="/boot"),
            kernel_log=dict(type="str", default="auto"),
            scan_method=dict(type="str", default="auto",
                             choices=["auto", "pagemap_scan", "pread"]),
            backing_read_limit_mib=dict(type="int", default=DEFAULT_BACKING_READ_LIMIT_MIB),
        ),
        supports_check_mode=True,
    )
    params = module.params
    for key in ("proc_root", "sys_root"):
        if not params[key]:
            module.fail_json(msg="%s must not be empty: give the directory where %s is mounted "
                                 "(default %s)" % (key, key[:-5] + "fs", "/" + key[:-5]))
    bad = [v for v in params["vms"] if not (v or "").strip()]
    if bad:
        module.fail_json(msg="vms holds an empty name: list VM names or UUIDs, or leave vms empty "
                             "to inspect every running VM")
    if params["backing_read_limit_mib"] < 0:
        module.fail_json(msg="backing_read_limit_mib must be 0 or more (MiB of shared-memory guest "
                             "RAM read per VM; 0 never reads it), got %d"
                             % params["backing_read_limit_mib"])
    for key in ("proc_root", "sys_root"):
        if os.path.exists(params[key]) and not os.path.isdir(params[key]):
            module.fail_json(msg="%s %s is not a directory: give the directory where %s is mounted"
                                 % (key, params[key], key[:-5] + "fs"))
    for key in ("qemu_log_dir", "boot_dir", "libvirt_run_dir"):
        if params[key] and os.path.exists(params[key]) and not os.path.isdir(params[key]):
            module.fail_json(msg="%s %s is not a directory: give the directory (default %s)" % (
                key, params[key], DEFAULTS[key]))
    kernel_log = params["kernel_log"]
    if kernel_log not in ("", "auto") and os.path.isdir(kernel_log):
        module.fail_json(msg="kernel_log %s is a directory: give a file (dmesg output, /dev/kmsg), "
                             "auto, or an empty string to skip the kernel log" % kernel_log)
    options = Options(
        vms=params["vms"], proc_root=params["proc_root"], sys_root=params["sys_root"],
        libvirt_uri=params["uri"], libvirt_run_dir=params["libvirt_run_dir"],
        qemu_log_dir=params["qemu_log_dir"], boot_dir=params["boot_dir"],
        kernel_log=kernel_log, scan_method=params["scan_method"],
        backing_read_limit_mib=params["backing_read_limit_mib"])
    try:
        result = collect(options)
    except UnknownVMError as exc:
        module.fail_json(msg=str(exc), unknown=exc.missing, available=exc.available)
    except OSError as exc:
        module.fail_json(msg=describe_os_error(exc, "poison_info could not read the host"),
                         exception=traceback.format_exc())
    except Exception as exc:  # pylint: disable=broad-except
        module.fail_json(msg="poison_info failed unexpectedly: %s" % exc,
                         exception=traceback.format_exc())
    for name in result["ambiguous_vms"]:
        pids = [str(vm["pid"]) for vm in result["vms"] if vm["name"] == name]
        module.warn("%d QEMU processes carry the name %r (pids %s): the name does not tell them "
                    "apart, so it is listed under ambiguous_vms and never under clean_vms; "
                    "address them by UUID, or stop the stray QEMU process" % (
                        len(pids), name, ", ".join(pids)))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
