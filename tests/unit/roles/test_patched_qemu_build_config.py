# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The patched_qemu role's Debian build configuration (files/debian_build_config.py). The
feature-parity comparison is tested with module_utils/qemu_guard.py
(tests/unit/plugins/module_utils/test_qemu_guard.py).

The make output below is what ``make -s -n -f debian/rules b/qemu/configured
BUILD_PACKAGES=qemu-system`` prints in Debian 12's qemu 1:7.2+dfsg-7+deb12u18 source (copied
from a run on the builder, the work directory shortened). The module stamp is checked against
the real one: qemu-system-common 1:7.2+dfsg-7+deb12u18+b3's modules export
``qemu_stamp_f1b4c2639e440a9f989736fb1ad6d8336564df2e``."""

from __future__ import annotations

import hashlib
import importlib.util
import shlex
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
FILES = REPO / "roles" / "patched_qemu" / "files"
MODULES = Path("/usr/lib/x86_64-linux-gnu/qemu")


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"pqc_{name}", FILES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


config = _load("debian_build_config")

MAKE_OUTPUT = """rm -rf b/qemu; mkdir -p b/qemu
cd b/qemu && \\
    ../../configure --with-pkgversion="Debian 1:7.2+dfsg-7+deb12u18" --extra-cflags="-g -O2 \
-ffile-prefix-map=/w/src=. -fstack-protector-strong -Wformat -Werror=format-security -Wdate-time \
-D_FORTIFY_SOURCE=2" --extra-ldflags="-Wl,-z,relro -Wl,--as-needed" --prefix=/usr --sysconfdir=/etc \
--libdir=/usr/lib/x86_64-linux-gnu --libexecdir=/usr/lib/qemu \
--firmwarepath=/usr/share/qemu:/usr/share/seabios:/usr/lib/ipxe/qemu --localstatedir=/var \
--disable-install-blobs --disable-strip --interp-prefix=/etc/qemu-binfmt/%M --localstatedir=/var \
--with-git-submodules=ignore  --disable-user \\
\t--enable-system \\
\t--disable-linux-user \\
\t--disable-xen \\
\t--enable-modules \\
\t--enable-module-upgrades \\
\t--enable-docs --enable-capstone --enable-linux-aio --audio-drv-list=pa,alsa,jack,oss,sdl --enable-vnc \
--enable-spice --enable-usb-redir --enable-kvm --enable-vhost-net \\
\t
touch b/qemu/configured
"""


def test_configure_line_is_taken_from_the_rules_output():
    line = config.extract_configure_command(MAKE_OUTPUT)
    args = shlex.split(line)
    assert args[0] == "--with-pkgversion=Debian 1:7.2+dfsg-7+deb12u18"
    assert "--enable-modules" in args and "--enable-spice" in args and "--enable-vnc" in args
    assert args[1].startswith("--extra-cflags=-g -O2 -ffile-prefix-map=/w/src=.")
    assert "touch" not in args


def test_rules_output_without_configure_is_an_error():
    with pytest.raises(config.ConfigError, match="no ../../configure"):
        config.extract_configure_command("rm -rf b/qemu\ntouch b/qemu/configured\n")


def test_transform_changes_only_the_documented_arguments():
    debian = shlex.split(config.extract_configure_command(MAKE_OUTPUT))
    args, changes = config.transform(debian, "Debian 1:7.2+dfsg-7+deb12u18+b3", "x86_64-softmmu",
                                     ["--enable-foo"])
    assert args[0] == "--with-pkgversion=Debian 1:7.2+dfsg-7+deb12u18+b3"
    assert "--disable-docs" in args and "--enable-docs" not in args
    assert args[-2:] == ["--target-list=x86_64-softmmu", "--enable-foo"]
    # everything else is Debian's, in Debian's order
    changed = {"--with-pkgversion=Debian 1:7.2+dfsg-7+deb12u18", "--enable-docs"}
    assert [a for a in debian if a not in changed] == [
        a for a in args if not a.startswith("--with-pkgversion") and a not in
        ("--disable-docs", "--target-list=x86_64-softmmu", "--enable-foo")]
    assert {c["from"] for c in changes if c["from"]} == changed
    with pytest.raises(config.ConfigError, match="no --with-pkgversion"):
        config.transform(["--enable-kvm"], "Debian x", "x86_64-softmmu", [])


def test_module_stamp_is_qemus_own(tmp_path):
    """sha1("7.2.22\\n" "Debian <version>\\n" + configure), "_"-prefixed (scripts/qemu-stamp.py)."""
    (tmp_path / "VERSION").write_text("7.2.22\n")
    (tmp_path / "configure").write_bytes(b"#!/bin/sh\necho configure\n")
    expected = "_" + hashlib.sha1(b"7.2.22\nDebian 1:7.2+dfsg-7+deb12u18+b3\n#!/bin/sh\necho configure\n").hexdigest()
    assert config.module_stamp(str(tmp_path), "Debian 1:7.2+dfsg-7+deb12u18+b3") == expected
    assert config.module_stamp(str(tmp_path), "Debian 1:7.2+dfsg-7+deb12u18") != expected


def test_installed_stamps_read_from_modules(tmp_path):
    (tmp_path / "ui-curses.so").write_bytes(b"\x7fELF\0" + b"qemu_stamp_" + b"ab" * 20 + b"\0")
    (tmp_path / "odd.so").write_bytes(b"\x7fELF\0nothing")
    (tmp_path / "README").write_text("not a module")
    assert config.installed_stamps(str(tmp_path)) == {"odd.so": None, "ui-curses.so": "_" + "ab" * 20}


@pytest.mark.skipif(not (MODULES / "ui-curses.so").exists(), reason="Debian's qemu-system-common is not installed")
def test_the_installed_modules_carry_one_stamp():
    stamps = set(config.installed_stamps(str(MODULES)).values())
    assert len(stamps) == 1 and None not in stamps


def test_unmet_build_dependencies_are_parsed():
    """dpkg-checkbuilddeps' line (Debian 12 qemu, shortened): versions, arch lists, :native and
    alternatives as dpkg prints them; the first alternative is taken."""
    text = ("dpkg-checkbuilddeps: error: Unmet build dependencies: debhelper-compat (= 13) "
            "python3-sphinx:native libcapstone-dev (>> 4.0.2~) libaio-dev libglusterfs-dev | "
            "glusterfs-common libxen-dev libpmem-dev\n")
    assert config.parse_unmet(text) == ["debhelper-compat", "python3-sphinx", "libcapstone-dev",
                                        "libaio-dev", "libglusterfs-dev", "libxen-dev", "libpmem-dev"]
    assert config.parse_unmet("") == []
