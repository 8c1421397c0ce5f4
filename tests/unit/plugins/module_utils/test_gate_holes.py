# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""migration_gate's on_poisoned=migrate_with_holes (issue 19): a poisoned VM may be live-migrated
with its holes carried by QEMU's x-poison-holes capability only when every condition holds,
and each failed condition blocks with its own reason and fix.

The VM entries carry the fields poison_info reports (binary_poison_holes, qemu_hwpoison,
holes_unknown_to_qemu); the hole and QEMU list are the poison lab's (GPA 0x80000,
docs/poison-holes.md)."""

from __future__ import annotations

import itertools

import pytest

from ansible_collections.kvm_ras.poison_guard.plugins.module_utils import gate
from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.messages import UPSTREAM_REFUSAL

HVA = "0x7f0fa2a80000"
QEMU_LIST = [{"block": "pc.ram", "offset": 524288, "page-size": 4096, "gpa": 524288, "hva": 0x7F0FA2A80000}]
GOOD_TARGET = {"name": "hv2", "poison_holes": True, "uffd_poison": True}


def _entry(**over):
    entry = {"name": "vm1", "uuid": "u-1", "pid": 42, "status": "poisoned", "evidence": [],
             "migration_guard": True, "reasons": [], "qemu_binary": "/usr/bin/qemu-system-x86_64",
             "binary_poison_holes": True, "qemu_hwpoison": QEMU_LIST, "qemu_hwpoison_problem": None,
             "holes_unknown_to_qemu": [], "poisoned_pages": [{"hva": HVA, "source": "pte_marker_poisoned"}]}
    entry.update(over)
    return entry


def _result(*entries):
    return {"vms": list(entries), "origin": {"boot_id": "b"}}


def test_every_condition_holds_allows_with_holes():
    out = gate.evaluate(_result(_entry()), operation="live_migration", on_poisoned="migrate_with_holes",
                        target_facts=GOOD_TARGET)
    assert out["allowed"] == ["vm1"] and out["with_holes"] == ["vm1"] and not out["failed"]
    [decision] = out["decisions"]
    assert decision["with_holes"] is True and decision["status"] == "poisoned"
    assert "holes carried" in decision["reason"]


# Each condition on its own: (entry override, target override) -> words of its one reason.
SINGLE_FAILURES = [
    ({"binary_poison_holes": False}, {}, "VM's running QEMU binary (/usr/bin/qemu-system-x86_64) does not carry"),
    ({"binary_poison_holes": None}, {}, "could not be read to tell"),
    ({}, {"poison_holes": False}, "hv2's QEMU does not carry the x-poison-holes"),
    ({}, {"poison_holes": None}, "hv2's QEMU is not known to carry"),
    ({}, {"uffd_poison": False}, "hv2's kernel has no UFFDIO_POISON"),
    ({}, {"uffd_poison": None}, "hv2's kernel was not shown to have UFFDIO_POISON"),
    ({"holes_unknown_to_qemu": [HVA]}, {}, "poisoned page(s) at hva 0x7f0fa2a80000 are not in QEMU's own poison list"),
    ({"holes_unknown_to_qemu": None, "qemu_hwpoison": None,
      "qemu_hwpoison_problem": "libvirt said no"}, {}, "could not be compared with the holes poison_info found (libvirt said no)"),
]


@pytest.mark.parametrize("entry_over, target_over, words", SINGLE_FAILURES)
def test_each_failed_condition_blocks_with_its_own_reason(entry_over, target_over, words):
    target = dict(GOOD_TARGET, **target_over)
    blockers = gate.holes_blockers(_entry(**entry_over), target)
    assert len(blockers) == 1 and words in blockers[0], blockers
    out = gate.evaluate(_result(_entry(**entry_over)), on_poisoned="migrate_with_holes", target_facts=target)
    assert out["allowed"] == [] and out["with_holes"] == [] and out["failed"] is True
    [blocked] = out["blocked"]
    assert blocked["reason"].startswith(UPSTREAM_REFUSAL) and words in blocked["reason"]
    assert out["decisions"][0]["holes_blockers"] == blockers


def test_every_failed_condition_is_named_at_once():
    entry = _entry(binary_poison_holes=False, holes_unknown_to_qemu=[HVA])
    blockers = gate.holes_blockers(entry, {"poison_holes": False, "uffd_poison": None})
    assert len(blockers) == 4
    assert "the target's QEMU does not carry" in blockers[1]  # no name given: "the target"


def test_the_full_table_of_conditions():
    """All 2^4 combinations: allowed exactly when all four hold."""
    for source, target_q, kernel, known in itertools.product([True, False], repeat=4):
        entry = _entry(binary_poison_holes=source, holes_unknown_to_qemu=[] if known else [HVA])
        facts = {"poison_holes": target_q, "uffd_poison": kernel}
        out = gate.evaluate(_result(entry), on_poisoned="migrate_with_holes", target_facts=facts)
        assert (out["allowed"] == ["vm1"]) is all((source, target_q, kernel, known))
        assert len(gate.holes_blockers(entry, facts)) == [source, target_q, kernel, known].count(False)


def test_clean_and_unknown_vms_are_decided_as_before():
    result = _result(_entry(name="c", status="clean"), _entry(name="u", status="unknown", reasons=["no root"]))
    out = gate.evaluate(result, on_poisoned="migrate_with_holes", on_unknown="skip",
                        target_facts={"poison_holes": False, "uffd_poison": False})
    assert out["allowed"] == ["c"] and out["with_holes"] == []
    assert [b["name"] for b in out["blocked"]] == ["u"] and not out["failed"]


@pytest.mark.parametrize("facts, words", [
    (None, "needs its facts"),
    ({"poison_holes": True}, "no 'uffd_poison'"),
    ({"poison_holes": "yes", "uffd_poison": True}, "must be true, false or null"),
])
def test_target_facts_are_required_and_checked(facts, words):
    with pytest.raises(gate.GateInputError, match=words):
        gate.evaluate(_result(_entry()), on_poisoned="migrate_with_holes", target_facts=facts)


@pytest.mark.parametrize("operation", ["save", "memory_snapshot", "dump"])
def test_only_live_migration_can_carry_holes(operation):
    with pytest.raises(gate.GateInputError, match="live_migration only"):
        gate.evaluate(_result(_entry()), operation=operation, on_poisoned="migrate_with_holes",
                      target_facts=GOOD_TARGET)
    with pytest.raises(gate.GateInputError, match="live_migration only"):
        gate.decide("poisoned", operation, "migrate_with_holes")


def test_decide_without_checked_conditions_blocks():
    """Fail closed: a caller that did not check the conditions never gets an allow."""
    out = gate.decide("poisoned", "live_migration", "migrate_with_holes")
    assert out["decision"] == "block" and out["fails"] is True


def test_ambiguous_poisoned_vm_fails_the_task():
    out = gate.evaluate(_result(_entry(pid=1), _entry(pid=2)), on_poisoned="migrate_with_holes",
                        on_unknown="skip", target_facts=GOOD_TARGET)
    assert out["allowed"] == [] and out["failed"] is True
