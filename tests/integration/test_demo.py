# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""`make demo` (tools/demo) on the real hypervisor lab, read as a new user reads it.

The demo must tell the collection's story: a guest gets a poisoned page, the plan shows it
blocked with its evidence and QEMU's refusal message, the clean guests move, the poisoned one
stays with `leave` and moves after a restart with `reboot_then_migrate`, the fleet report is
written, and the demo ends by naming the report files. A full run prints no deprecation
warning from ansible-core.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.messages import UPSTREAM_REFUSAL

REPO = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.hvlab,
    pytest.mark.skipif(os.geteuid() != 0, reason="the hypervisor lab runs docker and privileged containers: needs root"),
]


@pytest.fixture(scope="module", name="demo")
def fixture_demo():
    proc = subprocess.run(["make", "demo"], cwd=REPO, capture_output=True, text=True, timeout=1800, check=False)
    return proc


def test_demo_succeeds_without_deprecation_warnings(demo):
    assert demo.returncode == 0, demo.stdout[-6000:] + demo.stderr[-3000:]
    assert "DEPRECATION WARNING" not in demo.stdout + demo.stderr, [
        line for line in (demo.stdout + demo.stderr).splitlines() if "DEPRECATION" in line]


def test_demo_tells_the_poison_story(demo):
    out = demo.stdout
    match = re.search(r"poisons one page of guest RAM of (\S+) on hv1", out)
    assert match, out[:4000]
    victim = match.group(1)
    assert "is now a hole in QEMU pid" in out
    # the first plan: the victim is blocked, with QEMU's own refusal message
    leave = out.split("poisoned_vm_policy=leave", 1)[1].split("poisoned_vm_policy=reboot_then_migrate", 1)[0]
    assert victim in leave and UPSTREAM_REFUSAL in leave, leave[-6000:]
    assert "pte_marker_poisoned" in leave or "pagemap" in leave, leave[-6000:]


def test_demo_reports_exist_and_say_what_happened(demo):
    listed = [REPO / line.strip() for line in demo.stdout.splitlines()
              if line.startswith("   lab/state/demo/") and line.strip().endswith((".json", ".html"))]
    assert any(p.suffix == ".html" for p in listed), demo.stdout[-3000:]
    for path in listed:
        assert path.is_file() and path.stat().st_size > 0, path
    victim = re.search(r"poisons one page of guest RAM of (\S+) on hv1", demo.stdout).group(1)
    evacuations = [json.loads(p.read_text()) for p in listed
                   if p.suffix == ".json" and "fleet" not in p.parts and "vms" in p.read_text()[:100000]]
    assert len(evacuations) >= 2, listed
    by_run = [{vm["name"]: vm for vm in report["vms"]} for report in evacuations]
    statuses = sorted(run[victim]["status"] for run in by_run if victim in run)
    assert statuses == ["left", "migrated"], statuses
    first = next(run for run in by_run if victim in run and run[victim]["status"] == "left")
    assert first[victim]["poison_status"] == "poisoned"
    assert all(vm["status"] == "migrated" for name, vm in first.items() if name != victim), first
