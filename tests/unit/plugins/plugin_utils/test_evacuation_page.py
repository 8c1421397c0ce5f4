# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The evacuation report's HTML page (plugins/plugin_utils/evacuation_page.py and
playbooks/templates/evacuation_report.html.j2), from the report the collection's own rules
build for a realistic run (tests/fixtures/evacuation_reports.py): migrated, failed (timed out,
stayed), poisoned and left, poisoned and rebooted then migrated, not running.

The page is parsed with html.parser here; tests/integration/test_evacuation_page.py opens it in
headless Chromium.
"""

from __future__ import annotations

import html.parser
import os
import sys
from pathlib import Path

import pytest

from ansible_collections.kvm_ras.poison_guard.plugins.plugin_utils import evacuation_page as ep

REPO = Path(__file__).resolve().parents[4]
sys.path.insert(0, str(REPO / "tests" / "fixtures"))
import evacuation_reports  # noqa: E402  pylint: disable=wrong-import-position

TEMPLATE = (REPO / "playbooks" / "templates" / "evacuation_report.html.j2").read_text(encoding="utf-8")


class Page(html.parser.HTMLParser):
    """Collects what the checks need: VM rows, timeline rows, bars, text, external references."""

    def __init__(self):
        super().__init__()
        self.vm_rows, self.chart_rows, self.bars, self.external, self.text = [], [], {}, [], []
        self.meta = {}
        self._chart_vm = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "tr" and "data-vm" in attrs:
            self.vm_rows.append((attrs["data-vm"], attrs["data-status"]))
        if tag == "g" and "data-vm" in attrs:
            self._chart_vm = attrs["data-vm"]
            self.chart_rows.append((attrs["data-vm"], attrs["data-status"]))
        if tag == "rect" and self._chart_vm:
            self.bars[self._chart_vm] = (float(attrs["x"]), float(attrs["width"]), attrs["fill"])
        if tag == "meta" and attrs.get("http-equiv"):
            self.meta[attrs["http-equiv"]] = attrs.get("content")
        for name in ("src", "href", "xlink:href"):
            if name in attrs:
                self.external.append(attrs[name])

    def handle_endtag(self, tag):
        if tag == "g":
            self._chart_vm = None

    def handle_data(self, data):
        if data.strip():
            self.text.append(data.strip())


def parse(text):
    page = Page()
    page.feed(text)
    return page


@pytest.fixture
def report():
    return evacuation_reports.realistic_report("/reports/hv1-20260301T025500Z.json")


def test_every_vm_has_a_row_those_needing_attention_first(report):
    page = parse(ep.render_html(report, TEMPLATE))
    assert sorted(page.vm_rows) == sorted((vm["name"], vm["status"]) for vm in report["vms"])
    assert page.vm_rows[0] == ("db01", "stayed"), "the VM that failed to move comes first"
    assert dict(page.vm_rows) == {"db01": "stayed", "pg01": "left", "app03": "migrated", "web01": "migrated",
                                  "web02": "migrated", "old01": "not_running"}


def test_rows_carry_action_target_duration_poison_status_and_evidence(report):
    rows = {row["name"]: row for row in ep.rows(report)}
    assert (rows["app03"]["action"], rows["app03"]["target"], rows["app03"]["duration"],
            rows["app03"]["poison_status"]) == ("reboot_then_migrate", "hv2", "21.7 s", "poisoned")
    assert rows["db01"]["duration"] == "10 min 00 s" and rows["db01"]["failure_class"] == "timeout"
    assert rows["pg01"]["evidence"][0][0] == "pagemap" and "KPF_HWPOISON" in rows["pg01"]["evidence"][0][1]
    text = " ".join(parse(ep.render_html(report, TEMPLATE)).text)
    for fragment in ("FAILED", "reboot (restart): done", "re-check after reboot: clean",
                     "operation aborted: migration out job: canceled by client",
                     "Guest MCE Memory Error at QEMU addr 0x7f3a5c200000",
                     "left on the source as requested (evacuate_leave_vms)", "hv1-20260301T025500Z-7c1e"):
        assert fragment in text, fragment


def test_timeline_without_start_times_shows_durations_and_says_so(report):
    page = parse(ep.render_html(report, TEMPLATE))
    chart = ep.timeline(report)
    assert chart["mode"] == "durations"
    assert [name for name, _status in page.chart_rows] == ["app03", "db01", "pg01", "web01", "web02"], (
        "every VM that was running, in the plan's order; old01 was not running")
    assert set(page.bars) == {"app03", "db01", "web01", "web02"}, "pg01 did not move: no bar"
    starts = {x for x, _w, _fill in page.bars.values()}
    assert starts == {float(chart["plot_left"])}
    widths = {name: w for name, (_x, w, _fill) in page.bars.items()}
    assert widths["db01"] > widths["app03"] > widths["web01"] > widths["web02"]
    assert page.bars["db01"][2] == ep.STATUS_INFO["stayed"][0]
    assert page.bars["web01"][2] == ep.STATUS_INFO["migrated"][0]
    assert "not when it started" in " ".join(page.text)


def test_timeline_with_start_times_places_each_move_at_its_start(report):
    offsets = {"web01": 5, "web02": 5, "db01": 6, "app03": 40}
    for vm in report["vms"]:
        if vm["name"] in offsets:
            vm["started_at"] = "2026-03-01T02:55:%02dZ" % offsets[vm["name"]]
    chart = ep.timeline(report)
    assert chart["mode"] == "timeline"
    bars = {row["name"]: row["bar"] for row in chart["rows"] if row["bar"]}
    assert bars["web01"]["x"] == bars["web02"]["x"] < bars["db01"]["x"] < bars["app03"]["x"]
    assert chart["total_s"] == pytest.approx(6 + 600.2)
    # one move without a start time: no bar is placed at an invented time
    del report["vms"][[v["name"] for v in report["vms"]].index("app03")]["started_at"]
    assert ep.timeline(report)["mode"] == "durations"


def test_page_is_self_contained_and_escapes_names(report):
    report["vms"][0]["name"] = "<script>alert(1)</script>"
    report["vms"][0]["reason"] = "<img src=http://evil.example/x.png>"
    text = ep.render_html(report, TEMPLATE)
    page = parse(text)
    assert "<script>" not in text and "<img" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert page.external == []
    assert "default-src 'none'" in page.meta["Content-Security-Policy"]


def test_ok_run_and_empty_host():
    report = evacuation_reports.realistic_report()
    report.update(failed=False, msg="evacuation done: 0 VM(s) moved, the source runs no VM", vms=[])
    page = parse(ep.render_html(report, TEMPLATE))
    assert page.vm_rows == [] and page.chart_rows == []
    assert "ran no VM when the evacuation began" in " ".join(page.text)
    assert "OK" in page.text


def test_bad_input_is_named():
    with pytest.raises(ep.PageInputError, match="lacks source, vms, run"):
        ep.check_report({"hosts": []})
    with pytest.raises(ep.PageInputError, match="a dict"):
        ep.check_report(["vms"])
    with pytest.raises(ep.PageInputError, match="give path"):
        ep.page_path({"source": "hv1", "vms": [], "run": {}})


def test_page_goes_next_to_the_json_and_is_written_once(tmp_path, report):
    assert ep.page_path(report) == "/reports/hv1-20260301T025500Z.html"
    target = tmp_path / "page.html"
    ep.write_page(str(target), "<p>one</p>")
    with pytest.raises(ep.PageInputError, match="already exists"):
        ep.write_page(str(target), "<p>two</p>")
    assert target.read_text(encoding="utf-8") == "<p>one</p>"
    victim = tmp_path / "victim"
    link = tmp_path / "link.html"
    os.symlink(victim, link)
    with pytest.raises(ep.PageInputError):
        ep.write_page(str(link), "<p>x</p>")
    assert not victim.exists(), "a dangling symlink is not followed"
    with pytest.raises(ep.PageInputError, match="does not exist"):
        ep.write_page(str(tmp_path / "missing" / "page.html"), "x")


@pytest.mark.parametrize("seconds, text", [(None, "-"), (4.24, "4.2 s"), (75, "1 min 15 s"), (7260, "2 h 01 min")])
def test_format_duration(seconds, text):
    assert ep.format_duration(seconds) == text


def test_operations_resumed_from_an_interrupted_run_are_listed(report):
    report["resumed"] = [{"name": "web07", "uuid": None, "operation": "live_migrate", "run_id": "hv1-20260301T010000Z-aa11",
                          "target": "hv3", "started_at": "2026-03-01T01:02:03Z", "found": "hv3", "action": "completed",
                          "ok": True, "message": "runs on the target: definition moved"},
                         {"name": "db09", "operation": "cold_migrate", "run_id": "hv1-20260301T010000Z-aa11",
                          "target": "hv2", "found": "nowhere", "action": "left", "ok": False,
                          "message": "defined on both hosts: start it where its disks are"}]
    text = " ".join(parse(ep.render_html(report, TEMPLATE)).text)
    assert "Finished from an interrupted run" in text
    assert "web07" in text and "runs on the target: definition moved" in text
    assert "(NOT finished)" in text and "db09" in text
