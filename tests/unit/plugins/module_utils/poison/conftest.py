# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Shared helpers of the detection-core tests: the fixture-tree builder and its scenarios."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parents[5] / "tests" / "fixtures" / "procfs"
if str(FIXTURES) not in sys.path:
    sys.path.insert(0, str(FIXTURES))

from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.poison import inventory  # noqa: E402


@pytest.fixture
def run():
    """run(tree, **option_overrides) -> poison_info result for a fixture tree."""

    def _run(tree, **overrides):
        return inventory.collect(inventory.Options(**tree.options(**overrides)))

    return _run


def vm_by_name(result, name):
    matches = [vm for vm in result["vms"] if vm["name"] == name]
    assert len(matches) == 1, (name, [vm["name"] for vm in result["vms"]])
    return matches[0]
