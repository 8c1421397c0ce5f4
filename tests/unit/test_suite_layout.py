# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The test tree itself: one pytest run over ``tests/`` must be able to collect every file.

``make integration`` (the last step of ``make test``) runs a single pytest over ``tests/``.
The test folders have no ``__init__.py``, so pytest imports each test file under its bare
file name (rootdir-based "prepend" import mode): two test files with the same name in
different folders make collection stop with "import file mismatch" and nothing runs.
"""

from __future__ import annotations

import collections
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_module_names(tree=TESTS):
    seen = collections.defaultdict(list)
    for path in sorted(tree.rglob("*.py")):
        if path.name.startswith("test_") or path.name.endswith("_test.py"):
            seen[path.name].append(str(path.relative_to(tree)))
    clashes = {name: paths for name, paths in seen.items() if len(paths) > 1}
    assert not clashes, (
        f"test files that share a name cannot be collected in one pytest run: {clashes}; "
        "rename one of each"
    )


def test_module_names_detects_a_clash(tmp_path):
    for folder in ("unit", "integration"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "test_same.py").write_text("")
    try:
        test_module_names(tmp_path)
    except AssertionError as err:
        assert "test_same.py" in str(err)
    else:
        raise AssertionError("a clash of test file names was not found")
