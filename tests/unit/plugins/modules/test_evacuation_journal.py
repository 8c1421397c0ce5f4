# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""evacuation_journal: the journal of an evacuation's VM operations and the resume of a run
that died, against the libvirt stand-in (libvirt_standin.py). The lab test
(molecule/evacuate, "controller killed") kills a real run; these cover each state a dead run
can leave a VM in, which a kill cannot hit on purpose.

The rule (issue 13, item 7): every VM the dead run had in flight ends running exactly once:
left where it runs, started again where it is defined (the source first), never started
while a host that might run it cannot be asked.
"""

from __future__ import annotations

import json
import os
import stat

import pytest

from ansible.module_utils.testing import patch_module_args

import libvirt_standin as lv
from ansible_collections.kvm_ras.poison_guard.plugins.module_utils import journal
from ansible_collections.kvm_ras.poison_guard.plugins.modules import evacuation_journal

SRC, DST = "qemu:///system", "qemu+tcp://hv2/system"
NAME = "tick-1"
UUID = "6c0a8f2e-1111-4c55-9d1e-0a1b2c3d4e5f"
DEAD_RUN = "hv1-20260301T025901Z-5f2a3c"


@pytest.fixture(name="world")
def fixture_world(monkeypatch, tmp_path):
    world = lv.World()
    world.add(SRC)
    world.add(DST)
    monkeypatch.setattr(evacuation_journal, "libvirt", lv.FakeLibvirt(world))
    monkeypatch.setattr(evacuation_journal, "POLL", 0)
    monkeypatch.setattr(journal, "DEFAULT_VM_LOCK_DIR", str(tmp_path / "vm-locks"), raising=False)
    lv.capture_exit(monkeypatch)
    world.journal_dir = str(tmp_path / "journal")
    world.restore_dir = str(tmp_path / "restore")
    return world


def run(world, check_mode=False, **args):
    args = {"journal_dir": world.journal_dir, "restore_dir": world.restore_dir, "wait_timeout": 5, **args}
    if check_mode:
        args["_ansible_check_mode"] = True
    with patch_module_args(args):
        with pytest.raises(lv.Exit) as exc:
            evacuation_journal.main()
    return exc.value


def dead_run_entry(world, operation="live_migrate", name=NAME, uuid=UUID, persistent=True):
    """The entry a run writes before the operation (what the dead run left)."""
    out = run(world, state="begin", name=name, uuid=uuid, operation=operation, run_id=DEAD_RUN, target="hv2",
              dest_uri=DST, persistent=persistent)
    assert out.failed is False, out.result["msg"]
    return out.result["path"]


def starts(world, host, name=NAME):
    return [c for c in world.hosts[host].calls if c in (("create", name), ("createXML", name))]


def test_begin_writes_a_private_entry_and_end_removes_only_its_own_run(world):
    path = dead_run_entry(world)
    info = os.lstat(path)
    assert stat.S_ISREG(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o600
    assert stat.S_IMODE(os.stat(world.journal_dir).st_mode) == 0o700
    entry = json.loads(open(path).read())
    assert entry["name"] == NAME and entry["operation"] == "live_migrate" and entry["dest_uri"] == DST
    other = run(world, state="end", name=NAME, uuid=UUID, run_id="another-run")
    assert other.result["changed"] is False and os.path.exists(path)
    own = run(world, state="end", name=NAME, uuid=UUID, run_id=DEAD_RUN)
    assert own.result["changed"] is True and not os.path.exists(path)


def test_an_empty_journal_resumes_nothing(world):
    out = run(world, state="resume")
    assert out.failed is False and out.result["resumed"] == [] and out.result["changed"] is False


def test_a_vm_the_dead_run_shut_down_is_started_again_once_on_the_source(world):
    # cold migration killed after the shutdown and the definition on the target, before its start
    world.hosts[SRC].add(NAME, UUID, active=False, persistent=True)
    world.hosts[DST].add(NAME, UUID, active=False, persistent=True)
    path = dead_run_entry(world, operation="cold_migrate")
    out = run(world, state="resume")
    assert out.failed is False, out.result["msg"]
    [item] = out.result["resumed"]
    assert item["found"] == "nowhere" and item["action"] == "start_on_source" and item["ok"] is True
    assert item["run_id"] == DEAD_RUN and item["operation"] == "cold_migrate"
    assert world.hosts[SRC].running(NAME)
    assert starts(world, SRC) == [("create", NAME)] and starts(world, DST) == []
    assert NAME not in world.hosts[DST].domains, "a second definition stayed on the target"
    assert not os.path.exists(path)
    # a second resume finds nothing left to do and starts nothing again
    again = run(world, state="resume")
    assert again.result["resumed"] == [] and starts(world, SRC) == [("create", NAME)]


def test_a_vm_that_completed_its_move_is_left_running_on_the_target(world):
    world.hosts[DST].add(NAME, UUID, active=True, persistent=True)
    dead_run_entry(world)
    out = run(world, state="resume")
    [item] = out.result["resumed"]
    assert item["found"] == "target" and item["action"] == "none" and item["ok"] is True
    assert "had completed" in item["message"]
    assert starts(world, SRC) == [] and starts(world, DST) == []


def test_a_vm_running_on_the_target_loses_its_leftover_source_definition(world):
    # cold migration killed after the start on the target, before the source's undefine
    world.hosts[SRC].add(NAME, UUID, active=False, persistent=True)
    world.hosts[DST].add(NAME, UUID, active=True, persistent=True)
    dead_run_entry(world, operation="cold_migrate")
    out = run(world, state="resume")
    [item] = out.result["resumed"]
    assert item["action"] == "undefine_source" and item["ok"] is True
    assert NAME not in world.hosts[SRC].domains and world.hosts[DST].running(NAME)


def test_a_vm_defined_only_on_the_target_is_started_there(world):
    world.hosts[DST].add(NAME, UUID, active=False, persistent=True)
    dead_run_entry(world, operation="cold_migrate")
    out = run(world, state="resume")
    [item] = out.result["resumed"]
    assert item["action"] == "start_on_target" and world.hosts[DST].running(NAME)
    assert starts(world, DST) == [("create", NAME)]


def test_a_transient_vm_the_dead_run_powered_off_comes_back_from_its_kept_xml(world):
    kept = journal.restore_path(world.restore_dir, NAME, UUID)
    os.makedirs(world.restore_dir, mode=0o700)
    with open(kept, "w") as handle:
        handle.write("<domain><name>%s</name><uuid>%s</uuid></domain>" % (NAME, UUID))
    dead_run_entry(world, operation="reboot_then_migrate", persistent=False)
    out = run(world, state="resume")
    [item] = out.result["resumed"]
    assert item["action"] == "create_from_saved_xml" and item["ok"] is True
    assert world.hosts[SRC].running(NAME) and not os.path.exists(kept)


def test_nothing_is_started_while_the_target_cannot_be_asked(world):
    world.hosts[SRC].add(NAME, UUID, active=False, persistent=True)
    world.hosts[DST].add(NAME, UUID, active=True, persistent=True)  # it does run there
    world.hosts[DST].reachable = False
    path = dead_run_entry(world)
    out = run(world, state="resume")
    assert out.failed is True
    [item] = out.result["resumed"]
    assert item["found"] == "unknown" and item["action"] == "unresolved" and item["ok"] is False
    assert out.result["unresolved"] == [NAME]
    assert "cannot be asked" in out.result["msg"] and world.journal_dir in out.result["msg"]
    assert starts(world, SRC) == [], "started on the source while the target may run it"
    assert os.path.exists(path), "the unresolved entry must stay for the next run"


def test_a_vm_on_two_hosts_is_left_to_the_operator(world):
    world.hosts[SRC].add(NAME, UUID, active=True)
    world.hosts[DST].add(NAME, UUID, active=True)
    dead_run_entry(world)
    out = run(world, state="resume")
    assert out.failed is True and "CRITICAL" in out.result["resumed"][0]["message"]


def test_resume_waits_for_the_dead_runs_migration_job(world, monkeypatch):
    record = world.hosts[SRC].add(NAME, UUID, active=True)
    record["job"] = 2  # VIR_DOMAIN_JOB_UNBOUNDED: the migration libvirtd still drives
    polls = []
    tick = 0.0123  # the module's poll interval in this test; other sleeps (other threads) pass through
    real_sleep = evacuation_journal.time.sleep
    monkeypatch.setattr(evacuation_journal, "POLL", tick)

    def migration_finishes(seconds):
        if seconds != tick:
            real_sleep(seconds)
            return
        polls.append(seconds)
        if len(polls) == 3:  # the job completes: the VM now runs on the target only
            del world.hosts[SRC].domains[NAME]
            world.hosts[DST].add(NAME, UUID, active=True)
    monkeypatch.setattr(evacuation_journal.time, "sleep", migration_finishes)
    dead_run_entry(world)
    out = run(world, state="resume")
    assert out.failed is False, out.result["msg"]
    assert len(polls) == 3 and out.result["resumed"][0]["found"] == "target"


def test_resume_waits_for_a_module_of_the_dead_run_that_still_works(world):
    world.hosts[SRC].add(NAME, UUID, active=False)
    held = journal.OperationLock(journal.DEFAULT_VM_LOCK_DIR, NAME, UUID)
    assert held.acquire()
    try:
        dead_run_entry(world, operation="cold_migrate")
        out = run(world, state="resume", wait_timeout=0)
    finally:
        held.release()
    assert out.failed is True and "still works on it" in out.result["resumed"][0]["message"]
    assert starts(world, SRC) == []


def test_check_mode_says_what_it_would_do_and_starts_nothing(world):
    world.hosts[SRC].add(NAME, UUID, active=False, persistent=True)
    path = dead_run_entry(world)
    out = run(world, check_mode=True, state="resume")
    assert out.failed is False
    assert out.result["resumed"][0]["action"] == "start_on_source"
    assert starts(world, SRC) == [] and os.path.exists(path)


def test_an_entry_that_is_a_symlink_is_refused_and_not_echoed(world, tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("root:$6$verysecrethash")
    os.makedirs(world.journal_dir, mode=0o700)
    os.symlink(str(secret), os.path.join(world.journal_dir, "x.json"))
    out = run(world, state="resume")
    assert out.failed is True
    assert "verysecrethash" not in json.dumps(out.result)
    assert "symlink" in out.result["msg"]


def test_only_a_cold_migrations_own_target_definition_is_removed(world):
    # a live migration never leaves an inactive definition on its target: one found there is
    # not this run's to remove
    world.hosts[SRC].add(NAME, UUID, active=False, persistent=True)
    world.hosts[DST].add(NAME, UUID, active=False, persistent=True)
    dead_run_entry(world, operation="live_migrate")
    out = run(world, state="resume")
    assert out.result["resumed"][0]["action"] == "start_on_source"
    assert world.hosts[SRC].running(NAME) and NAME in world.hosts[DST].domains


def test_a_journal_directory_that_is_a_symlink_is_refused(world, tmp_path):
    real = tmp_path / "elsewhere"
    real.mkdir(mode=0o700)
    os.symlink(str(real), world.journal_dir)
    out = run(world, state="resume")
    assert out.failed is True and "is a symlink" in out.result["msg"]
