# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""kvm_ras.poison_guard.evacuation_request: its DOCUMENTATION is the one source of the
evacuation's inputs, and inputs under their deprecated old names still work as extra vars.

- The DOCUMENTATION is typed (int, bool, float, str with choices and defaults); the request's
  rules in plugins/plugin_utils/evacuation_request.py (DEFAULTS, CHOICE_INPUTS, the bound tables) and
  the Inputs table of docs/evacuate_host.md say the same as it.
- The real first play of playbooks/evacuate_host.yml, run with ansible-playbook on localhost
  (it contacts no host): ``-e max_parallel=3`` still works and prints Ansible's deprecation
  warning naming evacuate_max_parallel; an old and a new name with different values are refused
  naming both; an old name in inventory variables is ignored (it is read only as an extra var);
  a value that does not convert is reported with its bounds; ``inputs_given`` names what was given.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ansible_collections.kvm_ras.poison_guard.plugins.plugin_utils import evacuation_request as evreq
from ansible_collections.kvm_ras.poison_guard.plugins.modules.evacuation_request import DOCUMENTATION
from ansible_collections.kvm_ras.poison_guard.plugins.plugin_utils.action_support import argument_spec_from_doc

REPO = Path(__file__).resolve().parents[4]
VENV_BIN = Path(sys.executable).parent
OPTIONS = yaml.safe_load(DOCUMENTATION)["options"]
INPUTS = {name: spec for name, spec in OPTIONS.items() if name != "extra_var_names"}
# Inputs that take a list or a comma-separated string (-e evacuate_targets=hv2,hv3): type raw,
# because Ansible's list type would keep the blanks around the commas.
LIST_OR_STRING = ("evacuate_targets", "evacuate_leave_vms")


# ------------------------------------------------------------------------ the documentation --

def test_every_input_is_documented_once_with_the_evacuate_prefix():
    assert set(INPUTS) == set(evreq.INPUT_NAMES)
    assert all(name.startswith("evacuate_") for name in INPUTS)
    assert not set(INPUTS) & set(evreq.DEPRECATED_INPUTS)


def test_the_documentation_is_typed():
    for name, spec in INPUTS.items():
        if name in LIST_OR_STRING:
            assert spec["type"] == "raw", name
        elif name in evreq.INT_BOUNDS:
            assert spec["type"] == "int", name
        elif name in evreq.FLOAT_BOUNDS:
            assert spec["type"] == "float", name
        elif name in evreq.BOOL_INPUTS:
            assert spec["type"] == "bool", name
        else:
            assert spec["type"] == "str", name


def test_the_rules_use_the_documented_defaults_and_choices():
    documented = {name: spec["default"] for name, spec in INPUTS.items() if "default" in spec}
    assert documented == evreq.DEFAULTS
    assert {name: spec["choices"] for name, spec in INPUTS.items() if "choices" in spec} == {
        name: list(choices) for name, choices in evreq.CHOICE_INPUTS.items()}
    spec = argument_spec_from_doc(DOCUMENTATION)
    assert spec["evacuate_max_parallel"] == {"type": "int", "default": 2}


def test_every_old_name_is_named_in_its_input_documentation():
    for old, new in evreq.DEPRECATED_INPUTS.items():
        text = " ".join(OPTIONS[new]["description"]) if isinstance(OPTIONS[new]["description"], list) \
            else OPTIONS[new]["description"]
        assert "Was C(%s)" % old in text, new


def _docs_inputs():
    """Rows of the Inputs table of docs/evacuate_host.md: name -> (default, accepted)."""
    text = (REPO / "docs" / "evacuate_host.md").read_text(encoding="utf-8")
    table = text.split("## Inputs", 1)[1].split("\n\n", 2)[1]
    rows = {}
    for line in table.splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0].strip("`")] = (cells[1], cells[2])
    return rows


def test_the_docs_table_lists_the_documented_inputs_with_their_defaults_and_choices():
    rows = _docs_inputs()
    assert set(rows) == set(INPUTS)
    for name, spec in INPUTS.items():
        default, accepted = rows[name]
        if "default" in spec and spec["default"] != []:
            shown = spec["default"]
            shown = str(shown).lower() if isinstance(shown, bool) else (str(shown) or '""')
            assert default == "`%s`" % shown, (name, default)
        for choice in spec.get("choices") or []:
            assert "`%s`" % choice in accepted, (name, choice)


# ------------------------------------------------------------------------ the real play --

@pytest.fixture(name="request_play", scope="module")
def fixture_request_play(tmp_path_factory):
    """The real first play of evacuate_host.yml in a playbook that prints the checked request, with
    an inventory of three hypervisors (never contacted) whose group_vars use an old input name."""
    tmp = tmp_path_factory.mktemp("request")
    plays = yaml.safe_load((REPO / "playbooks" / "evacuate_host.yml").read_text(encoding="utf-8"))
    task = next(t for t in plays[0]["tasks"] if "kvm_ras.poison_guard.evacuation_request" in t)
    (tmp / "play.yml").write_text(yaml.safe_dump([{
        "name": "Check the request", "hosts": "localhost", "gather_facts": False,
        "tasks": [task, {"name": "Show the request",
                         "ansible.builtin.debug": {"msg": "REQUEST={{ evacuation.request | to_json }}"}}]}]))
    inventory = tmp / "inventory"
    (inventory / "group_vars").mkdir(parents=True)
    (inventory / "hosts.yml").write_text(yaml.safe_dump({"all": {"children": {"hypervisors": {"hosts": {
        "hv1": None, "hv2": None, "hv3": None}}}}}))
    # a site variable that happens to use an old input name: never an input any more
    (inventory / "group_vars" / "all.yml").write_text("max_parallel: 7\ncordon: false\n")
    return tmp


def run_request(tmp, *extra):
    argv = [str(VENV_BIN / "ansible-playbook"), "-i", str(tmp / "inventory"), str(tmp / "play.yml"), "--forks", "5"]
    for item in extra:
        argv += ["-e", item]
    env = dict(os.environ, ANSIBLE_LOCAL_TEMP=str(tmp / "tmp"), ANSIBLE_NOCOLOR="1", ANSIBLE_DEPRECATION_WARNINGS="true",
               ANSIBLE_PYTHON_INTERPRETER=sys.executable)
    env.pop("ANSIBLE_CONFIG", None)
    proc = subprocess.run(argv, cwd=str(tmp), env=env, capture_output=True, text=True, check=False, timeout=300)
    output = proc.stdout + proc.stderr
    line = next((l for l in proc.stdout.splitlines() if "REQUEST=" in l), None)
    request = None
    if line is not None:
        request = json.loads(json.loads("{" + line.strip().rstrip(",") + "}")["msg"].split("=", 1)[1])
    return proc.returncode, output, request


def test_an_old_name_as_extra_var_still_works_and_warns(request_play):
    rc, output, request = run_request(request_play, "evacuate_source=hv1", "max_parallel=3",
                                      "evacuate_poisoned_vm_policy=leave")
    assert rc == 0, output
    assert request["evacuate_max_parallel"] == 3
    assert "max_parallel" not in request
    text = re.sub(r"\s+", " ", output)
    assert "[DEPRECATION WARNING]" in text, output
    assert "the extra var max_parallel of kvm_ras.poison_guard.evacuate_host is now evacuate_max_parallel" in text
    assert "1.0.0" in text
    # group_vars' cordon: false is not an input: the default stays
    assert request["evacuate_cordon"] is True
    assert request["inputs_given"] == ["evacuate_max_parallel", "evacuate_poisoned_vm_policy", "evacuate_source"]


def test_old_names_in_inventory_variables_are_ignored_without_a_warning(request_play):
    rc, output, request = run_request(request_play, "evacuate_source=hv1")
    assert rc == 0, output
    assert request["evacuate_max_parallel"] == 2 and request["evacuate_cordon"] is True
    assert "DEPRECATION" not in output, output
    assert request["inputs_given"] == ["evacuate_source"]


def test_an_old_and_a_new_name_with_different_values_are_refused_naming_both(request_play):
    rc, output, request = run_request(request_play, "evacuate_source=hv1", "max_parallel=3", "evacuate_max_parallel=4")
    assert rc != 0 and request is None, output
    text = re.sub(r"\s+", " ", output)
    assert "evacuation refused before any change" in text, output
    assert "evacuate_max_parallel=4 and its deprecated old name max_parallel=3 are both given with different values" \
        in text, output
    assert "drop -e max_parallel and keep -e evacuate_max_parallel" in text, output


def test_the_same_value_under_both_names_is_accepted(request_play):
    rc, output, request = run_request(request_play, "evacuate_source=hv1", "cordon=no", "evacuate_cordon=false")
    assert rc == 0, output
    assert request["evacuate_cordon"] is False


def test_values_that_do_not_convert_are_reported_with_their_bounds_and_every_other_problem(request_play):
    rc, output, _request = run_request(request_play, "evacuate_source=hv9", "evacuate_max_parallel=two",
                                       "evacuate_cordon=perhaps")
    assert rc != 0, output
    text = re.sub(r"\s+", " ", output)
    assert "evacuation refused before any change (3 problems)" in text, output
    assert "evacuate_max_parallel must be a whole number between 1 and 64, got 'two'" in text
    assert "evacuate_cordon must be true or false, got 'perhaps'" in text
    assert "evacuate_source 'hv9' is not in the inventory" in text
