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
  playbook's input validation (plugins/module_utils/evacuation.py for evacuate_host.yml, the
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
# Loading and rendering (shared with tests/integration/test_awx_runner.py)
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
        "Evacuate hypervisor", "Fleet poison report", "Deploy patched QEMU"}
    assert [p["name"] for p in by_module["awx.awx.workflow_job_template"]] == [
        "Evacuate hypervisor with approval"]
    nodes = by_module["awx.awx.workflow_job_template_node"]
    created = [p for p in nodes if "unified_job_template" in p or "approval_node" in p]
    linked = [p for p in nodes if any(k in p for k in LINK_KEYS)]
    assert len(created) == 5 and len(linked) == 4


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
    spec, _ = awx_module_spec("awx.awx.job_template")
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
    assert {name for name, _ in surveys} >= {"Evacuate hypervisor", "Deploy patched QEMU",
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
    assert questions["max_parallel"]["type"] == "integer"
    assert questions["poisoned_vm_policy"]["type"] == "multiplechoice"
    assert questions["migration_timeout"]["type"] == "integer"
    # the playbook refuses max_parallel above the forks: the largest answer must fit
    assert jt["forks"] >= questions["max_parallel"]["max"]


def test_fleet_report_template_is_sliceable(config):
    jt = job_template(config, "Fleet poison report")
    assert jt["job_slice_count"] > 1
    assert jt["playbook"] == "playbooks/poison_report.yml"


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


def test_workflow_report_plan_approval_evacuate_report(config):
    (workflow,) = config["controller_workflows"]
    assert workflow["allow_simultaneous"] is False
    nodes, edges = _workflow_graph(workflow)
    roots = [i for i in nodes if not any(i in t for t in edges.values())]
    templates = {jt["name"]: jt for jt in config["controller_templates"]}

    def kind(ident):
        node = nodes[ident]
        if "approval_node" in node:
            return "approval"
        name = node["unified_job_template"]
        assert name in templates, f"node {ident}: unknown job template {name!r}"
        if templates[name]["playbook"].endswith("evacuate_host.yml"):
            job_type = node.get("job_type", templates[name].get("job_type", "run"))
            return "plan" if job_type == "check" else "evacuate"
        return "report" if templates[name]["playbook"].endswith("poison_report.yml") else name

    paths = [[kind(i) for i in p] for p in _paths(edges, roots)]
    assert paths == [["report", "plan", "approval", "evacuate", "report"]]
    for path in _paths(edges, roots):
        kinds = [kind(i) for i in path]
        # every real evacuation is preceded by an approval, on success links only
        for idx, k in enumerate(kinds):
            if k == "evacuate":
                assert "approval" in kinds[:idx]
        for a, b in zip(path, path[1:]):
            assert b in nodes[a].get("success_nodes", []), f"{a} -> {b} must be a success link"
    approval = next(n for n in nodes.values() if "approval_node" in n)["approval_node"]
    assert approval["name"] and approval["timeout"] > 0


def test_workflow_node_prompts_are_allowed_by_their_templates(config):
    templates = {jt["name"]: jt for jt in config["controller_templates"]}
    for workflow in config["controller_workflows"]:
        for node in workflow["simplified_workflow_nodes"]:
            if "unified_job_template" not in node:
                continue
            jt = templates[node["unified_job_template"]]
            for prompt, ask in NODE_PROMPTS.items():
                if prompt in node:
                    allowed = jt.get(ask) or (prompt == "extra_data" and jt.get("survey_enabled"))
                    assert allowed, f"node {node['identifier']} sets {prompt} but {jt['name']} has no {ask}"


def test_workflow_asks_the_evacuation_questions(config):
    (workflow,) = config["controller_workflows"]
    assert workflow["survey_enabled"]
    assert workflow["survey_spec"]["spec"] == job_template(config, "Evacuate hypervisor")["survey_spec"]["spec"]


def test_survey_defaults_send_what_awx_sends(config):
    jt = job_template(config, "Evacuate hypervisor")
    with pytest.raises(AssertionError, match="evacuate_source"):
        survey_extra_vars(jt)
    sent = survey_extra_vars(jt, {"evacuate_source": "hv1"})
    assert sent == {"evacuate_source": "hv1", "evacuate_targets": "", "max_parallel": 2,
                    "poisoned_vm_policy": "leave", "unknown_vm_policy": "leave", "migration_timeout": 300}
    with pytest.raises(AssertionError, match="not a choice"):
        survey_extra_vars(jt, {"evacuate_source": "hv1", "poisoned_vm_policy": "ignore"})
    report = job_template(config, "Fleet poison report")
    assert survey_extra_vars(report) == report["extra_vars"]


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
