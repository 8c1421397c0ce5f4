# Copyright: (c) 2025, kvm_ras maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""On-host probe for the patched_qemu role (stdlib only, Python 3.9+).

Subcommands, each printing one JSON document on stdout:

  host     --binary P --stock-package S --package G ...
                                    installed QEMU packages (dpkg), who diverts the
                                    binary, whether it carries the guard, the build
                                    record of an installed patched package
  binary   --path P                 does the QEMU binary carry the migration guard
                                    (the refusal message compiled into it)?
  features --binary P               devices, netdevs, displays, ... a binary offers
  parity   --patched P --stock S    are the -device/-machine/-cpu/-accel/-display/-audiodev/
                                    -netdev/-object/-chardev/-vga help outputs of both
                                    binaries identical (apart from version strings)?
  symbols  --binary P --name N ...  where the named symbols are found (the binary or its
                                    build-id debug file)
  selftest --binary P [--inject]    start a throw-away TCG guest with a QMP socket,
                                    optionally add an entry to QEMU's own poison list
                                    by calling QEMU's kvm_hwpoison_page_add() in the
                                    guest's process (plain ptrace, general-purpose
                                    registers only: works on CPUs with AMX, where gdb's
                                    inferior calls fail), then QMP ``migrate`` to
                                    ``exec:cat > /dev/null`` and report the outcome

Every external program is started with an argv list, never through a shell.

Guard detection, the refusal message and the injector are the collection's own
(plugins/module_utils/poison/guard.py, messages.py and procinject/, the same code poison_info
and the labs use): the role copies them next to this file as an ``ansible_collections`` tree.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# pylint: disable=wrong-import-position
from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.messages import (  # noqa: E402
    UPSTREAM_REFUSAL,
)
from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.poison.guard import (  # noqa: E402
    BinaryInspector,
)
from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.procinject.elf import (  # noqa: E402
    ElfError,
    ElfFile,
    debug_file_path,
)
from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.procinject.qemu import (  # noqa: E402
    QemuProcess,
)
from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.procinject.tracee import (  # noqa: E402
    InjectError,
)

VERSION_RE = re.compile(r"QEMU emulator version (\d+)\.(\d+)(?:\.(\d+))?")
# The guest-RAM offset the self-test puts into QEMU's poison list (the page is never touched).
INJECT_RAM_ADDR = 0x1000


# ---------------------------------------------------------------- guard in a binary

def binary_guard(path: str) -> bool | None:
    """True when the binary carries the refusal message (poison_info's guard detection)."""
    return BinaryInspector().inspect(path)["carries_refusal"]


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


def cmd_binary(args) -> dict:
    path = args.path
    result = {"path": path, "realpath": os.path.realpath(path), "exists": os.path.exists(path)}
    if not result["exists"]:
        result.update(guard=None, error="binary not found")
        return result
    result["guard"] = binary_guard(path)
    result["refusal_message"] = UPSTREAM_REFUSAL
    result.update(binary_version(path))
    return result


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


def cmd_host(args) -> dict:
    modules_packages = args.modules_package or []
    result = {
        "packages": dpkg_packages([args.stock_package, args.package, *modules_packages]),
        "apt": apt_candidate(args.stock_package),
        "held": held_packages([args.stock_package, args.package, *modules_packages]),
        "diverted_by": diverted_by(args.binary),
        "binary": cmd_binary(argparse.Namespace(path=args.binary)),
        "diverted_binary": None,
        "build_info": None,
    }
    installed = result["packages"][args.stock_package]["version"]
    candidate = result["apt"]["candidate"]
    result["apt"]["newer_than_installed"] = bool(installed and candidate and version_gt(candidate, installed))
    if os.path.exists(args.diverted):
        result["diverted_binary"] = {"path": args.diverted,
                                     "guard": binary_guard(args.diverted)}
    try:
        with open(args.build_info, encoding="utf-8") as handle:
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


def cmd_features(args) -> dict:
    result = {"binary": args.binary}
    for kind, argv in FEATURE_QUERIES.items():
        proc = subprocess.run([args.binary, *argv], capture_output=True, text=True,
                              timeout=args.timeout, check=False)
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


def cmd_parity(args) -> dict:
    """Compare every PARITY_QUERIES output of the patched and the stock binary."""
    result = {"patched": args.patched, "stock": args.stock, "queries": {},
              "patched_module_dir": args.patched_module_dir}
    for kind, argv in PARITY_QUERIES.items():
        result["queries"][kind] = compare_help(
            query_help(args.patched, argv, args.timeout, args.patched_module_dir),
            query_help(args.stock, argv, args.timeout))
    result["different"] = sorted(k for k, v in result["queries"].items() if not v["identical"])
    result["identical"] = not result["different"]
    return result


# ---------------------------------------------------------------- QMP client

class QMPError(RuntimeError):
    pass


class QMP:
    """Minimal QMP client over a unix socket (line-delimited JSON)."""

    def __init__(self, path: str, timeout: float):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.buf = b""
        self.events: list[dict] = []
        self.greeting = self._read()
        self.execute("qmp_capabilities")

    def _read(self) -> dict:
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise QMPError("QMP connection closed by QEMU")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def execute(self, command: str, arguments: dict | None = None) -> dict:
        """Send a command, return its full response ({"return": ..} or {"error": ..})."""
        message = {"execute": command}
        if arguments:
            message["arguments"] = arguments
        self.sock.sendall(json.dumps(message).encode() + b"\n")
        while True:
            reply = self._read()
            if "event" in reply:
                self.events.append(reply)
                continue
            return reply

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def _wait_for_socket(path: str, proc: subprocess.Popen, deadline: float) -> None:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise QMPError("QEMU exited with status %s before its QMP socket appeared" % proc.returncode)
        if os.path.exists(path):
            return
        time.sleep(0.05)
    raise QMPError("QMP socket %s did not appear in time" % path)


def _inject(pid: int, timeout: float) -> dict:
    """Add INJECT_RAM_ADDR to the QEMU's own poison list (QEMU's kvm_hwpoison_page_add())."""
    try:
        return QemuProcess(pid, timeout=min(timeout, 30.0)).add_to_poison_list(INJECT_RAM_ADDR)
    except (InjectError, ElfError, OSError) as exc:
        return {"ok": False, "error": "%s: %s" % (type(exc).__name__, exc), "ram_addr": "%#x" % INJECT_RAM_ADDR}


def cmd_symbols(args) -> dict:
    """Where each named symbol is found: the binary itself or its build-id debug file."""
    result = {"binary": args.binary, "symbols": {}}
    try:
        elf = ElfFile(args.binary)
        build_id = elf.build_id()
        debug = debug_file_path(build_id) if build_id else None
        result.update(build_id=build_id, debug_file=debug if debug and os.path.exists(debug) else None)
        found = elf.symbols(args.name)
        for name in args.name:
            if name in found:
                result["symbols"][name] = {"found_in": "binary", "value": "%#x" % found[name][0]}
        missing = [n for n in args.name if n not in found]
        if missing and result["debug_file"]:
            for name, (value, _size) in ElfFile(result["debug_file"]).symbols(missing).items():
                result["symbols"][name] = {"found_in": "debuginfo", "value": "%#x" % value}
    except ElfError as exc:
        result["error"] = str(exc)
    return result


def cmd_selftest(args) -> dict:
    result: dict = {"binary": args.binary, "inject": args.inject, "ok": False,
                    "refusal_message": UPSTREAM_REFUSAL}
    workdir = tempfile.mkdtemp(prefix="pg-selftest-")
    sock = os.path.join(workdir, "qmp.sock")
    argv = [
        args.binary, "-accel", "tcg", "-machine", args.machine, "-m", str(args.memory_mib),
        "-nodefaults", "-display", "none", "-serial", "none", "-monitor", "none",
        "-name", "guest=poison-guard-selftest,debug-threads=on",
        "-qmp", "unix:%s,server=on,wait=off" % sock, "-S",
    ]
    result["argv"] = argv
    started = time.monotonic()
    deadline = started + args.timeout
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    result["pid"] = proc.pid
    qmp = None
    try:
        _wait_for_socket(sock, proc, deadline)
        qmp = QMP(sock, timeout=max(5.0, args.timeout / 4))
        result["qemu_version"] = qmp.greeting.get("QMP", {}).get("version", {}).get("qemu")
        if args.run_guest:
            reply = qmp.execute("cont")
            if "error" in reply:
                raise QMPError("cont failed: %s" % reply["error"])
        result["status_before"] = qmp.execute("query-status").get("return", {}).get("status")
        if args.inject:
            result["injection"] = _inject(proc.pid, args.timeout)
            if not result["injection"].get("ok"):
                raise QMPError("poison list injection failed: %s" % result["injection"].get("error"))
        reply = qmp.execute("migrate", {"uri": "exec:cat > /dev/null"})
        result["migrate_reply"] = reply
        if "error" in reply:
            result["migration"] = "refused"
            result["refusal"] = reply["error"].get("desc")
        else:
            status = None
            while time.monotonic() < deadline:
                info = qmp.execute("query-migrate").get("return", {})
                status = info.get("status")
                if status in ("completed", "failed", "cancelled"):
                    result["migrate_info"] = {k: info.get(k) for k in ("status", "total-time", "error-desc")}
                    break
                time.sleep(0.1)
            result["migration"] = status or "unknown"
        # The VM must still be there, whatever happened to the migration.
        after = qmp.execute("query-status").get("return", {})
        result["status_after"] = after.get("status")
        result["alive_after"] = proc.poll() is None
        result["ok"] = True
    except (QMPError, OSError, subprocess.TimeoutExpired, ValueError) as exc:
        result["error"] = "%s: %s" % (type(exc).__name__, exc)
        result["alive_after"] = proc.poll() is None
    finally:
        if qmp is not None and proc.poll() is None:
            try:
                qmp.execute("quit")
            except (QMPError, OSError):
                pass
            qmp.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        proc.stdout.close()
        proc.stderr.close()
        result["exit_status"] = proc.returncode
        result["stderr_tail"] = stderr.splitlines()[-10:]
        result["events"] = [e.get("event") for e in (qmp.events if qmp else [])]
        result["duration_s"] = round(time.monotonic() - started, 2)
        for name in os.listdir(workdir):
            os.unlink(os.path.join(workdir, name))
        os.rmdir(workdir)
    return result


# ---------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p_bin = sub.add_parser("binary")
    p_bin.add_argument("--path", required=True)

    p_host = sub.add_parser("host")
    p_host.add_argument("--binary", required=True)
    p_host.add_argument("--stock-package", required=True)
    p_host.add_argument("--package", required=True)
    p_host.add_argument("--diverted", required=True)
    p_host.add_argument("--build-info", required=True)
    p_host.add_argument("--modules-package", action="append",
                        help="another package whose files the binary loads (its version must match)")

    p_feat = sub.add_parser("features")
    p_feat.add_argument("--binary", required=True)
    p_feat.add_argument("--timeout", type=float, default=60)

    p_par = sub.add_parser("parity")
    p_par.add_argument("--patched", required=True)
    p_par.add_argument("--stock", required=True)
    p_par.add_argument("--timeout", type=float, default=60)
    p_par.add_argument("--patched-module-dir",
                       help="module directory for a patched binary that is not installed yet")

    p_sym = sub.add_parser("symbols")
    p_sym.add_argument("--binary", required=True)
    p_sym.add_argument("--name", action="append", required=True)

    p_self = sub.add_parser("selftest")
    p_self.add_argument("--binary", required=True)
    p_self.add_argument("--inject", action="store_true")
    p_self.add_argument("--machine", default="q35")
    p_self.add_argument("--memory-mib", type=int, default=128)
    p_self.add_argument("--timeout", type=float, default=120)
    p_self.add_argument("--no-run-guest", dest="run_guest", action="store_false")

    args = parser.parse_args(argv)
    handler = {"binary": cmd_binary, "host": cmd_host,
               "features": cmd_features, "parity": cmd_parity, "selftest": cmd_selftest, "symbols": cmd_symbols}[args.command]
    json.dump(handler(args), sys.stdout, sort_keys=True)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
