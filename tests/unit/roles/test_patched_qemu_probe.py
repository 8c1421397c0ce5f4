# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The patched_qemu role's on-host helpers (roles/patched_qemu/files/): the probe's guard
detection and help parsing, the apt source parsing, and the probe's QMP self-test with its
ptrace poison-list injection run against this machine's real Debian QEMU (the negative control:
stock 7.2 migrates even with an entry in its poison list). `make test` installs Debian's
qemu-system-x86 (tools/test-deps) before these tests are collected."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ansible_collections.kvm_ras.poison_guard.plugins.module_utils import messages
from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.messages import UPSTREAM_REFUSAL

REPO = Path(__file__).resolve().parents[3]
FILES = REPO / "roles" / "patched_qemu" / "files"
STOCK_QEMU = "/usr/bin/qemu-system-x86_64"
# the directory holding ansible_collections/ (the probe imports the collection's guard code)
COLLECTIONS_ROOT = Path(os.path.abspath(messages.__file__)).parents[5]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"pq_{name}", FILES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


probe = _load("qemu_guard_probe")
apt_entries = _load("apt_source_entries")


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


def test_deb822_stanzas_and_signed_by(tmp_path):
    """Layout of Debian 12's /etc/apt/sources.list.d/debian.sources (with its comment lines)."""
    sources = tmp_path / "debian.sources"
    sources.write_text(
        "Types: deb\n# http://snapshot.debian.org/archive/debian/20250520T000000Z\n"
        "URIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\nComponents: main\n"
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n"
        "Types: deb\nURIs: http://deb.debian.org/debian-security\nSuites: bookworm-security\n"
        "Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n")
    stanzas = apt_entries._deb822_stanzas(sources.read_text())
    assert len(stanzas) == 2 and stanzas[1]["uris"] == ["http://deb.debian.org/debian-security"]
    # apt names entries "file:N" with N counting stanzas from 1 (apt-get indextargets Sourcesentry)
    assert apt_entries.signed_by_of(f"{sources}:2") == ["/usr/share/keyrings/debian-archive-keyring.gpg"]
    one_line = tmp_path / "x.list"
    one_line.write_text("# comment\ndeb [arch=amd64 signed-by=/etc/apt/keyrings/x.gpg] http://example.invalid/d stable main\n")
    assert apt_entries.signed_by_of(f"{one_line}:2") == ["/etc/apt/keyrings/x.gpg"]
    assert apt_entries.signed_by_of(f"{one_line}:1") == []


def test_embedded_key_signed_by_keeps_its_lines():
    text = ("Types: deb\nURIs: http://example.invalid/d\nSuites: s\nComponents: main\nSigned-By:\n"
            " -----BEGIN PGP PUBLIC KEY BLOCK-----\n .\n abc\n -----END PGP PUBLIC KEY BLOCK-----\n")
    assert apt_entries._deb822_stanzas(text)[0]["signed-by"] == [
        "-----BEGIN PGP PUBLIC KEY BLOCK-----", ".", "abc", "-----END PGP PUBLIC KEY BLOCK-----"]


def test_policy_origin_lines():
    """Lines of `apt-cache policy qemu-system-x86` on Debian 12."""
    lines = [" *** 1:7.2+dfsg-7+deb12u18+b3 500",
             "        500 http://deb.debian.org/debian bookworm/main amd64 Packages",
             "        100 /var/lib/dpkg/status",
             "        500 http://deb.debian.org/debian-security bookworm-security/main amd64 Packages"]
    found = [m.groups() for m in map(apt_entries.POLICY_ORIGIN_RE.match, lines) if m]
    assert found == [("http://deb.debian.org/debian", "bookworm", "main"),
                     ("http://deb.debian.org/debian-security", "bookworm-security", "main")]


# -------------------------------------------------------------- real QEMU (negative control)

needs_stock_qemu = pytest.mark.skipif(
    not os.access(STOCK_QEMU, os.X_OK),
    reason="needs Debian's qemu-system-x86 on this machine (make deps installs it)")


def _probe(*argv) -> dict:
    env = dict(os.environ, PYTHONPATH=str(COLLECTIONS_ROOT))
    proc = subprocess.run([sys.executable, str(FILES / "qemu_guard_probe.py"), *argv],
                          capture_output=True, text=True, timeout=180, check=False, env=env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@needs_stock_qemu
def test_stock_binary_lacks_the_guard_when_it_is_7_2():
    result = _probe("binary", "--path", STOCK_QEMU)
    if (result["major"], result["minor"]) >= (9, 0):
        pytest.skip(f"this machine's QEMU is {result['version']}: it has the guard upstream")
    assert result["guard"] is False and result["rc"] == 0


@needs_stock_qemu
def test_selftest_stock_qemu_migrates_without_poison():
    result = _probe("selftest", "--binary", STOCK_QEMU, "--timeout", "60")
    assert result["ok"], result
    assert result["status_before"] == "running"
    assert result["migration"] == "completed"
    assert result["alive_after"] and result["exit_status"] == 0


@needs_stock_qemu
def test_selftest_stock_qemu_with_injected_poison_entry_still_migrates():
    """The probe adds an entry to the stock binary's poison list (list head decoded from the
    first instruction of kvm_hwpoison_page_add) with ptrace and general-purpose registers only;
    7.2 has no check, so the migration completes."""
    result = _probe("selftest", "--binary", STOCK_QEMU, "--inject", "--timeout", "60")
    assert result["ok"], result
    injection = result["injection"]
    assert injection["ok"] and injection["head_found_by"] == "decoded-first-instruction", injection
    assert injection["lh_first_before"] == "0x0" and injection["lh_first_after"] != "0x0"
    assert injection["entry_ram_addr"] == "0x1000"
    assert injection["kvm_hwpoisoned_mem"] is None  # stock QEMU has no such function
    assert set(injection["ptrace_requests"]) <= {"PTRACE_SEIZE", "PTRACE_INTERRUPT", "PTRACE_GETREGS",
                                                 "PTRACE_SETREGS", "PTRACE_CONT", "PTRACE_DETACH"}, injection
    assert result["migration"] == "completed", result
