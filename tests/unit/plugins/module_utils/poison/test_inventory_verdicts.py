# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Every verdict path of poison_info on fixture trees that copy real kernel/QEMU output."""

from __future__ import annotations

import errno
import os
import shutil
import threading
import time

import pytest

from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.poison import inventory
from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.poison import pagemap

import scenarios
from conftest import vm_by_name
from procfs_builder import BTIME, Proc


def libvirt_ts(epoch):
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(epoch)) + ".000+0000"


# -- poisoned ---------------------------------------------------------------------------------
def test_kvmmce_hwpoison_entry_is_poisoned_with_hva_pfn_gpa(tmp_path, run):
    tree = scenarios.kvmmce_61(tmp_path).write()
    result = run(tree)
    vm = vm_by_name(result, "inner-kvmmce-ek0")
    assert vm["status"] == "poisoned"
    assert result["poisoned_vms"] == ["inner-kvmmce-ek0"]
    assert vm["reasons"] == []
    [page] = vm["poisoned_pages"]
    assert page["hva"] == "0x7fafe2145000"
    assert page["pfn"] == "0xf945"
    assert page["gpa"] == "0x2345000"  # from QEMU's log line for the same HVA
    assert page["source"] == "pagemap_hwpoison"
    assert page["raw"] == "0x40800000001f28ba" and page["swap_type"] == 26
    assert page["guest_ram"] is True and "note" not in page  # type 26 = derived SWP_HWPOISON
    assert result["host"]["hwpoison_swap_type"] == 26
    assert result["host"]["hardware_corrupted_kb"] == 4
    assert result["host"]["memory_failure"] is None  # 6.1 has no per-node counters
    assert result["host"]["poisoned_pfns"] == 1
    sources = [e["source"] for e in vm["evidence"]]
    assert "kernel_log" in sources  # the SIGBUS line names QEMU's pid 190
    assert any("Sending SIGBUS to qemu-system-x86:190" in e["detail"] for e in vm["evidence"])
    assert any("confirmed by pagemap" in e["detail"] for e in vm["evidence"])
    assert vm["accelerator"] == "kvm" and vm["qemu_version"] == "7.2.22"
    assert vm["migration_guard"] is False  # stock 7.2 binary


def test_brief_entry_without_kernel_config_is_decided_by_kpageflags(tmp_path, run):
    tree = scenarios.brief_entry_61(tmp_path).write()
    result = run(tree)
    vm = vm_by_name(result, "db01")
    assert vm["status"] == "poisoned"
    assert vm["uuid"] == "0f0e0d0c-0b0a-4908-8706-050403020100"
    [page] = vm["poisoned_pages"]
    assert (page["pfn"], page["swap_type"], page["gpa"]) == ("0xf545", 26, None)
    assert result["host"]["hwpoison_swap_type"] is None  # no config -> not derived


def test_612_type_27_and_per_node_counters(tmp_path, run):
    tree = scenarios.hwpoison_612(tmp_path).write()
    result = run(tree)
    vm = vm_by_name(result, "web612")
    assert vm["status"] == "poisoned"
    [page] = vm["poisoned_pages"]
    assert (page["pfn"], page["swap_type"]) == ("0x9c13", 27)
    assert page["kpageflags"] == "0x0000000400285018"
    host = result["host"]
    assert host["hwpoison_swap_type"] == 27 and host["pte_marker_swap_type"] == 31
    assert host["memory_failure"] == {"node0": {"delayed": 0, "failed": 0, "ignored": 0,
                                                "recovered": 1, "total": 1}}


def test_derived_type_mismatch_is_noted_but_kpageflags_decides(tmp_path, run):
    """A backported kernel whose real hwpoison type differs from the derived one."""
    tree = scenarios.hwpoison_612(tmp_path)
    tree.release = "6.1.0-99-amd64"  # config says 6.1 layout -> derived 26, entry says 27
    tree.config = scenarios.DEBIAN_61_CONFIG
    tree.write()
    [page] = vm_by_name(run(tree), "web612")["poisoned_pages"]
    assert "differs from the derived hwpoison type 26" in page["note"]


def test_poison_pte_marker_is_poisoned_and_guard_marker_is_not(tmp_path, run):
    tree = scenarios.markers(tmp_path).write()
    vm = vm_by_name(run(tree), "markers")
    assert vm["status"] == "poisoned"
    [page] = vm["poisoned_pages"]
    assert page["source"] == "pte_marker_poisoned" and page["pfn"] is None
    assert page["hva"] == "0x7c0000003000"
    assert vm["scan"]["benign_markers"] == 1


def test_guard_marker_alone_is_clean(tmp_path, run):
    tree = scenarios.markers(tmp_path, with_poison=False).write()
    vm = vm_by_name(run(tree), "markers")
    assert vm["status"] == "clean"
    assert vm["scan"]["special_entries"] == 1 and vm["scan"]["benign_markers"] == 1


def test_present_page_on_a_poisoned_pfn_unsplit_thp(tmp_path, run):
    tree = scenarios.present_thp_61(tmp_path).write()
    vm = vm_by_name(run(tree), "thp01")
    assert vm["status"] == "poisoned"
    [page] = vm["poisoned_pages"]
    assert page["source"] == "present_hwpoison"
    assert page["hva"] == hex(scenarios.THP_POISONED_HVA)
    assert page["pfn"] == hex(scenarios.THP_POISONED_PFN)
    assert vm["scan"]["method"] == "pread"


def test_present_check_with_many_poisoned_pfns_takes_the_bulk_path(tmp_path, run):
    tree = scenarios.present_thp_61(tmp_path, extra_poisoned=40).write()
    result = run(tree)
    assert result["host"]["poisoned_pfns"] == 41 > pagemap.FIND_LIMIT
    vm = vm_by_name(result, "thp01")
    assert [p["pfn"] for p in vm["poisoned_pages"]] == [hex(scenarios.THP_POISONED_PFN)]


def test_present_check_is_skipped_when_hardware_corrupted_is_zero(tmp_path, run):
    """HardwareCorrupted 0 kB: no PFN is poisoned, kpageflags is not swept."""
    tree = scenarios.present_thp_61(tmp_path)
    tree.hardware_corrupted_kb = 0
    tree.write()
    result = run(tree)
    assert result["host"]["poisoned_pfns"] == 0 and "kpageflags_sweep_seconds" not in result["host"]
    assert vm_by_name(result, "thp01")["status"] == "clean"


def test_hugetlb_with_pagemap_scan_reports_the_huge_page(tmp_path, run):
    """On 6.7+ PAGEMAP_SCAN reports a poisoned (non-present) huge page as SWAPPED|HUGE, like the
    verified 6.18 run (categories 0x50); the fixture kernel cannot ioctl, so the scan result is
    what that run returned for the page."""
    tree = scenarios.hugetlb_61(tmp_path).write()
    hole = scenarios.HUGETLB_BASE + (6 << 20)
    calls = []

    def fake_scan(fd, start, end):
        calls.append((start, end))
        return [(hole, hole + (2 << 20), 0x50)] if start <= hole < end else []

    vm = vm_by_name(run(tree, pagemap_scan=fake_scan), "huge01")
    assert vm["status"] == "poisoned"
    [page] = vm["poisoned_pages"]
    assert page["source"] == "pagemap_scan_hugetlb" and page["hva"] == hex(hole)
    assert page["size"] == 2 << 20 and page["pfn"] is None
    assert len(calls) >= 2  # scanned, then re-scanned to see the page persist


def test_backing_file_eio_after_reset_is_poisoned(tmp_path, run, monkeypatch):
    """memfd RAM, QEMU <= 9.2 after a reset: none PTE, the page cache page is still poisoned,
    so reading it fails with EIO (shmem_file_read_iter); the fixture file stands for the memfd
    and the read error is what the kernel returns for that page."""
    tree = scenarios.memfd_reset(tmp_path, eio=True).write()
    real_pread = os.pread
    opened = {}
    real_open = os.open

    def tracking_open(path, flags, *args):
        fd = real_open(path, flags, *args)
        opened[fd] = str(path)
        return fd

    def failing_pread(fd, size, offset):
        if "map_files" in opened.get(fd, ""):
            raise OSError(errno.EIO, "Input/output error")
        return real_pread(fd, size, offset)

    monkeypatch.setattr(inventory.os, "open", tracking_open)
    monkeypatch.setattr(inventory.os, "pread", failing_pread)
    vm = vm_by_name(run(tree), "memfd01")
    assert vm["status"] == "poisoned"
    [page] = vm["poisoned_pages"]
    assert page["source"] == "backing_read_eio" and page["gpa"] == "0x10000"


def test_backing_file_readable_after_reset_is_clean(tmp_path, run):
    tree = scenarios.memfd_reset(tmp_path).write()
    vm = vm_by_name(run(tree), "memfd01")
    assert vm["status"] == "clean"
    assert any("backing file reads fine" in e["detail"] for e in vm["evidence"])


def test_backing_file_unreadable_after_reset_is_unknown(tmp_path, run):
    tree = scenarios.memfd_reset(tmp_path).write()
    shutil.rmtree(os.path.join(tree.proc_root, "950", "map_files"))
    vm = vm_by_name(run(tree), "memfd01")
    assert vm["status"] == "unknown"
    assert "hidden poison" in vm["reasons"][0]


# -- clean --------------------------------------------------------------------------------------
def test_clean_host_reports_every_vm_clean_with_evidence(tmp_path, run):
    tree = scenarios.clean_host(tmp_path).write()
    result = run(tree)
    assert result["clean_vms"] == ["db01", "web01"]
    assert result["poisoned_vms"] == [] and result["unknown_vms"] == []
    for vm in result["vms"]:
        assert vm["scan"]["guest_ram_bytes"] == 64 << 20
        assert vm["memory_mib"] == 64 and vm["vcpus"] == 1 and vm["uuid"]
        details = " | ".join(e["detail"] for e in vm["evidence"])
        assert "HardwareCorrupted: 0 kB" in details
        assert "no hwpoison entry" in details


def test_reset_vm_is_clean_while_host_counter_is_non_zero(tmp_path, run):
    tree = scenarios.kvm_reset_61(tmp_path).write()
    result = run(tree)
    vm = vm_by_name(result, "inner-kvm-ek0")
    assert vm["status"] == "clean"
    assert result["host"]["hardware_corrupted_kb"] == 8
    assert result["host"]["poisoned_pfns"] == 2
    assert any("a guest reset remapped it" in e["detail"] for e in vm["evidence"])
    # the memhog process of the same run holds a real hwpoison entry but is not a VM
    assert [v["name"] for v in result["vms"]] == ["inner-kvm-ek0"]


def test_real_swap_entries_are_not_mistaken_for_poison(tmp_path, run):
    tree = scenarios.real_swap_61(tmp_path).write()
    vm = vm_by_name(run(tree), "swappy")
    assert vm["status"] == "clean"
    assert vm["scan"]["real_swap_entries"] == 2048
    assert vm["scan"]["special_entries"] == 0


def test_transient_migration_entry_resolves_on_re_read(tmp_path, run, monkeypatch):
    tree = scenarios.migration_entry_61(tmp_path).write()
    pagemap_file = os.path.join(tree.proc_root, "700", "pagemap")

    real_sleep = time.sleep

    def migration_finishes(seconds):
        # time.sleep is global: threads left running by other tests must not trigger the move
        if threading.current_thread() is not threading.main_thread():
            real_sleep(seconds)
            return
        with open(pagemap_file, "r+b") as handle:
            handle.seek(scenarios.MIGRATION_HVA // 4096 * 8)
            handle.write(scenarios.present(0x12345).to_bytes(8, "little"))

    monkeypatch.setattr(pagemap.time, "sleep", migration_finishes)
    vm = vm_by_name(run(tree), "mig01")
    assert vm["status"] == "clean"
    assert vm["scan"]["transient_entries"] == 1


def test_hardware_corrupted_absent_still_scans_and_is_clean(tmp_path, run):
    """Kernel without CONFIG_MEMORY_FAILURE (this machine, the hypervisor lab): no line."""
    tree = scenarios.clean_host(tmp_path, hardware_corrupted_kb=None).write()
    result = run(tree)
    assert result["host"]["hardware_corrupted_kb"] is None
    assert result["clean_vms"] == ["db01", "web01"]
    assert any("CONFIG_MEMORY_FAILURE" in e["detail"] for e in result["vms"][0]["evidence"])


# -- unknown ------------------------------------------------------------------------------------
def test_persisting_unexplained_entry_is_unknown(tmp_path, run):
    tree = scenarios.migration_entry_61(tmp_path).write()
    vm = vm_by_name(run(tree), "mig01")
    assert vm["status"] == "unknown"
    assert "could not be explained" in vm["reasons"][0] and "27" in vm["reasons"][0]


def test_unprivileged_run_is_unknown_not_clean(tmp_path, run):
    tree = scenarios.unprivileged(tmp_path).write()
    result = run(tree)
    vm = vm_by_name(result, "nopriv")
    assert vm["status"] == "unknown"
    assert "CAP_SYS_ADMIN" in vm["reasons"][0]
    assert result["host"]["cap_sys_admin"] is False


def test_hidden_pfns_in_a_user_namespace_are_unknown(tmp_path, run):
    tree = scenarios.unprivileged(tmp_path)
    tree.capeff = "000001ffffffffff"
    tree.uid_map = "0 100000 65536"
    tree.write()
    vm = vm_by_name(run(tree), "nopriv")
    assert vm["status"] == "unknown" and "user namespace" in vm["reasons"][0]


def test_hidden_pfns_seen_in_pagemap_are_unknown(tmp_path, run):
    """CapEff claims CAP_SYS_ADMIN but the kernel zeroed the PFNs (e.g. a container that is not
    in the initial user namespace and whose uid_map looks like the host's)."""
    tree = scenarios.unprivileged(tmp_path)
    tree.capeff = "000001ffffffffff"
    tree.kpageflags_readable = True
    tree.write()
    vm = vm_by_name(run(tree), "nopriv")
    assert vm["status"] == "unknown"
    assert any("without PFNs" in r for r in vm["reasons"])


def test_kpageflags_unreadable_with_poisoned_host_is_unknown(tmp_path, run):
    tree = scenarios.clean_host(tmp_path, hardware_corrupted_kb=4, kpageflags_readable=False)
    tree.write()
    result = run(tree)
    assert result["unknown_vms"] == ["db01", "web01"]
    assert "kpageflags" in result["vms"][0]["reasons"][0]


def test_hugetlb_without_pagemap_scan_is_unknown(tmp_path, run):
    tree = scenarios.hugetlb_61(tmp_path).write()
    vm = vm_by_name(run(tree), "huge01")
    assert vm["status"] == "unknown"
    assert "PAGEMAP_SCAN" in vm["reasons"][0] and "hugetlbfs" in vm["reasons"][0]


def test_pagemap_scan_method_without_kernel_support_is_unknown(tmp_path, run):
    tree = scenarios.clean_host(tmp_path).write()
    result = run(tree, scan_method="pagemap_scan")
    assert result["unknown_vms"] == ["db01", "web01"]


def test_process_gone_before_scan_is_unknown(tmp_path, run):
    tree = scenarios.clean_host(tmp_path).write()
    os.remove(os.path.join(tree.proc_root, "1000", "pagemap"))
    result = run(tree)
    web = vm_by_name(result, "web01")
    assert web["status"] == "unknown" and "exited" in web["reasons"][0]
    assert vm_by_name(result, "db01")["status"] == "clean"


def test_process_gone_mid_scan_is_unknown(tmp_path, run, monkeypatch):
    tree = scenarios.clean_host(tmp_path).write()
    real = pagemap.ProcessScanner.scan

    def scan_then_exit(self, targets):
        result = real(self, targets)
        if "/1001/" in self.pagemap_path:
            os.remove(os.path.join(tree.proc_root, "1001", "stat"))
        return result

    monkeypatch.setattr(pagemap.ProcessScanner, "scan", scan_then_exit)
    result = run(tree)
    db = vm_by_name(result, "db01")
    assert db["status"] == "unknown" and "exited during the scan" in db["reasons"][0]


def test_truncated_pagemap_read_is_unknown(tmp_path, run):
    tree = scenarios.clean_host(tmp_path).write()
    with open(os.path.join(tree.proc_root, "1000", "pagemap"), "r+b") as handle:
        handle.truncate(0x7F1000000000 // 4096 * 8 + 4096)
    vm = vm_by_name(run(tree), "web01")
    assert vm["status"] == "unknown" and "short pagemap read" in vm["reasons"][0]


def test_unreadable_maps_is_unknown(tmp_path, run):
    tree = scenarios.clean_host(tmp_path).write()
    os.remove(os.path.join(tree.proc_root, "1000", "maps"))
    os.mkdir(os.path.join(tree.proc_root, "1000", "maps"))  # EISDIR on read
    vm = vm_by_name(run(tree), "web01")
    assert vm["status"] == "unknown" and "maps" in vm["reasons"][0]


def test_unreadable_procfs_gives_no_traceback(tmp_path, run):
    tree = scenarios.clean_host(tmp_path).write()
    result = run(tree, proc_root=str(tmp_path / "missing"))
    assert result["vms"] == [] and result["complete"] is False
    assert "cannot list" in result["reasons"][0]
    named = run(tree, proc_root=str(tmp_path / "missing"), vms=["web01"])
    vm = vm_by_name(named, "web01")
    assert vm["status"] == "unknown" and "could not be looked up" in vm["reasons"][0]


def test_unknown_vm_name_lists_the_vms_that_exist(tmp_path, run):
    tree = scenarios.clean_host(tmp_path).write()
    with pytest.raises(inventory.UnknownVMError) as info:
        run(tree, vms=["web01", "nosuchvm"])
    message = str(info.value)
    assert "nosuchvm" in message and "db01, web01" in message
    assert info.value.missing == ["nosuchvm"]


def test_vms_option_selects_by_name_and_uuid(tmp_path, run):
    tree = scenarios.clean_host(tmp_path).write()
    result = run(tree, vms=["66666666-7777-4888-9999-AAAAAAAAAAAA"])
    assert [vm["name"] for vm in result["vms"]] == ["db01"]


# -- QEMU log lifetimes -------------------------------------------------------------------------
def _libvirt_tree(tmp_path, log_text, hva_entry=None, stderr=None):
    tree = scenarios.clean_host(tmp_path, hardware_corrupted_kb=4)
    web = tree.procs[0]
    if hva_entry is not None:
        web.entries[0x7F1000000000 + 0x5000] = hva_entry
    tree.logs["web01.log"] = log_text
    return tree.write(), web


MCE_WEB = ("2025-11-25T06:05:00.000000Z qemu-system-x86_64: warning: Guest MCE Memory Error at "
           "QEMU addr 0x7f1000005000 and GUEST addr 0x5000 of type BUS_MCEERR_AO injected")


def test_log_line_of_current_lifetime_without_privilege_is_poisoned(tmp_path, run):
    tree, web = _libvirt_tree(tmp_path, "")
    tree.logs["web01.log"] = scenarios.libvirt_log("web01", start=libvirt_ts(web.start_epoch),
                                                   body=[MCE_WEB])
    tree.capeff = "0000000000000000"
    tree.kpageflags_readable = False
    shutil.rmtree(tree.root)
    tree.write()
    vm = vm_by_name(run(tree), "web01")
    assert vm["status"] == "poisoned"
    [page] = vm["poisoned_pages"]
    assert page == {"hva": "0x7f1000005000", "pfn": None, "gpa": "0x5000", "source": "qemu_log"}
    assert vm["qemu_version"] == "7.2.22"


def test_log_line_of_a_previous_lifetime_is_ignored(tmp_path, run):
    web_start = BTIME + 100.0
    text = scenarios.libvirt_log("web01", start=libvirt_ts(web_start), previous=[MCE_WEB])
    tree, _web = _libvirt_tree(tmp_path, text)
    vm = vm_by_name(run(tree), "web01")
    assert vm["status"] == "clean"
    assert any("no 'Guest MCE Memory Error' line" in e["detail"] for e in vm["evidence"])


def test_log_whose_last_lifetime_ended_is_not_attributed(tmp_path, run):
    text = scenarios.libvirt_log("web01", start=libvirt_ts(BTIME + 100.0), body=[MCE_WEB],
                                 ended=(libvirt_ts(BTIME + 200.0), "destroyed"))
    tree, _web = _libvirt_tree(tmp_path, text)
    vm = vm_by_name(run(tree), "web01")
    assert vm["status"] == "clean"
    assert any("ended (destroyed)" in e["detail"] for e in vm["evidence"])


def test_log_header_far_from_process_start_is_not_attributed(tmp_path, run):
    text = scenarios.libvirt_log("web01", start=libvirt_ts(BTIME + 100.0 + 3600), body=[MCE_WEB])
    tree, _web = _libvirt_tree(tmp_path, text)
    vm = vm_by_name(run(tree), "web01")
    assert vm["status"] == "clean"
    assert any("does not match the process start" in e["detail"] for e in vm["evidence"])


def test_log_line_confirmed_by_pagemap_gives_the_gpa(tmp_path, run):
    text = scenarios.libvirt_log("web01", start=libvirt_ts(BTIME + 100.0), body=[MCE_WEB])
    tree = scenarios.clean_host(tmp_path, hardware_corrupted_kb=4,
                                kpageflags={0xF945: scenarios.KPF_61_POISONED})
    tree.procs[0].entries[0x7F1000005000] = scenarios.KVMMCE_PAGEMAP
    tree.logs["web01.log"] = text
    tree.write()
    vm = vm_by_name(run(tree), "web01")
    [page] = vm["poisoned_pages"]
    assert (page["hva"], page["pfn"], page["gpa"]) == ("0x7f1000005000", "0xf945", "0x5000")


def test_new_qemu_lifetime_after_restart_uses_only_its_own_header(tmp_path, run):
    """QEMU restarted (new process): the older lifetime's MCE line does not count; the new
    lifetime's header gives the version when the binary shows none."""
    text = scenarios.libvirt_log("web01", qemu_version="9.2.0", start=libvirt_ts(BTIME + 100.0),
                                 previous=[MCE_WEB])
    tree = scenarios.clean_host(tmp_path, hardware_corrupted_kb=4)
    tree.procs[0].binary = b""
    tree.procs[0].exe_name = "qemu-system-x86_64-nobanner"
    tree.logs["web01.log"] = text
    tree.write()
    vm = vm_by_name(run(tree), "web01")
    assert vm["status"] == "clean"
    assert vm["qemu_version"] == "9.2.0"
    assert vm["binary_guard"] is True and vm["migration_guard"] is True


def test_second_process_with_the_same_name_is_reported_separately(tmp_path, run):
    tree = scenarios.clean_host(tmp_path)
    tree.add(Proc(1500, scenarios.libvirt_argv("web01", "11111111-2222-4333-8444-555555555556"),
                  maps=scenarios.ram_maps(0x7F3000000000, 8 << 20), binary=b""))
    tree.write()
    result = run(tree)
    assert [vm["pid"] for vm in result["vms"] if vm["name"] == "web01"] == [1000, 1500]
