# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The plan applies the migration preflight, and knows what a reboot cannot repair.

The preflight results are shaped by ``module_utils/preflight.py`` (``run``): per target and per
VM per target ``{usable, reasons, fix, notes}`` and a summary with its lines. The poison_info
entries carry ``scan.hugetlb_mappings`` and ``qemu_version`` as the module reports them for a
guest whose RAM is a hugetlbfs mapping (``-object memory-backend-file,mem-path=/dev/hugepages``).
"""

from __future__ import annotations

from ansible_collections.kvm_ras.poison_guard.plugins.plugin_utils import evacuation_request as evreq
from ansible_collections.kvm_ras.poison_guard.plugins.plugin_utils import evacuation_plan as evplan
from ansible_collections.kvm_ras.poison_guard.plugins.module_utils import gate
from ansible_collections.kvm_ras.poison_guard.plugins.module_utils import preflight as pf

HOSTS = ["hv1", "hv2", "hv3"]
GROUPS = {"hypervisors": HOSTS, "all": HOSTS}


def request(**raw):
    """A checked request whose targets follow the source's TLS transport (its local fact), as in the plan."""
    return evreq.follow_transport(evreq.validate_request(dict({"evacuate_source": "hv1"}, **raw), HOSTS, GROUPS, {}, forks=5),
                                  {"mode": "tls", "uri_template": "qemu+tls://{address}/system"})


def domain(name, memory=64):
    return {"name": name, "uuid": "uuid-" + name, "state": "running", "active": True, "persistent": True,
            "memory_mib": memory, "vcpus": 1, "disks": []}


def capacity(domains=()):
    return {"changed": False, "libvirt_ok": True, "cpus": 4, "memory_free_mib": 20000, "memory_total_mib": 24000,
            "running_vcpus": 0, "running_count": 0, "domains": list(domains), "cordon": {"cordoned": False},
            "evacuation_lock": {"held": False}, "paths": {}}


def poison(statuses, hugetlb=0, qemu_version="7.2.18"):
    vms = [{"name": n, "uuid": "uuid-" + n, "pid": 100, "status": s, "poisoned_pages": [], "migration_guard": True,
            "evidence": [], "reasons": [], "qemu_version": qemu_version, "memory_mib": 64, "vcpus": 1,
            "scan": {"method": "pread", "mappings": 3, "hugetlb_mappings": hugetlb}}
           for n, s in statuses.items()]
    return {"vms": vms, "host": {}}


def preflight_result(targets, vm_entries):
    """targets: name -> list of problems; vm_entries: vm -> target -> list of problems."""
    target_results = {t: pf.shape([{"problem": p, "fix": "fix " + t} for p in problems], uri="qemu+tls://%s/system" % t)
                      for t, problems in targets.items()}
    vm_results = {vm: {t: pf.shape([{"problem": p, "fix": "fix " + vm} for p in problems]) for t, problems in per.items()}
                  for vm, per in vm_entries.items()}
    return {"targets": target_results, "vms": vm_results, "summary": pf.summarize(target_results, vm_results)}


def plan(statuses, preflight=None, poison_result=None, **raw):
    req = request(**raw)
    result = poison_result or poison(statuses)
    checked = gate.evaluate(result, operation="live_migration", on_poisoned="skip", on_unknown="skip")
    return evplan.build_plan(req, capacity([domain(n) for n in statuses]), {"hv2": capacity(), "hv3": capacity()},
                             result, checked, preflight=preflight), req


def by_name(made):
    return {vm["name"]: vm for vm in made["vms"]}


def test_a_target_that_fails_the_preflight_gets_no_vm_and_the_plan_says_why():
    pre = preflight_result({"hv2": ["the source could not open hv2's migration URI: Connection refused"], "hv3": []},
                           {"a": {"hv2": [], "hv3": []}, "b": {"hv2": [], "hv3": []}})
    made, req = plan({"a": "clean", "b": "clean"}, preflight=pre)
    targets = {t["name"]: t for t in made["targets"]}
    assert targets["hv2"]["usable"] is False
    assert targets["hv2"]["reason"].startswith("preflight: the source could not open hv2")
    assert {vm["target"] for vm in made["vms"]} == {"hv3"}
    lines = evplan.render_plan(made, req, check_mode=True)
    assert any("preflight from hv1" in line for line in lines)
    assert any("target hv2 (qemu+tls://hv2/system): usable: no, why: the source could not open" in line
               for line in lines)


def test_a_vm_goes_only_where_the_preflight_says_it_can_run():
    pre = preflight_result({"hv2": [], "hv3": []},
                           {"a": {"hv2": ["Host CPU does not provide required features: avx512f"], "hv3": []},
                            "b": {"hv2": ["no network 'prod'"], "hv3": ["no network 'prod'"]}})
    made, _req = plan({"a": "clean", "b": "clean"}, preflight=pre)
    vms = by_name(made)
    assert (vms["a"]["action"], vms["a"]["target"]) == (evplan.ACTION_LIVE, "hv3")
    assert vms["b"]["action"] == evplan.ACTION_LEAVE and vms["b"]["target"] is None
    assert "avx512f" not in vms["b"]["reason"] and "no network 'prod'" in vms["b"]["reason"]
    assert "hv2: preflight:" in vms["b"]["reason"] and "hv3: preflight:" in vms["b"]["reason"]
    assert vms["b"]["reason"].startswith("no target can take it: ")


def test_a_vm_or_target_the_preflight_did_not_check_gets_nothing():
    pre = preflight_result({"hv2": []}, {"a": {"hv2": []}})  # hv3 missing, b missing
    made, _req = plan({"a": "clean", "b": "clean"}, preflight=pre)
    targets = {t["name"]: t for t in made["targets"]}
    assert targets["hv3"]["usable"] is False and "not checked by the preflight" in targets["hv3"]["reason"]
    vms = by_name(made)
    assert vms["a"]["target"] == "hv2"
    assert vms["b"]["action"] == evplan.ACTION_LEAVE and "did not check b" in vms["b"]["reason"]


def test_without_a_preflight_the_plan_is_unchanged():
    made, req = plan({"a": "clean"})
    assert made["preflight"] is None and by_name(made)["a"]["action"] == evplan.ACTION_LIVE
    assert not any("preflight from" in line for line in evplan.render_plan(made, req))


def test_reset_does_not_clear_hugetlb_poison_before_qemu_10():
    made, _req = plan({"p": "poisoned"}, poison_result=poison({"p": "poisoned"}, hugetlb=1, qemu_version="7.2.18"),
                      evacuate_poisoned_vm_policy="reboot_then_migrate", evacuate_reboot_mode="reset")
    vm = by_name(made)["p"]
    assert vm["action"] == evplan.ACTION_LEAVE
    assert "hugetlbfs" in vm["reason"] and "cold_migrate" in vm["reason"] and "7.2.18" in vm["reason"]
    assert "evacuate_reboot_mode=restart" in vm["reason"]


def test_reset_of_hugetlb_ram_on_a_qemu_of_unknown_version_is_not_tried():
    """Fail closed: the version decides whether a reset repairs a huge page; unread, the VM stays."""
    made, _req = plan({"p": "poisoned"}, poison_result=poison({"p": "poisoned"}, hugetlb=2, qemu_version=None),
                      evacuate_poisoned_vm_policy="reboot_then_migrate", evacuate_reboot_mode="reset")
    vm = by_name(made)["p"]
    assert vm["action"] == evplan.ACTION_LEAVE and "unknown version" in vm["reason"]


def test_restart_clears_hugetlb_poison_on_any_qemu():
    """evacuate_reboot_mode=restart (the default) starts a new QEMU process with new memory."""
    for version in ("7.2.18", None):
        made, _req = plan({"p": "poisoned"}, poison_result=poison({"p": "poisoned"}, hugetlb=1, qemu_version=version),
                          evacuate_poisoned_vm_policy="reboot_then_migrate")
        assert by_name(made)["p"]["action"] == evplan.ACTION_REBOOT, version


def test_reboot_then_migrate_stays_for_ordinary_ram_or_qemu_10():
    for hugetlb, version in ((0, "7.2.18"), (1, "10.0.2")):
        for mode in ("restart", "reset"):
            made, _req = plan({"p": "poisoned"}, poison_result=poison({"p": "poisoned"}, hugetlb=hugetlb, qemu_version=version),
                              evacuate_poisoned_vm_policy="reboot_then_migrate", evacuate_reboot_mode=mode)
            assert by_name(made)["p"]["action"] == evplan.ACTION_REBOOT, (hugetlb, version, mode)


def test_hugetlb_rule_cannot_tell_without_a_scan_or_version():
    assert evplan.hugetlb_reset_keeps_poison({}) is None
    assert evplan.hugetlb_reset_keeps_poison({"scan": {"hugetlb_mappings": 2}, "qemu_version": None}) is None
    assert evplan.hugetlb_reset_keeps_poison({"scan": {"hugetlb_mappings": 0}, "qemu_version": "7.2.0"}) is False
    assert evplan.hugetlb_reset_keeps_poison({"scan": {"hugetlb_mappings": 2}, "qemu_version": "9.2.1"}) is True
