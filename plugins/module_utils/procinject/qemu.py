# -*- coding: utf-8 -*-
# Copyright (c) kvm_ras.poison_guard contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Put what a host memory error leaves behind into a running QEMU, without a debugger.

Used by the labs (a poisoned page in a test guest) and by the patched_qemu role's functional
proof (an entry in QEMU's own poison list, then ``migrate`` must be refused). Every step runs
inside the QEMU process through ``tracee.Tracee`` (general-purpose registers only).

Kernel side, ``poison_page``: the guest-RAM page at a host virtual address is dropped
(``madvise(MADV_DONTNEED)``) and replaced by a userfaultfd poison marker (``UFFDIO_POISON``,
Linux 6.6+). Like a page that ``memory_failure()`` unmapped, any later access raises SIGBUS, and
``/proc/PID/pagemap`` shows a PTE marker with the POISONED bit. The userfaultfd is closed
afterwards: the marker outlives it (shared/research/uffd-poison-facts.md, measured). What is
simulated: the physical page is not poisoned (``/proc/kpageflags`` has no KPF_HWPOISON for it and
``HardwareCorrupted`` stays 0), and on a kernel without CONFIG_MEMORY_FAILURE the SIGBUS carries
BUS_ADRERR instead of BUS_MCEERR_AR.

QEMU side, ``record_poison``: what x86 ``kvm_arch_on_sigbus_vcpu()`` does for a guest-RAM page,
called as QEMU's own functions: ``qemu_ram_addr_from_host()`` and ``kvm_hwpoison_page_add()`` (the
poison list a guest reset walks and the upstream guard checks), ``qapi_event_send_memory_failure()``
(the MEMORY_FAILURE QMP event, which libvirt forwards as its memory-failure domain event) and
``warn_report()`` with QEMU's own "Guest MCE Memory Error ..." line. Not done: the machine-check
injection into a KVM vCPU (the lab guests run under TCG and have no MCE handler).
"""

from __future__ import annotations

from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.procinject.elf import ProcessSymbols
from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.procinject.tracee import (
    InjectError,
    Tracee,
    choose_thread,
)

PAGE = 4096
PROT_READ, PROT_WRITE = 1, 2
MAP_PRIVATE, MAP_ANONYMOUS = 0x02, 0x20
MADV_DONTNEED = 4
O_CLOEXEC, O_NONBLOCK = 0o2000000, 0o4000
UFFD_USER_MODE_ONLY = 1
UFFD_API = 0xAA
UFFD_FEATURE_POISON = 1 << 14
UFFDIO_API = 0xC018AA3F                  # _IOWR(0xAA, 0x3F, struct uffdio_api): 24 bytes
UFFDIO_REGISTER = 0xC020AA00             # _IOWR(0xAA, 0x00, struct uffdio_register): 32 bytes
UFFDIO_POISON = 0xC020AA08               # _IOWR(0xAA, 0x08, struct uffdio_poison): 32 bytes
UFFDIO_REGISTER_MODE_MISSING = 1
RECIPIENT_GUEST = 1                      # qapi MemoryFailureRecipient "guest"
ACTION_INJECT = 1                        # qapi MemoryFailureAction "inject"
RAM_ADDR_INVALID = (1 << 64) - 1
MCE_FORMAT = "Guest MCE Memory Error at QEMU addr %p and GUEST addr 0x%lx of type %s injected"
MCE_TYPE_AO = "BUS_MCEERR_AO"
RCU_HEAD_SIZE = 16  # struct rcu_head: next, func
RECORD_SYMBOLS = ("qemu_ram_addr_from_host", "kvm_hwpoison_page_add",
                  "qapi_event_send_memory_failure", "warn_report")


def _u64(*values):
    return b"".join((v & ((1 << 64) - 1)).to_bytes(8, "little") for v in values)


class QemuProcess:
    """A running QEMU process, its symbols, and one stopped thread to work in."""

    def __init__(self, pid, timeout=10.0):
        self.pid = pid
        self.symbols = ProcessSymbols(pid)
        self.timeout = timeout
        self.steps = []

    def _scratch(self, tracee):
        address = tracee.check_errno(
            tracee.syscall("mmap", 0, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), "mmap")
        self.steps.append(("scratch", "%#x" % address))
        return address

    def _poison_page(self, tracee, scratch, hva):
        uffd = tracee.check_errno(tracee.syscall("userfaultfd", O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY),
                                  "userfaultfd")
        self.steps.append(("userfaultfd", uffd))
        try:
            tracee.write(scratch, _u64(UFFD_API, UFFD_FEATURE_POISON, 0))
            tracee.check_errno(tracee.syscall("ioctl", uffd, UFFDIO_API, scratch), "UFFDIO_API")
            features = tracee.read_u64(scratch + 8)
            if not features & UFFD_FEATURE_POISON:
                raise InjectError("this kernel's userfaultfd has no UFFD_FEATURE_POISON (Linux 6.6+ needed)")
            self.steps.append(("api", "%#x" % features))
            tracee.check_errno(tracee.syscall("madvise", hva, PAGE, MADV_DONTNEED), "madvise")
            self.steps.append(("madvise", 0))
            tracee.write(scratch, _u64(hva, PAGE, UFFDIO_REGISTER_MODE_MISSING, 0))
            tracee.check_errno(tracee.syscall("ioctl", uffd, UFFDIO_REGISTER, scratch), "UFFDIO_REGISTER")
            self.steps.append(("register", 0))
            tracee.write(scratch, _u64(hva, PAGE, 0, 0))
            tracee.check_errno(tracee.syscall("ioctl", uffd, UFFDIO_POISON, scratch), "UFFDIO_POISON")
            updated = tracee.read_u64(scratch + 24)
            if updated != PAGE:
                raise InjectError("UFFDIO_POISON updated %d bytes instead of %d" % (updated, PAGE))
            self.steps.append(("poison", updated))
        finally:
            tracee.syscall("close", uffd)

    def _record_poison(self, tracee, scratch, hva, gpa, functions):
        ram_addr = tracee.call(functions["qemu_ram_addr_from_host"], hva)
        if ram_addr == RAM_ADDR_INVALID:
            raise InjectError("host address %#x is not guest RAM of QEMU %d" % (hva, self.pid))
        self.steps.append(("ram_addr", "%#x" % ram_addr))
        tracee.call(functions["kvm_hwpoison_page_add"], ram_addr)
        self.steps.append(("list_add", 0))
        tracee.write(scratch, b"\0\0")                       # MemoryFailureFlags: both false
        tracee.call(functions["qapi_event_send_memory_failure"], RECIPIENT_GUEST, ACTION_INJECT, scratch)
        self.steps.append(("event", 0))
        fmt, kind = scratch + 64, scratch + 256
        tracee.write(fmt, MCE_FORMAT.encode("ascii") + b"\0")
        tracee.write(kind, MCE_TYPE_AO.encode("ascii") + b"\0")
        tracee.call(functions["warn_report"], fmt, hva, gpa, kind)
        self.steps.append(("log", 0))
        return ram_addr

    def poison_guest_page(self, hva, gpa):
        """Both halves for one guest page; returns a summary (ram_addr, steps, ptrace requests)."""
        functions = self.symbols.lookup(RECORD_SYMBOLS)
        with Tracee(self.pid, choose_thread(self.pid), timeout=self.timeout) as tracee:
            scratch = self._scratch(tracee)
            try:
                self._poison_page(tracee, scratch, hva)
                ram_addr = self._record_poison(tracee, scratch, hva, gpa, functions)
            finally:
                tracee.syscall("munmap", scratch, PAGE)
        return {"ram_addr": "%#x" % ram_addr, "steps": self.steps, "ptrace_requests": sorted(set(tracee.requests)),
                "thread": tracee.tid}

    def poison_list_head(self):
        """Address of QEMU's static ``hwpoison_page_list`` head, and how it was found.

        From symbols when the binary (``binary``) or its build-id debug file (``debuginfo``) has
        the static symbol; else decoded from
        the first instruction of ``kvm_hwpoison_page_add``, ``mov hwpoison_page_list(%rip),%rax``
        (48 8b 05 disp32), which is how GCC compiles it in Debian's stripped 7.2 binary."""
        found = self.symbols.lookup(["hwpoison_page_list"], required=False)
        if "hwpoison_page_list" in found:
            return found["hwpoison_page_list"], self.symbols.found_in["hwpoison_page_list"]
        function = self.symbols.lookup(["kvm_hwpoison_page_add"])["kvm_hwpoison_page_add"]
        with open("/proc/%d/mem" % self.pid, "rb", buffering=0) as mem:
            mem.seek(function)
            code = mem.read(7)
        if code[:3] != b"\x48\x8b\x05":
            raise InjectError("no symbol for hwpoison_page_list and kvm_hwpoison_page_add does not start "
                              "with mov disp32(%%rip),%%rax (bytes %s)" % code.hex())
        return function + 7 + int.from_bytes(code[3:7], "little", signed=True), "decoded-first-instruction"

    def add_to_poison_list(self, ram_addr):
        """Only QEMU's side of one entry: ``kvm_hwpoison_page_add(ram_addr)``; reports the list
        head before and after, and ``kvm_hwpoisoned_mem()`` where the binary has it (the guard)."""
        head, method = self.poison_list_head()
        optional = self.symbols.lookup(["kvm_hwpoisoned_mem", "kvm_hwpoisoned_range"], required=False)
        function = self.symbols.lookup(["kvm_hwpoison_page_add"])["kvm_hwpoison_page_add"]
        # Where an entry (HWPoisonPage) keeps its ram_addr: first in QEMU's own layout; after a
        # struct rcu_head (two pointers) in the x-poison-holes series, whose RCU list is freed
        # with g_free_rcu() (the rcu_head must come first). The series is the binary that has
        # kvm_hwpoisoned_range().
        offset = RCU_HEAD_SIZE if "kvm_hwpoisoned_range" in optional else 0
        report = {"list_head": "%#x" % head, "head_found_by": method, "ram_addr": "%#x" % ram_addr,
                  "entry_ram_addr_offset": offset}
        with Tracee(self.pid, choose_thread(self.pid), timeout=self.timeout) as tracee:
            report["lh_first_before"] = "%#x" % tracee.read_u64(head)
            tracee.call(function, ram_addr)
            first = tracee.read_u64(head)
            report["lh_first_after"] = "%#x" % first
            if first:
                report["entry_ram_addr"] = "%#x" % tracee.read_u64(first + offset)
            report["kvm_hwpoisoned_mem"] = (tracee.call(optional["kvm_hwpoisoned_mem"]) & 0xFF
                                            if "kvm_hwpoisoned_mem" in optional else None)
        report["ptrace_requests"] = sorted(set(tracee.requests))
        report["ok"] = bool(first) and report.get("entry_ram_addr") == "%#x" % ram_addr
        if not first:
            report["error"] = "the poison list is still empty after kvm_hwpoison_page_add()"
        elif not report["ok"]:
            report["error"] = ("the poison list's first entry holds ram_addr %s, not the page added (%#x)"
                               % (report.get("entry_ram_addr"), ram_addr))
        return report
