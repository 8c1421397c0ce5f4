# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The patched_qemu packaging: the role's templates rendered as the role renders them, and
roles/patched_qemu/files/make_guard_deb.py building a real .deb with dpkg-deb around a stand-in
binary (a copy of this machine's /bin/true: an ELF executable with a GNU build-id, like the
QEMU the builder compiles)."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import jinja2
import pytest

REPO = Path(__file__).resolve().parents[3]
ROLE = REPO / "roles" / "patched_qemu"
FILES = ROLE / "files"
VARS = {
    "patched_qemu_package_name": "qemu-system-x86-poison-guard",
    "patched_qemu_package_maintainer": "kvm_ras.poison_guard maintainers <root@localhost>",
    "patched_qemu_stock_package": "qemu-system-x86",
    "patched_qemu_common_package": "qemu-system-common",
    "patched_qemu_build_info_path": "/usr/share/qemu-system-x86-poison-guard/build-info.json",
    "patched_qemu_binary": "/usr/bin/qemu-system-x86_64",
    "patched_qemu_diverted_binary": "/usr/bin/qemu-system-x86_64.distrib",
    "patched_qemu__refusal_message": "Can't migrate this vm with hardware poisoned memory, "
                                     "please reboot the vm and try again",
    "patched_qemu__build": {
        "package_version": "1:7.2+dfsg-7+deb12u18+b3+poisonguard1",
        "source_version": "1:7.2+dfsg-7+deb12u18",
        "stock_version": "1:7.2+dfsg-7+deb12u18+b3",
        "key": "1_7.2+dfsg-7+deb12u18-0123456789abcdef",
        "configure_args": [],
    },
    # what debian_build_config.py reports for the real Debian 12 tree (f1b4c263...: the stamp in
    # the qemu_stamp_<hex> symbol of qemu-system-common 1:7.2+dfsg-7+deb12u18+b3's modules)
    "patched_qemu__debian_config": {"module_stamp": "_f1b4c2639e440a9f989736fb1ad6d8336564df2e"},
}
TOOLS = ("dpkg-deb", "readelf", "objcopy", "strip")

pytestmark = pytest.mark.skipif(
    any(shutil.which(t) is None for t in TOOLS),
    reason=f"needs {', '.join(TOOLS)} (dpkg and binutils, present on the Debian builders this packs on)")


def _render(name: str) -> str:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(ROLE / "templates")),
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    return env.get_template(f"deb/{name}.j2").render(**VARS)


def test_maintainer_scripts_are_valid_sh_and_divert_the_binary():
    for name, verb in (("preinst", "--add"), ("postrm", "--remove")):
        script = _render(name)
        assert script.startswith("#!/bin/sh\n")
        subprocess.run(["sh", "-n"], input=script, text=True, check=True)
        assert f"dpkg-divert --package qemu-system-x86-poison-guard {verb} --rename" in script
        assert "--divert /usr/bin/qemu-system-x86_64.distrib /usr/bin/qemu-system-x86_64" in script
    # the diversion goes away only when the package really leaves (not on upgrade)
    postrm = _render("postrm")
    assert "remove|abort-install|disappear)" in postrm and "upgrade" not in postrm


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    work = tmp_path_factory.mktemp("deb")
    meta = work / "meta"
    meta.mkdir()
    for name in ("control", "preinst", "postrm"):
        (meta / name).write_text(_render(name))
    binary = work / "qemu-system-x86_64"
    shutil.copy("/bin/true", binary)
    patch = work / "0001-guard.patch"
    patch.write_text("--- a/x\n+++ b/x\n")
    record = work / "record.json"
    record.write_text(json.dumps({"package": VARS["patched_qemu_package_name"],
                                  "package_version": VARS["patched_qemu__build"]["package_version"],
                                  "key": VARS["patched_qemu__build"]["key"]}))
    cache = work / "cache"
    proc = subprocess.run([sys.executable, str(FILES / "make_guard_deb.py"), "--binary", str(binary),
                           "--maintainer-scripts", str(meta), "--doc-file", str(patch),
                           "--staging", str(work / "staging"), "--cache-dir", str(cache),
                           "--key", VARS["patched_qemu__build"]["key"], "--record", str(record),
                           "--compression", "gzip"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    entry = cache / VARS["patched_qemu__build"]["key"]
    return {"stdout": json.loads(proc.stdout), "entry": entry, "cache": cache, "work": work}


def _deb(built) -> Path:
    return built["entry"] / built["stdout"]["deb"]


def test_cache_entry_is_complete_and_published_by_rename(built):
    entry, cache = built["entry"], built["cache"]
    assert sorted(p.name for p in entry.iterdir()) == sorted(["build-info.json", built["stdout"]["deb"]])
    assert not [p for p in cache.iterdir() if p.name.startswith(".incoming-")]
    info = json.loads((entry / "build-info.json").read_text())
    assert info["deb_sha256"] == hashlib.sha256(_deb(built).read_bytes()).hexdigest()
    assert info["deb"] == "qemu-system-x86-poison-guard_7.2+dfsg-7+deb12u18+b3+poisonguard1_amd64.deb"


def test_control_fields(built):
    fields = subprocess.run(["dpkg-deb", "--field", str(_deb(built))], capture_output=True, text=True,
                            check=True).stdout
    assert "Package: qemu-system-x86-poison-guard\n" in fields
    assert "Version: 1:7.2+dfsg-7+deb12u18+b3+poisonguard1\n" in fields
    assert ("Depends: qemu-system-x86 (= 1:7.2+dfsg-7+deb12u18+b3), "
            "qemu-system-common (= 1:7.2+dfsg-7+deb12u18+b3)\n") in fields
    assert "module stamp _f1b4c2639e440a9f989736fb1ad6d8336564df2e" in fields
    assert "@" + "INSTALLED_SIZE@" not in fields and "Installed-Size: " in fields
    assert "Architecture: amd64\n" in fields


def test_contents_binary_debug_file_docs(built, tmp_path):
    subprocess.run(["dpkg-deb", "--extract", str(_deb(built)), str(tmp_path)], check=True)
    binary = tmp_path / "usr/bin/qemu-system-x86_64"
    assert binary.stat().st_mode & 0o777 == 0o755
    build_id = built["stdout"]["build_id"]
    debug = tmp_path / "usr/lib/debug/.build-id" / build_id[:2] / f"{build_id[2:]}.debug"
    assert debug.is_file()
    sections = subprocess.run(["readelf", "-S", "-W", str(binary)], capture_output=True, text=True,
                              check=True).stdout
    assert ".gnu_debuglink" in sections and ".note.gnu.build-id" in sections
    assert ".debug_info" not in sections
    doc = tmp_path / "usr/share/doc/qemu-system-x86-poison-guard"
    assert (doc / "0001-guard.patch").is_file()
    inside = json.loads((tmp_path / "usr/share/qemu-system-x86-poison-guard/build-info.json").read_text())
    assert inside["key"] == VARS["patched_qemu__build"]["key"] and inside["build_id"] == build_id


def test_maintainer_scripts_and_md5sums_in_the_package(built, tmp_path):
    subprocess.run(["dpkg-deb", "--control", str(_deb(built)), str(tmp_path)], check=True)
    for script in ("preinst", "postrm"):
        assert (tmp_path / script).stat().st_mode & 0o111, script
    root = tmp_path / "root"
    subprocess.run(["dpkg-deb", "--extract", str(_deb(built)), str(root)], check=True)
    sums = dict(reversed(line.split("  ", 1)) for line in (tmp_path / "md5sums").read_text().splitlines())
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert sorted(sums) == files
    for rel, digest in sums.items():
        assert hashlib.md5((root / rel).read_bytes()).hexdigest() == digest, rel  # noqa: S324
