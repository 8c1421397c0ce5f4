# -*- coding: utf-8 -*-
# Copyright (c) kvm_ras.poison_guard contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Parsers for the QEMU (libvirt per-domain) log and the kernel log.

QEMU log (``/var/log/libvirt/qemu/<name>.log``, QEMU's stderr through virtlogd): libvirt
writes ``<ts>: starting up libvirt version: ..., qemu version: X.Y.Z..., kernel: ...`` before
each QEMU start and ``<ts>: shutting down, reason=...`` after it ends; between them is one QEMU
lifetime. QEMU (x86, 4.2+) logs each poisoned guest page it recorded::

    <ts> qemu-system-x86_64: warning: Guest MCE Memory Error at QEMU addr 0x7fafe2145000 and
    GUEST addr 0x2345000 of type BUS_MCEERR_AO injected

Kernel log (``/dev/kmsg`` records or ``dmesg`` text): ``Memory failure: 0x<pfn>: Sending SIGBUS
to <comm>:<tid> ...`` (5.3+; ``Killing`` before), ``MCE: Killing <comm>:<tid> due to hardware
memory corruption fault at <addr>`` and ``... forcibly killing <comm>:<tid> ...``.
"""

from __future__ import annotations

import calendar
import errno
import gzip
import os
import re
import time
import zlib

MCE_LINE_RE = re.compile(
    r"Guest (?:MCE )?Memory Error at QEMU addr (?P<hva>0x[0-9a-fA-F]+|\(nil\)) and GUEST addr "
    r"(?P<gpa>0x[0-9a-fA-F]+) of type (?P<type>BUS_MCEERR_A[OR]) injected")
QEMU_ITSELF_RE = re.compile(
    r"Hardware memory error at addr (?P<hva>0x[0-9a-fA-F]+) (?:of type (?P<type>\w+) )?for "
    r"memory used by QEMU itself")
STARTING_RE = re.compile(
    r"^(?P<ts>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?(?:[+-]\d{4})?): starting up "
    r"(?P<rest>.*)$")
QEMU_VERSION_RE = re.compile(r"qemu version: (?P<version>\d+\.\d+(?:\.\d+)?)(?P<package>[^,]*)")
SHUTDOWN_RE = re.compile(
    r"^(?P<ts>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?(?:[+-]\d{4})?): shutting down"
    r"(?:, reason=(?P<reason>\S+))?")

KMSG_RECORD_RE = re.compile(r"^(?P<prio>\d+),(?P<seq>\d+),(?P<usec>\d+),[^;]*;(?P<msg>.*)$")
DMESG_LINE_RE = re.compile(r"^\[\s*(?P<sec>\d+\.\d+)\]\s?(?P<msg>.*)$")
KERNEL_PATTERNS = (
    ("sigbus", re.compile(
        r"(?:Memory failure|MCE): (?P<pfn>0x[0-9a-fA-F]+): (?:Sending SIGBUS to|Killing) "
        r"(?P<comm>.+?):(?P<tid>\d+) due to hardware memory corruption")),
    ("forcibly_killed", re.compile(
        r"Memory failure: (?P<pfn>0x[0-9a-fA-F]+): forcibly killing (?P<comm>.+?):(?P<tid>\d+) "
        r"because of failure to unmap corrupted page")),
    ("consumed", re.compile(
        r"MCE: Killing (?P<comm>.+?):(?P<tid>\d+) due to hardware memory corruption fault at "
        r"(?P<addr>[0-9a-fA-F]+)")),
    ("signal_failed", re.compile(
        r"Memory failure: (?P<pfn>0x[0-9a-fA-F]+): Cannot send advisory machine check signal "
        r"to (?P<comm>.+?):(?P<tid>\d+)")),
)
RECOVERY_RE = re.compile(
    r"Memory failure: (?P<pfn>0x[0-9a-fA-F]+): recovery action for (?P<type>.+?): "
    r"(?P<result>\w+)")

MAX_LOG_BYTES = 16 << 20


def parse_libvirt_timestamp(text):
    """``2024-01-30 10:11:12.123+0000`` -> epoch seconds (float) or None."""
    match = re.match(r"^(\d{4})-(\d\d)-(\d\d) (\d\d):(\d\d):(\d\d)(\.\d+)?([+-])?(\d\d)?(\d\d)?$",
                     text)
    if not match:
        return None
    year, month, day, hour, minute, second = (int(match.group(i)) for i in range(1, 7))
    epoch = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
    if match.group(7):
        epoch += float(match.group(7))
    if match.group(8):
        offset = int(match.group(9)) * 3600 + int(match.group(10) or 0) * 60
        epoch -= offset if match.group(8) == "+" else -offset
    return epoch


class Lifetime:
    """Lines of one QEMU start (from a ``starting up`` header to ``shutting down``)."""

    def __init__(self, started=None, header=None):
        self.started = started
        self.header = header
        self.qemu_version = None
        self.qemu_package = None
        self.ended = None
        self.end_reason = None
        self.lines = []

    def mce_events(self):
        events = []
        for line in self.lines:
            match = MCE_LINE_RE.search(line)
            if match:
                hva = match.group("hva")
                events.append({"hva": None if hva == "(nil)" else int(hva, 16),
                               "gpa": int(match.group("gpa"), 16), "type": match.group("type"),
                               "line": line.strip()})
        return events

    def qemu_itself_events(self):
        return [line.strip() for line in self.lines if QEMU_ITSELF_RE.search(line)]


def parse_qemu_log(text):
    """Split a libvirt per-domain log into lifetimes. Text before the first header (or a log
    without headers, e.g. QEMU's stderr redirected to a file) forms a header-less lifetime."""
    lifetimes = []
    current = Lifetime()
    for line in text.splitlines():
        start = STARTING_RE.match(line)
        if start:
            if current.lines or current.header:
                lifetimes.append(current)
            current = Lifetime(parse_libvirt_timestamp(start.group("ts")), line)
            version = QEMU_VERSION_RE.search(start.group("rest"))
            if version:
                current.qemu_version = version.group("version")
                current.qemu_package = version.group("package").strip() or None
            continue
        end = SHUTDOWN_RE.match(line)
        if end and current.header:
            current.ended = parse_libvirt_timestamp(end.group("ts"))
            current.end_reason = end.group("reason")
            lifetimes.append(current)
            current = Lifetime()
            continue
        current.lines.append(line)
    if current.lines or current.header:
        lifetimes.append(current)
    return lifetimes


def read_log_tail(path, limit=MAX_LOG_BYTES):
    """Text of a log (at most its last ``limit`` bytes)."""
    with open(path, "rb") as handle:
        handle.seek(0, os.SEEK_END)
        size = handle.tell()
        handle.seek(max(0, size - limit))
        data = handle.read()
    return data.decode("utf-8", "replace")


_ROTATED_RE_TEMPLATE = r"^%s\.log(?:\.(?P<index>\d+))?(?P<gz>\.gz)?$"


def rotated_logs(log_dir, name):
    """Every file of a domain's log, newest first: ``<name>.log``, then ``<name>.log.0``,
    ``.log.1``, ... (virtlogd: ``max_backups``, newest is ``.0``; logrotate: newest is ``.1``,
    older ones compressed ``.log.N.gz``). Raises OSError when ``log_dir`` cannot be listed."""
    pattern = re.compile(_ROTATED_RE_TEMPLATE % re.escape(name))
    found = []
    for entry in os.listdir(log_dir):
        match = pattern.match(entry)
        if match:
            index = -1 if match.group("index") is None else int(match.group("index"))
            found.append((index, bool(match.group("gz")), entry))
    found.sort()
    return [os.path.join(log_dir, entry) for _index, _gz, entry in found]


def read_log_file(path, limit=MAX_LOG_BYTES):
    """Text of one log file (its last ``limit`` bytes); ``.gz`` files are decompressed."""
    if not path.endswith(".gz"):
        return read_log_tail(path, limit)
    with gzip.open(path, "rb") as handle:
        data = b""
        while True:
            block = handle.read(1 << 20)
            if not block:
                break
            data = (data + block)[-limit:]
    return data.decode("utf-8", "replace")


def domain_log_text(log_dir, name):
    """The domain's log from the start of the current QEMU lifetime: ``<name>.log`` and as many
    rotated files (``.log.0``, ``.log.1``, ..., ``.log.N.gz``) as it takes to reach the last
    ``starting up`` header, joined oldest first.

    Returns ``(text, [paths read], [problems])``; text is None when no log could be read.
    """
    paths = []
    problems = []
    parts = []
    try:
        candidates = rotated_logs(log_dir, name)
    except FileNotFoundError:
        return None, paths, problems
    except OSError as exc:
        return None, paths, ["%s: %s" % (log_dir, exc.strerror or exc)]
    for path in candidates:
        try:
            text = read_log_file(path)
        except FileNotFoundError:
            continue  # rotated away while listing
        except (OSError, EOFError, zlib.error) as exc:
            problems.append("%s: %s" % (path, getattr(exc, "strerror", None) or exc))
            continue
        parts.insert(0, text)
        paths.insert(0, path)
        if any(STARTING_RE.match(line) for line in text.splitlines()):
            break  # the current lifetime starts in this file: older files hold older lifetimes
    return ("\n".join(parts) if parts else None), paths, problems


def current_lifetime(lifetimes, process_start_epoch, tolerance=(600.0, 30.0)):
    """The lifetime of the running QEMU process, or ``(None, why)``.

    The last lifetime counts if it has not ended and (when both are known) its header was
    written between ``tolerance[0]`` seconds before and ``tolerance[1]`` seconds after the
    process started. A header-less log (QEMU's stderr file) is one lifetime.
    """
    if not lifetimes:
        return None, "the log holds no QEMU output"
    last = lifetimes[-1]
    if last.header is None:
        return last, None
    if last.ended is not None:
        return None, "the last QEMU lifetime in the log ended (%s)" % (last.end_reason or "?")
    if last.started is not None and process_start_epoch is not None:
        delta = process_start_epoch - last.started
        if delta > tolerance[0] or delta < -tolerance[1]:
            return None, ("the last 'starting up' header (%s) does not match the process start "
                          "time" % last.header.split(": starting up")[0])
    return last, None


# ----------------------------------------------------------------------------- kernel log
def parse_kernel_log(text):
    """Kernel log lines about memory failures.

    Returns a list of dicts: ``kind``, ``pfn`` (int or None), ``comm``, ``tid``, ``addr``,
    ``seconds`` (since boot, or None) and ``line``. ``recovery`` records carry ``type`` and
    ``result`` instead of comm/tid.
    """
    events = []
    for raw in text.splitlines():
        seconds = None
        msg = raw
        match = KMSG_RECORD_RE.match(raw)
        if match:
            seconds = int(match.group("usec")) / 1e6
            msg = match.group("msg")
        else:
            match = DMESG_LINE_RE.match(raw)
            if match:
                seconds = float(match.group("sec"))
                msg = match.group("msg")
        for kind, pattern in KERNEL_PATTERNS:
            found = pattern.search(msg)
            if found:
                groups = found.groupdict()
                events.append({"kind": kind,
                               "pfn": int(groups["pfn"], 16) if groups.get("pfn") else None,
                               "comm": groups.get("comm"), "tid": int(groups["tid"]),
                               "addr": int(groups["addr"], 16) if groups.get("addr") else None,
                               "seconds": seconds, "line": msg.strip()})
                break
        else:
            found = RECOVERY_RE.search(msg)
            if found:
                events.append({"kind": "recovery", "pfn": int(found.group("pfn"), 16),
                               "type": found.group("type"), "result": found.group("result"),
                               "seconds": seconds, "line": msg.strip()})
    return events


def read_kmsg(path="/dev/kmsg", max_records=200000, deadline=2.0):
    """All records currently in the kernel ring buffer, read non-destructively from
    ``/dev/kmsg`` (raises OSError, e.g. EPERM with ``kernel.dmesg_restrict=1``)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    records = []
    stop = time.monotonic() + deadline
    try:
        while len(records) < max_records and time.monotonic() < stop:
            try:
                data = os.read(fd, 8192)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.EPIPE:  # records overwritten while reading: go on
                    continue
                if exc.errno == errno.EAGAIN:
                    break
                raise
            if not data:
                break
            records.append(data.decode("utf-8", "replace").split("\n", 1)[0])
    finally:
        os.close(fd)
    return "\n".join(records)


def read_kernel_log(source):
    """Text of the kernel log from ``source``: a ``/dev/kmsg``-like character device or a
    text file (``dmesg`` / ``/dev/kmsg`` dump)."""
    try:
        is_char = os.path.exists(source) and not os.path.isfile(source)
    except OSError:
        is_char = False
    if is_char:
        return read_kmsg(source)
    return read_log_tail(source)
