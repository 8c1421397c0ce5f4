# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fleet report: part files, merge, ordering, summary, schema, chart and page rendering.

Hand-written poison_info results follow the team's result contract (``vms`` entries with name,
uuid, pid, status, poisoned_pages, evidence, migration_guard, reasons, qemu_binary,
memory_mib, vcpus; ``host`` with kernel_release, hardware_corrupted_kb, memory_failure).
Where a real detection result matters, the result comes from running poison_info's
detection core over the project's fixture trees (tests/fixtures/procfs), which copy what real
Debian 6.1 / 6.12 kernels and QEMU 7.2 showed with hardware-poisoned guest pages.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import jsonschema
import pytest

from ansible_collections.kvm_ras.poison_guard.plugins.module_utils import fleet_report as fr
from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.messages import UPSTREAM_REFUSAL
from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.poison import inventory

REPO = Path(__file__).resolve().parents[4]
SCHEMA = json.loads((REPO / "schemas" / "fleet_report.schema.json").read_text(encoding="utf-8"))
TEMPLATE = (REPO / "playbooks" / "templates" / "fleet_report.html.j2").read_text(encoding="utf-8")
FIXTURES = REPO / "tests" / "fixtures" / "procfs"
if str(FIXTURES) not in sys.path:
    sys.path.insert(0, str(FIXTURES))

import scenarios  # noqa: E402  (tests/fixtures/procfs)

RID = "20250301T101112Z-abc123"


def validate(report):
    jsonschema.Draft202012Validator(SCHEMA).validate(report)


def vm(name, status="clean", guard=True, pages=0, reasons=None):
    return {
        "name": name, "uuid": None, "pid": 100, "status": status,
        "poisoned_pages": [{"hva": "0x7f0000%03x000" % i, "pfn": "0xf945", "gpa": None,
                            "source": "pagemap_hwpoison"} for i in range(pages)],
        "evidence": [{"source": "host", "detail": "HardwareCorrupted: 0 kB"}],
        "migration_guard": guard,
        "reasons": reasons if reasons is not None else (["no CAP_SYS_ADMIN"] if status == "unknown" else []),
        "qemu_binary": "/usr/bin/qemu-system-x86_64", "memory_mib": 1024, "vcpus": 1,
    }


def result(*vms, hc_kb=0, complete=True, reasons=(), memory_failure=None):
    return {
        "changed": False,
        "vms": list(vms),
        "poisoned_vms": [v["name"] for v in vms if v["status"] == "poisoned"],
        "unknown_vms": [v["name"] for v in vms if v["status"] == "unknown"],
        "clean_vms": [v["name"] for v in vms if v["status"] == "clean"],
        "host": {"kernel_release": "6.1.0-56-amd64", "hardware_corrupted_kb": hc_kb,
                 "memory_failure": memory_failure, "hwpoison_swap_type": 26, "pagemap_scan": False},
        "complete": complete,
        "reasons": list(reasons),
        "invocation": {"module_args": {"proc_root": "/proc"}},
    }


def part(host, task_result):
    return fr.build_part(host, task_result, RID, written_at="2025-03-01T10:11:12Z")


def merged(parts_by_host, expected=None):
    report = fr.merge(parts_by_host, expected, RID, generated_at="2025-03-01T10:20:00Z",
                      hosts_pattern="hypervisors")
    validate(report)
    return report


# -- ids, names, paths ---------------------------------------------------------------------------
@pytest.mark.parametrize("good", ["a", "bench", "20250301T101112Z-3fa9c1", "weekly_2025.03",
                                  "A" * 128])
def test_report_id_accepts_directory_names(good):
    assert fr.check_report_id(good) == good


@pytest.mark.parametrize("bad", ["", ".", "..", "../etc", "a/b", ".hidden", "-x", "a b", "a\0b",
                                 "A" * 129, None, 5, "ü"])
def test_report_id_rejects_anything_else_with_the_rule(bad):
    with pytest.raises(fr.ReportInputError, match=r"letters, digits, '\.', '_' or '-'"):
        fr.check_report_id(bad)


def test_new_report_id_is_time_plus_token_and_valid():
    rid = fr.new_report_id()
    assert re.match(r"^\d{8}T\d{6}Z-[0-9a-f]{6}$", rid)
    assert fr.check_report_id(rid) == rid
    assert fr.new_report_id() != fr.new_report_id()  # random token


@pytest.mark.parametrize("bad", ["", "   ", None])
def test_report_dir_must_be_given(bad):
    with pytest.raises(fr.ReportInputError, match="report_dir is empty"):
        fr.check_report_dir(bad)


def test_relative_report_dir_is_taken_from_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert fr.check_report_dir("reports/poison") == str(tmp_path / "reports" / "poison")


@pytest.mark.parametrize("host", ["hv01", "..", ".", "a/b", "../../etc/passwd", "fe80::1%eth0",
                                  "hv 01", "hÿpervisor", "x" * 200])
def test_part_file_names_stay_inside_the_parts_directory_and_round_trip(tmp_path, host):
    name = fr.part_filename(host)
    assert "/" not in name and name.startswith("host-") and name.endswith(".json")
    assert name not in (".", "..")
    assert fr.host_from_part_filename(name) == host
    path = fr.part_path(str(tmp_path), RID, host)
    assert os.path.dirname(path) == str(tmp_path / RID / "parts")


def test_files_that_are_not_parts_have_no_host():
    for name in (".tmp-abc.part", "host-.json", "notes.txt", "host-x.json.bak"):
        assert fr.host_from_part_filename(name) is None


# -- parts ---------------------------------------------------------------------------------------
def test_ok_part_keeps_the_result_without_invocation():
    p = part("hv1", result(vm("web01"), vm("db01", "poisoned", False, 1), hc_kb=4))
    assert p["outcome"] == "ok" and p["error"] is None and p["report_id"] == RID
    assert [v["name"] for v in p["result"]["vms"]] == ["web01", "db01"]
    assert "invocation" not in p["result"] and "changed" not in p["result"]
    assert p["result"]["host"]["hardware_corrupted_kb"] == 4


def test_failed_and_unreachable_results_become_parts_with_the_error():
    failed = part("hv1", {"failed": True, "msg": "MODULE FAILURE: /usr/bin/python3: not found"})
    assert (failed["outcome"], failed["error"]) == ("failed", "MODULE FAILURE: /usr/bin/python3: not found")
    unreachable = part("hv2", {"unreachable": True, "changed": False,
                               "msg": "Failed to connect to the host via ssh: Connection refused"})
    assert unreachable["outcome"] == "unreachable"
    assert "Connection refused" in unreachable["error"]
    assert part("hv3", {"failed": True})["error"] == "poison_info failed without a message"
    skipped = part("hv4", {"skipped": True, "skip_reason": "Conditional result was False"})
    assert skipped["outcome"] == "failed" and "skipped" in skipped["error"]


@pytest.mark.parametrize("bad_result, error", [
    (None, "no poison_info result"),
    ({"changed": False}, "no 'vms' list"),
    ({"vms": "web01"}, "no 'vms' list"),
    ({"vms": [{"status": "clean"}]}, "a VM entry without a name"),
    ({"vms": ["web01"]}, "a VM entry without a name"),
])
def test_unusable_results_are_failed_parts_never_clean(bad_result, error):
    p = part("hv1", bad_result)
    assert p["outcome"] == "failed" and error in p["error"]
    entry = fr.host_entry("hv1", p)
    assert entry["status"] == "failed"


def test_a_vm_status_the_report_does_not_know_is_unknown_with_a_reason():
    odd = vm("web01")
    odd["status"] = "probably-fine"
    p = part("hv1", result(odd))
    [entry] = p["result"]["vms"]
    assert entry["status"] == "unknown"
    assert any("'probably-fine'" in r for r in entry["reasons"])
    bare = vm("db01", "unknown", reasons=[])
    assert fr.normalize_vm(bare)["reasons"] == ["poison_info gave no reason for the unknown status"]


def test_missing_contract_keys_get_their_defaults_and_extra_keys_stay():
    entry = fr.normalize_vm({"name": "web01", "status": "clean", "qemu_version": "9.2.0"})
    assert entry["poisoned_pages"] == [] and entry["evidence"] == [] and entry["reasons"] == []
    assert entry["uuid"] is None and entry["migration_guard"] is None
    assert entry["qemu_version"] == "9.2.0"


def test_part_needs_a_host_name():
    with pytest.raises(fr.ReportInputError, match="inventory name"):
        fr.build_part("", result(), RID)


def test_write_and_read_parts_round_trip_atomically(tmp_path):
    written = {}
    for host, res in (("hv1", result(vm("web01"))), ("a/b", {"unreachable": True, "msg": "timeout"})):
        p = part(host, res)
        path = fr.write_part(str(tmp_path), p)
        written[host] = p
        assert path == fr.part_path(str(tmp_path), RID, host)
        assert oct(os.stat(path).st_mode & 0o777) == oct(0o644)
    parts_dir = tmp_path / RID / "parts"
    assert sorted(os.listdir(parts_dir)) == ["host-a%2Fb.json", "host-hv1.json"]  # no temp files
    parts, problems = fr.read_parts(str(parts_dir))
    assert problems == [] and parts == written


def test_unreadable_or_foreign_part_files_become_failed_hosts(tmp_path):
    parts_dir = tmp_path / "parts"
    parts_dir.mkdir()
    (parts_dir / "host-hv1.json").write_text("{not json", encoding="utf-8")
    (parts_dir / "host-hv2.json").write_text(json.dumps(part("hv9", result())), encoding="utf-8")
    (parts_dir / "host-hv3.json").write_text(json.dumps({"host": "hv3", "outcome": "great"}),
                                             encoding="utf-8")
    (parts_dir / ".tmp-x.part").write_text("half a file", encoding="utf-8")
    parts, problems = fr.read_parts(str(parts_dir))
    assert sorted(parts) == ["hv1", "hv2", "hv3"]
    assert all(p["outcome"] == "failed" for p in parts.values())
    assert "names host 'hv9'" in parts["hv2"]["error"]
    assert len(problems) == 3
    report = fr.merge(parts, None, RID, problems=problems)
    validate(report)
    assert [h["status"] for h in report["hosts"]] == ["failed"] * 3
    assert report["problems"] == problems


def test_no_parts_directory_means_no_parts(tmp_path):
    assert fr.read_parts(str(tmp_path / "nothing")) == ({}, [])


# -- merge and ordering --------------------------------------------------------------------------
def fleet_parts():
    return {
        "hv10": part("hv10", result(vm("web01"), vm("zz-bad", "poisoned", True, 2), vm("app", "unknown"), hc_kb=8)),
        "hv2": part("hv2", result(vm("b"), vm("a", "poisoned", False, 1), hc_kb=4,
                                  memory_failure={"node0": {"total": 1, "recovered": 1},
                                                  "node1": {"total": 2, "recovered": 1, "failed": None}})),
        "hv3": part("hv3", result(vm("x", "poisoned", None, 1), vm("y", "poisoned", True, 1), hc_kb=4)),
        "hv4": part("hv4", {"failed": True, "msg": "boom"}),
        "hv5": part("hv5", {"unreachable": True, "msg": "no route"}),
        "hv6": part("hv6", result(vm("u", "unknown"), vm("c"))),
        "hv7": part("hv7", result(complete=False, reasons=["cannot list /proc: Permission denied"])),
        "hv8": part("hv8", result(vm("c1"), vm("c2"))),
        "hv9": part("hv9", result()),
        "hv11": part("hv11", result(vm("c3"))),
    }


def test_hosts_with_poisoned_vms_come_first_then_unvouched_then_clean():
    report = merged(fleet_parts(), expected=[
        "hv1", "hv2", "hv3", "hv4", "hv5", "hv6", "hv7", "hv8", "hv9", "hv10", "hv11", "hv12"])
    order = [(h["name"], h["status"]) for h in report["hosts"]]
    assert order == [
        ("hv3", "poisoned"),  # two poisoned VMs
        ("hv2", "poisoned"),  # one each: natural name order, hv2 before hv10
        ("hv10", "poisoned"),
        ("hv6", "unknown"),
        ("hv7", "unknown"),  # no VM, but discovery was incomplete: never clean
        ("hv4", "failed"),
        ("hv5", "unreachable"),
        ("hv1", "missing"),
        ("hv12", "missing"),
        ("hv8", "clean"),
        ("hv9", "clean"),  # no VM and a complete scan
        ("hv11", "clean"),
    ]
    hv10 = report["hosts"][2]
    assert [(v["name"], v["status"]) for v in hv10["vms"]] == [
        ("zz-bad", "poisoned"), ("app", "unknown"), ("web01", "clean")]
    assert [(v["host"], v["name"]) for v in report["poisoned_vms"]] == [
        ("hv3", "x"), ("hv3", "y"), ("hv2", "a"), ("hv10", "zz-bad")]


def test_summary_counts():
    report = merged(fleet_parts(), expected=list(fleet_parts()) + ["hv1"])
    assert report["summary"] == {
        "hosts_total": 11,
        "hosts": {"poisoned": 3, "unknown": 2, "failed": 1, "unreachable": 1, "missing": 1, "clean": 3},
        "hosts_scanned": 8,
        "hosts_not_scanned": 3,
        "hosts_with_hardware_corrupted": 3,
        "vms_total": 12,
        "vms": {"poisoned": 4, "unknown": 2, "clean": 6},
        # a (guard false) and x (guard unknown); y and zz-bad run a guarded QEMU
        "poisoned_vms_unguarded": 2,
        "complete": False,
    }
    assert report["schema_version"] == fr.SCHEMA_VERSION == 1
    assert report["refusal_message"] == UPSTREAM_REFUSAL


def test_complete_only_when_every_host_was_scanned_and_every_vm_decided():
    parts = {"hv1": part("hv1", result(vm("a"))), "hv2": part("hv2", result(vm("b", "poisoned", False, 1)))}
    assert merged(parts)["summary"]["complete"] is True
    assert merged(parts, expected=["hv1", "hv2", "hv3"])["summary"]["complete"] is False
    parts["hv1"] = part("hv1", result(vm("a", "unknown")))
    assert merged(parts)["summary"]["complete"] is False


def test_missing_hosts_are_reported_and_foreign_parts_ignored():
    parts = {"hv1": part("hv1", result(vm("a"))), "old": part("old", result(vm("z", "poisoned", False, 1)))}
    report = merged(parts, expected=["hv1", "hv2", "hv2"])
    assert [(h["name"], h["status"]) for h in report["hosts"]] == [("hv2", "missing"), ("hv1", "clean")]
    assert report["hosts"][0]["error"].startswith("no part for this host")
    assert report["ignored_parts"] == ["old"]
    assert report["poisoned_vms"] == []  # the ignored part's poisoned VM is not in this report


def test_without_expected_hosts_every_part_is_reported():
    report = merged(fleet_parts())
    assert sorted(h["name"] for h in report["hosts"]) == sorted(fleet_parts())
    assert report["ignored_parts"] == []


def test_empty_fleet_is_a_valid_report():
    report = merged({}, expected=[])
    assert report["hosts"] == [] and report["summary"]["hosts_total"] == 0


def test_expected_host_names_must_be_strings():
    with pytest.raises(fr.ReportInputError, match="non-empty strings"):
        fr.merge({}, ["hv1", ""], RID)


def test_memory_failure_counters_are_summed_over_nodes():
    report = merged(fleet_parts())
    hv2 = next(h for h in report["hosts"] if h["name"] == "hv2")
    assert hv2["host_facts"]["memory_failure_totals"] == {"total": 3, "recovered": 2}
    assert fr.memory_failure_totals(None) is None
    assert fr.memory_failure_totals({}) is None


def test_natural_key_orders_numbers_by_value():
    names = ["hv10", "hv2", "HV1", "hv1a", "db", "hv100"]
    assert sorted(names, key=fr.natural_key) == ["db", "HV1", "hv1a", "hv2", "hv10", "hv100"]


# -- schema --------------------------------------------------------------------------------------
def test_schema_is_a_valid_draft_2020_12_schema():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


def test_schema_rejects_what_would_mislead_an_operator():
    report = merged(fleet_parts(), expected=list(fleet_parts()))
    clean = next(h for h in report["hosts"] if h["status"] == "clean")
    clean["vm_counts"]["poisoned"] = 1  # a "clean" host with a poisoned VM
    with pytest.raises(jsonschema.ValidationError):
        validate(report)
    report = merged(fleet_parts(), expected=list(fleet_parts()))
    failed = next(h for h in report["hosts"] if h["status"] == "failed")
    failed["error"] = None  # a host that was not scanned, without saying why
    with pytest.raises(jsonschema.ValidationError):
        validate(report)
    report = merged(fleet_parts())
    report["hosts"][0]["vms"][0]["status"] = "fine"
    with pytest.raises(jsonschema.ValidationError):
        validate(report)


def test_real_poison_info_results_from_fixture_trees_merge_into_a_valid_report(tmp_path):
    """Detection core run on trees that copy real kernels: Debian 6.1 hwpoison entry
    0x40800000001f28ba (kvmmce run), Debian 6.12 type-27 entry with per-node counters, and a
    clean host with two libvirt QEMUs."""
    trees = {
        "hv-kvmmce": scenarios.kvmmce_61(tmp_path / "a").write(),
        "hv-612": scenarios.hwpoison_612(tmp_path / "b").write(),
        "hv-clean": scenarios.clean_host(tmp_path / "c").write(),
    }
    parts = {}
    for host, tree in trees.items():
        res = inventory.collect(inventory.Options(**tree.options()))
        parts[host] = fr.build_part(host, res, RID)
        fr.write_part(str(tmp_path / "reports"), parts[host])
    report = fr.merge_directory(str(tmp_path / "reports"), RID, list(trees), "hypervisors")
    validate(report)
    assert {(v["host"], v["name"]) for v in report["poisoned_vms"]} == {
        ("hv-kvmmce", "inner-kvmmce-ek0"), ("hv-612", "web612")}
    assert [h["status"] for h in report["hosts"]] == ["poisoned", "poisoned", "clean"]
    kvmmce = next(h for h in report["hosts"] if h["name"] == "hv-kvmmce")
    page = kvmmce["vms"][0]["poisoned_pages"][0]
    assert (page["hva"], page["pfn"], page["gpa"]) == ("0x7fafe2145000", "0xf945", "0x2345000")
    hv612 = next(h for h in report["hosts"] if h["name"] == "hv-612")
    assert hv612["host_facts"]["memory_failure_totals"]["total"] == 1
    assert report["summary"]["poisoned_vms_unguarded"] == 2  # stock QEMU 7.2 binaries


# -- chart and page ------------------------------------------------------------------------------
def test_chart_rows_follow_the_report_and_bars_scale_with_vm_counts():
    report = merged(fleet_parts(), expected=list(fleet_parts()))
    chart = fr.chart(report)
    assert [r["name"] for r in chart["rows"]] == [h["name"] for h in report["hosts"]]
    assert chart["axis"][0]["value"] == 0 and chart["axis"][-1]["value"] >= 3
    unit = (chart["axis"][1]["x"] - chart["axis"][0]["x"]) / (chart["axis"][1]["value"] - chart["axis"][0]["value"])
    hv10 = next(r for r in chart["rows"] if r["name"] == "hv10")
    assert [(s["status"], s["count"]) for s in hv10["segments"]] == [
        ("poisoned", 1), ("unknown", 1), ("clean", 1)]
    for seg in hv10["segments"]:
        assert seg["width"] == pytest.approx(unit * seg["count"], abs=0.02)
    xs = [s["x"] for s in hv10["segments"]]
    assert xs == sorted(xs) and xs[1] == pytest.approx(xs[0] + hv10["segments"][0]["width"], abs=0.02)
    hv5 = next(r for r in chart["rows"] if r["name"] == "hv5")
    assert [s["status"] for s in hv5["segments"]] == ["not_scanned"] and hv5["note"] == "unreachable"
    ys = [r["y"] for r in chart["rows"]]
    assert ys == sorted(ys) and chart["height"] > ys[-1]


def test_long_host_names_are_shortened_in_the_chart_only():
    name = "hypervisor-with-a-very-long-name.example.internal"
    report = merged({name: part(name, result(vm("a")))})
    row = fr.chart(report)["rows"][0]
    assert len(row["label"]) <= 26 and row["label"].endswith("\u2026") and row["name"] == name


@pytest.mark.parametrize("maximum, top", [(1, 1), (2, 2), (5, 5), (7, 8), (23, 25), (130, 150)])
def test_axis_ticks_are_round(maximum, top):
    ticks = fr._ticks(maximum)  # pylint: disable=protected-access
    assert ticks[0] == 0 and ticks[-1] == top and len(ticks) <= 7


def test_page_escapes_names_from_the_hypervisors_and_lists_the_poisoned_vm_first():
    evil_vm = '<script>alert("vm")</script>'
    evil_host = 'hv"><img src=x onerror=alert(1)>'
    parts = {
        "hv1": part("hv1", result(vm("web01"), vm("db01"))),
        evil_host: part(evil_host, result(vm(evil_vm, "poisoned", False, 1), hc_kb=4)),
    }
    html = fr.render_html(merged(parts), TEMPLATE)
    assert "<script>alert" not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(&#34;vm&#34;)&lt;/script&gt;" in html
    hosts_in_page = re.findall(r'<details class="host" id="host-\d+" data-name="([^"]*)"', html)
    assert hosts_in_page == ["hv&#34;&gt;&lt;img src=x onerror=alert(1)&gt;", "hv1"]
    vms_in_page = re.findall(r'<tr class="vm vm-(\w+)" data-vm="([^"]*)"', html)
    assert vms_in_page[0] == ("poisoned", "&lt;script&gt;alert(&#34;vm&#34;)&lt;/script&gt;")
    assert UPSTREAM_REFUSAL.replace("'", "&#39;") in html


def test_page_is_self_contained():
    html = fr.render_html(merged(fleet_parts(), expected=list(fleet_parts()) + ["hv1"]), TEMPLATE)
    assert not re.search(r"""\s(?:src|href)\s*=""", html, re.I)
    assert not re.search(r"url\(|@import", html, re.I)
    assert "default-src 'none'" in html  # the page's CSP forbids loading anything
    assert html.count("<script>") == 1  # the one inline script (filtering)
    # every host is in the page and the chart, not-scanned ones included
    for name in list(fleet_parts()) + ["hv1"]:
        assert 'data-name="%s"' % name in html and 'data-host="%s"' % name in html


def test_page_says_clearly_when_nothing_is_poisoned_but_the_fleet_was_not_fully_checked():
    partial = fr.render_html(merged({"hv1": part("hv1", result(vm("a")))}, ["hv1", "hv2"]), TEMPLATE)
    assert "not fully checked" in partial and "No poisoned VM in the fleet" not in partial
    full = fr.render_html(merged({"hv1": part("hv1", result(vm("a")))}), TEMPLATE)
    assert "No poisoned VM in the fleet" in full


def test_write_report_writes_json_equal_to_the_report_and_the_page(tmp_path):
    report = merged(fleet_parts())
    json_path, html_path = fr.write_report(str(tmp_path), report, TEMPLATE)
    assert json.loads(Path(json_path).read_text(encoding="utf-8")) == report
    assert Path(html_path).read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert sorted(os.listdir(tmp_path / RID)) == ["fleet_report.html", "fleet_report.json"]
