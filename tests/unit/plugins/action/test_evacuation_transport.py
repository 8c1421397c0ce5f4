# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The migration URI of every target follows the transport the migration_transport role set up
on the source; qemu+tcp is refused unless spelled out (issue 15).

Runs, with ansible-playbook, the real first play of playbooks/evacuate_host.yml (the request
check on the controller) and the real tasks of its plan play that read the source's transport
(``ansible.builtin.setup`` with ``gather_subset: local`` and the source's
``migration_transport_facts_dir``, ``evacuation_transport``, the ``set_fact`` that hands the
final request on), on a source reached with the local connection. The source's fact file is
the one roles/migration_transport/tasks/fact.yml writes (JSON: mode, uri_template, address,
names, group, files) in a temporary facts directory instead of /etc/ansible/facts.d.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ansible_collections.kvm_ras.poison_guard.plugins.plugin_utils import evacuation_request as evreq

REPO = Path(__file__).resolve().parents[4]
VENV_BIN = Path(sys.executable).parent
TRANSPORT_TASKS = ("Read the migration transport of the source (its local fact)",
                   "Give each target the migration URI of the source's transport, unless one was given",
                   "Use the request with the final migration URIs")
TLS_FACT = {"mode": "tls", "uri_template": "qemu+tls://{address}/system", "address": "192.0.2.11",
            "names": ["hv1", "192.0.2.11"], "group": "hypervisors",
            "files": ["/etc/pki/CA/cacert.pem", "/etc/pki/libvirt/servercert.pem"]}
SSH_TEMPLATE = "qemu+ssh://root@{address}/system?keyfile=/root/.ssh/kvm_ras_migration_ed25519"
NO_TRANSPORT = ("no migration transport configured on hv1: set it up with the kvm_ras.poison_guard.migration_transport "
                "role (docs/migration-transport.md), or set evacuate_migration_uri_template / kvm_ras_migration_uri")


def plan_tasks():
    plays = yaml.safe_load((REPO / "playbooks" / "evacuate_host.yml").read_text(encoding="utf-8"))
    plan = next(p for p in plays if p["name"] == "Plan the evacuation")
    tasks = plan["tasks"][0]["block"]
    return plays, tasks


@pytest.fixture(name="site")
def fixture_site(tmp_path):
    """The request play and the transport tasks of the plan play; hv1 (the source) is this
    machine over the local connection, hv2 and hv3 are never contacted."""
    plays, tasks = plan_tasks()
    wanted = [t for t in tasks if t["name"] in TRANSPORT_TASKS]
    assert [t["name"] for t in wanted] == list(TRANSPORT_TASKS)
    (tmp_path / "play.yml").write_text(yaml.safe_dump([plays[0], {
        "name": "Plan the evacuation", "hosts": "evacuation_source", "gather_facts": False,
        "tasks": wanted + [{"name": "Show the request",
                            "ansible.builtin.debug": {"msg": "REQUEST={{ evacuation_request | to_json }}"}}]}]))
    facts = tmp_path / "facts"
    facts.mkdir()
    inventory = {"all": {"children": {"hypervisors": {"hosts": {
        "hv1": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable,
                "migration_transport_facts_dir": str(facts)},
        "hv2": {"ansible_host": "192.0.2.12"},
        "hv3": {"ansible_host": "192.0.2.13"}}}}}}
    (tmp_path / "hosts.yml").write_text(yaml.safe_dump(inventory))
    return tmp_path


def write_fact(site, fact):
    path = site / "facts" / "kvm_ras_migration_transport.fact"
    path.write_text(json.dumps(fact, sort_keys=True, indent=4) + "\n")
    path.chmod(0o644)  # not executable: setup reads it as JSON


def set_hostvar(site, host, **values):
    inventory = yaml.safe_load((site / "hosts.yml").read_text())
    inventory["all"]["children"]["hypervisors"]["hosts"][host].update(values)
    (site / "hosts.yml").write_text(yaml.safe_dump(inventory))


def run(site, *extra, check=False):
    argv = [str(VENV_BIN / "ansible-playbook"), "-i", str(site / "hosts.yml"), str(site / "play.yml"), "--forks", "5"]
    if check:
        argv.append("--check")
    for item in extra:
        argv += ["-e", item]
    env = dict(os.environ, ANSIBLE_LOCAL_TEMP=str(site / "tmp"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_PYTHON_INTERPRETER=sys.executable)
    env.pop("ANSIBLE_CONFIG", None)
    proc = subprocess.run(argv, cwd=str(site), env=env, capture_output=True, text=True, check=False, timeout=300)
    output = proc.stdout + proc.stderr
    line = next((l for l in proc.stdout.splitlines() if "REQUEST=" in l), None)
    request = None
    if line is not None:
        request = json.loads(json.loads("{" + line.strip().rstrip(",") + "}")["msg"].split("=", 1)[1])
    return proc.returncode, re.sub(r"\s+", " ", output), request


def test_targets_follow_the_tls_transport_of_the_source_in_check_mode_too(site):
    write_fact(site, TLS_FACT)
    for check in (False, True):
        rc, output, request = run(site, "evacuate_source=hv1", check=check)
        assert rc == 0, output
        assert request["evacuate_migration_uri_template"] == ""
        assert request["migration_uris"] == {"hv2": "qemu+tls://192.0.2.12/system", "hv3": "qemu+tls://192.0.2.13/system"}
        assert request["migration_uri_origins"] == {"hv2": "transport", "hv3": "transport"}
        assert request["migration_uri_problems"] == {}
        assert request["migration_transport"] == {"mode": "tls", "uri_template": "qemu+tls://{address}/system",
                                                  "source": "hv1"}


def test_precedence_host_uri_then_given_template_then_transport(site):
    write_fact(site, dict(TLS_FACT, mode="ssh", uri_template=SSH_TEMPLATE))
    set_hostvar(site, "hv3", kvm_ras_migration_uri="qemu+tls://hv3.migration.example/system")
    rc, output, request = run(site, "evacuate_source=hv1")
    assert rc == 0, output
    assert request["migration_uris"] == {
        "hv2": "qemu+ssh://root@192.0.2.12/system?keyfile=/root/.ssh/kvm_ras_migration_ed25519",
        "hv3": "qemu+tls://hv3.migration.example/system"}
    assert request["migration_uri_origins"] == {"hv2": "transport", "hv3": "kvm_ras_migration_uri"}
    # a template the operator gives beats the transport, not the host's own URI
    rc, output, request = run(site, "evacuate_source=hv1", "evacuate_migration_uri_template=qemu+tls://{host}.mig/system")
    assert rc == 0, output
    assert request["migration_uris"] == {"hv2": "qemu+tls://hv2.mig/system",
                                         "hv3": "qemu+tls://hv3.migration.example/system"}
    assert request["migration_uri_origins"] == {"hv2": "evacuate_migration_uri_template", "hv3": "kvm_ras_migration_uri"}
    assert request["migration_transport"] is None


def test_a_source_without_transport_leaves_every_target_without_uri_and_says_how_to_fix_it(site):
    for check in (False, True):
        rc, output, request = run(site, "evacuate_source=hv1", check=check)
        assert rc == 0, output
        assert request["migration_uris"] == {"hv2": None, "hv3": None}
        assert request["migration_uri_problems"] == {"hv2": NO_TRANSPORT, "hv3": NO_TRANSPORT}
        assert request["migration_transport"] is None


def test_the_facts_directory_of_the_source_is_where_the_fact_is_read(site):
    elsewhere = site / "other-facts"
    elsewhere.mkdir()
    write_fact(site, TLS_FACT)  # in the default test directory...
    set_hostvar(site, "hv1", migration_transport_facts_dir=str(elsewhere))  # ...which the source no longer uses
    rc, output, request = run(site, "evacuate_source=hv1")
    assert rc == 0, output
    assert request["migration_uris"] == {"hv2": None, "hv3": None}


def test_plain_tcp_is_refused_before_any_host_is_contacted_unless_spelled_out(site):
    rc, output, request = run(site, "evacuate_source=hv1", "evacuate_migration_uri_template=qemu+tcp://{address}/system")
    assert rc != 0 and request is None, output
    assert "evacuation refused before any change" in output
    assert "evacuate_migration_uri_template 'qemu+tcp://{address}/system' uses qemu+tcp" in output
    assert "no authentication and no encryption" in output
    assert "kvm_ras.poison_guard.migration_transport role" in output and "evacuate_allow_plain_tcp=true" in output
    # the first play failed: the plan play never ran on the source
    assert "Read the migration transport of the source" not in output
    rc, output, request = run(site, "evacuate_source=hv1", "evacuate_migration_uri_template=qemu+tcp://{address}/system",
                              "evacuate_allow_plain_tcp=true")
    assert rc == 0, output
    assert request["evacuate_allow_plain_tcp"] is True
    assert request["migration_uris"] == {"hv2": "qemu+tcp://192.0.2.12/system", "hv3": "qemu+tcp://192.0.2.13/system"}


def test_a_plain_tcp_host_uri_is_refused_naming_the_host(site):
    set_hostvar(site, "hv2", kvm_ras_migration_uri="qemu+tcp://hv2/system")
    rc, output, _request = run(site, "evacuate_source=hv1")
    assert rc != 0, output
    assert "kvm_ras_migration_uri of 'hv2' 'qemu+tcp://hv2/system' uses qemu+tcp" in output


def test_a_plain_tcp_transport_fact_is_refused_in_the_plan(site):
    write_fact(site, dict(TLS_FACT, mode="tcp", uri_template="qemu+tcp://{address}/system"))
    rc, output, request = run(site, "evacuate_source=hv1")
    assert rc != 0 and request is None, output
    assert "uses qemu+tcp" in output and "kvm_ras_migration_transport on hv1" in output
    rc, output, request = run(site, "evacuate_source=hv1", "evacuate_allow_plain_tcp=yes")
    assert rc == 0, output
    assert request["migration_uris"]["hv2"] == "qemu+tcp://192.0.2.12/system"


def test_a_broken_transport_fact_is_refused_with_the_fix(site):
    write_fact(site, dict(TLS_FACT, uri_template="qemu+tls://hv9/system"))
    rc, output, _request = run(site, "evacuate_source=hv1")
    assert rc != 0, output
    assert "has uri_template 'qemu+tls://hv9/system', which holds neither {address} nor {host}" in output
    assert "run the kvm_ras.poison_guard.migration_transport role on the hypervisors again" in output


# ------------------------------------------------------------------------ the playbook's order --

def test_the_transport_is_read_before_the_preflight_and_the_plan_uses_the_final_request():
    _plays, tasks = plan_tasks()
    names = [t["name"] for t in tasks]
    setup, follow, final = (names.index(n) for n in TRANSPORT_TASKS)
    preflight = names.index("Preflight every target from the source")
    assert setup < follow < final < preflight < names.index("Make the plan")
    assert tasks[follow]["kvm_ras.poison_guard.evacuation_transport"]["request"] == "{{ evacuation_request }}"
    assert tasks[final]["ansible.builtin.set_fact"] == {"evacuation_request": "{{ evacuation_transport.request }}"}
    assert tasks[preflight]["kvm_ras.poison_guard.migration_preflight"]["targets"] == \
        "{{ evacuation_request.migration_uris }}"
    # the source is cordoned only when a VM moves (a source without transport moves none)
    cordon = next(t for t in tasks if "kvm_ras.poison_guard.cordon" in t)
    assert "evacuation_plan.plan.moves > 0" in cordon["when"]


def test_the_default_template_follows_the_transport_and_old_callers_still_work():
    assert evreq.DEFAULTS["evacuate_migration_uri_template"] == ""
    assert evreq.DEFAULTS["evacuate_allow_plain_tcp"] is False
    hosts, groups = ["hv1", "hv2"], {"all": ["hv1", "hv2"], "hypervisors": ["hv1", "hv2"]}
    # a caller that gives a template and a tcp consent gets what it always got
    req = evreq.validate_request({"evacuate_source": "hv1", "evacuate_migration_uri_template": "qemu+tcp://{address}/system",
                                  "evacuate_allow_plain_tcp": "true"}, hosts, groups, {}, forks=5)
    assert req["migration_uris"] == {"hv2": "qemu+tcp://hv2/system"}
    # follow_transport keeps every URI the request already has
    assert evreq.follow_transport(req, TLS_FACT)["migration_uris"] == {"hv2": "qemu+tcp://hv2/system"}
