# Copyright: (c) 2025, kvm_ras maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which deb-src entries does this host need to fetch the source of a binary package?

Reads the host's own apt configuration through apt itself (``apt-cache policy PKG`` for
the repositories that provide the package, ``apt-get indextargets`` for where each of them
is configured) and prints JSON:

  {"package": ..., "repositories": [{"uri", "suite", "component", "has_deb_src"}],
   "stanzas": [{"uris": [..], "suites": [..], "components": [..], "signed_by": [..lines]}]}

``stanzas`` are the deb822 ``deb-src`` entries still missing (empty when every providing
repository already has one). ``signed_by`` is copied from the matching ``deb`` entry
(deb822 ``Signed-By:`` field or one-line ``[signed-by=...]`` option). Nothing is written.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys

POLICY_ORIGIN_RE = re.compile(r"^\s+-?\d+\s+(\S+)\s+(\S+)/(\S+)\s+\S+\s+Packages\s*$")


def _run(argv: list[str]) -> str:
    env = {"LC_ALL": "C", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    return subprocess.run(argv, capture_output=True, text=True, check=True, env=env).stdout


def providing_repositories(package: str) -> list[tuple[str, str, str]]:
    """(uri, suite, component) of every repository listing ``package``."""
    repos = []
    for line in _run(["apt-cache", "policy", package]).splitlines():
        match = POLICY_ORIGIN_RE.match(line)
        if match:
            repo = (match.group(1).rstrip("/"), match.group(2), match.group(3))
            if repo not in repos:
                repos.append(repo)
    return repos


def parse_indextargets(text: str) -> list[dict]:
    """The deb822 records of ``apt-get indextargets`` output."""
    records, current = [], {}
    for line in text.splitlines() + [""]:
        if not line.strip():
            if current:
                records.append(current)
            current = {}
            continue
        key, _sep, value = line.partition(":")
        current[key.strip()] = value.strip()
    return records


def index_targets() -> list[dict]:
    return parse_indextargets(_run(["apt-get", "indextargets"]))


def _deb822_stanzas(text: str) -> list[dict[str, list[str]]]:
    stanzas, fields, last = [], {}, None
    for raw in text.splitlines() + [""]:
        if raw.startswith("#"):
            continue
        if not raw.strip():
            if fields:
                stanzas.append(fields)
            fields, last = {}, None
            continue
        if raw[0] in " \t" and last:
            fields[last].append(raw.strip())
            continue
        key, _sep, value = raw.partition(":")
        last = key.strip().lower()
        fields[last] = [value.strip()] if value.strip() else []
    return stanzas


def signed_by_of(source_entry: str) -> list[str]:
    """Signed-By value (as lines) of the entry apt names ``file:number``."""
    path, _sep, number = source_entry.rpartition(":")
    if not path or not number.isdigit():
        return []
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError:
        return []
    index = int(number)
    if path.endswith(".sources"):
        stanzas = _deb822_stanzas(text)
        if 1 <= index <= len(stanzas):
            return stanzas[index - 1].get("signed-by", [])
        return []
    lines = text.splitlines()
    if 1 <= index <= len(lines):
        match = re.search(r"\[([^\]]*)\]", lines[index - 1])
        if match:
            for option in match.group(1).split():
                key, _sep, value = option.partition("=")
                if key.lower() == "signed-by":
                    return [value]
    return []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--package", required=True)
    parser.add_argument("--ignore-file", default="", help="our own sources file (not an input)")
    args = parser.parse_args(argv)

    targets = index_targets()
    ours = args.ignore_file + ":" if args.ignore_file else None
    deb_src = {(t.get("Repo-URI", "").rstrip("/"), t.get("Release"), t.get("Component"))
               for t in targets
               if t.get("Target-Of") == "deb-src"
               and not (ours and t.get("Sourcesentry", "").startswith(ours))}
    entries = {}
    for target in targets:
        if target.get("Target-Of") == "deb":
            key = (target.get("Repo-URI", "").rstrip("/"), target.get("Release"),
                   target.get("Component"))
            entries.setdefault(key, target.get("Sourcesentry", ""))

    repositories, per_suite = [], {}
    for uri, suite, component in providing_repositories(args.package):
        has_src = (uri, suite, component) in deb_src
        repositories.append({"uri": uri, "suite": suite, "component": component,
                             "has_deb_src": has_src})
        if not has_src:
            signed_by = tuple(signed_by_of(entries.get((uri, suite, component), "")))
            components = per_suite.setdefault((uri, signed_by, suite), [])
            if component not in components:
                components.append(component)
    # one stanza per (URI, key, component list): never a suite/component pair apt lacks
    grouped = {}
    for (uri, signed_by, suite), components in per_suite.items():
        group = grouped.setdefault((uri, signed_by, tuple(components)),
                                   {"uris": [uri], "suites": [], "components": components,
                                    "signed_by": list(signed_by)})
        group["suites"].append(suite)
    json.dump({"package": args.package, "repositories": repositories,
               "stanzas": list(grouped.values())}, sys.stdout, sort_keys=True)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
