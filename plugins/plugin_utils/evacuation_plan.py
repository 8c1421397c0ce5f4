# -*- coding: utf-8 -*-
# Copyright (c) kvm_ras.poison_guard contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The plan of ``evacuate_host.yml`` (controller only, never shipped to a host; no Ansible
imports).

- the vocabulary of the evacuation: what the plan does with a VM (``ACTION_*``) and the final
  status of a VM in the report (``ST_*``);
- ``target_capacity`` / ``place``: which target has room (free memory, vCPUs) for which VM,
  and passed the preflight;
- ``decide_action``: what happens to one VM, from its poison status, the gate's decision and
  the two policies;
- ``holes_target_facts`` / ``holes_targets``: with ``evacuate_poisoned_vm_policy=migrate_with_holes``,
  which targets can take a poisoned VM with its holes carried (migration_gate's rule,
  ``gate.holes_blockers``, applied per target);
- ``build_plan`` / ``render_plan``: the plan (VM -> target, or why it stays) and its table;
- ``left_without_consent``: the VMs that stay on the source although the operator did not say
  they may (the plan announces it, the report's exit rule fails the run for it).

What a hypervisor decides on its own (the evacuation lock, the cordon marker, disks of a
domain, libvirt's state words) lives in plugins/module_utils (``host_markers.py``,
``libvirt.py``).
"""

from __future__ import annotations

import math
import re
import shlex

from ansible_collections.kvm_ras.poison_guard.plugins.module_utils import gate as gate_rules
from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.libvirt import ACTIVE_STATE_WORDS
from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.messages import UPSTREAM_REFUSAL
from ansible_collections.kvm_ras.poison_guard.plugins.plugin_utils.evacuation_request import (
    URI_FROM_HOST, URI_FROM_TEMPLATE, URI_FROM_TRANSPORT, EvacuationInputError, no_transport_reason, vm_timeout)


# --------------------------------------------------------------------------- vocabulary --

# What the plan does with a VM.
ACTION_LIVE = "live_migrate"
ACTION_REBOOT = "reboot_then_migrate"
ACTION_COLD = "cold_migrate"
ACTION_LEAVE = "leave"
ACTION_NONE = "none"  # not running: nothing to move
MOVING_ACTIONS = (ACTION_LIVE, ACTION_REBOOT, ACTION_COLD)
# The poisoned-VM policy that live-migrates with QEMU's x-poison-holes (docs/poison-holes.md).
POLICY_WITH_HOLES = "migrate_with_holes"

# Final status of a VM in the report.
ST_MIGRATED = "migrated"          # runs on a target, as planned
ST_LEFT = "left"                  # on the source because the operator asked (policy / leave list)
ST_STAYED = "stayed"              # on the source although it should have moved (failure, no room)
ST_NOT_RUNNING = "not_running"    # was not running when the evacuation began
ST_DOWN = "down"                  # was running, now runs nowhere (critical)
ST_DUPLICATE = "duplicate"        # runs on more than one host (critical)
ST_UNVERIFIED = "unverified"      # a host that could hold it could not be asked
ST_PLANNED = "planned"            # check mode: what would happen
FINAL_STATUSES = (ST_MIGRATED, ST_LEFT, ST_STAYED, ST_NOT_RUNNING, ST_DOWN, ST_DUPLICATE, ST_UNVERIFIED)
# Statuses that make the run fail (something stayed behind or is in danger, unasked).
FAILING_STATUSES = (ST_STAYED, ST_DOWN, ST_DUPLICATE, ST_UNVERIFIED)


# --------------------------------------------------------------------------- domains --

def is_active(domain):
    if "active" in domain:
        return bool(domain["active"])
    return domain.get("state") in ACTIVE_STATE_WORDS


# --------------------------------------------------------------------------- capacity --

def answered(facts):
    """True when a host_capacity_info result holds a libvirt answer (not failed, skipped, unreachable)."""
    return (isinstance(facts, dict) and not facts.get("failed") and not facts.get("unreachable")
            and not facts.get("skipped") and facts.get("libvirt_ok", True) is not False
            and isinstance(facts.get("domains"), list))


def target_capacity(name, facts, request, preflight=None):
    """What one target can take: usable, why not, free memory and vCPU headroom.

    ``facts`` is the target's host_capacity_info result (or a failed/unreachable result);
    ``preflight`` the migration_preflight result of the run (None: no preflight was run). A
    target the preflight did not find usable, or did not check, takes no VM.
    """
    entry = {"name": name, "usable": False, "reason": None, "memory_free_mib": None,
             "vcpu_free": None, "cpus": None, "running_vcpus": None, "running_count": None,
             "cordoned": None, "uri": request.get("migration_uris", {}).get(name)}
    if not isinstance(facts, dict) or facts.get("unreachable"):
        entry["reason"] = "unreachable: %s" % ((facts or {}).get("msg") or "no answer")
        return entry
    if not answered(facts):
        entry["reason"] = "libvirt not answering: %s" % (facts.get("msg") or "no details")
        return entry
    cordon = facts.get("cordon") or {}
    lock = facts.get("evacuation_lock") or {}
    entry["cordoned"] = bool(cordon.get("cordoned"))
    cpus = int(facts.get("cpus") or 0)
    running_vcpus = int(facts.get("running_vcpus") or 0)
    free = int(facts.get("memory_free_mib") or 0) - int(request["evacuate_memory_reserve_mib"])
    vcpu_capacity = int(math.floor(cpus * float(request["evacuate_cpu_allocation_ratio"])))
    entry.update({
        "cpus": cpus,
        "running_vcpus": running_vcpus,
        "running_count": facts.get("running_count"),
        "memory_free_mib": max(free, 0),
        "vcpu_free": max(vcpu_capacity - running_vcpus, 0),
        "vcpu_capacity": vcpu_capacity,
    })
    if entry["cordoned"]:
        entry["reason"] = "cordoned since %s (%s): uncordon it first to use it as a target" % (
            cordon.get("since") or "unknown time", cordon.get("reason") or "no reason given")
        return entry
    if lock.get("held"):
        entry["reason"] = "being evacuated itself (evacuation lock held by run %s)" % (lock.get("owner") or "?")
        return entry
    if not entry["uri"]:
        entry["reason"] = ((request.get("migration_uri_problems") or {}).get(name)
                           or no_transport_reason(request.get("evacuate_source")))
        return entry
    if preflight is not None:
        checked = (preflight.get("targets") or {}).get(name)
        if not checked or not checked.get("usable"):
            entry["reason"] = "preflight: %s" % (" | ".join((checked or {}).get("reasons") or [])
                                                 or "not checked by the preflight (fail closed)")
            return entry
    entry["usable"] = True
    return entry


def preflight_check(preflight, vm_name, target):
    """(ok, reason): may the VM move to the target by the preflight (None: no preflight run)."""
    if preflight is None:
        return True, None
    entry = ((preflight.get("vms") or {}).get(vm_name) or {}).get(target)
    if entry is None:
        return False, "the preflight did not check %s on it (fail closed)" % vm_name
    if not entry.get("usable"):
        return False, "preflight: %s" % (" | ".join(entry.get("reasons") or []) or "not usable")
    return True, None


def hugetlb_reset_keeps_poison(entry):
    """True when a reboot would not clear the VM's poison: its guest RAM is hugetlbfs-backed
    and its QEMU is older than 10.0, whose reset does not replace a poisoned huge page
    (QEMU 10.0: "handle hugetlb correctly in qemu_ram_remap"). None when it cannot be told."""
    scan = (entry or {}).get("scan") or {}
    hugetlb = scan.get("hugetlb_mappings")
    if not hugetlb:
        return False if hugetlb == 0 else None
    match = re.match(r"^\s*(\d+)\.", str((entry or {}).get("qemu_version") or ""))
    if not match:
        return None
    return int(match.group(1)) < 10


def reset_leaves_hugetlb_poison(entry):
    """Why a reset in place (evacuate_reboot_mode=reset) would leave this poisoned VM poisoned, or None.

    Fails closed: hugetlbfs-backed guest RAM on a QEMU whose version cannot be read counts as too
    old. A restart (a new QEMU process, new memory) is not concerned."""
    keeps = hugetlb_reset_keeps_poison(entry)
    if keeps is None and ((entry or {}).get("scan") or {}).get("hugetlb_mappings"):
        qemu = "a QEMU of unknown version"
    elif keeps:
        qemu = "QEMU %s" % entry.get("qemu_version")
    else:
        return None
    return ("poisoned hugetlbfs-backed guest RAM on %s: a reset in place does not repair a poisoned huge page "
            "before QEMU 10.0, so reboot_then_migrate with evacuate_reboot_mode=reset would leave it poisoned; "
            "choose evacuate_reboot_mode=restart or evacuate_poisoned_vm_policy=cold_migrate (a new QEMU "
            "process gets new memory)" % qemu)


def disks_available(vm_disks, target_paths):
    """For a cold migration: every disk of the VM must exist on the target, same size.

    ``target_paths``: host_capacity_info's ``paths`` of the target (path -> {exists, size}).
    Returns (ok, reason).
    """
    missing, differing = [], []
    for disk in vm_disks or []:
        if disk.get("type") == "network" or not disk.get("path"):
            continue  # network storage (rbd, iscsi, nbd) and empty drives are not host files
        info = (target_paths or {}).get(disk["path"])
        if not info or not info.get("exists"):
            missing.append(disk["path"])
        elif disk.get("size") is not None and info.get("size") is not None and disk["size"] != info["size"]:
            differing.append("%s (%s bytes here, %s there)" % (disk["path"], disk["size"], info["size"]))
    if missing:
        return False, ("its disk(s) %s do not exist on the target: cold migration needs shared or "
                       "copied storage" % ", ".join(missing))
    if differing:
        return False, ("its disk(s) %s differ in size on the target: not the same (shared or copied) "
                       "storage" % ", ".join(differing))
    return True, None


def place(vms, capacities, cold_disk_check=None, target_check=None):
    """Assign each VM that should move to a usable target with room.

    ``vms``: dicts with name, memory_mib, vcpus, action (only MOVING_ACTIONS are placed) and,
    for cold migration, disks. ``capacities``: target_capacity entries (in target order).
    ``cold_disk_check(vm, target_name)`` -> (ok, reason) for cold migrations;
    ``target_check(vm, target_name)`` -> (ok, reason) for every move (the preflight).

    Largest memory first; each goes to the usable target that fits its memory and vCPUs and
    keeps the most headroom afterwards: the larger of the two is the smaller of the free
    shares of memory (of what the target had free) and of vCPUs (of its vCPU capacity), so
    the load spreads on whichever resource is scarce. Ties: more free memory, more free
    vCPUs, then the target order.
    Returns {vm name: (target or None, reason or None)} and updates the capacities'
    ``memory_free_mib``/``vcpu_free`` and ``assigned``.
    """
    for cap in capacities:
        cap.setdefault("assigned", [])
        if cap.get("usable"):
            cap.setdefault("memory_start_mib", cap["memory_free_mib"])
    result = {}
    order = sorted((vm for vm in vms if vm.get("action") in MOVING_ACTIONS),
                   key=lambda vm: (-(vm.get("memory_mib") or 0), -(vm.get("vcpus") or 0), vm["name"]))
    usable = [cap for cap in capacities if cap.get("usable")]
    for vm in order:
        need_mem = int(vm.get("memory_mib") or 0)
        need_cpu = int(vm.get("vcpus") or 0)
        best, refusals, short_of_room = None, [], False
        for index, cap in enumerate(usable):
            if cap["memory_free_mib"] < need_mem:
                refusals.append("%s has %d MiB free" % (cap["name"], cap["memory_free_mib"]))
                short_of_room = True
                continue
            if cap["vcpu_free"] < need_cpu:
                refusals.append("%s has %d vCPU(s) free" % (cap["name"], cap["vcpu_free"]))
                short_of_room = True
                continue
            if vm.get("action") == ACTION_COLD and cold_disk_check is not None:
                ok, why = cold_disk_check(vm, cap["name"])
                if not ok:
                    refusals.append("%s: %s" % (cap["name"], why))
                    continue
            if target_check is not None:
                ok, why = target_check(vm, cap["name"])
                if not ok:
                    refusals.append("%s: %s" % (cap["name"], why))
                    continue
            mem_left, cpu_left = cap["memory_free_mib"] - need_mem, cap["vcpu_free"] - need_cpu
            share = min(float(mem_left) / max(cap.setdefault("memory_start_mib", cap["memory_free_mib"]), 1),
                        float(cpu_left) / max(cap.get("vcpu_capacity") or cap["vcpu_free"], 1))
            key = (round(share, 6), mem_left, cpu_left, -index)
            if best is None or key > best[0]:
                best = (key, cap)
        if best is None:
            if not usable:
                reason = "no usable target"
            elif short_of_room:
                reason = "no target with room for %d MiB and %d vCPU(s): %s" % (
                    need_mem, need_cpu, "; ".join(refusals))
            else:  # room enough, but no target passed the VM's own checks
                reason = "no target can take it: %s" % "; ".join(refusals)
            result[vm["name"]] = (None, reason)
            continue
        cap = best[1]
        cap["memory_free_mib"] -= need_mem
        cap["vcpu_free"] -= need_cpu
        cap["assigned"].append(vm["name"])
        result[vm["name"]] = (cap["name"], None)
    return result


# --------------------------------------------------------------------------- decisions --

def decide_action(status, gate_allowed, poisoned_vm_policy, unknown_vm_policy, gate_reason=None,
                  leave_requested=False):
    """What the evacuation does with one running VM: (action, reason).

    ``status``: poison_info's verdict (poisoned/clean/unknown; anything else is unknown).
    ``gate_allowed``: the migration gate let it through for live migration.
    Fail closed: a VM moves live only when the gate allowed it and its status agrees.
    """
    if leave_requested:
        return ACTION_LEAVE, "left on the source as requested (evacuate_leave_vms)"
    if status == "poisoned":
        if poisoned_vm_policy == "reboot_then_migrate":
            return ACTION_REBOOT, ("poisoned: reboot it (QEMU drops its poison list and remaps the pages), "
                                   "check it again, then migrate it only if it is clean")
        if poisoned_vm_policy == "cold_migrate":
            return ACTION_COLD, "poisoned: shut it down and start it on a target; its RAM is never read"
        if poisoned_vm_policy == POLICY_WITH_HOLES:
            return ACTION_LIVE, ("poisoned: live-migrated with its holes carried (x-poison-holes) to a "
                                 "target that qualifies; no poisoned page is read")
        return ACTION_LEAVE, UPSTREAM_REFUSAL
    if status == "clean":
        if gate_allowed:
            return ACTION_LIVE, None
        return ACTION_LEAVE, "the migration gate blocked it: %s" % (gate_reason or "no reason given")
    # unknown (or anything not understood)
    if unknown_vm_policy == "migrate" and gate_allowed:
        return ACTION_LIVE, ("poison status unknown, migrated because evacuate_unknown_vm_policy=migrate: %s"
                             % (gate_reason or "not fully inspected"))
    return ACTION_LEAVE, "poison status unknown: %s (set evacuate_unknown_vm_policy=migrate to move it anyway)" % (
        gate_reason or "its guest memory could not be fully inspected")


def holes_target_facts(name, result):
    """The facts of one target for migrate_with_holes, from its qemu_guard_info result
    (``binary.poison_holes`` and ``uffd_poison``): {name, poison_holes, uffd_poison, problem}.
    A result that failed, was skipped or is missing gives nulls (unknown, which blocks)."""
    facts = {"name": name, "poison_holes": None, "uffd_poison": None, "problem": None}
    if not isinstance(result, dict) or result.get("failed") or result.get("unreachable") or result.get("skipped"):
        facts["problem"] = "its QEMU and kernel were not read (qemu_guard_info: %s)" % (
            (result or {}).get("msg") if isinstance(result, dict) else "no result")
        return facts
    binary = result.get("binary") if isinstance(result.get("binary"), dict) else {}
    for key, value in (("poison_holes", binary.get("poison_holes")), ("uffd_poison", result.get("uffd_poison"))):
        facts[key] = value if isinstance(value, bool) else None
    return facts


def holes_targets(request, holes_facts):
    """Per target: may it take a poisoned VM with its holes carried? [{name, qualifies,
    reasons, facts}], with migration_gate's rule for the target's part (a VM whose own QEMU
    carries the capability and lists every hole)."""
    qualified_vm = {"binary_poison_holes": True, "holes_unknown_to_qemu": []}
    out = []
    for target in request.get("evacuate_targets") or []:
        facts = holes_target_facts(target, (holes_facts or {}).get(target))
        reasons = gate_rules.holes_blockers(qualified_vm, facts)
        if facts["problem"]:
            reasons.insert(0, facts["problem"])
        out.append({"name": target, "qualifies": not reasons, "reasons": reasons, "facts": facts})
    return out


def _gate_index(gate):
    allowed = set((gate or {}).get("allowed") or [])
    blocked = {}
    for item in (gate or {}).get("blocked") or []:
        if isinstance(item, dict) and item.get("name"):
            blocked[item["name"]] = item
    decisions = {}
    for item in (gate or {}).get("decisions") or []:
        if isinstance(item, dict) and item.get("name"):
            decisions[item["name"]] = item
    return allowed, blocked, decisions


def _poison_index(poison):
    entries = {}
    for item in (poison or {}).get("vms") or []:
        if isinstance(item, dict) and item.get("name"):
            entries[item["name"]] = item
    return entries


def build_plan(request, source_facts, targets_facts, poison, gate, preflight=None, holes_facts=None):
    """The evacuation plan, gathered before anything changes.

    ``source_facts``: host_capacity_info of the source (its ``domains``); ``targets_facts``: target
    name -> host_capacity_info result; ``poison``: poison_info of the source; ``gate``: the
    migration_gate result for the source's VMs; ``preflight``: migration_preflight from the
    source (None: none was run), whose unusable targets and VM/target pairs get no VM;
    ``holes_facts``: target name -> qemu_guard_info result, read with
    ``evacuate_poisoned_vm_policy=migrate_with_holes`` (a poisoned VM then goes only to a target
    the gate's rule qualifies, and stays when none does).

    Returns {source, targets: [capacity entries], vms: [...], counts, moves, leave_unknown}.
    Raises EvacuationInputError for requests that cannot be planned (VMs named in
    evacuate_leave_vms that the source does not have).
    """
    domains = list((source_facts or {}).get("domains") or [])
    names = [d["name"] for d in domains]
    uuids = {d.get("uuid"): d["name"] for d in domains if d.get("uuid")}
    problems = []
    leave = set()
    for wanted in request.get("evacuate_leave_vms") or []:
        if wanted in names:
            leave.add(wanted)
        elif wanted in uuids:
            leave.add(uuids[wanted])
        else:
            problems.append("evacuate_leave_vms names %r, which %s does not have (its VMs: %s)"
                            % (wanted, request["evacuate_source"], ", ".join(sorted(names)) or "none"))
    if problems:
        raise EvacuationInputError(problems)

    allowed, blocked, decisions = _gate_index(gate)
    poison_entries = _poison_index(poison)
    capacities = [target_capacity(t, (targets_facts or {}).get(t), request, preflight)
                  for t in request["evacuate_targets"]]

    vms = []
    for index, dom in enumerate(sorted(domains, key=lambda d: d["name"])):
        entry = poison_entries.get(dom["name"]) or {}
        active = is_active(dom)
        status = entry.get("status") if entry else None
        if status not in ("poisoned", "clean", "unknown"):
            status = "unknown" if active else None
        gate_item = blocked.get(dom["name"]) or decisions.get(dom["name"]) or {}
        vm = {
            "index": index,
            "name": dom["name"],
            "uuid": dom.get("uuid"),
            "state": dom.get("state"),
            "persistent": bool(dom.get("persistent")),
            "memory_mib": int(dom.get("memory_mib") or entry.get("memory_mib") or 0),
            "vcpus": int(dom.get("vcpus") or entry.get("vcpus") or 0),
            "disks": dom.get("disks") or [],
            "status": status if active else "not running",
            "evidence": entry.get("evidence") or gate_item.get("evidence") or [],
            "migration_guard": entry.get("migration_guard"),
            "target": None,
            "dest_uri": None,
            "timeout": None,
        }
        if not active:
            vm["action"], vm["reason"] = ACTION_NONE, "not running (state %s): its definition stays" % dom.get("state")
        else:
            gate_reason = gate_item.get("reason")
            if status == "unknown" and entry.get("reasons"):
                gate_reason = "; ".join(str(r) for r in entry["reasons"])
            vm["action"], vm["reason"] = decide_action(
                status, dom["name"] in allowed, request["evacuate_poisoned_vm_policy"],
                request["evacuate_unknown_vm_policy"],
                gate_reason=gate_reason, leave_requested=dom["name"] in leave)
            if vm["action"] == ACTION_REBOOT and request["evacuate_reboot_mode"] == "reset":
                why = reset_leaves_hugetlb_poison(entry)
                if why:
                    vm["action"], vm["reason"] = ACTION_LEAVE, why
            vm["gate"] = "allowed" if dom["name"] in allowed else "blocked"
            if (status == "poisoned" and vm["action"] == ACTION_LIVE
                    and request["evacuate_poisoned_vm_policy"] == POLICY_WITH_HOLES):
                vm["with_holes"] = True
                vm["poison_entry"] = entry
                own = gate_rules.holes_blockers(entry, {"poison_holes": True, "uffd_poison": True})
                if own:
                    vm["planned_action"], vm["action"], vm["no_room"] = ACTION_LIVE, ACTION_LEAVE, True
                    vm["reason"] = "%s; not migrated with its holes because %s" % (UPSTREAM_REFUSAL, "; ".join(own))
        vms.append(vm)

    qualifying = holes_targets(request, holes_facts) \
        if request["evacuate_poisoned_vm_policy"] == POLICY_WITH_HOLES else None
    holes_by_target = {t["name"]: t for t in qualifying or []}

    target_paths = {t: ((targets_facts or {}).get(t) or {}).get("paths") or {} for t in request["evacuate_targets"]}

    def cold_check(vm, target):
        return disks_available(vm.get("disks"), target_paths.get(target))

    def preflight_ok(vm, target):
        if vm.get("with_holes"):
            entry = holes_by_target.get(target) or {"reasons": ["not checked for migrate_with_holes"]}
            blockers = gate_rules.holes_blockers(vm.get("poison_entry") or {}, entry.get("facts") or {"name": target})
            if entry.get("facts", {}).get("problem"):
                blockers.insert(0, entry["facts"]["problem"])
            if blockers:
                return False, "cannot take it with its holes: %s" % "; ".join(blockers)
        return preflight_check(preflight, vm["name"], target)

    placement = place(vms, capacities, cold_disk_check=cold_check, target_check=preflight_ok)
    for vm in vms:
        if vm["action"] not in MOVING_ACTIONS:
            continue
        target, why = placement.get(vm["name"], (None, "not placed"))
        if target is None:
            vm["planned_action"] = vm["action"]
            vm["action"] = ACTION_LEAVE
            vm["reason"] = why
            vm["no_room"] = True
            continue
        vm["target"] = target
        vm["dest_uri"] = request["migration_uris"].get(target)
        vm["timeout"] = vm_timeout(request, vm["memory_mib"])
        if vm.get("with_holes"):
            facts = holes_by_target[target]["facts"]
            vm["target_facts"] = {k: facts[k] for k in ("name", "poison_holes", "uffd_poison")}
    for vm in vms:
        vm.pop("poison_entry", None)

    counts = {}
    for vm in vms:
        counts[vm["action"]] = counts.get(vm["action"], 0) + 1
    return {
        "source": request["evacuate_source"],
        "targets": capacities,
        "vms": vms,
        "counts": counts,
        "moves": sum(1 for vm in vms if vm["action"] in MOVING_ACTIONS),
        "running": sum(1 for vm in vms if vm["action"] != ACTION_NONE),
        "preflight": None if preflight is None else list((preflight.get("summary") or {}).get("lines") or []),
        "holes_targets": qualifying,
    }


def plan_problems(plan):
    """Reasons the plan cannot start at all (e.g. VMs to move but no usable target)."""
    problems = []
    wants_move = [vm for vm in plan["vms"] if vm["action"] in MOVING_ACTIONS or vm.get("no_room")]
    if wants_move and not any(t["usable"] for t in plan["targets"]):
        problems.append("no usable target for %d VM(s): %s" % (
            len(wants_move), "; ".join("%s %s" % (t["name"], t["reason"]) for t in plan["targets"])))
    return problems


# --------------------------------------------------------------------------- rendering --

def table_lines(headers, rows):
    rows = [["" if cell is None else str(cell) for cell in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    line = "  ".join("%-*s" % (widths[i], h) for i, h in enumerate(headers)).rstrip()
    out = [line, "  ".join("-" * w for w in widths)]
    for row in rows:
        out.append("  ".join("%-*s" % (widths[i], c) for i, c in enumerate(row)).rstrip())
    return out


def shown_name(name):
    """A VM name for a table: printable, quoted when it holds spaces or odd characters."""
    if re.match(r"^[A-Za-z0-9_.:+@-]+$", name or ""):
        return name
    return repr(name)


def describe_uris(request):
    """Each target's migration URI and where it comes from, for the plan's header."""
    uris = request.get("migration_uris") or {}
    origins = request.get("migration_uri_origins") or {}
    transport = request.get("migration_transport") or {}
    words = {URI_FROM_HOST: "its kvm_ras_migration_uri", URI_FROM_TEMPLATE: "evacuate_migration_uri_template",
             URI_FROM_TRANSPORT: "the %s transport of %s" % (transport.get("mode") or "migration",
                                                             transport.get("source") or "the source")}
    parts = []
    for target in request.get("evacuate_targets") or []:
        if uris.get(target):
            parts.append("%s %s (%s)" % (target, uris[target], words.get(origins.get(target), "given")))
        else:
            parts.append("%s none" % target)
    text = ", ".join(parts) or "no target"
    if request.get("evacuate_allow_plain_tcp"):
        text += "; evacuate_allow_plain_tcp=true (qemu+tcp allowed)"
    return text


def render_plan(plan, request, check_mode=False):
    """The plan as lines of text: one header, the targets, and the VM -> target table."""
    lines = ["Evacuation plan for %s%s" % (plan["source"], " (check mode: nothing will change)" if check_mode else ""),
             "policies: evacuate_poisoned_vm_policy=%s, evacuate_unknown_vm_policy=%s, evacuate_reboot_mode=%s; "
             "evacuate_max_parallel=%d; evacuate_cordon=%s"
             % (request["evacuate_poisoned_vm_policy"], request["evacuate_unknown_vm_policy"],
                request["evacuate_reboot_mode"], request["evacuate_max_parallel"],
                "yes" if request["evacuate_cordon"] else "no"),
             "migration URIs: %s" % describe_uris(request),
             ""]
    trows = []
    for t in plan["targets"]:
        trows.append([t["name"], "yes" if t["usable"] else "no",
                      t["memory_free_mib"] if t["memory_free_mib"] is not None else "-",
                      t["vcpu_free"] if t["vcpu_free"] is not None else "-",
                      len(t.get("assigned") or []), t["reason"] or ""])
    lines += table_lines(["TARGET", "USABLE", "FREE MiB (after plan)", "FREE vCPUs (after plan)", "VMs IN", "WHY NOT"], trows)
    lines.append("")
    if plan.get("preflight") is not None:
        lines.append("preflight from %s (transport, CPU, machine type, QEMU, networks, disks):" % plan["source"])
        lines += ["  " + line for line in plan["preflight"]] or ["  no target to check"]
        lines.append("")
    if plan.get("holes_targets") is not None:
        lines.append("targets for poisoned VMs (evacuate_poisoned_vm_policy=migrate_with_holes):")
        for item in plan["holes_targets"]:
            lines.append("  %s %s" % (item["name"], "qualifies (its QEMU carries x-poison-holes, its kernel has "
                                      "UFFDIO_POISON)" if item["qualifies"]
                                      else "does not qualify: %s" % "; ".join(item["reasons"])))
        lines.append("")
    vrows = []
    for vm in plan["vms"]:
        vrows.append([shown_name(vm["name"]), vm["status"], vm["action"], vm["target"] or "-",
                      "%d MiB/%d vCPU" % (vm["memory_mib"], vm["vcpus"]),
                      vm["timeout"] or "-", vm["reason"] or ""])
    if vrows:
        lines += table_lines(["VM", "STATUS", "ACTION", "TARGET", "SIZE", "TIMEOUT s", "REASON"], vrows)
    else:
        lines.append("%s has no VMs: nothing to do." % plan["source"])
    lines.append("")
    summary = ", ".join("%s %d" % (k, v) for k, v in sorted(plan["counts"].items())) or "no VMs"
    lines.append("summary: %s; %d to move" % (summary, plan["moves"]))
    # What the exit rule will say of the VMs the plan leaves (the run itself decides at its end).
    staying = [{"name": vm["name"], "uuid": vm.get("uuid"), "poison_status": vm["status"], "reason": vm["reason"],
                "status": ST_STAYED if vm.get("no_room") else ST_LEFT}
               for vm in plan["vms"] if vm["action"] == ACTION_LEAVE]
    for item in left_without_consent(request, staying):
        lines.append("the run will end failed: %s stays on the source without being asked to (%s): %s"
                     % (shown_name(item["name"]), item["why"], item["fix"]))
    return lines


# Poison status -> (the policy input that may leave such a VM, what the VM is, how to move it):
# the advice of left_without_consent for a VM left by the policy's default ``leave``.
_LEAVE_BY_DEFAULT = {
    "poisoned": ("evacuate_poisoned_vm_policy", "poisoned",
                 "move it with -e evacuate_poisoned_vm_policy=reboot_then_migrate (reboots it) or "
                 "-e evacuate_poisoned_vm_policy=cold_migrate (shuts it down)"),
    "unknown": ("evacuate_unknown_vm_policy", "poison status unknown",
                "fix what prevented the check and re-run, or move it anyway with "
                "-e evacuate_unknown_vm_policy=migrate (it may hold poisoned pages)"),
}


def left_without_consent(request, vms):
    """The VMs this run leaves running on the source although the operator did not spell out
    that they may stay: the one rule behind the run's exit status.

    ``request``: the checked request (``inputs_given`` says which inputs were given rather than
    defaulted); ``vms``: the report's VM entries. A VM may stay when it is named (or its UUID
    is) in ``evacuate_leave_vms``, or when it is poisoned and ``evacuate_poisoned_vm_policy=leave``
    was given, or its poison status is unknown and ``evacuate_unknown_vm_policy=leave`` was
    given. A ``leave`` that is only the default is no consent. VMs that were not running are
    not counted (only their definition stays). Returns [{name, status, why, fix}], in report
    order; ``fix`` names the input to set for that VM.
    """
    request = request or {}
    given = set(request.get("inputs_given") or [])
    leave = set(request.get("evacuate_leave_vms") or [])
    found = []
    for vm in vms or []:
        if vm.get("status") not in (ST_LEFT, ST_STAYED):
            continue
        name = vm.get("name")
        if name in leave or (vm.get("uuid") and vm["uuid"] in leave):
            continue
        poison = vm.get("poison_status")
        keep = "-e %s" % shlex.quote("evacuate_leave_vms=%s" % name)  # advice to copy, never run here
        if vm["status"] == ST_STAYED:
            why = "it should have moved but did not: %s" % (vm.get("reason") or "no reason given")
            fix = "fix the cause and re-run (the re-run moves what is left), or leave it on purpose with %s" % keep
        elif poison in _LEAVE_BY_DEFAULT:
            policy, what, move = _LEAVE_BY_DEFAULT[poison]
            if request.get(policy) == ACTION_LEAVE and policy in given:
                continue
            why = "%s, left by the default %s=leave" % (what, policy)
            fix = "%s, or leave it on purpose with -e %s=leave or %s" % (move, policy, keep)
        else:
            why = vm.get("reason") or "left on the source"
            fix = "fix the cause and re-run, or leave it on purpose with %s" % keep
        found.append({"name": name, "status": vm["status"], "why": why, "fix": fix})
    return found
