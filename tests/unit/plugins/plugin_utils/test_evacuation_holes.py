# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""evacuate_poisoned_vm_policy=migrate_with_holes (issue 19): the plan sends a poisoned VM live,
with its holes carried, only to a target that qualifies by migration_gate's rule; it says which
targets qualify and why the others do not; the report records the holes the target's QEMU lists.

Fixtures as in test_evacuation.py (host_capacity, poison_info, migration_gate results of the
hypervisor lab), plus qemu_guard_info results of the targets (``binary.poison_holes``,
``uffd_poison``) and the live_migrate result of a migration with ``poison_holes=true``
(``holes_carried``: the destination QEMU's x-query-hwpoison)."""

from __future__ import annotations

import json

from ansible_collections.kvm_ras.poison_guard.plugins.plugin_utils import evacuation_plan as evplan
from ansible_collections.kvm_ras.poison_guard.plugins.plugin_utils import evacuation_report as evreport
from ansible_collections.kvm_ras.poison_guard.plugins.module_utils import gate
from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.messages import UPSTREAM_REFUSAL

from test_evacuation import RUN, capacity, domain, poison, request, states

HOLE = {"block": "pc.ram", "offset": 16777216, "page-size": 4096, "gpa": 16777216, "hva": 0x7F6F8A000000}


def guard_info(holes=True, uffd=True):
    """qemu_guard_info host_facts=false on a target (the patched 7.2 revision 2 binary, kernel 6.18)."""
    return {"changed": False, "binary": {"path": "/usr/bin/qemu-system-x86_64", "exists": True, "guard": True,
                                         "poison_holes": holes, "version": "7.2.22"},
            "uffd_poison": uffd, "uffd_poison_detail": "UFFDIO_API granted UFFD_FEATURE_POISON"}


def holes_poison(statuses, **fields):
    result = poison(statuses)
    for vm in result["vms"]:
        if vm["status"] == "poisoned":
            vm.update({"binary_poison_holes": True, "qemu_hwpoison": [HOLE], "qemu_hwpoison_problem": None,
                       "holes_unknown_to_qemu": [],
                       "poisoned_pages": [{"hva": "0x7f6f8a000000", "source": "pte_marker_poisoned"}]})
            vm.update(fields)
    return result


def plan_holes(statuses, holes_facts, **fields):
    req = request(evacuate_poisoned_vm_policy="migrate_with_holes")
    result = holes_poison(statuses, **fields)
    gated = gate.evaluate(result, operation="live_migration", on_poisoned="skip", on_unknown="skip")
    targets = {"hv2": capacity(), "hv3": capacity()}
    return req, evplan.build_plan(req, capacity([domain(n) for n in statuses]), targets, result, gated,
                                  holes_facts=holes_facts)


def test_decide_action_sends_a_poisoned_vm_live():
    action, reason = evplan.decide_action("poisoned", False, "migrate_with_holes", "leave")
    assert action == evplan.ACTION_LIVE and "holes carried" in reason


def test_poisoned_vm_goes_to_the_target_that_qualifies_and_the_plan_says_why_not_the_other():
    req, plan = plan_holes({"bad": "poisoned", "ok": "clean"},
                           {"hv2": guard_info(uffd=False), "hv3": guard_info()})
    vm = {v["name"]: v for v in plan["vms"]}["bad"]
    assert (vm["action"], vm["target"], vm["with_holes"]) == (evplan.ACTION_LIVE, "hv3", True)
    assert vm["target_facts"] == {"name": "hv3", "poison_holes": True, "uffd_poison": True}
    assert "poison_entry" not in vm
    hv2, hv3 = plan["holes_targets"]
    assert hv3["qualifies"] is True and hv2["qualifies"] is False
    assert hv2["reasons"] == [gate.holes_blockers({"binary_poison_holes": True, "holes_unknown_to_qemu": []},
                                                  {"name": "hv2", "poison_holes": True, "uffd_poison": False})[0]]
    text = "\n".join(evplan.render_plan(plan, req))
    assert "hv3 qualifies" in text and "hv2 does not qualify: hv2's kernel has no UFFDIO_POISON" in text
    json.dumps(plan)


def test_no_qualifying_target_leaves_it_with_every_reason_and_it_counts_as_stayed():
    req, plan = plan_holes({"bad": "poisoned"}, {"hv2": guard_info(holes=False), "hv3": {"unreachable": True, "msg": "ssh"}})
    vm = plan["vms"][0]
    assert vm["action"] == evplan.ACTION_LEAVE and vm["no_room"] is True and vm["target"] is None
    assert "hv2's QEMU does not carry the x-poison-holes" in vm["reason"]
    assert "its QEMU and kernel were not read (qemu_guard_info: ssh)" in vm["reason"]
    staying = evplan.left_without_consent(req, [{"name": "bad", "status": evplan.ST_STAYED, "poison_status": "poisoned",
                                                 "reason": vm["reason"]}])
    assert staying and "should have moved" in staying[0]["why"]


def test_without_target_facts_nothing_qualifies():
    _req, plan = plan_holes({"bad": "poisoned"}, None)
    assert plan["vms"][0]["action"] == evplan.ACTION_LEAVE
    assert all(not t["qualifies"] for t in plan["holes_targets"])


def test_a_hole_qemu_does_not_list_keeps_the_vm_whatever_the_targets():
    _req, plan = plan_holes({"bad": "poisoned"}, {"hv2": guard_info(), "hv3": guard_info()},
                            holes_unknown_to_qemu=["0x7f6f8a000000"])
    vm = plan["vms"][0]
    assert vm["action"] == evplan.ACTION_LEAVE and vm["planned_action"] == evplan.ACTION_LIVE
    assert vm["reason"].startswith(UPSTREAM_REFUSAL) and "not in QEMU's own poison list" in vm["reason"]


def test_other_policies_do_not_read_the_target_facts():
    req = request(evacuate_poisoned_vm_policy="cold_migrate")
    result = holes_poison({"bad": "poisoned"})
    gated = gate.evaluate(result, operation="live_migration", on_poisoned="skip", on_unknown="skip")
    plan = evplan.build_plan(req, capacity([domain("bad")]), {"hv2": capacity(), "hv3": capacity()}, result, gated,
                             holes_facts={"hv2": guard_info()})
    assert plan["holes_targets"] is None and plan["vms"][0]["action"] == evplan.ACTION_COLD
    assert "with_holes" not in plan["vms"][0]


def test_report_records_the_holes_carried():
    req, plan = plan_holes({"bad": "poisoned"}, {"hv2": guard_info(), "hv3": guard_info()})
    vm = plan["vms"][0]
    carried = [dict(HOLE, hva=0x7F1122000000)]
    migrated = {"changed": True, "migrated": True, "running_on": "destination", "failure": None,
                "duration_seconds": 1.2, "holes_carried": carried, "holes_expected": [HOLE],
                "poison_check": {"status": "poisoned", "with_holes": True}}
    outcome = evreport.vm_outcome(vm, {"migrate": migrated})
    assert outcome["result"] == "moved" and outcome["holes_carried"] == carried
    target = vm["target"]
    post = states(hv1=[], **{target: [domain("bad")], ("hv3" if target == "hv2" else "hv2"): []})
    records = evreport.verify(plan, [outcome], post)
    report = evreport.build_report(req, plan, [outcome], records, RUN)
    [entry] = report["vms"]
    assert entry["status"] == evplan.ST_MIGRATED and entry["with_holes"] is True
    assert entry["holes_carried"] == carried and report["failed"] is False
    text = "\n".join(evreport.render_report(report))
    assert "poisoned pages carried as holes" in text and "pc.ram+0x1000000 (gpa 0x1000000)" in text


# poison_info on the target after the move (the playbook's "Read the carried holes on the
# target"): the carried page is a POISONED PTE marker there, as the hypervisor lab's
# tests/integration/test_hvlab_poison_holes.py reads it, and known to the target's QEMU.
def _target_scan(source="pte_marker_poisoned", hva="0x7f6f8a000000", unknown=None):
    """poison_info on the target: the carried page at the target QEMU's hva (HOLE's)."""
    return {"changed": False, "vms": [{"name": "bad", "status": "poisoned",
                                       "poisoned_pages": [{"hva": hva, "pfn": None, "gpa": None, "source": source}],
                                       "holes_unknown_to_qemu": [] if unknown is None else unknown}]}


def _moved_with(check):
    req, plan = plan_holes({"bad": "poisoned"}, {"hv2": guard_info(), "hv3": guard_info()})
    migrated = {"changed": True, "migrated": True, "running_on": "destination", "failure": None,
                "duration_seconds": 1.2, "holes_carried": [HOLE], "holes_expected": [HOLE]}
    return req, plan, evreport.vm_outcome(plan["vms"][0], {"migrate": migrated, "holes_check": check})


def test_holes_verified_on_the_target():
    req, plan, outcome = _moved_with(_target_scan())
    assert outcome["holes_verified"] is True
    assert any("POISONED PTE markers on the target" in step for step in outcome["steps"])
    target = plan["vms"][0]["target"]
    post = states(hv1=[], **{target: [domain("bad")], ("hv3" if target == "hv2" else "hv2"): []})
    report = evreport.build_report(req, plan, [outcome], evreport.verify(plan, [outcome], post), RUN)
    assert report["vms"][0]["holes_verified"] is True
    assert "on the target: POISONED PTE markers at those addresses" in "\n".join(evreport.render_report(report))


def test_a_carried_page_that_is_not_a_marker_is_not_verified():
    """What a destination that filled the page (zeros) instead of poisoning it would show."""
    assert _moved_with(_target_scan(source="hwpoison"))[2]["holes_verified"] is False
    assert _moved_with(_target_scan(hva="0x7f6f8a001000"))[2]["holes_verified"] is False
    assert _moved_with({"changed": False, "vms": []})[2]["holes_verified"] is False


def test_the_reason_names_each_carried_page_without_a_marker():
    """Two carried pages, one of them without an address in the target QEMU: both named by guest address."""
    carried = [dict(HOLE, hva="0x7f6f8a000000", gpa="0x1000000"), dict(HOLE, hva=None, gpa=0x2000000),
               dict(HOLE, hva=None, gpa=0x3000000)]
    ok, why = evreport.holes_on_target("bad", carried, _target_scan(hva="0x7f6f8a001000"))
    assert ok is False
    assert "0x1000000" in why and "0x2000000" in why and "0x3000000" in why


def test_a_hole_the_target_qemu_does_not_list_is_not_verified():
    outcome = _moved_with(_target_scan(unknown=["0x7f1122001000"]))[2]
    assert outcome["holes_verified"] is False
    assert any("does not list every hole" in step for step in outcome["steps"])


def test_no_target_scan_is_not_checked():
    assert _moved_with({"skipped": True})[2]["holes_verified"] is None
    outcome = _moved_with({"failed": True, "msg": "no libvirt"})[2]
    assert outcome["holes_verified"] is None and any("no libvirt" in step for step in outcome["steps"])
