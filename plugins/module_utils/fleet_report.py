# -*- coding: utf-8 -*-
# Copyright (c) kvm_ras.poison_guard contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The fleet poison report: one part per hypervisor, merged into one report (pure Python).

A report lives in ``<report_dir>/<report_id>/``::

    parts/host-<quoted inventory name>.json   one per scanned host (written by each slice)
    fleet_report.json                         the merged report (schemas/fleet_report.schema.json)
    fleet_report.html                         the same, for people (self-contained page)

Parts are written as soon as a host's ``poison_info`` result is known, by whichever job (or
AWX slice) scanned it; the merge reads every part and needs nothing else, so slices never have
to share memory, only the report directory.

Every host the merge is told about appears in the report: scanned ones with their VMs, the
others as ``failed`` (``poison_info`` failed), ``unreachable`` or ``missing`` (no part: never
scanned under this report id). A host is ``clean`` only when its scan was complete and every
VM on it is ``clean``; anything not seen is never reported clean.

Order: hosts with poisoned VMs first (most poisoned VMs first), then hosts that could not be
vouched for (``unknown``, ``failed``, ``unreachable``, ``missing``), then ``clean`` hosts;
names in natural order (``hv2`` before ``hv10``) within each group.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import secrets
from urllib.parse import quote, unquote

from ansible_collections.kvm_ras.poison_guard.plugins.module_utils import host_markers
from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.messages import UPSTREAM_REFUSAL

SCHEMA_VERSION = 1
PART_FORMAT = 1
GENERATOR = "kvm_ras.poison_guard.fleet_report"

PARTS_DIR = "parts"
REPORT_JSON = "fleet_report.json"
REPORT_HTML = "fleet_report.html"
PART_PREFIX = "host-"
PART_SUFFIX = ".json"

VM_STATUSES = ("poisoned", "unknown", "clean")
# Host status, in report order (the rank is the index).
HOST_STATUSES = ("poisoned", "unknown", "failed", "unreachable", "missing", "clean")
# What happened when a slice ran poison_info on the host.
OUTCOMES = ("ok", "failed", "unreachable")
# Host statuses that mean "this host was not (fully) scanned".
NOT_SCANNED = ("failed", "unreachable", "missing")

_REPORT_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_DIGITS_RE = re.compile(r"(\d+)")

# The contract keys of a poison_info VM entry (team result contract), with their defaults for
# entries that lack them.
_VM_DEFAULTS = (
    ("uuid", None),
    ("pid", None),
    ("poisoned_pages", []),
    ("evidence", []),
    ("migration_guard", None),
    ("reasons", []),
    ("qemu_binary", None),
    ("memory_mib", None),
    ("vcpus", None),
)
# poison_info result keys a part keeps (the rest, e.g. ``invocation``, is not report material).
_RESULT_KEYS = ("vms", "host", "complete", "reasons", "discovery")


class ReportInputError(ValueError):
    """Bad report settings or a poison_info result that cannot be used."""


# -- names and paths -------------------------------------------------------------------------
def check_report_id(report_id):
    """``report_id`` if it is a safe directory name, else ReportInputError saying why."""
    if not isinstance(report_id, str) or not _REPORT_ID_RE.match(report_id):
        raise ReportInputError(
            "report_id %r is not usable as a directory name: use 1 to 128 letters, digits, "
            "'.', '_' or '-', starting with a letter or digit (for example 20250301-weekly, or "
            "leave it unset to get a new one)" % (report_id,))
    return report_id


def check_report_dir(report_dir):
    """``report_dir`` as an absolute path (relative ones are taken from the current directory)."""
    if not isinstance(report_dir, str) or not report_dir.strip():
        raise ReportInputError("report_dir is empty: give the directory the fleet reports are "
                               "written to (for example reports/poison)")
    if "\0" in report_dir:
        raise ReportInputError("report_dir contains a NUL byte: %r" % (report_dir,))
    return os.path.abspath(os.path.expanduser(report_dir))


def new_report_id(now=None, token=None):
    """A fresh report id: UTC time of day plus a random token, e.g. ``20250301T101112Z-3fa9c1``."""
    now = now or utc_now()
    token = token if token is not None else secrets.token_hex(3)
    return "%s-%s" % (now.strftime("%Y%m%dT%H%M%SZ"), token)


def utc_now():
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)


def timestamp(moment=None):
    """RFC 3339 UTC timestamp with a ``Z`` suffix."""
    return (moment or utc_now()).strftime("%Y-%m-%dT%H:%M:%SZ")


def report_paths(report_dir, report_id):
    """Paths of one report: ``root``, ``parts``, ``json`` and ``html``."""
    root = os.path.join(check_report_dir(report_dir), check_report_id(report_id))
    return {
        "root": root,
        "parts": os.path.join(root, PARTS_DIR),
        "json": os.path.join(root, REPORT_JSON),
        "html": os.path.join(root, REPORT_HTML),
    }


def part_filename(host):
    """File name of a host's part. Inventory names may hold anything (``/``, ``..``, ``:``),
    so every byte outside ``[A-Za-z0-9_.~-]`` is percent-encoded and a fixed prefix keeps names
    like ``..`` from meaning a directory."""
    if not isinstance(host, str) or not host:
        raise ReportInputError("a part needs the inventory name of its host, got %r" % (host,))
    return PART_PREFIX + quote(host, safe="") + PART_SUFFIX


def host_from_part_filename(filename):
    """Inverse of ``part_filename`` (None for files that are not parts)."""
    if not (filename.startswith(PART_PREFIX) and filename.endswith(PART_SUFFIX)):
        return None
    encoded = filename[len(PART_PREFIX):-len(PART_SUFFIX)]
    return unquote(encoded) if encoded else None


# -- files -----------------------------------------------------------------------------------
def ensure_directory(path):
    os.makedirs(path, mode=0o755, exist_ok=True)
    return path


def write_text_atomic(path, text):
    """Write ``text`` to ``path`` through a temporary file and a rename, so readers (the merge,
    a browser) never see half a file, even with several slices writing at once."""
    return host_markers.replace_file(path, text.encode("utf-8"), mode=0o644)


def dump_json(data):
    return json.dumps(data, indent=2, sort_keys=False, ensure_ascii=False) + "\n"


# -- parts -----------------------------------------------------------------------------------
def _text(value):
    if value is None:
        return None
    return value if isinstance(value, str) else str(value)


def normalize_vm(vm):
    """A poison_info VM entry with every contract key present. Keys beyond the contract (e.g.
    ``binary_guard``, ``qemu_version``) are kept as they are."""
    if not isinstance(vm, dict) or not isinstance(vm.get("name"), str) or not vm["name"]:
        raise ReportInputError("a VM entry without a name: %r" % (vm,))
    entry = dict(vm)
    for key, default in _VM_DEFAULTS:
        if entry.get(key) is None:
            entry[key] = list(default) if isinstance(default, list) else default
    status = entry.get("status")
    if status not in VM_STATUSES:
        # Fail closed: a status this report does not know is not a clean bill of health.
        entry["reasons"] = list(entry["reasons"]) + [
            "poison_info reported the status %r, which this report does not know" % (status,)]
        entry["status"] = "unknown"
    if entry["status"] == "unknown" and not entry["reasons"]:
        entry["reasons"] = ["poison_info gave no reason for the unknown status"]
    return entry


def build_part(host, task_result, report_id, written_at=None):
    """The part of one host from the registered result of its ``poison_info`` task.

    ``task_result`` is what Ansible registers: a poison_info result, or a failed
    (``failed: true``, ``msg``) or unreachable (``unreachable: true``, ``msg``) one. A result
    that is not usable (no ``vms`` list, malformed VM entries) becomes ``failed`` with the
    reason, never a clean host.
    """
    part = {
        "part_format": PART_FORMAT,
        "report_id": check_report_id(report_id),
        "host": host,
        "written_at": written_at or timestamp(),
        "outcome": "ok",
        "error": None,
        "result": None,
    }
    part_filename(host)  # validates the name
    if not isinstance(task_result, dict):
        part.update(outcome="failed", error="no poison_info result for this host (got %s)" % (
            type(task_result).__name__,))
        return part
    message = _text(task_result.get("msg")) or None
    if task_result.get("unreachable"):
        part.update(outcome="unreachable", error=message or "host unreachable")
        return part
    if task_result.get("failed"):
        part.update(outcome="failed", error=message or "poison_info failed without a message")
        return part
    if task_result.get("skipped"):
        part.update(outcome="failed", error="poison_info was skipped on this host%s" % (
            ": " + message if message else ""))
        return part
    vms = task_result.get("vms")
    if not isinstance(vms, list):
        part.update(outcome="failed", error="the poison_info result has no 'vms' list")
        return part
    try:
        normalized = [normalize_vm(vm) for vm in vms]
    except ReportInputError as exc:
        part.update(outcome="failed", error="unusable poison_info result: %s" % exc)
        return part
    result = {key: task_result[key] for key in _RESULT_KEYS if key in task_result}
    result["vms"] = normalized
    if not isinstance(result.get("host"), dict):
        result["host"] = {}
    part["result"] = result
    return part


def part_path(report_dir, report_id, host):
    """Path of a host's part file."""
    return os.path.join(report_paths(report_dir, report_id)["parts"], part_filename(host))


def write_part(report_dir, part):
    """Write ``part`` into its report's ``parts`` directory; returns the path."""
    path = part_path(report_dir, part["report_id"], part["host"])
    ensure_directory(os.path.dirname(path))
    return write_text_atomic(path, dump_json(part))


def read_parts(parts_dir):
    """``(parts by host, problems)`` from a parts directory (missing directory: no parts).

    A part that cannot be read or parsed is returned as a ``failed`` part of the host its file
    name says, so the host shows up with the problem instead of vanishing."""
    parts = {}
    problems = []
    try:
        names = sorted(os.listdir(parts_dir))
    except FileNotFoundError:
        return parts, problems
    except OSError as exc:
        raise ReportInputError("cannot list the report parts in %s: %s" % (
            parts_dir, exc.strerror or exc)) from exc
    for name in names:
        host = host_from_part_filename(name)
        if host is None:
            continue
        path = os.path.join(parts_dir, name)
        try:
            with open(path, "r", encoding="utf-8") as handle:
                part = json.load(handle)
            if not isinstance(part, dict) or part.get("outcome") not in OUTCOMES:
                raise ValueError("not a report part (no valid 'outcome')")
            if part.get("host") != host:
                raise ValueError("it names host %r" % (part.get("host"),))
        except (OSError, ValueError) as exc:
            problem = "part file %s is unusable: %s" % (path, exc)
            problems.append(problem)
            part = {"part_format": PART_FORMAT, "host": host, "written_at": None,
                    "outcome": "failed", "error": problem, "result": None}
        parts[host] = part
    return parts, problems


# -- merge -----------------------------------------------------------------------------------
def natural_key(name):
    """Sort key that orders embedded numbers by value: hv2 < hv10."""
    return [int(piece) if i % 2 else piece.lower()
            for i, piece in enumerate(_DIGITS_RE.split(name))]


def _vm_sort_key(vm):
    return (VM_STATUSES.index(vm["status"]), natural_key(vm["name"]), vm.get("pid") or 0)


def _counts(vms):
    counts = dict.fromkeys(VM_STATUSES, 0)
    for vm in vms:
        counts[vm["status"]] += 1
    return counts


def memory_failure_totals(memory_failure):
    """Per-node ``memory_failure`` counters summed over the nodes (None where there are none)."""
    if not isinstance(memory_failure, dict) or not memory_failure:
        return None
    totals = {}
    for counters in memory_failure.values():
        if not isinstance(counters, dict):
            continue
        for name, value in counters.items():
            if isinstance(value, int) and not isinstance(value, bool):
                totals[name] = totals.get(name, 0) + value
    return totals or None


def host_entry(name, part):
    """One host of the report from its part (None: no part, the host is ``missing``)."""
    entry = {
        "name": name,
        "status": "missing",
        "error": None,
        "scanned_at": None,
        "vm_counts": dict.fromkeys(VM_STATUSES, 0),
        "reasons": [],
        "host_facts": None,
        "vms": [],
    }
    if part is None:
        entry["error"] = "no part for this host under this report id: it was not scanned"
        return entry
    entry["scanned_at"] = part.get("written_at")
    outcome = part.get("outcome")
    if outcome != "ok":
        entry["status"] = outcome if outcome in ("failed", "unreachable") else "failed"
        entry["error"] = _text(part.get("error")) or "no message"
        return entry
    result = part.get("result") or {}
    vms = sorted((normalize_vm(vm) for vm in result.get("vms") or []), key=_vm_sort_key)
    host = dict(result.get("host") or {})
    host["memory_failure_totals"] = memory_failure_totals(host.get("memory_failure"))
    reasons = [_text(r) for r in result.get("reasons") or []]
    counts = _counts(vms)
    if counts["poisoned"]:
        status = "poisoned"
    elif counts["unknown"] or result.get("complete") is False or reasons:
        status = "unknown"
    else:
        status = "clean"
    entry.update(status=status, vm_counts=counts, reasons=reasons, host_facts=host, vms=vms)
    return entry


def host_sort_key(entry):
    return (HOST_STATUSES.index(entry["status"]), -entry["vm_counts"]["poisoned"],
            natural_key(entry["name"]))


def summarize(hosts):
    host_counts = dict.fromkeys(HOST_STATUSES, 0)
    vm_counts = dict.fromkeys(VM_STATUSES, 0)
    unguarded = 0
    corrupted = 0
    for entry in hosts:
        host_counts[entry["status"]] += 1
        for status in VM_STATUSES:
            vm_counts[status] += entry["vm_counts"][status]
        unguarded += sum(1 for vm in entry["vms"]
                         if vm["status"] == "poisoned" and vm.get("migration_guard") is not True)
        hc_kb = (entry["host_facts"] or {}).get("hardware_corrupted_kb")
        if isinstance(hc_kb, int) and not isinstance(hc_kb, bool) and hc_kb > 0:
            corrupted += 1
    not_scanned = sum(host_counts[s] for s in NOT_SCANNED)
    return {
        "hosts_total": len(hosts),
        "hosts": host_counts,
        "hosts_scanned": len(hosts) - not_scanned,
        "hosts_not_scanned": not_scanned,
        "hosts_with_hardware_corrupted": corrupted,
        "vms_total": sum(vm_counts.values()),
        "vms": vm_counts,
        "poisoned_vms_unguarded": unguarded,
        # Every host was scanned and every VM got a definite verdict.
        "complete": not_scanned == 0 and host_counts["unknown"] == 0,
    }


def merge(parts, expected_hosts=None, report_id=None, generated_at=None, hosts_pattern=None,
          problems=None):
    """The fleet report (``schemas/fleet_report.schema.json``).

    ``parts``: parts by host name (``read_parts``). ``expected_hosts``: every host the report
    must account for (hosts without a part are ``missing``); None takes the hosts that have
    parts. Parts of hosts outside ``expected_hosts`` are listed in ``ignored_parts``.
    """
    if expected_hosts is None:
        names = list(parts)
    else:
        names = []
        seen = set()
        for name in expected_hosts:
            if not isinstance(name, str) or not name:
                raise ReportInputError("expected host names must be non-empty strings, got %r" % (
                    name,))
            if name not in seen:
                seen.add(name)
                names.append(name)
    hosts = sorted((host_entry(name, parts.get(name)) for name in names), key=host_sort_key)
    known = set(names)
    poisoned = []
    for entry in hosts:
        for vm in entry["vms"]:
            if vm["status"] == "poisoned":
                poisoned.append({"host": entry["name"], "name": vm["name"], "uuid": vm["uuid"],
                                 "migration_guard": vm["migration_guard"],
                                 "poisoned_pages": len(vm["poisoned_pages"])})
    return {
        "schema_version": SCHEMA_VERSION,
        "generator": GENERATOR,
        "report_id": check_report_id(report_id) if report_id is not None else None,
        "generated_at": generated_at or timestamp(),
        "hosts_pattern": hosts_pattern,
        "refusal_message": UPSTREAM_REFUSAL,
        "summary": summarize(hosts),
        "poisoned_vms": poisoned,
        "hosts": hosts,
        "ignored_parts": sorted((name for name in parts if name not in known), key=natural_key),
        "problems": list(problems or []),
    }


def merge_directory(report_dir, report_id, expected_hosts=None, hosts_pattern=None,
                    generated_at=None):
    """Read the parts of ``report_id`` and merge them (nothing is written)."""
    paths = report_paths(report_dir, report_id)
    parts, problems = read_parts(paths["parts"])
    return merge(parts, expected_hosts, report_id, generated_at, hosts_pattern, problems)


# -- the page --------------------------------------------------------------------------------
CHART_COLORS = {"poisoned": "#c62828", "unknown": "#ef8f00", "clean": "#2e7d32",
                "not_scanned": "#9e9e9e"}
_CHART = {"row": 18, "bar": 12, "label": 190, "bars": 420, "count": 110, "top": 30, "bottom": 8,
          "label_chars": 26}


def _ticks(maximum):
    """Round axis ticks from 0 to at least ``maximum`` (at most ~6 of them)."""
    maximum = max(int(maximum), 1)
    step = 1
    for candidate in (1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000, 2000, 5000, 10000):
        step = candidate
        if maximum / candidate <= 5:
            break
    top = -(-maximum // step) * step
    return list(range(0, top + 1, step))


def chart(report):
    """Geometry of the SVG bar chart "VMs by status per host", one row per host in report order.

    Pixel values only; the template draws them. Hosts that were not scanned get a grey
    placeholder bar with their status as the label."""
    c = _CHART
    hosts = report["hosts"]
    largest = max([sum(h["vm_counts"].values()) for h in hosts] + [1])
    ticks = _ticks(largest)
    scale = float(c["bars"]) / ticks[-1]
    rows = []
    for index, entry in enumerate(hosts):
        y = c["top"] + index * c["row"]
        segments = []
        x = c["label"]
        if entry["status"] in NOT_SCANNED:
            segments.append({"status": "not_scanned", "x": x, "width": c["bars"],
                             "count": None, "color": CHART_COLORS["not_scanned"]})
            note = entry["status"]
        else:
            for status in VM_STATUSES:
                count = entry["vm_counts"][status]
                if not count:
                    continue
                width = round(count * scale, 2)
                segments.append({"status": status, "x": round(x, 2), "width": width,
                                 "count": count, "color": CHART_COLORS[status]})
                x += width
            total = sum(entry["vm_counts"].values())
            note = "%d VM%s" % (total, "" if total == 1 else "s")
            if entry["status"] == "unknown" and not entry["vm_counts"]["unknown"]:
                note += ", scan incomplete"
        name = entry["name"]
        label = name if len(name) <= c["label_chars"] else name[:c["label_chars"] - 1] + "\u2026"
        rows.append({"name": name, "label": label, "status": entry["status"], "y": y,
                     "text_y": y + c["bar"] - 2, "segments": segments, "note": note,
                     "note_x": c["label"] + c["bars"] + 8})
    return {
        "width": c["label"] + c["bars"] + c["count"],
        "height": c["top"] + len(hosts) * c["row"] + c["bottom"],
        "bar_height": c["bar"],
        "label_x": c["label"] - 8,
        "axis": [{"value": t, "x": round(c["label"] + t * scale, 2)} for t in ticks],
        "axis_y": c["top"] - 6,
        "plot_top": c["top"] - 2,
        "plot_bottom": c["top"] + len(hosts) * c["row"],
        "rows": rows,
        "legend": [{"status": s, "color": CHART_COLORS[s]}
                   for s in VM_STATUSES + ("not_scanned",)],
    }


def render_html(report, template_text):
    """The HTML page of ``report`` from a Jinja2 template, with autoescaping on (VM and host
    names come from the hypervisors and are never trusted as markup).

    The template gets ``report``, ``chart`` (``chart(report)``), ``summary`` and ``colors``.
    Jinja2 is imported here, not at module level: it is a controller-side dependency of
    ansible-core, and this file must import anywhere."""
    import jinja2  # pylint: disable=import-outside-toplevel

    environment = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined,
                                     trim_blocks=True, lstrip_blocks=True,
                                     keep_trailing_newline=True)
    environment.filters["tojson_compact"] = lambda value: json.dumps(value, sort_keys=True)
    template = environment.from_string(template_text)
    return template.render(report=report, chart=chart(report), summary=report["summary"],
                           colors=CHART_COLORS, statuses=VM_STATUSES)


def write_report(report_dir, report, template_text):
    """Write the merged report as JSON and HTML; returns ``(json_path, html_path)``."""
    paths = report_paths(report_dir, report["report_id"])
    ensure_directory(paths["root"])
    html = render_html(report, template_text)
    write_text_atomic(paths["json"], dump_json(report))
    write_text_atomic(paths["html"], html)
    return paths["json"], paths["html"]
