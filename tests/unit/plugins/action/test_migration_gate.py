# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The migration_gate action plugin's orchestration, with a fake ``_execute_module``.

What is faked: only the remote run of kvm_ras.poison_guard.poison_info (``_execute_module``),
whose results below follow the shared poison_info result contract. Everything else is the real
ActionBase (argument validation, check-mode handling) of the installed ansible-core. The real
playbook run of the gate is covered by molecule/migrate and the poison-lab integration test.
"""

from __future__ import annotations

from unittest.mock import MagicMock

import pytest

from ansible.errors import AnsibleActionFail
from ansible.parsing.dataloader import DataLoader
from ansible.playbook.play_context import PlayContext
from ansible.playbook.task import Task

from ansible_collections.kvm_ras.poison_guard.plugins.action import migration_gate as action_mod
from ansible_collections.kvm_ras.poison_guard.plugins.module_utils import gate
from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.messages import UPSTREAM_REFUSAL

POISON_RESULT = {
    "changed": False,
    "vms": [
        {"name": "web01", "uuid": "8f1e0d3c-3a4b-4c5d-9e6f-0a1b2c3d4e5f", "pid": 4242, "status": "clean",
         "poisoned_pages": [], "evidence": [], "migration_guard": True, "reasons": []},
        {"name": "db 02 $(touch .pwned)", "uuid": None, "pid": 4343, "status": "poisoned",
         "poisoned_pages": [{"hva": "0x7f3a2c5f1000", "pfn": "0x1ea8ba", "gpa": None, "source": "pagemap"}],
         "evidence": [{"source": "pagemap", "detail": "hwpoison swap entry at hva 0x7f3a2c5f1000, pfn 0x1ea8ba"}],
         "migration_guard": False, "reasons": []},
        {"name": "cache03", "uuid": None, "pid": 4444, "status": "unknown", "poisoned_pages": [],
         "evidence": [], "migration_guard": None, "reasons": ["/proc/4444/pagemap: permission denied"]},
    ],
    "poisoned_vms": ["db 02 $(touch .pwned)"],
    "unknown_vms": ["cache03"],
    "clean_vms": ["web01"],
    "origin": {"hostname": "hv1", "boot_id": "4c2f6b8e-1d3a-4e5f-9a7b-0c1d2e3f4a5b",
               "uptime_seconds": 5000.25, "scanned_at": 1764055000.25,
               "scanned_at_iso": "2025-11-25T07:16:40Z"},
}
# What `cat /proc/sys/kernel/random/boot_id /proc/uptime /proc/sys/kernel/hostname` prints on
# the host of POISON_RESULT 30 s after its scan (formats as the kernel prints them).
HOST_NOW = "4c2f6b8e-1d3a-4e5f-9a7b-0c1d2e3f4a5b\n5030.25 9540.11\nhv1\n"


def make_action(args, check_mode=False, execute_result=None, host_now=HOST_NOW):
    task = Task()
    task.action = "kvm_ras.poison_guard.migration_gate"
    task.args = args
    task.check_mode = check_mode
    play_context = PlayContext()
    play_context.check_mode = check_mode
    connection = MagicMock()
    connection._shell.tmpdir = None
    action = action_mod.ActionModule(task, connection, play_context, loader=DataLoader(), templar=None,
                                     shared_loader_obj=None)
    calls = []

    def fake_execute_module(module_name=None, module_args=None, task_vars=None, **kwargs):
        calls.append({"module_name": module_name, "module_args": module_args, "kwargs": kwargs})
        return dict(execute_result if execute_result is not None else POISON_RESULT)

    action._execute_module = fake_execute_module

    def fake_low_level(cmd, sudoable=True, **kwargs):
        action.raw_calls.append(cmd)
        return {"rc": 0, "stdout": host_now, "stderr": ""}

    action.raw_calls = []
    action._low_level_execute_command = fake_low_level
    return action, calls


def test_argument_spec_comes_from_the_documented_options_and_matches_the_decision_table():
    spec = action_mod.ActionModule.argument_spec
    assert set(spec) == {"vms", "operation", "on_poisoned", "on_unknown", "poison_info", "max_result_age",
                         "target_facts"}
    assert spec["target_facts"] == {"type": "dict"}
    assert spec["max_result_age"] == {"type": "int", "default": gate.DEFAULT_MAX_RESULT_AGE}
    assert spec["operation"]["choices"] == list(gate.OPERATIONS)
    assert spec["on_poisoned"]["choices"] == list(gate.ON_POISONED)
    assert spec["on_unknown"]["choices"] == list(gate.ON_UNKNOWN)
    assert spec["operation"]["default"] == "live_migration"
    assert spec["on_poisoned"]["default"] == "fail"
    assert spec["on_unknown"]["default"] == "fail"
    assert spec["vms"] == {"type": "list", "elements": "str"}
    assert spec["poison_info"] == {"type": "dict"}


def test_gathers_poison_info_on_the_host_with_the_vms_option_and_fails_on_poisoned():
    action, calls = make_action({"vms": ["web01", "db 02 $(touch .pwned)"]})
    result = action.run(task_vars={})
    assert calls == [{"module_name": "kvm_ras.poison_guard.poison_info",
                      "module_args": {"vms": ["web01", "db 02 $(touch .pwned)"]}, "kwargs": {}}]
    assert result["failed"] is True
    assert result["changed"] is False
    assert result["allowed"] == ["web01"]
    assert result["blocked"] == [{
        "name": "db 02 $(touch .pwned)", "status": "poisoned", "reason": UPSTREAM_REFUSAL,
        "evidence": POISON_RESULT["vms"][1]["evidence"]}]
    assert result["unguarded"] == ["db 02 $(touch .pwned)"]
    assert result["msg"] == ("live_migration blocked for 1 VM(s): 'db 02 $(touch .pwned)' (poisoned): "
                             + UPSTREAM_REFUSAL)
    assert result["poison_info_gathered"] is True
    assert result["poison_info"]["vms"] == POISON_RESULT["vms"]


def test_without_vms_the_module_is_called_without_vms_and_every_vm_is_decided():
    action, calls = make_action({"on_poisoned": "skip", "on_unknown": "skip"})
    result = action.run(task_vars={})
    assert calls[0]["module_args"] == {}
    assert result.get("failed") is False
    assert result["allowed"] == ["web01"]
    assert [b["name"] for b in result["blocked"]] == ["db 02 $(touch .pwned)", "cache03"]
    assert result["msg"].startswith("live_migration allowed for 1 VM(s), skipped 2 blocked VM(s): ")
    assert "'cache03' (unknown)" in result["msg"]
    assert {"source": "poison_info", "detail": "/proc/4444/pagemap: permission denied"} in result["blocked"][1]["evidence"]


def test_fail_message_lists_every_blocked_vm():
    action, _calls = make_action({"operation": "save"})
    result = action.run(task_vars={})
    assert result["failed"] is True
    assert result["msg"] == (
        "save blocked for 2 VM(s): 'db 02 $(touch .pwned)' (poisoned): " + UPSTREAM_REFUSAL
        + "; 'cache03' (unknown): poison status unknown: its guest memory could not be fully inspected")


def test_given_poison_info_is_used_and_the_module_is_not_run():
    action, calls = make_action({"poison_info": POISON_RESULT, "vms": ["web01"]})
    result = action.run(task_vars={})
    assert calls == []
    assert result["allowed"] == ["web01"]
    assert result["failed"] is False
    assert result["poison_info_gathered"] is False
    assert "poison_info" not in result


def test_allow_unknown_is_a_warning_naming_the_unguarded_qemu():
    action, _calls = make_action({"poison_info": POISON_RESULT, "vms": ["cache03"], "on_unknown": "allow"})
    result = action.run(task_vars={})
    assert result["allowed"] == ["cache03"]
    assert result["failed"] is False
    assert len(result["warnings"]) == 1
    assert result["warnings"][0].startswith("cache03: allowed by on_unknown=allow")
    assert "migration_guard unknown" in result["warnings"][0]


@pytest.mark.parametrize("check_mode", [False, True])
def test_check_mode_gives_the_same_decision_and_changes_nothing(check_mode):
    action, calls = make_action({"on_poisoned": "skip", "on_unknown": "skip"}, check_mode=check_mode)
    result = action.run(task_vars={})
    assert result["changed"] is False
    assert result["allowed"] == ["web01"]
    assert len(result["blocked"]) == 2
    assert len(calls) == 1  # poison_info is read-only: it runs in check mode too


def test_missing_vm_is_blocked_as_unknown():
    action, _calls = make_action({"poison_info": POISON_RESULT, "vms": ["web01", "ghost"], "on_unknown": "allow"})
    result = action.run(task_vars={})
    assert result["failed"] is True
    assert result["allowed"] == ["web01"]
    assert result["blocked"][0]["name"] == "ghost"
    assert result["blocked"][0]["status"] == "unknown"
    assert "'ghost' (unknown): not in the poison_info result" in result["msg"]


@pytest.mark.parametrize("args,needle", [
    ({"bogus": 1}, "Unsupported parameters"),
    ({"operation": "savevm"}, "value of operation must be one of: live_migration, save, memory_snapshot, dump"),
    ({"on_poisoned": "allow"}, "value of on_poisoned must be one of: fail, skip, migrate_with_holes"),
    ({"on_poisoned": "migrate_with_holes"}, "needs its facts"),
    ({"on_poisoned": "migrate_with_holes", "operation": "dump",
      "target_facts": {"poison_holes": True, "uffd_poison": True}}, "live_migration only"),
    ({"on_unknown": "ignore"}, "value of on_unknown must be one of: fail, skip, allow"),
    ({"poison_info": "not a result"}, "poison_info"),
])
def test_bad_options_are_rejected_before_anything_runs(args, needle):
    action, calls = make_action(args)
    with pytest.raises(AnsibleActionFail) as err:
        action.run(task_vars={})
    assert needle in str(err.value)
    assert calls == []


def test_bad_poison_info_result_is_rejected_with_the_fix():
    action, calls = make_action({"poison_info": {"changed": False}})
    with pytest.raises(AnsibleActionFail) as err:
        action.run(task_vars={})
    assert "poison_info has no 'vms' list" in str(err.value)
    assert calls == []


def test_a_failed_registered_poison_info_result_is_rejected():
    action, _calls = make_action({"poison_info": {"failed": True, "msg": "must run as root", "vms": []}})
    with pytest.raises(AnsibleActionFail) as err:
        action.run(task_vars={})
    assert "failed poison_info run (must run as root)" in str(err.value)


def test_failing_poison_info_on_the_host_blocks_everything():
    action, _calls = make_action({}, execute_result={"failed": True, "msg": "libvirt: permission denied"})
    with pytest.raises(AnsibleActionFail) as err:
        action.run(task_vars={})
    text = str(err.value)
    assert "kvm_ras.poison_guard.poison_info failed on this host" in text
    assert "fail closed" in text and "libvirt: permission denied" in text
    assert err.value.result["allowed"] == []


# -- issue 13: the gate decides only on this host's own, fresh result -----------------------------
def test_result_of_this_host_and_boot_is_accepted_with_its_age():
    action, calls = make_action({"poison_info": POISON_RESULT, "vms": ["web01"]})
    result = action.run(task_vars={})
    assert result["allowed"] == ["web01"]
    assert result["poison_info_age_seconds"] == 30.0
    assert action.raw_calls == [action_mod.IDENTITY_COMMAND] and calls == []


def test_gathered_result_needs_no_identity_check():
    action, _calls = make_action({"vms": ["web01"]})
    action.run(task_vars={})
    assert action.raw_calls == []


@pytest.mark.parametrize("host_now,needle", [
    # another host: other boot id, other host name
    ("9d8c7b6a-5f4e-4d3c-8b2a-190817263544\n12.00 20.00\nhv2\n",
     "taken on another host (hv1, boot 4c2f6b8e-1d3a-4e5f-9a7b-0c1d2e3f4a5b), not on hv2"),
    # the same host rebooted since the scan
    ("9d8c7b6a-5f4e-4d3c-8b2a-190817263544\n12.00 20.00\nhv1\n",
     "taken on hv1 during another boot"),
    # 301 s after the scan
    ("4c2f6b8e-1d3a-4e5f-9a7b-0c1d2e3f4a5b\n5301.25 9540.11\nhv1\n",
     "is 301 s old"),
    # boot id not readable
    ("\n5030.25 9540.11\nhv1\n", "boot id of this host could not be read"),
])
def test_foreign_rebooted_or_stale_result_blocks_everything(host_now, needle):
    action, _calls = make_action({"poison_info": POISON_RESULT, "vms": ["web01"]}, host_now=host_now)
    with pytest.raises(AnsibleActionFail) as err:
        action.run(task_vars={})
    assert needle in str(err.value)
    assert "fail closed" in str(err.value)
    assert err.value.result["allowed"] == []


def test_max_result_age_zero_accepts_an_old_result_of_this_boot_only():
    old = "4c2f6b8e-1d3a-4e5f-9a7b-0c1d2e3f4a5b\n99999.00 1.00\nhv1\n"
    action, _calls = make_action({"poison_info": POISON_RESULT, "vms": ["web01"], "max_result_age": 0},
                                 host_now=old)
    assert action.run(task_vars={})["allowed"] == ["web01"]
    other_boot = "9d8c7b6a-5f4e-4d3c-8b2a-190817263544\n12.00 20.00\nhv1\n"
    action, _calls = make_action({"poison_info": POISON_RESULT, "vms": ["web01"], "max_result_age": 0},
                                 host_now=other_boot)
    with pytest.raises(AnsibleActionFail):
        action.run(task_vars={})


def test_result_without_origin_is_refused():
    legacy = {key: value for key, value in POISON_RESULT.items() if key != "origin"}
    action, _calls = make_action({"poison_info": legacy, "vms": ["web01"]})
    with pytest.raises(AnsibleActionFail) as err:
        action.run(task_vars={})
    assert "does not say which host and boot" in str(err.value)


def test_migrate_with_holes_allows_a_poisoned_vm_whose_holes_qemu_knows():
    """The gate rule of gate.holes_blockers through the plugin: the poisoned VM's QEMU carries
    x-poison-holes and lists its hole, the target qualifies."""
    poison = dict(POISON_RESULT, vms=[dict(POISON_RESULT["vms"][1], binary_poison_holes=True,
                                           holes_unknown_to_qemu=[], qemu_hwpoison=[{
                                               "block": "pc.ram", "offset": 0, "page-size": 4096,
                                               "hva": 0x7F3A2C5F1000}])])
    target = {"name": "hv2", "poison_holes": True, "uffd_poison": True}
    action, calls = make_action({"poison_info": poison, "on_poisoned": "migrate_with_holes",
                                 "target_facts": target})
    result = action.run(task_vars={})
    assert calls == [] and not result.get("failed")
    assert result["allowed"] == result["with_holes"] == ["db 02 $(touch .pwned)"]
    action, _calls = make_action({"poison_info": poison, "on_poisoned": "migrate_with_holes",
                                  "target_facts": dict(target, uffd_poison=False)})
    result = action.run(task_vars={})
    assert result["failed"] is True and result["with_holes"] == []
    assert "hv2's kernel has no UFFDIO_POISON" in result["msg"]
