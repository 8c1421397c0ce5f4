# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The patched_qemu role's series applier (files/apply_patches.py), run with the real GNU patch
on small trees: a series is applied in order (a later patch's context contains what an earlier
one added), and the first patch that does not fit exactly stops the run."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
SCRIPT = REPO / "roles" / "patched_qemu" / "files" / "apply_patches.py"

pytestmark = pytest.mark.skipif(shutil.which("patch") is None, reason="GNU patch is not installed")

ORIGINAL = "".join(f"line {n}\n" for n in range(1, 21))


def _load():
    spec = importlib.util.spec_from_file_location("pq_apply_patches", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _diff(tmp_path: Path, name: str, before: str, after: str) -> Path:
    """A -p1 unified diff of src/file.txt from before to after, made by diff(1)."""
    work = tmp_path / f"diff-{name}"
    (work / "a").mkdir(parents=True)
    (work / "b").mkdir()
    (work / "a" / "file.txt").write_text(before)
    (work / "b" / "file.txt").write_text(after)
    proc = subprocess.run(["diff", "-u", "a/file.txt", "b/file.txt"], cwd=work, capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 1, proc.stderr
    patch = tmp_path / f"{name}.patch"
    patch.write_text(proc.stdout)
    return patch


def _tree(tmp_path: Path, text: str = ORIGINAL) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    (src / "file.txt").write_text(text)
    return src


def _series(tmp_path: Path):
    first = ORIGINAL.replace("line 10\n", "line 10\nadded by the first patch\n")
    second = first.replace("added by the first patch\n", "added by the first patch\nadded by the second\n")
    return first, second, [_diff(tmp_path, "0001", ORIGINAL, first), _diff(tmp_path, "0002", first, second)]


def test_a_series_applies_in_order(tmp_path):
    dummy, second, patches = _series(tmp_path)
    src = _tree(tmp_path)
    result = _load().apply_series(str(src), [str(p) for p in patches])
    assert result == {"applied": ["0001.patch", "0002.patch"], "failed": None}
    assert (src / "file.txt").read_text() == second


def test_the_second_patch_alone_does_not_fit_the_original(tmp_path):
    """Why the patches are not tried one by one on the pristine source (as a dry run of each
    against the original would): the series' later patches build on the earlier ones."""
    dummy, dummy2, patches = _series(tmp_path)
    src = _tree(tmp_path)
    result = _load().apply_series(str(src), [str(patches[1])])
    assert result["applied"] == [] and result["failed"]["patch"] == "0002.patch"
    assert (src / "file.txt").read_text() == ORIGINAL


def test_an_offset_stops_the_series_before_anything_after_it(tmp_path):
    dummy, dummy2, patches = _series(tmp_path)
    shifted = "extra line\n" * 3 + ORIGINAL  # the first patch still applies, 3 lines off
    src = _tree(tmp_path, shifted)
    result = _load().apply_series(str(src), [str(p) for p in patches])
    assert result["applied"] == []
    assert result["failed"]["patch"] == "0001.patch"
    assert "offset" in result["failed"]["output"]
    assert (src / "file.txt").read_text() == shifted  # a dry run found it: nothing was written


def test_a_failed_hunk_after_a_good_patch_is_reported_with_what_was_applied(tmp_path):
    first, dummy, patches = _series(tmp_path)
    bad = _diff(tmp_path, "0002-bad", ORIGINAL.replace("line 3\n", "line three\n"), ORIGINAL)
    src = _tree(tmp_path)
    result = _load().apply_series(str(src), [str(patches[0]), str(bad)])
    assert result["applied"] == ["0001.patch"]
    assert result["failed"]["patch"] == "0002-bad.patch" and result["failed"]["rc"] != 0
    assert (src / "file.txt").read_text() == first


def test_command_line_prints_json_and_exit_status(tmp_path):
    dummy, dummy2, patches = _series(tmp_path)
    src = _tree(tmp_path)
    proc = subprocess.run([sys.executable, str(SCRIPT), str(src), str(patches[1]), str(patches[0])],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 1
    assert json.loads(proc.stdout)["failed"]["patch"] == "0002.patch"
    usage = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "missing")], capture_output=True, text=True,
                           check=False)
    assert usage.returncode == 2 and "usage: apply_patches.py" in usage.stderr
