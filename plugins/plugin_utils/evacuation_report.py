# -*- coding: utf-8 -*-
# Copyright (c) kvm_ras.poison_guard contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What an evacuation did: outcomes, verification, report and exit rule (controller only,
never shipped to a host; no Ansible imports).

- ``vm_outcome``: what really happened to one VM, from the registered task results.
- ``verify``: after the run, every VM of the source runs exactly once and its persistent
  definition is where it belongs; ``restore_candidates``: VMs that run nowhere.
- ``build_report`` / ``render_report`` / ``exit_decision``: the report (JSON + table) and the
  exit-status rule: fail when anything stayed behind that the operator did not ask to leave
  (``left_without_consent`` of evacuation_plan.py).
"""

from __future__ import annotations

from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.messages import UPSTREAM_REFUSAL
from ansible_collections.kvm_ras.poison_guard.plugins.plugin_utils.evacuation_plan import (
    ACTION_COLD, ACTION_LEAVE, ACTION_LIVE, ACTION_NONE, ACTION_REBOOT, FAILING_STATUSES, MOVING_ACTIONS,
    ST_DOWN, ST_DUPLICATE, ST_LEFT, ST_MIGRATED, ST_NOT_RUNNING, ST_STAYED, ST_UNVERIFIED, answered, is_active,
    left_without_consent, shown_name, table_lines)
from ansible_collections.kvm_ras.poison_guard.plugins.plugin_utils.evacuation_request import INPUT_NAMES


# --------------------------------------------------------------------------- outcomes --

def _failed(result):
    return isinstance(result, dict) and bool(result.get("failed") or result.get("unreachable"))


def _ran(result):
    return isinstance(result, dict) and result and not result.get("skipped")


def _message(result):
    if not isinstance(result, dict):
        return None
    failure = result.get("failure")
    if isinstance(failure, dict) and failure.get("message"):
        return failure["message"]
    return result.get("msg")


def _int(value):
    if isinstance(value, int):
        return value
    try:
        return int(str(value), 0)
    except (TypeError, ValueError):
        return None


def holes_on_target(name, carried, check):
    """Did the holes reach the target as holes? ``carried``: the target QEMU's poison list
    (live_migrate's holes_carried); ``check``: poison_info's result for the VM on the target.

    True when every carried page is a POISONED PTE marker in the target's pagemap at the same
    guest address (poison_info's ``pte_marker_poisoned``: the page is not a page of zeros) and
    every hole poison_info sees there is in the QEMU's list; False (with the reason) otherwise;
    None when the check did not run or could not answer.
    """
    if not _ran(check):
        return None, "not checked (the target's scan did not run)"
    if _failed(check):
        return None, "not checked: the target's scan failed (%s)" % (_message(check) or "no message")
    entry = next((e for e in check.get("vms") or [] if e.get("name") == name), None)
    if entry is None:
        return False, "the target's scan does not list the VM"
    # both sides name the page by its address in the target QEMU (x-query-hwpoison's hva maps the
    # carried guest address there; poison_info's poisoned_pages list the target's pagemap)
    markers = {_int(p.get("hva")) for p in entry.get("poisoned_pages") or []
               if p.get("source") == "pte_marker_poisoned"}
    wanted = [(_int(h.get("hva")), _int(h.get("gpa"))) for h in carried or [] if isinstance(h, dict)]
    if not wanted:
        return False, "the target QEMU lists no carried page"
    missing = [gpa for hva, gpa in wanted if hva is None or hva not in markers]
    if missing:
        return False, ("no POISONED PTE marker on the target at guest address %s: the page may have been filled "
                       "instead of poisoned" % ", ".join("%#x" % g if g is not None else "?" for g in missing))
    unknown = entry.get("holes_unknown_to_qemu")
    if unknown != []:
        return False, "the target QEMU does not list every hole its pagemap shows (%s)" % (unknown,)
    return True, "%d carried page(s) are POISONED PTE markers on the target, in its QEMU's list" % len(wanted)


def vm_outcome(vm, results):
    """What happened to one VM, from the results its tasks registered.

    ``vm``: its plan entry. ``results``: {reboot, recheck, gate, migrate, cold} registered
    task results (missing or skipped when the step did not run).
    Returns {name, action, target, result (moved/not_moved/not_started), failure_class,
    message, duration_s, started_at, steps: [..]}.
    """
    results = results or {}
    out = {"name": vm["name"], "action": vm["action"], "target": vm.get("target"), "result": "not_started",
           "failure_class": None, "message": None, "duration_s": None, "started_at": None, "steps": [],
           "recheck_status": None, "holes_carried": None, "holes_verified": None}
    entry = results.get("journal")
    if _ran(entry) and _failed(entry):
        out["steps"].append("journal entry on the source: failed")
        out.update(result="not_moved", failure_class="unreachable" if entry.get("unreachable") else "journal",
                   message="not moved: its journal entry could not be written on the source (%s)"
                   % (_message(entry) or "no answer"))
        return out
    reboot = results.get("reboot")
    if _ran(reboot):
        out["steps"].append("reboot (%s): %s" % (reboot.get("mode") or "?", "failed" if _failed(reboot) else "done"))
        if _failed(reboot):
            out.update(result="not_moved", failure_class="reboot", message=_message(reboot))
            return out
    recheck = results.get("recheck")
    if vm["action"] == ACTION_REBOOT and _ran(reboot):
        status = None
        if _ran(recheck) and not _failed(recheck):
            for entry in recheck.get("vms") or []:
                if entry.get("name") == vm["name"]:
                    status = entry.get("status")
        out["recheck_status"] = status or "unknown"
        out["steps"].append("re-check after reboot: %s" % out["recheck_status"])
        if status != "clean":
            gate = results.get("gate") or {}
            why = None
            for item in gate.get("blocked") or []:
                if item.get("name") == vm["name"]:
                    why = item.get("reason")
            if _failed(recheck):
                why = "the re-check failed: %s" % _message(recheck)
            out.update(result="not_moved", failure_class="still_poisoned" if status == "poisoned" else "recheck",
                       message="still %s after the reboot: %s" % (status or "unknown", why or UPSTREAM_REFUSAL))
            return out
    move = results.get("cold") if vm["action"] == ACTION_COLD else results.get("migrate")
    if not _ran(move):
        if vm["action"] in MOVING_ACTIONS:
            out["message"] = "the migration step did not run (the run stopped or this host failed earlier)"
        return out
    out["duration_s"] = move.get("duration_seconds")
    out["started_at"] = move.get("started_at")
    if out["duration_s"] is None and isinstance(move.get("job"), dict) and move["job"].get("duration_ms") is not None:
        out["duration_s"] = round(move["job"]["duration_ms"] / 1000.0, 3)
    out["running_on"] = move.get("running_on")
    if vm.get("with_holes") and isinstance(move.get("holes_carried"), list):
        # the target QEMU's own poison list after a migration with x-poison-holes (live_migrate)
        out["holes_carried"] = move["holes_carried"]
    if vm.get("with_holes") and not _failed(move):
        out["holes_verified"], why = holes_on_target(vm["name"], out["holes_carried"], results.get("holes_check"))
        out["steps"].append("holes on the target: %s" % why)
    out["steps"].append("%s: %s" % ("cold migration" if vm["action"] == ACTION_COLD else "live migration",
                                    "failed" if _failed(move) else "done"))
    if _failed(move):
        failure = move.get("failure") if isinstance(move.get("failure"), dict) else {}
        klass = failure.get("class") or ("unreachable" if move.get("unreachable") else "other")
        out.update(result="not_moved", failure_class=klass, message=_message(move))
        return out
    out["result"] = "moved"
    return out


# --------------------------------------------------------------------------- verification --

def _where(name, uuid, states):
    """Where a VM runs and is defined, from post-run host_capacity_info results.

    Returns (running, defined, unknown, undefined_unknown): hosts where it runs; hosts where
    it is persistently defined; hosts that could not be asked at all; hosts whose libvirt did
    not answer but whose QEMU processes were listed (running is known there, definitions not).
    """
    running, defined, unknown, no_definitions = [], [], [], []
    for host, facts in states.items():
        if not isinstance(facts, dict) or facts.get("skipped"):
            unknown.append(host)
            continue
        if not answered(facts):
            processes = facts.get("qemu_processes")
            if facts.get("unreachable") or not isinstance(processes, list):
                unknown.append(host)
                continue
            no_definitions.append(host)
            if any(p.get("name") == name or (uuid and p.get("uuid") == uuid) for p in processes):
                running.append(host)
            continue
        for dom in facts.get("domains") or []:
            if dom.get("name") == name or (uuid and dom.get("uuid") == uuid):
                if is_active(dom):
                    running.append(host)
                if dom.get("persistent"):
                    defined.append(host)
    return running, defined, unknown, no_definitions


def verify(plan, outcomes, states):
    """Check every VM of the source after the run. Returns one record per VM.

    ``states``: host -> host_capacity_info result taken after the run, for the source and every
    target (a failed result that lists ``qemu_processes`` still tells where QEMU runs).
    Each record: name, status (FINAL_STATUSES), running_on, defined_on, problems (each one
    fails the run) and notes.
    """
    source = plan["source"]
    records = []
    by_name = {o["name"]: o for o in outcomes or []}
    for vm in plan["vms"]:
        running, defined, unknown, no_defs = _where(vm["name"], vm.get("uuid"), states)
        problems, notes = [], []
        for host in no_defs:
            notes.append("libvirt on %s did not answer; its QEMU processes were listed instead" % host)
        if vm["action"] == ACTION_NONE:
            status = ST_NOT_RUNNING
            if len(running) > 1:
                status = ST_DUPLICATE
                problems.append("runs on %d hosts at once: %s" % (len(running), ", ".join(running)))
            elif running:
                notes.append("was not running when the evacuation began; now runs on %s" % running[0])
        elif len(running) > 1:
            status = ST_DUPLICATE
            problems.append("runs on %d hosts at once: %s" % (len(running), ", ".join(running)))
        elif running == [source]:
            status = ST_LEFT if vm["action"] == ACTION_LEAVE and not vm.get("no_room") else ST_STAYED
            if vm["persistent"] and source not in defined and source not in no_defs:
                problems.append("its persistent definition is missing on the source")
            if unknown:
                notes.append("could not ask %s" % ", ".join(unknown))
        elif len(running) == 1 and source in unknown:
            status = ST_UNVERIFIED
            problems.append("runs on %s, but the source %s could not be asked, so it is not verified that the "
                            "source no longer runs or defines it" % (running[0], source))
        elif len(running) == 1:
            host = running[0]
            status = ST_MIGRATED
            if vm.get("target") and host != vm["target"]:
                notes.append("runs on %s, planned for %s" % (host, vm["target"]))
            if source in defined:
                problems.append("still defined on the source %s: it could be started twice" % source)
            elif vm["persistent"] and source in no_defs:
                problems.append("libvirt on the source %s did not answer, so it is not verified that the source "
                                "no longer defines it" % source)
            if vm["persistent"] and host in no_defs:
                problems.append("its definition on %s could not be checked (libvirt not answering)" % host)
            elif vm["persistent"] and host not in defined:
                problems.append("not persistent on %s although it was persistent on the source" % host)
            if unknown:
                notes.append("could not ask %s" % ", ".join(unknown))
        elif unknown:
            status = ST_UNVERIFIED
            problems.append("not running on any host that answered; could not ask %s" % ", ".join(unknown))
        else:
            status = ST_DOWN
            problems.append("runs nowhere: it was running on %s when the evacuation began" % source)
        records.append({
            "name": vm["name"],
            "status": status,
            "running_on": running,
            "defined_on": defined,
            "unverified_hosts": unknown,
            "problems": problems,
            "notes": notes,
            "outcome": by_name.get(vm["name"]) or {},
        })
    return records


def restore_candidates(plan, states):
    """VMs that ran on the source at the start and now run nowhere although a reachable host
    still defines them: start them again (source first). Returns [{name, host}]."""
    todo = []
    for vm in plan["vms"]:
        if vm["action"] == ACTION_NONE:
            continue
        running, defined, unknown, no_defs = _where(vm["name"], vm.get("uuid"), states)
        if running or unknown or no_defs:
            continue
        host = plan["source"] if plan["source"] in defined else (defined[0] if defined else None)
        if host:
            todo.append({"name": vm["name"], "host": host})
    return todo


# --------------------------------------------------------------------------- report --

def resumed_items(resumed):
    """The journal entries an interrupted run left, as this run finished them (evacuation_journal's
    ``resumed``), trimmed to what the report shows."""
    keys = ("name", "uuid", "operation", "run_id", "target", "started_at", "found", "action", "ok", "message")
    return [{k: item.get(k) for k in keys} for item in resumed or [] if isinstance(item, dict)]


def build_report(request, plan, outcomes, records, run, restored=None, resumed=None):
    """The evacuation report: one dict, JSON-serialisable.

    ``run``: {run_id, started_at, finished_at, controller, check_mode}. ``resumed``: what this
    run finished of the operations an interrupted run had in flight (evacuation_journal).
    """
    by_name = {o["name"]: o for o in outcomes or []}
    plan_by_name = {vm["name"]: vm for vm in plan["vms"]}
    vms = []
    for record in records:
        vm = plan_by_name[record["name"]]
        outcome = by_name.get(record["name"]) or {}
        reason = vm.get("reason")
        if outcome.get("message"):
            reason = outcome["message"]
        if record["status"] == ST_MIGRATED and not record["problems"]:
            reason = None if vm["action"] == ACTION_LIVE else vm.get("reason")
        if record["problems"]:
            reason = "; ".join([r for r in [reason] if r] + record["problems"])
        vms.append({
            "name": record["name"],
            "uuid": vm.get("uuid"),
            "status": record["status"],
            "poison_status": vm["status"],
            "action": vm.get("planned_action") or vm["action"],
            "target": vm.get("target"),
            "running_on": record["running_on"],
            "defined_on": record["defined_on"],
            "duration_s": outcome.get("duration_s"),
            "started_at": outcome.get("started_at"),
            "failure_class": outcome.get("failure_class"),
            "reason": reason,
            "steps": outcome.get("steps") or [],
            "with_holes": bool(vm.get("with_holes")),
            "holes_carried": outcome.get("holes_carried"),
            "holes_verified": outcome.get("holes_verified"),
            "problems": record["problems"],
            "notes": record["notes"],
            "evidence": vm.get("evidence") or [],
        })
    counts = {}
    for item in vms:
        counts[item["status"]] = counts.get(item["status"], 0) + 1
    unconsented = left_without_consent(request, vms)
    decision = exit_decision(vms, unconsented, source=plan["source"])
    return {
        "source": plan["source"],
        "targets": [{k: t.get(k) for k in ("name", "usable", "reason", "assigned")} for t in plan["targets"]],
        "run": dict(run),
        "inputs": {k: request.get(k) for k in INPUT_NAMES},
        "vms": vms,
        "counts": counts,
        "restored": list(restored or []),
        "resumed": resumed_items(resumed),
        "left_on_source": [v["name"] for v in vms if v["status"] in (ST_LEFT, ST_STAYED)],
        "left_without_consent": [item["name"] for item in unconsented],
        "source_empty": not any(plan["source"] in v["running_on"] for v in vms),
        "failed": decision["failed"],
        "msg": decision["msg"],
    }


def exit_decision(vms, unconsented=(), source=None):
    """The exit-status rule. The run fails when a VM runs nowhere or twice, or could not be
    verified, or stays on the source without the operator's consent (``unconsented``: what
    left_without_consent returns). VMs left by a policy the operator gave, or by
    evacuate_leave_vms, and VMs that were not running, do not fail the run. The message names
    each VM and the way forward.
    """
    unconsented = list(unconsented or [])
    named = set(item["name"] for item in unconsented)
    failing = [v for v in vms if v["status"] in FAILING_STATUSES or v.get("problems")]
    failing += [v for v in vms if v["name"] in named and v not in failing]
    left = [v for v in vms if v["status"] == ST_LEFT and v["name"] not in named]
    moved = [v for v in vms if v["status"] == ST_MIGRATED]
    if failing:
        text = "evacuation incomplete: %d VM(s) need attention: %s" % (
            len(failing), "; ".join("%s %s (%s)" % (shown_name(v["name"]), v["status"], v.get("reason") or "no reason")
                                    for v in failing))
        if unconsented:
            text += ". Left on the source without being asked to stay: %s. Then run again: ansible-playbook " \
                    "kvm_ras.poison_guard.evacuate_host -e evacuate_source=%s plus the input chosen for each VM" % (
                        "; ".join("%s (%s): %s" % (shown_name(item["name"]), item["why"], item["fix"])
                                  for item in unconsented), source or "<source>")
        return {"failed": True, "msg": text}
    text = "evacuation done: %d VM(s) moved" % len(moved)
    if left:
        text += ", %d left on the source as asked: %s" % (len(left), ", ".join(shown_name(v["name"]) for v in left))
    else:
        text += ", the source runs no VM"
    return {"failed": False, "msg": text}


def render_report(report):
    """The human-readable report: header, the VM table, the verdict."""
    run = report["run"]
    lines = ["Evacuation report: %s" % report["source"],
             "run %s, %s -> %s, controller %s" % (
                 run.get("run_id"), run.get("started_at"), run.get("finished_at"), run.get("controller")),
             ""]
    rows = []
    for vm in report["vms"]:
        duration = "-" if vm["duration_s"] is None else "%.1f s" % float(vm["duration_s"])
        rows.append([shown_name(vm["name"]), vm["status"], vm["action"], vm["target"] or "-",
                     ",".join(vm["running_on"]) or "-", duration, vm["reason"] or ""])
    if rows:
        lines += table_lines(["VM", "STATUS", "ACTION", "TARGET", "RUNS ON", "DURATION", "REASON"], rows)
    else:
        lines.append("%s had no VMs: nothing to do." % report["source"])
    carried = [vm for vm in report["vms"] if vm.get("holes_carried")]
    if carried:
        lines.append("")
        lines.append("poisoned pages carried as holes (x-poison-holes), as the target's QEMU lists them:")
        for vm in carried:
            lines.append("  %s on %s: %s" % (shown_name(vm["name"]), ",".join(vm["running_on"]) or "-", ", ".join(
                "%s+%#x (gpa %s)" % (hole.get("block"), hole.get("offset") or 0,
                                     "%#x" % hole["gpa"] if isinstance(hole.get("gpa"), int) else "-")
                for hole in vm["holes_carried"])))
            verified = vm.get("holes_verified")
            if verified:
                seen = "POISONED PTE markers at those addresses, in its QEMU's list"
            elif verified is False:
                seen = "NOT verified, see the VM's steps"
            else:
                seen = "not checked"
            lines.append("    on the target: %s" % seen)
    if report.get("resumed"):
        lines.append("")
        lines.append("resumed from an interrupted run (its journal on the source):")
        for item in report["resumed"]:
            found = item.get("found") or "?"
            lines.append("  %s (%s by run %s, target %s): found %s, %s%s" % (
                shown_name(item["name"] or "?"), item.get("operation") or "?", item.get("run_id") or "?",
                item.get("target") or "-", found if found in ("nowhere", "?") else "on " + found,
                item.get("action") or "?",
                "" if item.get("ok") else " (NOT finished)") + (" - %s" % item["message"] if item.get("message") else ""))
    if report.get("restored"):
        lines.append("")
        lines.append("restarted after the run (they ran nowhere): %s" % ", ".join(
            "%s on %s" % (shown_name(r["name"]), r["host"]) for r in report["restored"]))
    lines.append("")
    lines.append(("FAILED: " if report["failed"] else "OK: ") + report["msg"])
    return lines


def report_basename(source, started_compact):
    """File name (without extension) of a report: <source>-<UTC timestamp>."""
    return "%s-%s" % (source, started_compact)
