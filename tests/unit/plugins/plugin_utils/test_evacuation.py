# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The rules of evacuate_host.yml: input validation, placement, policies, plan, lock,
outcomes, verification, report and the exit-status rule.

Fixtures are shaped like the real results the playbook feeds these functions:
- ``host_capacity_info`` results as the module returns them on a lab hypervisor (libvirt 9.0,
  64 MiB / 1 vCPU TCG "tick" guests, 2 host CPUs, ~20 GiB free memory);
- ``poison_info`` results in the shared contract (team brief): vms with name, uuid, status,
  evidence, migration_guard, reasons;
- ``migration_gate`` results as plugins/module_utils/gate.evaluate returns them;
- ``live_migrate`` results with the module's RETURN keys (running_on, failure.class,
  duration_seconds, job.duration_ms).
"""

from __future__ import annotations

import json

import pytest

from ansible_collections.kvm_ras.poison_guard.plugins.plugin_utils import evacuation_request as evreq
from ansible_collections.kvm_ras.poison_guard.plugins.plugin_utils import evacuation_plan as evplan
from ansible_collections.kvm_ras.poison_guard.plugins.plugin_utils import evacuation_report as evreport
from ansible_collections.kvm_ras.poison_guard.plugins.module_utils import gate
from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.messages import UPSTREAM_REFUSAL

HOSTS = ["hv1", "hv2", "hv3", "localhost"]
GROUPS = {"hypervisors": ["hv1", "hv2", "hv3"], "all": HOSTS}


# The local fact the migration_transport role writes on a hypervisor it set up for TLS
# (roles/migration_transport/tasks/fact.yml).
TLS_FACT = {"mode": "tls", "uri_template": "qemu+tls://{address}/system", "address": "hv1", "names": ["hv1"],
            "group": "hypervisors"}


def request(**raw):
    """A checked request whose targets follow the TLS transport of the source, as in the plan."""
    base = {"evacuate_source": "hv1"}
    base.update(raw)
    return evreq.follow_transport(evreq.validate_request(base, HOSTS, GROUPS, {}, forks=5), TLS_FACT)


def problems_of(raw, hosts=None, groups=None, hostvars=None, forks=5):
    hosts = HOSTS if hosts is None else hosts
    groups = GROUPS if groups is None else groups
    with pytest.raises(evreq.EvacuationInputError) as info:
        evreq.validate_request(raw, hosts, groups, hostvars or {}, forks=forks)
    return info.value.problems, str(info.value)


# ------------------------------------------------------------------------------ validation --

def test_defaults_take_the_other_hypervisors_as_targets():
    req = request()
    assert req["evacuate_source"] == "hv1"
    assert req["evacuate_targets"] == ["hv2", "hv3"]
    assert req["targets_defaulted"] is True
    assert req["evacuate_max_parallel"] == 2
    assert req["evacuate_poisoned_vm_policy"] == "leave"
    assert req["evacuate_unknown_vm_policy"] == "leave"
    assert req["evacuate_cordon"] is True
    assert req["migration_uris"] == {"hv2": "qemu+tls://hv2/system", "hv3": "qemu+tls://hv3/system"}


def test_extra_var_strings_are_typed():
    # -e evacuate_max_parallel=4 -e evacuate_cordon=false arrive as strings
    req = request(evacuate_max_parallel="4", evacuate_cordon="false", evacuate_migration_timeout=" 120 ", evacuate_bandwidth="100",
                  evacuate_cpu_allocation_ratio="2.5", evacuate_targets="hv3, hv2", evacuate_leave_vms="db 1,web")
    assert req["evacuate_max_parallel"] == 4 and req["evacuate_cordon"] is False
    assert req["evacuate_migration_timeout"] == 120 and req["evacuate_bandwidth"] == 100
    assert req["evacuate_cpu_allocation_ratio"] == 2.5
    assert req["evacuate_targets"] == ["hv3", "hv2"]
    assert req["evacuate_leave_vms"] == ["db 1", "web"]


def test_unknown_source_is_named_with_the_known_hypervisors():
    problems, text = problems_of({"evacuate_source": "hv9"})
    assert problems == ["evacuate_source 'hv9' is not in the inventory (known hypervisors: hv1, hv2, hv3)"]
    assert text.startswith("evacuation refused before any change: ")


def test_missing_source_says_how_to_set_it():
    problems, _unused = problems_of({})
    assert any("evacuate_source is not set" in p and "-e evacuate_source=hv1" in p for p in problems)


def test_source_as_its_own_target_is_refused():
    problems, _unused = problems_of({"evacuate_source": "hv1", "evacuate_targets": ["hv1", "hv2"]})
    assert problems == ["evacuate_targets includes the source 'hv1' itself: a host cannot receive its own VMs; "
                        "remove it from evacuate_targets"]


def test_no_targets_when_the_group_holds_only_the_source():
    problems, _unused = problems_of({"evacuate_source": "hv1"}, groups={"hypervisors": ["hv1"]})
    assert len(problems) == 1 and problems[0].startswith("no targets: group 'hypervisors' holds only the source")


def test_no_targets_when_the_group_is_missing():
    problems, _unused = problems_of({"evacuate_source": "hv1"}, groups={})
    assert "has no group 'hypervisors'" in problems[0]


def test_only_the_source_as_target_means_no_targets():
    problems, _unused = problems_of({"evacuate_source": "hv1", "evacuate_targets": "hv1"})
    assert any("includes the source" in p for p in problems)


@pytest.mark.parametrize("name,value,expected", [
    ("evacuate_poisoned_vm_policy", "reboot",
     "evacuate_poisoned_vm_policy must be one of leave, reboot_then_migrate, cold_migrate, migrate_with_holes, got 'reboot'"),
    ("evacuate_unknown_vm_policy", "allow", "evacuate_unknown_vm_policy must be one of leave, migrate, got 'allow'"),
    ("evacuate_reboot_mode", "hard", "evacuate_reboot_mode must be one of restart, reset, got 'hard'"),
    ("evacuate_migration_copy_storage", "full", "evacuate_migration_copy_storage must be one of none, all, inc, got 'full'"),
])
def test_bad_policy_words_list_the_allowed_ones(name, value, expected):
    problems, _unused = problems_of({"evacuate_source": "hv1", name: value})
    assert problems == [expected]


@pytest.mark.parametrize("name,value,fragment", [
    ("evacuate_max_parallel", "0", "evacuate_max_parallel must be between 1 and 64, got 0"),
    ("evacuate_max_parallel", "two", "evacuate_max_parallel must be a whole number between 1 and 64, got 'two'"),
    ("evacuate_max_parallel", "2.5", "evacuate_max_parallel must be a whole number"),
    ("evacuate_max_parallel", True, "evacuate_max_parallel must be a whole number"),
    ("evacuate_migration_timeout", -5, "evacuate_migration_timeout must be between 10 and"),
    ("evacuate_migration_timeout", "5", "evacuate_migration_timeout must be between 10 and"),
    ("evacuate_bandwidth", "-1", "evacuate_bandwidth must be between 0 and"),
    ("evacuate_memory_reserve_mib", "lots", "evacuate_memory_reserve_mib must be a whole number"),
    ("evacuate_cpu_allocation_ratio", "nan", "evacuate_cpu_allocation_ratio must be a number"),
    ("evacuate_cpu_allocation_ratio", 0, "evacuate_cpu_allocation_ratio must be between 0.1 and 64.0"),
    ("evacuate_cordon", "maybe", "evacuate_cordon must be true or false, got 'maybe'"),
])
def test_bad_numbers_and_booleans(name, value, fragment):
    problems, _unused = problems_of({"evacuate_source": "hv1", name: value})
    assert len(problems) == 1 and fragment in problems[0]


def test_max_parallel_above_forks_names_the_fix():
    problems, _unused = problems_of({"evacuate_source": "hv1", "evacuate_max_parallel": 8}, forks=5)
    assert problems == ["evacuate_max_parallel 8 is above Ansible's forks (5), which caps how many migrations can run at "
                        "once: run with --forks 8 (or ANSIBLE_FORKS=8), or lower evacuate_max_parallel"]


@pytest.mark.parametrize("bad", ["hv1; rm -rf /", "$(reboot)", "hv1 hv2", "`id`", "hv1|cat", "../hv1", "hv1'"])
def test_host_names_with_shell_metacharacters_are_refused(bad):
    problems, _unused = problems_of({"evacuate_source": bad})
    assert any("is not a valid inventory host name" in p and "shell metacharacters" in p for p in problems)
    problems, _unused = problems_of({"evacuate_source": "hv1", "evacuate_targets": [bad]})
    assert any("evacuate_targets entry" in p and "not a valid inventory host name" in p for p in problems)


def test_vm_names_are_data_but_must_be_libvirt_names():
    req = request(evacuate_leave_vms=["odd $(touch x) 'q'", "tab\tname"])
    assert req["evacuate_leave_vms"] == ["odd $(touch x) 'q'", "tab\tname"]
    problems, _unused = problems_of({"evacuate_source": "hv1", "evacuate_leave_vms": ["a/b"]})
    assert "is not a libvirt domain name" in problems[0]


def test_every_problem_is_reported_at_once():
    problems, text = problems_of({"evacuate_source": "hv9", "evacuate_max_parallel": "x", "evacuate_poisoned_vm_policy": "nuke",
                                  "evacuate_cordon": "perhaps"})
    assert len(problems) == 4
    assert text.startswith("evacuation refused before any change (4 problems):\n- ")


def test_unknown_inputs_are_refused():
    problems, _unused = problems_of({"evacuate_source": "hv1", "max_paralel": 3})
    assert problems[0].startswith("unknown input(s) max_paralel")


@pytest.mark.parametrize("uri,fragment", [
    ("qemu+ext:///system?command=/bin/sh", "is not a libvirt URI"),
    ("qemu+ext://hv2/system?command=/bin/sh", "uses transport 'qemu+ext'"),
    ("qemu+ssh://hv2/system?command=/bin/sh", "sets 'command'"),
    ("qemu+unix://hv2/system", "uses transport 'qemu+unix'"),
    ("qemu+tcp://hv2 ;reboot/system", "is not a libvirt URI"),
])
def test_dangerous_or_malformed_migration_uris_are_refused(uri, fragment):
    problems, _unused = problems_of({"evacuate_source": "hv1", "evacuate_targets": "hv2"},
                                    hostvars={"hv2": {"kvm_ras_migration_uri": uri}})
    assert any(fragment in p for p in problems), problems


def test_migration_uri_from_inventory_and_template():
    hostvars = {"hv2": {"ansible_host": "10.0.0.2"}, "hv3": {"kvm_ras_migration_uri": "qemu+tls://hv3.example/system"}}
    req = evreq.validate_request({"evacuate_source": "hv1", "evacuate_migration_uri_template": "qemu+ssh://root@{address}/system"},
                                 HOSTS, GROUPS, hostvars, forks=None)
    assert req["migration_uris"] == {"hv2": "qemu+ssh://root@10.0.0.2/system", "hv3": "qemu+tls://hv3.example/system"}


def test_vm_timeout_scales_with_ram():
    req = request(evacuate_migration_timeout=100, evacuate_migration_timeout_per_gib=30)
    assert evreq.vm_timeout(req, 64) == 130
    assert evreq.vm_timeout(req, 4096) == 220
    assert evreq.vm_timeout(req, 0) == 100


# ------------------------------------------------------------------------------ fixtures --

def domain(name, memory=64, vcpus=1, state="running", persistent=True, uuid=None, disks=None):
    return {"name": name, "uuid": uuid or "uuid-" + name, "state": state, "active": state == "running",
            "persistent": persistent, "memory_mib": memory, "vcpus": vcpus,
            "disks": disks if disks is not None else [
                {"target": "vda", "type": "file", "device": "disk", "path": "/var/lib/libvirt/images/shared/tick.img",
                 "readonly": True, "shareable": False, "size": 512}]}


def capacity(domains=(), cpus=2, free=20000, cordoned=False, lock=False, paths=None):
    running = [d for d in domains if d["active"]]
    return {"changed": False, "libvirt_ok": True, "cpus": cpus, "memory_free_mib": free, "memory_total_mib": 24000,
            "running_vcpus": sum(d["vcpus"] for d in running), "running_count": len(running),
            "domains": list(domains), "cordon": {"cordoned": cordoned, "since": "2026-01-01T00:00:00Z",
                                                 "reason": "DIMM"} if cordoned else {"cordoned": False},
            "evacuation_lock": {"held": lock, "owner": "other-run"} if lock else {"held": False},
            "paths": paths if paths is not None else {"/var/lib/libvirt/images/shared/tick.img": {"exists": True, "size": 512}}}


def poison(statuses):
    vms = []
    for name, status in statuses.items():
        vms.append({"name": name, "uuid": "uuid-" + name, "pid": 100, "status": status,
                    "poisoned_pages": [], "migration_guard": False,
                    "evidence": [{"source": "qemu_log", "detail": "Guest MCE Memory Error at QEMU addr 0x7f00 and GUEST "
                                  "addr 0x100000 of type BUS_MCEERR_AO injected"}] if status == "poisoned" else [],
                    "reasons": ["pagemap of pid 100 unreadable"] if status == "unknown" else [],
                    "qemu_binary": "/usr/bin/qemu-system-x86_64", "memory_mib": 64, "vcpus": 1})
    return {"vms": vms, "poisoned_vms": [v["name"] for v in vms if v["status"] == "poisoned"],
            "unknown_vms": [v["name"] for v in vms if v["status"] == "unknown"],
            "clean_vms": [v["name"] for v in vms if v["status"] == "clean"], "host": {}}


def gate_for(poison_result, unknown_policy="leave"):
    return gate.evaluate(poison_result, operation="live_migration", on_poisoned="skip",
                         on_unknown="allow" if unknown_policy == "migrate" else "skip")


def plan_for(statuses, req=None, targets=None, extra_domains=(), **raw):
    req = req or request(**raw)
    doms = [domain(n) for n in statuses] + list(extra_domains)
    result = poison(statuses)
    targets = targets if targets is not None else {"hv2": capacity(), "hv3": capacity()}
    return req, evplan.build_plan(req, capacity(doms), targets, result, gate_for(result, req["evacuate_unknown_vm_policy"]))


def by_name(plan):
    return {vm["name"]: vm for vm in plan["vms"]}


# ------------------------------------------------------------------------------ policies --

@pytest.mark.parametrize("status,allowed,poisoned_policy,unknown_policy,expected", [
    ("clean", True, "leave", "leave", evplan.ACTION_LIVE),
    ("clean", False, "leave", "leave", evplan.ACTION_LEAVE),           # gate blocked a clean VM: fail closed
    ("poisoned", False, "leave", "leave", evplan.ACTION_LEAVE),
    ("poisoned", False, "reboot_then_migrate", "leave", evplan.ACTION_REBOOT),
    ("poisoned", False, "cold_migrate", "leave", evplan.ACTION_COLD),
    ("poisoned", True, "leave", "migrate", evplan.ACTION_LEAVE),       # never live-migrate a poisoned VM
    ("unknown", False, "leave", "leave", evplan.ACTION_LEAVE),
    ("unknown", True, "leave", "migrate", evplan.ACTION_LIVE),
    ("unknown", False, "leave", "migrate", evplan.ACTION_LEAVE),      # policy says migrate, gate said no
    ("unknown", True, "cold_migrate", "leave", evplan.ACTION_LEAVE),  # poisoned policy does not apply to unknown
    ("weird", True, "leave", "leave", evplan.ACTION_LEAVE),
])
def test_decide_action_table(status, allowed, poisoned_policy, unknown_policy, expected):
    action, _unused = evplan.decide_action(status, allowed, poisoned_policy, unknown_policy)
    assert action == expected


def test_poisoned_left_vm_carries_the_upstream_message():
    action, reason = evplan.decide_action("poisoned", False, "leave", "leave")
    assert (action, reason) == (evplan.ACTION_LEAVE, UPSTREAM_REFUSAL)


def test_leave_request_wins_over_everything():
    action, reason = evplan.decide_action("clean", True, "leave", "leave", leave_requested=True)
    assert action == evplan.ACTION_LEAVE and "evacuate_leave_vms" in reason


# ------------------------------------------------------------------------------ placement --

def test_capacity_excludes_cordoned_locked_and_unreachable_targets():
    req = request()
    assert evplan.target_capacity("hv2", capacity(cordoned=True), req)["reason"].startswith("cordoned since")
    assert "being evacuated itself" in evplan.target_capacity("hv2", capacity(lock=True), req)["reason"]
    unreachable = evplan.target_capacity("hv2", {"unreachable": True, "msg": "ssh: no route"}, req)
    assert unreachable["usable"] is False and unreachable["reason"] == "unreachable: ssh: no route"
    failed = evplan.target_capacity("hv2", {"failed": True, "msg": "Failed to connect socket"}, req)
    assert failed["reason"] == "libvirt not answering: Failed to connect socket"
    good = evplan.target_capacity("hv2", capacity(domains=[domain("x", vcpus=3)], cpus=2, free=2048), req)
    # 2 CPUs x ratio 4.0 = 8 vCPUs, 3 in use; 2048 MiB free minus the 512 MiB reserve
    assert (good["usable"], good["vcpu_free"], good["memory_free_mib"]) == (True, 5, 1536)


def test_place_spreads_by_free_memory_and_respects_limits():
    req = request()
    caps = [evplan.target_capacity("hv2", capacity(free=512 + 300), req), evplan.target_capacity("hv3", capacity(free=512 + 200), req)]
    vms = [dict(domain("a", memory=150), action=evplan.ACTION_LIVE), dict(domain("b", memory=120), action=evplan.ACTION_LIVE),
           dict(domain("c", memory=100), action=evplan.ACTION_LIVE), dict(domain("d", memory=10), action=evplan.ACTION_LEAVE)]
    result = evplan.place(vms, caps)
    # a (150) -> hv2 (300 free, most), b (120) -> hv3 (200 vs 150 left), c (100) -> hv2 (150 vs 80)
    assert result == {"a": ("hv2", None), "b": ("hv3", None), "c": ("hv2", None)}
    assert caps[0]["memory_free_mib"] == 50 and caps[1]["memory_free_mib"] == 80
    assert "d" not in result


def test_place_reports_why_a_vm_does_not_fit():
    req = request()
    caps = [evplan.target_capacity("hv2", capacity(free=512 + 100), req),
            evplan.target_capacity("hv3", capacity(free=20000, cpus=1, domains=[domain("busy", vcpus=4)]), req)]
    result = evplan.place([dict(domain("big", memory=200, vcpus=1), action=evplan.ACTION_LIVE)], caps)
    target, reason = result["big"]
    assert target is None
    assert reason == "no target with room for 200 MiB and 1 vCPU(s): hv2 has 100 MiB free; hv3 has 0 vCPU(s) free"


def test_cold_migration_needs_the_disks_on_the_target():
    ok, why = evplan.disks_available([{"type": "file", "path": "/img/a.qcow2", "size": 10}], {"/img/a.qcow2": {"exists": False}})
    assert not ok and "do not exist on the target: cold migration needs shared or copied storage" in why
    ok, why = evplan.disks_available([{"type": "file", "path": "/img/a.qcow2", "size": 10}], {"/img/a.qcow2": {"exists": True, "size": 11}})
    assert not ok and "differ in size" in why
    assert evplan.disks_available([{"type": "network", "path": "pool/rbd"}, {"type": "file", "path": None}], {}) == (True, None)


# ------------------------------------------------------------------------------ plan --

def test_plan_all_clean_moves_everything_within_capacity():
    req, plan = plan_for({"g%d" % i: "clean" for i in range(6)})
    vms = by_name(plan)
    assert plan["moves"] == 6 and plan["counts"] == {evplan.ACTION_LIVE: 6}
    assert sorted(vm["target"] for vm in vms.values()) == ["hv2", "hv2", "hv2", "hv3", "hv3", "hv3"]
    assert all(vm["dest_uri"] == "qemu+tls://%s/system" % vm["target"] for vm in vms.values())
    assert all(vm["timeout"] == 300 + 60 for vm in vms.values())


def test_plan_without_transport_moves_nothing_and_says_how_to_set_it_up():
    """A stock source (no transport fact, no template, no kvm_ras_migration_uri): every target is
    unusable with the reason and the fix, nothing moves, and the plan cannot start."""
    req = evreq.follow_transport(evreq.validate_request({"evacuate_source": "hv1"}, HOSTS, GROUPS, {}, forks=5), None)
    req, plan = plan_for({"web": "clean", "db": "clean"}, req=req)
    reason = ("no migration transport configured on hv1: set it up with the kvm_ras.poison_guard.migration_transport "
              "role (docs/migration-transport.md), or set evacuate_migration_uri_template / kvm_ras_migration_uri")
    assert [(t["name"], t["usable"], t["reason"]) for t in plan["targets"]] == [("hv2", False, reason),
                                                                                ("hv3", False, reason)]
    assert plan["moves"] == 0 and all(vm["dest_uri"] is None for vm in plan["vms"])
    lines = evplan.render_plan(plan, req, check_mode=True)
    assert "migration URIs: hv2 none, hv3 none" in lines
    assert any(line.startswith("hv2 ") and line.endswith(reason) for line in lines), lines
    assert evplan.plan_problems(plan) and reason in evplan.plan_problems(plan)[0]


def test_plan_dest_uri_is_the_final_uri_of_its_target():
    hostvars = {"hv3": {"kvm_ras_migration_uri": "qemu+ssh://root@hv3.mig/system"}}
    req = evreq.validate_request({"evacuate_source": "hv1"}, HOSTS, GROUPS, hostvars, forks=5)
    req = evreq.follow_transport(req, TLS_FACT)
    req, plan = plan_for({"g%d" % i: "clean" for i in range(4)}, req=req)
    uris = {"hv2": "qemu+tls://hv2/system", "hv3": "qemu+ssh://root@hv3.mig/system"}
    assert {vm["target"] for vm in plan["vms"]} == {"hv2", "hv3"}
    assert all(vm["dest_uri"] == uris[vm["target"]] for vm in plan["vms"])
    assert ("migration URIs: hv2 qemu+tls://hv2/system (the tls transport of hv1), "
            "hv3 qemu+ssh://root@hv3.mig/system (its kvm_ras_migration_uri)") in evplan.render_plan(plan, req)


@pytest.mark.parametrize("raw,hostvars,fragment", [
    ({"evacuate_migration_uri_template": "qemu+tcp://{address}/system"}, {},
     "evacuate_migration_uri_template 'qemu+tcp://{address}/system' uses qemu+tcp"),
    ({}, {"hv2": {"kvm_ras_migration_uri": "qemu+tcp://hv2:16509/system"}},
     "kvm_ras_migration_uri of 'hv2' 'qemu+tcp://hv2:16509/system' uses qemu+tcp"),
])
def test_plain_tcp_is_refused_naming_problem_and_fix_unless_allowed(raw, hostvars, fragment):
    problems, text = problems_of(dict({"evacuate_source": "hv1"}, **raw), hostvars=hostvars)
    assert len(problems) == 1 and fragment in problems[0], problems
    assert "no authentication and no encryption" in text
    assert "kvm_ras.poison_guard.migration_transport role" in text and "-e evacuate_allow_plain_tcp=true" in text
    req = evreq.validate_request(dict({"evacuate_source": "hv1", "evacuate_allow_plain_tcp": "yes"}, **raw),
                                 HOSTS, GROUPS, hostvars, forks=5)
    assert req["evacuate_allow_plain_tcp"] is True
    assert req["migration_uris"]["hv2"].startswith("qemu+tcp://hv2")


def test_a_transport_fact_that_cannot_be_used_is_refused():
    req = evreq.validate_request({"evacuate_source": "hv1"}, HOSTS, GROUPS, {}, forks=5)
    for fact, fragment in ((dict(TLS_FACT, uri_template="qemu+tcp://{address}/system"), "uses qemu+tcp"),
                           (dict(TLS_FACT, uri_template="qemu+ext://{address}/system"), "uses transport 'qemu+ext'"),
                           ("error loading facts as JSON or ini", "is not a JSON object"),
                           (dict(TLS_FACT, uri_template="qemu+tls://hv9/system"), "holds neither {address} nor {host}")):
        with pytest.raises(evreq.EvacuationInputError) as info:
            evreq.follow_transport(req, fact, facts_path="/etc/ansible/facts.d")
        assert fragment in str(info.value), (fact, str(info.value))
        assert "kvm_ras_migration_transport on hv1 (/etc/ansible/facts.d)" in str(info.value)
    # an empty template (the role's rollback) is no transport
    assert evreq.follow_transport(req, dict(TLS_FACT, uri_template=""))["migration_uris"] == {"hv2": None, "hv3": None}
    # and a fact nobody needs is not read
    given = evreq.validate_request({"evacuate_source": "hv1", "evacuate_migration_uri_template": "qemu+tls://{host}/system"},
                                   HOSTS, GROUPS, {}, forks=5)
    assert evreq.follow_transport(given, "garbage")["migration_uris"] == {"hv2": "qemu+tls://hv2/system",
                                                                          "hv3": "qemu+tls://hv3/system"}


def test_plan_poisoned_unknown_and_inactive():
    stopped = domain("off", state="shut off")
    stopped["active"] = False
    req, plan = plan_for({"ok": "clean", "bad": "poisoned", "what": "unknown"}, extra_domains=[stopped])
    vms = by_name(plan)
    assert (vms["ok"]["action"], vms["bad"]["action"], vms["what"]["action"], vms["off"]["action"]) == (
        evplan.ACTION_LIVE, evplan.ACTION_LEAVE, evplan.ACTION_LEAVE, evplan.ACTION_NONE)
    assert vms["bad"]["reason"] == UPSTREAM_REFUSAL and vms["bad"]["target"] is None
    assert "pagemap of pid 100 unreadable" in vms["what"]["reason"]
    assert vms["bad"]["evidence"][0]["source"] == "qemu_log"
    assert plan["running"] == 3 and plan["moves"] == 1


def test_plan_reboot_and_unknown_migrate_policies():
    _unused, plan = plan_for({"bad": "poisoned", "what": "unknown"}, evacuate_poisoned_vm_policy="reboot_then_migrate",
                             evacuate_unknown_vm_policy="migrate")
    vms = by_name(plan)
    assert vms["bad"]["action"] == evplan.ACTION_REBOOT and vms["bad"]["target"] in ("hv2", "hv3")
    assert vms["what"]["action"] == evplan.ACTION_LIVE


def test_plan_cold_migrate_refused_without_storage_on_targets():
    targets = {"hv2": capacity(paths={}), "hv3": capacity(paths={})}
    _unused, plan = plan_for({"bad": "poisoned"}, targets=targets, evacuate_poisoned_vm_policy="cold_migrate")
    vm = by_name(plan)["bad"]
    assert vm["action"] == evplan.ACTION_LEAVE and vm["planned_action"] == evplan.ACTION_COLD and vm["no_room"]
    assert "cold migration needs shared or copied storage" in vm["reason"]


def test_plan_leave_list_by_name_or_uuid_and_unknown_names_refused():
    _unused, plan = plan_for({"a": "clean", "b": "clean"}, evacuate_leave_vms=["uuid-b"])
    assert by_name(plan)["b"]["action"] == evplan.ACTION_LEAVE
    with pytest.raises(evreq.EvacuationInputError) as info:
        plan_for({"a": "clean"}, evacuate_leave_vms=["nosuch"])
    assert "evacuate_leave_vms names 'nosuch', which hv1 does not have (its VMs: a)" in str(info.value)


def test_plan_with_no_usable_target_is_a_problem_but_an_empty_host_is_not():
    targets = {"hv2": capacity(cordoned=True), "hv3": {"failed": True, "msg": "libvirtd down"}}
    _unused, plan = plan_for({"a": "clean"}, targets=targets)
    assert evplan.plan_problems(plan) == [
        "no usable target for 1 VM(s): hv2 cordoned since 2026-01-01T00:00:00Z (DIMM): uncordon it first to use it as "
        "a target; hv3 libvirt not answering: libvirtd down"]
    _unused, empty = plan_for({}, targets=targets)
    assert evplan.plan_problems(empty) == [] and empty["moves"] == 0


def test_render_plan_lists_every_vm_and_quotes_odd_names():
    _unused, plan = plan_for({"web1": "clean", "odd $(x) 'q'": "poisoned"})
    text = "\n".join(evplan.render_plan(plan, request(), check_mode=True))
    assert "Evacuation plan for hv1 (check mode: nothing will change)" in text
    assert "\"odd $(x) 'q'\"" in text and UPSTREAM_REFUSAL in text
    assert "summary: leave 1, live_migrate 1; 1 to move" in text


# ------------------------------------------------------------------------------ outcomes --

MIGRATED = {"changed": True, "migrated": True, "running_on": "destination", "failure": None,
            "duration_seconds": 1.42, "job": {"duration_ms": 1400}}
TIMED_OUT = {"failed": True, "changed": False, "running_on": "source", "aborted": True,
             "failure": {"class": "timeout", "message": "operation aborted: migration out job: canceled by client"},
             "msg": "timeout"}
DEST_DOWN = {"failed": True, "changed": False, "running_on": "source",
             "failure": {"class": "destination", "message": "unable to connect to server at 'hv3:16509': Connection refused"}}
SKIPPED = {"skipped": True, "changed": False}


def plan_vm(name, action, target="hv2"):
    return {"name": name, "action": action, "target": target, "persistent": True, "uuid": "uuid-" + name}


def test_outcome_of_a_live_migration():
    out = evreport.vm_outcome(plan_vm("a", evplan.ACTION_LIVE), {"reboot": SKIPPED, "migrate": MIGRATED, "cold": SKIPPED})
    assert (out["result"], out["duration_s"], out["failure_class"]) == ("moved", 1.42, None)
    out = evreport.vm_outcome(plan_vm("a", evplan.ACTION_LIVE), {"migrate": TIMED_OUT})
    assert (out["result"], out["failure_class"]) == ("not_moved", "timeout")
    assert out["message"] == "operation aborted: migration out job: canceled by client"
    out = evreport.vm_outcome(plan_vm("a", evplan.ACTION_LIVE), {})
    assert out["result"] == "not_started" and "did not run" in out["message"]


def test_outcome_of_reboot_then_migrate():
    vm = plan_vm("p", evplan.ACTION_REBOOT)
    clean = poison({"p": "clean"})
    still = poison({"p": "poisoned"})
    out = evreport.vm_outcome(vm, {"reboot": {"changed": True, "mode": "restart"}, "recheck": clean,
                                   "gate": gate_for(clean), "migrate": MIGRATED})
    assert out["result"] == "moved" and out["recheck_status"] == "clean"
    assert out["steps"] == ["reboot (restart): done", "re-check after reboot: clean", "live migration: done"]
    out = evreport.vm_outcome(vm, {"reboot": {"changed": True, "mode": "reset"}, "recheck": still,
                                   "gate": gate_for(still), "migrate": SKIPPED})
    assert (out["result"], out["failure_class"]) == ("not_moved", "still_poisoned")
    assert out["message"] == "still poisoned after the reboot: " + UPSTREAM_REFUSAL
    out = evreport.vm_outcome(vm, {"reboot": {"failed": True, "msg": "domain is not running"}})
    assert (out["result"], out["failure_class"], out["message"]) == ("not_moved", "reboot", "domain is not running")


# ------------------------------------------------------------------------------ verification --

def states(**hosts):
    return {host: capacity(doms) if isinstance(doms, list) else doms for host, doms in hosts.items()}


def verify_one(action, post, persistent=True, target="hv2"):
    vm = plan_vm("a", action, target)
    vm["persistent"] = persistent
    plan = {"source": "hv1", "targets": [], "vms": [vm]}
    return evreport.verify(plan, [], post)[0]


def gone(name):
    return domain(name)


def defined_only(name):
    d = domain(name, state="shut off")
    d["active"] = False
    return d


def test_verify_migrated_and_definitions():
    rec = verify_one(evplan.ACTION_LIVE, states(hv1=[], hv2=[domain("a")], hv3=[]))
    assert (rec["status"], rec["running_on"], rec["defined_on"], rec["problems"]) == (evplan.ST_MIGRATED, ["hv2"], ["hv2"], [])
    rec = verify_one(evplan.ACTION_LIVE, states(hv1=[defined_only("a")], hv2=[domain("a")], hv3=[]))
    assert rec["problems"] == ["still defined on the source hv1: it could be started twice"]
    rec = verify_one(evplan.ACTION_LIVE, states(hv1=[], hv2=[domain("a", persistent=False)], hv3=[]))
    assert rec["problems"] == ["not persistent on hv2 although it was persistent on the source"]


def test_verify_stayed_left_down_duplicate_unverified():
    assert verify_one(evplan.ACTION_LIVE, states(hv1=[domain("a")], hv2=[], hv3=[]))["status"] == evplan.ST_STAYED
    assert verify_one(evplan.ACTION_LEAVE, states(hv1=[domain("a")], hv2=[], hv3=[]))["status"] == evplan.ST_LEFT
    rec = verify_one(evplan.ACTION_LIVE, states(hv1=[defined_only("a")], hv2=[], hv3=[]))
    assert rec["status"] == evplan.ST_DOWN and rec["problems"] == ["runs nowhere: it was running on hv1 when the evacuation began"]
    rec = verify_one(evplan.ACTION_LIVE, states(hv1=[domain("a")], hv2=[domain("a")], hv3=[]))
    assert rec["status"] == evplan.ST_DUPLICATE and rec["running_on"] == ["hv1", "hv2"]
    rec = verify_one(evplan.ACTION_LIVE, states(hv1=[], hv2=[], hv3={"unreachable": True}))
    assert rec["status"] == evplan.ST_UNVERIFIED and "could not ask hv3" in rec["problems"][0]


def test_verify_uses_qemu_processes_when_libvirt_is_down():
    # host_capacity_info on a host whose libvirtd is stopped: failed, but QEMU processes listed
    dead = {"failed": True, "msg": "Failed to connect socket to '/var/run/libvirt/libvirt-sock'",
            "qemu_processes": [{"name": "a", "pid": 4242, "uuid": "uuid-a"}]}
    rec = verify_one(evplan.ACTION_LIVE, states(hv1=[], hv2=[], hv3=dead), target="hv3")
    assert rec["status"] == evplan.ST_MIGRATED and rec["running_on"] == ["hv3"]
    assert rec["problems"] == ["its definition on hv3 could not be checked (libvirt not answering)"]
    assert rec["notes"] == ["libvirt on hv3 did not answer; its QEMU processes were listed instead"]
    rec = verify_one(evplan.ACTION_LIVE, states(hv1=[domain("a")], hv2=[], hv3=dict(dead, qemu_processes=[])), target="hv3")
    assert rec["status"] == evplan.ST_STAYED and rec["running_on"] == ["hv1"]


def test_restore_candidates_prefer_the_source():
    plan = {"source": "hv1", "targets": [], "vms": [
        plan_vm("a", evplan.ACTION_REBOOT), plan_vm("b", evplan.ACTION_COLD), plan_vm("c", evplan.ACTION_LIVE),
        plan_vm("off", evplan.ACTION_NONE)]}
    post = states(hv1=[defined_only("a"), defined_only("off")], hv2=[defined_only("b")], hv3=[domain("c")])
    assert evreport.restore_candidates(plan, post) == [{"name": "a", "host": "hv1"}, {"name": "b", "host": "hv2"}]


# ------------------------------------------------------------------------------ report + exit --

RUN = {"run_id": "hv1-20260101T000000Z-abcd", "started_at": "2026-01-01T00:00:00Z",
       "finished_at": "2026-01-01T00:01:00Z", "controller": "ctl", "check_mode": False}


def report_for(statuses, post, outcomes, **raw):
    req, plan = plan_for(statuses, **raw)
    records = evreport.verify(plan, outcomes, post)
    return evreport.build_report(req, plan, outcomes, records, RUN)


def test_report_all_moved_is_ok_and_serialisable():
    outcomes = [dict(evreport.vm_outcome(plan_vm(n, evplan.ACTION_LIVE), {"migrate": MIGRATED}), name=n) for n in ("a", "b")]
    report = report_for({"a": "clean", "b": "clean"}, states(hv1=[], hv2=[domain("a")], hv3=[domain("b")]), outcomes)
    assert report["failed"] is False and report["source_empty"] is True
    assert report["msg"] == "evacuation done: 2 VM(s) moved, the source runs no VM"
    assert {v["name"]: v["running_on"] for v in report["vms"]} == {"a": ["hv2"], "b": ["hv3"]}
    json.dumps(report)
    text = "\n".join(evreport.render_report(report))
    assert "OK: evacuation done" in text and "1.4 s" in text


def test_report_poisoned_left_by_policy_is_not_a_failure_but_is_named():
    # the policy given explicitly (-e evacuate_poisoned_vm_policy=leave): the operator agreed
    report = report_for({"bad": "poisoned"}, states(hv1=[domain("bad")], hv2=[], hv3=[]), [],
                        evacuate_poisoned_vm_policy="leave")
    assert report["failed"] is False and report["source_empty"] is False
    assert report["left_on_source"] == ["bad"]
    vm = report["vms"][0]
    assert (vm["status"], vm["action"], vm["reason"]) == (evplan.ST_LEFT, evplan.ACTION_LEAVE, UPSTREAM_REFUSAL)
    assert report["msg"] == "evacuation done: 0 VM(s) moved, 1 left on the source as asked: bad"


def test_report_failed_migration_fails_the_run_and_names_it():
    outcomes = [dict(evreport.vm_outcome(plan_vm("a", evplan.ACTION_LIVE, "hv3"), {"migrate": DEST_DOWN}), name="a")]
    report = report_for({"a": "clean"}, states(hv1=[domain("a")], hv2=[], hv3=[]), outcomes)
    vm = report["vms"][0]
    assert report["failed"] is True and vm["status"] == evplan.ST_STAYED and vm["failure_class"] == "destination"
    assert report["msg"].startswith("evacuation incomplete: 1 VM(s) need attention: a stayed (unable to connect")
    assert "FAILED: evacuation incomplete" in "\n".join(evreport.render_report(report))


def test_exit_rule():
    assert evreport.exit_decision([])["failed"] is False
    for status in evplan.FAILING_STATUSES:
        assert evreport.exit_decision([{"name": "x", "status": status, "reason": "r"}])["failed"] is True
    for status in (evplan.ST_MIGRATED, evplan.ST_LEFT, evplan.ST_NOT_RUNNING):
        assert evreport.exit_decision([{"name": "x", "status": status, "reason": None}])["failed"] is False
    assert evreport.exit_decision([{"name": "x", "status": evplan.ST_MIGRATED, "problems": ["still defined"]}])["failed"] is True


def test_rerun_on_an_emptied_host_is_a_no_op_plan():
    _unused, plan = plan_for({})
    assert plan["vms"] == [] and plan["moves"] == 0 and evplan.plan_problems(plan) == []
    report = evreport.build_report(request(), plan, [], evreport.verify(plan, [], states(hv1=[], hv2=[], hv3=[])), RUN)
    assert report["failed"] is False and report["msg"] == "evacuation done: 0 VM(s) moved, the source runs no VM"


def test_misspelt_extra_vars_are_caught_but_unrelated_ones_pass():
    assert evreq.misspelt_inputs(["max_paralel", "poisoned_vm_polcy", "ansible_python_interpreter", "evacuate_cordon",
                                  "my_site_var"]) == [
        "extra var 'max_paralel' is not an input of evacuate_host: did you mean 'evacuate_max_parallel'?",
        "extra var 'poisoned_vm_polcy' is not an input of evacuate_host: did you mean 'evacuate_poisoned_vm_policy'?",
    ]


def test_place_balances_on_the_scarce_resource():
    # The lab: every container sees the machine's ~20 GiB free (slightly different numbers),
    # 2 CPUs x 4.0 = 8 vCPUs each: vCPUs are scarce, so seven 1-vCPU guests alternate.
    req = request()
    caps = [evplan.target_capacity("hv2", capacity(free=20640 + 512), req),
            evplan.target_capacity("hv3", capacity(free=21056 + 512), req)]
    vms = [dict(domain("g%d" % i), action=evplan.ACTION_LIVE) for i in range(7)]
    result = evplan.place(vms, caps)
    per_target = sorted(sum(1 for t, _why in result.values() if t == name) for name in ("hv2", "hv3"))
    assert per_target == [3, 4]
    assert (caps[0]["vcpu_free"], caps[1]["vcpu_free"]) in ((4, 5), (5, 4))


def test_a_failed_capacity_read_is_not_an_answer_even_when_ignored():
    # with ignore_errors the registered result keeps failed=true; libvirt_ok=false says the same
    assert evplan.answered(capacity()) is True
    assert evplan.answered(dict(capacity(), libvirt_ok=False)) is False
    assert evplan.answered({"failed": True, "msg": "x", "qemu_processes": []}) is False
    assert evplan.answered({"changed": False}) is False


# ------------------------------------------------------------------------------ old input names --

def test_misspelt_new_names_are_caught_too():
    assert evreq.misspelt_inputs(["evacuate_max_paralel", "max_parallel", "evacuate_cordon"]) == [
        "extra var 'evacuate_max_paralel' is not an input of evacuate_host: did you mean 'evacuate_max_parallel'?"]


def test_every_unprefixed_input_has_a_deprecated_old_name():
    assert evreq.DEPRECATED_INPUTS["max_parallel"] == "evacuate_max_parallel"
    assert evreq.DEPRECATED_INPUTS["cordon"] == "evacuate_cordon"
    assert set(evreq.DEPRECATED_INPUTS.values()) <= set(evreq.INPUT_NAMES)
    assert all(name.startswith("evacuate_") for name in evreq.INPUT_NAMES)
    assert "evacuate_source" not in evreq.DEPRECATED_INPUTS.values()


def test_an_old_name_fills_its_input_and_is_reported_for_a_warning():
    inputs, used, problems = evreq.deprecated_inputs({"evacuate_source": "hv1"}, {"max_parallel": "3", "cordon": False})
    assert inputs == {"evacuate_source": "hv1", "evacuate_max_parallel": "3", "evacuate_cordon": False}
    assert used == ["cordon", "max_parallel"] and problems == []
    assert evreq.validate_request(inputs, HOSTS, GROUPS, {}, forks=5)["evacuate_max_parallel"] == 3
    text = evreq.deprecation_message("max_parallel")
    assert "max_parallel" in text and "evacuate_max_parallel" in text and "1.0.0" in text


def test_old_and_new_name_with_the_same_value_agree():
    # -e max_parallel=3 (a string) and evacuate_max_parallel: 3 (a number) say the same
    inputs, used, problems = evreq.deprecated_inputs({"evacuate_max_parallel": 3, "evacuate_cordon": "yes"},
                                                     {"max_parallel": "3", "cordon": True})
    assert problems == [] and used == ["cordon", "max_parallel"]
    assert inputs["evacuate_max_parallel"] == 3


def test_old_and_new_name_with_different_values_are_refused_naming_both():
    _inputs, _used, problems = evreq.deprecated_inputs({"evacuate_poisoned_vm_policy": "cold_migrate"},
                                                       {"poisoned_vm_policy": "leave"})
    assert problems == ["evacuate_poisoned_vm_policy='cold_migrate' and its deprecated old name "
                        "poisoned_vm_policy='leave' are both given with different values: drop -e "
                        "poisoned_vm_policy and keep -e evacuate_poisoned_vm_policy"]


def test_the_request_records_what_was_given():
    assert request()["inputs_given"] == ["evacuate_source"]
    assert request(evacuate_poisoned_vm_policy="leave", evacuate_targets="")["inputs_given"] == [
        "evacuate_poisoned_vm_policy", "evacuate_source"]


# ------------------------------------------------------------------------------ consent --

def test_a_poisoned_vm_left_by_the_default_policy_fails_the_run_and_says_what_to_do():
    report = report_for({"bad": "poisoned", "ok": "clean"},
                        states(hv1=[domain("bad")], hv2=[domain("ok")], hv3=[]),
                        [dict(evreport.vm_outcome(plan_vm("ok", evplan.ACTION_LIVE), {"migrate": MIGRATED}), name="ok")])
    assert report["failed"] is True
    assert report["left_without_consent"] == ["bad"]
    assert report["vms"][0]["status"] == evplan.ST_LEFT  # what happened is unchanged; the exit rule judges it
    msg = report["msg"]
    assert msg.startswith("evacuation incomplete: 1 VM(s) need attention: bad left (")
    assert "bad (poisoned, left by the default evacuate_poisoned_vm_policy=leave)" in msg
    assert "-e evacuate_poisoned_vm_policy=reboot_then_migrate" in msg and "-e evacuate_leave_vms=bad" in msg
    assert "ansible-playbook kvm_ras.poison_guard.evacuate_host -e evacuate_source=hv1" in msg


@pytest.mark.parametrize("raw", [
    {"evacuate_poisoned_vm_policy": "leave"},
    {"evacuate_leave_vms": ["bad"]},
    {"evacuate_leave_vms": "uuid-bad"},
])
def test_a_poisoned_vm_the_operator_let_stay_does_not_fail(raw):
    report = report_for({"bad": "poisoned"}, states(hv1=[domain("bad")], hv2=[], hv3=[]), [], **raw)
    assert report["failed"] is False and report["left_without_consent"] == []


def test_unknown_vms_need_the_unknown_policy_given():
    post = states(hv1=[domain("what")], hv2=[], hv3=[])
    report = report_for({"what": "unknown"}, post, [])
    assert report["failed"] is True and report["left_without_consent"] == ["what"]
    assert "-e evacuate_unknown_vm_policy=migrate" in report["msg"]
    # the poisoned policy says nothing about unknown VMs
    assert report_for({"what": "unknown"}, post, [], evacuate_poisoned_vm_policy="leave")["failed"] is True
    assert report_for({"what": "unknown"}, post, [], evacuate_unknown_vm_policy="leave")["failed"] is False


def test_left_without_consent_rule():
    vms = [
        {"name": "p", "uuid": "u-p", "status": evplan.ST_LEFT, "poison_status": "poisoned", "reason": UPSTREAM_REFUSAL},
        {"name": "u", "uuid": "u-u", "status": evplan.ST_LEFT, "poison_status": "unknown", "reason": "no privilege"},
        {"name": "g", "uuid": "u-g", "status": evplan.ST_LEFT, "poison_status": "clean",
         "reason": "the migration gate blocked it: stale result"},
        {"name": "s", "uuid": "u-s", "status": evplan.ST_STAYED, "poison_status": "clean", "reason": "no room"},
        {"name": "m", "uuid": "u-m", "status": evplan.ST_MIGRATED, "poison_status": "clean", "reason": None},
        {"name": "off", "uuid": "u-off", "status": evplan.ST_NOT_RUNNING, "poison_status": "not running", "reason": None},
    ]
    defaulted = {"evacuate_poisoned_vm_policy": "leave", "evacuate_unknown_vm_policy": "leave",
                 "evacuate_leave_vms": [], "inputs_given": ["evacuate_source"]}
    assert [i["name"] for i in evplan.left_without_consent(defaulted, vms)] == ["p", "u", "g", "s"]
    given = dict(defaulted, inputs_given=["evacuate_poisoned_vm_policy", "evacuate_unknown_vm_policy"])
    assert [i["name"] for i in evplan.left_without_consent(given, vms)] == ["g", "s"]
    listed = dict(defaulted, evacuate_leave_vms=["g", "u-p"])
    assert [i["name"] for i in evplan.left_without_consent(listed, vms)] == ["u", "s"]
    # a request without inputs_given (built elsewhere) gives no consent: fail closed
    assert [i["name"] for i in evplan.left_without_consent({}, vms)] == ["p", "u", "g", "s"]
    assert all(i["fix"] for i in evplan.left_without_consent({}, vms))


def test_the_plan_says_which_vms_would_fail_the_run():
    _unused, plan = plan_for({"web1": "clean", "bad": "poisoned"})
    text = "\n".join(evplan.render_plan(plan, request(), check_mode=True))
    assert ("the run will end failed: bad stays on the source without being asked to (poisoned, left by the "
            "default evacuate_poisoned_vm_policy=leave): move it with -e evacuate_poisoned_vm_policy=") in text
    req = request(evacuate_poisoned_vm_policy="leave")
    _unused, plan = plan_for({"web1": "clean", "bad": "poisoned"}, req=req)
    assert "the run will end failed" not in "\n".join(evplan.render_plan(plan, req, check_mode=True))


def test_the_advice_quotes_a_vm_name_for_the_shell():
    vms = [{"name": "web 01 $(x)", "uuid": None, "status": evplan.ST_LEFT, "poison_status": "poisoned", "reason": "r"}]
    (item,) = evplan.left_without_consent({"inputs_given": []}, vms)
    assert item["fix"].endswith("-e 'evacuate_leave_vms=web 01 $(x)'")
