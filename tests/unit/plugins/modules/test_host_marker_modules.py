# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""evacuation_lock and cordon on planted files (issue 13, item 9): a lock that is a symlink to
a secret must not be echoed; the temporary file of a write must not follow a symlink planted
at a predictable name (before: ``<path>.<pid>.tmp`` opened with plain open('w'))."""

from __future__ import annotations

import json
import os

import pytest

from ansible.module_utils.testing import patch_module_args

import libvirt_standin as lv
from ansible_collections.kvm_ras.poison_guard.plugins.modules import cordon, evacuation_lock

SECRET = "root:$6$rounds=5000$verysecrethash:19000:0:99999:7:::\n"


@pytest.fixture(autouse=True)
def fixture_exits(monkeypatch):
    lv.capture_exit(monkeypatch)


def run(module, args):
    with patch_module_args(args):
        with pytest.raises(lv.Exit) as exc:
            module.main()
    return exc.value


@pytest.fixture(name="state_dir")
def fixture_state_dir(tmp_path):
    path = tmp_path / "kvm_ras"
    path.mkdir(mode=0o700)
    return path


def plant_tmp_symlinks(path, victim):
    """Symlinks at the temporary names the old code used (<path>.<pid>.tmp) for nearby pids."""
    pid = os.getpid()
    for candidate in range(max(pid - 5, 1), pid + 6):
        os.symlink(str(victim), "%s.%d.tmp" % (path, candidate))


def test_lock_that_is_a_symlink_is_held_and_its_target_not_echoed(state_dir, tmp_path):
    secret = tmp_path / "shadow"
    secret.write_text(SECRET)
    lock = state_dir / "evacuation.lock"
    lock.symlink_to(secret)
    out = run(evacuation_lock, {"owner": "run-1", "path": str(lock)})
    assert out.failed is True and out.result["decision"] == "refuse"
    text = json.dumps(out.result)
    assert "verysecrethash" not in text and "root:" not in text
    assert "symlink" in out.result["msg"]


def test_lock_that_is_not_json_is_not_echoed(state_dir):
    lock = state_dir / "evacuation.lock"
    lock.write_text(SECRET)
    out = run(evacuation_lock, {"owner": "run-1", "path": str(lock)})
    assert out.failed is True and "verysecrethash" not in json.dumps(out.result)


def test_breaking_a_lock_never_writes_through_a_planted_temporary_name(state_dir, tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("untouched")
    lock = state_dir / "evacuation.lock"
    lock.write_text(json.dumps({"owner": "dead-run", "since": 1.0}))
    plant_tmp_symlinks(str(lock), victim)
    out = run(evacuation_lock, {"owner": "run-2", "path": str(lock), "break_lock": True})
    assert out.failed is False and out.result["decision"] == "break"
    assert victim.read_text() == "untouched"
    assert json.loads(lock.read_text())["owner"] == "run-2"
    assert oct(os.stat(str(lock)).st_mode & 0o777) == "0o600"


def test_lock_acquire_and_release(state_dir):
    lock = state_dir / "evacuation.lock"
    assert run(evacuation_lock, {"owner": "run-1", "path": str(lock)}).result["decision"] == "acquire"
    assert run(evacuation_lock, {"owner": "run-2", "path": str(lock)}).failed is True
    assert run(evacuation_lock, {"owner": "run-1", "path": str(lock), "state": "absent"}).result["decision"] == "release"
    assert not lock.exists()


def test_cordon_never_writes_through_a_planted_temporary_name(state_dir, tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("untouched")
    marker = state_dir / "cordon.json"
    plant_tmp_symlinks(str(marker), victim)
    out = run(cordon, {"path": str(marker), "reason": "DIMM B2"})
    assert out.failed is False and out.result["changed"] is True
    assert victim.read_text() == "untouched"
    assert json.loads(marker.read_text())["reason"] == "DIMM B2"
    assert oct(os.stat(str(marker)).st_mode & 0o777) == "0o644"


def test_cordon_marker_that_is_a_symlink_counts_as_cordoned_without_echo(state_dir, tmp_path):
    secret = tmp_path / "shadow"
    secret.write_text(SECRET)
    marker = state_dir / "cordon.json"
    marker.symlink_to(secret)
    out = run(cordon, {"path": str(marker)})
    assert out.result["cordon"]["cordoned"] is True
    assert "verysecrethash" not in json.dumps(out.result)
