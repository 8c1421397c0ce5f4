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
===========  =======================  ==========================================

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


class GateInputError(ValueError):
    """The gate was given input it cannot decide on (bad poison_info result or option)."""


def _check_choice(label, value, choices):
    if value not in choices:
        raise GateInputError(
            "%s must be one of %s, got %r" % (label, ", ".join(choices), value)
        )


def decide(status, operation, on_poisoned="fail", on_unknown="fail", missing=False):
    """Decide for one VM.

    ``status`` is the VM's poison status from poison_info; any value other than ``poisoned``
    or ``clean`` is treated as ``unknown`` (fail closed). ``missing`` marks a VM that was
    asked for but is not in the poison_info result at all.

    Returns a dict: ``decision`` (``allow``/``block``), ``fails`` (the task must fail),
    ``status`` (normalised), ``reason``, ``warning`` (text or None), ``operation_note``.
    """
    _check_choice("operation", operation, OPERATIONS)
    _check_choice("on_poisoned", on_poisoned, ON_POISONED)
    _check_choice("on_unknown", on_unknown, ON_UNKNOWN)
    note = OPERATION_NOTES[operation]
    if missing:
        return {
            "decision": BLOCK,
            "fails": on_unknown != "skip",
            "status": "unknown",
            "reason": MISSING_REASON,
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


def _find_entry(entries, wanted):
    for entry in entries:
        if entry.get("name") == wanted:
            return entry
    for entry in entries:
        if entry.get("uuid") and str(entry["uuid"]).lower() == str(wanted).lower():
            return entry
    return None


def _evidence_of(entry, status):
    evidence = [dict(item) for item in entry.get("evidence") or [] if isinstance(item, dict)]
    if status == "unknown":
        for reason in entry.get("reasons") or []:
            evidence.append({"source": "poison_info", "detail": str(reason)})
    return evidence


def evaluate(poison_result, vms=None, operation="live_migration", on_poisoned="fail", on_unknown="fail"):
    """Decide for every VM asked about (``vms``: names or UUIDs; default: every VM in the result).

    Returns a dict with ``allowed`` (names), ``blocked`` (list of {name, status, reason,
    evidence}), ``unguarded`` (names whose running QEMU lacks the guard: migration_guard false
    or null), ``decisions`` (one per VM), ``warnings``, ``failed`` and ``msg``.
    """
    _check_choice("operation", operation, OPERATIONS)
    _check_choice("on_poisoned", on_poisoned, ON_POISONED)
    _check_choice("on_unknown", on_unknown, ON_UNKNOWN)
    entries = validate_poison_result(poison_result)
    if vms is None:
        wanted = [entry["name"] for entry in entries]
    else:
        if isinstance(vms, str) or not isinstance(vms, (list, tuple)):
            raise GateInputError("vms must be a list of VM names or UUIDs, got %r" % (vms,))
        wanted = []
        for item in vms:
            if not isinstance(item, str) or not item:
                raise GateInputError("vms must hold non-empty VM names or UUIDs, got %r" % (item,))
            if item not in wanted:
                wanted.append(item)

    allowed, blocked, unguarded, decisions, warnings = [], [], [], [], []
    for item in wanted:
        entry = _find_entry(entries, item)
        if entry is None:
            outcome = decide(None, operation, on_poisoned, on_unknown, missing=True)
            name, guard, evidence = item, None, []
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
            "status": outcome["status"],
            "operation": operation,
            "decision": outcome["decision"],
            "fails": outcome["fails"],
            "reason": outcome["reason"],
            "operation_note": outcome["operation_note"],
            "migration_guard": guard,
            "in_poison_info": entry is not None,
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
