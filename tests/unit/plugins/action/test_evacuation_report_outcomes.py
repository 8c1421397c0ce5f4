# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Per-VM outcomes reach kvm_ras.poison_guard.evacuation_report as an argument (vm_results),
not through hostvars under a name the playbook sets (issue 14).

Runs, with ansible-playbook, the real "Record what happened to the VM" task of the per-VM play
of playbooks/evacuate_host.yml on per-VM hosts (local connection), then the real "Verify every
VM and write the report" task of its verify play on localhost. The plan is made by the
evacuation rules (plugins/plugin_utils) for a source with two clean VMs; the registered results
are shaped as Ansible registers them (a skipped step is ``{"skipped": true}``) and as
live_migrate returns them (``duration_seconds``, ``started_at``); the host_capacity_info results
after the run are a loop's ``results`` (each with its ``item``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ansible_collections.kvm_ras.poison_guard.plugins.module_utils import gate
from ansible_collections.kvm_ras.poison_guard.plugins.plugin_utils import evacuation_plan as evplan
from ansible_collections.kvm_ras.poison_guard.plugins.plugin_utils import evacuation_request as evreq

REPO = Path(__file__).resolve().parents[4]
VENV_BIN = Path(sys.executable).parent
HOSTS = ["hv1", "hv2", "hv3"]
SKIPPED = {"changed": False, "skipped": True, "skip_reason": "Conditional result was False"}


def domain(name):
    return {"name": name, "uuid": "uuid-" + name, "state": "running", "active": True, "persistent": True,
            "memory_mib": 64, "vcpus": 1, "disks": []}


def capacity(domains):
    return {"changed": False, "libvirt_ok": True, "cpus": 2, "memory_free_mib": 20000, "memory_total_mib": 24000,
            "running_vcpus": len(domains), "running_count": len(domains), "domains": domains,
            "cordon": {"cordoned": False}, "evacuation_lock": {"held": False}, "paths": {}}


def plays():
    return {play["name"]: play for play in yaml.safe_load((REPO / "playbooks" / "evacuate_host.yml").read_text())}


@pytest.mark.parametrize("option", ["vm_results", "vm_hosts"])
def test_the_report_takes_the_per_vm_results_as_an_argument(tmp_path, option):
    """vm_results as the playbook passes it; the deprecated vm_hosts (hostvars) still works, with a warning."""
    request = evreq.validate_request({"evacuate_source": "hv1", "evacuate_report_dir": str(tmp_path / "reports"),
                                      "evacuate_migration_uri_template": "qemu+tls://{host}/system"},
                                     HOSTS, {"all": HOSTS, "hypervisors": HOSTS}, {}, forks=5)
    poison = {"vms": [{"name": n, "status": "clean", "evidence": []} for n in ("web01", "web02")]}
    gated = gate.evaluate(poison, operation="live_migration", on_poisoned="skip", on_unknown="skip")
    plan = evplan.build_plan(request, capacity([domain("web01"), domain("web02")]),
                             {"hv2": capacity([]), "hv3": capacity([])}, poison, gated)
    moving = {vm["name"]: vm for vm in plan["vms"] if vm["action"] in evplan.MOVING_ACTIONS}
    assert set(moving) == {"web01", "web02"}
    target = moving["web01"]["target"]
    migrated = {"changed": True, "duration_seconds": 4.2, "started_at": "2026-03-01T03:00:00Z", "running_on": target}
    data = {
        "evacuation_request": request, "evacuation_plan": {"plan": plan},
        "evacuation_run": {"run_id": "hv1-test", "started_at": "2026-03-01T02:59:01Z", "started_compact": "20260301T025901Z",
                           "controller": "controller", "check_mode": False},
        "evacuation_check": {"restore": []},
        "evacuation_after": {"results": [
            dict(capacity([domain("web02")]), item="hv1"),
            dict(capacity([domain("web01")] if target == "hv2" else []), item="hv2"),
            dict(capacity([domain("web01")] if target == "hv3" else []), item="hv3")]},
        "step_results": {"web01": {"evacuation_journal": {"changed": True}, "evacuation_reboot": SKIPPED,
                                   "evacuation_recheck": SKIPPED, "evacuation_regate": SKIPPED,
                                   "evacuation_migrate": migrated, "evacuation_holes_check": SKIPPED,
                                   "evacuation_cold": SKIPPED}},
    }
    (tmp_path / "data.json").write_text(json.dumps(data))
    move, verify = plays()["Move the VMs, at most evacuate_max_parallel at once"], plays()["Verify every VM and report"]
    record = next(t for t in move["tasks"] if t["name"] == "Record what happened to the VM")
    report = next(t for t in verify["tasks"][0]["block"] if t["name"] == "Verify every VM and write the report")
    assert "vm_hosts" not in report["kvm_ras.poison_guard.evacuation_report"]
    if option == "vm_hosts":
        report = dict(report, **{"kvm_ras.poison_guard.evacuation_report": dict(
            {k: v for k, v in report["kvm_ras.poison_guard.evacuation_report"].items() if k != "vm_results"},
            vm_hosts="{{ groups['evacuation_vms'] }}")})
    per_vm = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    playbook = [
        {"name": "Queue", "hosts": "localhost", "gather_facts": False, "tasks": [
            # web01 ran its steps; web02's per-VM host never got to record anything
            {"name": "Queue web01", "ansible.builtin.add_host": dict(
                per_vm, name="web01 (vm000@hv1)", groups="evacuation_vms", evacuation_vm=moving["web01"])}]},
        {"name": "Move", "hosts": "evacuation_vms", "gather_facts": False,
         "vars": {name: "{{ step_results[evacuation_vm.name]['%s'] }}" % name
                  for name in data["step_results"]["web01"]},
         "tasks": [record]},
        {"name": "Verify", "hosts": "localhost", "gather_facts": False, "tasks": [
            {"name": "Queue web02", "ansible.builtin.add_host": dict(
                per_vm, name="web02 (vm001@hv1)", groups="evacuation_vms", evacuation_vm=moving["web02"])},
            report,
            {"name": "Show", "ansible.builtin.debug": {"msg": "REPORT={{ evacuation_report.report.vms | to_json }}"}}]},
    ]
    (tmp_path / "play.yml").write_text(yaml.safe_dump(playbook))
    env = dict(os.environ, ANSIBLE_LOCAL_TEMP=str(tmp_path / "tmp"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_PYTHON_INTERPRETER=sys.executable, ANSIBLE_DEPRECATION_WARNINGS="true")
    env.pop("ANSIBLE_CONFIG", None)
    proc = subprocess.run([str(VENV_BIN / "ansible-playbook"), "-i", "localhost,", "-c", "local", str(tmp_path / "play.yml"),
                           "-e", "@" + str(tmp_path / "data.json")],
                          cwd=str(tmp_path), env=env, capture_output=True, text=True, check=False, timeout=300)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    if option == "vm_results":
        assert "DEPRECATION" not in output, output
    else:
        assert "[DEPRECATION WARNING]" in output and "vm_results" in output, output
    line = next(l for l in proc.stdout.splitlines() if "REPORT=" in l)
    vms = {vm["name"]: vm for vm in json.loads(json.loads("{" + line.strip().rstrip(",") + "}")["msg"].split("=", 1)[1])}
    assert vms["web01"]["status"] == "migrated" and vms["web01"]["duration_s"] == 4.2
    assert vms["web01"]["steps"] == ["live migration: done"]
    assert vms["web02"]["status"] == "stayed"
    assert "the migration step did not run" in vms["web02"]["reason"]
