# Copyright: (c) 2025, kvm_ras maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Assemble the qemu-system-x86-poison-guard .deb from a built QEMU binary.

The package ships the binary at the stock path (/usr/bin/qemu-system-x86_64) and moves the
stock one aside with dpkg-divert in its maintainer scripts (rendered by the role from
templates/deb/), so dpkg owns every file and removing the package brings the stock binary
back. The debug info goes to /usr/lib/debug/.build-id/xx/yyyy.debug so debuggers and qemu_guard_selftest can resolve
hwpoison_page_list / kvm_hwpoison_page_add in the stripped binary.

The finished package and its build record are moved into ``--cache-dir/<key>/`` in one
rename, so a cache entry is either complete or absent. Prints the build record as JSON.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time

BUILD_ID_RE = re.compile(r"Build ID:\s*([0-9a-f]+)")


def run(argv: list[str], **kwargs) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True, **kwargs).stdout


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def build_id_of(path: str) -> str | None:
    match = BUILD_ID_RE.search(run(["readelf", "-n", path]))
    return match.group(1) if match else None


def install_file(src: str, dest: str, mode: int) -> None:
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    shutil.copyfile(src, dest)
    os.chmod(dest, mode)


def shlib_depends(binary: str, source_dir: str | None) -> str:
    """``dpkg-shlibdeps`` for the binary (needs a debian/control: the source tree's)."""
    if not source_dir:
        return ""
    out = run(["dpkg-shlibdeps", "-O", "-e" + os.path.abspath(binary)], cwd=source_dir)
    for line in out.splitlines():
        if line.startswith("shlibs:Depends="):
            return line.split("=", 1)[1].strip()
    return ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--binary", required=True, help="the built qemu-system-x86_64")
    parser.add_argument("--maintainer-scripts", required=True,
                        help="directory with the rendered control, preinst, postrm")
    parser.add_argument("--doc-file", action="append", default=[],
                        help="file for /usr/share/doc/<package>/ (repeatable)")
    parser.add_argument("--source-dir", help="unpacked source tree (for dpkg-shlibdeps)")
    parser.add_argument("--staging", required=True, help="scratch directory (recreated)")
    parser.add_argument("--cache-dir", required=True)
    parser.add_argument("--key", required=True, help="cache entry name")
    parser.add_argument("--record", required=True, help="JSON build record to complete and store")
    parser.add_argument("--compression", default="xz")
    args = parser.parse_args(argv)

    with open(args.record, encoding="utf-8") as handle:
        record = json.load(handle)
    package = record["package"]
    version = record["package_version"]
    started = time.monotonic()

    root = os.path.join(args.staging, "root")
    shutil.rmtree(args.staging, ignore_errors=True)
    os.makedirs(os.path.join(root, "DEBIAN"))

    # binary (stripped like dh_strip does) + build-id debug file
    binary = os.path.join(root, "usr/bin/qemu-system-x86_64")
    install_file(args.binary, binary, 0o755)
    build_id = build_id_of(binary)
    if not build_id:
        raise SystemExit("the built binary has no GNU build-id note; cannot ship its debug info")
    debug = os.path.join(root, "usr/lib/debug/.build-id", build_id[:2], build_id[2:] + ".debug")
    os.makedirs(os.path.dirname(debug))
    run(["objcopy", "--only-keep-debug", "--compress-debug-sections=zlib", binary, debug])
    os.chmod(debug, 0o644)
    run(["strip", "--remove-section=.comment", "--remove-section=.note", "--strip-unneeded", binary])
    run(["objcopy", "--add-gnu-debuglink=" + debug, binary])

    doc_dir = os.path.join(root, "usr/share/doc", package)
    for doc in args.doc_file:
        install_file(doc, os.path.join(doc_dir, os.path.basename(doc)), 0o644)

    # control: fill the shared-library dependencies and the installed size
    with open(os.path.join(args.maintainer_scripts, "control"), encoding="utf-8") as handle:
        control = handle.read()
    shlibs = shlib_depends(binary, args.source_dir)
    control = control.replace("@SHLIBS_DEPENDS@", (", " + shlibs) if shlibs else "")
    # the record goes into the package too: the role reads it back to know what is installed.
    # Not under /usr/share/doc, which minimal and container images drop (dpkg path-exclude).
    record.update(build_id=build_id, shlibs_depends=shlibs)
    data_dir = os.path.join(root, "usr/share", package)
    os.makedirs(data_dir, exist_ok=True)
    with open(os.path.join(data_dir, "build-info.json"), "w", encoding="utf-8") as handle:
        json.dump(record, handle, indent=2, sort_keys=True)
        handle.write("\n")
    size_kb = sum(os.path.getsize(os.path.join(d, f)) for d, _dirs, fs in os.walk(root)
                  for f in fs if "/DEBIAN" not in d) // 1024 + 1
    control = control.replace("@INSTALLED_SIZE@", str(size_kb))
    with open(os.path.join(root, "DEBIAN/control"), "w", encoding="utf-8") as handle:
        handle.write(control.rstrip("\n") + "\n")
    for script in ("preinst", "postrm"):
        install_file(os.path.join(args.maintainer_scripts, script),
                     os.path.join(root, "DEBIAN", script), 0o755)

    sums = []
    for directory, _dirs, files in sorted(os.walk(os.path.join(root, "usr"))):
        for name in sorted(files):
            path = os.path.join(directory, name)
            with open(path, "rb") as handle:
                sums.append("%s  %s\n" % (hashlib.md5(handle.read()).hexdigest(),  # noqa: S324 (dpkg format)
                                          os.path.relpath(path, root)))
    with open(os.path.join(root, "DEBIAN/md5sums"), "w", encoding="utf-8") as handle:
        handle.writelines(sums)

    deb_name = "%s_%s_amd64.deb" % (package, version.split(":", 1)[-1])
    # assembled next to its final place (same filesystem), then renamed into place
    os.makedirs(args.cache_dir, exist_ok=True)
    out_dir = os.path.join(args.cache_dir, ".incoming-" + args.key)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.makedirs(out_dir)
    deb = os.path.join(out_dir, deb_name)
    run(["dpkg-deb", "--root-owner-group", "-Z" + args.compression, "--build", root, deb])
    run(["dpkg-deb", "--info", deb])  # fails on a malformed package

    record.update(deb=deb_name, deb_sha256=sha256_of(deb), deb_size=os.path.getsize(deb),
                  installed_size_kb=size_kb, package_seconds=round(time.monotonic() - started, 1))
    with open(os.path.join(out_dir, "build-info.json"), "w", encoding="utf-8") as handle:
        json.dump(record, handle, indent=2, sort_keys=True)
        handle.write("\n")

    # publish: one rename makes the complete entry visible
    final = os.path.join(args.cache_dir, args.key)
    if os.path.isdir(final):
        shutil.rmtree(final)
    os.replace(out_dir, final)
    json.dump(record, sys.stdout, sort_keys=True)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
