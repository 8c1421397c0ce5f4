# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Issue 13 in the evacuation rules: libvirt URI parameters as libvirt decodes them (item 8),
the report directory (item 9), the journal's resume decisions, the report of what a run
resumed, and a source that cannot be asked at the end of a run (item 7).

host_capacity_info results are shaped as in test_evacuation.py (libvirt 9.0 lab hypervisors); an
unreachable host is Ansible's ``{"unreachable": true, "msg": ...}`` and a host whose module
failed (the docker connection cannot exec) is ``{"failed": true, "msg": "MODULE FAILURE..."}``.
"""

from __future__ import annotations

import json

import pytest

from ansible_collections.kvm_ras.poison_guard.plugins.plugin_utils import evacuation_request as evreq
from ansible_collections.kvm_ras.poison_guard.plugins.plugin_utils import evacuation_plan as evplan
from ansible_collections.kvm_ras.poison_guard.plugins.plugin_utils import evacuation_report as evreport
from ansible_collections.kvm_ras.poison_guard.plugins.module_utils import journal

HOSTS = ["hv1", "hv2", "hv3", "localhost"]
GROUPS = {"hypervisors": ["hv1", "hv2", "hv3"], "all": HOSTS}


def problems_of(raw, hostvars=None):
    with pytest.raises(evreq.EvacuationInputError) as info:
        evreq.validate_request(raw, HOSTS, GROUPS, hostvars or {}, forks=5)
    return info.value.problems


# ------------------------------------------------------------------- item 8: URI params --

@pytest.mark.parametrize("query,name", [
    ("comm%61nd=/bin/sh", "command"),           # %-escaped letter: libvirt unescapes it
    ("COMMAND=/bin/sh", "command"),             # libvirt compares names case-insensitively
    ("%63%6F%6D%6D%61%6E%64=/bin/sh", "command"),
    ("no_tty=1&Sock%65t=/tmp/x", "socket"),
    ("netc%41t=/tmp/nc", "netcat"),
    ("pro%78y=native", "proxy"),
    ("command%00x=/bin/sh", "command"),         # a decoded NUL ends libvirt's C string
])
def test_escaped_or_cased_forbidden_parameters_are_refused(query, name):
    uri = "qemu+ssh://hv2/system?" + query
    problems = problems_of({"evacuate_source": "hv1", "evacuate_targets": "hv2"},
                           {"hv2": {"kvm_ras_migration_uri": uri}})
    assert any("sets %r" % name in p for p in problems), problems


def test_parameter_names_that_decode_to_odd_characters_are_refused():
    problems = problems_of({"evacuate_source": "hv1", "evacuate_targets": "hv2"},
                           {"hv2": {"kvm_ras_migration_uri": "qemu+ssh://hv2/system?a%3Db=1"}})
    assert any("not a plain libvirt URI parameter name" in p for p in problems), problems


def test_harmless_parameters_still_pass():
    req = evreq.validate_request({"evacuate_source": "hv1", "evacuate_targets": "hv2"}, HOSTS, GROUPS,
                                 {"hv2": {"kvm_ras_migration_uri": "qemu+ssh://root@hv2/system?no_tty=1&keyfile=/root/.ssh/id"}},
                                 forks=5)
    assert req["migration_uris"]["hv2"].endswith("?no_tty=1&keyfile=/root/.ssh/id")


def test_uri_param_names_match_libvirts_parse():
    assert evreq.uri_param_names("a=1&comm%61nd=2;B%5Fc=3&&novalue") == ["a", "command", "B_c", "novalue"]


# ---------------------------------------------------------------- item 9: report directory --

@pytest.mark.parametrize("directory", ["../../x", "reports/../../../x", "/srv/reports/../../etc", "..", "a\\..\\..\\b"])
def test_report_dir_that_climbs_out_is_refused_before_anything(directory):
    problems = problems_of({"evacuate_source": "hv1", "evacuate_report_dir": directory})
    assert any("evacuate_report_dir" in p and "'..'" in p for p in problems), problems


@pytest.mark.parametrize("directory", ["evacuation-reports", "reports/hv1", "/var/log/kvm_ras/reports", "~/reports"])
def test_ordinary_report_dirs_pass(directory):
    req = evreq.validate_request({"evacuate_source": "hv1", "evacuate_report_dir": directory}, HOSTS, GROUPS, {}, forks=5)
    assert req["evacuate_report_dir"] == directory


# ------------------------------------------------------------- item 7: resume decisions --

def host(active=False, exists=True, persistent=True, job=False, reachable=True, error=None):
    return {"reachable": reachable, "error": error, "exists": exists, "active": active,
            "persistent": persistent, "job": job}


ENTRY = {"name": "tick-1", "operation": "cold_migrate", "target": "hv2", "dest_uri": "qemu+tcp://hv2/system"}


@pytest.mark.parametrize("source,dest,saved,found,action", [
    (host(active=True), host(exists=False), False, "source", journal.DO_NOTHING),
    (host(active=True), host(reachable=False), False, "source", journal.DO_NOTHING),
    (host(exists=False), host(active=True), False, "target", journal.DO_NOTHING),
    (host(), host(active=True), False, "target", journal.DO_FINISH),
    (host(), host(active=True, persistent=False), False, "target", journal.DO_NOTHING),
    (host(), host(), False, "nowhere", journal.DO_START_SOURCE),
    (host(), host(exists=False), False, "nowhere", journal.DO_START_SOURCE),
    (host(exists=False), host(), False, "nowhere", journal.DO_START_TARGET),
    (host(exists=False), host(exists=False), True, "nowhere", journal.DO_CREATE_SOURCE),
    (host(exists=False), host(exists=False), False, "nowhere", journal.DO_UNRESOLVED),
    (host(), host(reachable=False, error="Connection refused"), False, "unknown", journal.DO_UNRESOLVED),
    (host(active=True), host(active=True), False, "both", journal.DO_UNRESOLVED),
    (host(active=True, job=True), host(active=True), False, "unknown", journal.DO_UNRESOLVED),
    (host(reachable=False), host(), False, "unknown", journal.DO_UNRESOLVED),
])
def test_resume_decision_table(source, dest, saved, found, action):
    decision = journal.resume_decision(ENTRY, source, dest, saved_xml=saved)
    assert (decision["found"], decision["action"]) == (found, action), decision
    assert decision["reason"]


def test_resume_never_starts_a_vm_whose_target_cannot_be_asked():
    for saved in (False, True):
        decision = journal.resume_decision(ENTRY, host(), host(reachable=False), saved_xml=saved)
        assert decision["action"] == journal.DO_UNRESOLVED and "cannot be asked" in decision["reason"]


def test_entry_keys_are_file_names_whatever_the_vm_name():
    assert journal.entry_key("x", "3F0C1A8E-2B1E-4C55-9D1E-0A1B2C3D4E5F") == "3f0c1a8e-2b1e-4c55-9d1e-0a1b2c3d4e5f"
    key = journal.entry_key("../../etc/passwd $(touch .pwned)", "not-a-uuid")
    assert "/" not in key and key.startswith("name-") and len(key) == 45


# ------------------------------------------------- item 7: the report, unreachable source --

def capacity(domains):
    return {"changed": False, "libvirt_ok": True, "domains": domains, "cpus": 2, "memory_free_mib": 20000,
            "running_vcpus": 0, "running_count": len(domains), "cordon": {"cordoned": False},
            "evacuation_lock": {"held": False}, "paths": {}}


def running(name):
    return {"name": name, "uuid": "uuid-" + name, "state": "running", "active": True, "persistent": True,
            "memory_mib": 64, "vcpus": 1, "disks": []}


def plan_vm(name, action=evplan.ACTION_LIVE, target="hv2"):
    return {"name": name, "action": action, "target": target, "persistent": True, "uuid": "uuid-" + name,
            "status": "clean", "reason": None}


UNREACHABLE = {"unreachable": True, "msg": "Failed to connect to the host via ssh: Connection timed out", "changed": False}
EXEC_FAILED = {"failed": True, "msg": "MODULE FAILURE\nSee stdout/stderr for the exact error",
               "module_stderr": "Error response from daemon: No such container: evacuate-hv1"}


@pytest.mark.parametrize("source_state", [UNREACHABLE, EXEC_FAILED], ids=["unreachable", "exec-failed"])
def test_a_moved_vm_is_unverified_while_the_source_cannot_be_asked(source_state):
    plan = {"source": "hv1", "targets": [], "vms": [plan_vm("a")]}
    [record] = evreport.verify(plan, [], {"hv1": source_state, "hv2": capacity([running("a")]), "hv3": capacity([])})
    assert record["status"] == evplan.ST_UNVERIFIED and record["running_on"] == ["hv2"]
    assert "source hv1 could not be asked" in record["problems"][0]
    decision = evreport.exit_decision([{"name": "a", "status": record["status"], "problems": record["problems"],
                                        "reason": None}])
    assert decision["failed"] is True and "need attention" in decision["msg"]


def test_a_vm_whose_journal_entry_could_not_be_written_is_not_moved():
    out = evreport.vm_outcome(plan_vm("a"), {"journal": EXEC_FAILED, "migrate": {"skipped": True}})
    assert out["result"] == "not_moved" and out["failure_class"] == "journal"
    assert "journal entry could not be written" in out["message"]
    out = evreport.vm_outcome(plan_vm("a"), {"journal": UNREACHABLE, "migrate": {"skipped": True}})
    assert out["failure_class"] == "unreachable"


def test_the_report_says_what_was_resumed():
    req = evreq.validate_request({"evacuate_source": "hv1"}, HOSTS, GROUPS, {}, forks=5)
    plan = {"source": "hv1", "targets": [], "vms": []}
    resumed = [{"name": "tick-1", "uuid": "u1", "operation": "live_migrate", "run_id": "hv1-dead", "target": "hv2",
                "found": "target", "action": "none", "ok": True, "message": "runs on hv2: the interrupted operation "
                "had completed", "path": "/var/lib/kvm_ras/journal/u1.json"},
               {"name": "tick-2", "uuid": "u2", "operation": "cold_migrate", "run_id": "hv1-dead", "target": "hv3",
                "found": "nowhere", "action": "start_on_source", "ok": True, "message": "started again on the source"}]
    report = evreport.build_report(req, plan, [], [], {"run_id": "r"}, resumed=resumed)
    assert [r["name"] for r in report["resumed"]] == ["tick-1", "tick-2"]
    assert report["resumed"][1]["action"] == "start_on_source" and "path" not in report["resumed"][0]
    json.dumps(report)
    text = "\n".join(evreport.render_report(report))
    assert "resumed from an interrupted run" in text
    assert "tick-2 (cold_migrate by run hv1-dead, target hv3): found nowhere, start_on_source" in text


def test_a_moved_vm_is_not_verified_off_a_source_whose_libvirt_is_down():
    plan = {"source": "hv1", "targets": [], "vms": [plan_vm("a")]}
    dead_source = {"failed": True, "msg": "Failed to connect socket to '/var/run/libvirt/libvirt-sock'",
                   "qemu_processes": []}
    [record] = evreport.verify(plan, [], {"hv1": dead_source, "hv2": capacity([running("a")]), "hv3": capacity([])})
    assert record["status"] == evplan.ST_MIGRATED
    assert any("not verified that the source no longer defines it" in p for p in record["problems"])
