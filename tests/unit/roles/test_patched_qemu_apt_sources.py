# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The patched_qemu role's apt source helper (roles/patched_qemu/files/apt_source_entries.py),
run on the builder: deb822 and one-line source entries, their Signed-By, and the origins of
``apt-cache policy``. (The guard detection, help parsing, parity and self-test the role's former
probe did are tested with module_utils/qemu_guard.py, qemu_selftest.py and the modules
qemu_guard_info and qemu_guard_selftest, under tests/unit/plugins/.)"""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
FILES = REPO / "roles" / "patched_qemu" / "files"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"pq_{name}", FILES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


apt_entries = _load("apt_source_entries")


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
