# -*- coding: utf-8 -*-
# Copyright (c) kvm_ras.poison_guard contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Does the RUNNING QEMU binary refuse to migrate a VM with poisoned memory?

Upstream QEMU 9.0+ refuses ``migrate`` while its poison list is non-empty, with
``UPSTREAM_REFUSAL``; a patched older build carries the same string. The binary is read through
``/proc/PID/exe``, which still opens the old file when the package was upgraded after the VM
started (its link then ends in `` (deleted)``): a VM started before a patched QEMU was installed
keeps running the unguarded binary. QEMU fills its poison list only under KVM, so a VM without
KVM (TCG) is never guarded.
"""

from __future__ import annotations

import os
import re

from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.messages import UPSTREAM_REFUSAL

REFUSAL_BYTES = UPSTREAM_REFUSAL.encode("ascii")
# The migration capability of the patched_qemu role's x-poison-holes series: its QAPI name is
# compiled into the binary (the capability table and its error messages).
POISON_HOLES_BYTES = b"x-poison-holes"
GUARD_SINCE = (9, 0)
_VERSION_RE = re.compile(rb"QEMU emulator version (\d+)\.(\d+)(?:\.(\d+))?")
_CHUNK = 8 << 20


def version_tuple(text):
    match = re.match(r"^(\d+)\.(\d+)(?:\.(\d+))?", text or "")
    if not match:
        return None
    return tuple(int(g) for g in match.groups() if g is not None)


class BinaryInspector:
    """Reads each distinct binary (device, inode, size, mtime) once."""

    def __init__(self):
        self._cache = {}

    def inspect(self, exe_path):
        """``{"carries_refusal": bool|None, "poison_holes": bool|None, "version": str|None,
        "problem": str|None}``; ``poison_holes``: the binary carries the ``x-poison-holes``
        migration capability."""
        try:
            handle = open(exe_path, "rb")  # pylint: disable=consider-using-with
        except OSError as exc:
            return {"carries_refusal": None, "poison_holes": None, "version": None,
                    "problem": "cannot open %s: %s" % (exe_path, exc.strerror or exc)}
        with handle:
            st = os.fstat(handle.fileno())
            key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
            if key in self._cache:
                return self._cache[key]
            result = {"carries_refusal": False, "poison_holes": False, "version": None,
                      "problem": None}
            overlap = max(len(REFUSAL_BYTES), 64)
            tail = b""
            try:
                while True:
                    chunk = handle.read(_CHUNK)
                    if not chunk:
                        break
                    window = tail + chunk
                    if not result["carries_refusal"] and REFUSAL_BYTES in window:
                        result["carries_refusal"] = True
                    if not result["poison_holes"] and POISON_HOLES_BYTES in window:
                        result["poison_holes"] = True
                    if result["version"] is None:
                        match = _VERSION_RE.search(window)
                        if match:
                            result["version"] = ".".join(
                                g.decode() for g in match.groups() if g is not None)
                    tail = window[-overlap:]
            except OSError as exc:
                result = {"carries_refusal": None, "poison_holes": None, "version": None,
                          "problem": "reading %s failed: %s" % (exe_path, exc.strerror or exc)}
            self._cache[key] = result
            return result


def decide(binary, log_version, accel):
    """``(migration_guard, binary_guard, evidence details)`` for one VM.

    ``binary``: result of ``BinaryInspector.inspect`` (or None when /proc/PID/exe could not be
    opened); ``log_version``: QEMU version from the libvirt log header of this lifetime;
    ``accel``: ``"kvm"``, another accelerator name, or None when unknown.
    """
    details = []
    binary_guard = None
    version = None
    if binary is not None and binary.get("version"):
        version = binary["version"]
        details.append("running binary reports QEMU %s" % version)
    elif log_version:
        version = log_version
        details.append("libvirt log header of this QEMU lifetime: qemu version %s" % version)
    vt = version_tuple(version)
    if binary is not None and binary.get("carries_refusal"):
        binary_guard = True
        details.append("running binary carries the refusal message (%s...)" % UPSTREAM_REFUSAL[:40])
    elif vt is not None and vt >= GUARD_SINCE:
        binary_guard = True
        details.append("QEMU %s is 9.0 or newer (upstream refusal)" % version)
    elif binary is not None and binary.get("carries_refusal") is False:
        binary_guard = False
        details.append("running binary does not carry the refusal message%s" % (
            " and QEMU %s is older than 9.0" % version if vt else ""))
    else:
        if binary is not None and binary.get("problem"):
            details.append(binary["problem"])
        details.append("could not tell whether the running binary refuses poisoned migration")
    migration_guard = binary_guard
    if accel is not None and accel != "kvm":
        if binary_guard:
            details.append("but the VM runs without KVM (%s): QEMU records poisoned pages only "
                           "under KVM, so it would not refuse" % accel)
        migration_guard = False
    return migration_guard, binary_guard, details
