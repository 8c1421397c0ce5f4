# -*- coding: utf-8 -*-
# Copyright (c) kvm_ras.poison_guard contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Decision table of the ``migration_gate`` action plugin (pure Python, no Ansible imports).

Input: a ``poison_info`` result (the shared result contract: ``vms`` with ``name``, ``uuid``,
``status``, ``evidence``, ``migration_guard``, ``reasons``), the VMs asked about, the operation
and the two policies. Output: which VMs may go ahead, which are blocked and why, which run an
unguarded QEMU, and whether the task fails.

The rule, one place for all of it (``decide``):

===========  =======================  ==========================================
status       policy                   outcome
===========  =======================  ==========================================
clean        any                      allowed
poisoned     on_poisoned=fail         blocked, task fails, reason UPSTREAM_REFUSAL
poisoned     on_poisoned=skip         blocked, task goes on, reason UPSTREAM_REFUSAL
unknown      on_unknown=fail          blocked, task fails
unknown      on_unknown=skip          blocked, task goes on
unknown      on_unknown=allow         allowed, with a warning
missing      on_unknown=skip          blocked, task goes on
missing      on_unknown=fail|allow    blocked, task fails (nothing was inspected)
ambiguous    on_unknown=skip          blocked, task goes on
ambiguous    on_unknown=fail|allow    blocked, task fails (name answers to >1 VM)
===========  =======================  ==========================================

``check_origin`` refuses, before any decision, a result of another host or boot or older than
``max_result_age`` (see its docstring).

The operation never changes the outcome: every operation that reads all guest RAM is
guarded the same way. ``OPERATION_NOTES`` says per operation why (upstream QEMU guards only
the ``migrate`` path), and every decision carries that note.
"""

from __future__ import annotations

from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.messages import UPSTREAM_REFUSAL

STATUSES = ("poisoned", "clean", "unknown")
OPERATIONS = ("live_migration", "save", "memory_snapshot", "dump")
ON_POISONED = ("fail", "skip")
ON_UNKNOWN = ("fail", "skip", "allow")

ALLOW = "allow"
BLOCK = "block"

OPERATION_NOTES = {
    "live_migration": (
        "live migration sends all guest RAM through QMP 'migrate'; QEMU 9.0+ refuses it while "
        "its own poison list is non-empty, older QEMU (Debian 12 ships 7.2) reads the poisoned "
        "page and dies with SIGBUS, and QEMU's list can miss pages the kernel poisoned, so the "
        "gate blocks poisoned VMs whatever the running QEMU"
    ),
    "save": (
        "save and managedsave write all guest RAM through QMP 'migrate' to a file: QEMU 9.0+ "
        "refuses like a live migration, older QEMU dies with SIGBUS; blocked like a live migration"
    ),
    "memory_snapshot": (
        "internal snapshots with memory (savevm) do not pass QEMU's migration check in any "
        "release and die with SIGBUS on a poisoned page; external memory snapshots use 'migrate' "
        "(guarded on QEMU 9.0+ only); blocked in every case"
    ),
    "dump": (
        "dump-guest-memory reads all guest RAM and no QEMU release guards it: a poisoned page "
        "kills QEMU with SIGBUS; blocked in every case"
    ),
}

MISSING_REASON = (
    "not in the poison_info result: its poison status was never inspected (not running on this "
    "host, misspelt, or poison_info was run for other VMs)"
)


AMBIGUOUS_REASON = (
    "%d VMs in the poison_info result answer to %r (%s): the gate cannot tell which one an "
    "operation by that name would reach, so none of them goes ahead; stop or rename the stray "
    "QEMU process so the name is unique again"
)

DEFAULT_MAX_RESULT_AGE = 300


class GateInputError(ValueError):
    """The gate was given input it cannot decide on (bad poison_info result or option)."""


def _check_choice(label, value, choices):
    if value not in choices:
        raise GateInputError(
            "%s must be one of %s, got %r" % (label, ", ".join(choices), value)
        )


def decide(status, operation, on_poisoned="fail", on_unknown="fail", missing=False,
           ambiguous=None):
    """Decide for one VM.

    ``status`` is the VM's poison status from poison_info; any value other than ``poisoned``
    or ``clean`` is treated as ``unknown`` (fail closed). ``missing`` marks a VM that was
    asked for but is not in the poison_info result at all; ``ambiguous`` (a reason) marks a
    VM whose name (or the name asked for) belongs to more than one VM of the result. Both are
    always blocked; the task fails unless ``on_unknown=skip``.

    Returns a dict: ``decision`` (``allow``/``block``), ``fails`` (the task must fail),
    ``status`` (normalised), ``reason``, ``warning`` (text or None), ``operation_note``.
    """
    _check_choice("operation", operation, OPERATIONS)
    _check_choice("on_poisoned", on_poisoned, ON_POISONED)
    _check_choice("on_unknown", on_unknown, ON_UNKNOWN)
    note = OPERATION_NOTES[operation]
    if missing or ambiguous:
        return {
            "decision": BLOCK,
            "fails": on_unknown != "skip",
            "status": "unknown",
            "reason": ambiguous or MISSING_REASON,
            "warning": None,
            "operation_note": note,
        }
    if status == "clean":
        return {
            "decision": ALLOW,
            "fails": False,
            "status": "clean",
            "reason": "no poisoned guest memory found",
            "warning": None,
            "operation_note": note,
        }
    if status == "poisoned":
        return {
            "decision": BLOCK,
            "fails": on_poisoned == "fail",
            "status": "poisoned",
            "reason": UPSTREAM_REFUSAL,
            "warning": None,
            "operation_note": note,
        }
    reason = "poison status unknown: its guest memory could not be fully inspected"
    if status not in STATUSES:
        reason = "poison status %r is not one of %s: treated as unknown" % (status, ", ".join(STATUSES))
    if on_unknown == "allow":
        return {
            "decision": ALLOW,
            "fails": False,
            "status": "unknown",
            "reason": reason,
            "warning": "allowed by on_unknown=allow although %s" % reason,
            "operation_note": note,
        }
    return {
        "decision": BLOCK,
        "fails": on_unknown == "fail",
        "status": "unknown",
        "reason": reason,
        "warning": None,
        "operation_note": note,
    }


def validate_poison_result(poison_result):
    """Check the shape of a poison_info result; return its list of VM entries.

    Raises GateInputError naming what is wrong and how to get a usable result.
    """
    fix = "pass the registered result of kvm_ras.poison_guard.poison_info, or leave poison_info unset"
    if not isinstance(poison_result, dict):
        raise GateInputError(
            "poison_info must be a poison_info result (a dict), got %s; %s"
            % (type(poison_result).__name__, fix)
        )
    if poison_result.get("failed"):
        raise GateInputError(
            "poison_info is the result of a failed poison_info run (%s); fix that run first: "
            "the gate does not decide on a failed inspection"
            % (poison_result.get("msg") or "no message")
        )
    if poison_result.get("skipped"):
        raise GateInputError("poison_info is the result of a skipped task; %s" % fix)
    entries = poison_result.get("vms")
    if not isinstance(entries, list):
        raise GateInputError("poison_info has no 'vms' list; %s" % fix)
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry["name"]:
            raise GateInputError(
                "poison_info vms[%d] has no 'name'; %s" % (index, fix)
            )
    return entries


def _find_entries(entries, wanted):
    """Every entry answering to ``wanted``: its name, or its UUID (case-insensitive)."""
    key = str(wanted).lower()
    return [entry for entry in entries if entry.get("name") == wanted or (
        entry.get("uuid") and str(entry["uuid"]).lower() == key)]


def _identity(entry):
    parts = []
    for key in ("pid", "uuid"):
        if entry.get(key) not in (None, ""):
            parts.append("%s %s" % (key, entry[key]))
    return ", ".join(parts) or "no pid or uuid"


def _ambiguity(entries, wanted, hits):
    """The reason a request is ambiguous, or None: it matches several entries, or its one entry
    shares its name with another entry (operations address VMs by name)."""
    if len(hits) == 1:
        same_name = [e for e in entries if e.get("name") == hits[0].get("name")]
        if len(same_name) == 1:
            return None
        hits = same_name
        wanted = hits[0]["name"]
    return AMBIGUOUS_REASON % (len(hits), wanted, "; ".join(_identity(e) for e in hits))


def check_origin(poison_result, boot_id, uptime, max_age=DEFAULT_MAX_RESULT_AGE, hostname=None):
    """Refuse a poison_info result that is not this host's, not of this boot, or too old.

    ``boot_id`` and ``uptime`` (seconds, ``/proc/uptime``) are read on the host the gate decides
    for, right now. The boot id is a random UUID drawn at every boot, so an equal boot id means
    the same host and the same boot; the age is measured on the host's own uptime clock, so a
    clock difference between controller and host does not matter. ``max_age`` 0 disables only
    the age check. Returns the age in seconds; raises GateInputError naming the problem and fix.
    """
    if not isinstance(max_age, (int, float)) or isinstance(max_age, bool) or max_age < 0:
        raise GateInputError("max_result_age must be a number of seconds >= 0 (0: no age limit), "
                             "got %r" % (max_age,))
    rerun = ("run kvm_ras.poison_guard.poison_info on this host right before the gate (or leave "
             "poison_info unset so the gate runs it)")
    origin = poison_result.get("origin")
    if not isinstance(origin, dict) or not origin.get("boot_id"):
        raise GateInputError(
            "the poison_info result does not say which host and boot it was taken on (no "
            "origin.boot_id; a result from an older collection version, or built by hand); "
            "the gate does not decide on it: %s" % rerun)
    if not boot_id:
        raise GateInputError(
            "the boot id of this host could not be read (/proc/sys/kernel/random/boot_id), so "
            "the gate cannot tell whether the poison_info result is this host's; check that the "
            "task reaches the hypervisor itself")
    where = origin.get("hostname") or "an unnamed host"
    if str(origin["boot_id"]).strip().lower() != str(boot_id).strip().lower():
        if hostname and origin.get("hostname") and origin["hostname"] != hostname:
            raise GateInputError(
                "the poison_info result was taken on another host (%s, boot %s), not on %s "
                "(boot %s): %s" % (where, origin["boot_id"], hostname, boot_id, rerun))
        raise GateInputError(
            "the poison_info result was taken on %s during another boot (boot id %s; this host "
            "now runs boot %s): it is another host, or this host rebooted since and every "
            "verdict in it is void; %s" % (where, origin["boot_id"], boot_id, rerun))
    scanned = origin.get("uptime_seconds")
    if not isinstance(scanned, (int, float)) or isinstance(scanned, bool) or uptime is None:
        if max_age:
            raise GateInputError(
                "the age of the poison_info result cannot be told (origin.uptime_seconds or this "
                "host's /proc/uptime missing); %s, or set max_result_age: 0 to accept results of "
                "any age" % rerun)
        return None
    age = round(float(uptime) - float(scanned), 3)
    if max_age and age > max_age:
        raise GateInputError(
            "the poison_info result is %.0f s old (taken %s on %s), older than max_result_age "
            "%s s: a page may have been poisoned since; %s, or raise max_result_age (0 accepts "
            "any age)" % (age, origin.get("scanned_at_iso") or "?", where, max_age, rerun))
    if age < -5:
        raise GateInputError(
            "the poison_info result claims to be taken %.0f s in the future of this boot's "
            "uptime: it was not taken on this host; %s" % (-age, rerun))
    return age


def _evidence_of(entry, status):
    evidence = [dict(item) for item in entry.get("evidence") or [] if isinstance(item, dict)]
    if status == "unknown":
        for reason in entry.get("reasons") or []:
            evidence.append({"source": "poison_info", "detail": str(reason)})
    return evidence


def evaluate(poison_result, vms=None, operation="live_migration", on_poisoned="fail", on_unknown="fail"):
    """Decide for every VM asked about (``vms``: names or UUIDs; default: every VM in the result,
    each on its own).

    Identity is exact: a name or UUID that answers to more than one VM, or a VM sharing its
    name with another, is blocked with a reason that says so; a VM asked for but absent from
    the result is blocked, never allowed.

    Returns a dict with ``allowed`` (names), ``blocked`` (list of {name, status, reason,
    evidence}), ``unguarded`` (names whose running QEMU lacks the guard: migration_guard false
    or null), ``decisions`` (one per VM), ``warnings``, ``failed`` and ``msg``.
    """
    _check_choice("operation", operation, OPERATIONS)
    _check_choice("on_poisoned", on_poisoned, ON_POISONED)
    _check_choice("on_unknown", on_unknown, ON_UNKNOWN)
    entries = validate_poison_result(poison_result)
    if vms is None:
        # every VM of the result, one by one: identity is the entry itself, never its name
        requests = [(entry["name"], [entry]) for entry in entries]
    else:
        if isinstance(vms, str) or not isinstance(vms, (list, tuple)):
            raise GateInputError("vms must be a list of VM names or UUIDs, got %r" % (vms,))
        wanted = []
        for item in vms:
            if not isinstance(item, str) or not item:
                raise GateInputError("vms must hold non-empty VM names or UUIDs, got %r" % (item,))
            if item not in wanted:
                wanted.append(item)
        requests = [(item, _find_entries(entries, item)) for item in wanted]

    allowed, blocked, unguarded, decisions, warnings = [], [], [], [], []
    for item, hits in requests:
        entry = hits[0] if len(hits) == 1 else None
        ambiguous = _ambiguity(entries, item, hits) if hits else None
        if not hits:
            outcome = decide(None, operation, on_poisoned, on_unknown, missing=True)
            name, guard, evidence = item, None, []
        elif ambiguous:
            outcome = decide(None, operation, on_poisoned, on_unknown, ambiguous=ambiguous)
            if on_poisoned == "fail" and any(e.get("status") == "poisoned" for e in hits):
                outcome["fails"] = True  # one of them is poisoned: on_poisoned=fail still holds
            name = entry["name"] if entry is not None else item
            guard = entry.get("migration_guard") if entry is not None else None
            evidence = [{"source": "migration_gate", "detail": "%s: %s (%s)" % (
                e["name"], e.get("status"), _identity(e))} for e in hits]
        else:
            outcome = decide(entry.get("status"), operation, on_poisoned, on_unknown)
            name, guard = entry["name"], entry.get("migration_guard")
            evidence = _evidence_of(entry, outcome["status"])
            if guard is not True:
                unguarded.append(name)
        warning = outcome["warning"]
        if warning and guard is not True:
            warning += (
                "; its running QEMU does not refuse poisoned migration (migration_guard %s), so a "
                "poisoned page would crash it" % ("false" if guard is False else "unknown")
            )
        decision = {
            "name": name,
            "uuid": entry.get("uuid") if entry is not None else None,
            "pid": entry.get("pid") if entry is not None else None,
            "start_ticks": entry.get("start_ticks") if entry is not None else None,
            "status": outcome["status"],
            "operation": operation,
            "decision": outcome["decision"],
            "fails": outcome["fails"],
            "reason": outcome["reason"],
            "operation_note": outcome["operation_note"],
            "migration_guard": guard,
            "in_poison_info": bool(hits),
        }
        decisions.append(decision)
        if outcome["decision"] == ALLOW:
            allowed.append(name)
        else:
            blocked.append({"name": name, "status": outcome["status"], "reason": outcome["reason"],
                            "evidence": evidence})
        if warning:
            warnings.append("%s: %s" % (name, warning))

    failing = [d for d in decisions if d["fails"]]
    result = {
        "allowed": allowed,
        "blocked": blocked,
        "unguarded": unguarded,
        "decisions": decisions,
        "warnings": warnings,
        "failed": bool(failing),
        "operation": operation,
    }
    result["msg"] = _message(result, operation, failing)
    return result


def _describe(block):
    return "'%s' (%s): %s" % (block["name"], block["status"], block["reason"])


def _message(result, operation, failing):
    blocked = result["blocked"]
    if failing:
        return "%s blocked for %d VM(s): %s" % (
            operation, len(blocked), "; ".join(_describe(b) for b in blocked))
    text = "%s allowed for %d VM(s)" % (operation, len(result["allowed"]))
    if blocked:
        text += ", skipped %d blocked VM(s): %s" % (len(blocked), "; ".join(_describe(b) for b in blocked))
    return text
