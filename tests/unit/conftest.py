# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fixtures shared by the unit tests."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def collection_artifact(tmp_path_factory):
    """The collection artifact, built once per session with the venv's ``ansible-galaxy
    collection build`` from the checkout (galaxy.yml's build_ignore applies)."""
    out = tmp_path_factory.mktemp("artifact")
    galaxy = Path(sys.executable).parent / "ansible-galaxy"
    build = subprocess.run(
        [str(galaxy) if galaxy.exists() else shutil.which("ansible-galaxy"), "collection", "build",
         "--force", "--output-path", str(out), str(REPO_ROOT)],
        capture_output=True, text=True, check=False)
    assert build.returncode == 0, build.stdout + build.stderr
    (artifact,) = out.glob("kvm_ras-poison_guard-*.tar.gz")
    return artifact
