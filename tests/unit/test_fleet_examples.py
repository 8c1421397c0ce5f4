# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The example inventory of README.md's "Use it on your fleet" (docs/examples/).

- ansible-inventory parses it and puts the group_vars where they belong;
- group_vars/all.yml holds only inputs evacuate_host.yml reads (the playbook analysis of
  tests/unit/test_awx_config.py, the same one the AWX surveys are checked with), and its values
  pass the playbook's input rules;
- group_vars/hypervisors.yml holds no evacuation input: those are read on the controller's
  localhost, so there they would be silently ignored;
- the playbook's real first play (kvm_ras.poison_guard.evacuation_request) accepts the example
  as it is, with the migration URIs built from the example's addresses.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1].parent
EXAMPLES = REPO / "docs" / "examples"
VENV_BIN = Path(sys.executable).parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
import test_awx_config  # noqa: E402  pylint: disable=wrong-import-position

# Host variables evacuate_host.yml reads from a target (plugins/action/evacuation_request.py).
from ansible_collections.kvm_ras.poison_guard.plugins.action.evacuation_request import HOSTVAR_KEYS  # noqa: E402
from ansible_collections.kvm_ras.poison_guard.plugins.plugin_utils import evacuation_request as evreq  # noqa: E402


def _env(tmp_path):
    env = dict(os.environ, ANSIBLE_LOCAL_TEMP=str(tmp_path / "tmp"), ANSIBLE_NOCOLOR="1")
    env.pop("ANSIBLE_CONFIG", None)
    return env


def _yaml(path):
    return yaml.safe_load(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def inventory(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("inv")
    proc = subprocess.run([str(VENV_BIN / "ansible-inventory"), "-i", str(EXAMPLES / "hosts.yml"), "--list"],
                          cwd=str(tmp), env=_env(tmp), capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "[WARNING]" not in proc.stderr, proc.stderr
    return json.loads(proc.stdout)


def test_inventory_parses_with_a_hypervisors_group(inventory):
    hosts = inventory["hypervisors"]["hosts"]
    assert len(hosts) >= 2, "an evacuation needs a source and at least one target"
    for host in hosts:
        hvars = inventory["_meta"]["hostvars"][host]
        assert hvars["ansible_become"] is True, "group_vars/hypervisors.yml: root is needed"
        assert hvars["ansible_python_interpreter"] == "/usr/bin/python3"
        assert hvars["evacuate_poisoned_vm_policy"] == "leave", "group_vars/all.yml is read"


def test_hypervisor_group_vars_hold_no_evacuation_input():
    keys = set(_yaml(EXAMPLES / "group_vars" / "hypervisors.yml"))
    misplaced = keys & set(evreq.INPUT_NAMES)
    assert not misplaced, "evacuate_host.yml reads these on localhost; move them to group_vars/all.yml: %s" % misplaced
    unknown = {k for k in keys if not k.startswith("ansible_") and k not in HOSTVAR_KEYS}
    assert not unknown, "evacuate_host.yml never reads %s from a hypervisor" % sorted(unknown)


def test_all_group_vars_are_inputs_the_playbook_accepts():
    values = _yaml(EXAMPLES / "group_vars" / "all.yml")
    inputs = test_awx_config.playbook_inputs("playbooks/evacuate_host.yml")
    assert inputs.names and inputs.validators, "the playbook analysis found nothing: it is broken"
    unread = set(values) - inputs.names
    assert not unread, "evacuate_host.yml never reads %s" % sorted(unread)
    assert not any(k.startswith("ansible_") for k in values), "connection settings go in group_vars/hypervisors.yml"
    for validate in inputs.validators:
        assert validate(dict(values, evacuate_source="hv1"), 5) == []


def test_the_playbook_accepts_the_example(tmp_path):
    """The real request play of evacuate_host.yml on the example inventory (contacts no host)."""
    plays = _yaml(REPO / "playbooks" / "evacuate_host.yml")
    first = plays[0]
    assert first["hosts"] == "localhost"
    request_task = next(t for t in first["tasks"] if "kvm_ras.poison_guard.evacuation_request" in t)
    playbook = tmp_path / "request.yml"
    playbook.write_text(yaml.safe_dump([{
        "name": first["name"], "hosts": "localhost", "gather_facts": False,
        "tasks": [request_task, {"name": "Show the request",
                                 "ansible.builtin.debug": {"msg": "REQUEST={{ evacuation.request | to_json }}"}}],
    }]), encoding="utf-8")
    env = _env(tmp_path)
    proc = subprocess.run([str(VENV_BIN / "ansible-playbook"), "-i", str(EXAMPLES / "hosts.yml"), str(playbook),
                           "-e", "evacuate_source=hv01.example.org"],
                          cwd=str(tmp_path), env=env, capture_output=True, text=True, check=False, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    line = next(l for l in proc.stdout.splitlines() if "REQUEST=" in l)
    request = json.loads(json.loads("{" + line.strip().rstrip(",") + "}")["msg"].split("=", 1)[1])
    assert request["evacuate_targets"] == ["hv02.example.org", "hv03.example.org"]
    # The example sets no URI template: each target follows the transport the migration_transport
    # role set up on the source (read in the plan); with its TLS fact, the migration addresses.
    assert request["migration_uris"] == {"hv02.example.org": None, "hv03.example.org": None}
    final = evreq.follow_transport(request, {"mode": "tls", "uri_template": "qemu+tls://{address}/system"})
    assert final["migration_uris"] == {"hv02.example.org": "qemu+tls://198.51.100.12/system",
                                       "hv03.example.org": "qemu+tls://198.51.100.13/system"}
    assert request["evacuate_poisoned_vm_policy"] == "leave" and request["evacuate_max_parallel"] == 2
