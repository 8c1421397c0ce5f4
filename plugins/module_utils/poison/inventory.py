# -*- coding: utf-8 -*-
# Copyright (c) kvm_ras.poison_guard contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The ``poison_info`` result: discover VMs, gather evidence, apply the verdict rules.

``collect(Options(...))`` returns the result dict of the shared contract (``vms``,
``poisoned_vms``, ``unknown_vms``, ``clean_vms``, ``host``, ...). It raises ``UnknownVMError``
for VM names that do not exist (only when discovery was complete) and nothing else for
problems on the host: those become ``unknown`` verdicts with reasons.
"""

from __future__ import annotations

import errno
import os
import socket
import time

from ansible_collections.kvm_ras.poison_guard.plugins.module_utils import libvirt as libvirt_adapter
from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.poison import backing
from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.poison import encoding
from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.poison import guard
from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.poison import host as host_facts
from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.poison import libvirt_source
from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.poison import logs
from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.poison import pagemap
from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.poison import procfs
from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.poison import qemu_list
from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.poison import uffd
from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.poison import verdict

SCAN_METHODS = ("auto", "pagemap_scan", "pread")
DEFAULT_BACKING_READ_LIMIT_MIB = 65536


class UnknownVMError(Exception):
    """Asked-for VM names that are not running here."""

    def __init__(self, missing, available):
        self.missing = list(missing)
        self.available = list(available)
        super().__init__(
            "Unknown VM%s: %s. VMs running on this host: %s. Use a name or UUID from that "
            "list, or leave 'vms' empty to inspect every running VM." % (
                "s" if len(self.missing) > 1 else "", ", ".join(self.missing),
                ", ".join(self.available) if self.available else "(none)"))


class Options:
    """Inputs of ``collect`` (the module's options plus test hooks)."""

    def __init__(self, vms=None, proc_root="/proc", sys_root="/sys",
                 libvirt_uri=libvirt_adapter.DEFAULT_URI, libvirt_run_dir=libvirt_adapter.QEMU_RUN_DIR,
                 qemu_log_dir="/var/log/libvirt/qemu", boot_dir="/boot", kernel_log="auto",
                 scan_method="auto", pagemap_scan=None, reread_delay=pagemap.REREAD_DELAY,
                 backing_read_limit_mib=DEFAULT_BACKING_READ_LIMIT_MIB, clock=time.time,
                 qemu_list_reader=qemu_list.read, uffd_probe=uffd.probe):
        self.vms = list(vms or [])
        self.proc_root = proc_root
        self.sys_root = sys_root
        self.libvirt_uri = libvirt_uri
        self.libvirt_run_dir = libvirt_run_dir
        self.qemu_log_dir = qemu_log_dir
        self.boot_dir = boot_dir
        self.kernel_log = kernel_log
        if scan_method not in SCAN_METHODS:
            raise ValueError("scan_method must be one of %s, got %r" % (
                ", ".join(SCAN_METHODS), scan_method))
        self.scan_method = scan_method
        # None: probe the running kernel; False: never use it; callable: use that (tests).
        self.pagemap_scan = pagemap_scan
        self.reread_delay = reread_delay
        if not isinstance(backing_read_limit_mib, int) or backing_read_limit_mib < 0:
            raise ValueError("backing_read_limit_mib must be a whole number of MiB >= 0 (0: never "
                             "read shared-memory backing files), got %r" % (backing_read_limit_mib,))
        self.backing_read_limit_mib = backing_read_limit_mib
        self.clock = clock
        # QEMU's own poison list per libvirt domain (qemu_list.read) and the host's
        # UFFD_FEATURE_POISON probe (uffd.probe); tests hand in stand-ins.
        self.qemu_list_reader = qemu_list_reader
        self.uffd_probe = uffd_probe


def _err(exc):
    return getattr(exc, "strerror", None) or str(exc)


class _ScannedVM:
    """Everything gathered about one VM before the verdict."""

    def __init__(self, name, uuid=None, pid=None):
        self.name = name
        self.uuid = uuid
        self.pid = pid
        self.qemu_binary = None
        self.memory_mib = None
        self.vcpus = None
        self.accel = None
        self.sources = []
        self.argv = None
        self.memory_backing = None
        self.holes = []
        self.evidence = []
        self.incomplete = []
        self.migration_guard = None
        self.binary_guard = None
        self.binary_poison_holes = None
        self.qemu_hwpoison = None
        self.qemu_hwpoison_problem = "not read"
        self.qemu_version = None
        self.scan = None
        self.start_since_boot = None
        self.start_epoch = None
        self.start_ticks = None
        self.targets = []

    def note(self, source, detail):
        self.evidence.append({"source": source, "detail": detail})

    def result(self):
        status, reasons = verdict.decide(self.holes, self.incomplete)
        if status != verdict.UNKNOWN:
            for reason in self.incomplete:
                self.note("scan_incomplete", reason)
        pages = []
        for hole in self.holes:
            page = {"hva": encoding.to_hex(hole["hva"]), "pfn": encoding.to_hex(hole.get("pfn")),
                    "gpa": encoding.to_hex(hole.get("gpa")), "source": hole["source"]}
            for key in ("mapping", "guest_ram", "raw", "kpageflags", "swap_type", "size",
                        "note"):
                if hole.get(key) is not None:
                    page[key] = hole[key]
            pages.append(page)
        return {
            "name": self.name,
            "uuid": self.uuid,
            "pid": self.pid,
            "start_ticks": self.start_ticks,
            "started_at": round(self.start_epoch, 2) if self.start_epoch is not None else None,
            "status": status,
            "poisoned_pages": pages,
            "evidence": self.evidence,
            "migration_guard": self.migration_guard,
            "binary_guard": self.binary_guard,
            "binary_poison_holes": self.binary_poison_holes,
            "qemu_hwpoison": self.qemu_hwpoison,
            "qemu_hwpoison_problem": self.qemu_hwpoison_problem,
            "holes_unknown_to_qemu": (
                None if self.qemu_hwpoison is None else
                [encoding.to_hex(hva) for hva in qemu_list.unknown_to_qemu(self.holes, self.qemu_hwpoison)]),
            "reasons": reasons,
            "qemu_binary": self.qemu_binary,
            "qemu_version": self.qemu_version,
            "accelerator": self.accel,
            "memory_mib": self.memory_mib,
            "vcpus": self.vcpus,
            "discovered_by": self.sources,
            "scan": self.scan,
        }


class Collector:
    """One run of poison_info."""

    def __init__(self, options):
        self.options = options
        self.proc = options.proc_root
        self.top_reasons = []
        self.host = {}
        self.discovery = {}
        self.ctx = None
        self.global_incomplete = []
        self.inspector = guard.BinaryInspector()
        self.kernel_events = None
        self.kernel_log_problem = None
        self.kpageflags = None
        self.kpf_problem = None

    # -- discovery ------------------------------------------------------------------------
    def _procfs_qemus(self):
        try:
            found = procfs.qemu_processes(self.proc)
        except OSError as exc:
            problem = "cannot list %s: %s" % (self.proc, _err(exc))
            self.discovery["procfs"] = {"qemu_processes": 0, "problem": problem}
            return None, problem
        self.discovery["procfs"] = {"qemu_processes": len(found), "problem": None}
        return found, None

    def _libvirt_domains(self):
        uri = self.options.libvirt_uri
        if not uri:
            self.discovery["libvirt"] = {"uri": None, "domains": 0,
                                         "problem": "not used (libvirt_uri is empty)"}
            return []
        domains, problem = libvirt_source.discover(uri, self.options.libvirt_run_dir)
        self.discovery["libvirt"] = {"uri": uri, "domains": len(domains), "problem": problem}
        return domains

    def discover(self):
        processes, proc_problem = self._procfs_qemus()
        domains = self._libvirt_domains()
        vms = []
        by_pid = {p["pid"]: p for p in processes or []}
        used = set()
        for dom in domains:
            vm = _ScannedVM(dom["name"], dom.get("uuid"), dom.get("pid"))
            vm.sources.append("libvirt")
            vm.memory_mib = dom.get("memory_mib")
            vm.vcpus = dom.get("vcpus")
            vm.memory_backing = dom.get("memory_backing") or {}
            proc = None
            if vm.pid in by_pid:
                proc = by_pid[vm.pid]
            else:
                for candidate in processes or []:
                    if candidate["pid"] in used:
                        continue
                    if (vm.uuid and candidate["uuid"] == vm.uuid) or (
                            not candidate["uuid"] and candidate["name"] == vm.name):
                        proc = candidate
                        break
            if proc is not None:
                used.add(proc["pid"])
                self._apply_process(vm, proc)
            elif proc_problem:
                vm.incomplete.append("its QEMU process could not be looked up: " + proc_problem)
            else:
                vm.incomplete.append(
                    "libvirt says it is running but no QEMU process for it was found in %s "
                    "(pid %s)" % (self.proc, vm.pid))
                vm.pid = None
            if dom.get("problem"):
                vm.note("libvirt", dom["problem"])
            vms.append(vm)
        for proc in processes or []:
            if proc["pid"] in used:
                continue
            vm = _ScannedVM(proc["name"] or "qemu-%d" % proc["pid"], proc["uuid"], proc["pid"])
            if not proc["name"]:
                vm.note("procfs", "no -name on the QEMU command line: named after its PID")
            vm.memory_mib = proc["memory_mib"]
            vm.vcpus = proc["vcpus"]
            self._apply_process(vm, proc)
            vms.append(vm)
        return vms, proc_problem

    @staticmethod
    def _apply_process(vm, proc):
        vm.sources.append("procfs")
        vm.pid = proc["pid"]
        vm.argv = proc["argv"]
        vm.qemu_binary = proc["exe"]
        if vm.uuid is None:
            vm.uuid = proc["uuid"]
        if vm.memory_mib is None:
            vm.memory_mib = proc["memory_mib"]
        if vm.vcpus is None:
            vm.vcpus = proc["vcpus"]
        vm.accel = proc["accel"]

    def select(self, vms, proc_problem):
        if not self.options.vms:
            return vms
        wanted = []
        missing = []
        for item in self.options.vms:
            key = item.strip()
            hits = [vm for vm in vms if vm.name == key or (
                vm.uuid and vm.uuid.lower() == key.lower())]
            if hits:
                wanted.extend(h for h in hits if h not in wanted)
            else:
                missing.append(key)
        if missing:
            if proc_problem:
                for name in missing:
                    vm = _ScannedVM(name)
                    vm.incomplete.append("could not be looked up: " + proc_problem)
                    wanted.append(vm)
            else:
                raise UnknownVMError(missing, sorted(vm.name for vm in vms))
        return wanted

    # -- host-wide preparation ---------------------------------------------------------------
    def prepare(self, need_scan):
        facts, version, problems = host_facts.collect(self.proc, self.options.sys_root, self.options.boot_dir,
                                                      uffd_probe=self.options.uffd_probe)
        self.host = facts
        self.host["problems"] = problems
        capeff, cap_problem = procfs.capabilities(self.proc)
        self.host["cap_sys_admin"] = procfs.has_capability(capeff, procfs.CAP_SYS_ADMIN) \
            if capeff is not None else None
        self.host["initial_user_namespace"] = procfs.initial_user_namespace(self.proc)
        if cap_problem:
            problems.append(cap_problem)
        if self.host["cap_sys_admin"] is False:
            self.global_incomplete.append(
                "poison_info runs without CAP_SYS_ADMIN (not root?): the kernel hides PFNs and "
                "swap offsets in /proc/PID/pagemap and /proc/kpageflags is not readable, so no "
                "page could be checked; run it as root (become: true)")
        elif self.host["initial_user_namespace"] is False:
            self.global_incomplete.append(
                "poison_info runs in a user namespace: the kernel shows PFNs only to "
                "CAP_SYS_ADMIN in the initial user namespace; run it on the host as root")
        # PAGEMAP_SCAN
        scan_fn = self.options.pagemap_scan
        if scan_fn is None:
            available = pagemap.probe_pagemap_scan(os.path.join(self.proc, "self", "pagemap"))
            scan_fn = pagemap.pagemap_scan_swapped if available else None
        elif scan_fn is False:
            scan_fn = None
        self.host["pagemap_scan"] = scan_fn is not None
        if self.options.scan_method == "pagemap_scan" and scan_fn is None:
            self.global_incomplete.append(
                "scan_method=pagemap_scan was asked for but this kernel has no PAGEMAP_SCAN "
                "(Linux 6.7+); use scan_method=auto")
        # kpageflags and the host's poisoned PFNs
        kpf_path = os.path.join(self.proc, "kpageflags")
        kpf_problem = None
        if need_scan and not self.global_incomplete:
            try:
                self.kpageflags = pagemap.Kpageflags(kpf_path)
            except OSError as exc:
                kpf_problem = "cannot open %s: %s" % (kpf_path, _err(exc))
        self.host["kpageflags_readable"] = self.kpageflags is not None if need_scan else None
        hc_kb = self.host["hardware_corrupted_kb"]
        hc_problem = self.host.pop("hardware_corrupted_problem")
        poisoned_pfns = None
        present_reason = None
        if hc_problem:
            present_reason = "HardwareCorrupted could not be read (%s)" % hc_problem
        elif hc_kb is None or hc_kb == 0:
            # no line: no CONFIG_MEMORY_FAILURE; 0 kB: no hwpoisoned page on this host
            poisoned_pfns = ()
            self.host["poisoned_pfns"] = 0
        elif self.kpageflags is None:
            present_reason = ("HardwareCorrupted is %d kB but %s (%s): pages still mapped on "
                              "poisoned PFNs could not be checked" % (
                                  hc_kb, kpf_path, kpf_problem or "not read"))
        else:
            started = time.monotonic()
            try:
                poisoned_pfns = self.kpageflags.sweep_hwpoison()
                self.host["poisoned_pfns"] = len(poisoned_pfns)
                self.host["kpageflags_sweep_seconds"] = round(time.monotonic() - started, 3)
            except OSError as exc:
                present_reason = "sweeping %s failed: %s" % (kpf_path, _err(exc))
        if need_scan and present_reason and not self.global_incomplete:
            self.global_incomplete.append(present_reason)
        if need_scan and not self.global_incomplete and self.kpageflags is None and kpf_problem:
            self.host.setdefault("notes", []).append(kpf_problem)
        special_known = self.host["swap_areas"]
        self.ctx = pagemap.ScanContext(
            real_swap_types=special_known if special_known is not None else 0,
            hwpoison_type=facts["hwpoison_swap_type"],
            pte_marker_type=facts["pte_marker_swap_type"],
            swapin_error_type=facts["swapin_error_swap_type"],
            kpageflags=self.kpageflags, poisoned_pfns=poisoned_pfns,
            present_check_reason=present_reason, pagemap_scan=scan_fn,
            method=self.options.scan_method, reread_delay=self.options.reread_delay)
        self.kpf_problem = kpf_problem
        return version

    # -- per VM -------------------------------------------------------------------------------
    def _targets(self, vm, mappings):
        pid = vm.pid
        mounts = procfs.hugetlbfs_mounts(self.proc, pid)
        map_files = os.path.join(self.proc, str(pid), "map_files")
        ram = set(id(m) for m in procfs.guest_ram_mappings(mappings))
        backing_hugepages = bool((vm.memory_backing or {}).get("hugepages"))
        targets = []
        undecided = []
        smaps = None
        smaps_problem = None
        for mapping in mappings:
            if not procfs.scannable(mapping):
                continue
            guest_ram = id(mapping) in ram
            hugetlb, why = procfs.hugetlb_state(mapping, mounts, map_files)
            if hugetlb is None and (guest_ram or (mapping.shared and mapping.writable)):
                if smaps is None:
                    try:
                        smaps = procfs.smaps_hugetlb(self.proc, pid)
                    except OSError as exc:
                        smaps = {}
                        smaps_problem = "%s: %s" % (
                            os.path.join(self.proc, str(pid), "smaps"), _err(exc))
                decided = smaps.get((mapping.start, mapping.end))
                if decided is not None:
                    hugetlb = decided
                else:
                    why += "; %s" % (smaps_problem or "smaps has no entry for it")
            if hugetlb is None:
                if guest_ram or (mapping.shared and mapping.writable):
                    # Not decidable: scanning it as ordinary memory would read its non-present
                    # huge pages as empty and could call a poisoned VM clean.
                    undecided.append((mapping, why))
                    hugetlb = True
                else:
                    hugetlb = False
            size = 2 << 20
            if hugetlb:
                try:
                    size = os.stat(os.path.join(map_files, "%x-%x" % (
                        mapping.start, mapping.end))).st_blksize
                    if size <= encoding.PAGE_SIZE:
                        size = 2 << 20
                except OSError:
                    pass
            targets.append(pagemap.Target(mapping, guest_ram=guest_ram,
                                          hugetlb=hugetlb, hugepage_size=size))
        for mapping, why in undecided:
            vm.note("procfs", "%s at %#x-%#x may be hugetlbfs-backed (%s): treated as hugetlbfs, "
                              "not scanned as ordinary memory" % (mapping.label, mapping.start,
                                                                  mapping.end, why))
            if self.ctx.pagemap_scan is None:
                vm.incomplete.append(
                    "whether %s at %#x-%#x is hugetlbfs-backed could not be decided (%s); "
                    "hugetlbfs pages are invisible to pagemap and this kernel has no "
                    "PAGEMAP_SCAN (Linux 6.7+); run poison_info as root (CAP_SYS_ADMIN opens "
                    "/proc/PID/map_files) or on Linux 6.7+" % (
                        mapping.label, mapping.start, mapping.end, why))
        if backing_hugepages and not any(t.hugetlb for t in targets):
            vm.note("libvirt", "domain XML asks for hugepages but no hugetlbfs mapping was "
                               "recognised in the QEMU process: its guest RAM is treated as "
                               "hugetlbfs, not scanned as ordinary memory")
            suspects = [t for t in targets if t.guest_ram] or [
                t for t in targets if t.mapping.writable and t.mapping.size >= (1 << 20)]
            for target in suspects:
                target.hugetlb = True
            if self.ctx.pagemap_scan is None:
                vm.incomplete.append(
                    "libvirt's domain XML asks for hugepages (<memoryBacking><hugepages/>) but "
                    "no hugetlbfs mapping was recognised in QEMU %d; hugetlbfs pages are "
                    "invisible to pagemap and this kernel has no PAGEMAP_SCAN (Linux 6.7+), so "
                    "its guest RAM could not be checked; check the hugetlbfs mounts in "
                    "/proc/%d/mountinfo, or run on Linux 6.7+" % (pid, pid))
        vm.targets = targets
        return targets

    def _process_identity(self, vm):
        ticks = procfs.start_ticks(self.proc, vm.pid)
        since_boot, epoch = procfs.start_time(self.proc, vm.pid)
        vm.start_ticks = ticks
        vm.start_since_boot = since_boot
        vm.start_epoch = epoch

    def _still_same_process(self, vm):
        try:
            return procfs.start_ticks(self.proc, vm.pid) == vm.start_ticks
        except (OSError, IndexError, ValueError):
            return False

    def scan_vm(self, vm):
        if vm.pid is None:
            return None
        try:
            self._process_identity(vm)
        except (OSError, IndexError, ValueError) as exc:
            if procfs.is_gone(exc):
                vm.incomplete.append("QEMU process %d exited before it could be scanned" % vm.pid)
            else:
                vm.incomplete.append("cannot read %s: %s" % (
                    os.path.join(self.proc, str(vm.pid), "stat"), _err(exc)))
            return None
        try:
            targets_fd = procfs.fd_targets(self.proc, vm.pid)
            vm.accel = "kvm" if procfs.uses_kvm(targets_fd) else (
                vm.accel if vm.accel and vm.accel != "kvm" else "tcg")
            vm.note("procfs", "accelerator %s (%s)" % (
                vm.accel, "QEMU holds a kvm-vm file descriptor" if vm.accel == "kvm"
                else "no kvm-vm file descriptor"))
        except OSError as exc:
            vm.note("procfs", "cannot list %s: %s; accelerator taken from the command line (%s)" % (
                os.path.join(self.proc, str(vm.pid), "fd"), _err(exc), vm.accel))
        if self.global_incomplete:
            vm.incomplete.extend(self.global_incomplete)
            return None
        try:
            mappings = procfs.read_maps(self.proc, vm.pid)
        except OSError as exc:
            if procfs.is_gone(exc):
                vm.incomplete.append("QEMU process %d exited during the scan" % vm.pid)
            else:
                vm.incomplete.append("cannot read %s: %s" % (
                    os.path.join(self.proc, str(vm.pid), "maps"), _err(exc)))
            return None
        targets = self._targets(vm, mappings)
        if not any(t.guest_ram for t in targets):
            vm.note("procfs", "no mapping matched QEMU's RAM block layout (RAM followed by a "
                              "PROT_NONE guard page); every mapping was scanned")
        scanner = pagemap.ProcessScanner(os.path.join(self.proc, str(vm.pid), "pagemap"),
                                         self.ctx)
        try:
            result = scanner.scan(targets)
        except procfs.ProcessGone:
            vm.incomplete.append("QEMU process %d exited during the scan" % vm.pid)
            return None
        except OSError as exc:
            vm.incomplete.append("reading %s failed: %s" % (scanner.pagemap_path, _err(exc)))
            return None
        if not self._still_same_process(vm):
            vm.incomplete.append("QEMU process %d exited during the scan" % vm.pid)
            return None
        vm.holes.extend(result.holes)
        vm.incomplete.extend(result.reasons)
        if result.pfn_visible is False:
            vm.incomplete.append(
                "pagemap shows present pages without PFNs: this process lacks CAP_SYS_ADMIN in "
                "the initial user namespace, so hwpoison entries cannot be recognised")
        stats = dict(result.stats)
        vm.scan = {"method": result.method, "mappings": stats["mappings"],
                   "bytes": stats["bytes"], "guest_ram_bytes": stats["guest_ram_bytes"],
                   "seconds": stats["seconds"], "real_swap_entries": stats["real_swap_entries"],
                   "special_entries": stats["special_entries"],
                   "benign_markers": stats["benign_markers"],
                   "transient_entries": stats["transient_entries"],
                   "hugetlb_mappings": stats["hugetlb_mappings"]}
        gib = stats["bytes"] / float(1 << 30)
        if result.holes:
            vm.note("pagemap", "%d poisoned page(s) in %d mappings (%.2f GiB of address space, "
                               "%s)" % (len(result.holes), stats["mappings"], gib, result.method))
        else:
            ram_gib = stats["guest_ram_bytes"] / float(1 << 30)
            vm.note("pagemap", "no hwpoison entry, poison marker or mapped poisoned page in %d "
                               "mappings (%.2f GiB of address space, %.2f GiB guest RAM, %s, "
                               "%.3f s)" % (stats["mappings"], gib, ram_gib, result.method,
                                            stats["seconds"]))
        for note in result.notes:
            vm.note("pagemap", note)
        return scanner, mappings

    # -- logs ---------------------------------------------------------------------------------
    def _qemu_log(self, vm):
        """The current lifetime's lines: libvirt's domain log, else QEMU's stderr file."""
        texts = []
        problems = []
        if self.options.qemu_log_dir:
            text, paths, errs = logs.domain_log_text(self.options.qemu_log_dir, vm.name)
            problems.extend(errs)
            if text is not None:
                texts.append((", ".join(paths), text))
        if not texts and vm.pid is not None:
            stderr = os.path.join(self.proc, str(vm.pid), "fd", "2")
            try:
                if os.path.isfile(stderr):
                    texts.append(("%s (stderr %s)" % (stderr, os.readlink(stderr)),
                                  logs.read_log_tail(stderr)))
            except OSError as exc:
                problems.append("%s: %s" % (stderr, _err(exc)))
        return texts, problems

    def log_evidence(self, vm, scanned):
        texts, problems = self._qemu_log(vm)
        for problem in problems:
            vm.note("qemu_log", "not readable: " + problem)
        if not texts:
            if not problems:
                vm.note("qemu_log", "no QEMU log found (%s/%s.log, stderr)" % (
                    self.options.qemu_log_dir, vm.name))
            return
        where, text = texts[0]
        lifetimes = logs.parse_qemu_log(text)
        lifetime, why = logs.current_lifetime(lifetimes, vm.start_epoch)
        if lifetime is None:
            vm.note("qemu_log", "%s: no lines attributed to the running QEMU (%s)" % (where, why))
            return
        vm.qemu_version = lifetime.qemu_version
        events = lifetime.mce_events()
        for line in lifetime.qemu_itself_events():
            vm.note("qemu_log", "memory error in QEMU's own memory: " + line)
        if not events:
            vm.note("qemu_log", "%s: no 'Guest MCE Memory Error' line in the current QEMU "
                                "lifetime" % where)
            return
        scanner, mappings = scanned if scanned else (None, None)
        for event in events:
            self._cross_check(vm, event, scanner, mappings)

    def _cross_check(self, vm, event, scanner, mappings):
        hva = event["hva"]
        line = event["line"]
        if hva is None:
            vm.note("qemu_log", "current lifetime: %s" % line)
            return
        page = hva & ~(encoding.PAGE_SIZE - 1)
        for hole in vm.holes:
            size = hole.get("size") or encoding.PAGE_SIZE
            if hole["hva"] <= page < hole["hva"] + size:
                if hole.get("size") is None:
                    hole["gpa"] = event["gpa"] & ~(encoding.PAGE_SIZE - 1)
                vm.note("qemu_log", "current lifetime, confirmed by pagemap: %s" % line)
                return
        if scanner is None:
            vm.holes.append({"hva": page, "pfn": None, "gpa": event["gpa"] & ~(encoding.PAGE_SIZE - 1),
                             "source": "qemu_log"})
            vm.note("qemu_log", "current lifetime, not checked in pagemap (scan not possible): "
                                "%s" % line)
            return
        mapping = next((m for m in mappings if m.start <= page < m.end), None)
        try:
            entry = scanner.read_entry(page)
        except OSError as exc:
            vm.incomplete.append("could not re-read the page QEMU logged as poisoned (%s): %s" % (
                line, _err(exc)))
            return
        if mapping is None:
            vm.note("qemu_log", "current lifetime, address no longer mapped (remapped): %s" % line)
            return
        if not mapping.shared or entry.present:
            vm.note("qemu_log", "current lifetime, but the page is no longer a hole (pagemap %s "
                                "in %s): a guest reset remapped it and emptied QEMU's poison "
                                "list: %s" % (entry.hex(), mapping.label, line))
            return
        self._probe_backing(vm, mapping, page, event)

    def _probe_backing(self, vm, mapping, page, event):
        """Shared memory (memfd/shmem/file): QEMU <= 9.2 re-maps the same file offset on reset,
        so the poisoned page can hide in the page cache behind a none PTE. A read of that file
        offset fails with EIO if it is still poisoned."""
        line = event["line"]
        path = os.path.join(self.proc, str(vm.pid), "map_files", "%x-%x" % (mapping.start,
                                                                            mapping.end))
        offset = mapping.offset + (page - mapping.start)
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as exc:
            vm.incomplete.append(
                "QEMU logged a poisoned page in shared memory %s and the page is no longer "
                "mapped; its backing file could not be opened to check for hidden poison (%s): "
                "%s" % (mapping.label, _err(exc), line))
            return
        try:
            os.pread(fd, encoding.PAGE_SIZE, offset)
        except OSError as exc:
            if exc.errno == errno.EIO:
                vm.holes.append({"hva": page, "pfn": None,
                                 "gpa": event["gpa"] & ~(encoding.PAGE_SIZE - 1),
                                 "source": "backing_read_eio", "mapping": mapping.label,
                                 "guest_ram": True})
                vm.note("backing_file", "reading %s at offset %#x fails with EIO: the poisoned "
                                        "page is still in the page cache" % (mapping.label, offset))
            else:
                vm.incomplete.append("probing %s at offset %#x failed: %s" % (
                    mapping.label, offset, _err(exc)))
            return
        finally:
            os.close(fd)
        vm.note("qemu_log", "current lifetime, page remapped and its backing file reads fine "
                            "(no hidden poison): %s" % line)

    def _kernel_events(self):
        if self.kernel_events is not None or self.kernel_log_problem is not None:
            return self.kernel_events
        source = self.options.kernel_log
        if source == "auto":
            source = "/dev/kmsg" if os.path.realpath(self.proc) == "/proc" else ""
        if not source:
            self.kernel_log_problem = "kernel log not read (kernel_log is empty)"
            return None
        try:
            self.kernel_events = logs.parse_kernel_log(logs.read_kernel_log(source))
        except OSError as exc:
            self.kernel_log_problem = "cannot read the kernel log from %s: %s" % (source, _err(exc))
        return self.kernel_events

    def kernel_evidence(self, vm):
        events = self._kernel_events()
        if events is None:
            return
        tids = procfs.thread_ids(self.proc, vm.pid) if vm.pid is not None else set()
        if vm.pid is not None:
            tids.add(vm.pid)
        for event in events:
            if event.get("tid") not in tids:
                continue
            if event["seconds"] is not None and vm.start_since_boot is not None and \
                    event["seconds"] + 1 < vm.start_since_boot:
                continue
            vm.note("kernel_log", event["line"])

    def guard_evidence(self, vm):
        if vm.pid is None:
            return
        exe_path = os.path.join(self.proc, str(vm.pid), "exe")
        binary = self.inspector.inspect(exe_path)
        mg, bg, details = guard.decide(binary, vm.qemu_version, vm.accel)
        if binary.get("version"):
            vm.qemu_version = binary["version"]  # what runs wins over the log header
        vm.migration_guard = mg
        vm.binary_guard = bg
        vm.binary_poison_holes = binary.get("poison_holes")
        label = vm.qemu_binary or exe_path
        vm.note("guard", "%s: %s" % (label, "; ".join(details)))

    # -- result -------------------------------------------------------------------------------
    def host_evidence(self):
        notes = []
        hc = self.host.get("hardware_corrupted_kb")
        if hc is None and not self.host.get("hardware_corrupted_present"):
            notes.append("no HardwareCorrupted line in meminfo: kernel without "
                         "CONFIG_MEMORY_FAILURE, no page can be hwpoisoned")
        elif hc is not None:
            notes.append("HardwareCorrupted: %d kB%s" % (
                hc, " (no hwpoisoned page on this host)" if hc == 0 else
                " (%s PFNs with KPF_HWPOISON)" % self.host.get("poisoned_pfns", "?")))
        return notes

    # -- shared memory ------------------------------------------------------------------------
    def _unaccounted_pfns(self, selected):
        """Poisoned PFNs of the host that no scanned page table holds (None: not known)."""
        pfns = self.ctx.poisoned_pfns if self.ctx is not None else None
        if pfns is None:
            return None
        seen = set()
        for vm in selected:
            for hole in vm.holes:
                if hole.get("pfn") is not None:
                    seen.add(hole["pfn"])
        return set(pfns) - seen

    @staticmethod
    def _shared_ram(vm):
        targets = [t for t in vm.targets if t.mapping.shared and t.mapping.writable]
        ram = [t for t in targets if t.guest_ram]
        if any(t.guest_ram for t in vm.targets):
            return ram
        return [t for t in targets if t.mapping.size >= (1 << 20)]

    def shared_memory_evidence(self, vm, unaccounted):
        """Guest RAM on shared memory (memfd, shmem, hugetlbfs or a file with share=on) keeps a
        poisoned page in the page cache, where it can hide behind an empty page table entry
        (QEMU <= 9.2 re-maps the same file offset on a guest reset; pages never touched since).
        When the host has poisoned PFNs no scanned page table accounts for, such a VM is clean
        only if its backing reads without error."""
        if vm.pid is None or vm.holes or vm.scan is None:
            return
        targets = self._shared_ram(vm)
        if not targets:
            return
        if unaccounted is None:
            vm.incomplete.append(
                "the host's poisoned PFNs are not known (HardwareCorrupted or /proc/kpageflags "
                "could not be read), so poison hidden in the page cache of its shared-memory guest "
                "RAM cannot be ruled out; run poison_info as root on the host itself")
            return
        if not unaccounted:
            vm.note("backing_file", "shared-memory guest RAM not read: every poisoned PFN of the "
                                    "host is accounted for by a scanned page table")
            return
        limit = self.options.backing_read_limit_mib << 20
        total = sum(t.mapping.size for t in targets)
        why = ("the host has %d poisoned PFN(s) that no scanned page table holds, and a "
               "poisoned page-cache page of shared memory hides behind an empty page table "
               "entry" % len(unaccounted))
        if total > limit:
            vm.incomplete.append(
                "%s; its %d MiB of shared-memory guest RAM was not read because "
                "backing_read_limit_mib is %d: raise backing_read_limit_mib to at least %d to "
                "read it" % (why, total >> 20, self.options.backing_read_limit_mib,
                             (total + (1 << 20) - 1) >> 20))
            return
        map_files = os.path.join(self.proc, str(vm.pid), "map_files")
        done = 0
        for target in targets:
            mapping = target.mapping
            path = os.path.join(map_files, "%x-%x" % (mapping.start, mapping.end))
            outcome = backing.read_range(path, mapping.offset, mapping.size)
            done += outcome.bytes_read
            if outcome.bad_offset is not None:
                page = mapping.start + (outcome.bad_offset - mapping.offset)
                page &= ~(encoding.PAGE_SIZE - 1)
                vm.holes.append({"hva": page, "pfn": None, "gpa": None,
                                 "source": "backing_read_eio", "mapping": mapping.label,
                                 "guest_ram": target.guest_ram})
                vm.note("backing_file", "reading %s at file offset %#x fails with %s: a "
                                        "poisoned page sits in its page cache" % (
                                            mapping.label, outcome.bad_offset, outcome.error))
                return
            if outcome.error is not None:
                vm.incomplete.append(
                    "%s; reading the backing of %s through %s failed (%s), so it could not be "
                    "proved readable; run poison_info as root (CAP_SYS_ADMIN is needed to open "
                    "/proc/PID/map_files) on the host itself" % (
                        why, mapping.label, path, outcome.error))
                return
        vm.note("backing_file", "host has %d unaccounted poisoned PFN(s): read %d MiB of data "
                                "in %d shared-memory mapping(s) (holes skipped) without error" % (
                                    len(unaccounted), done >> 20, len(targets)))

    # -- QEMU's own poison list ----------------------------------------------------------------
    def qemu_list_evidence(self, selected):
        """QEMU's poison list (x-query-hwpoison) of every VM whose running binary carries the
        x-poison-holes series, read through libvirt after the page-table scan (a page poisoned
        in between is then in QEMU's list, never only in the scan)."""
        asked = []
        for vm in selected:
            if vm.pid is None:
                vm.qemu_hwpoison_problem = "no QEMU process was found, so there is no list to read"
            elif vm.binary_poison_holes is not True:
                vm.qemu_hwpoison_problem = (
                    "the running QEMU binary does not carry the x-poison-holes series (%s), so "
                    "it has no %s" % ("could not be read" if vm.binary_poison_holes is None
                                      else "stock or guard-only build", qemu_list.QUERY))
            elif "libvirt" not in vm.sources or not self.options.libvirt_uri:
                vm.qemu_hwpoison_problem = (
                    "the QEMU process was not started by libvirt (or libvirt_uri is empty), so "
                    "its QMP monitor was not reached")
            else:
                asked.append(vm)
        if not asked:
            return
        answers = self.options.qemu_list_reader(self.options.libvirt_uri, [(vm.name, vm.uuid) for vm in asked])
        for vm in asked:
            entries, problem = answers.get((vm.name, vm.uuid), (None, "no answer"))
            vm.qemu_hwpoison = entries
            vm.qemu_hwpoison_problem = problem
            if entries is None:
                vm.note("qemu_hwpoison", "QEMU's poison list could not be read: %s" % problem)
                continue
            vm.note("qemu_hwpoison", "QEMU lists %d poisoned page(s) (%s)%s" % (
                len(entries), qemu_list.QUERY, "".join(
                    "; %s+%#x hva %#x" % (e["block"], e["offset"], e["hva"]) for e in entries[:8])))
            unknown = qemu_list.unknown_to_qemu(vm.holes, entries)
            if unknown:
                vm.note("qemu_hwpoison", "hole(s) QEMU does not list (a migration would read "
                                         "them): %s" % ", ".join("%#x" % hva for hva in unknown))

    # -- result -------------------------------------------------------------------------------
    def origin(self):
        now = self.options.clock()
        return {
            "hostname": procfs.hostname(self.proc) or socket.gethostname(),
            "boot_id": procfs.boot_id(self.proc),
            "uptime_seconds": procfs.uptime(self.proc),
            "scanned_at": round(now, 3),
            "scanned_at_iso": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
        }

    def run(self):
        origin = self.origin()
        vms, proc_problem = self.discover()
        if proc_problem:
            self.top_reasons.append(proc_problem)
        selected = self.select(vms, proc_problem)
        self.prepare(need_scan=any(vm.pid is not None for vm in selected))
        host_notes = self.host_evidence()
        try:
            for vm in selected:
                for note in host_notes:
                    vm.note("host", note)
                scanned = self.scan_vm(vm)
                self.log_evidence(vm, scanned)
                self.kernel_evidence(vm)
                self.guard_evidence(vm)
            unaccounted = self._unaccounted_pfns(selected)
            for vm in selected:
                self.shared_memory_evidence(vm, unaccounted)
            self.qemu_list_evidence(selected)
        finally:
            if self.kpageflags is not None:
                self.kpageflags.close()
        if self.kernel_log_problem:
            self.host.setdefault("notes", []).append(self.kernel_log_problem)
        results = sorted((vm.result() for vm in selected), key=lambda r: (r["name"], r["pid"] or 0))
        self.host["pagemap_scan"] = bool(self.host.get("pagemap_scan"))
        counts = {}
        for entry in results:
            counts[entry["name"]] = counts.get(entry["name"], 0) + 1
        ambiguous = sorted(name for name, count in counts.items() if count > 1)

        def names(status):
            listed = []
            for entry in results:
                if entry["status"] == status and entry["name"] not in listed:
                    if status == verdict.CLEAN and entry["name"] in ambiguous:
                        continue
                    listed.append(entry["name"])
            return listed

        return {
            "changed": False,
            "vms": results,
            "poisoned_vms": names(verdict.POISONED),
            "unknown_vms": names(verdict.UNKNOWN),
            "clean_vms": names(verdict.CLEAN),
            "ambiguous_vms": ambiguous,
            "origin": origin,
            "host": self.host,
            "discovery": self.discovery,
            "complete": not self.top_reasons,
            "reasons": self.top_reasons,
        }


def collect(options):
    """Run poison_info's inspection with ``options`` (an ``Options``)."""
    return Collector(options).run()
