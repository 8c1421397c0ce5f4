# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fleet poison report at fleet scale: playbooks/poison_report.yml against a simulated fleet,
timed against ``ansible.builtin.ping`` over the same inventory in the same run.

Every inventory host (default 200) is a local-connection host with its own fixture procfs /
sysfs / boot / QEMU-log / kernel-log tree, built with the project's fixture builder
(tests/fixtures/procfs), which writes the encodings real kernels and QEMU showed:

- clean hosts: ``scenarios.clean_host`` (two libvirt-started QEMUs, every RAM page present,
  HardwareCorrupted 0 kB), with an empty kernel log file; written once and hard-linked for the
  other clean hosts (the scan only reads the trees), so 1000 hosts take seconds;
- a few poisoned hosts, alternating ``scenarios.kvmmce_61`` (Debian 6.1 hwpoison entry
  0x40800000001f28ba, QEMU's "Guest MCE Memory Error" line, the kernel's SIGBUS line) and
  ``scenarios.hwpoison_612`` (Debian 6.12 type-27 entry, per-node memory_failure counters).

poison_info reads only the host's tree: ``proc_root``, ``sys_root``, ``boot_dir``,
``qemu_log_dir`` and ``kernel_log`` point into it and ``libvirt_uri`` is empty (procfs-only
discovery), so nothing of the machine running the benchmark leaks into the report.

Prints both wall times and the ratio report/ping (goal: <= 2.0), with ``--profile`` also the
wall time of each report task (ansible.posix.profile_tasks), then checks the report: it
must validate against schemas/fleet_report.schema.json, list every host, hold every poisoned
fixture VM as poisoned and no VM of a clean fixture. Exits non-zero when a check fails (and,
with --enforce-goal, when the ratio misses the goal).

    .venv/bin/python benchmarks/fleet.py [--hosts 200] [--poisoned 6] [--forks 20] [--profile]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures" / "procfs"
PLAYBOOK = REPO / "playbooks" / "poison_report.yml"
SCHEMA = REPO / "schemas" / "fleet_report.schema.json"
GOAL_RATIO = 2.0

if str(FIXTURES) not in sys.path:
    sys.path.insert(0, str(FIXTURES))

import scenarios  # noqa: E402  (tests/fixtures/procfs)

# Poisoned fixture scenarios and the VM each of them poisons.
POISONED_SCENARIOS = (
    (scenarios.kvmmce_61, "inner-kvmmce-ek0"),
    (scenarios.hwpoison_612, "web612"),
)
CLEAN_VMS = ("web01", "db01")


def host_name(index):
    return "hv%03d" % index


def poisoned_indices(hosts, poisoned):
    """Indices (1-based) of the poisoned hosts, spread over the fleet."""
    if poisoned <= 0:
        return set()
    step = max(hosts // poisoned, 1)
    return {1 + (step // 2) + i * step for i in range(poisoned) if 1 + (step // 2) + i * step <= hosts}


class HostPaths:
    """Where one simulated host's fixture tree lives (the paths of procfs_builder.Tree)."""

    def __init__(self, root):
        self.root = root
        self.proc_root = os.path.join(root, "proc")
        self.sys_root = os.path.join(root, "sys")
        self.boot_dir = os.path.join(root, "boot")
        self.log_dir = os.path.join(root, "log")
        self.kmsg_path = os.path.join(root, "kmsg.txt")


def link_tree(template, root):
    """Copy the fixture tree ``template`` to ``root`` with hard links (the scan only reads it;
    the pagemap files are sparse and must not be expanded), re-pointing symlinks that lead
    into the template (``/proc/PID/exe``, ``fd/2``) at the copy."""
    prefix = template.rstrip(os.sep) + os.sep
    for directory, dirs, files in os.walk(template):
        target_dir = os.path.join(root, os.path.relpath(directory, template))
        os.makedirs(target_dir, exist_ok=True)
        for name in dirs + files:
            source = os.path.join(directory, name)
            target = os.path.join(target_dir, name)
            if os.path.islink(source):
                link = os.readlink(source)
                if link.startswith(prefix):
                    link = os.path.join(root, link[len(prefix):])
                os.symlink(link, target)
            elif name in files:
                os.link(source, target)


def build_fleet(root, hosts=200, poisoned=6):
    """Write one fixture tree per host under ``root``; returns ``{host: spec}`` where spec has
    ``tree`` (the host's ``HostPaths``), ``poisoned_vms`` and ``clean_vms`` (VM names
    expected). Clean hosts are hard-linked copies of one written clean tree, so that 1000
    hosts take seconds and little memory."""
    fleet = {}
    chosen = poisoned_indices(hosts, poisoned)
    turn = 0
    template = None
    for index in range(1, hosts + 1):
        name = host_name(index)
        directory = os.path.join(root, name)
        if index in chosen:
            build, vm = POISONED_SCENARIOS[turn % len(POISONED_SCENARIOS)]
            turn += 1
            tree = build(directory)
            if tree.kmsg is None:
                tree.kmsg = ""  # an (empty) kernel log of its own, never the machine's
            tree.write()
            fleet[name] = {"tree": HostPaths(directory), "poisoned_vms": [vm], "clean_vms": []}
        else:
            if template is None:
                scenarios.clean_host(directory, kmsg="").write()
                template = directory
            else:
                link_tree(template, directory)
            fleet[name] = {"tree": HostPaths(directory), "poisoned_vms": [],
                           "clean_vms": list(CLEAN_VMS)}
    return fleet


def host_vars(tree, python):
    """Inventory variables of one simulated hypervisor (playbook variables of poison_report)."""
    return {
        "ansible_connection": "local",
        "ansible_python_interpreter": python,
        "poison_report_become": False,
        "poison_report_proc_root": tree.proc_root,
        "poison_report_sys_root": tree.sys_root,
        "poison_report_boot_dir": tree.boot_dir,
        "poison_report_qemu_log_dir": tree.log_dir,
        "poison_report_kernel_log": tree.kmsg_path,
        "poison_report_libvirt_uri": "",
    }


def write_inventory(path, fleet, python, group="hypervisors", extra_hosts=None):
    """A JSON (= YAML) inventory with every fleet host in ``group``."""
    hosts = {name: host_vars(spec["tree"], python) for name, spec in fleet.items()}
    hosts.update(extra_hosts or {})
    inventory = {"all": {"children": {group: {"hosts": hosts}}}}
    Path(path).write_text(json.dumps(inventory, indent=1), encoding="utf-8")
    return path


def ansible_env(workdir):
    """Environment for ansible-playbook runs: the checkout as the collection, no user config."""
    collections = subprocess.run([str(REPO / "tools" / "collection-link")], check=True,
                                 capture_output=True, text=True).stdout.strip()
    env = dict(os.environ)
    env.update({
        "ANSIBLE_COLLECTIONS_PATH": collections,
        "ANSIBLE_CONFIG": os.path.join(workdir, "ansible.cfg"),
        "ANSIBLE_HOST_KEY_CHECKING": "False",
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_LOCAL_TEMP": os.path.join(workdir, "ansible-local"),
        "ANSIBLE_REMOTE_TEMP": os.path.join(workdir, "ansible-remote"),
    })
    Path(env["ANSIBLE_CONFIG"]).write_text("[defaults]\n", encoding="utf-8")
    return env


def ansible_bin(name):
    """The ansible executable next to this interpreter (the project venv), else on PATH."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def timed(argv, env, cwd, log):
    started = time.monotonic()
    with open(log, "w", encoding="utf-8") as handle:
        proc = subprocess.run(argv, env=env, cwd=cwd, stdout=handle, stderr=subprocess.STDOUT,
                              check=False)
    return time.monotonic() - started, proc.returncode


def run_ping(inventory, forks, env, cwd, log, pattern="hypervisors"):
    return timed([ansible_bin("ansible"), pattern, "-i", str(inventory), "-f", str(forks),
                  "-m", "ansible.builtin.ping"], env, cwd, log)


def run_report(inventory, forks, env, cwd, log, report_dir, report_id, extra=()):
    return timed([ansible_bin("ansible-playbook"), "-i", str(inventory), "-f", str(forks),
                  str(PLAYBOOK), "-e", "poison_report_dir=%s" % report_dir,
                  "-e", "poison_report_id=%s" % report_id] + list(extra), env, cwd, log)


def check_report(report, fleet):
    """Problems found in ``report`` (an empty list means the report is right)."""
    problems = []
    if SCHEMA.exists():
        try:
            import jsonschema  # pylint: disable=import-outside-toplevel
        except ImportError:
            problems.append("jsonschema is not installed: the report was not validated")
        else:
            schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
            errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(report),
                            key=lambda e: list(e.path))
            problems.extend("schema: %s at %s" % (e.message, list(e.path)) for e in errors[:10])
    hosts = {h["name"]: h for h in report["hosts"]}
    if set(hosts) != set(fleet):
        problems.append("hosts in the report differ from the fleet: missing %s, extra %s" % (
            sorted(set(fleet) - set(hosts))[:10], sorted(set(hosts) - set(fleet))[:10]))
    expected = {(name, vm) for name, spec in fleet.items() for vm in spec["poisoned_vms"]}
    reported = {(vm["host"], vm["name"]) for vm in report["poisoned_vms"]}
    if expected - reported:
        problems.append("poisoned fixtures missing from the report: %s" % sorted(expected - reported))
    if reported - expected:
        problems.append("VMs reported poisoned that are clean fixtures: %s" % sorted(reported - expected))
    for name, spec in fleet.items():
        entry = hosts.get(name)
        if entry is None:
            continue
        want = "poisoned" if spec["poisoned_vms"] else "clean"
        if entry["status"] != want:
            problems.append("%s: status %s, expected %s (%s)" % (
                name, entry["status"], want, entry["error"] or entry["reasons"]))
        statuses = {vm["name"]: vm["status"] for vm in entry["vms"]}
        for vm in spec["clean_vms"]:
            if statuses.get(vm) != "clean":
                problems.append("%s: clean fixture VM %s reported %s" % (name, vm, statuses.get(vm)))
    first = report["hosts"][0]["name"] if report["hosts"] else None
    if expected and (first is None or not fleet[first]["poisoned_vms"]):
        problems.append("the first host of the report (%s) has no poisoned VM" % first)
    return problems


def print_profile(log, total):
    """The task times ansible.posix.profile_tasks printed at the end of ``log``."""
    pattern = re.compile(r"^(.+?) -{3,} +(\d+\.\d+)s$")
    rows = []
    with open(log, encoding="utf-8") as handle:
        for line in handle:
            match = pattern.match(line.rstrip())
            if match:
                rows.append((float(match.group(2)), match.group(1).strip()))
    if not rows:
        print("profile                  : no task times in %s" % log)
        return
    print("report tasks (profile_tasks, wall time of each task over all hosts):")
    for seconds, task in sorted(rows, reverse=True):
        print("  %7.2f s %5.1f%%  %s" % (seconds, 100 * seconds / total, task))
    print("  %7.2f s %5.1f%%  (playbook start-up, play switches and the rest)" % (
        total - sum(r[0] for r in rows), 100 * (total - sum(r[0] for r in rows)) / total))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--hosts", type=int, default=200)
    parser.add_argument("--poisoned", type=int, default=6, help="poisoned hosts (default 6)")
    parser.add_argument("--forks", type=int, default=20)
    parser.add_argument("--strategy", choices=("linear", "free"), default="linear")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--profile", action="store_true",
                        help="time every task of the report (ansible.posix.profile_tasks) and "
                             "print where the time goes")
    parser.add_argument("--enforce-goal", action="store_true",
                        help="exit non-zero when report/ping exceeds %.1f" % GOAL_RATIO)
    args = parser.parse_args(argv)

    workdir = tempfile.mkdtemp(prefix="poison-fleet-bench-")
    try:
        started = time.monotonic()
        fleet = build_fleet(os.path.join(workdir, "fleet"), args.hosts, args.poisoned)
        inventory = write_inventory(os.path.join(workdir, "inventory.yml"), fleet, sys.executable)
        print("fleet: %d hosts (%d poisoned), fixture trees built in %.1f s under %s" % (
            len(fleet), sum(1 for s in fleet.values() if s["poisoned_vms"]),
            time.monotonic() - started, workdir))
        env = ansible_env(workdir)
        env["ANSIBLE_STRATEGY"] = args.strategy
        ping_s, ping_rc = run_ping(inventory, args.forks, env, workdir,
                                   os.path.join(workdir, "ping.log"))
        report_dir = os.path.join(workdir, "reports")
        report_env = dict(env)
        if args.profile:
            report_env["ANSIBLE_CALLBACKS_ENABLED"] = "ansible.posix.profile_tasks"
            report_env["PROFILE_TASKS_TASK_OUTPUT_LIMIT"] = "all"
        report_log = os.path.join(workdir, "report.log")
        report_s, report_rc = run_report(inventory, args.forks, report_env, workdir, report_log,
                                         report_dir, "bench")
        print("ansible.builtin.ping     : %7.2f s (rc %d)" % (ping_s, ping_rc))
        print("poison_report.yml        : %7.2f s (rc %d)" % (report_s, report_rc))
        ratio = report_s / ping_s if ping_s else float("inf")
        print("ratio report/ping        : %7.2f (goal <= %.1f: %s)" % (
            ratio, GOAL_RATIO, "met" if ratio <= GOAL_RATIO else "MISSED"))
        print("per host (forks %d)      : ping %.1f ms, report %.1f ms" % (
            args.forks, 1000 * ping_s / len(fleet), 1000 * report_s / len(fleet)))
        if args.profile:
            print_profile(report_log, report_s)
        problems = []
        if ping_rc != 0:
            problems.append("ping failed (rc %d), see %s" % (ping_rc, os.path.join(workdir, "ping.log")))
        report_path = Path(report_dir) / "bench" / "fleet_report.json"
        if report_rc != 0:
            problems.append("the report playbook failed (rc %d)" % report_rc)
        if report_path.exists():
            report = json.loads(report_path.read_text(encoding="utf-8"))
            problems.extend(check_report(report, fleet))
            summary = report["summary"]
            print("report                   : %d hosts, %d VMs: %d poisoned, %d unknown, %d clean; "
                  "%d hosts not scanned" % (summary["hosts_total"], summary["vms_total"],
                                            summary["vms"]["poisoned"], summary["vms"]["unknown"],
                                            summary["vms"]["clean"], summary["hosts_not_scanned"]))
        else:
            problems.append("no report at %s" % report_path)
        if problems:
            args.keep = True
            print("CHECK FAILED (work directory kept: %s):" % workdir)
            for problem in problems:
                print("  - " + problem)
            return 1
        print("check                    : every poisoned fixture is in the report, no clean one is")
        if args.enforce_goal and ratio > GOAL_RATIO:
            return 2
        return 0
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print("work directory kept: %s" % workdir)


if __name__ == "__main__":
    sys.exit(main())
