# -*- coding: utf-8 -*-
# Copyright (c) kvm_ras.poison_guard contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a hypervisor's QEMU is and offers (read-only; stdlib only, no Ansible imports).

Behind ``kvm_ras.poison_guard.qemu_guard_info`` and the ``patched_qemu`` role:

- ``binary_facts``: does a QEMU binary carry the migration guard (the refusal message compiled
  into it, found with the same ``BinaryInspector`` ``poison_info`` uses for running VMs) and the
  ``x-poison-holes`` migration capability, and which version does it print;
- ``host_facts``: the installed QEMU packages (dpkg), who diverts the binary, apt's candidate,
  the holds, the build record of an installed patched package;
- ``parity``: are the ``-device``/``-machine``/``-cpu``/``-accel``/``-display``/``-audiodev``/
  ``-netdev``/``-object``/``-chardev``/``-vga`` help outputs of two binaries identical (apart
  from version strings and the binary's own name)?
- ``features``: the names a binary lists in its help outputs;
- ``symbols``: where named symbols are found (the binary or its build-id debug file).

Every external program is started with an argv list, never through a shell.
"""

from __future__ import annotations

import json
import os
import re
import subprocess

from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.messages import UPSTREAM_REFUSAL
from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.poison.guard import BinaryInspector
from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.procinject.elf import (
    ElfError,
    ElfFile,
    debug_file_path,
)

VERSION_RE = re.compile(r"QEMU emulator version (\d+)\.(\d+)(?:\.(\d+))?")


# ---------------------------------------------------------------- guard in a binary

def binary_guard(path: str) -> bool | None:
    """True when the binary carries the refusal message (poison_info's guard detection)."""
    return BinaryInspector().inspect(path)["carries_refusal"]


def binary_poison_holes(path: str) -> bool | None:
    """True when the binary carries the ``x-poison-holes`` migration capability (the
    patched_qemu role's series that live-migrates a VM with poisoned memory); None when it
    could not be read."""
    return BinaryInspector().inspect(path)["poison_holes"]


def binary_version(path: str, timeout: float = 30) -> dict:
    """Run ``<binary> --version`` and parse the upstream version."""
    proc = subprocess.run([path, "--version"], capture_output=True, text=True,
                          timeout=timeout, check=False)
    first = (proc.stdout or proc.stderr).splitlines()[0] if (proc.stdout or proc.stderr) else ""
    match = VERSION_RE.search(first)
    return {
        "version_line": first,
        "version": ".".join(g for g in match.groups() if g) if match else None,
        "major": int(match.group(1)) if match else None,
        "minor": int(match.group(2)) if match else None,
        "rc": proc.returncode,
    }


def binary_facts(path: str) -> dict:
    """The binary's path, whether it exists, carries the guard, and its ``--version``."""
    result = {"path": path, "realpath": os.path.realpath(path), "exists": os.path.exists(path)}
    if not result["exists"]:
        result.update(guard=None, poison_holes=None, error="binary not found")
        return result
    inspected = BinaryInspector().inspect(path)
    result["guard"] = inspected["carries_refusal"]
    result["poison_holes"] = inspected["poison_holes"]
    result["refusal_message"] = UPSTREAM_REFUSAL
    result.update(binary_version(path))
    return result


# ---------------------------------------------------------------- packages of the host

def dpkg_packages(names: list[str]) -> dict:
    """Install state and versions of the named packages (dpkg-query)."""
    fmt = "${Package}\\t${db:Status-Abbrev}\\t${Version}\\t${source:Version}\\n"
    proc = subprocess.run(["dpkg-query", "--show", "--showformat=" + fmt, *names],
                          capture_output=True, text=True, check=False)
    packages = {name: {"installed": False, "status": None, "version": None, "source_version": None}
                for name in names}
    for line in proc.stdout.splitlines():
        fields = line.split("\t")
        if len(fields) != 4 or fields[0] not in packages:
            continue
        status = fields[1].strip()
        installed = len(status) >= 2 and status[1] == "i"
        packages[fields[0]] = {
            "installed": installed,
            "status": status,
            "version": fields[2] or None if installed else None,
            "source_version": (fields[3] or fields[2]) if installed else None,
        }
    return packages


def diverted_by(path: str) -> str | None:
    proc = subprocess.run(["dpkg-divert", "--listpackage", path],
                          capture_output=True, text=True, check=False)
    return proc.stdout.strip() or None


def version_gt(left: str, right: str) -> bool:
    """Debian version order (dpkg --compare-versions)."""
    return subprocess.run(["dpkg", "--compare-versions", left, "gt", right],
                          capture_output=True, check=False).returncode == 0


def apt_candidate(package: str) -> dict:
    """What apt would install for the package now (a held package still shows its candidate),
    with the source version it is built from."""
    result = {"candidate": None, "candidate_source_version": None}
    proc = subprocess.run(["apt-cache", "policy", package], capture_output=True, text=True,
                          check=False, env=dict(os.environ, LC_ALL="C"))
    match = re.search(r"^\s*Candidate:\s*(\S+)", proc.stdout, re.M)
    if not match or match.group(1) == "(none)":
        return result
    result["candidate"] = match.group(1)
    show = subprocess.run(["apt-cache", "show", "--no-all-versions", "%s=%s" % (package, result["candidate"])],
                          capture_output=True, text=True, check=False, env=dict(os.environ, LC_ALL="C"))
    source = re.search(r"^Source:\s*\S+(?:\s+\(([^)]+)\))?", show.stdout, re.M)
    result["candidate_source_version"] = (source.group(1) if source and source.group(1)
                                          else result["candidate"])
    return result


def held_packages(names: list[str]) -> list[str]:
    proc = subprocess.run(["dpkg", "--get-selections", *names], capture_output=True, text=True, check=False)
    return sorted(line.split()[0] for line in proc.stdout.splitlines() if line.split()[1:] == ["hold"])


def host_facts(binary: str, stock_package: str, package: str, diverted: str, build_info: str,
               module_packages: list[str] | None = None) -> dict:
    """Installed QEMU packages, who diverts ``binary``, whether it (and the diverted stock
    binary) carries the guard, apt's candidate for ``stock_package`` and the build record of an
    installed patched package."""
    module_packages = list(module_packages or [])
    result = {
        "packages": dpkg_packages([stock_package, package, *module_packages]),
        "apt": apt_candidate(stock_package),
        "held": held_packages([stock_package, package, *module_packages]),
        "diverted_by": diverted_by(binary),
        "binary": binary_facts(binary),
        "diverted_binary": None,
        "build_info": None,
    }
    installed = result["packages"][stock_package]["version"]
    candidate = result["apt"]["candidate"]
    result["apt"]["newer_than_installed"] = bool(installed and candidate and version_gt(candidate, installed))
    if os.path.exists(diverted):
        result["diverted_binary"] = {"path": diverted, "guard": binary_guard(diverted),
                                     "poison_holes": binary_poison_holes(diverted)}
    try:
        with open(build_info, encoding="utf-8") as handle:
            result["build_info"] = json.load(handle)
    except FileNotFoundError:
        pass
    except (OSError, ValueError) as exc:
        result["build_info"] = {"error": str(exc)}
    return result


# ---------------------------------------------------------------- features of a binary

FEATURE_QUERIES = {
    "device": ["-device", "help"],
    "netdev": ["-netdev", "help"],
    "display": ["-display", "help"],
    "object": ["-object", "help"],
    "machine": ["-machine", "help"],
    "accel": ["-accel", "help"],
    "chardev": ["-chardev", "help"],
}
HEADER_RE = re.compile(r"^(Available|Supported|Accelerators|List of|Chardev devices|Chardev|Supported machines)")

# What tells two builds of the same QEMU apart: everything these print must be identical
# (apart from version strings and the binary's own name) for the patched binary to be a
# drop-in replacement of the stock one. "-audiodev help" is QEMU 7.2's spelling of the audio
# driver list ("-audio help" came with 8.0). Modules (TCG, QXL, USB host/redirection, spice,
# curses, audio drivers, ...) are loaded by these queries, so a binary whose module stamp
# does not match the installed qemu-system-common shows up here as missing entries.
PARITY_QUERIES = {
    "device": ["-device", "help"],
    "machine": ["-machine", "help"],
    "cpu": ["-cpu", "help"],
    "accel": ["-accel", "help"],
    "display": ["-display", "help"],
    "audiodev": ["-audiodev", "help"],
    "netdev": ["-netdev", "help"],
    "object": ["-object", "help"],
    "chardev": ["-chardev", "help"],
    "vga": ["-vga", "help"],
}
VERSION_LINE_RE = re.compile(r"QEMU emulator version [^\n]*")


def _parse_help(kind: str, text: str) -> list[str]:
    names = set()
    for line in text.splitlines():
        line = line.rstrip()
        if not line or line.endswith(":") or HEADER_RE.match(line.strip()):
            continue
        if kind == "device":
            match = re.match(r'^name "([^"]+)"', line)
            if match:
                names.add(match.group(1))
            continue
        token = line.split()[0]
        if kind == "machine" and token in ("Supported",):
            continue
        names.add(token)
    return sorted(names)


def features(binary: str, timeout: float = 60) -> dict:
    """The names of devices, netdevs, displays, objects, machines, accelerators and chardevs
    the binary lists."""
    result = {"binary": binary}
    for kind, argv in FEATURE_QUERIES.items():
        proc = subprocess.run([binary, *argv], capture_output=True, text=True,
                              timeout=timeout, check=False)
        result[kind] = _parse_help(kind, proc.stdout)
    return result


def normalize_help(text: str, binary: str) -> list[str]:
    """Lines of a help output with version strings and the binary's name replaced."""
    text = VERSION_LINE_RE.sub("QEMU emulator version <version>", text)
    name = os.path.basename(binary)
    lines = []
    for line in text.splitlines():
        if name and line.startswith(name + ":"):
            line = "<binary>:" + line[len(name) + 1:]
        lines.append(line.rstrip())
    return lines


def query_help(binary: str, argv: list[str], timeout: float, module_dir: str | None = None) -> dict:
    """Run ``<binary> <argv>``. QEMU finds its modules relative to its own location (and in a
    build tree in ./qemu-bundle), so a binary that is not installed yet gets the directory its
    installed copy will use through QEMU_MODULE_DIR; an installed one gets nothing."""
    env = dict(os.environ, LC_ALL="C")
    env.pop("QEMU_MODULE_DIR", None)
    if module_dir:
        env["QEMU_MODULE_DIR"] = module_dir
    try:
        proc = subprocess.run([binary, *argv], capture_output=True, text=True,
                              timeout=timeout, check=False, env=env, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"rc": None, "lines": [], "error": "%s: %s" % (type(exc).__name__, exc)}
    return {"rc": proc.returncode,
            "lines": normalize_help(proc.stdout, binary) + ["<stderr> " + line for line in normalize_help(proc.stderr, binary)]}


def compare_help(patched: dict, stock: dict) -> dict:
    """One query's outputs of both binaries: identical, or what only one of them prints."""
    only_stock = [line for line in stock["lines"] if line not in set(patched["lines"])]
    only_patched = [line for line in patched["lines"] if line not in set(stock["lines"])]
    identical = (patched["rc"] == stock["rc"] and patched["lines"] == stock["lines"]
                 and "error" not in patched and "error" not in stock)
    return {"identical": identical, "rc": [patched["rc"], stock["rc"]],
            "lines": [len(patched["lines"]), len(stock["lines"])],
            "only_stock": only_stock[:50], "only_patched": only_patched[:50],
            "order_differs": not identical and not only_stock and not only_patched,
            "errors": [r["error"] for r in (patched, stock) if "error" in r]}


def parity(patched: str, stock: str, timeout: float = 60, patched_module_dir: str | None = None) -> dict:
    """Compare every PARITY_QUERIES output of the patched and the stock binary."""
    result = {"patched": patched, "stock": stock, "queries": {},
              "patched_module_dir": patched_module_dir}
    for kind, argv in PARITY_QUERIES.items():
        result["queries"][kind] = compare_help(
            query_help(patched, argv, timeout, patched_module_dir),
            query_help(stock, argv, timeout))
    result["different"] = sorted(k for k, v in result["queries"].items() if not v["identical"])
    result["identical"] = not result["different"]
    return result


# ---------------------------------------------------------------- symbols

def symbols(binary: str, names: list[str]) -> dict:
    """Where each named symbol is found: the binary itself or its build-id debug file."""
    result = {"binary": binary, "symbols": {}}
    try:
        elf = ElfFile(binary)
        build_id = elf.build_id()
        debug = debug_file_path(build_id) if build_id else None
        result.update(build_id=build_id, debug_file=debug if debug and os.path.exists(debug) else None)
        found = elf.symbols(names)
        for name in names:
            if name in found:
                result["symbols"][name] = {"found_in": "binary", "value": "%#x" % found[name][0]}
        missing = [n for n in names if n not in found]
        if missing and result["debug_file"]:
            for name, (value, _size) in ElfFile(result["debug_file"]).symbols(missing).items():
                result["symbols"][name] = {"found_in": "debuginfo", "value": "%#x" % value}
    except ElfError as exc:
        result["error"] = str(exc)
    return result
