# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""QEMU command lines, maps, log parsers, the binary guard and libvirt XML parsing."""

from __future__ import annotations

import os
import sys
import types

import pytest

from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.messages import UPSTREAM_REFUSAL
from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.poison import guard
from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.poison import inventory
from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.poison import libvirt_source
from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.poison import logs
from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.poison import procfs

import scenarios
from procfs_builder import BTIME, Proc, Tree


# -- command lines ------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, expected", [
    (scenarios.libvirt_argv("web01", "11111111-2222-4333-8444-555555555555"),
     {"name": "web01", "uuid": "11111111-2222-4333-8444-555555555555", "memory_mib": 64,
      "vcpus": 1, "accel": "kvm"}),
    (["qemu-system-x86_64", "-name", "web01", "-m", "4G", "-smp", "cpus=4,sockets=1"],
     {"name": "web01", "uuid": None, "memory_mib": 4096, "vcpus": 4, "accel": None}),
    (["qemu-kvm", "--name", "guest=a,,b,process=qemu:a,debug-threads=on", "-enable-kvm",
      "-m", "size=1048576k,slots=4,maxmem=8G", "-smp", "2"],
     {"name": "a,b", "uuid": None, "memory_mib": 1024, "vcpus": 2, "accel": "kvm"}),
    (["/usr/bin/qemu-system-aarch64", "-machine", "virt,accel=tcg", "-smp", "sockets=2,cores=2"],
     {"name": None, "uuid": None, "memory_mib": None, "vcpus": 4, "accel": "tcg"}),
    (scenarios.inner_qemu_argv("inner-kvmmce-ek0"),
     {"name": "inner-kvmmce-ek0", "uuid": None, "memory_mib": 64, "vcpus": 1, "accel": "kvm"}),
])
def test_qemu_command_line(argv, expected):
    assert procfs.parse_qemu_cmdline(argv) == expected


@pytest.mark.parametrize("argv0, exe, is_qemu", [
    ("/usr/bin/qemu-system-x86_64", None, True),
    ("qemu-kvm", None, True),
    ("qemu:web01", "/usr/bin/qemu-system-x86_64 (deleted)", True),  # renamed, upgraded binary
    ("memhog", "/usr/bin/memhog", False),
    ("/usr/bin/qemu-img", "/usr/bin/qemu-img", False),
    ("qemu-storage-daemon", None, False),
    ("python3", "/usr/bin/python3.11", False),
])
def test_qemu_process_recognition(argv0, exe, is_qemu):
    assert procfs.is_qemu_process([argv0], exe) is is_qemu


def test_guest_ram_selection_handles_split_vmas_and_skips_stacks_and_libs():
    maps = procfs.parse_maps("\n".join([
        "55d0c0000000-55d0c0400000 r-xp 00000000 fd:01 123 /usr/bin/qemu-system-x86_64",
        "7f0000000000-7f0000800000 rw-p 00000000 00:00 0 ",           # RAM, split in three
        "7f0000800000-7f0000801000 rw-p 00000000 00:00 0 ",
        "7f0000801000-7f0004000000 rw-p 00000000 00:00 0 ",
        "7f0004000000-7f0004001000 ---p 00000000 00:00 0 ",            # QEMU guard page
        "7f0005000000-7f0005010000 rw-p 00000000 00:00 0 ",            # 64 KiB + guard: too small
        "7f0005010000-7f0005011000 ---p 00000000 00:00 0 ",
        "7f0006000000-7f0006200000 rw-p 00000000 fd:01 9 /usr/lib/libbig.so.1",
        "7f0006200000-7f0006201000 ---p 00000000 00:00 0 ",
        "7f0007000000-7f0007800000 rw-s 00000000 00:01 7 /memfd:memory-backend-memfd (deleted)",
        "7f0007800000-7f0007801000 ---p 00000000 00:00 0 ",
        "ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0 [vsyscall]",
    ]))
    ram = procfs.guest_ram_mappings(maps)
    assert [(m.start, m.end) for m in ram] == [
        (0x7F0000000000, 0x7F0000800000), (0x7F0000800000, 0x7F0000801000),
        (0x7F0000801000, 0x7F0004000000), (0x7F0007000000, 0x7F0007800000)]
    assert not procfs.scannable(maps[-1]) and procfs.scannable(maps[0])


def test_hugetlb_recognition_by_mount_and_name():
    mapping = procfs.Mapping(0, 2 << 20, "rw-s", 0, "00:2f", 5,
                             "/dev/hugepages/libvirt/qemu/1-vm/qemu_back_mem.pc.ram.Ab (deleted)")
    assert procfs.is_hugetlb_mapping(mapping, ["/dev/hugepages"])
    assert not procfs.is_hugetlb_mapping(mapping, ["/mnt/huge"])
    anon = procfs.Mapping(0, 2 << 20, "rw-p", 0, "00:00", 0, "/anon_hugepage (deleted)")
    assert procfs.is_hugetlb_mapping(anon, [])


def test_process_start_time_and_capabilities_from_a_fixture_tree(tmp_path):
    tree = Tree(tmp_path, capeff="0000000000200000")  # CAP_SYS_ADMIN only
    tree.add(Proc(42, ["qemu-system-x86_64"], start_seconds=123.5))
    tree.write()
    since_boot, epoch = procfs.start_time(tree.proc_root, 42)
    assert since_boot == pytest.approx(123.5) and epoch == pytest.approx(BTIME + 123.5)
    capeff, problem = procfs.capabilities(tree.proc_root)
    assert problem is None and procfs.has_capability(capeff, procfs.CAP_SYS_ADMIN)
    assert not procfs.has_capability(capeff, procfs.CAP_SYS_PTRACE)
    assert procfs.initial_user_namespace(tree.proc_root) is True
    assert procfs.swap_area_count(tree.proc_root) == 0


# -- QEMU log -----------------------------------------------------------------------------------
def test_qemu_log_lifetimes_and_mce_lines():
    text = scenarios.libvirt_log(
        "web01", start="2025-11-25 06:01:10.123+0000",
        body=[scenarios.KVMMCE_LOG_LINE,
              "2025-11-25T06:02:00.000000Z qemu-system-x86_64: Guest MCE Memory Error at QEMU "
              "addr 0x7f0000001000 and GUEST addr 0x1000 of type BUS_MCEERR_AR injected",
              "qemu-system-x86_64: warning: Hardware memory error at addr 0x7f00dead0000 of type "
              "BUS_MCEERR_AO for memory used by QEMU itself instead of guest system!"],
        previous=["old line"])
    lifetimes = logs.parse_qemu_log(text)
    assert len(lifetimes) == 2 and lifetimes[0].end_reason == "destroyed"
    current, why = logs.current_lifetime(lifetimes, logs.parse_libvirt_timestamp(
        "2025-11-25 06:01:10.500+0000"))
    assert why is None and current is lifetimes[1]
    assert current.qemu_version == "7.2.22"
    assert current.qemu_package == "Debian 1:7.2+dfsg-7+deb12u18+b3"
    events = current.mce_events()
    assert [(e["hva"], e["gpa"], e["type"]) for e in events] == [
        (0x7FAFE2145000, 0x2345000, "BUS_MCEERR_AO"), (0x7F0000001000, 0x1000, "BUS_MCEERR_AR")]
    assert len(current.qemu_itself_events()) == 1


def test_headerless_stderr_log_is_one_lifetime():
    lifetimes = logs.parse_qemu_log(scenarios.KVM_RESET_LOG_LINE + "\n")
    current, why = logs.current_lifetime(lifetimes, None)
    assert why is None and current.mce_events()[0]["hva"] == scenarios.KVM_RESET_HVA


def test_rotated_log_is_read_before_the_current_one(tmp_path):
    (tmp_path / "vm.log.0").write_text("2025-11-25 06:00:00.000+0000: starting up libvirt "
                                       "version: 9.0.0, qemu version: 8.2.2, kernel: x\nA\n")
    (tmp_path / "vm.log").write_text("B\n")
    text, paths, problems = logs.domain_log_text(str(tmp_path), "vm")
    assert paths == [str(tmp_path / "vm.log.0"), str(tmp_path / "vm.log")] and problems == []
    [lifetime] = logs.parse_qemu_log(text)
    assert lifetime.qemu_version == "8.2.2" and lifetime.lines[-1] == "B"


def test_libvirt_timestamps_with_offsets():
    utc = logs.parse_libvirt_timestamp("2025-11-25 06:00:00.000+0000")
    assert logs.parse_libvirt_timestamp("2025-11-25 07:00:00.000+0100") == utc
    assert logs.parse_libvirt_timestamp("2025-11-25 05:00:00-0100") == utc
    assert logs.parse_libvirt_timestamp("yesterday") is None


# -- kernel log ---------------------------------------------------------------------------------
def test_kernel_log_lines_of_all_kernel_eras():
    text = "\n".join([
        scenarios.KVMMCE_DMESG.strip(),
        "[   87.294862] MCE: Killing live_migration:199 due to hardware memory corruption fault "
        "at 7fafe2145000",
        "6,1234,15096747,-;Memory failure: 0x8d0d: recovery action for dirty LRU page: Recovered",
        "4,1240,17930129,-;Memory failure: 0xa3ef: Killing memhog:122 due to hardware memory "
        "corruption",
        "Nov 25 06:01:02 hv1 kernel: Memory failure: 0x1234: forcibly killing CPU 1/KVM:4251 "
        "because of failure to unmap corrupted page",
        "[    1.000000] unrelated line",
    ])
    events = logs.parse_kernel_log(text)
    kinds = [(e["kind"], e.get("pfn"), e.get("tid"), e.get("seconds")) for e in events]
    assert kinds == [
        ("sigbus", 0xF945, 190, 82.572964),
        ("recovery", 0xF945, None, 82.573607),
        ("consumed", None, 199, 87.294862),
        ("recovery", 0x8D0D, None, 15.096747),
        ("sigbus", 0xA3EF, 122, 17.930129),
        ("forcibly_killed", 0x1234, 4251, None),
    ]
    assert events[2]["addr"] == 0x7FAFE2145000 and events[5]["comm"] == "CPU 1/KVM"


def test_kernel_log_events_before_the_process_started_are_not_attributed(tmp_path):
    tree = scenarios.kvmmce_61(tmp_path)
    tree.procs[0].start_seconds = 90.0  # started after the 82.57 s SIGBUS line
    tree.write()
    result = inventory.collect(inventory.Options(**tree.options()))
    assert not any(e["source"] == "kernel_log" for e in result["vms"][0]["evidence"])


# -- guard ----------------------------------------------------------------------------------------
def _binary(tmp_path, name, payload):
    path = tmp_path / name
    path.write_bytes(b"\x7fELF" + os.urandom(64) + payload + os.urandom(64))
    return str(path)


def test_binary_inspection_finds_refusal_and_version(tmp_path):
    inspector = guard.BinaryInspector()
    patched = inspector.inspect(_binary(tmp_path, "patched", scenarios.QEMU_VERSION_BANNER + b"\0"
                                        + UPSTREAM_REFUSAL.encode()))
    assert patched == {"carries_refusal": True, "poison_holes": False, "version": "7.2.22",
                       "problem": None}
    stock = inspector.inspect(_binary(tmp_path, "stock", scenarios.QEMU_VERSION_BANNER))
    assert stock["carries_refusal"] is False and stock["version"] == "7.2.22"
    assert stock["poison_holes"] is False
    missing = inspector.inspect(str(tmp_path / "nope"))
    assert missing["carries_refusal"] is None and "cannot open" in missing["problem"]
    assert missing["poison_holes"] is None


def test_binary_inspection_finds_the_poison_holes_capability(tmp_path, monkeypatch):
    """The x-poison-holes series compiles the capability's QAPI name into the binary (the
    capability table, "x-poison-holes is not compatible with multifd"); it is found across a
    read-chunk boundary too."""
    monkeypatch.setattr(guard, "_CHUNK", 4096)
    payload = (scenarios.QEMU_VERSION_BANNER + b"\0" + UPSTREAM_REFUSAL.encode() + b"\0"
               + b"y" * (4096 - 7) + b"x-poison-holes\0")
    holes = guard.BinaryInspector().inspect(_binary(tmp_path, "holes", payload))
    assert holes["poison_holes"] is True and holes["carries_refusal"] is True
    near_miss = guard.BinaryInspector().inspect(_binary(tmp_path, "near", b"x-poison-hole\0"))
    assert near_miss["poison_holes"] is False


def test_refusal_string_across_a_read_chunk_boundary(tmp_path, monkeypatch):
    monkeypatch.setattr(guard, "_CHUNK", 4096)
    payload = b"x" * (4096 - 30) + UPSTREAM_REFUSAL.encode()
    result = guard.BinaryInspector().inspect(_binary(tmp_path, "b", payload))
    assert result["carries_refusal"] is True


@pytest.mark.parametrize("binary, log_version, accel, expected", [
    ({"carries_refusal": True, "version": "7.2.22"}, None, "kvm", (True, True)),
    ({"carries_refusal": False, "version": "7.2.22"}, None, "kvm", (False, False)),
    ({"carries_refusal": False, "version": "9.0.0"}, None, "kvm", (True, True)),
    ({"carries_refusal": False, "version": None}, "10.0.3", "kvm", (True, True)),
    ({"carries_refusal": None, "version": None, "problem": "EACCES"}, None, "kvm", (None, None)),
    ({"carries_refusal": None, "version": None, "problem": "EACCES"}, "8.2.2", None, (None, None)),
    ({"carries_refusal": True, "version": "7.2.22"}, None, "tcg", (False, True)),
    ({"carries_refusal": True, "version": "7.2.22"}, None, None, (True, True)),
])
def test_guard_decision(binary, log_version, accel, expected):
    migration_guard, binary_guard, details = guard.decide(binary, log_version, accel)
    assert (migration_guard, binary_guard) == expected
    assert details


def test_vm_started_before_the_patched_qemu_was_installed_is_unguarded(tmp_path):
    """Two VMs: one still runs the old binary (its /proc/PID/exe link ends in "(deleted)"),
    one was started after the patched package replaced it."""
    tree = Tree(tmp_path, hardware_corrupted_kb=0)
    tree.add(Proc(10, scenarios.libvirt_argv("old", "10101010-1010-4010-8010-101010101010"),
                  maps=scenarios.ram_maps(0x7F0000000000, 4 << 20), fds={5: "anon_inode:kvm-vm"},
                  binary=scenarios.QEMU_VERSION_BANNER, exe_deleted=True))
    tree.add(Proc(11, scenarios.libvirt_argv("new", "11111111-1111-4111-8111-111111111111"),
                  maps=scenarios.ram_maps(0x7F0000000000, 4 << 20), fds={5: "anon_inode:kvm-vm"},
                  binary=scenarios.QEMU_VERSION_BANNER + b"\0" + scenarios.REFUSAL))
    tree.write()
    result = inventory.collect(inventory.Options(**tree.options()))
    old, new = (next(v for v in result["vms"] if v["name"] == n) for n in ("old", "new"))
    assert old["qemu_binary"].endswith("qemu-system-x86_64 (deleted)")
    assert old["migration_guard"] is False and new["migration_guard"] is True
    assert not new["qemu_binary"].endswith("(deleted)")


# -- libvirt ------------------------------------------------------------------------------------
DOMAIN_XML = """<domain type='kvm' id='3'>
  <name>web01</name>
  <uuid>11111111-2222-4333-8444-555555555555</uuid>
  <memory unit='KiB'>4194304</memory>
  <currentMemory unit='KiB'>4194304</currentMemory>
  <memoryBacking><hugepages><page size='2048' unit='KiB'/></hugepages><nosharepages/>
    <source type='memfd'/><access mode='shared'/></memoryBacking>
  <vcpu placement='static' current='2'>4</vcpu>
</domain>"""


def test_domain_xml():
    info = libvirt_source.parse_domain_xml(DOMAIN_XML)
    assert info["name"] == "web01" and info["type"] == "kvm"
    assert info["memory_mib"] == 4096 and info["vcpus"] == 2
    assert info["memory_backing"] == {"hugepages": ["2048KiB"], "source": "memfd",
                                      "access": "shared", "nosharepages": True}


def test_pid_from_libvirt_run_dir(tmp_path):
    (tmp_path / "a.pid").write_text("4242\n")
    (tmp_path / "b.xml").write_text("<domstatus state='running' reason='booted' pid='777'>\n")
    assert libvirt_source.pid_from_run_dir(str(tmp_path), "a") == 4242
    assert libvirt_source.pid_from_run_dir(str(tmp_path), "b") == 777
    assert libvirt_source.pid_from_run_dir(str(tmp_path), "c") is None


def test_libvirt_domains_are_merged_with_processes(tmp_path, monkeypatch):
    """Merge rules only (the hypervisor lab tests real libvirt): by PID, then by UUID; a running
    domain without a process is unknown; a process unknown to libvirt is kept."""
    tree = scenarios.clean_host(tmp_path)
    tree.add(Proc(1700, ["qemu-system-x86_64", "-name", "stray"],
                  maps=scenarios.ram_maps(0x7F3000000000, 4 << 20), binary=b""))
    tree.write()
    domains = [
        {"name": "web01", "uuid": "11111111-2222-4333-8444-555555555555", "pid": 1000,
         "memory_mib": 64, "vcpus": 1, "memory_backing": {}},
        {"name": "db01", "uuid": "66666666-7777-4888-9999-aaaaaaaaaaaa", "pid": None,
         "memory_mib": 64, "vcpus": 1, "memory_backing": {}},
        {"name": "ghost", "uuid": "00000000-0000-4000-8000-000000000001", "pid": 999,
         "memory_mib": 64, "vcpus": 1, "memory_backing": {}},
    ]
    monkeypatch.setattr(libvirt_source, "discover", lambda uri, run_dir: (domains, None))
    result = inventory.collect(inventory.Options(**tree.options(libvirt_uri="qemu:///system")))
    by_name = {vm["name"]: vm for vm in result["vms"]}
    assert by_name["web01"]["discovered_by"] == ["libvirt", "procfs"]
    assert by_name["db01"]["pid"] == 1001 and by_name["db01"]["status"] == "clean"
    assert by_name["ghost"]["status"] == "unknown" and by_name["ghost"]["pid"] is None
    assert "no QEMU process" in by_name["ghost"]["reasons"][0]
    assert by_name["stray"]["discovered_by"] == ["procfs"]
    assert result["discovery"]["libvirt"]["domains"] == 3


def test_libvirt_module_missing_falls_back_to_procfs(monkeypatch):
    monkeypatch.setitem(sys.modules, "libvirt", None)  # import libvirt -> ImportError
    domains, problem = libvirt_source.discover("qemu:///system", "/nonexistent")
    assert domains == [] and "python3-libvirt is not installed" in problem


def test_libvirt_unreachable_is_a_problem_not_a_failure(monkeypatch):
    class LibvirtError(Exception):
        pass

    fake = types.SimpleNamespace(libvirtError=LibvirtError, registerErrorHandler=lambda f, c: None)

    def open_ro(uri):
        raise LibvirtError("Failed to connect socket to '/var/run/libvirt/libvirt-sock-ro'")

    fake.openReadOnly = open_ro
    monkeypatch.setitem(sys.modules, "libvirt", fake)
    domains, problem = libvirt_source.discover("qemu:///system", "/nonexistent")
    assert domains == [] and "cannot connect to libvirt at qemu:///system" in problem
