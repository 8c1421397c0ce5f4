# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Live progress of kvm_ras.poison_guard.live_migrate.

1. supervise() hands every poll's job statistics to ``on_progress`` as a progress record (the
   module writes it to the progress file), and a failing writer never stops the migration.
2. The action plugin's async path, run for real by ansible-playbook on localhost against
   libvirt's own test driver (test:///default, from Debian's python3-libvirt, which `make deps`
   installs): the module is started as an async job, waited for by the plugin, and the task
   returns the module's own result (here libvirt's refusal: the test driver cannot migrate),
   with no async bookkeeping left in the result or in the async directory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.migration import supervise

VENV_BIN = Path(sys.executable).parent
SYSTEM_PYTHON = "/usr/bin/python3"


def test_supervise_passes_each_poll_to_on_progress():
    records = []
    stats = {"data_total": 100, "data_remaining": 40, "memory_bps": 10, "memory_iteration": 1, "type": 2}

    def start():
        time.sleep(0.4)

    def broken_writer(record):
        records.append(record)
        raise OSError("disk full")

    outcome = supervise(start, lambda: stats, lambda: None, timeout=30, poll_interval=0.05,
                        on_progress=broken_writer)
    assert outcome["finished"]
    assert len(records) >= 2
    assert records[0]["phase"] == "running" and records[0]["data_remaining"] == 40
    assert "type" not in records[0]                      # only what a person needs
    assert records[-1]["elapsed_s"] >= records[0]["elapsed_s"]


def _has_libvirt():
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        return False
    return subprocess.run([SYSTEM_PYTHON, "-c", "import libvirt"], capture_output=True, check=False).returncode == 0


@pytest.mark.skipif(not _has_libvirt(), reason="needs Debian's python3-libvirt (make deps installs it)")
def test_async_task_returns_the_module_result_and_cleans_up(tmp_path):
    async_dir = tmp_path / "async"
    playbook = tmp_path / "play.yml"
    playbook.write_text(json.dumps([{
        "name": "live_migrate with async", "hosts": "localhost", "gather_facts": False,
        "tasks": [{
            "name": "Migrate the test driver's VM",
            "kvm_ras.poison_guard.live_migrate": {
                "name": "test", "source_uri": "test:///default", "dest_uri": "test:///default",
                "poison_check": False, "timeout": 30, "progress_interval": 1},
            "async": 120, "poll": 0, "register": "moved", "ignore_errors": True},
            {"name": "Keep the result", "ansible.builtin.copy": {
                "content": "{{ moved | to_json }}", "dest": str(tmp_path / "result.json"), "mode": "0644"}}],
    }]), encoding="utf-8")
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_ASYNC_DIR=str(async_dir),
               ANSIBLE_LOCAL_TEMP=str(tmp_path / "tmp"), ANSIBLE_PYTHON_INTERPRETER=SYSTEM_PYTHON)
    env.pop("ANSIBLE_CONFIG", None)
    proc = subprocess.run([str(VENV_BIN / "ansible-playbook"), "-i", "localhost,", "-c", "local", str(playbook)],
                          capture_output=True, text=True, env=env, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["failed"] is True and result.get("migrated") is False, result
    assert "did not end within" not in result["msg"], result["msg"]
    assert "ansible_job_id" not in result and "finished" not in result, result
    assert isinstance(result.get("progress_lines"), list)
    # the async job's status file and the progress file are gone
    leftovers = [p.name for p in async_dir.iterdir()] if async_dir.exists() else []
    assert not [name for name in leftovers if not name.startswith(".")], leftovers
