# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Test-session set-up shared by unit and integration tests.

The checkout is made importable and resolvable as the collection ``kvm_ras.poison_guard``
through ``.cache/collections/ansible_collections/kvm_ras/poison_guard`` (a symlink to the
checkout, made by ``tools/collection-link``), so tests can import
``ansible_collections.kvm_ras.poison_guard.plugins...`` and subprocesses of ansible find the
collection via ``ANSIBLE_COLLECTIONS_PATH``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

_collections_root = subprocess.run(
    [str(REPO_ROOT / "tools" / "collection-link")], check=True, capture_output=True, text=True
).stdout.strip()

if _collections_root not in sys.path:
    sys.path.insert(0, _collections_root)

_paths = [p for p in os.environ.get("ANSIBLE_COLLECTIONS_PATH", "").split(os.pathsep) if p]
if _collections_root not in _paths:
    os.environ["ANSIBLE_COLLECTIONS_PATH"] = os.pathsep.join([_collections_root] + _paths)
