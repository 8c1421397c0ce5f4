# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Checks after converge (and the idempotent re-run) of the patched_qemu scenario.

Every test runs on both patch-strategy hypervisor containers (hv3 takes the distro_backport
strategy: test_distro_backport.py). The functional proof is repeated here with the
collection's modules, independently of the role's verification: qemu_guard_selftest calls QEMU's
kvm_hwpoison_page_add() in a throw-away guest's process (plain ptrace, general-purpose registers
only, so it works on CPUs with AMX, where gdb's inferior calls fail), then QMP ``migrate`` must be refused with the
upstream message by the patched binary and must complete with the stock (diverted) binary.
"""

from __future__ import annotations

import importlib.util
import json
import shlex
from pathlib import Path

testinfra_hosts = ["patched-qemu-hv1", "patched-qemu-hv2"]

REPO = Path(__file__).resolve().parents[3]
MODULE_UTILS = REPO / "plugins" / "module_utils"
PACKAGE = "qemu-system-x86-poison-guard"
BINARY = "/usr/bin/qemu-system-x86_64"
STOCK = "/usr/bin/qemu-system-x86_64.distrib"
_spec = importlib.util.spec_from_file_location("pq_messages", MODULE_UTILS / "messages.py")
_messages = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_messages)
REFUSAL = _messages.UPSTREAM_REFUSAL
INFO = "kvm_ras.poison_guard.qemu_guard_info"
SELFTEST = "kvm_ras.poison_guard.qemu_guard_selftest"


def _run(host, *argv):
    return host.run(" ".join(shlex.quote(a) for a in argv))


def _contains_refusal(host, path) -> bool:
    result = _run(host, "grep", "-c", "-a", "-F", "-e", REFUSAL, path)
    assert result.rc in (0, 1), result.stderr
    return result.rc == 0


def _info(host, **args):
    """kvm_ras.poison_guard.qemu_guard_info on the host (read-only, check mode)."""
    return host.ansible(INFO, json.dumps(args))


def _selftest(host, binary, inject):
    """kvm_ras.poison_guard.qemu_guard_selftest on the host; a self-test that could not run to
    the end fails the module, and testinfra raises with its result."""
    return host.ansible(SELFTEST, json.dumps({"binary": binary, "timeout": 120, "inject": inject}), check=False)


def test_package_installed_with_diversion(host):
    package = host.package(PACKAGE)
    assert package.is_installed
    assert "+poisonguard" in package.version
    # built for the very stock package installed (its modules carry the matching stamp), and
    # depending on exactly that version of it and of qemu-system-common
    stock = _run(host, "dpkg-query", "-W", "-f=${Version}", "qemu-system-x86").stdout.strip()
    # the role's default revision (2: the guard and the x-poison-holes series)
    assert package.version == stock + "+poisonguard2", (package.version, stock)
    depends = _run(host, "dpkg-query", "-W", "-f=${Depends}", PACKAGE).stdout
    assert f"qemu-system-x86 (= {stock})" in depends, depends
    assert f"qemu-system-common (= {stock})" in depends, depends
    assert _run(host, "dpkg-divert", "--listpackage", BINARY).stdout.strip() == PACKAGE
    assert host.file(STOCK).exists


def test_feature_parity_with_the_stock_binary(host):
    """-device/-machine/-cpu/-accel/-display/-audiodev/-netdev/-object/-chardev/-vga help of the
    patched and the stock binary are identical apart from version strings: the same features,
    and the stock modules (TCG, QXL, USB host/redirection, spice, curses, ...) load in both."""
    parity = _info(host, binary=BINARY, host_facts=False, compare_with=STOCK)["parity"]
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


def test_debug_info_resolves_poison_list(host):
    """The static hwpoison_page_list is found through the package's build-id debug file."""
    found = _info(host, binary=BINARY, host_facts=False,
                  symbols=["hwpoison_page_list", "kvm_hwpoison_page_add"])["symbols"]
    assert found["debug_file"] and found["debug_file"].startswith("/usr/lib/debug/.build-id/"), found
    assert found["symbols"]["hwpoison_page_list"]["found_in"] == "debuginfo", found
    assert "kvm_hwpoison_page_add" in found["symbols"], found


def test_patched_binary_starts_and_migrates_a_guest(host):
    result = _selftest(host, BINARY, inject=False)
    assert result["ok"], result
    assert result["status_before"] == "running"
    assert result["migration"] == "completed", result


def test_patched_binary_refuses_poisoned_migration(host):
    result = _selftest(host, BINARY, inject=True)
    assert result["ok"], result
    assert result["injection"]["ok"] and result["injection"]["head_found_by"] == "debuginfo", result["injection"]
    assert not {"PTRACE_GETREGSET", "PTRACE_SETREGSET", "PTRACE_GETFPREGS", "PTRACE_SETFPREGS"} & set(
        result["injection"]["ptrace_requests"]), result["injection"]
    assert result["injection"]["kvm_hwpoisoned_mem"] == 1
    assert result["migration"] == "refused", result
    assert result["migrate_reply"]["error"]["class"] == "GenericError"
    assert result["refusal"] == REFUSAL
    assert result["alive_after"] and result["status_after"] == "running", result


def test_stock_binary_migrates_despite_the_same_injection(host):
    result = _selftest(host, STOCK, inject=True)
    assert result["ok"], result
    assert result["injection"]["ok"], result["injection"]
    assert result["injection"]["head_found_by"] == "decoded-first-instruction"
    assert result["injection"]["lh_first_after"] != "0x0"
    assert result["migration"] == "completed", result
