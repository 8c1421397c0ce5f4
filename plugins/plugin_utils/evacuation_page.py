# -*- coding: utf-8 -*-
# Copyright (c) kvm_ras.poison_guard contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The evacuation report as a self-contained HTML page (controller side only).

Input: the report of kvm_ras.poison_guard.evacuation_report (``build_report`` in
plugins/plugin_utils/evacuation_report.py), as written to ``<source>-<UTC time>.json``. The page has
one row per VM (status, action, target, duration, poison status, evidence) and a timeline of
the moves as inline SVG. Everything is computed here (rows, chart geometry); the Jinja2
template (playbooks/templates/evacuation_report.html.j2) only lays it out.

Timeline: the report records each move's duration. When a VM entry also carries
``started_at`` (ISO 8601 UTC, as every time in the report), its bar starts there, relative to
the run's start; otherwise all bars start at 0 and the chart says that it shows durations only,
so a chart never places a move at a time that was not recorded.
"""

from __future__ import annotations

import datetime
import errno
import os

PAGE_SUFFIX = ".html"

# Final statuses of plugins/plugin_utils/evacuation_plan.py (ST_*), in the order the page lists them,
# with the colour and a sentence for people.
STATUS_INFO = {
    "down": ("#a4161a", "runs nowhere: start it again"),
    "duplicate": ("#a4161a", "runs on more than one host"),
    "unverified": ("#d97706", "could not be verified"),
    "stayed": ("#c2410c", "should have moved but is still on the source"),
    "left": ("#6b7280", "left on the source as asked (policy or leave list)"),
    "migrated": ("#2e7d32", "runs on a target"),
    "not_running": ("#9ca3af", "was not running: nothing to move"),
    "planned": ("#2563eb", "planned (check mode)"),
}
STATUS_ORDER = tuple(STATUS_INFO)
UNKNOWN_STATUS_COLOR = "#6b7280"
POISON_COLORS = {"poisoned": "#c62828", "unknown": "#d97706", "clean": "#2e7d32"}
NEEDS_ATTENTION = ("down", "duplicate", "unverified", "stayed")

# Chart geometry (pixels).
CHART_WIDTH = 1000
LABEL_WIDTH = 190
NOTE_WIDTH = 250
ROW_HEIGHT = 26
BAR_HEIGHT = 16
TOP = 10
AXIS_HEIGHT = 26


class PageInputError(ValueError):
    """The report cannot be drawn (not an evacuation report, or a file problem)."""


def parse_time(value):
    """An ISO 8601 time of the report (``2026-01-01T00:00:00Z``) as an aware datetime, or None."""
    if not isinstance(value, str) or not value:
        return None
    text = value.strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return moment


def _number(value):
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number >= 0 else None


def format_duration(seconds):
    """``None`` -> '-', 4.2 -> '4.2 s', 75 -> '1 min 15 s'."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return "%.1f s" % seconds
    minutes, rest = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return "%d min %02d s" % (minutes, rest)
    hours, minutes = divmod(minutes, 60)
    return "%d h %02d min" % (hours, minutes)


def _evidence(items):
    """Evidence entries as (source, detail); poison_info gives dicts, anything else is shown as text."""
    out = []
    for item in items or []:
        if isinstance(item, dict):
            out.append((str(item.get("source") or "evidence"), str(item.get("detail") or "")))
        else:
            out.append(("evidence", str(item)))
    return out


def rows(report):
    """One row per VM of the report, the ones that need attention first, then by status, name."""
    out = []
    for index, vm in enumerate(report.get("vms") or []):
        status = vm.get("status") or "unknown"
        color, meaning = STATUS_INFO.get(status, (UNKNOWN_STATUS_COLOR, status))
        poison = vm.get("poison_status") or "unknown"
        out.append({
            "index": index,
            "name": vm.get("name") or "?",
            "uuid": vm.get("uuid"),
            "status": status,
            "status_color": color,
            "status_meaning": meaning,
            "attention": status in NEEDS_ATTENTION or bool(vm.get("problems")),
            "action": vm.get("action") or "-",
            "target": vm.get("target"),
            "running_on": list(vm.get("running_on") or []),
            "defined_on": list(vm.get("defined_on") or []),
            "duration_s": _number(vm.get("duration_s")),
            "duration": format_duration(_number(vm.get("duration_s"))),
            "poison_status": poison,
            "poison_color": POISON_COLORS.get(poison, UNKNOWN_STATUS_COLOR),
            "failure_class": vm.get("failure_class"),
            "reason": vm.get("reason"),
            "steps": [str(s) for s in vm.get("steps") or []],
            "problems": [str(p) for p in vm.get("problems") or []],
            "notes": [str(n) for n in vm.get("notes") or []],
            "evidence": _evidence(vm.get("evidence")),
            "started_at": vm.get("started_at"),
        })

    def key(row):
        rank = STATUS_ORDER.index(row["status"]) if row["status"] in STATUS_ORDER else 0
        return (0 if row["attention"] else 1, rank, row["name"], row["index"])

    return sorted(out, key=key)


def _ticks(maximum):
    """Axis ticks (seconds) from 0 to at least ``maximum``, 4 to 10 of them, round steps."""
    maximum = max(float(maximum), 1.0)
    for step in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400):
        if maximum / step <= 8:
            break
    else:
        step = maximum / 8
    count = int(maximum // step) + (0 if maximum % step == 0 else 1)
    return [step * i for i in range(count + 1)]


def _tick_label(seconds):
    if seconds >= 3600 and seconds % 3600 == 0:
        return "%d h" % (seconds // 3600)
    if seconds >= 60 and seconds % 60 == 0:
        return "%d min" % (seconds // 60)
    return "%g s" % seconds


def timeline(report, page_rows=None):
    """Geometry of the timeline chart: one row per VM that was running when the run began.

    Returns {mode ('timeline' or 'durations'), width, height, rows, axis, ...}; each row has a
    bar (``x``, ``width``) when its move has a duration, else only a note (e.g. left on the
    source by policy).
    """
    page_rows = page_rows if page_rows is not None else rows(report)
    shown = [r for r in page_rows if r["status"] != "not_running"]
    shown.sort(key=lambda r: r["index"])  # the plan's order (VM name)
    run_start = parse_time((report.get("run") or {}).get("started_at"))
    starts = {}
    for row in shown:
        if row["duration_s"] is None:
            continue
        started = parse_time(row.get("started_at"))
        if started is not None and run_start is not None:
            starts[row["index"]] = max(0.0, (started - run_start).total_seconds())
    timed = [r for r in shown if r["duration_s"] is not None]
    mode = "timeline" if timed and len(starts) == len(timed) else "durations"
    end = 0.0
    for row in timed:
        end = max(end, (starts.get(row["index"], 0.0) if mode == "timeline" else 0.0) + row["duration_s"])
    axis_values = _ticks(end)
    scale_max = axis_values[-1] or 1.0
    plot_left = LABEL_WIDTH
    plot_width = CHART_WIDTH - LABEL_WIDTH - NOTE_WIDTH
    chart_rows = []
    for position, row in enumerate(shown):
        y = TOP + position * ROW_HEIGHT
        entry = {"name": row["name"], "status": row["status"], "color": row["status_color"],
                 "y": y, "text_y": y + BAR_HEIGHT - 4, "label": row["name"] if len(row["name"]) <= 26
                 else row["name"][:25] + "\u2026", "bar": None}
        if row["duration_s"] is not None:
            start = starts.get(row["index"], 0.0) if mode == "timeline" else 0.0
            x = plot_left + start / scale_max * plot_width
            width = max(2.0, row["duration_s"] / scale_max * plot_width)
            entry["bar"] = {"x": round(x, 1), "width": round(width, 1)}
            entry["note"] = "%s %s%s" % (row["duration"], row["action"],
                                         " \u2192 " + row["target"] if row["target"] else "")
            entry["note_x"] = round(x + width + 6, 1)
        else:
            entry["note"] = "%s, not moved (%s)" % (row["status"].replace("_", " "), row["action"])
            entry["note_x"] = plot_left + 4
        towards = " to " + row["target"] if row["target"] else ""
        entry["title"] = "%s: %s, %s%s, %s" % (row["name"], row["status"], row["action"], towards, row["duration"])
        chart_rows.append(entry)
    plot_bottom = TOP + max(1, len(shown)) * ROW_HEIGHT
    axis = [{"x": round(plot_left + v / scale_max * plot_width, 1), "label": _tick_label(v)} for v in axis_values]
    used = []
    for status in STATUS_ORDER:
        if any(r["status"] == status for r in shown):
            used.append({"status": status, "color": STATUS_INFO[status][0]})
    return {
        "mode": mode,
        "width": CHART_WIDTH,
        "height": plot_bottom + AXIS_HEIGHT,
        "plot_left": plot_left,
        "plot_top": TOP - 4,
        "plot_bottom": plot_bottom,
        "axis_y": plot_bottom + 16,
        "label_x": plot_left - 8,
        "bar_height": BAR_HEIGHT,
        "rows": chart_rows,
        "axis": axis,
        "legend": used,
        "moves_timed": len(timed),
        "total_s": end,
    }


def summary(report, page_rows=None):
    """Counts and the verdict of the run, for the page's header and tiles."""
    page_rows = page_rows if page_rows is not None else rows(report)
    counts = {}
    for row in page_rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    poisoned = [r for r in page_rows if r["poison_status"] == "poisoned"]
    run = report.get("run") or {}
    started, finished = parse_time(run.get("started_at")), parse_time(run.get("finished_at"))
    wall = (finished - started).total_seconds() if started and finished and finished >= started else None
    return {
        "vms_total": len(page_rows),
        "counts": counts,
        "moved": counts.get("migrated", 0),
        "attention": [r for r in page_rows if r["attention"]],
        "poisoned": poisoned,
        "left": [r["name"] for r in page_rows if r["status"] in ("left", "stayed")],
        "wall": format_duration(wall),
        "failed": bool(report.get("failed")),
        "msg": report.get("msg") or "",
    }


def check_report(report):
    """Refuse what is not an evacuation report, naming what is missing."""
    if not isinstance(report, dict):
        raise PageInputError("report must be the 'report' of kvm_ras.poison_guard.evacuation_report (a dict), "
                             "got %s" % type(report).__name__)
    missing = [k for k in ("source", "vms", "run") if k not in report]
    if missing:
        raise PageInputError("report lacks %s: pass the 'report' that kvm_ras.poison_guard.evacuation_report "
                             "returned (or the content of its JSON file)" % ", ".join(missing))
    if not isinstance(report["vms"], list):
        raise PageInputError("report.vms must be a list of VMs")


def render_html(report, template_text):
    """The page of ``report`` from a Jinja2 template, with autoescaping on (VM and host names,
    reasons and evidence are data). The template gets ``report``, ``rows``, ``chart``,
    ``summary`` and ``statuses``."""
    import jinja2  # pylint: disable=import-outside-toplevel

    check_report(report)
    page_rows = rows(report)
    environment = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined,
                                     trim_blocks=False, lstrip_blocks=False,
                                     keep_trailing_newline=True)
    template = environment.from_string(template_text)
    return template.render(report=report, rows=page_rows, chart=timeline(report, page_rows),
                           summary=summary(report, page_rows), statuses=STATUS_INFO)


def page_path(report, path=None):
    """Where the page goes: ``path`` when given, else next to the report's JSON file."""
    if path:
        return os.path.abspath(os.path.expanduser(path))
    json_path = (report.get("files") or {}).get("json") if isinstance(report.get("files"), dict) else None
    if not json_path:
        raise PageInputError("the report names no JSON file (report.files.json) to put the page next to: "
                             "give path")
    stem, _ext = os.path.splitext(json_path)
    return stem + PAGE_SUFFIX


def write_page(path, html):
    """Create ``path`` with ``html``; never follows a symlink and never overwrites a file."""
    directory = os.path.dirname(path) or "."
    if not os.path.isdir(directory):
        raise PageInputError("the directory %s of the page does not exist" % directory)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as exc:
        if exc.errno in (errno.EEXIST, errno.ELOOP):
            raise PageInputError("%s already exists: the page of a report is written once; remove it or give "
                                 "another path" % path) from exc
        raise
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(html)
    return path
