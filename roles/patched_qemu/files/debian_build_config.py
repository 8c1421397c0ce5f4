# Copyright: (c) 2025, kvm_ras maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Debian's own configure arguments and build dependencies for qemu-system-x86_64.

Run on the builder in an unpacked Debian ``qemu`` source tree (stdlib only, Python 3.9+).

``configure``: asks the source's ``debian/rules`` for the command line of its main system
build (``make -n`` of the target ``b/qemu/configured``, with ``BUILD_PACKAGES=qemu-system``
as ``dh_listpackages`` would say for a system-only build), so every argument comes from the
distribution's rules (including the per-architecture options that ``debian/extract-config-opts``
reads from ``debian/control`` and the CFLAGS of ``dpkg-buildflags``). Then it makes exactly
these changes, each listed in the output:

- ``--target-list=x86_64-softmmu``: only the x86_64 system emulator is compiled;
- ``--with-pkgversion=Debian <stock binary version>``: the value Debian's buildd used for the
  installed ``qemu-system-x86`` (a binNMU adds ``+bN`` to the source version). QEMU's module
  stamp is sha1(version, pkgversion, configure): with the same value the patched binary loads
  the stock modules of ``qemu-system-common`` (TCG, QXL, USB host/redirection, spice, curses,
  audio drivers, ...) and the module-upgrade directory under /run/qemu is the stock one;
- ``--enable-docs`` -> ``--disable-docs``: the manuals do not change the binary;
- the caller's ``--extra`` arguments are appended (configure uses the last of repeated options).

Prints JSON: ``args`` (the configure arguments to use), ``debian_args`` (as the rules say),
``changes``, ``module_stamp`` (what QEMU's scripts/qemu-stamp.py computes for ``args``) and,
with ``--modules-dir``, whether every installed module carries that stamp (``stamp_matches``).

``build-deps``: the architecture-dependent Build-Depends of the source that are not installed
(``dpkg-checkbuilddeps -B``), first alternative, without version constraints, minus the
``--exclude`` names (the documentation toolchain, Xen: both disabled for this build). Prints
JSON ``{"packages": [...], "excluded": [...]}``. Every name is checked against Debian's
package name syntax before it is printed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shlex
import subprocess
import sys

PACKAGE_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")
CONFIGURE_RE = re.compile(r"(?:^|\s|&&\s*)\.\./\.\./configure\s")
RULES_TARGET = "b/qemu/configured"


class ConfigError(RuntimeError):
    pass


def rules_configure_line(source_dir: str) -> str:
    """The shell command ``debian/rules`` would run to configure the main build."""
    proc = subprocess.run(
        ["make", "-s", "-n", "-f", "debian/rules", RULES_TARGET, "BUILD_PACKAGES=qemu-system"],
        cwd=source_dir, capture_output=True, text=True, check=False,
        env=dict(os.environ, LC_ALL="C"),
    )
    if proc.returncode != 0:
        raise ConfigError("make -n -f debian/rules %s failed (rc %d): %s"
                          % (RULES_TARGET, proc.returncode, proc.stderr.strip()[-2000:]))
    return extract_configure_command(proc.stdout)


def extract_configure_command(make_output: str) -> str:
    """Join make's continuation lines and return the part after ``../../configure``."""
    joined = re.sub(r"\\\n", " ", make_output)
    for line in joined.splitlines():
        match = CONFIGURE_RE.search(line)
        if match:
            return line[match.end():]
    raise ConfigError("debian/rules printed no ../../configure command for %s: %r"
                      % (RULES_TARGET, make_output[-2000:]))


def transform(debian_args: list[str], pkgversion: str, target: str,
              extra: list[str]) -> tuple[list[str], list[dict]]:
    """Debian's arguments with the documented changes; returns (args, changes)."""
    args: list[str] = []
    changes: list[dict] = []
    seen_pkgversion = False
    for arg in debian_args:
        name = arg.split("=", 1)[0]
        if name == "--with-pkgversion":
            seen_pkgversion = True
            new = "--with-pkgversion=" + pkgversion
            if new != arg:
                changes.append({"from": arg, "to": new,
                                "why": "the stock binary's version string: module stamp of qemu-system-common"})
            args.append(new)
        elif name == "--target-list":
            changes.append({"from": arg, "to": None, "why": "replaced by --target-list=" + target})
        elif arg == "--enable-docs":
            changes.append({"from": arg, "to": "--disable-docs", "why": "manuals do not change the binary"})
            args.append("--disable-docs")
        else:
            args.append(arg)
    if not seen_pkgversion:
        raise ConfigError("debian/rules passes no --with-pkgversion: not the expected rules file")
    args.append("--target-list=" + target)
    changes.append({"from": None, "to": "--target-list=" + target, "why": "only this emulator is built"})
    for arg in extra:
        args.append(arg)
        changes.append({"from": None, "to": arg, "why": "patched_qemu_configure_args"})
    return args, changes


def module_stamp(source_dir: str, pkgversion: str) -> str:
    """QEMU's CONFIG_STAMP (scripts/qemu-stamp.py): sha1 of version, pkgversion, configure."""
    with open(os.path.join(source_dir, "VERSION"), encoding="utf-8") as handle:
        version = handle.read().strip()
    sha = hashlib.sha1()  # noqa: S324 (QEMU's own stamp algorithm)
    for text in (version, pkgversion):
        sha.update(os.fsencode(text))
        sha.update(b"\n")
    with open(os.path.join(source_dir, "configure"), "rb") as handle:
        for chunk in iter(lambda: handle.read(65536), b""):
            sha.update(chunk)
    return "_" + sha.hexdigest()


STAMP_RE = re.compile(rb"qemu_stamp_([0-9a-f]{40})")


def installed_stamps(modules_dir: str) -> dict:
    """Module stamps found in the installed QEMU modules (name -> stamp)."""
    stamps = {}
    for name in sorted(os.listdir(modules_dir)):
        if not name.endswith(".so"):
            continue
        with open(os.path.join(modules_dir, name), "rb") as handle:
            match = STAMP_RE.search(handle.read())
        stamps[name] = "_" + match.group(1).decode() if match else None
    return stamps


def parse_unmet(text: str) -> list[str]:
    """Package names from dpkg-checkbuilddeps' "Unmet build dependencies: ..." line."""
    match = re.search(r"Unmet build dependencies:\s*(.*)", text)
    if not match:
        return []
    names = []
    # "a (>= 1) b | c d:native [linux-any]" -> a, b, d  (first alternative of each)
    rest = re.sub(r"\([^)]*\)|\[[^\]]*\]|<[^>]*>", " ", match.group(1))
    tokens = rest.split()
    skip_next = False
    for token in tokens:
        if token == "|":
            skip_next = True
            continue
        if skip_next:
            skip_next = False
            continue
        names.append(token.split(":", 1)[0])
    return names


def cmd_configure(args) -> dict:
    line = rules_configure_line(args.source_dir)
    debian_args = shlex.split(line)
    new_args, changes = transform(debian_args, args.pkgversion, args.target, args.extra)
    result = {
        "debian_args": debian_args,
        "args": new_args,
        "changes": changes,
        "module_stamp": module_stamp(args.source_dir, args.pkgversion),
    }
    if args.modules_dir:
        stamps = installed_stamps(args.modules_dir)
        result["installed_module_stamps"] = sorted({v for v in stamps.values() if v} | set())
        result["modules_without_stamp"] = sorted(k for k, v in stamps.items() if not v)
        result["modules"] = len(stamps)
        result["stamp_matches"] = bool(stamps) and set(stamps.values()) == {result["module_stamp"]}
    return result


def cmd_build_deps(args) -> dict:
    proc = subprocess.run(["dpkg-checkbuilddeps", "-B"], cwd=args.source_dir,
                          capture_output=True, text=True, check=False, env=dict(os.environ, LC_ALL="C"))
    if proc.returncode not in (0, 1):
        raise ConfigError("dpkg-checkbuilddeps failed (rc %d): %s" % (proc.returncode, proc.stderr.strip()))
    if proc.returncode == 1 and "Unmet build dependencies" not in proc.stderr:
        raise ConfigError("dpkg-checkbuilddeps: %s" % proc.stderr.strip())
    wanted, excluded = [], []
    for name in parse_unmet(proc.stderr):
        if not PACKAGE_NAME_RE.match(name):
            raise ConfigError("not a Debian package name in the source's Build-Depends: %r" % name)
        (excluded if name in args.exclude else wanted).append(name)
    return {"packages": sorted(set(wanted)), "excluded": sorted(set(excluded))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_conf = sub.add_parser("configure")
    p_conf.add_argument("--source-dir", required=True)
    p_conf.add_argument("--pkgversion", required=True)
    p_conf.add_argument("--target", default="x86_64-softmmu")
    p_conf.add_argument("--extra", action="append", default=[])
    p_conf.add_argument("--modules-dir", help="installed stock modules: report whether their stamp matches")
    p_deps = sub.add_parser("build-deps")
    p_deps.add_argument("--source-dir", required=True)
    p_deps.add_argument("--exclude", action="append", default=[])
    args = parser.parse_args(argv)
    try:
        result = {"configure": cmd_configure, "build-deps": cmd_build_deps}[args.command](args)
    except (ConfigError, OSError) as exc:
        json.dump({"error": str(exc)}, sys.stdout)
        sys.stdout.write("\n")
        return 2
    json.dump(result, sys.stdout, sort_keys=True)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
