# -*- coding: utf-8 -*-
# Copyright (c) kvm_ras.poison_guard contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Event-Driven Ansible source: memory errors of a KVM hypervisor.

The parsing (kernel log framings and messages, rasdaemon rows, libvirt event arguments, the
corrected-error storm window, the pid -> libvirt domain lookup) is plain Python at module
level, testable without root, libvirt or ansible-rulebook. ``main()`` only wires the sources
to the queue.
"""

from __future__ import annotations

import asyncio
import collections
import datetime
import errno
import json
import logging
import os
import re
import socket
import sqlite3
import stat
import threading
import time
from xml.etree import ElementTree

DOCUMENTATION = r"""
---
short_description: Memory errors of a KVM hypervisor (kernel log, libvirt, rasdaemon)
description:
  - Puts one event, a dict with the key C(memory_error), on the queue for every memory error
    the host reports, from up to three sources, each optional (at least one must be set).
  - C(kernel_log) follows the kernel log (C(/dev/kmsg) records, plain C(dmesg) lines, journald
    export entries, C(journalctl -o json) lines and syslog C(kernel:) lines) and turns
    C(Memory failure:), C(MCE), soft-offline, unpoison and EDAC corrected-error lines into
    events. Other lines produce nothing; a malformed line is logged and skipped.
  - C(libvirt_uri) receives libvirt's memory-failure domain event
    (VIR_DOMAIN_EVENT_ID_MEMORY_FAILURE, libvirt 6.9 or later), which QEMU's MEMORY_FAILURE
    event raises, and reconnects when libvirtd restarts.
  - C(rasdaemon_db) polls rasdaemon's sqlite database (tables C(memory_failure_event) and
    C(mc_event)).
  - Each event carries C(host), C(kind) (C(memory_failure), C(corrected_errors),
    C(soft_offline), C(unpoison)), C(pfn) (hex string or null), C(result) (the kernel's or
    rasdaemon's words, e.g. C(Recovered), C(Failed), C(Ignored)), C(process) and C(pid) when
    named, C(vm) (C(name) and C(uuid)) when the event is a domain's or the pid is the QEMU
    process of a libvirt domain, C(source) (C(kernel_log), C(libvirt), C(rasdaemon)), C(time)
    (ISO 8601, UTC) and C(message). Corrected-error events also carry C(dimm), C(count),
    C(window_count), C(window_minutes), C(threshold) and C(storm) (true once C(window_count)
    reaches C(corrected_storm_count) within C(corrected_storm_minutes) on one DIMM).
options:
  host:
    description:
      - Host name put in every event (the inventory name of the hypervisor).
      - Default, for the kernel log and rasdaemon the local host name; for libvirt the host
        name that libvirtd reports.
    type: str
  kernel_log:
    description:
      - Kernel log to follow. C(/dev/kmsg) (needs root), a file written by C(dmesg -w), a
        syslog file, or a file of C(journalctl -k -o export) or C(-o json) output.
      - Set to an empty string to disable this source.
    type: str
    default: /dev/kmsg
  kernel_log_from_start:
    description:
      - Read what the kernel log already holds before following it. Default, only new lines.
    type: bool
    default: false
  libvirt_uri:
    description:
      - libvirt URI whose memory-failure domain events to receive, e.g. C(qemu:///system) or
        C(qemu+tcp://hv1/system). Needs the libvirt Python bindings (C(python3-libvirt)).
    type: str
  libvirt_reconnect_interval:
    description: Seconds between attempts to reconnect to libvirtd.
    type: float
    default: 5
  rasdaemon_db:
    description:
      - rasdaemon's database, usually C(/var/lib/rasdaemon/ras-mc_event.db).
    type: str
  rasdaemon_from_start:
    description: Emit the rows already in the database at start. Default, only new rows.
    type: bool
    default: false
  rasdaemon_interval:
    description: Seconds between polls of the rasdaemon database.
    type: float
    default: 5
  corrected_storm_count:
    description: Corrected errors on one DIMM within C(corrected_storm_minutes) that make a storm.
    type: int
    default: 50
  corrected_storm_minutes:
    description: Length of the corrected-error window, in minutes.
    type: float
    default: 1440
  proc_root:
    description: Where procfs is mounted (for the pid -> domain lookup).
    type: str
    default: /proc
  libvirt_run_dir:
    description: libvirt's QEMU runtime directory (C(<name>.pid) and C(<name>.xml) per domain).
    type: str
    default: /run/libvirt/qemu
  poll_interval:
    description: Seconds between reads of a kernel log file that has no new lines.
    type: float
    default: 0.25
"""

EXAMPLES = r"""
- name: React to memory errors
  hosts: all
  sources:
    - kvm_ras.poison_guard.memory_errors:
        kernel_log: /dev/kmsg
        libvirt_uri: qemu:///system
        rasdaemon_db: /var/lib/rasdaemon/ras-mc_event.db
  rules:
    - name: Print every memory error
      condition: event.memory_error is defined
      action:
        print_event:
"""

LOG = logging.getLogger(__name__)

SOURCES_KERNEL = "kernel_log"
SOURCES_LIBVIRT = "libvirt"
SOURCES_RASDAEMON = "rasdaemon"

# mm/memory-failure.c and arch/x86/mm/fault.c messages, all kernel generations (see
# poison-detection-facts.md section 3): the pr_fmt prefix "Memory failure: " since 4.7,
# "MCE %#lx: " before.
_MF_PREFIX = re.compile(r"^(?:Memory failure: |MCE )0x(?P<pfn>[0-9a-fA-F]+): (?P<rest>.*)$")
_MF_NOPFN = re.compile(r"^Memory failure: (?P<rest>.*)$")
_RECOVERY = re.compile(r"^recovery action for (?P<page_type>.+): (?P<result>Ignored|Failed|Delayed|Recovered)\s*$")
_SIGNAL = re.compile(r"^(?P<what>Sending SIGBUS to|Killing|forcibly killing|"
                     r"Cannot send advisory machine check signal to) (?P<comm>.+):(?P<pid>\d+)\b(?P<tail>.*)$")
_ERROR_SENDING = re.compile(r"^Error sending signal to (?P<comm>.+):(?P<pid>\d+): (?P<err>-?\d+)\s*$")
_MCE_KILL = re.compile(r"^MCE: Killing (?P<comm>.+):(?P<pid>\d+) due to hardware memory corruption fault at "
                       r"(?P<addr>[0-9a-fA-F]+)\s*$")
_SOFT_OFFLINE = re.compile(r"^(?:Soft offline|soft offline|soft_offline): (?:0x)?(?P<pfn>[0-9a-fA-F]+):? ?(?P<rest>.*)$")
_SOFT_OFFLINING = re.compile(r"^Soft offlining pfn 0x(?P<pfn>[0-9a-fA-F]+) at process virtual address "
                             r"0x[0-9a-fA-F]+\s*$")
_UNPOISON = re.compile(r"^Unpoison: (?P<rest>.*)$")
_HEX_PFN = re.compile(r"\b0x(?P<pfn>[0-9a-fA-F]+)\b")
_PANIC = re.compile(r"^Kernel panic - not syncing: Memory failure on page (?P<pfn>[0-9a-fA-F]+)\s*$")
# drivers/edac/edac_mc.c edac_ce_error()/edac_raw_mc_handle_error():
# "%d CE %s%son %s (%s%s%s%s%s%s)" printed with the "EDAC MC%d: " prefix.
_EDAC_CE = re.compile(r"^EDAC (?:MC)?(?P<mc>\d+): (?P<count>\d+) CE (?P<msg>.*?)\s*on (?P<label>.+?) \((?P<detail>.*)\)\s*$")
_EDAC_UE = re.compile(r"^EDAC (?:MC)?(?P<mc>\d+): (?P<count>\d+) UE (?P<msg>.*?)\s*on (?P<label>.+?) \((?P<detail>.*)\)\s*$")
_EDAC_PAGE = re.compile(r"\bpage:0x(?P<page>[0-9a-fA-F]+)")
_EDAC_LOC = re.compile(r"\b(?P<key>channel|slot|csrow|rank|dimm|bank|mc|socket|ha):(?P<value>-?\d+)")

# Framings of one kernel log line.
_KMSG = re.compile(r"^(?P<prio>\d+),(?P<seq>\d+),(?P<usec>\d+),(?P<flags>[^;,]*)(?:,[^;]*)?;(?P<msg>.*)$")
_DMESG = re.compile(r"^(?:<(?P<prio>\d+)>)?\[\s*(?P<secs>\d+\.\d+)\] ?(?P<msg>.*)$")
_DMESG_ISO = re.compile(r"^(?P<stamp>\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:[.,]\d+)?(?:[+-]\d\d:?\d\d|Z)?) "
                        r"(?P<hostname>\S+ )?(?:kernel: )?(?P<msg>.*)$")
_SYSLOG = re.compile(r"^(?P<stamp>[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d) (?P<hostname>\S+) kernel: "
                     r"(?:\[\s*\d+\.\d+\] )?(?P<msg>.*)$")
_JOURNAL_FIELD = re.compile(r"^(?P<key>[A-Z0-9_]+)=(?P<value>.*)$")
_CONT = re.compile(r"^ [A-Z]+=")

KINDS = ("memory_failure", "corrected_errors", "soft_offline", "unpoison")


class SourceArgumentError(ValueError):
    """A bad source argument: raised before any source starts."""


def utc_iso(epoch):
    if epoch is None:
        return None
    return datetime.datetime.fromtimestamp(epoch, tz=datetime.timezone.utc).isoformat(timespec="microseconds").replace(
        "+00:00", "Z")


def boot_epoch():
    """Wall-clock time of boot, to date kmsg/dmesg records (CLOCK_BOOTTIME counts suspend too)."""
    try:
        return time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)
    except (AttributeError, OSError):
        return time.time() - time.monotonic()


def syslog_epoch(stamp, now=None):
    """A syslog "Mon dd HH:MM:SS" stamp (local time, no year) -> epoch: this year unless that is
    more than a day ahead, then last year."""
    now = time.time() if now is None else now
    year = datetime.datetime.fromtimestamp(now).year
    for candidate in (year, year - 1):
        try:
            parsed = datetime.datetime.strptime("%d %s" % (candidate, " ".join(stamp.split())), "%Y %b %d %H:%M:%S")
        except ValueError:
            return None
        epoch = parsed.timestamp()
        if epoch <= now + 86400:
            return epoch
    return None


def _pfn(text):
    if text is None:
        return None
    return "0x%x" % int(text, 16)


def parse_kernel_message(message):
    """One kernel message (without framing) -> dict of event fields, or None if not a memory error.

    Raises ValueError for a line that looks like a memory-error line but cannot be read."""
    msg = message.rstrip("\r\n")
    if not msg:
        return None
    if msg.startswith("Injecting memory failure"):
        # hwpoison_inject / MADV_HWPOISON announce: the "Memory failure:" line that follows is
        # the event; this one alone would count the same page twice.
        return None
    match = _MCE_KILL.match(msg)
    if match:
        return {"kind": "memory_failure", "pfn": None, "result": "Killed", "process": match["comm"],
                "pid": int(match["pid"]), "address": "0x%x" % int(match["addr"], 16),
                "detail": "process touched a poisoned page"}
    match = _PANIC.match(msg)
    if match:
        return {"kind": "memory_failure", "pfn": _pfn(match["pfn"]), "result": "Panic", "process": None, "pid": None,
                "detail": "vm.memory_failure_recovery=0"}
    if msg.startswith("Memory failure: ") or msg.startswith("MCE 0x"):
        match = _MF_PREFIX.match(msg)
        if match:
            pfn, rest = match["pfn"], match["rest"]
            event = {"kind": "memory_failure", "pfn": _pfn(pfn), "result": None, "process": None, "pid": None}
            rec = _RECOVERY.match(rest)
            if rec:
                event.update(result=rec["result"], page_type=rec["page_type"])
                return event
            sig = _SIGNAL.match(rest)
            if sig:
                event.update(process=sig["comm"], pid=int(sig["pid"]), detail=rest.strip())
                return event
            event["detail"] = rest.strip()
            if rest.startswith("already hardware poisoned"):
                event["result"] = "already hardware poisoned"
            return event
        match = _MF_NOPFN.match(msg)
        rest = match["rest"] if match else ""
        err = _ERROR_SENDING.match(rest)
        if err:
            return {"kind": "memory_failure", "pfn": None, "result": None, "process": err["comm"],
                    "pid": int(err["pid"]), "detail": rest.strip()}
        if rest.startswith("0x") or not rest.strip() or msg.startswith("MCE 0x"):
            raise ValueError("unreadable memory failure line: %r" % msg[:200])
        return {"kind": "memory_failure", "pfn": None, "result": None, "process": None, "pid": None,
                "detail": rest.strip()}
    match = _SOFT_OFFLINING.match(msg)
    if match:
        return {"kind": "soft_offline", "pfn": _pfn(match["pfn"]), "result": None, "process": None, "pid": None,
                "detail": "soft offlining requested"}
    lowered = msg[:14].lower()
    if lowered.startswith("soft offline: ") or lowered.startswith("soft_offline: "):
        match = _SOFT_OFFLINE.match(msg)
        if not match:
            raise ValueError("unreadable soft offline line: %r" % msg[:200])
        rest = match["rest"].strip()
        return {"kind": "soft_offline", "pfn": _pfn(match["pfn"]), "result": rest or None, "process": None,
                "pid": None, "detail": rest}
    match = _UNPOISON.match(msg)
    if match:
        pfn = _HEX_PFN.search(match["rest"])
        return {"kind": "unpoison", "pfn": _pfn(pfn["pfn"]) if pfn else None, "result": match["rest"].strip(),
                "process": None, "pid": None, "detail": match["rest"].strip()}
    if msg.startswith("EDAC "):
        for pattern, kind in ((_EDAC_CE, "corrected_errors"), (_EDAC_UE, "memory_failure")):
            match = pattern.match(msg)
            if match:
                page = _EDAC_PAGE.search(match["detail"])
                location = {m["key"]: int(m["value"]) for m in _EDAC_LOC.finditer(match["detail"])}
                label = match["label"].strip()
                return {"kind": kind, "pfn": _pfn(page["page"]) if page else None,
                        "result": "Corrected" if kind == "corrected_errors" else "Uncorrected",
                        "process": None, "pid": None, "count": int(match["count"]),
                        "dimm": "mc%s %s" % (match["mc"], label), "mc": int(match["mc"]), "location": location,
                        "detail": match["msg"].strip()}
        return None
    return None


class KernelLogParser:
    """Turns kernel log lines of any supported framing into events (dicts without host/source).

    Stateful only for journald export entries (fields of one entry span lines up to a blank
    line). ``boot`` is the wall-clock time of boot, used for kmsg and dmesg timestamps."""

    def __init__(self, boot=None, logger=LOG):
        self.boot = boot_epoch() if boot is None else boot
        self.logger = logger
        self.entry = {}
        self.skipped = 0

    def _event(self, message, epoch=None, uptime=None, hostname=None, seq=None):
        try:
            fields = parse_kernel_message(message)
        except ValueError as exc:
            self.skipped += 1
            self.logger.warning("kernel_log: skipped a malformed line: %s", exc)
            return None
        if fields is None:
            return None
        if epoch is None and uptime is not None:
            epoch = self.boot + uptime
        fields["time"] = utc_iso(epoch if epoch is not None else time.time())
        if uptime is not None:
            fields["uptime"] = round(uptime, 6)
        if hostname:
            fields["log_hostname"] = hostname
        if seq is not None:
            fields["seq"] = seq
        fields["message"] = message.rstrip("\r\n")
        return fields

    def _flush(self):
        entry, self.entry = self.entry, {}
        if "MESSAGE" not in entry:
            return []
        return self._journal_event(entry)

    def _journal_event(self, entry):
        if entry.get("_TRANSPORT") not in (None, "kernel") and entry.get("SYSLOG_IDENTIFIER") != "kernel":
            return []
        epoch = None
        if entry.get("__REALTIME_TIMESTAMP"):
            try:
                epoch = int(entry["__REALTIME_TIMESTAMP"]) / 1e6
            except (TypeError, ValueError):
                self.skipped += 1
                self.logger.warning("kernel_log: skipped a journal entry with a malformed __REALTIME_TIMESTAMP: %r",
                                    str(entry.get("__REALTIME_TIMESTAMP"))[:80])
                return []
        message = entry["MESSAGE"]
        if isinstance(message, list):  # journalctl -o json: non-UTF-8 messages are byte arrays
            message = bytes(b & 0xFF for b in message if isinstance(b, int)).decode("utf-8", "replace")
        if not isinstance(message, str):
            return []
        event = self._event(message, epoch=epoch, hostname=entry.get("_HOSTNAME"))
        return [event] if event else []

    def feed(self, line):
        """One line (str or bytes) -> list of events (usually zero or one)."""
        if isinstance(line, bytes):
            line = line.decode("utf-8", "replace")
        line = line.rstrip("\n")
        if line.endswith("\r"):
            line = line[:-1]
        if line == "":
            return self._flush()
        if _CONT.match(line):  # kmsg continuation (dictionary) lines: " SUBSYSTEM=..."
            return []
        if line.startswith("{"):
            try:
                entry = json.loads(line)
            except ValueError:
                self.skipped += 1
                self.logger.warning("kernel_log: skipped a malformed JSON line: %r", line[:200])
                return []
            if not isinstance(entry, dict) or "MESSAGE" not in entry:
                return []
            return self._journal_event(entry)
        match = _KMSG.match(line)
        if match:
            message = match["msg"]
            # kmsg escapes non-printable bytes as \xNN
            message = re.sub(r"\\x([0-9a-fA-F]{2})", lambda m: chr(int(m.group(1), 16)), message)
            event = self._event(message, uptime=int(match["usec"]) / 1e6, seq=int(match["seq"]))
            return [event] if event else []
        match = _DMESG.match(line)
        if match:
            event = self._event(match["msg"], uptime=float(match["secs"]))
            return [event] if event else []
        match = _JOURNAL_FIELD.match(line)
        if match and (self.entry or match["key"] in ("__CURSOR", "__REALTIME_TIMESTAMP", "MESSAGE")
                      or match["key"].startswith("_")):
            self.entry[match["key"]] = match["value"]
            return []
        match = _SYSLOG.match(line)
        if match:
            event = self._event(match["msg"], epoch=syslog_epoch(match["stamp"]), hostname=match["hostname"])
            return [event] if event else []
        match = _DMESG_ISO.match(line)
        if match:
            epoch = None
            try:
                stamp = match["stamp"].replace(",", ".").replace(" ", "T")
                parsed = datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
                if parsed.tzinfo is None:
                    parsed = parsed.astimezone()
                epoch = parsed.timestamp()
            except ValueError:
                pass
            event = self._event(match["msg"], epoch=epoch)
            return [event] if event else []
        # A bare message (no framing), e.g. from a test or a pipe.
        event = self._event(line)
        return [event] if event else []

    def close(self):
        return self._flush()


class StormCounter:
    """Sliding window of corrected errors per DIMM: count them, say when a storm is reached."""

    def __init__(self, threshold=50, minutes=1440.0):
        self.threshold = threshold
        self.window = minutes * 60.0
        self.minutes = minutes
        self.seen = collections.defaultdict(collections.deque)

    def add(self, host, dimm, count, epoch):
        queue = self.seen[(host, dimm)]
        queue.append((epoch, count))
        while queue and queue[0][0] <= epoch - self.window:
            queue.popleft()
        total = sum(count for _epoch, count in queue)
        return {"window_count": total, "window_minutes": self.minutes, "threshold": self.threshold,
                "storm": total >= self.threshold}


# rasdaemon's database (ras-record.c): memory_failure_event (rasdaemon >= 0.6.7,
# --enable-memory-failure) and mc_event (EDAC). Timestamps are "%Y-%m-%d %H:%M:%S %z".
RAS_TIMESTAMP = "%Y-%m-%d %H:%M:%S %z"


def ras_time(text):
    if not text:
        return None
    try:
        return datetime.datetime.strptime(text.strip(), RAS_TIMESTAMP).timestamp()
    except ValueError:
        return None


def rasdaemon_memory_failure(row):
    """A memory_failure_event row (dict) -> event fields. Raises ValueError on a malformed row."""
    pfn = row.get("pfn")
    if not isinstance(pfn, str) or not re.match(r"^(0x)?[0-9a-fA-F]+$", pfn.strip()):
        raise ValueError("memory_failure_event id %s has no readable pfn: %r" % (row.get("id"), pfn))
    epoch = ras_time(row.get("timestamp"))
    return {"kind": "memory_failure", "pfn": _pfn(pfn.strip()[2:] if pfn.strip().startswith("0x") else pfn.strip()),
            "result": row.get("action_result"), "page_type": row.get("page_type"), "process": None, "pid": None,
            "time": utc_iso(epoch if epoch is not None else time.time()), "rasdaemon_id": row.get("id"),
            "rasdaemon_table": "memory_failure_event", "message": row.get("timestamp") and "%s %s %s %s" % (
                row.get("timestamp"), pfn, row.get("page_type"), row.get("action_result"))}


def rasdaemon_mc_event(row):
    """An mc_event row (dict) -> event fields, or None for types that are not memory errors."""
    err_type = (row.get("err_type") or "").strip()
    try:
        count = int(row.get("err_count") if row.get("err_count") is not None else 1)
    except (TypeError, ValueError):
        raise ValueError("mc_event id %s has an unreadable err_count: %r" % (row.get("id"), row.get("err_count")))
    if err_type == "Corrected":
        kind = "corrected_errors"
    elif err_type in ("Uncorrected", "Fatal"):
        kind = "memory_failure"
    else:
        return None
    epoch = ras_time(row.get("timestamp"))
    label = (row.get("label") or "").strip()
    layers = ":".join(str(row.get(k)) for k in ("top_layer", "middle_layer", "lower_layer"))
    dimm = "mc%s %s" % (row.get("mc"), label if label and label not in ("unknown", "any memory") else layers)
    address = row.get("address")
    pfn = None
    if isinstance(address, int) and address > 0:
        pfn = "0x%x" % (address >> 12)
    return {"kind": kind, "pfn": pfn, "result": err_type, "process": None, "pid": None, "count": count,
            "dimm": dimm, "label": label, "mc": row.get("mc"), "layers": layers,
            "detail": (row.get("err_msg") or "").strip(), "driver_detail": row.get("driver_detail"),
            "time": utc_iso(epoch if epoch is not None else time.time()), "epoch": epoch,
            "rasdaemon_id": row.get("id"), "rasdaemon_table": "mc_event"}


# libvirt virDomainMemoryFailureRecipientType / ActionType / Flags (libvirt-domain.h).
LIBVIRT_RECIPIENTS = {0: "hypervisor", 1: "guest"}
LIBVIRT_ACTIONS = {0: "ignore", 1: "inject", 2: "fatal", 3: "reset"}
LIBVIRT_FLAG_ACTION_REQUIRED = 1
LIBVIRT_FLAG_RECURSIVE = 2
VIR_DOMAIN_EVENT_ID_MEMORY_FAILURE = 25


def libvirt_memory_failure(name, uuid, recipient, action, flags, epoch=None):
    """Arguments of libvirt's memory-failure domain event -> event fields."""
    return {"kind": "memory_failure", "pfn": None, "result": LIBVIRT_ACTIONS.get(action, str(action)),
            "process": None, "pid": None, "vm": {"name": name, "uuid": uuid},
            "recipient": LIBVIRT_RECIPIENTS.get(recipient, str(recipient)),
            "action": LIBVIRT_ACTIONS.get(action, str(action)),
            "action_required": bool(flags & LIBVIRT_FLAG_ACTION_REQUIRED),
            "recursive": bool(flags & LIBVIRT_FLAG_RECURSIVE),
            "time": utc_iso(epoch if epoch is not None else time.time()),
            "message": "libvirt memory failure: domain %s recipient %s action %s flags %d" % (
                name, LIBVIRT_RECIPIENTS.get(recipient, recipient), LIBVIRT_ACTIONS.get(action, action), flags)}


def domain_of_pid(pid, proc_root="/proc", run_dir="/run/libvirt/qemu"):
    """The libvirt domain ({"name", "uuid"}) whose QEMU process holds thread or process ``pid``.

    The kernel names the thread (task_pid_nr), e.g. a vCPU thread "CPU 0/KVM"; its thread group
    id is the QEMU process, matched against libvirt's <name>.pid files. None if not a domain's."""
    if pid is None:
        return None
    tgid = None
    try:
        with open(os.path.join(proc_root, str(pid), "status")) as handle:
            for line in handle:
                if line.startswith("Tgid:"):
                    tgid = int(line.split()[1])
                    break
    except (OSError, ValueError, IndexError):
        tgid = None
    candidates = {int(pid)} | ({tgid} if tgid else set())
    try:
        names = sorted(os.listdir(run_dir))
    except OSError:
        return None
    for entry in names:
        if not entry.endswith(".pid"):
            continue
        try:
            with open(os.path.join(run_dir, entry)) as handle:
                owner = int(handle.read(64).strip())
        except (OSError, ValueError):
            continue
        if owner in candidates:
            name = entry[:-4]
            return {"name": name, "uuid": domain_uuid(os.path.join(run_dir, name + ".xml"))}
    return None


def domain_uuid(xml_path):
    """UUID from libvirt's live status XML (<domstatus><domain><uuid>) or a plain domain XML."""
    try:
        root = ElementTree.parse(xml_path).getroot()
    except (OSError, ElementTree.ParseError):
        return None
    node = root.find("uuid") if root.tag == "domain" else root.find("domain/uuid")
    return node.text.strip() if node is not None and node.text else None


_BOOL_TRUE = ("1", "true", "yes", "on")
_BOOL_FALSE = ("0", "false", "no", "off", "")

ARG_SPEC = {
    "host": (str, None),
    "kernel_log": (str, "/dev/kmsg"),
    "kernel_log_from_start": (bool, False),
    "libvirt_uri": (str, None),
    "libvirt_reconnect_interval": (float, 5.0),
    "rasdaemon_db": (str, None),
    "rasdaemon_from_start": (bool, False),
    "rasdaemon_interval": (float, 5.0),
    "corrected_storm_count": (int, 50),
    "corrected_storm_minutes": (float, 1440.0),
    "proc_root": (str, "/proc"),
    "libvirt_run_dir": (str, "/run/libvirt/qemu"),
    "poll_interval": (float, 0.25),
}


def validate_args(args):
    """Source arguments -> normalised dict. Raises SourceArgumentError naming the problem and the fix."""
    args = dict(args or {})
    unknown = sorted(k for k in args if k not in ARG_SPEC and not k.startswith("eda_"))
    if unknown:
        raise SourceArgumentError("kvm_ras.poison_guard.memory_errors: unknown argument(s) %s; the arguments are %s"
                                  % (", ".join(unknown), ", ".join(sorted(ARG_SPEC))))
    out = {}
    for key, (kind, default) in ARG_SPEC.items():
        value = args.get(key, default)
        if key in ("host", "kernel_log", "libvirt_uri", "rasdaemon_db") and isinstance(value, str) and not value.strip():
            value = None  # '' switches a source off (the rulebooks' defaults)
        if value is None:
            out[key] = None
            continue
        try:
            if kind is bool:
                if isinstance(value, bool):
                    pass
                elif str(value).strip().lower() in _BOOL_TRUE:
                    value = True
                elif str(value).strip().lower() in _BOOL_FALSE:
                    value = False
                else:
                    raise ValueError(value)
            elif kind is int:
                if isinstance(value, bool) or float(value) != int(float(value)):
                    raise ValueError(value)
                value = int(float(value))
            elif kind is float:
                if isinstance(value, bool):
                    raise ValueError(value)
                value = float(value)
            else:
                if not isinstance(value, str):
                    raise ValueError(value)
        except (TypeError, ValueError):
            raise SourceArgumentError("kvm_ras.poison_guard.memory_errors: %s=%r is not a %s; give a %s, e.g. %s=%r"
                                      % (key, value, kind.__name__, kind.__name__, key, default))
        out[key] = value
    for key in ("corrected_storm_count",):
        if out[key] < 1:
            raise SourceArgumentError("kvm_ras.poison_guard.memory_errors: %s must be 1 or more (got %r)" % (key, out[key]))
    for key in ("corrected_storm_minutes", "rasdaemon_interval", "poll_interval", "libvirt_reconnect_interval"):
        if not out[key] > 0:
            raise SourceArgumentError("kvm_ras.poison_guard.memory_errors: %s must be more than 0 (got %r)"
                                      % (key, out[key]))
    if out["host"] is not None and not re.match(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,252}$", out["host"]):
        raise SourceArgumentError("kvm_ras.poison_guard.memory_errors: host=%r is not a host name; give the "
                                  "inventory name of the hypervisor (letters, digits, '.', '-', '_')" % out["host"])
    if not (out["kernel_log"] or out["libvirt_uri"] or out["rasdaemon_db"]):
        raise SourceArgumentError("kvm_ras.poison_guard.memory_errors: no source: set kernel_log, libvirt_uri "
                                  "or rasdaemon_db (kernel_log defaults to /dev/kmsg unless set to '')")
    return out


class Emitter:
    """Completes event fields (host, source, vm, storm window) and puts events on the queue."""

    def __init__(self, queue, args, logger=LOG):
        self.queue = queue
        self.args = args
        self.logger = logger
        self.local_host = args["host"] or socket.gethostname().split(".")[0]
        self.storms = StormCounter(args["corrected_storm_count"], args["corrected_storm_minutes"])
        self.count = 0

    def complete(self, fields, source, host=None):
        event = dict(fields)
        event["host"] = self.args["host"] or host or self.local_host
        event["source"] = source
        for key in ("pfn", "result", "process", "pid"):
            event.setdefault(key, None)
        if "vm" not in event:
            event["vm"] = None
            if source == SOURCES_KERNEL and event.get("pid"):
                event["vm"] = domain_of_pid(event["pid"], self.args["proc_root"], self.args["libvirt_run_dir"])
        if event["kind"] == "corrected_errors":
            epoch = event.pop("epoch", None)
            if epoch is None:
                try:
                    epoch = datetime.datetime.fromisoformat(event["time"].replace("Z", "+00:00")).timestamp()
                except (AttributeError, ValueError):
                    epoch = time.time()
            event.update(self.storms.add(event["host"], event.get("dimm"), event.get("count") or 1, epoch))
        else:
            event.pop("epoch", None)
        return {"memory_error": event}

    async def put(self, fields, source, host=None):
        event = self.complete(fields, source, host)
        await self.queue.put(event)
        self.count += 1
        self.logger.info("memory_errors: %s %s on %s pfn %s %s", source, event["memory_error"]["kind"],
                         event["memory_error"]["host"], event["memory_error"]["pfn"],
                         event["memory_error"]["result"])


async def follow_kernel_log(emitter, path, from_start, poll_interval, boot=None):
    """Follow a kernel log: /dev/kmsg (one record per read) or a text file (tail -F)."""
    parser = KernelLogParser(boot=boot, logger=emitter.logger)
    loop = asyncio.get_running_loop()
    while True:
        try:
            st = os.stat(path)
        except OSError as exc:
            emitter.logger.warning("kernel_log: cannot read %s (%s); retrying", path, exc.strerror)
            await asyncio.sleep(max(poll_interval, 1.0))
            continue
        if stat.S_ISCHR(st.st_mode):
            await _follow_kmsg(emitter, parser, path, from_start, loop)
            return
        if stat.S_ISDIR(st.st_mode):
            raise SourceArgumentError("kvm_ras.poison_guard.memory_errors: cannot read %s (it is a directory); set "
                                      "kernel_log to /dev/kmsg, a log file, or ''" % path)
        await _follow_file(emitter, parser, path, from_start, poll_interval)
        from_start = True  # a rotated file is read from its start


async def _follow_kmsg(emitter, parser, path, from_start, loop):
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise SourceArgumentError("kvm_ras.poison_guard.memory_errors: cannot read %s (%s); run ansible-rulebook as "
                                  "root to read the kernel log, or set kernel_log to a log file or ''"
                                  % (path, exc.strerror))
    try:
        if not from_start:
            os.lseek(fd, 0, os.SEEK_END)
        emitter.logger.info("kernel_log: following %s from %s", path, "its start" if from_start else "its end")
        while True:
            try:
                record = os.read(fd, 8192)
            except BlockingIOError:
                ready = loop.create_future()
                loop.add_reader(fd, lambda: ready.done() or ready.set_result(None))
                try:
                    await ready
                finally:
                    loop.remove_reader(fd)
                continue
            except OSError as exc:
                if exc.errno == errno.EPIPE:  # records overwritten before we read them
                    emitter.logger.warning("kernel_log: %s: some kernel records were overwritten before they "
                                           "were read", path)
                    continue
                raise
            for line in record.split(b"\n"):
                for fields in parser.feed(line) if line else []:
                    await emitter.put(fields, SOURCES_KERNEL)
    finally:
        os.close(fd)


async def _follow_file(emitter, parser, path, from_start, poll_interval):
    """Read complete lines as they are appended; return when the file is replaced or truncated."""
    try:
        handle = open(path, "rb")
    except FileNotFoundError:
        return  # removed between stat and open: the caller waits for it
    except OSError as exc:
        raise SourceArgumentError("kvm_ras.poison_guard.memory_errors: cannot read %s (%s); give ansible-rulebook "
                                  "read access or set kernel_log to another file or ''" % (path, exc.strerror))
    with handle:
        ident = os.fstat(handle.fileno()).st_ino
        if not from_start:
            handle.seek(0, os.SEEK_END)
        emitter.logger.info("kernel_log: following %s from %s", path, "its start" if from_start else "its end")
        pending = b""
        while True:
            chunk = handle.read(65536)
            if chunk:
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    for fields in parser.feed(line):
                        await emitter.put(fields, SOURCES_KERNEL)
                continue
            await asyncio.sleep(poll_interval)
            try:
                st = os.stat(path)
            except OSError:
                st = None
            if st is None or st.st_ino != ident or st.st_size < handle.tell():
                # renamed away: what was written before the rename is still in the old file
                rest = handle.read() if st is None or st.st_ino != ident else b""
                lines = (pending + rest).split(b"\n")
                events = [f for line in lines if line for f in parser.feed(line)] + parser.close()
                for fields in events:
                    await emitter.put(fields, SOURCES_KERNEL)
                emitter.logger.info("kernel_log: %s was rotated or truncated; reopening", path)
                return


def _ras_rows(db_path, table, after_id):
    uri = "file:%s?mode=ro" % db_path
    with sqlite3.connect(uri, uri=True, timeout=5) as conn:
        conn.row_factory = sqlite3.Row
        rows = conn.execute("SELECT * FROM %s WHERE id > ? ORDER BY id" % table, (after_id,)).fetchall()
        return [dict(r) for r in rows]


def _ras_max_id(db_path, table):
    uri = "file:%s?mode=ro" % db_path
    with sqlite3.connect(uri, uri=True, timeout=5) as conn:
        return conn.execute("SELECT COALESCE(MAX(id), 0) FROM %s" % table).fetchone()[0]


async def poll_rasdaemon(emitter, db_path, from_start, interval):
    """Poll rasdaemon's tables; missing database or tables are waited for, never fatal."""
    tables = {"memory_failure_event": rasdaemon_memory_failure, "mc_event": rasdaemon_mc_event}
    last = {}
    missing_said = set()
    loop = asyncio.get_running_loop()
    emitter.logger.info("rasdaemon_db: polling %s every %ss", db_path, interval)
    while True:
        for table, convert in tables.items():
            try:
                if table not in last:
                    last[table] = 0 if from_start else await loop.run_in_executor(None, _ras_max_id, db_path, table)
                rows = await loop.run_in_executor(None, _ras_rows, db_path, table, last[table])
                missing_said.discard(table)
            except sqlite3.Error as exc:
                if table not in missing_said:
                    emitter.logger.warning("rasdaemon_db: %s: table %s not readable (%s); polling on", db_path,
                                           table, exc)
                    missing_said.add(table)
                if table not in last and not from_start:
                    pass
                continue
            for row in rows:
                last[table] = max(last[table], row.get("id") or 0)
                try:
                    fields = convert(row)
                except ValueError as exc:
                    emitter.logger.warning("rasdaemon_db: skipped a malformed row: %s", exc)
                    continue
                if fields is not None:
                    await emitter.put(fields, SOURCES_RASDAEMON)
        await asyncio.sleep(interval)


class LibvirtWatcher:
    """libvirt's memory-failure domain events through libvirt-python's default event loop."""

    _loop_started = False
    _loop_lock = threading.Lock()

    def __init__(self, emitter, uri, reconnect_interval, libvirt_module=None):
        self.emitter = emitter
        self.uri = uri
        self.reconnect_interval = reconnect_interval
        self.libvirt = libvirt_module
        self.conn = None
        self.callback_id = None
        self.closed = threading.Event()

    @classmethod
    def _start_event_loop(cls, libvirt):
        with cls._loop_lock:
            if cls._loop_started:
                return
            libvirt.virEventRegisterDefaultImpl()
            # libvirt prints every error on stderr by default; the source logs what matters.
            if hasattr(libvirt, "registerErrorHandler"):
                libvirt.registerErrorHandler(lambda _ctx, _err: None, None)

            def run():
                while True:
                    libvirt.virEventRunDefaultImpl()

            # A repeating timer wakes the loop so that it never blocks forever.
            libvirt.virEventAddTimeout(1000, lambda timer, opaque: None, None)
            threading.Thread(target=run, name="libvirt-event-loop", daemon=True).start()
            cls._loop_started = True

    def _connect(self, aio_loop):
        libvirt = self.libvirt
        conn = libvirt.openReadOnly(self.uri)
        if conn is None:
            raise RuntimeError("cannot connect to %s" % self.uri)
        try:
            conn.setKeepAlive(5, 3)
        except libvirt.libvirtError:
            pass
        host = None
        try:
            host = conn.getHostname().split(".")[0]
        except libvirt.libvirtError:
            pass
        self.closed.clear()
        conn.registerCloseCallback(lambda c, reason, opaque: self.closed.set(), None)
        event_id = getattr(libvirt, "VIR_DOMAIN_EVENT_ID_MEMORY_FAILURE", VIR_DOMAIN_EVENT_ID_MEMORY_FAILURE)

        def callback(_conn, dom, recipient, action, flags, _opaque):
            try:
                fields = libvirt_memory_failure(dom.name(), dom.UUIDString(), recipient, action, flags)
            except Exception as exc:  # never let a callback error stop the event loop
                self.emitter.logger.warning("libvirt: skipped an unreadable memory-failure event: %s", exc)
                return
            asyncio.run_coroutine_threadsafe(self.emitter.put(fields, SOURCES_LIBVIRT, host=host), aio_loop)

        self.callback_id = conn.domainEventRegisterAny(None, event_id, callback, None)
        self.conn = conn
        return host

    async def run(self):
        self._start_event_loop(self.libvirt)
        aio_loop = asyncio.get_running_loop()
        said = False
        while True:
            try:
                host = await aio_loop.run_in_executor(None, self._connect, aio_loop)
                self.emitter.logger.info("libvirt: receiving memory-failure events from %s (host %s)", self.uri, host)
                said = False
            except Exception as exc:  # libvirtError and friends: retry
                if not said:
                    self.emitter.logger.warning("libvirt: cannot connect to %s (%s); retrying every %ss", self.uri,
                                                str(exc).strip(), self.reconnect_interval)
                    said = True
                await asyncio.sleep(self.reconnect_interval)
                continue
            try:
                while not self.closed.is_set():
                    await asyncio.sleep(0.5)
                    alive = await aio_loop.run_in_executor(None, self._alive)
                    if not alive:
                        break
            finally:
                await aio_loop.run_in_executor(None, self._close)
            self.emitter.logger.warning("libvirt: connection to %s lost; reconnecting", self.uri)
            await asyncio.sleep(self.reconnect_interval)

    def _alive(self):
        try:
            return bool(self.conn.isAlive())
        except Exception:  # pylint: disable=broad-except
            return False

    def _close(self):
        conn, self.conn = self.conn, None
        if conn is None:
            return
        try:
            if self.callback_id is not None:
                conn.domainEventDeregisterAny(self.callback_id)
        except Exception:  # pylint: disable=broad-except
            pass
        try:
            conn.unregisterCloseCallback()
        except Exception:  # pylint: disable=broad-except
            pass
        try:
            conn.close()
        except Exception:  # pylint: disable=broad-except
            pass


async def main(queue, args):
    """ansible-rulebook entry point: run every configured source until cancelled."""
    options = validate_args(args)
    libvirt_module = None
    if options["libvirt_uri"]:
        try:
            import libvirt as libvirt_module  # pylint: disable=import-outside-toplevel
        except ImportError:
            raise SourceArgumentError("kvm_ras.poison_guard.memory_errors: libvirt_uri needs the libvirt Python "
                                      "bindings; install python3-libvirt (Debian) or libvirt-python, or drop "
                                      "libvirt_uri")
    emitter = Emitter(queue, options)
    tasks = []
    if options["kernel_log"]:
        tasks.append(follow_kernel_log(emitter, options["kernel_log"], options["kernel_log_from_start"],
                                       options["poll_interval"]))
    if options["libvirt_uri"]:
        tasks.append(LibvirtWatcher(emitter, options["libvirt_uri"], options["libvirt_reconnect_interval"],
                                    libvirt_module=libvirt_module).run())
    if options["rasdaemon_db"]:
        tasks.append(poll_rasdaemon(emitter, options["rasdaemon_db"], options["rasdaemon_from_start"],
                                    options["rasdaemon_interval"]))
    await asyncio.gather(*tasks)


if __name__ == "__main__":
    # Stand-alone: print the events of a kernel log file, e.g.
    #   python3 memory_errors.py kernel_log=/var/log/kern.log kernel_log_from_start=true
    import sys

    class _Printer:
        async def put(self, event):
            print(json.dumps(event), flush=True)

    logging.basicConfig(level=logging.INFO)
    asyncio.run(main(_Printer(), dict(a.split("=", 1) for a in sys.argv[1:])))
