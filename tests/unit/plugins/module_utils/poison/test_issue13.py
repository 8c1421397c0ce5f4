# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Issue 13 on fixture trees: exact VM identity, the result's origin, shared-memory RAM proved
readable, rotated QEMU logs, undecidable hugetlb mappings, and the scan right before a live
migration. Each fixture says which real kernel/QEMU behaviour it copies (scenarios.py and the
research note poison-detection-facts.md)."""

from __future__ import annotations

import errno
import gzip
import os
import time

import pytest

from ansible_collections.kvm_ras.poison_guard.plugins.module_utils import migration
from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.messages import UPSTREAM_REFUSAL
from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.poison import backing
from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.poison import libvirt_source
from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.poison import logs

import scenarios
from conftest import vm_by_name
from procfs_builder import BOOT_ID, BTIME, CLK_TCK, Proc


# -- item 1: exact identity ---------------------------------------------------------------------
def _twins(tmp_path):
    """A libvirt-started web01 (clean) and a second QEMU started by hand with the same -name
    whose RAM holds the kvmmce run's hwpoison entry (Debian 6.1: 0x40800000001f28ba, PFN 0xf945
    with KPF_HWPOISON)."""
    tree = scenarios.clean_host(tmp_path, hardware_corrupted_kb=4,
                                kpageflags={scenarios.KVMMCE_PFN: scenarios.KPF_61_POISONED})
    base = 0x7F3000000000
    twin = Proc(1500, scenarios.libvirt_argv("web01", "11111111-2222-4333-8444-555555555556"),
                comm="qemu-system-x86", start_seconds=300.0, maps=scenarios.ram_maps(base, 8 << 20),
                fds={20: "anon_inode:kvm-vm"}, binary=scenarios.QEMU_VERSION_BANNER)
    twin.fill(base, base + (8 << 20), lambda i: scenarios.present(0x90000 + i))
    twin.entries[base + 0x3000] = scenarios.KVMMCE_PAGEMAP
    tree.add(twin)
    return tree.write()


def test_same_name_twice_is_not_listed_clean_and_entries_carry_their_identity(tmp_path, run):
    result = run(_twins(tmp_path))
    web = [vm for vm in result["vms"] if vm["name"] == "web01"]
    assert [(vm["pid"], vm["status"]) for vm in web] == [(1000, "clean"), (1500, "poisoned")]
    assert [vm["start_ticks"] for vm in web] == [int(100.0 * CLK_TCK), int(300.0 * CLK_TCK)]
    assert web[1]["started_at"] == pytest.approx(BTIME + 300.0, abs=0.01)
    assert web[1]["uuid"] == "11111111-2222-4333-8444-555555555556"
    assert result["poisoned_vms"] == ["web01"]
    assert result["clean_vms"] == ["db01"]
    assert result["ambiguous_vms"] == ["web01"]


def test_each_name_is_listed_once_per_status(tmp_path, run):
    tree = scenarios.clean_host(tmp_path)
    tree.add(Proc(1500, scenarios.libvirt_argv("web01", "11111111-2222-4333-8444-555555555556"),
                  maps=scenarios.ram_maps(0x7F3000000000, 8 << 20), binary=b""))
    tree.write()
    result = run(tree)
    for key in ("poisoned_vms", "unknown_vms", "clean_vms"):
        assert len(result[key]) == len(set(result[key])), key
    assert "web01" not in result["clean_vms"] and result["ambiguous_vms"] == ["web01"]


# -- item 2: origin -----------------------------------------------------------------------------
def test_result_carries_host_boot_and_scan_time(tmp_path, run):
    tree = scenarios.clean_host(tmp_path).write()
    result = run(tree, clock=lambda: 1764055000.25)
    assert result["origin"] == {"hostname": "hv1", "boot_id": BOOT_ID, "uptime_seconds": 5000.25,
                                "scanned_at": 1764055000.25,
                                "scanned_at_iso": "2025-11-25T07:16:40Z"}


def test_precheck_runs_the_real_core_for_exactly_one_domain(tmp_path):
    """live_migrate's last scan, with the detection core on fixture trees: the 6.12 hwpoison
    entry (type 27) of web612 refuses the migration; a clean VM goes."""
    tree = scenarios.hwpoison_612(tmp_path / "p").write()
    opts = tree.options()
    del opts["libvirt_uri"]
    go, report, message = migration.poison_precheck(
        "3e6f5b1c-9a4d-4c1e-8f2a-0b7c6d5e4f30", "web612", "", options=opts)
    assert go is False and report["status"] == "poisoned" and report["pid"] == 300
    assert UPSTREAM_REFUSAL in message and "pagemap_hwpoison" in message
    clean = scenarios.clean_host(tmp_path / "c").write()
    opts = clean.options()
    del opts["libvirt_uri"]
    go, report, message = migration.poison_precheck(
        "66666666-7777-4888-9999-aaaaaaaaaaaa", "db01", "", options=opts)
    assert (go, report["status"], report["pid"], message) == (True, "clean", 1001, None)
    go, report, message = migration.poison_precheck(
        "00000000-0000-4000-8000-000000000000", "gone", "", options=opts)
    assert go is False and "did not find VM 'gone'" in message


def test_precheck_refuses_when_two_processes_answer(tmp_path):
    tree = _twins(tmp_path)
    opts = tree.options()
    del opts["libvirt_uri"]
    go, report, message = migration.poison_precheck(None, "web01", "", options=opts)
    assert go is False and "found 2 QEMU processes" in message


# -- item 3: shared memory -----------------------------------------------------------------------
def test_shared_memory_backing_read_fine_is_clean(tmp_path, run):
    vm = vm_by_name(run(scenarios.memfd_hidden(tmp_path)), "vhost01")
    assert vm["status"] == "clean", vm["reasons"]
    assert any("read 8 MiB of data" in e["detail"] for e in vm["evidence"])


def test_shared_memory_poison_behind_a_none_pte_is_found_by_the_read(tmp_path, run, monkeypatch):
    """read() of a shmem page-cache page with PageHWPoison returns EIO; the fixture file stands
    for the memfd and raises what the kernel raises at that offset."""
    tree = scenarios.memfd_hidden(tmp_path)
    real_pread = os.pread
    bad = scenarios.MEMFD_HIDDEN_OFFSET

    def pread(fd, size, offset):
        if "map_files" in os.readlink("/proc/self/fd/%d" % fd) and offset <= bad < offset + size:
            if offset == bad:
                raise OSError(errno.EIO, "Input/output error")
            return real_pread(fd, bad - offset, offset)  # bytes up to the poisoned page
        return real_pread(fd, size, offset)

    monkeypatch.setattr(os, "pread", pread)
    vm = vm_by_name(run(tree), "vhost01")
    assert vm["status"] == "poisoned"
    [page] = vm["poisoned_pages"]
    assert page["source"] == "backing_read_eio"
    assert page["hva"] == hex(scenarios.MEMFD_HIDDEN_BASE + bad)


def test_shared_memory_that_cannot_be_read_is_unknown_with_the_fix(tmp_path, run):
    vm = vm_by_name(run(scenarios.memfd_hidden(tmp_path, with_map_file=False)), "vhost01")
    assert vm["status"] == "unknown"
    assert "1 poisoned PFN(s) that no scanned page table holds" in vm["reasons"][0]
    assert "run poison_info as root" in vm["reasons"][0]


def test_shared_memory_over_the_read_limit_is_unknown_naming_the_option(tmp_path, run):
    vm = vm_by_name(run(scenarios.memfd_hidden(tmp_path), backing_read_limit_mib=4), "vhost01")
    assert vm["status"] == "unknown"
    assert "raise backing_read_limit_mib to at least 8" in vm["reasons"][0]


def test_shared_memory_is_not_read_when_the_host_has_no_poison(tmp_path, run, monkeypatch):
    tree = scenarios.memfd_hidden(tmp_path, hardware_corrupted_kb=0, kpageflags={})
    monkeypatch.setattr(backing, "read_range", lambda *a: pytest.fail("read without need"))
    vm = vm_by_name(run(tree), "vhost01")
    assert vm["status"] == "clean"


def test_shared_memory_is_not_read_when_every_poisoned_pfn_is_accounted_for(tmp_path, run, monkeypatch):
    """The host's only poisoned PFN is the hwpoison entry of another scanned VM."""
    tree = scenarios.memfd_hidden(tmp_path, kpageflags={scenarios.KVMMCE_PFN: scenarios.KPF_61_POISONED})
    other = Proc(970, scenarios.libvirt_argv("anon01", "5a5a5a5a-1b1b-4c2c-8d3d-4e4e4e4e4e40"),
                 maps=scenarios.ram_maps(0x7E8000000000, 8 << 20), fds={3: "anon_inode:kvm-vm"},
                 binary=scenarios.QEMU_VERSION_BANNER)
    other.entries[0x7E8000000000 + 0x1000] = scenarios.KVMMCE_PAGEMAP
    tree.add(other)
    tree._write_proc(other)
    monkeypatch.setattr(backing, "read_range", lambda *a: pytest.fail("read without need"))
    result = run(tree)
    assert vm_by_name(result, "anon01")["status"] == "poisoned"
    vm = vm_by_name(result, "vhost01")
    assert vm["status"] == "clean"
    assert any("accounted for" in e["detail"] for e in vm["evidence"])


def test_backing_read_skips_holes(tmp_path, monkeypatch):
    """SEEK_DATA/SEEK_HOLE (shmem since 3.5, ext4): only the data range is read; a read inside
    a hole would fail here."""
    path = tmp_path / "memfd"
    with open(path, "wb") as handle:
        handle.truncate(64 << 20)
        handle.seek(32 << 20)
        handle.write(b"\1" * (1 << 20))
    real_pread = os.pread
    reads = []

    def pread(fd, size, offset):
        reads.append((offset, size))
        return real_pread(fd, size, offset)

    monkeypatch.setattr(os, "pread", pread)
    outcome = backing.read_range(str(path), 0, 64 << 20)
    assert outcome.error is None and outcome.bad_offset is None
    if outcome.bytes_read == 64 << 20:
        pytest.skip("this file system reports no holes")
    assert all((32 << 20) - (1 << 20) <= off < (33 << 20) + (1 << 20) for off, _size in reads)


def test_backing_read_reports_ehwpoison_as_poison(tmp_path, monkeypatch):
    path = tmp_path / "f"
    path.write_bytes(b"\1" * (4 << 20))

    def pread(fd, size, offset):
        raise OSError(backing.EHWPOISON, "Memory page has hardware error")

    monkeypatch.setattr(os, "pread", pread)
    outcome = backing.read_range(str(path), 0, 4 << 20)
    assert outcome.bad_offset == 0 and "EHWPOISON" in outcome.error


# -- item 3: rotated logs -------------------------------------------------------------------------
MCE_WEB = ("2025-11-25T06:05:00.000000Z qemu-system-x86_64: warning: Guest MCE Memory Error at "
           "QEMU addr 0x7f1000005000 and GUEST addr 0x5000 of type BUS_MCEERR_AO injected")


def _unprivileged_web(tmp_path):
    tree = scenarios.clean_host(tmp_path, capeff="0000000000000000", kpageflags_readable=False,
                                hardware_corrupted_kb=4)
    return tree.write(), tree.procs[0]


def _header_text(web, body):
    start = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(web.start_epoch)) + ".000+0000"
    return scenarios.libvirt_log("web01", start=start, body=body)


@pytest.mark.parametrize("layout", ["virtlogd", "logrotate"])
def test_mce_line_rotated_out_of_log_and_log0_still_counts(tmp_path, run, layout):
    """virtlogd (max_backups=3) keeps .log, .log.0, .log.1, .log.2; logrotate (rotate 4,
    compress) keeps .log, .log.1, .log.2.gz, ... Here the lifetime's header and MCE line sit in
    the third-newest file, and two newer files hold only later chatter."""
    tree, web = _unprivileged_web(tmp_path)
    old = _header_text(web, [MCE_WEB])
    chatter = ("2025-11-25T07:00:00.000000Z qemu-system-x86_64: warning: host doesn't support "
               "requested feature: CPUID.80000001H:ECX.svm [bit 2]\n") * 3
    log_dir = tree.log_dir
    if layout == "virtlogd":
        files = {"web01.log.1": old, "web01.log.0": chatter, "web01.log": chatter}
    else:
        files = {"web01.log.2.gz": old, "web01.log.1": chatter, "web01.log": chatter}
    for name, text in files.items():
        path = os.path.join(log_dir, name)
        if name.endswith(".gz"):
            with gzip.open(path, "wb") as handle:
                handle.write(text.encode())
        else:
            with open(path, "w", encoding="utf-8") as handle:
                handle.write(text)
    vm = vm_by_name(run(tree), "web01")
    assert vm["status"] == "poisoned"
    assert [p["source"] for p in vm["poisoned_pages"]] == ["qemu_log"]


def test_rotated_logs_are_read_newest_first_until_the_lifetime_header(tmp_path):
    for name, text in {"a.log": "x\n", "a.log.0": "2025-11-25 06:01:10.123+0000: starting up libvirt\n",
                       "a.log.1": "never read\n", "ab.log": "other VM\n"}.items():
        (tmp_path / name).write_text(text)
    assert [os.path.basename(p) for p in logs.rotated_logs(str(tmp_path), "a")] == ["a.log", "a.log.0", "a.log.1"]
    text, paths, problems = logs.domain_log_text(str(tmp_path), "a")
    assert [os.path.basename(p) for p in paths] == ["a.log.0", "a.log"] and problems == []
    assert "never read" not in text


# -- item 4: hugetlb that cannot be decided --------------------------------------------------------
def test_memfd_whose_hugetlb_nature_cannot_be_decided_is_unknown_without_pagemap_scan(tmp_path, run):
    """map_files not statable (CAP_SYS_ADMIN only) and smaps unreadable: a memfd created with
    hugetlb=on looks the same in maps (``/memfd:... (deleted)``), and its non-present huge pages
    read as 0 in pagemap (§1.5c), so it must not be scanned as ordinary memory."""
    tree = scenarios.memfd_hidden(tmp_path, hardware_corrupted_kb=0, kpageflags={}, with_map_file=False)
    os.remove(os.path.join(tree.proc_root, "960", "smaps"))
    vm = vm_by_name(run(tree), "vhost01")
    assert vm["status"] == "unknown"
    assert "could not be decided" in vm["reasons"][0] and "PAGEMAP_SCAN" in vm["reasons"][0]


def test_undecided_mapping_is_scanned_as_hugetlb_with_pagemap_scan(tmp_path, run):
    """On 6.7+ PAGEMAP_SCAN reports a poisoned huge page as SWAPPED|HUGE (0x50, the verified
    6.18 run); the undecided mapping goes through that path."""
    tree = scenarios.memfd_hidden(tmp_path, hardware_corrupted_kb=0, kpageflags={}, with_map_file=False)
    os.remove(os.path.join(tree.proc_root, "960", "smaps"))
    hole = scenarios.MEMFD_HIDDEN_BASE + (2 << 20)

    def fake_scan(fd, start, end):
        return [(hole, hole + (2 << 20), 0x50)] if start <= hole < end else []

    vm = vm_by_name(run(tree, pagemap_scan=fake_scan), "vhost01")
    assert vm["status"] == "poisoned"
    assert vm["poisoned_pages"][0]["source"] == "pagemap_scan_hugetlb"


def test_xml_hugepages_without_a_hugetlb_mapping_is_unknown(tmp_path, run, monkeypatch):
    """libvirt's XML has <memoryBacking><hugepages/> but QEMU's RAM is not on a recognised
    hugetlbfs mount (e.g. a mount only visible in QEMU's namespace): not scanned as ordinary
    memory. libvirt itself is replaced by what libvirt_source returns for such a domain."""
    tree = scenarios.clean_host(tmp_path).write()
    domains = [{"name": "web01", "uuid": "11111111-2222-4333-8444-555555555555", "pid": 1000,
                "memory_mib": 64, "vcpus": 1, "memory_backing": {"hugepages": ["2048KiB"]}}]
    monkeypatch.setattr(libvirt_source, "discover", lambda uri, run_dir: (domains, None))
    vm = vm_by_name(run(tree, libvirt_uri="qemu:///system"), "web01")
    assert vm["status"] == "unknown"
    assert "asks for hugepages" in vm["reasons"][0]
    assert vm_by_name(run(tree), "db01")["status"] == "clean"
