# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Checks after converge (and the idempotent re-run) of the patched_qemu scenario.

Every test runs on both hypervisor containers. The functional proof is repeated here with the
role's own probe, independently of the role's verification: the probe calls QEMU's
kvm_hwpoison_page_add() in a throw-away guest's process (plain ptrace, general-purpose registers
only, so it works on CPUs with AMX, where gdb's inferior calls fail), then QMP ``migrate`` must be refused with the
upstream message by the patched binary and must complete with the stock (diverted) binary.
"""

from __future__ import annotations

import importlib.util
import json
import shlex
from pathlib import Path

import pytest

testinfra_hosts = ["hypervisors"]

REPO = Path(__file__).resolve().parents[3]
ROLE_FILES = REPO / "roles" / "patched_qemu" / "files"
MODULE_UTILS = REPO / "plugins" / "module_utils"
PACKAGE = "qemu-system-x86-poison-guard"
BINARY = "/usr/bin/qemu-system-x86_64"
STOCK = "/usr/bin/qemu-system-x86_64.distrib"
_spec = importlib.util.spec_from_file_location("pq_messages", MODULE_UTILS / "messages.py")
_messages = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_messages)
REFUSAL = _messages.UPSTREAM_REFUSAL
PROBE_DIR = "/root/pq-test-probe"
MU = "ansible_collections/kvm_ras/poison_guard/plugins/module_utils"


def _run(host, *argv):
    return host.run(" ".join(shlex.quote(a) for a in argv))


def _contains_refusal(host, path) -> bool:
    result = _run(host, "grep", "-c", "-a", "-F", "-e", REFUSAL, path)
    assert result.rc in (0, 1), result.stderr
    return result.rc == 0


@pytest.fixture(scope="module")
def probe(host, tmp_path_factory):
    """The role's probe and the collection's guard detection, copied to the host in one go."""
    tree = tmp_path_factory.mktemp("probe")
    files = {
        ROLE_FILES / "qemu_guard_probe.py": "qemu_guard_probe.py",
        MODULE_UTILS / "messages.py": f"{MU}/messages.py",
        MODULE_UTILS / "poison" / "__init__.py": f"{MU}/poison/__init__.py",
        MODULE_UTILS / "poison" / "guard.py": f"{MU}/poison/guard.py",
    }
    for name in ("__init__.py", "elf.py", "tracee.py", "qemu.py"):
        files[MODULE_UTILS / "procinject" / name] = f"{MU}/procinject/{name}"
    for src, dest in files.items():
        (tree / dest).parent.mkdir(parents=True, exist_ok=True)
        (tree / dest).write_bytes(src.read_bytes())
    result = host.ansible("copy", json.dumps({"src": f"{tree}/", "dest": f"{PROBE_DIR}/", "mode": "preserve"}),
                          check=False)
    assert not result.get("failed"), result
    yield f"{PROBE_DIR}/qemu_guard_probe.py"
    host.ansible("file", json.dumps({"path": PROBE_DIR, "state": "absent"}), check=False)


def _selftest(host, probe, binary, inject):
    argv = ["python3", probe, "selftest", "--binary", binary, "--timeout", "120"] + (["--inject"] if inject else [])
    result = _run(host, *argv)
    assert result.rc == 0, result.stderr
    return json.loads(result.stdout)


def test_package_installed_with_diversion(host):
    package = host.package(PACKAGE)
    assert package.is_installed
    assert "+poisonguard" in package.version
    # built for the very stock package installed (its modules carry the matching stamp), and
    # depending on exactly that version of it and of qemu-system-common
    stock = _run(host, "dpkg-query", "-W", "-f=${Version}", "qemu-system-x86").stdout.strip()
    assert package.version == stock + "+poisonguard1", (package.version, stock)
    depends = _run(host, "dpkg-query", "-W", "-f=${Depends}", PACKAGE).stdout
    assert f"qemu-system-x86 (= {stock})" in depends, depends
    assert f"qemu-system-common (= {stock})" in depends, depends
    assert _run(host, "dpkg-divert", "--listpackage", BINARY).stdout.strip() == PACKAGE
    assert host.file(STOCK).exists


def test_feature_parity_with_the_stock_binary(host, probe):
    """-device/-machine/-cpu/-accel/-display/-audiodev/-netdev/-object/-chardev/-vga help of the
    patched and the stock binary are identical apart from version strings: the same features,
    and the stock modules (TCG, QXL, USB host/redirection, spice, curses, ...) load in both."""
    result = _run(host, "python3", probe, "parity", "--patched", BINARY, "--stock", STOCK)
    assert result.rc == 0, result.stderr
    parity = json.loads(result.stdout)
    assert parity["identical"], {k: v for k, v in parity["queries"].items() if not v["identical"]}
    assert set(parity["queries"]) >= {"device", "machine", "cpu", "accel", "display", "audiodev",
                                      "netdev", "object", "chardev"}
    devices = _run(host, BINARY, "-device", "help").stdout
    for name in ("qxl", "usb-host", "usb-redir", "tpm-tis", "tpm-crb", "vhost-user-fs-pci", "virtio-9p-pci"):
        assert f'name "{name}"' in devices, name
    netdevs = _run(host, BINARY, "-netdev", "help").stdout.split()
    assert {"user", "tap", "vhost-user", "l2tpv3", "vde"} <= set(netdevs), netdevs
    assert "VNC support is disabled" not in _run(host, BINARY, "-vnc", "help").stderr


def test_installed_binary_carries_guard_and_stock_does_not(host):
    assert _contains_refusal(host, BINARY)
    assert not _contains_refusal(host, STOCK)


def test_hypervisors_did_not_build(host):
    """The build ran once on the builder: no source, build tree or deb-src entry here."""
    assert not host.file("/var/tmp/kvm_ras-patched-qemu").exists
    assert not host.file("/etc/apt/sources.list.d/kvm-ras-patched-qemu-src.sources").exists
    assert not host.package("ninja-build").is_installed
    assert not host.package("meson").is_installed


def test_debug_info_resolves_poison_list(host, probe):
    """The static hwpoison_page_list is found through the package's build-id debug file."""
    result = _run(host, "python3", probe, "symbols", "--binary", BINARY, "--name", "hwpoison_page_list",
                  "--name", "kvm_hwpoison_page_add")
    assert result.rc == 0, result.stderr
    found = json.loads(result.stdout)
    assert found["debug_file"] and found["debug_file"].startswith("/usr/lib/debug/.build-id/"), found
    assert found["symbols"]["hwpoison_page_list"]["found_in"] == "debuginfo", found
    assert "kvm_hwpoison_page_add" in found["symbols"], found


def test_patched_binary_starts_and_migrates_a_guest(host, probe):
    result = _selftest(host, probe, BINARY, inject=False)
    assert result["ok"], result
    assert result["status_before"] == "running"
    assert result["migration"] == "completed", result


def test_patched_binary_refuses_poisoned_migration(host, probe):
    result = _selftest(host, probe, BINARY, inject=True)
    assert result["ok"], result
    assert result["injection"]["ok"] and result["injection"]["head_found_by"] == "debuginfo", result["injection"]
    assert not {"PTRACE_GETREGSET", "PTRACE_SETREGSET", "PTRACE_GETFPREGS", "PTRACE_SETFPREGS"} & set(
        result["injection"]["ptrace_requests"]), result["injection"]
    assert result["injection"]["kvm_hwpoisoned_mem"] == 1
    assert result["migration"] == "refused", result
    assert result["migrate_reply"]["error"]["class"] == "GenericError"
    assert result["refusal"] == REFUSAL
    assert result["alive_after"] and result["status_after"] == "running", result


def test_stock_binary_migrates_despite_the_same_injection(host, probe):
    result = _selftest(host, probe, STOCK, inject=True)
    assert result["ok"], result
    assert result["injection"]["ok"], result["injection"]
    assert result["injection"]["head_found_by"] == "decoded-first-instruction"
    assert result["injection"]["lh_first_after"] != "0x0"
    assert result["migration"] == "completed", result
