# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The facts a migration with holes needs (issue 19): the host kernel's UFFD_FEATURE_POISON,
QEMU's own poison list (QMP x-query-hwpoison through libvirt) and the holes it does not know.

The userfaultfd probe also runs for real on this machine's kernel; the stand-ins copy what the
kernel answers (userfaultfd(2) and UFFDIO_API, fs/userfaultfd.c: EINVAL for an unknown flag or
feature) and what libvirt 9.0 passes back from QEMU (the QMP reply unchanged, errors included).
"""

from __future__ import annotations

import errno
import json
import os
import platform

import pytest

from ansible_collections.kvm_ras.poison_guard.plugins.module_utils import libvirt as libvirt_adapter
from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.poison import libvirt_source
from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.poison import qemu_list
from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.poison import swaptype
from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.poison import uffd

import scenarios
from conftest import vm_by_name

# What QEMU 7.2 with the x-poison-holes series answered in the poison lab for the hole at
# GPA 0x80000 (docs/poison-holes.md).
LAB_ENTRY = {"block": "pc.ram", "offset": 524288, "page-size": 4096, "gpa": 524288,
             "hva": 139706426195968}


# -- UFFD_FEATURE_POISON ----------------------------------------------------------------------
class Calls:
    """userfaultfd(2) and UFFDIO_API as a kernel of a given vintage answers them."""

    machine = "x86_64"

    def __init__(self, open_errno=0, api_errno=0, granted=None):
        self.open_errno, self.api_errno, self.granted = open_errno, api_errno, granted
        self.flags = None
        self.asked = None
        self.closed = []

    def userfaultfd(self, flags):
        self.flags = flags
        return (-1, self.open_errno) if self.open_errno else (7, 0)

    def uffdio_api(self, fd, features):
        self.asked = features
        if self.api_errno:
            return -1, self.api_errno
        return 0, features if self.granted is None else self.granted

    def close(self, fd):
        self.closed.append(fd)


def test_uffd_probe_linux_66_grants_poison():
    calls = Calls()
    assert uffd.probe(calls) == (True, "UFFDIO_API granted UFFD_FEATURE_POISON: UFFDIO_POISON is available")
    assert calls.flags == os.O_CLOEXEC | 1  # UFFD_USER_MODE_ONLY: no privilege needed
    assert calls.asked == 1 << 14 and calls.closed == [7]


@pytest.mark.parametrize("calls, expected, words", [
    # Linux 5.11 - 6.5: userfaultfd opens, UFFDIO_API rejects the unknown feature with EINVAL
    (Calls(api_errno=errno.EINVAL), False, "Linux 6.6 or later"),
    # before 5.11: UFFD_USER_MODE_ONLY itself is an unknown flag
    (Calls(open_errno=errno.EINVAL), False, "older than 5.11"),
    # CONFIG_USERFAULTFD=n
    (Calls(open_errno=errno.ENOSYS), False, "CONFIG_USERFAULTFD"),
    # a seccomp filter or LSM refusing the syscall: not known
    (Calls(open_errno=errno.EPERM), None, "EPERM"),
    (Calls(api_errno=errno.EFAULT), None, "EFAULT"),
    # a kernel that answers without the bit
    (Calls(granted=0), False, "without granting"),
])
def test_uffd_probe_answers_of_other_kernels(calls, expected, words):
    value, detail = uffd.probe(calls)
    assert value is expected and words in detail
    if not calls.open_errno:
        assert calls.closed == [7]  # the descriptor never leaks


def test_uffd_probe_on_this_kernel_agrees_with_its_version():
    """The real probe: Linux 6.6 added UFFD_FEATURE_POISON (commit fc71884a5f59)."""
    if platform.machine() not in uffd.SYSCALL_NUMBERS:
        pytest.skip("no userfaultfd syscall number for %s" % platform.machine())
    value, detail = uffd.probe()
    version = swaptype.parse_kernel_version(platform.release())
    assert value is not None, detail
    assert value is (tuple(version[:2]) >= (6, 6)), (platform.release(), detail)


def test_host_facts_report_the_probe(tmp_path, run):
    tree = scenarios.kvmmce_61(tmp_path).write()
    result = run(tree, uffd_probe=lambda: (False, "UFFDIO_API refused it"))
    assert result["host"]["uffd_poison"] is False
    assert result["host"]["uffd_poison_detail"] == "UFFDIO_API refused it"


# -- QEMU's list ------------------------------------------------------------------------------
def test_parse_entries_keeps_the_fields_and_refuses_other_shapes():
    unmapped = {"block": "pc.ram", "offset": 0, "page-size": 4096, "hva": 4096}
    assert qemu_list.parse_entries([LAB_ENTRY, unmapped]) == [LAB_ENTRY, unmapped]
    for bad in ({"x": 1}, [{"offset": 1}], [dict(LAB_ENTRY, hva="0x1")],
                [dict(LAB_ENTRY, **{"page-size": 0})], [dict(LAB_ENTRY, offset=True)]):
        with pytest.raises(ValueError):
            qemu_list.parse_entries(bad)


def test_unknown_to_qemu_compares_host_pages():
    hva = LAB_ENTRY["hva"]
    huge = {"block": "pc.ram", "offset": 0, "page-size": 2 << 20, "hva": 0x7F0000000000}
    holes = [{"hva": hva}, {"hva": hva + 4096}, {"hva": 0x7F0000001000},
             {"hva": 0x7F0000000000, "size": 4 << 20}]
    assert qemu_list.unknown_to_qemu(holes, [LAB_ENTRY, huge]) == [hva + 4096, 0x7F0000000000]
    assert qemu_list.unknown_to_qemu([], []) == []
    assert qemu_list.unknown_to_qemu([{"hva": hva}], []) == [hva]


class FakeLibvirtError(Exception):
    def __init__(self, msg, code=1):
        super().__init__(msg)
        self.code = code

    def get_error_code(self):
        return self.code


class FakeDomain:
    def __init__(self, name, reply):
        self.name_, self.reply = name, reply


class FakeConn:
    def __init__(self, domains):
        self.domains = domains
        self.closed = False

    def lookupByUUIDString(self, uuid):
        for dom in self.domains.values():
            if dom.uuid == uuid:
                return dom
        raise FakeLibvirtError("Domain not found: no domain with matching uuid", 42)

    def lookupByName(self, name):
        if name in self.domains:
            return self.domains[name]
        raise FakeLibvirtError("Domain not found: no domain with matching name", 42)

    def close(self):
        self.closed = True


class FakeBinding:
    libvirtError = FakeLibvirtError
    VIR_ERR_NO_DOMAIN = 42

    def __init__(self, conn):
        self.conn = conn
        self.opened = []

    def open(self, uri):
        self.opened.append(uri)
        return self.conn


class FakeQemu:
    def __init__(self):
        self.sent = []

    def qemuMonitorCommand(self, dom, command, flags):
        self.sent.append((dom.name_, json.loads(command), flags))
        if isinstance(dom.reply, Exception):
            raise dom.reply
        return dom.reply


def _install(monkeypatch, domains):
    conn = FakeConn(domains)
    binding, qemu = FakeBinding(conn), FakeQemu()
    monkeypatch.setattr(libvirt_adapter, "load", lambda: (binding, None))
    monkeypatch.setattr(libvirt_adapter, "load_qemu", lambda: (qemu, None))
    return binding, qemu, conn


def test_read_asks_each_domain_and_words_each_failure(monkeypatch):
    def dom(name, uuid, reply):
        d = FakeDomain(name, reply)
        d.uuid = uuid
        return d

    domains = {
        "holes": dom("holes", "u1", json.dumps({"return": [LAB_ENTRY], "id": "libvirt-12"})),
        # what libvirt 9.0 hands back from a QEMU without the command
        "stock": dom("stock", "u2", json.dumps({"id": "libvirt-13", "error": {
            "class": "CommandNotFound", "desc": "The command x-query-hwpoison has not been found"}})),
        "broken": dom("broken", "u3", FakeLibvirtError("Cannot write data: Broken pipe")),
        "junk": dom("junk", "u4", "not json"),
    }
    binding, qemu, conn = _install(monkeypatch, domains)
    keys = [("holes", "u1"), ("stock", "u2"), ("broken", "u3"), ("junk", "u4"), ("gone", "u5")]
    answers = qemu_list.read("qemu:///system", keys)
    assert binding.opened == ["qemu:///system"] and conn.closed
    assert answers[("holes", "u1")] == ([LAB_ENTRY], None)
    assert answers[("stock", "u2")][0] is None and "lacks the x-poison-holes series" in answers[("stock", "u2")][1]
    assert answers[("broken", "u3")][0] is None and "Broken pipe" in answers[("broken", "u3")][1]
    assert answers[("junk", "u4")][0] is None and "not JSON" in answers[("junk", "u4")][1]
    assert answers[("gone", "u5")] == (None, "libvirt no longer has domain 'gone', so its QEMU poison list was not read")
    assert qemu.sent[0] == ("holes", {"execute": "x-query-hwpoison"}, 0)


def test_read_without_libvirt_qemu_says_so(monkeypatch):
    monkeypatch.setattr(libvirt_adapter, "load_qemu", lambda: (None, "ImportError"))
    answers = qemu_list.read("qemu:///system", [("vm", "u")])
    assert answers[("vm", "u")][0] is None and "libvirt_qemu" in answers[("vm", "u")][1]


# -- poison_info per VM -----------------------------------------------------------------------
KVMMCE_UUID = "2f6d3c1e-8b4a-4c5d-9e6f-7a8b9c0d1e2f"


def _holes_tree(tmp_path, monkeypatch, binary_extra=b"\0x-poison-holes\0"):
    tree = scenarios.kvmmce_61(tmp_path)
    tree.procs[0].binary += binary_extra
    tree.write()
    domains = [{"name": "inner-kvmmce-ek0", "uuid": KVMMCE_UUID, "pid": 190, "memory_mib": 64,
                "vcpus": 1, "memory_backing": {}}]
    monkeypatch.setattr(libvirt_source, "discover", lambda uri, run_dir: (domains, None))
    return tree


def test_poisoned_vm_whose_hole_qemu_lists(tmp_path, monkeypatch, run):
    tree = _holes_tree(tmp_path, monkeypatch)
    entry = {"block": "pc.ram", "offset": scenarios.KVMMCE_GPA, "page-size": 4096,
             "gpa": scenarios.KVMMCE_GPA, "hva": scenarios.KVMMCE_HVA}
    asked = []

    def reader(uri, domains):
        asked.append((uri, domains))
        return {domains[0]: ([entry], None)}

    vm = vm_by_name(run(tree, libvirt_uri="qemu:///system", qemu_list_reader=reader), "inner-kvmmce-ek0")
    assert asked == [("qemu:///system", [("inner-kvmmce-ek0", KVMMCE_UUID)])]
    assert vm["status"] == "poisoned" and vm["binary_poison_holes"] is True
    assert vm["qemu_hwpoison"] == [entry] and vm["qemu_hwpoison_problem"] is None
    assert vm["holes_unknown_to_qemu"] == []
    assert any(e["source"] == "qemu_hwpoison" and "1 poisoned page" in e["detail"] for e in vm["evidence"])


def test_poisoned_vm_whose_hole_qemu_does_not_list(tmp_path, monkeypatch, run):
    """QEMU learns of a poisoned page only from a SIGBUS (early kill or the guest touching it):
    a page poisoned without that is in pagemap but not in QEMU's list, and would be read."""
    tree = _holes_tree(tmp_path, monkeypatch)
    vm = vm_by_name(run(tree, libvirt_uri="qemu:///system",
                        qemu_list_reader=lambda uri, doms: {doms[0]: ([], None)}), "inner-kvmmce-ek0")
    assert vm["holes_unknown_to_qemu"] == ["0x7fafe2145000"]
    assert any("does not list" in e["detail"] for e in vm["evidence"])


def test_unreadable_list_is_unknown_never_empty(tmp_path, monkeypatch, run):
    tree = _holes_tree(tmp_path, monkeypatch)
    vm = vm_by_name(run(tree, libvirt_uri="qemu:///system",
                        qemu_list_reader=lambda uri, doms: {doms[0]: (None, "libvirt said no")}),
                    "inner-kvmmce-ek0")
    assert vm["qemu_hwpoison"] is None and vm["holes_unknown_to_qemu"] is None
    assert vm["qemu_hwpoison_problem"] == "libvirt said no"


def test_stock_binary_is_not_asked(tmp_path, monkeypatch, run):
    """Only a binary carrying the series has the command; a stock or guard-only QEMU is never
    sent a monitor command (libvirt would mark its domain tainted for nothing)."""
    tree = _holes_tree(tmp_path, monkeypatch, binary_extra=b"")

    def reader(uri, domains):
        raise AssertionError("asked a QEMU without the series")

    vm = vm_by_name(run(tree, libvirt_uri="qemu:///system", qemu_list_reader=reader), "inner-kvmmce-ek0")
    assert vm["binary_poison_holes"] is False and vm["qemu_hwpoison"] is None
    assert "does not carry the x-poison-holes series" in vm["qemu_hwpoison_problem"]
    assert vm["holes_unknown_to_qemu"] is None


def test_qmp_helper_passes_qemus_reply_through():
    class Qemu:
        def qemuMonitorCommand(self, dom, command, flags):
            assert json.loads(command) == {"execute": "migrate-set-capabilities", "arguments": {
                "capabilities": [{"capability": "x-poison-holes", "state": True}]}}
            return '{"return": {}, "id": "libvirt-20"}'

    assert libvirt_adapter.qmp(Qemu(), object(), "migrate-set-capabilities", {
        "capabilities": [{"capability": "x-poison-holes", "state": True}]}) == {}

    class Refusing:
        def qemuMonitorCommand(self, dom, command, flags):
            return json.dumps({"error": {"class": "GenericError", "desc": "Parameter 'capability' does not accept value 'x-poison-holes'"}})

    with pytest.raises(libvirt_adapter.QmpError) as caught:
        libvirt_adapter.qmp(Refusing(), object(), "migrate-set-capabilities")
    assert caught.value.klass == "GenericError" and "x-poison-holes" in caught.value.desc
