# Copyright: (c) 2025, kvm_ras maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the distro_backport strategy of the patched_qemu role needs from a host's apt.

Run on the hypervisor (beside apt_source_entries.py, whose entry readers it uses); prints
JSON and writes nothing:

  {"release": "bookworm", "suite": "bookworm-backports",
   "mirror": {"uris": [..], "components": ["main"], "signed_by": [..lines], "entry": "file:N"} | null,
   "suite_entries": ["file:N", ..],          # deb entries of the suite other than --own-file
   "suite_indexed": bool,                    # apt has downloaded the suite's Packages index
   "installed": {"qemu-system-x86": "1:7.2+dfsg-7+deb12u18+b3", ..},   # binary packages of the --source
   "versions": [{"version": .., "suites": [..]}, ..],                  # of --package, apt's order
   "backport_version": "1:10.0.2+ds-2+deb13u1~bpo12+1" | null,         # newest in the suite
   "stable_version": "1:7.2+dfsg-7+deb12u18+b3" | null,                # newest outside it
   "installed_version": .. | null, "installed_from_suite": bool,
   "backport_packages": {pkg: version}, "stable_packages": {pkg: version},
   "backport_install": ["pkg=version", ..], "stable_install": ["pkg=version", .., "pkg-", ..],
   "backport_stale": [pkg, ..]}   # installed, but not at the suite's newest version

``mirror`` is the host's own ``deb`` entry of the release suite (the one the host installs
Debian from), so the backports suite is added on the very mirror and with the very key the
host already trusts. ``backport_packages`` / ``stable_packages`` map the installed binary
packages of the source (plus --package) to the newest version the suite / the release
offers: the whole QEMU family moves together, because the modules of qemu-block-extra or
qemu-system-gui only load into a binary of their own version.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import subprocess
import sys

from apt_source_entries import parse_indextargets, signed_by_of  # pylint: disable=import-error

# `apt-cache madison`: "qemu-system-x86 | 1:7.2+dfsg-7+deb12u18+b3 | http://m/debian bookworm/main amd64 Packages"
MADISON_RE = re.compile(r"^\s*(\S+)\s+\|\s+(\S+)\s+\|\s+(\S+)\s+(\S+?)(?:/(\S+))?\s+\S+\s+Packages\s*$")


def _run(argv: list[str]) -> str:
    env = {"LC_ALL": "C", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    return subprocess.run(argv, capture_output=True, text=True, check=True, env=env).stdout


def index_targets() -> list[dict]:
    """Every index target the sources configure, downloaded or not (``--no-release-info``:
    without it apt lists only targets whose Release file it has, none before the first
    ``apt-get update``)."""
    return parse_indextargets(_run(["apt-get", "indextargets", "--no-release-info"]))


def index_present(path: str) -> bool:
    """apt keeps an index compressed (``Filename`` + ``.lz4`` and the like) or plain."""
    return os.path.exists(path) or bool(glob.glob(glob.escape(path) + ".*"))


def deb_targets(targets: list[dict]) -> list[dict]:
    """The ``Packages`` index targets of ``deb`` entries (one per suite/component/arch)."""
    return [t for t in targets if t.get("Target-Of") == "deb" and t.get("Identifier", "Packages") == "Packages"]


def mirror_entry(targets: list[dict], release: str, component: str = "main") -> dict | None:
    """The host's deb entry of ``release`` (e.g. bookworm) with ``component``: its URI and the
    entry apt names ``file:N``. None when the host has none."""
    for target in deb_targets(targets):
        if target.get("Release") == release and target.get("Component") == component:
            return {"uris": [target.get("Repo-URI", "").rstrip("/")], "components": [component],
                    "entry": target.get("Sourcesentry", "")}
    return None


def suite_entries(targets: list[dict], suite: str, own_file: str = "") -> list[str]:
    """Entries (``file:N``) that already configure ``suite``, apart from ``own_file``'s."""
    found = []
    for target in deb_targets(targets):
        entry = target.get("Sourcesentry", "")
        if target.get("Release") != suite or (own_file and entry.startswith(own_file + ":")):
            continue
        if entry not in found:
            found.append(entry)
    return found


def suite_indexed(targets: list[dict], suite: str, exists=index_present) -> bool:
    """Has apt downloaded the suite's Packages index (``apt-get update`` ran since it was added)?
    apt names the file in the target's ``Filename`` field."""
    return any(t.get("Release") == suite and t.get("Filename") and exists(t["Filename"])
               for t in deb_targets(targets))


def parse_madison(text: str) -> dict[str, list[dict]]:
    """Versions of each package in apt's order (newest first), with the suites offering each,
    from ``apt-cache madison PKG..`` (lines of Sources indexes are skipped)."""
    out: dict[str, list[dict]] = {}
    for line in text.splitlines():
        match = MADISON_RE.match(line)
        if not match:
            continue
        package, version, suite = match.group(1), match.group(2), match.group(4)
        versions = out.setdefault(package, [])
        known = next((v for v in versions if v["version"] == version), None)
        if known is None:
            versions.append({"version": version, "suites": [suite]})
        elif suite not in known["suites"]:
            known["suites"].append(suite)
    return out


def newest_in(versions: list[dict], suite: str) -> str | None:
    """The first (newest) version ``suite`` offers."""
    return next((v["version"] for v in versions if suite in v["suites"]), None)


def newest_outside(versions: list[dict], suite: str, release: str) -> str | None:
    """The newest version the release offers without ``suite``: bookworm, bookworm-updates or
    bookworm-security (suites named after the release), never another backports suite."""
    for entry in versions:
        others = [s for s in entry["suites"] if s != suite and (s == release or s.startswith(release + "-"))
                  and not s.endswith("-backports") and not s.endswith("-backports-sloppy")]
        if others:
            return entry["version"]
    return None


def parse_installed(text: str, sources: list[str]) -> dict[str, str]:
    """Installed binary packages built from one of ``sources``, from
    ``dpkg-query -W -f '${Package}\\t${source:Package}\\t${Version}\\t${db:Status-Abbrev}\\n'``."""
    installed = {}
    for line in text.splitlines():
        fields = line.split("\t")
        if len(fields) != 4:
            continue
        package, src, version, status = fields
        if src in sources and status.strip().startswith(("ii", "hi")):
            installed[package] = version
    return installed


def plan(release: str, suite: str, sources: list[str], package: str, own_file: str, extra: list[str]) -> dict:
    targets = index_targets()
    mirror = mirror_entry(targets, release)
    if mirror is not None:
        mirror["signed_by"] = signed_by_of(mirror["entry"])
    installed = parse_installed(_run(["dpkg-query", "-W", "-f",
                                      "${Package}\t${source:Package}\t${Version}\t${db:Status-Abbrev}\n"]), sources)
    family = sorted(set(installed) | {package} | set(extra))
    by_package = parse_madison(_run(["apt-cache", "madison", *family]))
    versions = by_package.get(package, [])
    installed_version = installed.get(package)
    moves = family_targets(by_package, family, suite, release)
    return {
        "release": release, "suite": suite, "mirror": mirror,
        "suite_entries": suite_entries(targets, suite, own_file),
        "suite_indexed": suite_indexed(targets, suite),
        "installed": installed, "versions": versions,
        "backport_version": newest_in(versions, suite),
        "stable_version": newest_outside(versions, suite, release),
        "installed_version": installed_version,
        "installed_from_suite": installed_from(versions, installed_version, suite),
        **moves,
        # apt-get install arguments: to the suite (every package it offers, the split-off
        # modules included), back to the release (the installed packages; those the release
        # does not have are removed)
        "backport_install": apt_arguments(moves["backport_packages"], installed, only_installed=False),
        "stable_install": apt_arguments(moves["stable_packages"], installed, only_installed=True),
        "backport_stale": stale(moves["backport_packages"], installed),
    }


def installed_from(versions: list[dict], installed_version: str | None, suite: str) -> bool:
    """Does the installed version come from ``suite``? Offered by the suite and not by the
    release, or a backports version (``~bpo``) the release does not offer: the backports
    archive keeps only the newest version, so an installed older one is no longer listed."""
    if not installed_version:
        return False
    offered_by = next((v["suites"] for v in versions if v["version"] == installed_version), None)
    if offered_by is not None:
        return offered_by == [suite]
    return "~bpo" in installed_version


def apt_arguments(targets: dict[str, str], installed: dict[str, str], only_installed: bool) -> list[str]:
    """``pkg=version`` for apt-get install (only the installed packages with only_installed),
    then ``pkg-`` for installed packages that ``targets`` lacks (only_installed: removed)."""
    argv = [f"{name}={version}" for name, version in sorted(targets.items())
            if not only_installed or name in installed]
    if only_installed:
        argv += [f"{name}-" for name in sorted(installed) if name not in targets]
    return argv


def stale(targets: dict[str, str], installed: dict[str, str]) -> list[str]:
    """Installed packages whose version is not the target version."""
    return [name for name, version in sorted(targets.items()) if name in installed and installed[name] != version]


def family_targets(by_package: dict[str, list[dict]], family: list[str], suite: str, release: str) -> dict:
    """Per installed package of the family, the version it moves to: the newest in ``suite``
    (backport_packages) or outside it (stable_packages). Each package gets the version its own
    index lists (arch:all packages have no binNMU suffix such as +b3). A package the suite or
    the release does not offer is left out; the role names it when it matters."""
    backport, stable = {}, {}
    for name in family:
        versions = by_package.get(name, [])
        newest = newest_in(versions, suite)
        if newest:
            backport[name] = newest
        older = newest_outside(versions, suite, release)
        if older:
            stable[name] = older
    return {"backport_packages": backport, "stable_packages": stable}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--release", required=True, help="the host's Debian release codename")
    parser.add_argument("--suite", required=True, help="the backports suite, e.g. bookworm-backports")
    parser.add_argument("--source", action="append", default=[],
                        help="source package whose installed binaries move together (repeatable)")
    parser.add_argument("--package", default="qemu-system-x86")
    parser.add_argument("--extra", action="append", default=[],
                        help="binary package to move with them even when not installed (repeatable)")
    parser.add_argument("--own-file", default="", help="the role's own sources file (not an input)")
    args = parser.parse_args(argv)
    json.dump(plan(args.release, args.suite, args.source or ["qemu"], args.package, args.own_file, args.extra), sys.stdout, sort_keys=True)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
