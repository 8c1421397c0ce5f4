# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""evacuate_host.yml keeps going when the source stops answering in the middle of a run
(issue 13, item 7), checked on the playbook's own structure.

In Ansible, a task whose host (here a per-VM host, delegating to the source) is unreachable
removes that host from the play, and when every host of a play is gone the whole playbook
ends: the verify play, the report and the lock release never run. So every task that
reaches the source must ignore an unreachable source, the lock release must not end the
play, and a final task must fail with what stays and how to finish. The molecule scenario
(tests/test_evacuate.py, "source unreachable mid-run") runs it for real.
"""

from __future__ import annotations

from pathlib import Path

import yaml

PLAYBOOK = Path(__file__).resolve().parents[3] / "playbooks" / "evacuate_host.yml"


def plays():
    return {play["name"]: play for play in yaml.safe_load(PLAYBOOK.read_text())}


def all_tasks(tasks):
    for task in tasks or []:
        yield task
        for key in ("block", "rescue", "always"):
            yield from all_tasks(task.get(key))


def module_of(task):
    return next((k for k in task if k.startswith(("kvm_ras.", "ansible."))), None)


def test_every_move_step_that_reaches_the_source_survives_an_unreachable_source():
    move = plays()["Move the VMs, at most evacuate_max_parallel at once"]
    delegated = [t for t in move["tasks"] if t.get("delegate_to") == "{{ evacuation_source }}"]
    assert len(delegated) >= 6, [t["name"] for t in delegated]
    for task in delegated:
        assert task.get("ignore_unreachable") is True, task["name"]
        assert task.get("ignore_errors") is True, task["name"]


def test_every_operation_is_journaled_before_it_starts_and_only_then_runs():
    move = plays()["Move the VMs, at most evacuate_max_parallel at once"]
    names = [module_of(t) for t in move["tasks"]]
    begin = names.index("kvm_ras.poison_guard.evacuation_journal")
    for acting in ("kvm_ras.poison_guard.guest_power", "kvm_ras.poison_guard.live_migrate",
                   "kvm_ras.poison_guard.cold_migrate"):
        index = names.index(acting)
        assert index > begin, acting
        when = move["tasks"][index]["when"]
        assert any("evacuation_journal is succeeded" in w for w in when), acting
    end = len(names) - 1 - names[::-1].index("kvm_ras.poison_guard.evacuation_journal")
    assert move["tasks"][end]["kvm_ras.poison_guard.evacuation_journal"]["state"] == "end"
    assert end > names.index("kvm_ras.poison_guard.cold_migrate")


def test_the_plan_resumes_the_journal_right_after_the_lock():
    plan = plays()["Plan the evacuation"]
    names = [module_of(t) for t in all_tasks(plan["tasks"])]
    lock = names.index("kvm_ras.poison_guard.evacuation_lock")
    assert names[lock + 1] == "kvm_ras.poison_guard.evacuation_journal"
    resume = list(all_tasks(plan["tasks"]))[lock + 1]
    assert resume["kvm_ras.poison_guard.evacuation_journal"]["state"] == "resume"


def test_an_unreachable_source_at_the_end_releases_nothing_silently_and_fails_with_how_to_finish():
    verify = plays()["Verify every VM and report"]
    tasks = list(all_tasks(verify["tasks"]))
    release = [t for t in tasks if module_of(t) == "kvm_ras.poison_guard.evacuation_lock"]
    assert release and release[0].get("ignore_unreachable") is True and release[0].get("ignore_errors") is True
    assert release[0].get("register") == "evacuation_lock_release"
    fails = [t for t in verify["tasks"] if module_of(t) == "ansible.builtin.fail"]
    first = fails[0]
    assert "evacuation_lock_release is failed or evacuation_lock_release is unreachable" in first["when"]
    for words in ("evacuation lock", "journal", "evacuate_break_lock=true", "not verified"):
        assert words in first["ansible.builtin.fail"]["msg"], words
    report = [t for t in tasks if module_of(t) == "kvm_ras.poison_guard.evacuation_report"]
    assert all("resumed" in t["kvm_ras.poison_guard.evacuation_report"] for t in report if
               t["kvm_ras.poison_guard.evacuation_report"].get("write", True) is not False)
