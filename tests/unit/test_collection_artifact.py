# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What ``ansible-galaxy collection build`` ships: what users run and read, nothing else.

The artifact is built for real (``collection_artifact`` in tests/unit/conftest.py, the venv's
ansible-galaxy). galaxy.yml's build_ignore is a deny list; this test holds the allow list, so
a new top-level directory that is not listed in build_ignore fails here instead of shipping.
"""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# Top-level entries of the artifact.
ALLOWED_TOP = {"plugins", "roles", "playbooks", "docs", "meta", "extensions", "changelogs", "schemas",
               "README.md", "COPYING", "MANIFEST.json", "FILES.json"}
# What must never ship: labs, tests, development tools and configuration of the checkout
# (ansible.cfg points at the lab inventory).
EXCLUDED = {"lab", "tests", "molecule", "tools", "benchmarks", ".ci", "requirements", ".venv", ".cache",
            "Makefile", "ansible.cfg", "pytest.ini", "execution-environment.yml", ".gitignore", ".ansible-lint"}
# Directories whose every file ships (users run them), and files the docs and module
# documentation point users at.
SHIPPED_TREES = ("plugins", "roles", "playbooks", "schemas", "meta", "extensions")
# Size: the artifact may be at most what its allowed content weighs compressed on its own,
# plus FILES.json/MANIFEST.json and some slack (SIZE_SLACK). The labs, tests and Molecule
# scenarios weigh about 250 KB compressed, so their return is caught however much the
# collection itself grows; MAX_BYTES catches anything huge (an image, a tarball) in a shipped
# directory.
SIZE_SLACK = 1.10
METADATA_BYTES = 64 * 1024
MAX_BYTES = 2 * 1024 * 1024


def _names(artifact):
    with tarfile.open(artifact) as tar:
        return {m.name: m for m in tar.getmembers()}


def _repo_files(tree):
    found = set()
    for root, dirs, files in os.walk(REPO / tree):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in files:
            if name.endswith((".pyc", ".retry")):
                continue
            found.add(str((Path(root) / name).relative_to(REPO)))
    return found


def test_only_user_facing_top_level_entries(collection_artifact):
    names = _names(collection_artifact)
    top = {name.split("/")[0] for name in names}
    assert top <= ALLOWED_TOP, "not for users, add to galaxy.yml build_ignore: %s" % sorted(top - ALLOWED_TOP)
    assert not top & EXCLUDED
    for required in ("plugins", "roles", "playbooks", "docs", "meta", "changelogs", "README.md", "COPYING"):
        assert required in top, required
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]


@pytest.mark.parametrize("tree", SHIPPED_TREES)
def test_every_plugin_role_playbook_and_schema_ships(collection_artifact, tree):
    names = set(_names(collection_artifact))
    expected = _repo_files(tree)
    assert expected, tree
    missing = sorted(expected - names)
    assert not missing, "files users need are missing from the artifact (build_ignore too wide?): %s" % missing


def test_docs_ship_with_the_fleet_examples(collection_artifact):
    names = set(_names(collection_artifact))
    expected = {f for f in _repo_files("docs") if f.endswith((".md", ".yml", ".yaml"))}
    assert sorted(expected - names) == []
    assert "docs/examples/hosts.yml" in names and "docs/examples/group_vars/hypervisors.yml" in names


def _allowed_content_compressed():
    """Bytes of a gzip tarball of the checkout's files under the allowed top-level entries."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for top in sorted(ALLOWED_TOP - {"MANIFEST.json", "FILES.json"}):
            path = REPO / top
            files = [top] if path.is_file() else sorted(_repo_files(top)) if path.is_dir() else []
            for rel in files:
                tar.add(str(REPO / rel), arcname=rel, recursive=False)
    return len(buffer.getvalue())


def test_artifact_size_is_bounded(collection_artifact):
    size = collection_artifact.stat().st_size
    expected = _allowed_content_compressed()
    largest = sorted(((m.size, n) for n, m in _names(collection_artifact).items()), reverse=True)[:8]
    assert size <= expected * SIZE_SLACK + METADATA_BYTES, (
        "the artifact is %d KB, its allowed content alone %d KB compressed: did labs, tests or Molecule "
        "come back? Largest entries: %s" % (size // 1024, expected // 1024, largest))
    assert size <= MAX_BYTES, "the artifact is %d KB; largest entries: %s" % (size // 1024, largest)


def test_size_bound_catches_the_labs(collection_artifact, tmp_path):
    """The bound is not blind: the same artifact with lab/ and molecule/ added exceeds it."""
    bigger = tmp_path / "with-labs.tar.gz"
    with tarfile.open(collection_artifact) as src, tarfile.open(bigger, "w:gz") as dst:
        for member in src.getmembers():
            dst.addfile(member, src.extractfile(member) if member.isfile() else None)
        # the files git tracks there (not lab/state/, where the lab keeps its images)
        tracked = subprocess.run(["git", "ls-files", "-z", "--", "lab", "molecule", "tests"], cwd=str(REPO),
                                 capture_output=True, text=True, check=True).stdout.split("\0")
        for rel in sorted(f for f in tracked if f and (REPO / f).is_file()):
            dst.add(str(REPO / rel), arcname=rel, recursive=False)
    assert bigger.stat().st_size > _allowed_content_compressed() * SIZE_SLACK + METADATA_BYTES
