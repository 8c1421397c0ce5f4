# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The evacuation report files on the controller (issue 13, item 9): never outside the
directory asked for, never through an existing name or a (dangling) symlink."""

from __future__ import annotations

import json
import os

import pytest

from ansible_collections.kvm_ras.poison_guard.plugins.action.evacuation_report import write_files


def test_a_dangling_symlink_at_the_report_name_is_not_followed(tmp_path):
    reports = tmp_path / "reports"
    reports.mkdir()
    elsewhere = tmp_path / "elsewhere.json"
    (reports / "hv1-20260301T025901Z.json").symlink_to(elsewhere)
    files = write_files(str(reports), "hv1-20260301T025901Z", {"ok": True}, ["line"])
    assert not elsewhere.exists(), "the writer created the symlink's target"
    assert files["json"] == str(reports / "hv1-20260301T025901Z-1.json")
    assert json.loads((reports / "hv1-20260301T025901Z-1.json").read_text()) == {"ok": True}
    assert os.path.islink(str(reports / "hv1-20260301T025901Z.json"))


def test_a_text_symlink_is_not_followed_either(tmp_path):
    reports = tmp_path / "reports"
    reports.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("untouched")
    (reports / "hv1-x.txt").symlink_to(victim)
    files = write_files(str(reports), "hv1-x", {}, ["line"])
    assert victim.read_text() == "untouched" and files["text"].endswith("hv1-x-1.txt")


def test_an_older_report_is_never_overwritten(tmp_path):
    first = write_files(str(tmp_path), "hv1-x", {"n": 1}, ["one"])
    second = write_files(str(tmp_path), "hv1-x", {"n": 2}, ["two"])
    assert first != second and json.loads(open(first["json"]).read()) == {"n": 1}


@pytest.mark.parametrize("directory", ["../../x", "reports/../../x", "/srv/reports/../../etc"])
def test_a_directory_that_climbs_out_is_refused(tmp_path, monkeypatch, directory):
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    with pytest.raises(OSError, match=r"climbs out of its directory with '\.\.'"):
        write_files(directory, "hv1-x", {}, [])
    assert not (tmp_path / "x").exists()
