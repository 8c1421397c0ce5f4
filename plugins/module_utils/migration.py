# -*- coding: utf-8 -*-
# Copyright (c) kvm_ras.poison_guard contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Live migration through libvirt: flags, supervision, error classes, job statistics.

Pure Python with no Ansible imports; ``libvirt`` (Debian: python3-libvirt) is imported only by
the helpers that turn flag and parameter names into libvirt's values, so everything here can
be unit-tested without libvirt.

- ``build_plan(options)``: the live_migrate options -> libvirt flag names and typed parameters
  (raises ``MigrationInputError`` for combinations libvirt would reject).
- ``supervise(...)``: runs the blocking libvirt migrate call in a thread, polls job statistics,
  aborts the job when the deadline passes (or switches to post-copy when asked to).
- ``classify_error(message, ...)``: ``poisoned`` / ``timeout`` / ``destination`` / ``other``.
- ``shape_job_stats(stats)``: libvirt's job statistics -> stable, unit-named keys.
- ``where_running(source, destination, ...)``: ``source`` / ``destination`` / ``both`` / ``none``.
- ``poison_precheck(uuid, name, ...)``: the poison_info detection core for exactly one domain,
  right before its migration starts; with ``target_facts`` (``poison_holes=true``) a poisoned
  VM goes when the gate's ``holes_blockers`` rule finds nothing in the way.
- ``dest_xml_with_poison_holes(xml)`` / ``without_poison_holes_arg(xml)``: the destination XML
  that starts the incoming QEMU with ``-global migration.x-poison-holes=on``, and the
  persistent definition without it.
"""

from __future__ import annotations

import re
import threading
import time
import urllib.parse
import xml.etree.ElementTree as ET

from ansible_collections.kvm_ras.poison_guard.plugins.module_utils import gate
from ansible_collections.kvm_ras.poison_guard.plugins.module_utils import libvirt as libvirt_adapter
from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.messages import UPSTREAM_REFUSAL
from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.poison import inventory

POISONED = "poisoned"
TIMEOUT = "timeout"
DESTINATION = "destination"
OTHER = "other"
POISON_UNKNOWN = "poison_unknown"
ERROR_CLASSES = (POISONED, TIMEOUT, DESTINATION, OTHER)
POISON_CHECK_ON_UNKNOWN = ("fail", "allow")

COPY_STORAGE_FLAGS = {
    "none": None,
    "all": "VIR_MIGRATE_NON_SHARED_DISK",
    "inc": "VIR_MIGRATE_NON_SHARED_INC",
}

# Option name -> libvirt flag set when the option is true.
BOOLEAN_FLAGS = (
    ("live", "VIR_MIGRATE_LIVE"),
    ("peer2peer", "VIR_MIGRATE_PEER2PEER"),
    ("tunnelled", "VIR_MIGRATE_TUNNELLED"),
    ("persistent_dest", "VIR_MIGRATE_PERSIST_DEST"),
    ("undefine_source", "VIR_MIGRATE_UNDEFINE_SOURCE"),
    ("auto_converge", "VIR_MIGRATE_AUTO_CONVERGE"),
    ("postcopy", "VIR_MIGRATE_POSTCOPY"),
    ("unsafe", "VIR_MIGRATE_UNSAFE"),
)

# Stable values of libvirt's public API (include/libvirt/libvirt-domain.h), used when a
# libvirt module lacks the name (or for describing a plan without libvirt installed).
KNOWN_FLAG_VALUES = {
    "VIR_MIGRATE_LIVE": 1 << 0,
    "VIR_MIGRATE_PEER2PEER": 1 << 1,
    "VIR_MIGRATE_TUNNELLED": 1 << 2,
    "VIR_MIGRATE_PERSIST_DEST": 1 << 3,
    "VIR_MIGRATE_UNDEFINE_SOURCE": 1 << 4,
    "VIR_MIGRATE_NON_SHARED_DISK": 1 << 6,
    "VIR_MIGRATE_NON_SHARED_INC": 1 << 7,
    "VIR_MIGRATE_UNSAFE": 1 << 9,
    "VIR_MIGRATE_AUTO_CONVERGE": 1 << 13,
    "VIR_MIGRATE_POSTCOPY": 1 << 15,
}

# Typed migration parameters: our key -> (libvirt constant name, its string value).
PARAM_NAMES = {
    "bandwidth": ("VIR_MIGRATE_PARAM_BANDWIDTH", "bandwidth"),
    "dest_xml": ("VIR_MIGRATE_PARAM_DEST_XML", "destination_xml"),
    "persist_xml": ("VIR_MIGRATE_PARAM_PERSIST_XML", "persistent_xml"),
}

# The migration capability of the patched_qemu role's x-poison-holes series and the QEMU
# command-line property that sets it on a QEMU libvirt starts (docs/poison-holes.md).
POISON_HOLES_CAPABILITY = "x-poison-holes"
POISON_HOLES_GLOBAL = "migration.x-poison-holes=on"
QEMU_XML_NS = "http://libvirt.org/schemas/domain/qemu/1.0"

JOB_TYPES = {0: "none", 1: "bounded", 2: "unbounded", 3: "completed", 4: "failed", 5: "cancelled"}


class MigrationInputError(ValueError):
    """Options that cannot make a migration libvirt would accept."""


def build_plan(options):
    """Turn live_migrate options into ``{"flags": [names], "params": {key: value}, ...}``.

    ``options`` is a mapping with the module's option names. Raises MigrationInputError with
    the fix for combinations libvirt refuses (it would refuse them only after connecting).
    """
    opts = dict(options)
    if opts.get("tunnelled") and not opts.get("peer2peer"):
        raise MigrationInputError(
            "tunnelled=true needs peer2peer=true: libvirt tunnels the migration stream only "
            "through its own peer-to-peer connection"
        )
    if opts.get("postcopy") and not opts.get("live", True):
        raise MigrationInputError(
            "postcopy=true needs live=true: post-copy runs the VM on the destination while its "
            "memory is still being pulled from the source"
        )
    copy_storage = opts.get("copy_storage") or "none"
    if copy_storage not in COPY_STORAGE_FLAGS:
        raise MigrationInputError(
            "copy_storage must be one of %s, got %r" % (", ".join(COPY_STORAGE_FLAGS), copy_storage)
        )
    for key, minimum in (("bandwidth", 1), ("max_downtime", 1)):
        value = opts.get(key)
        if value is not None and value < minimum:
            raise MigrationInputError("%s must be at least %d, got %r (leave it unset for libvirt's default)"
                                      % (key, minimum, value))
    timeout = opts.get("timeout")
    if timeout is not None and timeout <= 0:
        raise MigrationInputError("timeout must be a positive number of seconds, got %r" % (timeout,))
    poll = opts.get("poll_interval")
    if poll is not None and poll <= 0:
        raise MigrationInputError("poll_interval must be a positive number of seconds, got %r" % (poll,))
    if poll is not None and timeout is not None and poll > timeout:
        raise MigrationInputError(
            "poll_interval (%s s) must not exceed timeout (%s s): the deadline is checked at each poll"
            % (poll, timeout)
        )
    if not opts.get("dest_uri"):
        raise MigrationInputError("dest_uri is empty: give the destination libvirt URI, e.g. qemu+tls://hv2/system")
    if "name" in opts and not (opts.get("name") or "").strip():
        raise MigrationInputError("name is empty: give the libvirt domain name of the VM to migrate")
    source_uri = opts.get("uri") or opts.get("source_uri") or libvirt_adapter.DEFAULT_URI
    if opts.get("poison_check", False) and not source_is_local(source_uri):
        raise MigrationInputError(
            "poison_check=true scans the VM's QEMU process on the host the module runs on, but "
            "uri %s names another host; run the task on the source hypervisor (delegate_to) "
            "with uri %s" % (source_uri, libvirt_adapter.DEFAULT_URI))
    on_unknown = opts.get("on_unknown", "fail")
    if on_unknown not in POISON_CHECK_ON_UNKNOWN:
        raise MigrationInputError("on_unknown must be one of %s, got %r" % (
            ", ".join(POISON_CHECK_ON_UNKNOWN), on_unknown))
    if opts.get("poison_holes"):
        if opts.get("postcopy"):
            raise MigrationInputError(
                "poison_holes=true cannot be combined with postcopy=true: QEMU's x-poison-holes "
                "refuses postcopy-ram (a hole must be installed before the guest runs on the "
                "destination); set postcopy=false")
        if opts.get("poison_check", False):
            if opts.get("target_facts") is None:
                raise MigrationInputError(
                    "poison_holes=true with poison_check=true needs target_facts "
                    "{poison_holes: <qemu_guard_info binary.poison_holes of the destination>, "
                    "uffd_poison: <poison_info host.uffd_poison of the destination>}: the check "
                    "right before the migration applies migration_gate's migrate_with_holes rule "
                    "to the destination")
            try:
                gate.check_target_facts(opts["target_facts"])
            except gate.GateInputError as exc:
                raise MigrationInputError(str(exc)) from exc

    flags = [flag for option, flag in BOOLEAN_FLAGS if opts.get(option)]
    if COPY_STORAGE_FLAGS[copy_storage]:
        flags.append(COPY_STORAGE_FLAGS[copy_storage])
    params = {}
    if opts.get("bandwidth") is not None:
        params["bandwidth"] = int(opts["bandwidth"])
    return {
        "flags": flags,
        "params": params,
        "peer2peer": bool(opts.get("peer2peer")),
        "max_downtime": opts.get("max_downtime"),
        "postcopy": bool(opts.get("postcopy")),
        "dest_uri": opts["dest_uri"],
        "poison_holes": bool(opts.get("poison_holes")),
    }


def source_is_local(uri):
    """True for a libvirt URI that reaches this host's own daemon (no host part:
    ``qemu:///system``, ``qemu+unix:///system``)."""
    parsed = urllib.parse.urlsplit(uri)
    return not parsed.hostname and parsed.scheme.split("+")[-1] in ("", "unix", "qemu")


def poison_precheck(uuid, name, source_uri, on_unknown="fail", collect=None, options=None,
                    target_facts=None):
    """Scan the one VM about to be migrated, right before the migration starts.

    Runs the poison_info detection core for exactly that domain (selected by ``uuid``, else by
    ``name``) and returns ``(go, report, message)``: ``go`` is True only when its verdict is
    ``clean`` (or ``unknown`` with ``on_unknown="allow"``); ``report`` holds status, pid,
    start_ticks, reasons, poisoned pages and evidence; ``message`` says why not, with the
    evidence. ``collect``/``options`` replace the detection core and its options (tests).

    ``target_facts`` (live_migrate's ``poison_holes=true``): a ``poisoned`` VM goes too when
    migration_gate's ``migrate_with_holes`` rule (``gate.holes_blockers``) finds nothing in the
    way for that target; ``report["with_holes"]`` then says so.
    """
    collect = collect or inventory.collect
    key = uuid or name
    opts = dict(options or {})
    opts.setdefault("libvirt_uri", source_uri)
    started = time.monotonic()
    try:
        result = collect(inventory.Options(vms=[key], **opts))
    except inventory.UnknownVMError as exc:
        report = {"status": "unknown", "reasons": [str(exc)], "pid": None}
        return False, report, (
            "the poison check right before the migration did not find VM %r (%s) on this host: %s"
            % (name, key, exc))
    seconds = round(time.monotonic() - started, 3)
    entries = [vm for vm in result.get("vms", []) if (uuid and str(vm.get("uuid") or "").lower() == uuid.lower())
               or (not uuid and vm.get("name") == name)]
    if len(entries) != 1:
        report = {"status": "unknown", "pid": None, "seconds": seconds,
                  "reasons": ["%d QEMU processes answer to %s" % (len(entries), key)]}
        return False, report, (
            "the poison check right before the migration found %d QEMU processes for VM %r (%s), "
            "so it cannot tell which one would be migrated; nothing was started" % (len(entries), name, key))
    entry = entries[0]
    report = {key_: entry.get(key_) for key_ in (
        "status", "pid", "start_ticks", "uuid", "reasons", "poisoned_pages", "evidence",
        "migration_guard", "qemu_version", "binary_poison_holes", "qemu_hwpoison",
        "holes_unknown_to_qemu")}
    report["seconds"] = seconds
    report["with_holes"] = False
    report["origin"] = result.get("origin")
    status = entry.get("status")
    if status == "clean":
        return True, report, None
    evidence = "; ".join(
        "%s: %s" % (item.get("source"), item.get("detail")) for item in (entry.get("evidence") or [])
        if item.get("source") not in ("host", "guard"))
    if status == "poisoned" and target_facts is not None:
        blockers = gate.holes_blockers(entry, target_facts)
        report["holes_blockers"] = blockers
        if not blockers:
            report["with_holes"] = True
            return True, report, None
        return False, report, (
            "VM %r (QEMU pid %s) was scanned right before the migration and is poisoned, and it "
            "cannot be migrated with its holes carried: %s. Nothing was started; the VM keeps "
            "running on the source" % (name, entry.get("pid"), "; ".join(blockers)))
    if status == "poisoned":
        pages = ", ".join("%s (%s)" % (p.get("hva"), p.get("source")) for p in entry.get("poisoned_pages") or [])
        return False, report, (
            "VM %r (QEMU pid %s) was scanned right before the migration and is poisoned: %s. "
            "Poisoned page(s): %s. Evidence: %s. Nothing was started; reboot the VM (a guest "
            "reset clears QEMU's poison list) or move it cold" % (
                name, entry.get("pid"), UPSTREAM_REFUSAL, pages or "none listed", evidence or "none"))
    if on_unknown == "allow":
        return True, report, None
    return False, report, (
        "VM %r (QEMU pid %s) was scanned right before the migration and its poison status is "
        "unknown: %s. Nothing was started; fix what the reasons name and retry, or set "
        "on_unknown=allow to migrate it anyway (a poisoned page would crash a QEMU older than 9.0)" % (
            name, entry.get("pid"), "; ".join(entry.get("reasons") or []) or "no reason given"))


def _qemu_commandline(root):
    return root.find("{%s}commandline" % QEMU_XML_NS)


def _poison_holes_args(commandline):
    """The ``-global migration.x-poison-holes=on`` pairs of a ``<qemu:commandline>``, as the
    list of their two ``<qemu:arg>`` elements."""
    args = commandline.findall("{%s}arg" % QEMU_XML_NS) if commandline is not None else []
    pairs = []
    for first, second in zip(args, args[1:]):
        if first.get("value") == "-global" and second.get("value") == POISON_HOLES_GLOBAL:
            pairs.append((first, second))
    return pairs


def dest_xml_with_poison_holes(xml_text):
    """The domain XML ``xml_text`` with ``<qemu:commandline>`` passing ``-global
    migration.x-poison-holes=on`` to the QEMU libvirt starts from it (added once; an existing
    ``<qemu:commandline>`` keeps its other arguments). libvirt keeps the qemu namespace of a
    migration's destination XML (its ABI check ignores it) and marks the domain tainted
    ``custom-argv``."""
    ET.register_namespace("qemu", QEMU_XML_NS)
    root = ET.fromstring(xml_text)
    commandline = _qemu_commandline(root)
    if commandline is None:
        commandline = ET.SubElement(root, "{%s}commandline" % QEMU_XML_NS)
    if not _poison_holes_args(commandline):
        ET.SubElement(commandline, "{%s}arg" % QEMU_XML_NS, {"value": "-global"})
        ET.SubElement(commandline, "{%s}arg" % QEMU_XML_NS, {"value": POISON_HOLES_GLOBAL})
    return ET.tostring(root, encoding="unicode")


def without_poison_holes_arg(xml_text):
    """The domain XML without the ``-global migration.x-poison-holes=on`` pair (and without an
    empty ``<qemu:commandline>`` left behind): the persistent definition on the destination, so
    the VM's next QEMU starts as any other."""
    ET.register_namespace("qemu", QEMU_XML_NS)
    root = ET.fromstring(xml_text)
    commandline = _qemu_commandline(root)
    for pair in _poison_holes_args(commandline):
        for element in pair:
            commandline.remove(element)
    if commandline is not None and len(commandline) == 0:
        root.remove(commandline)
    return ET.tostring(root, encoding="unicode")


def _libvirt(libvirt_module):
    if libvirt_module is not None:
        return libvirt_module
    return libvirt_adapter.require()


def resolve_flags(names, libvirt_module=None):
    """OR the named libvirt flags together (values from the libvirt module when present)."""
    lv = _libvirt(libvirt_module)
    value = 0
    for name in names:
        flag = getattr(lv, name, None)
        if flag is None:
            flag = KNOWN_FLAG_VALUES.get(name)
        if flag is None:
            raise MigrationInputError("this libvirt-python does not know the flag %s" % name)
        value |= flag
    return value


def resolve_params(params, libvirt_module=None):
    """Map our parameter keys to libvirt's typed-parameter names (VIR_MIGRATE_PARAM_*)."""
    lv = _libvirt(libvirt_module)
    out = {}
    for key, value in params.items():
        const, fallback = PARAM_NAMES[key]
        out[getattr(lv, const, fallback)] = value
    return out


# --- error classification ---------------------------------------------------------------

# A QEMU went away during the migration. The text does not say which one: libvirt 9.0 reports
# "internal error: qemu unexpectedly closed the monitor" both when the source QEMU dies and
# when the destination's incoming QEMU dies (recorded in the hypervisor lab). Whether the
# source VM still runs decides. Checked before the destination patterns, which would match
# "Unable to read from monitor: Connection reset by peer".
QEMU_DIED_PATTERNS = tuple(re.compile(p, re.IGNORECASE) for p in (
    r"unable to read from monitor",          # qemu_monitor.c
    r"qemu unexpectedly closed the monitor",  # qemu_process.c / qemu_monitor.c
    r"domain is no longer running",          # qemu_domain.c / qemu_migration.c
    r"domain is not running",                # virdomainobj.c, VIR_ERR_OPERATION_INVALID
))

# Destination unreachable, gone, or refusing. Each pattern copies a libvirt 9.0 message (see
# tests/unit/plugins/module_utils/test_migration.py for the full messages and their sources).
DESTINATION_PATTERNS = tuple(re.compile(p, re.IGNORECASE) for p in (
    r"unable to connect to server at",          # virnetsocket.c, TCP connect failed
    r"failed to connect to remote libvirt uri",  # qemu_migration.c, peer-to-peer connect failed
    r"unable to resolve address",               # virnetsocket.c, getaddrinfo failed
    r"cannot recv data",                        # virnetsocket.c, peer went away (ssh/tcp)
    r"cannot write data",                       # virnetsocket.c
    r"end of file while reading data",          # virnetsocket.c, remote closed the stream
    r"lost connection to destination host",     # qemu_migration.c, keepalive gone mid-migration
    r"client socket is closed",                 # virnetclient.c
    r"connection refused",
    r"connection reset by peer",
    r"no route to host",
    r"connection timed out",
    r"broken pipe",
    r"name or service not known",
    r"already exists with uuid",                # destination already holds another domain by that name
    r"is already active",                       # destination runs the domain already
    r"the cpu is incompatible with host cpu",   # destination cannot run the guest CPU
    r"storage pool not found",                  # copy_storage without a pool on the destination
    r"cannot access storage file",              # a disk path missing on the destination
    r"authentication failed",                   # destination refused our credentials
))


def classify_error(message, timed_out=False, phase="migrate", source_running=None):
    """Classify a failed migration. Returns ``(error_class, explanation)``.

    ``message`` is libvirt's error text; ``timed_out`` is true when our deadline passed and we
    asked libvirt to abort; ``phase`` is ``connect_destination`` when the destination could not
    even be opened, ``migrate`` otherwise; ``source_running`` says whether the VM still runs on
    the source after the failure (None: unknown).
    """
    text = message or ""
    if UPSTREAM_REFUSAL.lower() in text.lower():
        return POISONED, (
            "QEMU refused to migrate: the VM has hardware-poisoned guest memory (QEMU's own "
            "check). Nothing was transferred and the VM still runs on the source; reboot the VM "
            "(a guest reset clears QEMU's poison list) before migrating it."
        )
    if timed_out:
        return TIMEOUT, (
            "the migration did not finish within the timeout and its job was aborted; the VM "
            "keeps running on the source"
        )
    if phase == "connect_destination":
        return DESTINATION, "the destination libvirt could not be reached: %s" % text
    for pattern in QEMU_DIED_PATTERNS:
        if pattern.search(text):
            if source_running:
                return DESTINATION, (
                    "the destination QEMU stopped during the migration (the source VM still "
                    "runs): %s" % text
                )
            if source_running is False:
                return OTHER, (
                    "the source QEMU stopped during the migration (a QEMU older than 9.0 dies "
                    "with SIGBUS when migration reads a poisoned page): %s" % text
                )
            return OTHER, "a QEMU process stopped during the migration: %s" % text
    for pattern in DESTINATION_PATTERNS:
        if pattern.search(text):
            return DESTINATION, "the destination was unreachable or refused the VM: %s" % text
    return OTHER, text


# --- job statistics ---------------------------------------------------------------------

_STAT_KEYS = (
    # (our key, libvirt jobStats key)
    ("duration_ms", "time_elapsed"),
    ("downtime_ms", "downtime"),
    ("setup_time_ms", "setup_time"),
    ("remaining_ms", "time_remaining"),
    ("data_total_bytes", "data_total"),
    ("data_processed_bytes", "data_processed"),
    ("data_remaining_bytes", "data_remaining"),
    ("memory_total_bytes", "memory_total"),
    ("memory_processed_bytes", "memory_processed"),
    ("memory_remaining_bytes", "memory_remaining"),
    ("memory_bps", "memory_bps"),
    ("memory_dirty_rate_pages_per_s", "memory_dirty_rate"),
    ("memory_iterations", "memory_iteration"),
    ("disk_total_bytes", "disk_total"),
    ("disk_processed_bytes", "disk_processed"),
    ("disk_remaining_bytes", "disk_remaining"),
    ("auto_converge_throttle_percent", "auto_converge_throttle"),
    ("postcopy_requests", "memory_postcopy_requests"),
)


def shape_job_stats(stats):
    """libvirt ``virDomainGetJobStats`` dict -> our keys (absent values are None)."""
    if not stats:
        return None
    shaped = {ours: stats.get(theirs) for ours, theirs in _STAT_KEYS}
    shaped["job_type"] = JOB_TYPES.get(stats.get("type"), stats.get("type"))
    shaped["error"] = stats.get("errmsg")
    return shaped


def progress_sample(elapsed, stats):
    """One progress point for the result's ``progress`` list."""
    return {
        "elapsed_s": round(elapsed, 3),
        "data_processed_bytes": stats.get("data_processed"),
        "data_remaining_bytes": stats.get("data_remaining"),
        "memory_iterations": stats.get("memory_iteration"),
    }


# --- placement --------------------------------------------------------------------------

def where_running(source_active, destination_active, migration_started=True):
    """Where the VM runs: ``source``, ``destination``, ``both``, ``none`` or ``unknown``.

    ``None`` for a side means it could not be queried. Before any migration was started a
    VM active on the source cannot have reached the destination through us, so an unreachable
    destination still yields ``source``.
    """
    if source_active is None and destination_active is None:
        return "unknown"
    if destination_active is None:
        if source_active and not migration_started:
            return "source"
        return "unknown"
    if source_active is None:
        return "destination" if destination_active else "unknown"
    if source_active and destination_active:
        return "both"
    if source_active:
        return "source"
    if destination_active:
        return "destination"
    return "none"


CRITICAL_PLACEMENTS = ("both", "none")


# --- supervision ------------------------------------------------------------------------

def describe_abort(outcome):
    """How the abort request of a ``supervise()`` outcome went, in a few words."""
    if outcome["abort_pending"]:
        return "libvirt had not answered the abort request"
    if outcome["abort_error"]:
        return "libvirt refused the abort: %s" % outcome["abort_error"]
    if outcome["abort_seconds"] is None:
        return "no abort was requested"
    return "libvirt accepted the abort after %.1f s" % outcome["abort_seconds"]


def _start_abort(abort, outcome, clock):
    """Call ``abort()`` in a thread of its own, so the job keeps being watched while it runs.

    Records how long the call took (``abort_seconds``) and what it raised (``abort_error``).
    """
    def target():
        began = clock()
        try:
            abort()
        except Exception as exc:  # pylint: disable=broad-exception-caught  # libvirtError and friends
            outcome["abort_error"] = str(exc)
        outcome["abort_seconds"] = round(clock() - began, 3)

    aborter = threading.Thread(target=target, name="kvm-ras-abort-migration")
    aborter.daemon = True
    aborter.start()
    return aborter


def progress_record(elapsed, stats, phase="running"):
    """What a person watching the migration needs (written to the progress file each poll):
    libvirt's byte counters, the transfer rate, the pass over guest memory, and the phase."""
    record = {"elapsed_s": round(elapsed, 1), "phase": phase}
    for key in ("data_total", "data_processed", "data_remaining", "memory_total", "memory_processed",
                "memory_remaining", "memory_bps", "memory_iteration", "memory_dirty_rate"):
        if stats and stats.get(key) is not None:
            record[key] = stats[key]
    return record


def supervise(start, poll, abort, timeout, poll_interval, switch_to_postcopy=None,
              abort_grace=60.0, clock=time.monotonic, max_samples=20, on_progress=None):
    """Run ``start()`` (the blocking libvirt migrate call) in a thread and watch it.

    Every ``poll_interval`` seconds ``poll()`` returns libvirt job statistics (or None). When
    ``timeout`` seconds have passed: if ``switch_to_postcopy`` is given it is called once and a
    second ``timeout`` window is granted (post-copy cannot be aborted); otherwise ``abort()``
    asks libvirt to cancel the job (in a thread of its own, so polling goes on) and we wait up
    to ``abort_grace`` seconds for ``start()`` to return. ``on_progress(record)``, when given, is
    called after every poll with ``progress_record()`` (its errors never stop the watch). Returns a dict describing what
    happened (``error`` holds the exception ``start()`` raised, if any; ``abort_pending`` is
    true when the abort call itself had not returned at the end).
    """
    box = {}

    def target():
        try:
            box["value"] = start()
        except Exception as exc:  # pylint: disable=broad-exception-caught  # libvirtError and friends
            box["error"] = exc

    outcome = {
        "deadline_passed": False,
        "abort_requested": False,
        "abort_error": None,
        "abort_seconds": None,
        "abort_pending": False,
        "postcopy_started": False,
        "postcopy_error": None,
        "poll_errors": 0,
        "last_stats": None,
        "progress": [],
        "finished": False,
    }
    worker = threading.Thread(target=target, name="kvm-ras-live-migrate")
    worker.daemon = True
    begin = clock()
    deadline = begin + timeout
    abort_deadline = None
    aborter = None
    worker.start()
    while True:
        worker.join(poll_interval)
        if not worker.is_alive():
            break
        now = clock()
        try:
            stats = poll()
        except Exception:  # pylint: disable=broad-exception-caught  # job may end between checks
            stats = None
            outcome["poll_errors"] += 1
        if stats:
            outcome["last_stats"] = stats
            outcome["progress"].append(progress_sample(now - begin, stats))
            del outcome["progress"][:-max_samples]
        if on_progress is not None:
            phase = ("aborting" if outcome["abort_requested"] else
                     "post-copy" if outcome["postcopy_started"] else "running")
            try:
                on_progress(progress_record(now - begin, stats, phase))
            except Exception:  # pylint: disable=broad-exception-caught  # a progress file must never stop a migration
                pass
        if abort_deadline is not None:
            if now >= abort_deadline:
                break
            continue
        if now >= deadline:
            if switch_to_postcopy is not None and not outcome["postcopy_started"]:
                try:
                    switch_to_postcopy()
                    outcome["postcopy_started"] = True
                    deadline = now + timeout
                    continue
                except Exception as exc:  # pylint: disable=broad-exception-caught
                    outcome["postcopy_error"] = str(exc)
            if outcome["postcopy_started"]:
                # Post-copy cannot be cancelled without losing the VM: report, never abort.
                outcome["deadline_passed"] = True
                abort_deadline = now  # stop waiting at the next poll
                continue
            outcome["deadline_passed"] = True
            outcome["abort_requested"] = True
            aborter = _start_abort(abort, outcome, clock)
            abort_deadline = now + abort_grace
    outcome["finished"] = not worker.is_alive()
    if aborter is not None:
        aborter.join(1.0)
        outcome["abort_pending"] = aborter.is_alive()
    outcome["elapsed_s"] = clock() - begin
    outcome["error"] = box.get("error")
    outcome["value"] = box.get("value")
    return outcome
