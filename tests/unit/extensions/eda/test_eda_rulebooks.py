# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The rulebooks of extensions/eda/rulebooks/, loaded by ansible-rulebook's own code.

ansible-rulebook lives in its own venv (.cache/eda-venv, made by tools/eda-setup, which this
module runs first: it reuses a ready venv in about a second). In that venv each rulebook goes
through what ``ansible-rulebook --rulebook`` does before it starts: the JSON schema
(ansible_rulebook.validators.Validate.rulebook), the parser (rules_parser.parse_rule_sets, with
the condition grammar) and the ruleset JSON handed to the Drools engine
(json_generator.generate_dict_rulesets); the source and the playbooks are looked up the way
ansible-rulebook finds collection content (collection.find_source / has_playbook).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[4]
RULEBOOKS = sorted((REPO / "extensions" / "eda" / "rulebooks").glob("*.yml"))
EDA_VENV = REPO / ".cache" / "eda-venv"
AWX_TEMPLATES = REPO / "extensions" / "awx" / "controller_templates.yml"

LOAD = r"""
import json, sys, yaml
from ansible_rulebook import rules_parser, json_generator
from ansible_rulebook.validators import Validate
from ansible_rulebook.collection import find_source, has_playbook, split_collection_name
out = {}
for path in sys.argv[1:]:
    data = yaml.safe_load(open(path))
    try:
        Validate.rulebook(data)
        rulesets = rules_parser.parse_rule_sets(data, {})
        generated = json_generator.generate_dict_rulesets(rulesets, {})
    except Exception as exc:
        out[path] = {"error": "%s: %s" % (type(exc).__name__, str(exc).splitlines()[0])}
        continue
    rules = []
    for ruleset in rulesets:
        for rule in ruleset.rules:
            rules.append({
                "ruleset": ruleset.name, "hosts": ruleset.hosts, "name": rule.name,
                "throttle": rule.throttle and {"once_within": rule.throttle.once_within,
                                               "group_by": rule.throttle.group_by_attributes},
                "actions": [{"action": a.action, "args": a.action_args} for a in rule.actions]})
    sources = [s.source_name for ruleset in rulesets for s in ruleset.sources]
    playbooks = {a["args"]["name"]: has_playbook(*split_collection_name(a["args"]["name"]))
                 for r in rules for a in r["actions"] if a["action"] == "run_playbook"}
    out[path] = {"rules": rules, "sources": sources,
                 "source_files": [find_source(*split_collection_name(s)) for s in sources],
                 "playbooks": playbooks, "conditions": [r["Rule"]["condition"] for g in generated
                                                        for r in g["RuleSet"]["rules"]]}
print(json.dumps(out, default=str))
"""


@pytest.fixture(scope="module")
def eda_env():
    setup = subprocess.run([str(REPO / "tools" / "eda-setup")], capture_output=True, text=True, timeout=1800,
                           check=False)
    assert setup.returncode == 0, "tools/eda-setup failed:\n" + setup.stderr[-3000:]
    collections = subprocess.run([str(REPO / "tools" / "collection-link")], capture_output=True, text=True,
                                 check=True).stdout.strip()
    return {**os.environ, "ANSIBLE_COLLECTIONS_PATH": collections,
            "PATH": "%s:%s" % (EDA_VENV / "bin", os.environ.get("PATH", ""))}


def load(env, paths):
    proc = subprocess.run([str(EDA_VENV / "bin" / "python"), "-c", LOAD, *map(str, paths)], capture_output=True,
                          text=True, env=env, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def loaded(eda_env):
    return load(eda_env, RULEBOOKS)


def test_the_four_rulebooks_exist():
    assert [p.name for p in RULEBOOKS] == ["memory_errors.yml", "memory_errors_awx.yml",
                                           "memory_errors_awx_evacuate.yml", "memory_errors_evacuate.yml"]


@pytest.mark.parametrize("path", RULEBOOKS, ids=lambda p: p.name)
def test_rulebook_loads_with_ansible_rulebook(loaded, path):
    result = loaded[str(path)]
    assert "error" not in result, result.get("error")
    # the source is this collection's plugin file
    assert result["sources"] == ["kvm_ras.poison_guard.memory_errors"]
    assert [Path(f).resolve() for f in result["source_files"]] == [
        (REPO / "extensions" / "eda" / "plugins" / "event_source" / "memory_errors.py").resolve()]
    # every playbook a rule runs is found in the collection (the AWX rulebooks launch job templates)
    if "awx" not in path.name:
        assert result["playbooks"] and all(result["playbooks"].values()), result["playbooks"]
    else:
        assert result["playbooks"] == {}
    for rule in result["rules"]:
        # run_playbook limits to the ruleset hosts: the playbooks' controller play needs localhost
        assert rule["hosts"] == ["all,localhost"]
        assert rule["throttle"] == {"once_within": "1 hour", "group_by": ["event.memory_error.host"]}, rule["name"]


@pytest.mark.parametrize("path", RULEBOOKS, ids=lambda p: p.name)
def test_rules_and_actions(loaded, path):
    rules = {r["name"]: r for r in loaded[str(path)]["rules"]}
    evacuate = "evacuate" in path.name
    awx = "awx" in path.name
    failure = [r for n, r in rules.items() if n.startswith("Cordon") and "uncorrectable" in n]
    storm = [r for n, r in rules.items() if "storm" in n]
    assert len(failure) == 1 and len(storm) == 1 and len(rules) == 2
    kinds = [a["action"] for a in failure[0]["actions"]]
    wanted = "run_job_template" if awx else "run_playbook"
    assert kinds == [wanted] * (2 if evacuate else 1)
    first = failure[0]["actions"][0]["args"]
    assert first["name"] == ("Memory error response" if awx else "kvm_ras.poison_guard.memory_error_response")
    extra = first["job_args"]["extra_vars"] if awx else first["extra_vars"]
    assert extra["memory_error_host"] == "{{ event.memory_error.host }}" and extra["memory_error_report"] is True
    if evacuate:
        second = failure[0]["actions"][1]["args"]
        if awx:
            assert second["name"] == "Evacuate hypervisor" and second["include_events"] is False
            assert second["job_args"]["extra_vars"] == {"evacuate_source": "{{ event.memory_error.host }}"}
        else:
            assert second["name"] == "kvm_ras.poison_guard.evacuate_host"
            assert second["extra_vars"]["evacuate_source"] == "{{ event.memory_error.host }}"
    (storm_action,) = storm[0]["actions"]
    extra = storm_action["args"]["job_args"]["extra_vars"] if awx else storm_action["args"]["extra_vars"]
    assert extra["memory_error_report"] is False


def test_conditions_compile_to_what_drools_gets(loaded):
    conditions = loaded[str(REPO / "extensions" / "eda" / "rulebooks" / "memory_errors.yml")]["conditions"]
    assert conditions[0] == {"AllCondition": [{"EqualsExpression": {
        "lhs": {"Event": "memory_error.kind"}, "rhs": {"String": "memory_failure"}}}]}
    assert conditions[1] == {"AllCondition": [{"AndExpression": {
        "lhs": {"EqualsExpression": {"lhs": {"Event": "memory_error.kind"}, "rhs": {"String": "corrected_errors"}}},
        "rhs": {"EqualsExpression": {"lhs": {"Event": "memory_error.storm"}, "rhs": {"Boolean": True}}}}}]}


def test_the_loader_rejects_a_broken_rulebook(eda_env, tmp_path):
    """The same loader refuses what ansible-rulebook refuses (so the checks above can fail)."""
    data = yaml.safe_load((REPO / "extensions" / "eda" / "rulebooks" / "memory_errors.yml").read_text())
    templated = tmp_path / "templated_window.yml"
    data[0]["rules"][0]["throttle"]["once_within"] = "{{ window }}"
    templated.write_text(yaml.safe_dump(data))
    data[0]["rules"][0]["throttle"]["once_within"] = "1 hour"
    data[0]["rules"][0]["condition"] = "event.memory_error.kind = 'memory_failure'"
    bad_condition = tmp_path / "bad_condition.yml"
    bad_condition.write_text(yaml.safe_dump(data))
    result = load(eda_env, [templated, bad_condition])
    assert "ValidationError" in result[str(templated)]["error"]
    assert "error" in result[str(bad_condition)]


@pytest.mark.parametrize("path", [p for p in RULEBOOKS if "awx" in p.name], ids=lambda p: p.name)
def test_awx_rulebooks_launch_templates_that_exist(path):
    templates = {t["name"]: t for t in yaml.safe_load(AWX_TEMPLATES.read_text())["controller_templates"]}
    data = yaml.safe_load(path.read_text())
    for rule in data[0]["rules"]:
        actions = rule.get("actions") or [rule["action"]]
        for action in actions:
            args = action["run_job_template"]
            template = templates[args["name"]]
            if args.get("include_events", True):
                # AWX drops extra vars a template does not prompt for; the event (ansible_eda)
                # and memory_error_host must get through
                assert template.get("ask_variables_on_launch") is True, args["name"]
            else:
                asked = {q["variable"] for q in yaml.safe_load(
                    (REPO / "extensions" / "awx" / "surveys.yml").read_text())["kvm_ras_awx_evacuate_survey"]["spec"]}
                assert set(args["job_args"]["extra_vars"]) <= asked


def test_response_playbook_runs_from_the_collection():
    text = (REPO / "playbooks" / "memory_error_response.yml").read_text()
    plays = yaml.safe_load(text)
    # ansible-rulebook copies only the playbook file into a temporary project: imports must be FQCN
    imports = [p["ansible.builtin.import_playbook"] for p in plays if "ansible.builtin.import_playbook" in p]
    assert imports == ["kvm_ras.poison_guard.poison_report"]
