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
poisoned     on_poisoned=             allowed (``with_holes``) when every condition of
             migrate_with_holes       ``holes_blockers`` holds; else blocked, task fails,
                                      UPSTREAM_REFUSAL and each failed condition
unknown      on_unknown=fail          blocked, task fails
unknown      on_unknown=skip          blocked, task goes on
unknown      on_unknown=allow         allowed, with a warning
missing      on_unknown=skip          blocked, task goes on
missing      on_unknown=fail|allow    blocked, task fails (nothing was inspected)
ambiguous    on_unknown=skip          blocked, task goes on
ambiguous    on_unknown=fail|allow    blocked, task fails (name answers to >1 VM)
===========  =======================  ==========================================

``on_poisoned=migrate_with_holes`` (operation ``live_migration`` only) lets a poisoned VM through
when its holes can be carried to the target by the ``x-poison-holes`` migration capability of
the patched_qemu role's QEMU (``holes_blockers``, the one rule of it, also used by the
evacuation plan and by live_migrate's check right before the migration). Every condition must
hold: the VM's running QEMU binary carries the capability, the target's QEMU carries it, the
target's kernel has UFFDIO_POISON, and every hole poison_info found is in QEMU's own list
(``holes_unknown_to_qemu`` is an empty list; null means unknown). Otherwise the VM is blocked,
the task fails, and each failed condition is named with its fix.

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
MIGRATE_WITH_HOLES = "migrate_with_holes"
ON_POISONED = ("fail", "skip", MIGRATE_WITH_HOLES)
TARGET_FACT_KEYS = ("poison_holes", "uffd_poison")
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


def check_target_facts(target_facts):
    """Validate the target facts of ``on_poisoned=migrate_with_holes``; returns them.

    ``target_facts``: ``{"poison_holes": bool|None, "uffd_poison": bool|None}`` (the target's
    ``qemu_guard_info`` ``binary.poison_holes`` and ``poison_info`` ``host.uffd_poison``; None
    means not known), optionally ``name`` (the target, for the messages). Raises GateInputError.
    """
    fix = ("give target_facts: {name: TARGET, poison_holes: <qemu_guard_info binary.poison_holes "
           "of the target>, uffd_poison: <poison_info host.uffd_poison of the target>}")
    if not isinstance(target_facts, dict):
        raise GateInputError("on_poisoned=%s decides for one target and needs its facts, got "
                             "target_facts=%r; %s" % (MIGRATE_WITH_HOLES, target_facts, fix))
    for key in TARGET_FACT_KEYS:
        if key not in target_facts:
            raise GateInputError("target_facts has no %r; %s" % (key, fix))
        if target_facts[key] is not None and not isinstance(target_facts[key], bool):
            raise GateInputError("target_facts.%s must be true, false or null (not known), got %r; %s"
                                 % (key, target_facts[key], fix))
    return target_facts


def holes_blockers(entry, target_facts):
    """Why ``entry`` (a poison_info VM entry) cannot be live-migrated with its holes carried to
    the target described by ``target_facts`` (see ``check_target_facts``): a list of reasons,
    one per failed condition, each naming the fix; empty when every condition holds.

    Fail closed: a fact that is missing or null counts as failed.
    """
    target = target_facts.get("name") or "the target"
    blockers = []
    if entry.get("binary_poison_holes") is not True:
        blockers.append(
            "the VM's running QEMU binary (%s) %s the x-poison-holes migration capability: a VM "
            "keeps the binary it was started with, so install the patched_qemu role's package on "
            "the source and restart the VM's QEMU (evacuate_poisoned_vm_policy=cold_migrate or "
            "reboot_then_migrate), or move it cold" % (
                entry.get("qemu_binary") or "unknown path",
                "does not carry" if entry.get("binary_poison_holes") is False
                else "could not be read to tell whether it carries"))
    if target_facts.get("poison_holes") is not True:
        blockers.append(
            "%s's QEMU %s the x-poison-holes migration capability: deploy the patched_qemu role "
            "(playbooks/deploy_patched_qemu.yml) on %s" % (
                target, "does not carry" if target_facts.get("poison_holes") is False
                else "is not known to carry", target))
    if target_facts.get("uffd_poison") is not True:
        blockers.append(
            "%s's kernel %s UFFDIO_POISON (UFFD_FEATURE_POISON, Linux 6.6 or later), which the "
            "destination QEMU needs to install each hole; boot %s with Linux 6.6+ (Debian 12: "
            "the bookworm-backports kernel)" % (
                target, "has no" if target_facts.get("uffd_poison") is False
                else "was not shown to have", target))
    unknown = entry.get("holes_unknown_to_qemu")
    if unknown is None or not isinstance(unknown, list):
        blockers.append(
            "QEMU's own poison list (x-query-hwpoison) of the VM could not be compared with the "
            "holes poison_info found (%s), so a hole QEMU would read cannot be ruled out; fix "
            "that and run poison_info again" % (entry.get("qemu_hwpoison_problem") or "not read"))
    elif unknown:
        blockers.append(
            "poisoned page(s) at hva %s are not in QEMU's own poison list: the migration would "
            "read them and QEMU would die with SIGBUS (QEMU learns of a poisoned page only from "
            "a SIGBUS); reboot the VM (evacuate_poisoned_vm_policy=reboot_then_migrate) or move "
            "it cold" % ", ".join(str(hva) for hva in unknown))
    return blockers


def decide(status, operation, on_poisoned="fail", on_unknown="fail", missing=False,
           ambiguous=None, holes=None):
    """Decide for one VM.

    ``status`` is the VM's poison status from poison_info; any value other than ``poisoned``
    or ``clean`` is treated as ``unknown`` (fail closed). ``missing`` marks a VM that was
    asked for but is not in the poison_info result at all; ``ambiguous`` (a reason) marks a
    VM whose name (or the name asked for) belongs to more than one VM of the result. Both are
    always blocked; the task fails unless ``on_unknown=skip``. ``holes``: with
    ``on_poisoned=migrate_with_holes``, the ``holes_blockers`` of a poisoned VM (empty: it may
    go with its holes carried).

    Returns a dict: ``decision`` (``allow``/``block``), ``fails`` (the task must fail),
    ``status`` (normalised), ``reason``, ``warning`` (text or None), ``operation_note``.
    """
    _check_choice("operation", operation, OPERATIONS)
    _check_choice("on_poisoned", on_poisoned, ON_POISONED)
    _check_choice("on_unknown", on_unknown, ON_UNKNOWN)
    _check_holes_operation(operation, on_poisoned)
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
    if status == "poisoned" and on_poisoned == MIGRATE_WITH_HOLES:
        if holes is None:
            holes = ["the conditions of on_poisoned=%s were not checked" % MIGRATE_WITH_HOLES]
        if not holes:
            return {
                "decision": ALLOW,
                "fails": False,
                "status": "poisoned",
                "reason": ("poisoned, allowed with its holes carried (x-poison-holes): its QEMU "
                           "and the target's carry the capability, the target's kernel has "
                           "UFFDIO_POISON and QEMU lists every hole, so no poisoned page is read"),
                "warning": None,
                "operation_note": note,
                "with_holes": True,
            }
        return {
            "decision": BLOCK,
            "fails": True,
            "status": "poisoned",
            "reason": "%s; not migrated with its holes because %s" % (UPSTREAM_REFUSAL, "; ".join(holes)),
            "warning": None,
            "operation_note": note,
            "holes_blockers": list(holes),
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


def _check_holes_operation(operation, on_poisoned):
    if on_poisoned == MIGRATE_WITH_HOLES and operation != "live_migration":
        raise GateInputError(
            "on_poisoned=%s applies to operation=live_migration only (a save, snapshot or dump "
            "has no destination QEMU to carry the holes to), got operation=%s; use "
            "on_poisoned=fail or skip" % (MIGRATE_WITH_HOLES, operation))


def check_holes_options(operation, on_poisoned, target_facts):
    """The option checks of ``on_poisoned=migrate_with_holes``, for a caller that wants them
    before it gathers anything; raises GateInputError."""
    _check_holes_operation(operation, on_poisoned)
    if on_poisoned == MIGRATE_WITH_HOLES:
        check_target_facts(target_facts)


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


def evaluate(poison_result, vms=None, operation="live_migration", on_poisoned="fail", on_unknown="fail",
             target_facts=None):
    """Decide for every VM asked about (``vms``: names or UUIDs; default: every VM in the result,
    each on its own).

    Identity is exact: a name or UUID that answers to more than one VM, or a VM sharing its
    name with another, is blocked with a reason that says so; a VM asked for but absent from
    the result is blocked, never allowed.

    Returns a dict with ``allowed`` (names), ``blocked`` (list of {name, status, reason,
    evidence}), ``unguarded`` (names whose running QEMU lacks the guard: migration_guard false
    or null), ``with_holes`` (allowed names that may move only with ``x-poison-holes`` set,
    ``on_poisoned=migrate_with_holes``), ``decisions`` (one per VM), ``warnings``, ``failed``
    and ``msg``. ``target_facts``: see ``check_target_facts`` (needed with
    ``on_poisoned=migrate_with_holes`` only).
    """
    _check_choice("operation", operation, OPERATIONS)
    _check_choice("on_poisoned", on_poisoned, ON_POISONED)
    _check_choice("on_unknown", on_unknown, ON_UNKNOWN)
    _check_holes_operation(operation, on_poisoned)
    if on_poisoned == MIGRATE_WITH_HOLES:
        check_target_facts(target_facts)
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

    allowed, blocked, unguarded, decisions, warnings, with_holes = [], [], [], [], [], []
    for item, hits in requests:
        entry = hits[0] if len(hits) == 1 else None
        ambiguous = _ambiguity(entries, item, hits) if hits else None
        if not hits:
            outcome = decide(None, operation, on_poisoned, on_unknown, missing=True)
            name, guard, evidence = item, None, []
        elif ambiguous:
            outcome = decide(None, operation, on_poisoned, on_unknown, ambiguous=ambiguous)
            if on_poisoned in ("fail", MIGRATE_WITH_HOLES) and any(
                    e.get("status") == "poisoned" for e in hits):
                outcome["fails"] = True  # one of them is poisoned: a blocked poisoned VM fails the task
            name = entry["name"] if entry is not None else item
            guard = entry.get("migration_guard") if entry is not None else None
            evidence = [{"source": "migration_gate", "detail": "%s: %s (%s)" % (
                e["name"], e.get("status"), _identity(e))} for e in hits]
        else:
            holes = None
            if on_poisoned == MIGRATE_WITH_HOLES and entry.get("status") == "poisoned":
                holes = holes_blockers(entry, target_facts)
            outcome = decide(entry.get("status"), operation, on_poisoned, on_unknown, holes=holes)
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
            "with_holes": bool(outcome.get("with_holes")),
        }
        if "holes_blockers" in outcome:
            decision["holes_blockers"] = outcome["holes_blockers"]
        decisions.append(decision)
        if outcome["decision"] == ALLOW:
            allowed.append(name)
            if decision["with_holes"]:
                with_holes.append(name)
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
        "with_holes": with_holes,
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
