# -*- coding: utf-8 -*-
# Copyright (c) kvm_ras.poison_guard contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Self-test of a QEMU binary's migration guard with a throw-away guest (stdlib only, no
Ansible imports). Behind ``kvm_ras.poison_guard.qemu_guard_selftest``.

``selftest`` starts a TCG guest (q35, 128 MiB, QMP on a unix socket in a private temporary
directory), optionally adds an entry to QEMU's own poison list by calling QEMU's
``kvm_hwpoison_page_add()`` in the guest's process (``procinject``: plain ptrace, general-purpose
registers only, so it works on CPUs with AMX, where gdb's inferior calls fail), then asks QMP
``migrate`` to ``exec:cat > /dev/null`` and reports whether the migration completed or was
refused, with QEMU's words, and whether the guest still runs. The guest is always stopped.

Every program is started with an argv list, never through a shell (the ``exec:`` migration
target is a constant QEMU itself runs).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import tempfile
import time

from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.messages import UPSTREAM_REFUSAL
from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.procinject.elf import ElfError
from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.procinject.qemu import QemuProcess
from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.procinject.tracee import InjectError

# The guest-RAM offset the self-test puts into QEMU's poison list (the page is never touched).
INJECT_RAM_ADDR = 0x1000


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


def wait_for_socket(path: str, proc: subprocess.Popen, deadline: float) -> None:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise QMPError("QEMU exited with status %s before its QMP socket appeared" % proc.returncode)
        if os.path.exists(path):
            return
        time.sleep(0.05)
    raise QMPError("QMP socket %s did not appear in time" % path)


def inject_poison_entry(pid: int, timeout: float) -> dict:
    """Add INJECT_RAM_ADDR to the QEMU's own poison list (QEMU's kvm_hwpoison_page_add())."""
    try:
        return QemuProcess(pid, timeout=min(timeout, 30.0)).add_to_poison_list(INJECT_RAM_ADDR)
    except (InjectError, ElfError, OSError) as exc:
        return {"ok": False, "error": "%s: %s" % (type(exc).__name__, exc), "ram_addr": "%#x" % INJECT_RAM_ADDR}


def selftest(binary: str, inject: bool = False, machine: str = "q35", memory_mib: int = 128,
             timeout: float = 120, run_guest: bool = True) -> dict:
    """Start a throw-away TCG guest of ``binary`` with a QMP socket, optionally add an entry to
    QEMU's own poison list (``inject``), then QMP ``migrate`` to ``exec:cat > /dev/null`` and
    report the outcome. The guest is stopped (``quit``, SIGKILL to its process group after 10 s)
    and its socket directory removed whatever happens. ``ok`` is false, with ``error``, when the
    test could not run to the end."""
    result: dict = {"binary": binary, "inject": inject, "ok": False,
                    "refusal_message": UPSTREAM_REFUSAL}
    workdir = tempfile.mkdtemp(prefix="pg-selftest-")
    sock = os.path.join(workdir, "qmp.sock")
    argv = [
        binary, "-accel", "tcg", "-machine", machine, "-m", str(memory_mib),
        "-nodefaults", "-display", "none", "-serial", "none", "-monitor", "none",
        "-name", "guest=poison-guard-selftest,debug-threads=on",
        "-qmp", "unix:%s,server=on,wait=off" % sock, "-S",
    ]
    result["argv"] = argv
    started = time.monotonic()
    deadline = started + timeout
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    result["pid"] = proc.pid
    qmp = None
    try:
        wait_for_socket(sock, proc, deadline)
        qmp = QMP(sock, timeout=max(5.0, timeout / 4))
        result["qemu_version"] = qmp.greeting.get("QMP", {}).get("version", {}).get("qemu")
        if run_guest:
            reply = qmp.execute("cont")
            if "error" in reply:
                raise QMPError("cont failed: %s" % reply["error"])
        result["status_before"] = qmp.execute("query-status").get("return", {}).get("status")
        if inject:
            result["injection"] = inject_poison_entry(proc.pid, timeout)
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
