# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The collection's plugins run through ansible-playbook without deprecation warnings.

ansible-core 2.19 deprecates passing ``warnings=`` to ``exit_json``/``fail_json`` (removed in
2.23) and prints "[DEPRECATION WARNING]: Passing `warnings` to `exit_json` or `fail_json` is
deprecated." for every such task. This runs modules and action plugins for real on localhost
(local connection, the venv's Python): a module that warns (evacuation_lock releasing a lock it
does not hold: module.warn) and the evacuation page (an action plugin), and checks that the
warning reaches the output as a plain warning and that no deprecation warning is printed. A
control module that still passes ``warnings=`` shows that the check sees the deprecation; a
control action plugin shows that warnings in an action plugin's result (what fleet_report and
migration_gate do) are not deprecated.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
sys.path.insert(0, str(REPO / "tests" / "fixtures"))
import evacuation_reports  # noqa: E402  pylint: disable=wrong-import-position

OLD_STYLE_MODULE = '''#!/usr/bin/python
from ansible.module_utils.basic import AnsibleModule
module = AnsibleModule(argument_spec={})
module.exit_json(changed=False, warnings=["old style warning"])
'''

# What the collection's action plugins do (fleet_report, migration_gate): warnings in the
# task result, which ansible-core 2.19 turns into warnings without a deprecation.
RESULT_WARNINGS_ACTION = '''
from ansible.plugins.action import ActionBase


class ActionModule(ActionBase):
    _requires_connection = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        result.update(changed=False, warnings=["warning from an action plugin result"])
        return result
'''


def run_playbook(tmp_path, tasks):
    playbook = tmp_path / "play.yml"
    playbook.write_text(json.dumps([{"name": "Run collection plugins", "hosts": "localhost",
                                     "gather_facts": False, "tasks": tasks}]), encoding="utf-8")
    env = dict(os.environ, ANSIBLE_DEPRECATION_WARNINGS="true", ANSIBLE_NOCOLOR="1",
               ANSIBLE_LIBRARY=str(tmp_path / "library"), ANSIBLE_LOCAL_TEMP=str(tmp_path / "tmp"),
               ANSIBLE_ACTION_PLUGINS=str(tmp_path / "action_plugins"),
               ANSIBLE_PYTHON_INTERPRETER=sys.executable)
    env.pop("ANSIBLE_CONFIG", None)
    proc = subprocess.run([str(VENV_BIN / "ansible-playbook"), "-i", "localhost,", "-c", "local", str(playbook)],
                          cwd=str(tmp_path), env=env, capture_output=True, text=True, check=False, timeout=300)
    return proc.returncode, proc.stdout + proc.stderr


@pytest.fixture
def workdir(tmp_path):
    (tmp_path / "library").mkdir()
    (tmp_path / "library" / "old_style_warnings.py").write_text(OLD_STYLE_MODULE, encoding="utf-8")
    (tmp_path / "action_plugins").mkdir()
    (tmp_path / "action_plugins" / "result_warnings.py").write_text(RESULT_WARNINGS_ACTION, encoding="utf-8")
    return tmp_path


def test_the_check_sees_a_deprecated_warnings_argument(workdir):
    rc, out = run_playbook(workdir, [{"name": "Old style", "old_style_warnings": {}}])
    assert rc == 0, out
    assert "[DEPRECATION WARNING]" in out and "Passing `warnings`" in out, out


def test_warnings_in_an_action_plugin_result_are_not_deprecated(workdir):
    rc, out = run_playbook(workdir, [{"name": "Action plugin", "result_warnings": {}}])
    assert rc == 0, out
    assert "warning from an action plugin result" in out and "DEPRECATION" not in out, out


def test_collection_plugins_warn_without_deprecation(workdir):
    report_file = workdir / "hv1-20260301T025500Z.json"
    report_file.write_text(json.dumps(evacuation_reports.realistic_report(str(report_file))), encoding="utf-8")
    lock = str(workdir / "evacuation.lock")
    rc, out = run_playbook(workdir, [
        {"name": "Take the lock", "kvm_ras.poison_guard.evacuation_lock": {"owner": "run-a", "path": lock}},
        {"name": "Release a lock held by another run",
         "kvm_ras.poison_guard.evacuation_lock": {"owner": "run-b", "path": lock, "state": "absent"}},
        {"name": "Write the page", "kvm_ras.poison_guard.evacuation_page": {
            "report": "{{ lookup('ansible.builtin.file', '%s') | from_json }}" % report_file},
         "register": "page"},
        {"name": "Check the page", "ansible.builtin.assert": {
            "that": ["page.html_path == '%s'" % (workdir / "hv1-20260301T025500Z.html"),
                     "page.chart_mode == 'durations'", "page is not changed"]}},
    ])
    assert rc == 0, out
    assert "[WARNING]" in out and "held by run-a" in out, "module.warn() reaches the output:\n" + out
    assert "DEPRECATION" not in out, out
    assert "db01" in (workdir / "hv1-20260301T025500Z.html").read_text(encoding="utf-8")
