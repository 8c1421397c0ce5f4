# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The AWX configuration as code (extensions/awx/) and playbooks/awx_configure.yml.

No AWX runs here (it needs container images from a registry), so the checks go as far as
the real parts allow:

- awx_configure.yml's own tasks are rendered with ansible-core's templating (its vars_files,
  loops, ``when`` and ``omit`` exactly as a run would), and every parameter set a task would
  hand to an awx.awx module is validated against that module's real argument spec, loaded
  from the installed awx.awx collection (so a typo in a key, a type or a choice fails here).
- Survey specs are checked with the rules AWX's API applies when a survey is saved
  (``JobTemplateSurveySpec._validate_spec_data`` in awx/api/views, restated below), and the
  extra vars a survey sends follow AWX's ``SurveyJobTemplateMixin`` (defaults applied only
  when they pass the question's own validation).
- Every survey variable must be an input of the job template's playbook, every input the
  playbook requires must be asked, and choices, bounds and defaults must match the
  playbook's input validation (plugins/plugin_utils/evacuation_request.py for evacuate_host.yml, the
  role argument specs for the role-based playbooks).
- awx_configure.yml itself runs (real ansible-playbook) far enough to prove it refuses bad
  settings before any change and never prints a controller secret.
"""

from __future__ import annotations

import copy
import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar, trust_as_template

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIGURE_PLAYBOOK = REPO_ROOT / "playbooks" / "awx_configure.yml"

# AWX's survey question types and the Python type a default must have
# (JobTemplateSurveySpec.ALLOWED_TYPES in awx/api/views).
SURVEY_TYPES = {
    "text": str, "textarea": str, "password": str, "integer": int, "float": (float, int),
    "multiplechoice": str, "multiselect": str,
}
# Question types the brief for this collection allows (no free textarea).
ALLOWED_QUESTION_TYPES = ("text", "password", "integer", "float", "multiplechoice", "multiselect")
# Extra vars AWX adds to every job (Job.awx_meta_vars); a survey must not use these names.
AWX_META_PREFIXES = ("awx_", "tower_")
# Launch-time prompts a workflow node may set, and the job template field that allows each.
NODE_PROMPTS = {
    "job_type": "ask_job_type_on_launch",
    "limit": "ask_limit_on_launch",
    "inventory": "ask_inventory_on_launch",
    "extra_data": "ask_variables_on_launch",  # or a survey that asks the variables
    "credentials": "ask_credential_on_launch",
    "execution_environment": "ask_execution_environment_on_launch",
    "forks": "ask_forks_on_launch",
    "job_slice_count": "ask_job_slice_count_on_launch",
    "timeout": "ask_timeout_on_launch",
    "verbosity": "ask_verbosity_on_launch",
    "diff_mode": "ask_diff_mode_on_launch",
    "job_tags": "ask_tags_on_launch",
    "skip_tags": "ask_skip_tags_on_launch",
    "scm_branch": "ask_scm_branch_on_launch",
    "labels": "ask_labels_on_launch",
    "instance_groups": "ask_instance_groups_on_launch",
}
LINK_KEYS = ("success_nodes", "failure_nodes", "always_nodes")
VAR_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


# --------------------------------------------------------------------------------------------
# Loading and rendering (shared with tests/integration/test_awx_job_templates.py)
# --------------------------------------------------------------------------------------------

def _loader():
    return DataLoader()


def load_configure_play():
    """awx_configure.yml's play, loaded as ansible-playbook loads it (strings are templates)."""
    plays = _loader().load_from_file(str(CONFIGURE_PLAYBOOK), trusted_as_template=True)
    assert isinstance(plays, list) and len(plays) == 1, "awx_configure.yml holds one play"
    return plays[0]


def play_variables(play, extra_vars=None):
    """The play's variables: vars_files (relative to the playbook), play vars, extra vars."""
    loader = _loader()
    variables = {}
    for rel in play.get("vars_files", []):
        path = (CONFIGURE_PLAYBOOK.parent / rel).resolve()
        data = loader.load_from_file(str(path), trusted_as_template=True) or {}
        variables.update(data)
    variables.update(play.get("vars") or {})
    variables.update(extra_vars or {})
    return variables


def render(value, variables):
    return Templar(loader=_loader(), variables=variables).template(value)


def _plain(value):
    """Rendered data as plain Python types (dict/list/str/int/bool/None)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, bool) or value is None:
        return value
    for kind in (int, float, str):
        if isinstance(value, kind):
            return kind(value)
    return value


def controller_config(extra_vars=None):
    """The controller_* objects as awx_configure.yml renders them (site defaults applied)."""
    play = load_configure_play()
    variables = play_variables(play, extra_vars)
    names = ("controller_execution_environments", "controller_projects", "controller_templates",
             "controller_workflows")
    return {name: _plain(render(variables[name], variables)) for name in names}


def job_template(config, name):
    matches = [jt for jt in config["controller_templates"] if jt["name"] == name]
    assert len(matches) == 1, f"job template {name!r} must be defined once"
    return matches[0]


def survey_extra_vars(template, answers=None):
    """The extra vars a launch sends, as AWX builds them.

    AWX (SurveyJobTemplateMixin._update_unified_job_kwargs): the template's extra_vars, then
    each survey default that is not None and passes the question's own validation, then the
    launch answers. A required question without a default must be answered.
    """
    extra_vars = copy.deepcopy(template.get("extra_vars") or {})
    answers = dict(answers or {})
    if template.get("survey_enabled") and template.get("survey_spec"):
        for question in template["survey_spec"]["spec"]:
            default = question.get("default")
            if default is not None and not survey_value_errors(question, default):
                extra_vars[question["variable"]] = default
        for question in template["survey_spec"]["spec"]:
            variable = question["variable"]
            if variable in answers:
                errors = survey_value_errors(question, answers[variable])
                assert not errors, errors
            elif question["required"] and variable not in extra_vars:
                raise AssertionError(f"required survey question {variable!r} needs an answer")
    extra_vars.update(answers)
    return extra_vars


def survey_value_errors(question, value):
    """AWX's per-answer validation (SurveyJobTemplateMixin._survey_element_validation)."""
    qtype, errors = question["type"], []
    if qtype in ("text", "textarea", "password"):
        if not isinstance(value, str):
            return [f"{question['variable']}: expected a string"]
        if question.get("min") not in ("", None) and len(value) < int(question["min"]):
            errors.append(f"{question['variable']}: shorter than {question['min']}")
        if question.get("max") not in ("", None) and len(value) > int(question["max"]):
            errors.append(f"{question['variable']}: longer than {question['max']}")
    elif qtype in ("integer", "float"):
        if type(value) not in ((int,) if qtype == "integer" else (int, float)):
            return [f"{question['variable']}: expected {qtype}"]
        if question.get("min") not in ("", None) and value < question["min"]:
            errors.append(f"{question['variable']}: below {question['min']}")
        if question.get("max") not in ("", None) and value > question["max"]:
            errors.append(f"{question['variable']}: above {question['max']}")
    elif qtype == "multiplechoice":
        if value not in _choices(question):
            errors.append(f"{question['variable']}: {value!r} is not a choice")
    elif qtype == "multiselect":
        if not isinstance(value, list) or any(v not in _choices(question) for v in value):
            errors.append(f"{question['variable']}: {value!r} are not choices")
    return errors


def _choices(question):
    choices = question.get("choices")
    if isinstance(choices, str):
        return [c for c in choices.splitlines() if c.strip()]
    return list(choices or [])


def survey_spec_errors(survey):
    """AWX's checks when a survey is saved (JobTemplateSurveySpec._validate_spec_data)."""
    errors = []
    for field, kind in (("name", str), ("description", str), ("spec", list)):
        if not isinstance(survey.get(field), kind):
            errors.append(f"survey field {field!r} missing or not a {kind.__name__}")
    if errors:
        return errors
    if not survey["spec"]:
        return ["'spec' doesn't contain any items"]
    seen = set()
    for idx, item in enumerate(survey["spec"]):
        where = f"question {idx} ({item.get('variable')!r})"
        for field, kind in (("type", str), ("question_name", str), ("variable", str), ("required", bool)):
            if not isinstance(item.get(field), kind):
                errors.append(f"{where}: {field!r} missing or not a {kind.__name__}")
        if errors:
            continue
        unknown = set(item) - {"type", "question_name", "question_description", "variable", "required",
                               "default", "min", "max", "choices", "new_question"}
        if unknown:
            errors.append(f"{where}: unknown keys {sorted(unknown)}")
        if item["variable"] in seen:
            errors.append(f"{where}: variable duplicated")
        seen.add(item["variable"])
        if not VAR_NAME_RE.match(item["variable"]) or item["variable"].startswith(AWX_META_PREFIXES):
            errors.append(f"{where}: not a usable variable name")
        qtype = item["type"]
        if qtype not in ALLOWED_QUESTION_TYPES:
            errors.append(f"{where}: type {qtype!r} is not one of {ALLOWED_QUESTION_TYPES}")
            continue
        default = item.get("default")
        if default not in (None, "") and (
                not isinstance(default, SURVEY_TYPES[qtype]) or isinstance(default, bool)):
            errors.append(f"{where}: default {default!r} is not a {qtype} value")
        for key in ("min", "max"):
            if item.get(key) is not None and (not isinstance(item[key], int) or isinstance(item[key], bool)):
                errors.append(f"{where}: {key} must be an integer")
        if qtype in ("multiplechoice", "multiselect"):
            choices = _choices(item)
            if not choices:
                errors.append(f"{where}: {qtype} needs choices")
            if len(set(choices)) != len(choices):
                errors.append(f"{where}: duplicated choices")
            defaults = default.splitlines() if isinstance(default, str) else (default or [])
            if qtype == "multiplechoice" and len(defaults) > 1:
                errors.append(f"{where}: one default only")
            if any(d not in choices for d in defaults):
                errors.append(f"{where}: default {default!r} is not among the choices")
        if default not in (None, "") or (default == "" and qtype in ("text", "password")):
            errors.extend(f"{where}: default fails its own validation: {e}"
                          for e in survey_value_errors(item, default))
        if item.get("min") is not None and item.get("max") is not None and item["min"] > item["max"]:
            errors.append(f"{where}: min above max")
    return errors


# --------------------------------------------------------------------------------------------
# awx.awx argument specs, loaded from the installed collection
# --------------------------------------------------------------------------------------------

class _SpecCaptured(Exception):
    pass


def awx_module_spec(fqcn):
    """(argument_spec incl. the auth options, ArgumentSpecValidator kwargs) of an awx.awx module.

    The module's ``main()`` builds its spec and hands it to ControllerAPIModule; that class is
    swapped for one that records the arguments and stops, so the spec is the module's own.
    """
    namespace, collection, name = fqcn.split(".")
    module = importlib.import_module(f"ansible_collections.{namespace}.{collection}.plugins.modules.{name}")
    api = importlib.import_module(f"ansible_collections.{namespace}.{collection}.plugins.module_utils.controller_api")
    captured = {}

    class Recorder:
        def __init__(self, argument_spec=None, **kwargs):
            captured["spec"], captured["kwargs"] = argument_spec, kwargs
            raise _SpecCaptured()

    original = module.ControllerAPIModule
    module.ControllerAPIModule = Recorder
    try:
        with pytest.raises(_SpecCaptured):
            module.main()
    finally:
        module.ControllerAPIModule = original
    spec = dict(api.ControllerModule.AUTH_ARGSPEC)
    spec.update(captured["spec"])
    kwargs = {k: v for k, v in captured["kwargs"].items()
              if k in ("mutually_exclusive", "required_together", "required_one_of", "required_if",
                       "required_by")}
    return spec, kwargs


def validate_module_params(fqcn, params):
    spec, kwargs = awx_module_spec(fqcn)
    result = ArgumentSpecValidator(spec, **kwargs).validate(copy.deepcopy(params))
    return [str(e) for e in result.errors]


# --------------------------------------------------------------------------------------------
# awx_configure.yml's tasks, rendered per loop item
# --------------------------------------------------------------------------------------------

TASK_KEYWORDS = {"name", "loop", "loop_control", "when", "no_log", "vars", "tags", "register",
                 "changed_when", "failed_when", "delegate_to", "run_once", "become"}


def task_module(task):
    modules = [k for k in task if k not in TASK_KEYWORDS]
    assert len(modules) == 1, f"task {task.get('name')!r}: one module per task, got {modules}"
    return modules[0]


def _truthy(conditions, variables):
    if isinstance(conditions, str):
        conditions = [conditions]
    for condition in conditions or []:
        if isinstance(condition, bool):
            value = condition
        else:
            value = render(trust_as_template("{{ (" + str(condition) + ") | bool }}"), variables)
        if not value:
            return False
    return True


def rendered_calls(play, variables):
    """[(task, module FQCN, loop item or None, params)] for every module call of the play."""
    calls = []
    for task in play["tasks"]:
        module = task_module(task)
        if not module.startswith("awx.awx."):
            continue  # the pre-flight checks run for real in the tests at the end
        loop_var = (task.get("loop_control") or {}).get("loop_var", "item")
        items = render(task["loop"], variables) if "loop" in task else [None]
        for item in items:
            scope = dict(variables)
            if item is not None:
                scope[loop_var] = item
            if not _truthy(task.get("when"), scope):
                continue
            params = _plain(render(task[module], scope))
            calls.append((task, module, _plain(item), params))
    return calls


@pytest.fixture(scope="module")
def play():
    return load_configure_play()


@pytest.fixture(scope="module")
def config():
    return controller_config()


@pytest.fixture(scope="module")
def calls(play):
    # an image, as an operator must give one; everything else from the site defaults
    return rendered_calls(play, play_variables(play, {"kvm_ras_awx_ee_image": "registry.invalid/ee:1"}))


def test_every_module_call_validates_against_the_awx_argument_spec(calls):
    awx_calls = [c for c in calls if c[1].startswith("awx.awx.")]
    by_module = {}
    for task, module, _item, params in awx_calls:
        errors = validate_module_params(module, params)
        assert not errors, f"{task['name']}: {params.get('name', params.get('identifier'))}: {errors}"
        by_module.setdefault(module, []).append(params)
    assert len(by_module["awx.awx.execution_environment"]) == 1
    assert len(by_module["awx.awx.project"]) == 1
    assert {p["name"] for p in by_module["awx.awx.job_template"]} == {
        "Evacuate hypervisor", "Fleet poison report - start", "Fleet poison report",
        "Fleet poison report - merge", "Deploy patched QEMU", "Uncordon hypervisor",
        "Memory error response"}
    assert [p["name"] for p in by_module["awx.awx.workflow_job_template"]] == [
        "Fleet poison report (sliced)", "Evacuate hypervisor with approval"]
    nodes = by_module["awx.awx.workflow_job_template_node"]
    created = [p for p in nodes if "unified_job_template" in p or "approval_node" in p]
    linked = [p for p in nodes if any(k in p for k in LINK_KEYS)]
    assert len(created) == 3 + 5 and len(linked) == 2 + 4
    # the approval node is created as an approval template, not looked up as a job template
    approvals = [p for p in created if "approval_node" in p]
    assert len(approvals) == 1 and "unified_job_template" not in approvals[0]


def test_the_argument_spec_check_catches_typos():
    """The validation above is not vacuous: typos in keys, types and choices fail it."""
    assert validate_module_params("awx.awx.job_template", {"name": "x", "job_type": "run"}) == []
    assert validate_module_params("awx.awx.job_template", {"name": "x", "survey_enabeld": True})
    assert validate_module_params("awx.awx.job_template", {"name": "x", "job_slice_count": "many"})
    assert validate_module_params("awx.awx.job_template", {"name": "x", "job_type": "plan"})
    assert validate_module_params("awx.awx.workflow_job_template_node",
                                  {"identifier": "a", "workflow_job_template": "w",
                                   "unified_job_template": "j", "approval_node": {"name": "n"}})


def test_every_data_key_reaches_a_module(play, config):
    """A key in extensions/awx/ that awx_configure.yml does not pass on would be lost silently."""
    sources = {
        "controller_execution_environments": ["Execution environment"],
        "controller_projects": ["Project"],
        "controller_templates": ["Job templates"],
        "controller_workflows": ["Workflow job templates"],
        "simplified_workflow_nodes": ["Workflow nodes", "Workflow node links"],
    }
    tasks = {t["name"]: t for t in play["tasks"]}

    def passed_keys(task_names, index=None):
        keys = set()
        for name in task_names:
            task = tasks[name]
            loop_var = task["loop_control"]["loop_var"]
            prefix = re.escape(loop_var + (f".{index}" if index is not None else "")) + r"\.([a-z_]+)"
            text = str(task[task_module(task)])
            keys.update(re.findall(prefix, text))
        return keys

    for var, task_names in sources.items():
        if var == "simplified_workflow_nodes":
            items = [n for wf in config["controller_workflows"] for n in wf.get(var, [])]
            keys = passed_keys(task_names, index=1)
        elif var == "controller_workflows":
            items = config[var]
            keys = passed_keys(task_names) | passed_keys(sources["simplified_workflow_nodes"], index=0)
            keys.add("simplified_workflow_nodes")
        else:
            items = config[var]
            keys = passed_keys(task_names)
        assert items, var
        for item in items:
            lost = set(item) - keys
            assert not lost, f"{var} entry {item.get('name', item.get('identifier'))!r}: {sorted(lost)} not passed on"


def test_secrets_reach_modules_only_as_no_log_options(play):
    defaults = play["module_defaults"]["group/awx.awx.controller"]
    spec, _unused = awx_module_spec("awx.awx.job_template")
    secret_vars = ("controller_password", "controller_oauthtoken")
    for option, template in defaults.items():
        assert option in spec, f"module_defaults option {option!r} is not an awx.awx option"
        if any(v in str(template) for v in secret_vars):
            assert spec[option].get("no_log") is True, f"{option} carries a secret but is not no_log"
    # any task whose templates read a secret variable hides its output
    for task in play["tasks"]:
        expressions = " ".join(re.findall(r"\{\{(.*?)\}\}", str(task[task_module(task)]), re.S))
        if any(re.search(rf"\b{v}\b", expressions) for v in secret_vars):
            assert task.get("no_log") is True, f"task {task['name']!r} handles a secret without no_log"


# --------------------------------------------------------------------------------------------
# Surveys, templates and the workflow
# --------------------------------------------------------------------------------------------

def _surveys(config):
    for jt in config["controller_templates"] + config["controller_workflows"]:
        if jt.get("survey_enabled"):
            yield jt["name"], jt["survey_spec"]


def test_survey_specs_pass_awx_validation(config):
    surveys = list(_surveys(config))
    assert {name for name, _survey in surveys} >= {"Evacuate hypervisor", "Deploy patched QEMU",
                                                   "Evacuate hypervisor with approval"}
    for name, survey in surveys:
        assert survey_spec_errors(survey) == [], name


@pytest.mark.parametrize("mutation, expected", [
    (lambda s: s["spec"][0].update(type="dropdown"), "not one of"),
    (lambda s: s["spec"][0].pop("variable"), "'variable' missing"),
    (lambda s: s["spec"].append(dict(s["spec"][0])), "duplicated"),
    (lambda s: s["spec"][2].update(default="2"), "is not a integer value"),
    (lambda s: s["spec"][2].update(default=99), "above"),
    (lambda s: s["spec"][3].update(default="migrate_anyway"), "not among the choices"),
    (lambda s: s["spec"][3].update(choices=[]), "needs choices"),
    (lambda s: s["spec"][0].update(requird=True), "unknown keys"),
    (lambda s: s["spec"][0].update(variable="awx_job_id"), "not a usable variable name"),
])
def test_survey_validation_catches_mistakes(config, mutation, expected):
    survey = copy.deepcopy(job_template(config, "Evacuate hypervisor")["survey_spec"])
    mutation(survey)
    assert any(expected in e for e in survey_spec_errors(survey)), survey_spec_errors(survey)


def test_evacuate_template_is_never_sliced_nor_run_twice(config):
    jt = job_template(config, "Evacuate hypervisor")
    assert jt["job_slice_count"] == 1
    assert jt["allow_simultaneous"] is False
    assert jt["playbook"] == "playbooks/evacuate_host.yml"
    questions = {q["variable"]: q for q in jt["survey_spec"]["spec"]}
    assert questions["evacuate_source"]["type"] == "text" and questions["evacuate_source"]["required"]
    assert questions["evacuate_targets"]["type"] == "text"
    assert questions["evacuate_max_parallel"]["type"] == "integer"
    assert questions["evacuate_poisoned_vm_policy"]["type"] == "multiplechoice"
    assert questions["evacuate_migration_timeout"]["type"] == "integer"
    # the playbook refuses evacuate_max_parallel above the forks: the largest answer must fit
    assert jt["forks"] >= questions["evacuate_max_parallel"]["max"]


def test_fleet_report_template_is_sliceable(config):
    jt = job_template(config, "Fleet poison report")
    assert jt["job_slice_count"] > 1
    assert jt["playbook"] == "playbooks/poison_report.yml"
    assert jt["extra_vars"]["poison_report_phase"] == "scan"


def test_deploy_template(config):
    jt = job_template(config, "Deploy patched QEMU")
    assert jt["playbook"] == "playbooks/deploy_patched_qemu.yml"
    assert jt["job_slice_count"] == 1 and jt["allow_simultaneous"] is False


def test_templates_refer_to_defined_objects(config):
    projects = {p["name"] for p in config["controller_projects"]}
    environments = {e["name"] for e in config["controller_execution_environments"]}
    for jt in config["controller_templates"]:
        assert jt["project"] in projects, jt["name"]
        assert jt["execution_environment"] in environments, jt["name"]
        assert jt["inventory"] and jt["credentials"], jt["name"]
    for project in config["controller_projects"]:
        assert project["default_environment"] in environments


def _workflow_graph(workflow):
    nodes = {n["identifier"]: n for n in workflow["simplified_workflow_nodes"]}
    assert len(nodes) == len(workflow["simplified_workflow_nodes"]), "identifiers must be unique"
    edges = {ident: [t for key in LINK_KEYS for t in node.get(key, [])] for ident, node in nodes.items()}
    for ident, targets in edges.items():
        for target in targets:
            assert target in nodes, f"{ident} links to unknown node {target}"
    return nodes, edges


def _paths(edges, roots):
    def walk(node, path):
        if node in path:
            raise AssertionError(f"cycle through {node}")
        path = path + [node]
        if not edges[node]:
            yield path
        for nxt in edges[node]:
            yield from walk(nxt, path)
    for root in roots:
        yield from walk(root, [])


def _workflow(config, name):
    matches = [wf for wf in config["controller_workflows"] if wf["name"] == name]
    assert len(matches) == 1, f"workflow {name!r} must be defined once"
    return matches[0]


def _node_kinds(config, workflow):
    """Every root-to-leaf path of a workflow, each node named by what it does."""
    nodes, edges = _workflow_graph(workflow)
    roots = [i for i in nodes if not any(i in t for t in edges.values())]
    templates = {jt["name"]: jt for jt in config["controller_templates"]}
    workflows = {wf["name"]: wf for wf in config["controller_workflows"]}

    def kind(ident):
        node = nodes[ident]
        if "approval_node" in node:
            return "approval"
        name = node["unified_job_template"]
        if name in workflows:
            inner = [k for path in _node_kinds(config, workflows[name]) for k in path]
            return "report" if inner == ["report_start", "report_scan", "report_merge"] else name
        assert name in templates, f"node {ident}: unknown job template {name!r}"
        jt = templates[name]
        if jt["playbook"].endswith("evacuate_host.yml"):
            job_type = node.get("job_type", jt.get("job_type", "run"))
            return "plan" if job_type == "check" else "evacuate"
        if jt["playbook"].endswith("poison_report.yml"):
            phase = (jt.get("extra_vars") or {}).get("poison_report_phase", "all")
            return "report" if phase == "all" else f"report_{phase}"
        return name

    return [[kind(i) for i in path] for path in _paths(edges, roots)]


def test_report_workflow_start_scan_merge(config):
    workflow = _workflow(config, "Fleet poison report (sliced)")
    assert _node_kinds(config, workflow) == [["report_start", "report_scan", "report_merge"]]
    nodes, _unused = _workflow_graph(workflow)
    scan = job_template(config, nodes["report_scan"]["unified_job_template"])
    assert scan["job_slice_count"] > 1
    for ident in ("report_start", "report_merge"):
        assert job_template(config, nodes[ident]["unified_job_template"])["job_slice_count"] == 1
    # start and merge must see the same report directory as the slices
    dirs = {job_template(config, n["unified_job_template"])["extra_vars"]["poison_report_dir"]
            for n in nodes.values()}
    assert len(dirs) == 1


def test_workflow_report_plan_approval_evacuate_report(config):
    workflow = _workflow(config, "Evacuate hypervisor with approval")
    assert workflow["allow_simultaneous"] is False
    paths = _node_kinds(config, workflow)
    assert paths == [["report", "plan", "approval", "evacuate", "report"]]
    nodes, edges = _workflow_graph(workflow)
    roots = [i for i in nodes if not any(i in t for t in edges.values())]
    for path in _paths(edges, roots):
        for a, b in zip(path, path[1:]):
            assert b in nodes[a].get("success_nodes", []), f"{a} -> {b} must be a success link"
    approval = next(n for n in nodes.values() if "approval_node" in n)["approval_node"]
    assert approval["name"] and approval["timeout"] > 0


def test_workflow_node_prompts_are_allowed_by_their_templates(config):
    templates = {jt["name"]: jt for jt in config["controller_templates"]}
    templates.update({wf["name"]: wf for wf in config["controller_workflows"]})
    for workflow in config["controller_workflows"]:
        for node in workflow["simplified_workflow_nodes"]:
            if "unified_job_template" not in node:
                continue
            assert node["unified_job_template"] in templates, node["identifier"]
            jt = templates[node["unified_job_template"]]
            for prompt, ask in NODE_PROMPTS.items():
                if prompt in node:
                    allowed = jt.get(ask) or (prompt == "extra_data" and jt.get("survey_enabled"))
                    assert allowed, f"node {node['identifier']} sets {prompt} but {jt['name']} has no {ask}"


def test_workflow_asks_the_evacuation_questions(config):
    workflow = _workflow(config, "Evacuate hypervisor with approval")
    assert workflow["survey_enabled"]
    assert workflow["survey_spec"]["spec"] == job_template(config, "Evacuate hypervisor")["survey_spec"]["spec"]


def test_survey_defaults_send_what_awx_sends(config):
    jt = job_template(config, "Evacuate hypervisor")
    with pytest.raises(AssertionError, match="evacuate_source"):
        survey_extra_vars(jt)
    sent = survey_extra_vars(jt, {"evacuate_source": "hv1"})
    assert sent == {"evacuate_source": "hv1", "evacuate_targets": "", "evacuate_max_parallel": 2,
                    "evacuate_poisoned_vm_policy": "leave", "evacuate_unknown_vm_policy": "leave", "evacuate_migration_timeout": 300}
    with pytest.raises(AssertionError, match="not a choice"):
        survey_extra_vars(jt, {"evacuate_source": "hv1", "evacuate_poisoned_vm_policy": "ignore"})
    report = job_template(config, "Fleet poison report")
    assert survey_extra_vars(report) == {"poison_report_phase": "scan",
                                         "poison_report_dir": "/var/lib/kvm_ras/reports"}


# --------------------------------------------------------------------------------------------
# What a playbook reads: its inputs, derived from the playbook itself
# --------------------------------------------------------------------------------------------

# Keys whose string values Ansible evaluates as bare Jinja expressions.
EXPRESSION_KEYS = ("when", "that", "failed_when", "changed_when", "until")
# Names Ansible or Jinja provide: never inputs of a playbook.
MAGIC_NAMES = {
    "groups", "hostvars", "group_names", "inventory_hostname", "inventory_hostname_short",
    "inventory_dir", "inventory_file", "play_hosts", "playbook_dir", "role_path", "role_name",
    "omit", "item", "environment", "vars", "lookup", "query", "q", "now", "undef", "range",
    "dict", "lipsum", "cycler", "joiner", "namespace", "true", "false", "none", "True", "False",
    "None",
}
GUARD_FILTERS = ("default", "d")
GUARD_TESTS = ("defined", "undefined")
ROLE_INCLUDES = ("ansible.builtin.include_role", "ansible.builtin.import_role", "include_role",
                 "import_role")
COLLECTION = "kvm_ras.poison_guard"


class PlaybookInputs:
    """What a playbook takes from outside (extra vars), found by reading the playbook.

    ``names``: every variable the playbook's templates read that the playbook does not set
    itself (register, set_fact, vars, add_host host variables, loop variables), plus the
    options of the roles it includes (their meta/argument_specs.yml entry points) and of its
    input-validation task. ``required``: names read bare somewhere (not only through
    ``default()`` or an ``is defined`` test), required role options, and what the validation
    refuses to run without. ``specs``: choices / default / min / max where the playbook
    declares them (role argument specs, the validation's rules). ``artifacts``: the keys it
    hands to later AWX workflow nodes with set_stats.
    """

    def __init__(self):
        self.names, self.bare, self.declared = set(), set(), set()
        self.required, self.specs, self.artifacts = set(), {}, set()
        self.role_specs = []          # argument specs of the role entry points it runs
        self.validators = []          # callables(raw, forks) -> list of problems


def _jinja_names(template, guarded_out):
    """Variables a template loads: (all, bare) -- bare: not only under default()/is defined."""
    import jinja2
    from jinja2 import nodes

    tree = jinja2.Environment().parse(template)
    stored = {n.name for n in tree.find_all(nodes.Name) if n.ctx in ("store", "param")}
    loaded, bare = set(), set()

    def walk(node, parent):
        if isinstance(node, nodes.Name) and node.ctx == "load" and node.name not in stored:
            loaded.add(node.name)
            guarded = (isinstance(parent, nodes.Filter) and parent.name in GUARD_FILTERS and parent.node is node) or (
                isinstance(parent, nodes.Test) and parent.name in GUARD_TESTS and parent.node is node)
            if not guarded:
                bare.add(node.name)
        for child in node.iter_child_nodes():
            walk(child, node)

    walk(tree, None)
    guarded_out.update(loaded - bare)
    return loaded, bare


def _role_entry_spec(role, entry):
    name = role.split(".")[-1] if role.startswith(COLLECTION + ".") else role
    spec_file = REPO_ROOT / "roles" / name / "meta" / "argument_specs.yml"
    assert spec_file.is_file(), f"role {role} has no meta/argument_specs.yml"
    specs = _loader().load_from_file(str(spec_file))["argument_specs"]
    assert entry in specs, f"role {role} has no entry point {entry!r}"
    return _plain(specs[entry].get("options") or {})


def _evacuation_request_validator(mapping):
    """The inputs of kvm_ras.poison_guard.evacuation_request: its DOCUMENTATION (types, defaults,
    choices) and the rules of plugins/plugin_utils/evacuation_request.py (bounds, the inventory)."""
    from ansible_collections.kvm_ras.poison_guard.plugins.plugin_utils import evacuation_request as evreq
    from ansible_collections.kvm_ras.poison_guard.plugins.modules.evacuation_request import DOCUMENTATION
    from ansible_collections.kvm_ras.poison_guard.plugins.plugin_utils.action_support import argument_spec_from_doc

    documented = argument_spec_from_doc(DOCUMENTATION)

    inventory = ["hv1", "hv2", "hv3"]
    groups = {"all": inventory, evreq.DEFAULTS["evacuate_group"]: inventory}
    to_var = dict(mapping)  # option -> playbook variable
    try:
        evreq.validate_request({}, inventory, groups)
        problems = []
    except evreq.EvacuationInputError as exc:
        problems = exc.problems
    required = {to_var[n] for n in documented if n in to_var
                and any(p.startswith(n + " ") for p in problems)}
    specs = {}
    for option, doc in documented.items():
        if option not in to_var:
            continue
        spec = {}
        if "default" in doc:
            spec["default"] = doc["default"]
        if "choices" in doc:
            spec["choices"] = list(doc["choices"])
        if option in evreq.INT_BOUNDS:
            spec["min"], spec["max"] = evreq.INT_BOUNDS[option]
        specs[to_var[option]] = spec
    from_var = {v: k for k, v in to_var.items()}

    def validate(extra_vars, forks):
        raw = {from_var[k]: v for k, v in extra_vars.items() if k in from_var}
        try:
            evreq.validate_request(raw, inventory, groups, forks=forks)
        except evreq.EvacuationInputError as exc:
            return exc.problems
        return []

    return required, specs, validate


# Input-validation tasks whose rules live in Python: module -> rules(option -> variable mapping).
INPUT_VALIDATORS = {f"{COLLECTION}.evacuation_request": _evacuation_request_validator}
FORWARD_RE = re.compile(r"^\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\|\s*default\(\s*omit\s*\)\s*\}\}$")


def playbook_inputs(playbook):
    path = REPO_ROOT / playbook
    plays = _loader().load_from_file(str(path))
    found = PlaybookInputs()
    guarded = set()

    def read(value, key=None):
        if isinstance(value, dict):
            for k, v in value.items():
                read(v, k)
        elif isinstance(value, list):
            for v in value:
                read(v, key)
        elif isinstance(value, str):
            if key in EXPRESSION_KEYS:
                template = "{{ (" + value + ") }}"
            elif "{{" in value or "{%" in value:
                template = value
            else:
                return
            loaded, bare = _jinja_names(template, guarded)
            found.names |= loaded
            found.bare |= bare

    def task_list(tasks):
        for task in tasks or []:
            for block_key in ("block", "rescue", "always"):
                if block_key in task:
                    task_list(task[block_key])
            found.declared.update((task.get("vars") or {}).keys())
            if "register" in task:
                found.declared.add(task["register"])
            loop_var = (task.get("loop_control") or {}).get("loop_var")
            if loop_var:
                found.declared.add(loop_var)
            module = next((k for k in task if "." in k or k in ROLE_INCLUDES), None)
            args = task.get(module) if module else None
            if module in ("ansible.builtin.set_fact", "set_fact") and isinstance(args, dict):
                found.declared.update(k for k in args if k != "cacheable")
            if module in ("ansible.builtin.add_host", "add_host") and isinstance(args, dict):
                found.declared.update(k for k in args if k not in ("name", "hostname", "host", "groups", "group"))
            if module in ("ansible.builtin.set_stats", "set_stats") and isinstance(args, dict):
                found.artifacts.update((args.get("data") or {}).keys())
            if module in ROLE_INCLUDES and isinstance(args, dict):
                found.role_specs.append(_role_entry_spec(args["name"], args.get("tasks_from", "main")))
            if module in INPUT_VALIDATORS and isinstance(args, dict):
                mapping = {}
                for option, value in args.items():
                    match = FORWARD_RE.match(str(value).strip())
                    assert match, f"{playbook}: {module} option {option} is not forwarded from an extra var"
                    mapping[option] = match.group(1)
                required, specs, validate = INPUT_VALIDATORS[module](mapping)
                found.required |= required
                found.specs.update(specs)
                found.validators.append(validate)
            read({k: v for k, v in task.items() if k not in ("name", "register", "loop_control")})

    for play in plays:
        found.declared.update((play.get("vars") or {}).keys())
        for role in play.get("roles") or []:
            name = role if isinstance(role, str) else role.get("role", role.get("name"))
            found.role_specs.append(_role_entry_spec(name, "main"))
        for section in ("pre_tasks", "tasks", "post_tasks", "handlers"):
            task_list(play.get(section))
        skipped = ("name", "tasks", "pre_tasks", "post_tasks", "handlers", "roles", "vars")
        read({k: v for k, v in play.items() if k not in skipped})
    for options in found.role_specs:
        for name, option in options.items():
            found.names.add(name)
            if option.get("required"):
                found.required.add(name)
            spec = {k: option[k] for k in ("choices", "default", "type") if k in option}
            found.specs.setdefault(name, spec)

    def external(name):
        return (name not in found.declared and name not in MAGIC_NAMES
                and not name.startswith("ansible_"))

    found.names = {n for n in found.names if external(n)}
    found.required |= {n for n in found.bare if external(n)}
    return found


def test_playbook_input_analysis_on_a_small_playbook(tmp_path, monkeypatch):
    """The analysis itself: bare vs guarded reads, declared names, magic names."""
    playbook = tmp_path / "playbooks" / "sample.yml"
    playbook.parent.mkdir()
    playbook.write_text(
        "- hosts: \"{{ target_hosts | default('all') }}\"\n"
        "  tasks:\n"
        "    - ansible.builtin.assert:\n"
        "        that:\n"
        "          - wanted is defined\n"
        "          - wanted in groups['all']\n"
        "    - ansible.builtin.command:\n"
        "        argv: [echo, \"{{ message | default('hi') }}\", \"{{ inventory_hostname }}\"]\n"
        "      register: echoed\n"
        "      when: not (skip_it | default(false))\n"
        "    - ansible.builtin.set_fact:\n"
        "        computed: \"{{ echoed.stdout }}\"\n"
        "    - ansible.builtin.debug:\n"
        "        msg: \"{{ computed }} {{ ansible_check_mode }}\"\n"
        "    - ansible.builtin.set_stats:\n"
        "        data: {handed_on: \"{{ computed }}\"}\n", encoding="utf-8")
    monkeypatch.setattr(sys.modules[__name__], "REPO_ROOT", tmp_path)
    found = playbook_inputs("playbooks/sample.yml")
    assert found.names == {"target_hosts", "wanted", "message", "skip_it"}
    assert found.required == {"wanted"}
    assert found.artifacts == {"handed_on"}


def _sent_variables(template):
    survey = template["survey_spec"]["spec"] if template.get("survey_enabled") else []
    return {q["variable"]: q for q in survey}, set((template.get("extra_vars") or {}).keys())


def _question_answers(question, spec):
    """Answers worth trying for a question: its default, every choice, its min and max."""
    answers = []
    if question.get("default") not in (None, ""):
        answers.append(question["default"])
    answers.extend(_choices(question))
    for key in ("min", "max"):
        if question["type"] == "integer" and question.get(key) is not None:
            answers.append(question[key])
    return answers


@pytest.mark.parametrize("template_name", [
    "Evacuate hypervisor", "Fleet poison report - start", "Fleet poison report",
    "Fleet poison report - merge", "Deploy patched QEMU", "Uncordon hypervisor"])
def test_template_variables_match_the_playbook_inputs(config, template_name):
    """Every variable a template sends is read by its playbook; every required input is asked."""
    check_template_against_playbook(job_template(config, template_name))


def _drop_question(name):
    def mutate(template):
        template["survey_spec"]["spec"] = [q for q in template["survey_spec"]["spec"] if q["variable"] != name]
    return mutate


def _set_question(name, **changes):
    def mutate(template):
        for question in template["survey_spec"]["spec"]:
            if question["variable"] == name:
                question.update(changes)
    return mutate


@pytest.mark.parametrize("template_name, mutate, expected", [
    ("Evacuate hypervisor", _set_question("evacuate_max_parallel", variable="evacuate_max_paralel"), "never reads"),
    ("Evacuate hypervisor", _drop_question("evacuate_source"), "does not send"),
    ("Evacuate hypervisor", _set_question("evacuate_poisoned_vm_policy", choices=["leave", "reboot"]), "choices"),
    ("Evacuate hypervisor", _set_question("evacuate_migration_timeout", default=600), "default"),
    ("Evacuate hypervisor", _set_question("evacuate_max_parallel", max=64), "evacuate_max_parallel"),
    ("Evacuate hypervisor", _set_question("evacuate_source", required=False), "required"),
    ("Deploy patched QEMU", _set_question("patched_qemu_state", choices=["present", "latest"]), "choices"),
    ("Uncordon hypervisor", _drop_question("uncordon_host"), "does not send"),
    ("Fleet poison report", lambda t: t["extra_vars"].update(poison_report_phaze="scan"), "never reads"),
])
def test_template_check_catches_mismatches(config, template_name, mutate, expected):
    """The cross-check fails on a misspelt variable, a missing question, wrong choices..."""
    template = copy.deepcopy(job_template(config, template_name))
    mutate(template)
    with pytest.raises(AssertionError, match=expected):
        check_template_against_playbook(template)


def check_template_against_playbook(template):
    template_name = template["name"]
    inputs = playbook_inputs(template["playbook"])
    questions, fixed = _sent_variables(template)
    sent = set(questions) | fixed
    assert inputs.names, f"no inputs found in {template['playbook']}: the analysis is broken"
    unread = sent - inputs.names
    assert not unread, f"{template_name} sends {sorted(unread)}, which {template['playbook']} never reads"
    unasked = inputs.required - sent
    assert not unasked, f"{template['playbook']} needs {sorted(unasked)}, which {template_name} does not send"
    for name in inputs.required & set(questions):
        question = questions[name]
        assert question["required"] or question.get("default") not in (None, ""), (
            f"{name} is required by the playbook: make the question required or give it a default")
    for name, question in questions.items():
        spec = inputs.specs.get(name, {})
        if "choices" in spec:
            assert question["type"] == "multiplechoice", name
            assert sorted(_choices(question)) == sorted(spec["choices"]), (
                f"{name}: survey choices {_choices(question)} != playbook choices {spec['choices']}")
        if "default" in spec and question.get("default") not in (None, ""):
            assert question["default"] == spec["default"], (
                f"{name}: survey default {question['default']!r} != playbook default {spec['default']!r}")
        if question["type"] == "integer":
            if "min" in spec:
                assert question["min"] >= spec["min"] and question["max"] <= spec["max"], name
        if spec.get("type") == "bool":
            raise AssertionError(f"{name}: a survey sends text; ask bool inputs as a multiple choice of "
                                 "'true'/'false' only if the playbook converts them")
    # the role-based playbooks: every answer validates against the role's argument spec
    for options in inputs.role_specs:
        role_spec = {k: {key: v for key, v in o.items() if key in ("type", "choices", "elements")}
                     for k, o in options.items()}
        for name, question in questions.items():
            if name in role_spec:
                for answer in _question_answers(question, inputs.specs.get(name, {})):
                    result = ArgumentSpecValidator(role_spec).validate({name: answer})
                    assert not result.error_messages, (name, answer, result.error_messages)
    # the validation-based playbook: every answer passes the playbook's own validation
    for validate in inputs.validators:
        base = survey_extra_vars(template, {n: "hv1" for n, q in questions.items()
                                            if q["required"] and q.get("default") is None})
        forks = template.get("forks") or 5
        assert validate(base, forks) == [], base
        for name, question in questions.items():
            for answer in _question_answers(question, inputs.specs.get(name, {})):
                assert validate(dict(base, **{name: answer}), forks) == [], (name, answer)


def test_workflow_survey_reaches_its_playbooks(config):
    """A workflow's survey variables go to every node: each is read by some node's playbook."""
    templates = {jt["name"]: jt for jt in config["controller_templates"]}
    workflows = {wf["name"]: wf for wf in config["controller_workflows"]}

    def playbooks_of(workflow):
        for node in workflow["simplified_workflow_nodes"]:
            name = node.get("unified_job_template")
            if name in templates:
                yield templates[name]["playbook"]
            elif name in workflows:
                yield from playbooks_of(workflows[name])

    for workflow in workflows.values():
        if not workflow.get("survey_enabled"):
            continue
        read = set().union(*(playbook_inputs(p).names for p in set(playbooks_of(workflow))))
        asked = {q["variable"] for q in workflow["survey_spec"]["spec"]}
        assert asked <= read, f"{workflow['name']} asks {sorted(asked - read)}, which no node reads"


def test_report_id_travels_as_an_artifact(config):
    """start hands poison_report_id on (set_stats); scan and merge read it."""
    inputs = playbook_inputs(job_template(config, "Fleet poison report - start")["playbook"])
    assert "poison_report_id" in inputs.artifacts
    assert "poison_report_id" in inputs.names


# --------------------------------------------------------------------------------------------
# awx_configure.yml, run for real up to where a controller would be needed
# --------------------------------------------------------------------------------------------

def _run_configure(*extra_args, env_overrides=None):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CONTROLLER_", "TOWER_"))}
    env.update(env_overrides or {}, ANSIBLE_FORCE_COLOR="0", ANSIBLE_NOCOLOR="1")
    ansible_playbook = Path(sys.executable).parent / "ansible-playbook"
    return subprocess.run([str(ansible_playbook), str(CONFIGURE_PLAYBOOK), *extra_args],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=False,
                          timeout=300)


def test_configure_refuses_without_controller_settings():
    run = _run_configure()
    out = run.stdout + run.stderr
    assert run.returncode != 0
    assert "Nothing was changed" in out and "CONTROLLER_HOST" in out
    assert "Given: controller URL False, credentials False, image False" in out
    assert "TASK [Execution environment]" not in out


def test_configure_takes_settings_from_the_environment_and_hides_secrets():
    """With settings from the environment it gets as far as contacting the controller.

    Port 9 on localhost is closed, so the first awx.awx module fails to connect: the
    settings were accepted, and at -vvv neither the password nor the token is printed.
    """
    secret, token = "Pw-7f3a2c5f-secret", "Tk-0a1b2c3d-secret"
    run = _run_configure("-vvv", "-e", "kvm_ras_awx_ee_image=registry.invalid/ee:1",
                         env_overrides={"CONTROLLER_HOST": "http://127.0.0.1:9",
                                        "CONTROLLER_USERNAME": "admin",
                                        "CONTROLLER_PASSWORD": secret})
    out = run.stdout + run.stderr
    assert run.returncode != 0
    assert "TASK [Execution environment]" in out
    assert "Connection refused" in out or "Failed to get token" in out, out[-2000:]
    assert secret not in out
    run = _run_configure("-vvv", "-e", "controller_host=http://127.0.0.1:9", "-e",
                         f"controller_oauthtoken={token}", "-e",
                         "kvm_ras_awx_ee_image=registry.invalid/ee:1")
    out = run.stdout + run.stderr
    assert run.returncode != 0 and "TASK [Execution environment]" in out
    assert token not in out
