# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The migration_gate decision table, over every combination of status, operation and policy.

The expected outcomes below are written out row by row (not computed), so a change to the rule
in ``gate.decide`` has to be made here too, on purpose. The poison_info results used are shaped
like the shared result contract (team brief: ``vms`` entries with name, uuid, status, evidence,
migration_guard, reasons).
"""

from __future__ import annotations

import itertools

import pytest

from ansible_collections.kvm_ras.poison_guard.plugins.module_utils import gate
from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.messages import UPSTREAM_REFUSAL

OPERATIONS = ["live_migration", "save", "memory_snapshot", "dump"]
STATUSES = ["poisoned", "clean", "unknown"]
ON_POISONED = ["fail", "skip"]
ON_UNKNOWN = ["fail", "skip", "allow"]

# (status, on_poisoned, on_unknown) -> (decision, task fails, warning expected)
EXPECTED = {
    ("poisoned", "fail", "fail"): ("block", True, False),
    ("poisoned", "fail", "skip"): ("block", True, False),
    ("poisoned", "fail", "allow"): ("block", True, False),
    ("poisoned", "skip", "fail"): ("block", False, False),
    ("poisoned", "skip", "skip"): ("block", False, False),
    ("poisoned", "skip", "allow"): ("block", False, False),
    ("clean", "fail", "fail"): ("allow", False, False),
    ("clean", "fail", "skip"): ("allow", False, False),
    ("clean", "fail", "allow"): ("allow", False, False),
    ("clean", "skip", "fail"): ("allow", False, False),
    ("clean", "skip", "skip"): ("allow", False, False),
    ("clean", "skip", "allow"): ("allow", False, False),
    ("unknown", "fail", "fail"): ("block", True, False),
    ("unknown", "fail", "skip"): ("block", False, False),
    ("unknown", "fail", "allow"): ("allow", False, True),
    ("unknown", "skip", "fail"): ("block", True, False),
    ("unknown", "skip", "skip"): ("block", False, False),
    ("unknown", "skip", "allow"): ("allow", False, True),
}

# A VM asked for but absent from the poison_info result: (on_poisoned, on_unknown) -> fails.
# Always blocked: nothing was inspected, so even on_unknown=allow does not let it through.
EXPECTED_MISSING = {
    ("fail", "fail"): True,
    ("fail", "skip"): False,
    ("fail", "allow"): True,
    ("skip", "fail"): True,
    ("skip", "skip"): False,
    ("skip", "allow"): True,
}


def test_tables_cover_every_combination():
    assert set(EXPECTED) == set(itertools.product(STATUSES, ON_POISONED, ON_UNKNOWN))
    assert set(EXPECTED_MISSING) == set(itertools.product(ON_POISONED, ON_UNKNOWN))
    assert list(gate.OPERATIONS) == OPERATIONS
    assert list(gate.STATUSES) == STATUSES
    # migrate_with_holes has its own table (test_gate_holes.py): it depends on the VM's and
    # the target's facts, not on the status alone
    assert list(gate.ON_POISONED) == ON_POISONED + ["migrate_with_holes"]
    assert list(gate.ON_UNKNOWN) == ON_UNKNOWN


@pytest.mark.parametrize(
    "status,operation,on_poisoned,on_unknown",
    list(itertools.product(STATUSES, OPERATIONS, ON_POISONED, ON_UNKNOWN)),
)
def test_decide_full_product(status, operation, on_poisoned, on_unknown):
    decision, fails, warns = EXPECTED[(status, on_poisoned, on_unknown)]
    out = gate.decide(status, operation, on_poisoned, on_unknown)
    assert out["decision"] == decision
    assert out["fails"] is fails
    assert bool(out["warning"]) is warns
    assert out["status"] == status
    assert out["operation_note"] == gate.OPERATION_NOTES[operation]
    if status == "poisoned":
        assert out["reason"] == UPSTREAM_REFUSAL
    else:
        assert out["reason"] != UPSTREAM_REFUSAL


@pytest.mark.parametrize(
    "operation,on_poisoned,on_unknown",
    list(itertools.product(OPERATIONS, ON_POISONED, ON_UNKNOWN)),
)
def test_decide_missing_vm_full_product(operation, on_poisoned, on_unknown):
    out = gate.decide(None, operation, on_poisoned, on_unknown, missing=True)
    assert out["decision"] == "block"
    assert out["status"] == "unknown"
    assert out["fails"] is EXPECTED_MISSING[(on_poisoned, on_unknown)]
    assert "not in the poison_info result" in out["reason"]


@pytest.mark.parametrize(
    "status,operation,on_poisoned,on_unknown",
    list(itertools.product(STATUSES, OPERATIONS, ON_POISONED, ON_UNKNOWN)),
)
def test_evaluate_full_product(status, operation, on_poisoned, on_unknown):
    """The same table through evaluate(): lists, failure and message for one VM next to a clean one."""
    decision, fails, warns = EXPECTED[(status, on_poisoned, on_unknown)]
    result = {
        "changed": False,
        "vms": [
            {"name": "probe vm", "uuid": "11111111-2222-3333-4444-555555555555", "status": status,
             "evidence": [{"source": "pagemap", "detail": "hwpoison entry at hva 0x7f0000001000"}]
             if status == "poisoned" else [],
             "reasons": ["pagemap not readable"] if status == "unknown" else [],
             "migration_guard": False},
            {"name": "bystander", "uuid": None, "status": "clean", "evidence": [], "reasons": [],
             "migration_guard": True},
        ],
    }
    out = gate.evaluate(result, None, operation, on_poisoned, on_unknown)
    assert out["failed"] is fails
    assert "bystander" in out["allowed"]
    assert ("probe vm" in out["allowed"]) is (decision == "allow")
    blocked = {b["name"]: b for b in out["blocked"]}
    assert ("probe vm" in blocked) is (decision == "block")
    assert "bystander" not in blocked
    assert out["unguarded"] == ["probe vm"]
    assert bool(out["warnings"]) is warns
    by_name = {d["name"]: d for d in out["decisions"]}
    assert by_name["probe vm"]["operation"] == operation
    assert by_name["probe vm"]["operation_note"] == gate.OPERATION_NOTES[operation]
    if decision == "block":
        assert "'probe vm' (%s)" % status in out["msg"]
        if status == "poisoned":
            assert blocked["probe vm"]["reason"] == UPSTREAM_REFUSAL
            assert blocked["probe vm"]["evidence"] == result["vms"][0]["evidence"]
        else:
            assert {"source": "poison_info", "detail": "pagemap not readable"} in blocked["probe vm"]["evidence"]
    if warns:
        assert "migration_guard false" in out["warnings"][0]


def test_every_operation_has_a_note_that_names_its_qemu_path():
    notes = gate.OPERATION_NOTES
    assert set(notes) == set(OPERATIONS)
    assert "migrate" in notes["live_migration"] and "9.0" in notes["live_migration"]
    assert "migrate" in notes["save"]
    assert "savevm" in notes["memory_snapshot"]
    assert "dump-guest-memory" in notes["dump"]


def test_fail_message_lists_every_blocked_vm():
    result = {"vms": [
        {"name": "a", "status": "poisoned", "migration_guard": True},
        {"name": "b", "status": "unknown", "reasons": ["process vanished"], "migration_guard": None},
        {"name": "c", "status": "clean", "migration_guard": True},
    ]}
    out = gate.evaluate(result, ["a", "b", "c", "ghost"], "dump", "fail", "fail")
    assert out["failed"] is True
    assert out["allowed"] == ["c"]
    assert [b["name"] for b in out["blocked"]] == ["a", "b", "ghost"]
    for name in ("'a' (poisoned): " + UPSTREAM_REFUSAL, "'b' (unknown)", "'ghost' (unknown)"):
        assert name in out["msg"]
    assert out["msg"].startswith("dump blocked for 3 VM(s)")
    assert out["unguarded"] == ["b"]


def test_skip_message_names_skipped_vms_and_does_not_fail():
    result = {"vms": [{"name": "a", "status": "poisoned"}, {"name": "c", "status": "clean"}]}
    out = gate.evaluate(result, None, "live_migration", "skip", "fail")
    assert out["failed"] is False
    assert out["msg"] == (
        "live_migration allowed for 1 VM(s), skipped 1 blocked VM(s): 'a' (poisoned): " + UPSTREAM_REFUSAL)


def test_vms_match_by_uuid_and_report_the_name():
    uuid = "0f8fad5b-d9cb-469f-a165-70867728950e"
    result = {"vms": [{"name": "web 01 $(touch .pwned)", "uuid": uuid, "status": "clean",
                       "migration_guard": True}]}
    out = gate.evaluate(result, [uuid.upper()])
    assert out["allowed"] == ["web 01 $(touch .pwned)"]
    assert out["unguarded"] == []


def test_duplicate_requests_are_decided_once():
    result = {"vms": [{"name": "a", "status": "clean"}]}
    out = gate.evaluate(result, ["a", "a"])
    assert out["allowed"] == ["a"]
    assert len(out["decisions"]) == 1


def test_unrecognised_status_is_treated_as_unknown():
    result = {"vms": [{"name": "a", "status": "healthy"}]}
    out = gate.evaluate(result)
    assert out["failed"] is True
    assert out["blocked"][0]["status"] == "unknown"
    assert "'healthy'" in out["blocked"][0]["reason"]


def test_empty_result_allows_nothing_and_does_not_fail():
    out = gate.evaluate({"vms": []})
    assert out == {**out, "allowed": [], "blocked": [], "failed": False}
    assert out["msg"] == "live_migration allowed for 0 VM(s)"


@pytest.mark.parametrize("bad,needle", [
    ("not a dict", "must be a poison_info result"),
    ({"changed": False}, "no 'vms' list"),
    ({"vms": [{"status": "clean"}]}, "vms[0] has no 'name'"),
    ({"failed": True, "msg": "permission denied", "vms": []}, "failed poison_info run (permission denied)"),
    ({"skipped": True}, "skipped task"),
])
def test_bad_poison_result_is_rejected_with_the_fix(bad, needle):
    with pytest.raises(gate.GateInputError) as err:
        gate.evaluate(bad)
    assert needle in str(err.value)


@pytest.mark.parametrize("kwargs,needle", [
    ({"operation": "snapshot"}, "operation must be one of live_migration, save, memory_snapshot, dump"),
    ({"on_poisoned": "allow"}, "on_poisoned must be one of fail, skip"),
    ({"on_unknown": "ignore"}, "on_unknown must be one of fail, skip, allow"),
    ({"vms": "web01"}, "vms must be a list"),
    ({"vms": [""]}, "non-empty"),
])
def test_bad_options_are_rejected(kwargs, needle):
    with pytest.raises(gate.GateInputError) as err:
        gate.evaluate({"vms": []}, **kwargs)
    assert needle in str(err.value)


# -- issue 13: exact identity ----------------------------------------------------------------------
def _twins():
    """Two QEMU processes both named web01 (one clean, one poisoned), as poison_info reports a
    stray QEMU started by hand next to libvirt's, plus a unique db01."""
    return {"vms": [
        {"name": "web01", "uuid": "11111111-2222-4333-8444-555555555555", "pid": 1000,
         "start_ticks": 10000, "status": "clean", "evidence": [], "migration_guard": True,
         "reasons": []},
        {"name": "web01", "uuid": "11111111-2222-4333-8444-555555555556", "pid": 1500,
         "start_ticks": 20000, "status": "poisoned", "evidence": [], "migration_guard": False,
         "reasons": []},
        {"name": "db01", "uuid": None, "pid": 1001, "start_ticks": 10001, "status": "clean",
         "evidence": [], "migration_guard": True, "reasons": []},
    ]}


@pytest.mark.parametrize("on_unknown", ON_UNKNOWN)
def test_a_name_matching_two_vms_is_blocked_and_says_so(on_unknown):
    out = gate.evaluate(_twins(), ["web01", "db01"], on_poisoned="skip", on_unknown=on_unknown)
    assert out["allowed"] == ["db01"]
    [blocked] = out["blocked"]
    assert blocked["name"] == "web01" and blocked["status"] == "unknown"
    assert blocked["reason"].startswith("2 VMs in the poison_info result answer to 'web01'")
    assert "pid 1000" in blocked["reason"] and "pid 1500" in blocked["reason"]
    assert out["failed"] is (on_unknown != "skip")


def test_a_uuid_of_a_vm_whose_name_is_shared_is_blocked_too():
    out = gate.evaluate(_twins(), ["11111111-2222-4333-8444-555555555555"], on_unknown="allow")
    assert out["allowed"] == []
    assert "answer to 'web01'" in out["blocked"][0]["reason"]


def test_without_vms_every_vm_is_decided_on_its_own_and_twins_are_blocked():
    out = gate.evaluate(_twins(), None, on_poisoned="skip", on_unknown="skip")
    assert out["allowed"] == ["db01"]
    assert [b["name"] for b in out["blocked"]] == ["web01", "web01"]
    assert [d["pid"] for d in out["decisions"]] == [1000, 1500, 1001]
    assert [d["start_ticks"] for d in out["decisions"]] == [10000, 20000, 10001]


@pytest.mark.parametrize("on_unknown", ON_UNKNOWN)
def test_a_vm_absent_from_the_result_is_never_allowed(on_unknown):
    out = gate.evaluate(_twins(), ["ghost"], on_unknown=on_unknown)
    assert out["allowed"] == []
    assert out["decisions"][0]["in_poison_info"] is False


def test_twins_with_a_poisoned_one_fail_under_on_poisoned_fail_even_with_on_unknown_skip():
    out = gate.evaluate(_twins(), ["web01"], on_poisoned="fail", on_unknown="skip")
    assert out["allowed"] == [] and out["failed"] is True
    assert [e["detail"] for e in out["blocked"][0]["evidence"]] == [
        "web01: clean (pid 1000, uuid 11111111-2222-4333-8444-555555555555)",
        "web01: poisoned (pid 1500, uuid 11111111-2222-4333-8444-555555555556)"]
