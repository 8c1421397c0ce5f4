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
    # the first run: the victim is blocked and left, with QEMU's own refusal message as the reason
    leave = out.split("==> evacuate hv1, leaving the poisoned guest", 1)[1].split("==> evacuate hv1 again", 1)[0]
    assert re.search(r"^%s +left +leave .*%s" % (re.escape(victim), re.escape(UPSTREAM_REFUSAL)), leave, re.M), \
        leave[-6000:]
    # the second run: it moved after the restart
    reboot = out.split("==> evacuate hv1 again", 1)[1]
    assert re.search(r"^%s +migrated +reboot_then_migrate " % re.escape(victim), reboot, re.M), reboot[-6000:]


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
    assert any(e["source"] == "pagemap" for e in first[victim]["evidence"]), first[victim]["evidence"]
    assert all(vm["status"] == "migrated" for name, vm in first.items() if name != victim), first
