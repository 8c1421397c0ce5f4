# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""host_markers: the lock, cordon, journal and kept-XML files of a hypervisor (issue 13, item 9).

Each test plants what an attacker with write access to a shared directory, or a careless
operator, could leave there: a symlink to a secret, a dangling symlink, a symlink at the
temporary name, a world-writable directory.
"""

from __future__ import annotations

import os
import stat

import pytest

from ansible_collections.kvm_ras.poison_guard.plugins.module_utils import host_markers

SECRET = "root:$6$rounds=5000$verysecrethash:19000:0:99999:7:::\n"


@pytest.fixture(name="state_dir")
def fixture_state_dir(tmp_path):
    path = tmp_path / "kvm_ras"
    path.mkdir(mode=0o700)
    return path


def test_reading_a_symlink_is_refused_and_never_echoes_its_target(state_dir, tmp_path):
    secret = tmp_path / "shadow"
    secret.write_text(SECRET)
    (state_dir / "evacuation.lock").symlink_to(secret)
    record, problem = host_markers.read_json_marker(str(state_dir / "evacuation.lock"))
    assert problem and "symlink" in problem
    assert "verysecrethash" not in repr(record) and "root:" not in repr(record)
    assert record == {"unreadable": problem}


def test_a_file_that_is_not_json_is_described_not_shown(state_dir):
    (state_dir / "cordon.json").write_text(SECRET)
    record, problem = host_markers.read_json_marker(str(state_dir / "cordon.json"))
    assert problem is None
    assert "not JSON" in record["unreadable"] and "verysecrethash" not in record["unreadable"]


def test_a_fifo_is_refused_without_blocking(state_dir):
    os.mkfifo(str(state_dir / "evacuation.lock"))
    record, problem = host_markers.read_json_marker(str(state_dir / "evacuation.lock"))
    assert "FIFO" in problem and record["unreadable"] == problem


def test_missing_file_is_none(state_dir):
    assert host_markers.read_json_marker(str(state_dir / "nothing")) == (None, None)


def test_atomic_write_replaces_a_symlink_instead_of_writing_through_it(state_dir, tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("untouched")
    (state_dir / "cordon.json").symlink_to(victim)
    host_markers.write_json_atomic(str(state_dir / "cordon.json"), {"cordoned": True}, mode=0o644)
    assert victim.read_text() == "untouched"
    info = os.lstat(str(state_dir / "cordon.json"))
    assert stat.S_ISREG(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o644
    assert host_markers.read_json_marker(str(state_dir / "cordon.json")) == ({"cordoned": True}, None)
    assert sorted(os.listdir(str(state_dir))) == ["cordon.json"], "a temporary file stayed behind"


def test_exclusive_create_does_not_follow_a_dangling_symlink(state_dir, tmp_path):
    target = tmp_path / "created-elsewhere"
    (state_dir / "evacuation.lock").symlink_to(target)
    assert host_markers.create_exclusive(str(state_dir / "evacuation.lock"), {"owner": "run"}) is False
    assert not target.exists()


def test_exclusive_create_publishes_a_complete_private_file_once(state_dir):
    path = str(state_dir / "evacuation.lock")
    assert host_markers.create_exclusive(path, {"owner": "a"}) is True
    assert host_markers.create_exclusive(path, {"owner": "b"}) is False
    assert host_markers.read_json_marker(path) == ({"owner": "a"}, None)
    assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600
    assert sorted(os.listdir(str(state_dir))) == ["evacuation.lock"]


def test_unsafe_directories_are_refused_with_the_fix(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(str(shared), 0o777)
    with pytest.raises(host_markers.MarkerError, match="writable by group or others.*chmod go-w"):
        host_markers.write_json_atomic(str(shared / "cordon.json"), {})
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(host_markers.MarkerError, match="is a symlink"):
        host_markers.write_json_atomic(str(tmp_path / "link" / "cordon.json"), {})
    assert os.listdir(str(real)) == []


def test_missing_directories_are_created_private(tmp_path):
    path = tmp_path / "run" / "kvm_ras" / "evacuation.lock"
    host_markers.create_exclusive(str(path), {"owner": "a"}, dir_mode=0o700)
    assert stat.S_IMODE(os.stat(str(path.parent)).st_mode) == 0o700


def test_remove_removes_a_symlink_not_its_target(state_dir, tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("x")
    (state_dir / "evacuation.lock").symlink_to(victim)
    assert host_markers.remove(str(state_dir / "evacuation.lock")) is True
    assert victim.exists() and host_markers.remove(str(state_dir / "evacuation.lock")) is False


# ------------------------------------------------------------------------------ lock decision --

def test_lock_decisions():
    """What evacuation_lock does with the record it finds (moved here from test_evacuation.py)."""
    decide, hm = host_markers.lock_decision, host_markers
    now = 10000.0
    assert decide(None, "run1", now)[0] == hm.LOCK_ACQUIRE
    assert decide({"owner": "run1", "since": now}, "run1", now)[0] == hm.LOCK_REENTER
    decision, message = decide({"owner": "run0", "controller": "awx-1", "since": now - 60,
                                "since_iso": "2026-01-01T00:00:00Z"}, "run1", now)
    assert decision == hm.LOCK_REFUSE
    assert "lock held by run run0 from awx-1 since 2026-01-01T00:00:00Z" in message
    assert "-e evacuate_break_lock=true" in message
    assert decide({"owner": "run0", "since": now - 60}, "run1", now, break_lock=True)[0] == hm.LOCK_BREAK
    assert decide({"owner": "run0", "since": now - 60}, "run1", now, stale_after=30)[0] == hm.LOCK_BREAK
    assert decide({"owner": "run0", "since": now - 60}, "run1", now, stale_after=120)[0] == hm.LOCK_REFUSE
    assert decide({"unreadable": "not JSON"}, "run1", now)[0] == hm.LOCK_REFUSE


def test_replace_file_swaps_a_symlink_instead_of_writing_through_it(tmp_path):
    """The progress file of live_migrate goes through replace_file: a symlink planted at its
    name is replaced (rename(2) replaces the link itself), its target is left as it was."""
    secret = tmp_path / "shadow"
    secret.write_text(SECRET)
    target = tmp_path / "progress.json"
    target.symlink_to(secret)
    host_markers.replace_file(str(target), b'{"phase": "starting"}')
    assert secret.read_text() == SECRET
    assert not target.is_symlink() and target.read_bytes() == b'{"phase": "starting"}'
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
