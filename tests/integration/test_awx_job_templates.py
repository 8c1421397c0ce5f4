# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The AWX job templates of extensions/awx/ run: each one is launched the way AWX launches it,
through ansible-runner, against the hypervisor lab.

No AWX runs here (its images come from a registry). What AWX does for a job launch is done
by hand, as closely as the parts allow:

- The templates, surveys and site settings are rendered exactly as ``awx_configure.yml`` would
  hand them to AWX (the loading helpers of tests/unit/test_awx_config.py), with one site
  setting of our own: the report directory lives in the test's temporary directory.
- The extra vars are what the launch sends (``SurveyJobTemplateMixin``): the template's
  ``extra_vars``, each survey default, the answers (a required question without a default gets
  a real lab value), workflow artifacts where a workflow would hand them on, and AWX's own
  ``awx_*`` / ``tower_*`` meta variables. They are written to ``env/extravars`` the way AWX
  writes them: everything not set on the template itself is tagged ``!unsafe``.
- The private data dir is AWX's: ``project/`` is the checked-out project (``playbooks/`` and
  ``ansible.cfg``; the collection resolves through ``project/collections``, where a project's
  ``collections/requirements.yml`` would install it), ``inventory/hosts`` is the executable
  script AWX writes (the lab inventory as JSON; sliced jobs get their slice only, AWX's
  ``hosts[offset::count]``), ``env/ssh_key`` and ``env/cmdline`` carry the machine credential
  "Hypervisor SSH" (the lab key through ssh-agent, ``-u root``, become method ``su`` because
  the lab hosts have no sudo), and ``env/cmdline`` also has the job settings AWX turns into
  arguments (``--check`` for job type check, ``--forks``, ``-l``, ``-v``). ``env/settings``
  has the job timeout.

What is proved per template, on real libvirtd/QEMU in the lab containers:

- Fleet poison report: the workflow "Fleet poison report (sliced)" -- start, the scan sliced
  as AWX slices it (one job per slice), merge -- with the report id handed on as the start
  job's artifact; the report JSON names every lab host, each scanned.
- Evacuate hypervisor: once per choice of the "Poisoned VM policy" question, with two test
  guests created on the source (alternately hv1 and hv2); the guests run on the other host
  afterwards, the job's artifacts carry ``evacuation``, and the playbook's input check and its
  report show every answer. The first run sends the survey defaults and is preceded by the
  approval workflow's plan node (job type check), which moves nothing; the second answers
  every other question with a valid non-default value, so that each answer is seen to be read
  rather than defaulted; the third sends the defaults again. Between evacuations the template
  "Uncordon hypervisor" reopens the previous source, which the evacuation cordoned; the module
  ends with every host uncordoned and its guests deleted.
- Deploy patched QEMU: only in check mode (job type check, which the template lets a launch
  choose), once per choice of its question, the default (present) first. Building QEMU takes
  many minutes and is covered by molecule/patched_qemu; here the job succeeds, says per host
  what it would do (``would install`` on the lab's stock QEMU 7.2, which lacks the guard,
  with the package it would build; nothing to remove for absent) and installs nothing.

For every job: status successful and rc 0, nothing prompted (no play with vars_prompt, no vars
prompt event, no password or passphrase prompt, which the job would answer with an empty string
and fail on), and each variable the template sends (its extra_vars, survey answers, artifacts)
shows its effect in the job's events or files: the playbook reads it. The jobs get nothing but
what the template sends (and AWX's meta variables, which the evacuation's input check must not
take for misspelt inputs), so their success also proves that every input a playbook requires is
asked.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
HVLAB = REPO / "lab" / "hvlab"
VENV_BIN = Path(sys.executable).parent
AWX_CONFIG_TESTS = REPO / "tests" / "unit" / "test_awx_config.py"
COLLECTION = ("kvm_ras", "poison_guard")
GROUP = "hypervisors"
BUILDER_GROUP = "patched_qemu_builder"
GUESTS_PER_RUN = 2
# Bound for jobs whose template has no timeout (0): the lab's jobs take well under a minute.
UNBOUNDED_JOB_TIMEOUT = 900
# Prompts AWX answers through ansible-runner (RunJob.build_passwords / get_password_prompts).
# This credential has no password, so each is answered with an empty string: a prompt fails
# the job instead of hanging it.
PASSWORD_PROMPTS = {
    r"Enter passphrase for .*:\s*?$": "",
    r"SSH password:\s*?$": "",
    r"(BECOME|SUDO|SU|PBRUN|PFEXEC|DZDO|PMRUN|KSU) password.*:\s*?$": "",
    r"Vault password:\s*?$": "",
}
PROMPT_WORDS = ("Enter passphrase for", "SSH password:", "password:", "Password:")
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")

pytestmark = [
    pytest.mark.hvlab,
    pytest.mark.skipif(os.geteuid() != 0, reason="the hypervisor lab runs docker and privileged "
                                                 "containers: needs root"),
]


# --------------------------------------------------------------------------------------------
# The configuration as AWX gets it (helpers of tests/unit/test_awx_config.py)
# --------------------------------------------------------------------------------------------

def awx_config_helpers():
    """tests/unit/test_awx_config.py as a module: the one already imported by this pytest run,
    or a private copy (a plain import would need tests/unit on sys.path)."""
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if path and Path(path).resolve() == AWX_CONFIG_TESTS:
            return module
    spec = importlib.util.spec_from_file_location("kvm_ras_awx_config_helpers", AWX_CONFIG_TESTS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


AWX = awx_config_helpers()


def _question(template, variable):
    matches = [q for q in template["survey_spec"]["spec"] if q["variable"] == variable]
    assert len(matches) == 1, f"{template['name']}: no single survey question {variable!r}"
    return matches[0]


# The choices of the questions that get one job each, read from the surveys themselves.
_CONFIG = AWX.controller_config()
POLICIES = list(_question(AWX.job_template(_CONFIG, "Evacuate hypervisor"), "evacuate_poisoned_vm_policy")["choices"])
DEPLOY_STATES = list(_question(AWX.job_template(_CONFIG, "Deploy patched QEMU"), "patched_qemu_state")["choices"])


# --------------------------------------------------------------------------------------------
# The lab
# --------------------------------------------------------------------------------------------

def hvlab(*args, timeout=1800):
    out = subprocess.run([str(HVLAB), *args], capture_output=True, text=True, timeout=timeout, check=False)
    assert out.returncode == 0, f"lab/hvlab {' '.join(args)} failed: {out.stdout}{out.stderr}"
    return out.stdout


def in_host(host, *argv, check=True):
    """A command in a lab host container (argv list, no shell)."""
    out = subprocess.run(["docker", "exec", host, *argv], capture_output=True, text=True, timeout=120, check=False)
    if check:
        assert out.returncode == 0, f"{host}: {' '.join(argv)}: {out.stdout}{out.stderr}"
    return out


def virsh_names(host, *flags):
    return set(in_host(host, "virsh", "-c", "qemu:///system", "list", "--name", *flags).stdout.split())


def cordoned(host):
    return in_host(host, "test", "-e", "/var/lib/kvm_ras/cordon.json", check=False).returncode == 0


class Lab:
    """The running lab: its inventory, its hosts, the machine credential's key."""

    def __init__(self):
        hvlab("up")
        inventory_path = Path(hvlab("inventory").strip())
        self.inventory = yaml.safe_load(inventory_path.read_text(encoding="utf-8"))
        group = self.inventory["all"]["children"][GROUP]
        self.hosts = sorted(group["hosts"])
        assert len(self.hosts) >= 2, f"the lab needs two hypervisors, has {self.hosts}"
        key = group["vars"]["ansible_ssh_private_key_file"].replace("{{ inventory_dir }}", str(inventory_path.parent))
        self.ssh_key = Path(os.path.normpath(key))
        assert self.ssh_key.is_file(), f"the lab's ssh key {self.ssh_key} is missing"
        self.guests = []            # guests this module created and has not deleted yet
        self.cordoned_by_us = set()

    def create_guests(self, host, count):
        prefix = f"awxjt{uuid.uuid4().hex[:6]}"
        created = json.loads(hvlab("guests", "create", "--host", host, "--count", str(count), "--prefix", prefix, "--json"))
        names = [g["name"] for g in created]
        self.guests.extend(names)
        assert all(g["host"] == host and g["state"] == "running" for g in created), created
        return names

    def delete_guests(self, names):
        if names:
            hvlab("guests", "delete", *names)
        self.guests = [g for g in self.guests if g not in names]

    def running_on(self, names):
        """{guest: [hosts where libvirt runs it]} for the given guests, asked in every container."""
        where = {name: [] for name in names}
        for host in self.hosts:
            for name in virsh_names(host) & set(names):
                where[name].append(host)
        return where


# --------------------------------------------------------------------------------------------
# AWX's side of a job launch
# --------------------------------------------------------------------------------------------

def awx_inventory_script(lab, hosts=None):
    """inventory/hosts as AWX writes it (RunJob.build_inventory): an executable Python script
    that prints the inventory as JSON (Inventory.get_script_data with host and tower vars).

    The inventory is the lab's, with the QEMU builder group the site inventory must have
    (docs/awx.md); user and key are not inventory variables here but the machine
    credential's. ``hosts``: the job's slice (AWX keeps every group, with the slice's hosts)."""
    group = lab.inventory["all"]["children"][GROUP]
    wanted = sorted(hosts or lab.hosts)
    group_vars = {k: v for k, v in (group.get("vars") or {}).items()
                  if k not in ("ansible_user", "ansible_ssh_private_key_file")}
    data = {
        "all": {"children": [GROUP, BUILDER_GROUP, "ungrouped"]},
        GROUP: {"hosts": wanted, "vars": group_vars},
        BUILDER_GROUP: {"hosts": [h for h in lab.hosts[:1] if h in wanted]},
        "ungrouped": {"hosts": []},
        "_meta": {"hostvars": {
            name: dict(group["hosts"][name] or {}, remote_tower_enabled="true", remote_tower_id=index + 1)
            for index, name in enumerate(lab.hosts) if name in wanted}},
    }
    return f"#! /usr/bin/env python3\n# -*- coding: utf-8 -*-\nprint({json.dumps(data)!r})\n"


def awx_slices(hosts, slice_count):
    """AWX job slicing: min(slices, hosts) jobs, slice k gets hosts[k-1::n] of the sorted hosts."""
    count = min(slice_count, len(hosts))
    ordered = sorted(hosts)
    return [ordered[offset::count] for offset in range(count)]


class _UnsafeDumper(yaml.SafeDumper):  # pylint: disable=too-many-ancestors
    """AWX's SafeStringDumper: every string becomes ``!unsafe``."""

    def represent_data(self, data):
        if isinstance(data, str):
            return self.represent_scalar("!unsafe", data)
        return super().represent_data(data)


def awx_extravars_yaml(extra_vars, trusted):
    """env/extravars as AWX writes it (awx.main.utils.safe_yaml.safe_dump): a top-level entry
    that is not set, with the same value, on the template itself is tagged ``!unsafe``."""
    parts = []
    for key, value in extra_vars.items():
        dumper = yaml.SafeDumper if key in trusted and trusted[key] == value else _UnsafeDumper
        parts.append(yaml.dump_all([{key: value}], None, Dumper=dumper, default_flow_style=False))
    return "".join(parts)


def project_revision():
    out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, check=False)
    return out.stdout.strip() if out.returncode == 0 else ""


class Job:
    """One finished job: the runner's result and what it left in its private data dir."""

    def __init__(self, template, private_data_dir, extra_vars, sent, result):
        self.template = template
        self.private_data_dir = private_data_dir
        self.extra_vars = extra_vars      # everything in env/extravars
        self.sent = sent                  # the template's own variables (extra_vars, survey, artifacts)
        self.status = result.status
        self.rc = result.rc
        self.events = list(result.events)
        stdout_file = private_data_dir / "artifacts" / result.config.ident / "stdout"
        self.stdout = stdout_file.read_text(encoding="utf-8", errors="replace") if stdout_file.exists() else ""
        stats = [e for e in self.events if e.get("event") == "playbook_on_stats"]
        self.artifacts = (stats[-1]["event_data"].get("artifact_data") or {}) if stats else {}
        self.project = private_data_dir / "project"

    def tail(self):
        return f"{self.template['name']} ({self.private_data_dir}):\n{self.stdout[-6000:]}"

    def results(self, task, kinds=("runner_on_ok",)):
        """event_data of the task's results of the given kinds (one per host / loop)."""
        return [e["event_data"] for e in self.events
                if e.get("event") in kinds and e.get("event_data", {}).get("task") == task]

    def ran(self, task):
        return bool(self.results(task, ("runner_on_ok", "runner_on_failed")))


class AwxSite:
    """The site's AWX: the rendered configuration, the inventory, the credential, job ids."""

    def __init__(self, lab, root):
        self.lab = lab
        self.root = root
        self.report_dir = root / "reports"
        # the site's settings file: everything default except where reports go
        self.config = AWX.controller_config({"kvm_ras_awx_report_dir": str(self.report_dir)})
        self.site = AWX.play_variables(AWX.load_configure_play())
        self.job_ids = itertools.count(101)
        self.revision = project_revision()

    def template(self, name):
        return AWX.job_template(self.config, name)

    def meta_vars(self, template, job_id, launch_type):
        """Job.awx_meta_vars: what AWX adds to every job's extra vars (awx_ and tower_ names)."""
        template_id = [t["name"] for t in self.config["controller_templates"]].index(template["name"]) + 1
        meta = {
            "job_id": job_id, "job_launch_type": launch_type, "job_template_id": template_id,
            "job_template_name": template["name"], "execution_node": "awx-ee",
            "project_revision": self.revision, "project_scm_branch": self.site["kvm_ras_awx_project_scm_branch"],
            "inventory_id": 1, "inventory_name": template["inventory"],
            "user_id": 1, "user_name": "admin", "user_email": "", "user_first_name": "", "user_last_name": "",
        }
        return {f"{prefix}_{key}": value for prefix in ("awx", "tower") for key, value in meta.items()}

    def launch(self, name, answers=None, job_type=None, limit=None, artifacts=None, hosts=None):
        """Launch a job template the way AWX does and wait for it.

        ``answers``: survey answers or launch-time variables (the template must ask for them);
        ``job_type`` / ``limit``: launch prompts (the template must allow them); ``artifacts``:
        set_stats data of an earlier workflow node; ``hosts``: the job's slice of the inventory.
        """
        import ansible_runner  # pylint: disable=import-outside-toplevel

        template = self.template(name)
        answers = dict(answers or {})
        asked = {q["variable"] for q in template["survey_spec"]["spec"]} if template.get("survey_enabled") else set()
        if set(answers) - asked:
            assert template.get("ask_variables_on_launch"), f"{name} takes no variables at launch: {sorted(set(answers) - asked)}"
        if job_type not in (None, template["job_type"]):
            assert template.get("ask_job_type_on_launch"), f"{name} does not let a launch choose the job type"
        if limit is not None:
            assert template.get("ask_limit_on_launch"), f"{name} does not let a launch set a limit"
        plays = yaml.safe_load((REPO / template["playbook"]).read_text(encoding="utf-8"))
        assert not [p.get("name") for p in plays if "vars_prompt" in p], f"{template['playbook']} prompts: AWX cannot answer"
        job_id = next(self.job_ids)
        sent = AWX.survey_extra_vars(template, answers)
        sent.update(artifacts or {})
        extra_vars = dict(self.meta_vars(template, job_id, "workflow" if artifacts else "manual"), **sent)

        private = self.root / f"job{job_id}"
        self.write_private_data_dir(private, template, job_id, extra_vars, hosts)
        (private / "env" / "cmdline").write_text(" ".join(awx_job_args(template, job_type, limit)), encoding="utf-8")
        try:
            result = ansible_runner.run(private_data_dir=str(private), ident=str(job_id), playbook=template["playbook"],
                                        inventory=str(private / "inventory" / "hosts"), passwords=dict(PASSWORD_PROMPTS),
                                        quiet=True)
        finally:
            (private / "env" / "ssh_key").unlink(missing_ok=True)
        job = Job(template, private, extra_vars, sent, result)
        assert_clean_job(job)
        return job

    def write_private_data_dir(self, private, template, job_id, extra_vars, hosts):
        """project/, inventory/hosts, env/{extravars,ssh_key,envvars,settings} of one job."""
        project = private / "project"
        (project / "collections" / "ansible_collections" / COLLECTION[0]).mkdir(parents=True)
        (project / "collections" / "ansible_collections" / COLLECTION[0] / COLLECTION[1]).symlink_to(REPO)
        shutil.copytree(REPO / "playbooks", project / "playbooks")
        shutil.copy2(REPO / "ansible.cfg", project / "ansible.cfg")
        (private / "inventory").mkdir()
        script = private / "inventory" / "hosts"
        script.write_text(awx_inventory_script(self.lab, hosts), encoding="utf-8")
        script.chmod(stat.S_IRUSR | stat.S_IWUSR | stat.S_IXUSR)
        env = private / "env"
        env.mkdir()
        (env / "extravars").write_text(awx_extravars_yaml(extra_vars, template.get("extra_vars") or {}), encoding="utf-8")
        (env / "ssh_key").write_text(self.lab.ssh_key.read_text(encoding="utf-8"), encoding="utf-8")
        (env / "ssh_key").chmod(0o600)
        (env / "envvars").write_text(yaml.safe_dump({
            # the execution environment's ansible-core, python3 and collection path
            "PATH": os.pathsep.join([str(VENV_BIN), os.environ.get("PATH", "")]),
            "ANSIBLE_COLLECTIONS_PATH": str(project / "collections"),
            "ANSIBLE_NOCOLOR": "True",  # plain text in the failure messages
            "JOB_ID": str(job_id), "INVENTORY_ID": "1", "PROJECT_REVISION": self.revision,
            "MAX_EVENT_RES": "700000",
        }), encoding="utf-8")
        (env / "settings").write_text(yaml.safe_dump({
            "job_timeout": template.get("timeout") or UNBOUNDED_JOB_TIMEOUT,
            "suppress_ansible_output": True,
        }), encoding="utf-8")


def awx_job_args(template, job_type, limit):
    """RunJob.build_args: job type, the credential's user and become method, the template's
    become, diff, forks, limit and verbosity (env/cmdline)."""
    args = []
    if (job_type or template["job_type"]) == "check":
        args.append("--check")
    args += ["-u", "root", "--become-method", "su"]
    if template.get("become_enabled"):
        args.append("--become")
    if template.get("diff_mode"):
        args.append("--diff")
    if template.get("forks"):
        args.append(f"--forks={template['forks']}")
    if limit or template.get("limit"):
        args += ["-l", limit or template["limit"]]
    if template.get("verbosity"):
        args.append("-" + "v" * min(5, template["verbosity"]))
    return args


def assert_clean_job(job):
    """Successful, nothing failed unexpectedly, nothing prompted."""
    assert job.status == "successful" and job.rc == 0, f"status {job.status}, rc {job.rc}: {job.tail()}"
    kinds = {e.get("event") for e in job.events}
    assert "playbook_on_vars_prompt" not in kinds, job.tail()
    assert "runner_on_unreachable" not in kinds, job.tail()
    failed = [e["event_data"].get("task") for e in job.events
              if e.get("event") == "runner_on_failed" and not e["event_data"].get("ignore_errors")]
    assert not failed, f"failed tasks {failed}: {job.tail()}"
    for line in ANSI_ESCAPE.sub("", job.stdout).splitlines():
        assert not any(line.rstrip().endswith(word) for word in PROMPT_WORDS), f"prompt {line!r}: {job.tail()}"


def assert_every_variable_shown(job, evidence):
    """Every variable the template sent (its extra_vars, survey answers, artifacts) has been
    checked for its effect, and each check holds. ``evidence``: variable -> (held, what)."""
    assert set(evidence) == set(job.sent), (
        f"{job.template['name']}: checked {sorted(evidence)}, sent {sorted(job.sent)}")
    wrong = {name: what for name, (held, what) in evidence.items() if not held}
    assert not wrong, f"{job.template['name']}: variables without their effect: {wrong}\n{job.tail()}"


# --------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lab():
    the_lab = Lab()
    busy = [h for h in the_lab.hosts if cordoned(h)]
    assert not busy, f"lab hosts {busy} are cordoned by someone else: uncordon them first"
    yield the_lab
    try:
        the_lab.delete_guests(list(the_lab.guests))
    finally:
        for host in sorted(the_lab.cordoned_by_us):
            in_host(host, "rm", "-f", "/var/lib/kvm_ras/cordon.json", check=False)


@pytest.fixture(scope="module")
def awx(lab, tmp_path_factory):
    return AwxSite(lab, tmp_path_factory.mktemp("awx"))


# --------------------------------------------------------------------------------------------
# Fleet poison report: the sliced workflow
# --------------------------------------------------------------------------------------------

def test_fleet_poison_report_workflow(awx, lab):
    """start -> scan (one job per slice) -> merge; the report id travels as an artifact."""
    workflow = [w for w in awx.config["controller_workflows"] if w["name"] == "Fleet poison report (sliced)"][0]
    names = [n["unified_job_template"] for n in workflow["simplified_workflow_nodes"]]
    assert names == ["Fleet poison report - start", "Fleet poison report", "Fleet poison report - merge"]

    start = awx.launch(names[0])
    report_id = start.artifacts.get("poison_report_id")
    assert report_id, f"the start job handed on no poison_report_id: {start.artifacts}"
    started = start.results("Create the report directory (or check the given report id)")
    assert_every_variable_shown(start, {
        "poison_report_phase": (not start.ran("Inspect the VMs of this hypervisor")
                                and not start.ran("Merge every host's part into fleet_report.json and fleet_report.html"),
                                "start: no scan, no merge"),
        "poison_report_dir": (bool(started) and started[0]["res"]["path"] == str(awx.report_dir / report_id)
                              and (awx.report_dir / report_id).is_dir(), "the report directory is under it"),
    })

    scan_template = awx.template(names[1])
    slices = awx_slices(lab.hosts, scan_template["job_slice_count"])
    assert len(slices) == min(scan_template["job_slice_count"], len(lab.hosts))
    for hosts in slices:
        scan = awx.launch(names[1], artifacts={"poison_report_id": report_id}, hosts=hosts)
        inspected = sorted(e["host"] for e in scan.results("Inspect the VMs of this hypervisor"))
        recorded = scan.results("Record this hypervisor in the report")
        checked = scan.results("Create the report directory (or check the given report id)")
        assert_every_variable_shown(scan, {
            "poison_report_phase": (inspected == sorted(hosts) and not scan.ran(
                "Merge every host's part into fleet_report.json and fleet_report.html"), f"scan of {hosts} only"),
            "poison_report_dir": (len(recorded) == len(hosts) and all(
                Path(r["res"]["path"]).is_file() and Path(r["res"]["path"]).is_relative_to(awx.report_dir) for r in recorded),
                "a part per host under it"),
            "poison_report_id": (bool(checked) and checked[0]["res"]["report_id"] == report_id
                                 and all(r["res"]["report_id"] == report_id for r in recorded), "parts of that report"),
        })

    merge = awx.launch(names[2], artifacts={"poison_report_id": report_id})
    merged = merge.results("Merge every host's part into fleet_report.json and fleet_report.html")
    json_path = awx.report_dir / report_id / "fleet_report.json"
    assert_every_variable_shown(merge, {
        "poison_report_phase": (bool(merged) and not merge.ran("Inspect the VMs of this hypervisor"), "merge only"),
        "poison_report_dir": (bool(merged) and merged[0]["res"]["json_path"] == str(json_path), "report written there"),
        "poison_report_id": (bool(merged) and merged[0]["res"]["report_id"] == report_id, "that report merged"),
    })
    report = json.loads(json_path.read_text(encoding="utf-8"))
    assert sorted(h["name"] for h in report["hosts"]) == lab.hosts, report["hosts"]
    assert all(h["status"] in ("clean", "poisoned", "unknown") for h in report["hosts"]), report["hosts"]
    assert report["summary"]["complete"] is True and report["summary"]["hosts_not_scanned"] == 0, report["summary"]
    assert (awx.report_dir / report_id / "fleet_report.html").is_file()


# --------------------------------------------------------------------------------------------
# Deploy patched QEMU, in check mode
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("state", DEPLOY_STATES)
def test_deploy_patched_qemu_in_check_mode(awx, lab, state):
    """Job type check (the template asks for it on launch): what it would do, nothing done.
    The survey default first, then the other choice (the rollback)."""
    default = _question(awx.template("Deploy patched QEMU"), "patched_qemu_state")["default"]
    deploy = awx.launch("Deploy patched QEMU", answers=None if state == default else {"patched_qemu_state": state},
                        job_type="check")
    reports = {e["host"]: e["res"]["ansible_facts"]["patched_qemu_report"]
               for e in deploy.results("Record the outcome on this host")}
    assert sorted(reports) == lab.hosts, deploy.tail()
    assert_every_variable_shown(deploy, {
        "patched_qemu_state": (all(r["state"] == state for r in reports.values()), f"state {state} on every host"),
    })
    # the lab runs Debian 12's stock QEMU 7.2, which lacks the guard, and not the patched package
    would = "would install" if state == "present" else "none"
    for host, report in reports.items():
        assert report["guard_before"] is False and report["changed"] is False, (host, report)
        assert report["action"] == would and report["reason"], (host, report)
        if state == "present":
            # where the package would come from: built on the builder, or found in a cache
            assert report["package"]["obtained_from"] in (f"build on {lab.hosts[0]} (would build)", "builder cache (would fetch)",
                                                          "controller cache"), (host, report)
            assert report["package"]["deb"].startswith("qemu-system-x86-poison-guard_"), (host, report)
        installed = in_host(host, "dpkg-query", "-W", "-f", "${Status}", "qemu-system-x86-poison-guard", check=False)
        assert "install ok installed" not in installed.stdout, f"{host}: check mode installed the package"
    summaries = [e["res"]["msg"] for e in deploy.results("Summarise the outcome")]
    assert len(summaries) == len(lab.hosts) and all(m.startswith(f"{would}: ") for m in summaries), summaries


# --------------------------------------------------------------------------------------------
# Evacuate hypervisor, once per poisoned-VM policy; uncordon in between
# --------------------------------------------------------------------------------------------

def uncordon(awx, lab, host):
    job = awx.launch("Uncordon hypervisor", answers={"uncordon_host": host})
    done = [e for e in job.results("Uncordon the host") if e["host"] == host]
    assert_every_variable_shown(job, {
        "uncordon_host": (len(done) == 1 and done[0]["res"]["changed"] is True and not cordoned(host),
                          f"{host}'s cordon removed"),
    })
    lab.cordoned_by_us.discard(host)


def request_evidence(job, source, lab, report=None):
    """Each variable sent, as the playbook's input check took it (and its report echoes it)."""
    request = job.results("Check every input against the inventory, before anything happens")[0]["res"]["request"]
    evidence = {}
    for variable, value in job.sent.items():
        expected, held = value, True
        if variable == "evacuate_targets":
            expected = sorted(h for h in lab.hosts if h != source) if value == "" else sorted(value.split(","))
            held = request["targets_defaulted"] is (value == "")  # empty: every other hypervisor
        shown = [request.get(variable)] + ([report["inputs"].get(variable)] if report else [])
        if isinstance(expected, list):
            shown = [sorted(s) if isinstance(s, list) else s for s in shown]
        evidence[variable] = (held and all(s == expected for s in shown), f"the input check (and report) show {expected!r}, got {shown!r}")
    return evidence


def other_answers(template, source, lab):
    """A valid answer other than the default to every evacuation question but the policy (each
    then differs from the playbook's own default, so the run shows it was read, not defaulted)."""
    from ansible_collections.kvm_ras.poison_guard.plugins.plugin_utils import evacuation_request as evacuation  # pylint: disable=import-outside-toplevel

    questions = {q["variable"]: q for q in template["survey_spec"]["spec"]}
    answers = {
        "evacuate_targets": ",".join(h for h in lab.hosts if h != source),
        "evacuate_max_parallel": questions["evacuate_max_parallel"]["max"],
        "evacuate_unknown_vm_policy": [c for c in questions["evacuate_unknown_vm_policy"]["choices"]
                                       if c != questions["evacuate_unknown_vm_policy"]["default"]][0],
        "evacuate_migration_timeout": questions["evacuate_migration_timeout"]["default"] * 2,
    }
    for variable, value in answers.items():
        assert value != questions[variable].get("default") and value != evacuation.DEFAULTS.get(variable, ""), (variable, value)
    assert set(answers) | {"evacuate_source", "evacuate_poisoned_vm_policy"} == set(questions), "a question without an answer here"
    return answers


@pytest.mark.parametrize("policy", POLICIES)
def test_evacuate_hypervisor(awx, lab, policy):
    index = POLICIES.index(policy)
    source = lab.hosts[index % 2]
    for host in sorted(lab.cordoned_by_us):
        uncordon(awx, lab, host)  # the previous source takes VMs again
    guests = lab.create_guests(source, GUESTS_PER_RUN)
    answers = {"evacuate_source": source, "evacuate_poisoned_vm_policy": policy}
    if index == 1:
        # the other runs send the survey defaults; this one answers every question otherwise
        answers.update(other_answers(awx.template("Evacuate hypervisor"), source, lab))

    if index == 0:
        # the approval workflow's plan node: this template with job type check
        plan = awx.launch("Evacuate hypervisor", answers=answers, job_type="check")
        planned = plan.results("Make the plan")[0]["res"]["plan"]["vms"]
        assert {vm["name"]: vm["action"] for vm in planned if vm["name"] in guests} == dict.fromkeys(guests, "live_migrate")
        assert not plan.results("Verify every VM and write the report")
        assert all(where == [source] for where in lab.running_on(guests).values()), "check mode moved a guest"
        assert not cordoned(source), "check mode cordoned the source"
        assert_every_variable_shown(plan, request_evidence(plan, source, lab))

    job = awx.launch("Evacuate hypervisor", answers=answers)
    lab.cordoned_by_us.add(source)
    where = lab.running_on(guests)
    for name, hosts in where.items():
        assert len(hosts) == 1 and hosts[0] != source, f"{name} runs on {hosts} after evacuating {source}"
        assert name in virsh_names(hosts[0], "--persistent"), f"{name} is not persistent on {hosts[0]}"
    assert not virsh_names(source, "--all") & set(guests), f"guests still defined on {source}"
    assert cordoned(source), f"{source} was not cordoned"

    evacuation = job.artifacts.get("evacuation")
    assert evacuation, f"no evacuation artifact: {job.artifacts}"
    assert evacuation["source"] == source and evacuation["failed"] is False, evacuation
    assert evacuation["left_on_source"] == [] and evacuation["counts"].get("migrated", 0) >= len(guests), evacuation
    report = json.loads((job.project / evacuation["files"]["json"]).read_text(encoding="utf-8"))
    by_name = {vm["name"]: vm for vm in report["vms"]}
    for name in guests:
        assert by_name[name]["status"] == "migrated" and by_name[name]["running_on"] == where[name], by_name[name]
    assert_every_variable_shown(job, request_evidence(job, source, lab, report))
    lab.delete_guests(guests)


def test_every_host_uncordoned_after_the_evacuations(awx, lab):
    for host in sorted(lab.cordoned_by_us):
        uncordon(awx, lab, host)
    assert not [h for h in lab.hosts if cordoned(h)]
