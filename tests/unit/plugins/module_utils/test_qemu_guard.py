# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""plugins/module_utils/qemu_guard.py (behind qemu_guard_info): guard detection in a binary, help
parsing, and the feature-parity comparison of two binaries, the last with this machine's real
Debian QEMU when it is installed (`make test` installs qemu-system-x86 with tools/test-deps)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from ansible_collections.kvm_ras.poison_guard.plugins.module_utils import qemu_guard as probe
from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.messages import UPSTREAM_REFUSAL

STOCK_QEMU = "/usr/bin/qemu-system-x86_64"
MODULES = Path("/usr/lib/x86_64-linux-gnu/qemu")


def test_probe_uses_the_collection_message():
    assert probe.UPSTREAM_REFUSAL is UPSTREAM_REFUSAL


def test_binary_guard_detection(tmp_path):
    """A guarded QEMU has the message in .rodata as one NUL-terminated string (the two C
    literals of the patch are joined by the compiler); the stock 7.2 binary has none."""
    guarded = tmp_path / "guarded"
    guarded.write_bytes(b"\x7fELF" + b"\0" * 5000 + UPSTREAM_REFUSAL.encode() + b"\0" + b"\0" * 100)
    unguarded = tmp_path / "unguarded"
    unguarded.write_bytes(b"\x7fELF" + b"\0" * 5000 + b"Can't migrate this vm\0")
    assert probe.binary_guard(str(guarded)) is True
    assert probe.binary_guard(str(unguarded)) is False


def test_binary_poison_holes_detection(tmp_path):
    """The x-poison-holes series compiles its capability's QAPI name into the binary; a
    guard-only build carries the refusal but not the capability."""
    holes = tmp_path / "holes"
    holes.write_bytes(b"\x7fELF" + b"\0" * 5000 + UPSTREAM_REFUSAL.encode() + b"\0x-poison-holes\0")
    guard_only = tmp_path / "guard_only"
    guard_only.write_bytes(b"\x7fELF" + b"\0" * 5000 + UPSTREAM_REFUSAL.encode() + b"\0")
    assert probe.binary_poison_holes(str(holes)) is True
    assert probe.binary_poison_holes(str(guard_only)) is False
    assert probe.binary_poison_holes(str(tmp_path / "missing")) is None
    facts = probe.binary_facts(str(tmp_path / "missing"))
    assert facts["poison_holes"] is None and facts["guard"] is None


def test_help_parsing_keeps_names_and_drops_headers():
    """Shapes copied from QEMU 7.2's own `-device help` / `-netdev help` / `-machine help`."""
    device = ('Controller/Bridge/Hub devices:\nname "pci-bridge", bus PCI, desc "Standard PCI Bridge"\n\n'
              'Network devices:\nname "virtio-net-pci", bus PCI, alias "virtio-net"\n')
    netdev = "Available netdev backend types:\nsocket\nstream\ndgram\nhubport\ntap\nuser\nvde\n"
    machine = ("Supported machines are:\npc                   Standard PC (i440FX + PIIX, 1996) "
               "(alias of pc-i440fx-7.2)\npc-i440fx-7.2        Standard PC (i440FX + PIIX, 1996) (default)\n")
    assert probe._parse_help("device", device) == ["pci-bridge", "virtio-net-pci"]
    assert probe._parse_help("netdev", netdev) == ["dgram", "hubport", "socket", "stream", "tap", "user", "vde"]
    assert probe._parse_help("machine", machine) == ["pc", "pc-i440fx-7.2"]


def test_help_normalisation_removes_versions_and_the_binary_name():
    text = "QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)\nqemu-system-x86_64.distrib: type is NULL\n"
    assert probe.normalize_help(text, "/usr/bin/qemu-system-x86_64.distrib") == [
        "QEMU emulator version <version>", "<binary>: type is NULL"]


def test_compare_help_names_what_only_one_binary_offers():
    stock = {"rc": 0, "lines": ["Available display backend types:", "none", "curses", "spice-app"]}
    patched = {"rc": 0, "lines": ["Available display backend types:", "none"]}
    result = probe.compare_help(patched, stock)
    assert not result["identical"]
    assert result["only_stock"] == ["curses", "spice-app"] and result["only_patched"] == []
    assert probe.compare_help(stock, dict(stock))["identical"]
    reordered = probe.compare_help({"rc": 0, "lines": list(reversed(stock["lines"]))}, stock)
    assert not reordered["identical"] and reordered["order_differs"]


@pytest.mark.skipif(not os.path.exists(STOCK_QEMU), reason="Debian's qemu-system-x86 is not installed")
def test_parity_of_the_stock_binary_with_a_renamed_copy(tmp_path):
    """A copy of Debian's binary under another name and in another directory (as the diverted
    .distrib and the unpacked package are) has parity with the original: the comparison sees
    the same devices, CPUs, displays, audio drivers, ... Without the module directory it lacks
    the devices of the modules (qxl, usb-host, ...), and the comparison says so."""
    copy = tmp_path / "qemu-system-x86_64.distrib"
    shutil.copy2(STOCK_QEMU, copy)
    # a copy outside /usr/bin finds no modules by itself (QEMU looks for them relative to its own
    # location): it gets the directory its installed copy uses, as the role's pre-install check does
    result = probe.parity(patched=str(copy), stock=STOCK_QEMU, timeout=60,
                          patched_module_dir=str(MODULES))
    assert result["identical"], {k: v for k, v in result["queries"].items() if not v["identical"]}
    assert set(result["queries"]) == {"device", "machine", "cpu", "accel", "display", "audiodev",
                                      "netdev", "object", "chardev", "vga"}
    assert result["queries"]["device"]["lines"][0] > 300
    without = probe.compare_help(probe.query_help(str(copy), ["-device", "help"], 60),
                                 probe.query_help(STOCK_QEMU, ["-device", "help"], 60))
    assert not without["identical"]
    assert any('"qxl"' in line for line in without["only_stock"]), without
