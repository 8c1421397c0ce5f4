# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""evacuate_host.yml on three real hypervisor containers, checked from the docker host.

The tests run in file order and build on each other (Molecule's verify step, after converge
and idempotence):

1. after converge: every guest left the source, runs exactly once and persistently on a
   target, its counter continued there; at most evacuate_max_parallel migrations ran at once (from
   libvirt's own domain-log timestamps); the report lists every guest; the source is cordoned;
2. bad inputs, check mode and a held lock change nothing;
3. uncordon_host.yml lets the source take VMs again;
4. a guest with a poisoned page (lab/inject_poison.py: the kernel side simulated with a
   userfaultfd poison marker, QEMU's side through QEMU's own functions, both driven with
   plain ptrace; the poison lab covers real kernel hwpoison) stays on its host with evacuate_poisoned_vm_policy=leave
   given explicitly and QEMU's refusal as the reason; left by the default policy, it fails the run at its end with a
   message that names it and the way forward; then it moves with reboot_then_migrate;
5. a target's libvirtd is stopped in the middle of an evacuation: the run fails and names
   the VMs it could not move or verify, and once libvirtd is back every guest runs exactly once;
6. the controller's ansible-playbook (its whole process group) is killed with SIGKILL while
   migrations run: the dead run leaves its lock and its journal on the source; the re-run (with
   evacuate_break_lock=true, as the lock's message says) finishes what was in flight first, its
   report says what it resumed, every guest runs exactly once and the lock is released;
7. the source becomes unreachable for the controller in the middle of a run (its container is
   renamed, so ``docker exec`` finds no container while its libvirtd, QEMUs and migrations go
   on, as a host behind a cut management network does): the run fails with a message that says
   the lock and journal stay and how to finish, its report claims no success, and the re-run
   finishes the evacuation.

Docker and libvirt are asked directly (argv lists, never a shell), so the guest whose name
holds ``$(touch .pwned)`` stays data everywhere.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path

import pytest
import yaml

SCENARIO = Path(__file__).resolve().parent.parent
INJECTOR = SCENARIO.parent.parent / "lab" / "inject_poison.py"
REPO = SCENARIO.parent.parent
VARS = yaml.safe_load((SCENARIO / "vars.yml").read_text())
SOURCE = VARS["evacuate_scenario_source"]
TARGETS = VARS["evacuate_scenario_targets"]
HOSTS = [SOURCE] + TARGETS
GUESTS = VARS["evacuate_scenario_guests"]
EPHEMERAL = Path(os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY", "/nonexistent"))
INVENTORY = os.environ.get("MOLECULE_INVENTORY_FILE", "")
REPORTS = EPHEMERAL / "reports"
BIN = Path(sys.executable).parent
UPSTREAM_REFUSAL = ("Can't migrate this vm with hardware poisoned memory, please reboot the vm "
                    "and try again")
CORDON_FILE = "/var/lib/kvm_ras/cordon.json"
LOCK_FILE = "/run/kvm_ras/evacuation.lock"
JOURNAL_DIR = "/var/lib/kvm_ras/journal"
TICK = re.compile(r"^tick (\d+)\r?$", re.M)
LOG_STAMP = r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3})\+0000: "
STARTING_UP = re.compile(LOG_STAMP + r"starting up", re.M)
MIGRATED_AWAY = re.compile(LOG_STAMP + r"shutting down, reason=migrated", re.M)

# Every domain of a host with its state and persistence, asked of libvirt (read-only).
QUERY = """
import json, libvirt
conn = libvirt.openReadOnly('qemu:///system')
print(json.dumps({d.name(): {'active': bool(d.isActive()), 'persistent': bool(d.isPersistent())}
                  for d in conn.listAllDomains(0)}))
"""

# Not run per testinfra host: these tests drive the whole scenario from the docker host.
testinfra_hosts = ["ansible://" + SOURCE]


def docker_exec(container, *argv, check=True, timeout=120):
    proc = subprocess.run(["docker", "exec", container, *argv], capture_output=True, text=True,
                          timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise AssertionError("docker exec %s %r exited %d: %s" % (container, argv, proc.returncode,
                                                                  proc.stderr.strip()))
    return proc


def domains(host):
    """{name: {active, persistent}} of one host, or None when its libvirtd does not answer."""
    proc = docker_exec(host, "python3", "-c", QUERY, check=False)
    return json.loads(proc.stdout) if proc.returncode == 0 else None


def placement():
    """{guest: [hosts where it is active]} over the three hosts."""
    where = {name: [] for name in GUESTS}
    for host in HOSTS:
        for name, state in (domains(host) or {}).items():
            if state["active"]:
                where.setdefault(name, []).append(host)
    return where


def host_state(host):
    """What an evacuation may change on a host: its domains, cordon and lock."""
    return {"domains": domains(host),
            "cordon": docker_exec(host, "cat", CORDON_FILE, check=False).stdout,
            "lock": docker_exec(host, "cat", LOCK_FILE, check=False).stdout}


def snapshot():
    return {host: host_state(host) for host in HOSTS}


def ticks(host, name):
    proc = docker_exec(host, "cat", "/var/log/libvirt/qemu/%s-serial.log" % name, check=False)
    return [int(n) for n in TICK.findall(proc.stdout)]


def report_files():
    return sorted(REPORTS.glob("*.json")) if REPORTS.is_dir() else []


def playbook_argv(name, vars_file, check=False):
    argv = [str(BIN / "ansible-playbook"), "-i", INVENTORY, str(REPO / "playbooks" / name),
            "-e", "@%s" % vars_file]
    if check:
        argv.append("--check")
    return argv


def playbook(name, extra, check=False, timeout=900):
    """Run a playbook of the collection against the scenario's inventory; extra vars as JSON."""
    vars_file = EPHEMERAL / ("extra-vars-%s.json" % uuid.uuid4().hex)
    vars_file.write_text(json.dumps(extra))
    argv = playbook_argv(name, vars_file, check=check)
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, cwd=str(EPHEMERAL), timeout=timeout,
                              check=False)
    finally:
        vars_file.unlink()
    return proc


def evacuate(source, check=False, **extra):
    extra.setdefault("evacuate_report_dir", str(REPORTS))
    extra["evacuate_source"] = source
    before = set(report_files())
    proc = playbook("evacuate_host.yml", extra, check=check)
    new = sorted(set(report_files()) - before)
    report = json.loads(new[-1].read_text()) if new else None
    return proc, report


def uncordon(host):
    proc = playbook("uncordon_host.yml", {"uncordon_host": host})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert docker_exec(host, "test", "-e", CORDON_FILE, check=False).returncode != 0


def hosts_with_guests():
    where = placement()
    count = {host: sum(1 for hosts in where.values() if host in hosts) for host in HOSTS}
    return sorted(count, key=lambda h: (-count[h], h)), count


def stamp(text):
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S.%f").timestamp()


def assert_every_guest_runs_once():
    where = placement()
    wrong = {name: hosts for name, hosts in where.items() if len(hosts) != 1}
    assert not wrong, "guests not running exactly once: %r" % wrong
    assert set(where) == set(GUESTS), where
    return where


def qemu_processes():
    """{guest name: number of QEMU processes} over every container, from the processes themselves."""
    found = {}
    for host in HOSTS:
        proc = docker_exec(host, "ps", "-eo", "args=", check=False)
        for line in proc.stdout.splitlines():
            match = re.search(r"qemu-system-\S+ .*-name guest=(.*?),debug-threads", line)
            if match:
                name = match.group(1).replace(",,", ",")
                found[name] = found.get(name, 0) + 1
    return found


# --------------------------------------------------------------------------- 1. converge --

def test_every_guest_left_the_source_and_runs_once_persistently_on_a_target():
    on_source = domains(SOURCE)
    assert on_source == {}, "still defined on the source: %r" % on_source
    where = assert_every_guest_runs_once()
    for name, hosts in where.items():
        assert hosts[0] in TARGETS, (name, hosts)
        assert domains(hosts[0])[name] == {"active": True, "persistent": True}, name


@pytest.mark.parametrize("name", GUESTS)
def test_counter_continued_on_the_target(name):
    [target] = placement()[name]
    source_ticks = ticks(SOURCE, name)
    first = ticks(target, name)
    time.sleep(1.5)
    later = ticks(target, name)
    assert source_ticks and source_ticks[-1] > 0, "the guest never counted on the source"
    assert first and first[0] != 0, "the target's first line is 'tick 0': the guest restarted instead of moving"
    assert first[0] >= source_ticks[-1], (first[0], source_ticks[-1])
    assert later[-1] > first[-1], "the counter stopped on the target"


def test_at_most_max_parallel_migrations_ran_at_once():
    # libvirt writes "<time>: starting up" into the target's domain log when it starts the
    # incoming QEMU, and "<time>: shutting down, reason=migrated" into the source's when the
    # migration completed: the span of each migration job, in libvirt's own clock.
    spans = []
    for name in GUESTS:
        [target] = placement()[name]
        dest_log = docker_exec(target, "cat", "/var/log/libvirt/qemu/%s.log" % name).stdout
        source_log = docker_exec(SOURCE, "cat", "/var/log/libvirt/qemu/%s.log" % name).stdout
        started = STARTING_UP.findall(dest_log)
        ended = MIGRATED_AWAY.findall(source_log)
        assert started and ended, (name, dest_log[-500:], source_log[-500:])
        spans.append((stamp(started[0]), stamp(ended[0]), name))
    events = sorted([(start, 1) for start, _end, _name in spans] + [(end, -1) for _start, end, _name in spans])
    running = most = 0
    for _when, delta in events:
        running += delta
        most = max(most, running)
    assert 1 <= most <= 2, "%d migrations overlapped with evacuate_max_parallel 2: %r" % (most, sorted(spans))


def test_report_lists_every_guest_as_migrated_and_the_rerun_as_nothing_to_do():
    files = [f for f in report_files() if f.name.startswith(SOURCE + "-")]
    assert len(files) == 2, files  # converge, then the idempotence run (names sort by time)
    first = json.loads(files[0].read_text())
    assert first["source"] == SOURCE and first["failed"] is False, first["msg"]
    statuses = {vm["name"]: (vm["status"], vm["running_on"]) for vm in first["vms"]}
    assert set(statuses) == set(GUESTS), statuses
    for name, (status, running_on) in statuses.items():
        assert status == "migrated" and len(running_on) == 1 and running_on[0] in TARGETS, (name, status)
    assert first["source_empty"] is True
    text = files[0].with_suffix(".txt").read_text()
    assert "VM" in text and "STATUS" in text and "OK: evacuation done: 7 VM(s) moved" in text, text
    rerun = json.loads(files[-1].read_text())
    assert rerun["vms"] == [] and rerun["failed"] is False, rerun["msg"]


def test_source_is_cordoned():
    record = json.loads(docker_exec(SOURCE, "cat", CORDON_FILE).stdout)
    assert "evacuation" in json.dumps(record), record


def test_the_command_in_the_guest_name_never_ran():
    for host in HOSTS:
        found = docker_exec(host, "find", "/", "-xdev", "-name", ".pwned", "-print").stdout
        assert found == "", (host, found)
    for directory in (Path.cwd(), Path.home(), SCENARIO, REPO, EPHEMERAL):
        assert not (directory / ".pwned").exists(), directory


# ----------------------------------------------------- 2. nothing changes on a refusal --

BAD_INPUTS = [
    ({"evacuate_source": "no-such-host"}, "is not in the inventory"),
    ({"evacuate_source": TARGETS[0], "evacuate_targets": [TARGETS[0], TARGETS[1]]},
     "includes the source"),
    ({"evacuate_source": TARGETS[0], "evacuate_group": "no_such_group"},
     "evacuate_targets is not set and the inventory has no group"),
    ({"evacuate_source": TARGETS[0], "evacuate_poisoned_vm_policy": "destroy"}, "evacuate_poisoned_vm_policy"),
    ({"evacuate_source": TARGETS[0], "evacuate_max_parallel": 0}, "evacuate_max_parallel"),
    ({"evacuate_source": "%s; touch /tmp/pwned" % TARGETS[0]}, "evacuate_source"),
    ({"evacuate_source": TARGETS[0], "evacuate_targets": ["$(touch /tmp/pwned)"]}, "evacuate_targets"),
]


@pytest.mark.parametrize("extra, message", BAD_INPUTS, ids=[
    "unknown-host", "source-as-target", "no-targets", "bad-policy", "zero-parallel", "shell-in-source",
    "shell-in-target"])
def test_bad_input_is_rejected_before_any_change(extra, message):
    before = snapshot()
    extra = dict(extra)
    source = extra.pop("evacuate_source")
    proc, report = evacuate(source, **extra)
    output = proc.stdout + proc.stderr  # ansible-core 2.19 writes task errors to stderr
    assert proc.returncode != 0, output[-3000:]
    assert "evacuation refused before any change" in output and message in output, output[-3000:]
    assert report is None, "a refused request wrote a report"
    assert snapshot() == before
    for host in HOSTS:
        assert docker_exec(host, "test", "-e", "/tmp/pwned", check=False).returncode != 0
    assert not Path("/tmp/pwned").exists()


def test_check_mode_prints_the_plan_and_changes_nothing():
    source = TARGETS[0]
    before = snapshot()
    proc, report = evacuate(source, check=True)
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert "check mode: the plan above was only shown" in proc.stdout
    for name in placement():
        if source in placement()[name]:
            assert name in proc.stdout or json.dumps(name)[1:-1] in proc.stdout, name
    assert report is None, "check mode wrote a report"
    assert snapshot() == before


def test_a_held_lock_refuses_a_second_evacuation_of_the_same_source():
    source = TARGETS[0]
    take = subprocess.run(
        [str(BIN / "ansible"), "-i", INVENTORY, source, "-m", "kvm_ras.poison_guard.evacuation_lock",
         "-a", json.dumps({"owner": "other-run", "info": {"controller": "another-controller"}})],
        capture_output=True, text=True, cwd=str(EPHEMERAL), check=False, timeout=300)
    assert take.returncode == 0, take.stdout + take.stderr
    try:
        before = snapshot()
        proc, report = evacuate(source)
        output = proc.stdout + proc.stderr
        assert proc.returncode != 0, output[-3000:]
        assert "other-run" in output, output[-3000:]
        assert report is None
        assert snapshot() == before
    finally:
        release = subprocess.run(
            [str(BIN / "ansible"), "-i", INVENTORY, source, "-m", "kvm_ras.poison_guard.evacuation_lock",
             "-a", json.dumps({"owner": "other-run", "state": "absent"})],
            capture_output=True, text=True, cwd=str(EPHEMERAL), check=False, timeout=300)
    assert release.returncode == 0, release.stdout + release.stderr
    assert docker_exec(source, "test", "-e", LOCK_FILE, check=False).returncode != 0


# --------------------------------------------------------------------------- 3. uncordon --

def test_uncordon_lets_the_source_take_vms_again():
    uncordon(SOURCE)


# --------------------------------------------------------------------- 4. poisoned guest --

@pytest.fixture(scope="module", name="poisoned")
def fixture_poisoned():
    """A guest of the first target with a poisoned page of guest RAM."""
    if os.geteuid() != 0:
        pytest.fail("the poison injection attaches to QEMU with ptrace: run the scenario as root")
    host = TARGETS[0]
    name = sorted(n for n, hosts in placement().items() if hosts == [host])[0]
    proc = subprocess.run([sys.executable, str(INJECTOR), host, name],
                          capture_output=True, text=True, check=False, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return {"host": host, "name": name, "injection": json.loads(proc.stdout)}


def test_poisoned_guest_stays_with_leave_and_the_others_move(poisoned):
    host, name = poisoned["host"], poisoned["name"]
    others = sorted(n for n, hosts in placement().items() if hosts == [host] and n != name)
    # the policy given explicitly: the operator agrees that poisoned VMs stay (the default would fail the run)
    proc, report = evacuate(host, evacuate_max_parallel=4, evacuate_poisoned_vm_policy="leave")
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert UPSTREAM_REFUSAL in proc.stdout
    entries = {vm["name"]: vm for vm in report["vms"]}
    victim = entries[name]
    assert victim["status"] == "left" and victim["poison_status"] == "poisoned", victim
    assert UPSTREAM_REFUSAL in victim["reason"], victim
    assert any(e["source"] == "pagemap" for e in victim["evidence"]), victim["evidence"]
    for other in others:
        assert entries[other]["status"] == "migrated", entries[other]
    assert not re.search(r"\[vm\d{3}@", proc.stdout), "a per-VM host without its VM's name"
    assert re.search(r" \(vm\d{3}@%s\)" % re.escape(host), proc.stdout), "no per-VM host named after its VM"
    where = assert_every_guest_runs_once()
    assert where[name] == [host]
    for other in others:
        assert where[other][0] != host, (other, where[other])
    # its QEMU is alive: nothing read the poisoned page
    before = ticks(host, name)
    time.sleep(1.5)
    assert ticks(host, name)[-1] > before[-1]


def test_poisoned_guest_left_by_the_default_policy_fails_the_run_at_its_end(poisoned):
    host, name = poisoned["host"], poisoned["name"]
    before_lock = docker_exec(host, "test", "-e", LOCK_FILE, check=False).returncode
    proc, report = evacuate(host)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output[-4000:]
    # the report is written first, and says why the run failed
    assert report is not None and report["failed"] is True, output[-4000:]
    assert report["left_without_consent"] == [name], report
    assert {vm["name"]: vm["status"] for vm in report["vms"]}[name] == "left"
    assert name in report["msg"] or repr(name) in report["msg"], report["msg"]
    for needed in ("evacuate_poisoned_vm_policy=reboot_then_migrate", "evacuate_poisoned_vm_policy=leave",
                   "ansible-playbook kvm_ras.poison_guard.evacuate_host -e evacuate_source=%s" % host):
        assert needed in report["msg"] and needed in output, (needed, report["msg"])
    assert "Fail when a VM stays on the source without consent" in output
    # nothing else changed: the guest runs where it ran, the lock is released as before
    assert placement()[name] == [host]
    assert docker_exec(host, "test", "-e", LOCK_FILE, check=False).returncode == before_lock != 0


def test_poisoned_guest_moves_after_a_reboot_with_reboot_then_migrate(poisoned):
    host, name = poisoned["host"], poisoned["name"]
    proc, report = evacuate(host, evacuate_poisoned_vm_policy="reboot_then_migrate")
    assert proc.returncode == 0, proc.stdout[-4000:]
    entry = {vm["name"]: vm for vm in report["vms"]}[name]
    assert entry["status"] == "migrated", entry
    assert any(step.startswith("reboot") for step in entry["steps"]), entry["steps"]
    assert "re-check after reboot: clean" in entry["steps"], entry["steps"]
    where = assert_every_guest_runs_once()
    assert where[name] != [host]
    assert domains(host) == {}, "the source still holds VMs"


# -------------------------------------------------- 5. a target's libvirtd dies mid-run --

def test_target_libvirtd_stopped_mid_run_loses_no_vm_and_the_report_names_the_failures():
    for host in HOSTS:
        if docker_exec(host, "test", "-e", CORDON_FILE, check=False).returncode == 0:
            uncordon(host)
    order, count = hosts_with_guests()
    source = order[0]
    target = [h for h in HOSTS if count[h] == 0][0]
    moving = sorted(n for n, hosts in placement().items() if hosts == [source])
    assert len(moving) >= 3, count
    stopped = {}

    def stop_libvirtd_after_the_first_arrival():
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            arrived = domains(target)
            if arrived and any(state["active"] for state in arrived.values()):
                docker_exec(target, "pkill", "-x", "libvirtd", check=False)
                stopped["after"] = sorted(arrived)
                return
            time.sleep(0.1)

    watcher = threading.Thread(target=stop_libvirtd_after_the_first_arrival, daemon=True)
    watcher.start()
    try:
        proc, report = evacuate(source, evacuate_targets=[target], evacuate_max_parallel=1)
    finally:
        watcher.join(timeout=320)
    try:
        assert stopped, "no guest reached %s: libvirtd was never stopped" % target
        assert proc.returncode != 0, proc.stdout[-4000:]
        assert report is not None and report["failed"] is True, proc.stdout[-4000:]
        failing = [vm for vm in report["vms"] if vm["status"] in ("stayed", "unverified", "down", "duplicate")]
        assert failing and all(vm["reason"] for vm in failing), report["vms"]
        assert "need attention" in report["msg"], report["msg"]
        for vm in failing:
            assert vm["name"] in report["msg"] or json.dumps(vm["name"])[1:-1] in report["msg"], vm["name"]
        # every guest still has exactly one QEMU, counted from the processes themselves
        processes = qemu_processes()
        assert all(processes.get(name) == 1 for name in GUESTS), processes
    finally:
        docker_exec(target, "/usr/sbin/libvirtd", "--daemon", "--listen", check=False)
        for _attempt in range(60):
            if domains(target) is not None:
                break
            time.sleep(1)
    assert domains(target) is not None, "libvirtd on %s did not come back" % target
    assert_every_guest_runs_once()


# ------------------------------------------- 6. the controller is killed mid-run, re-run --

def uncordon_all():
    for host in HOSTS:
        if docker_exec(host, "test", "-e", CORDON_FILE, check=False).returncode == 0:
            uncordon(host)


def journal_entries(host):
    proc = docker_exec(host, "find", JOURNAL_DIR, "-maxdepth", "1", "-name", "*.json", "-print", check=False)
    return sorted(line for line in proc.stdout.splitlines() if line)


def busiest_source():
    """The host with the most guests, the other two as targets, and the guests that will move."""
    order, count = hosts_with_guests()
    source = order[0]
    moving = sorted(n for n, hosts in placement().items() if hosts == [source])
    assert len(moving) >= 2, count
    return source, [h for h in HOSTS if h != source], moving


def report_text(report):
    """The .txt twin of a report (the run id identifies its JSON file)."""
    for path in report_files():
        if json.loads(path.read_text())["run"]["run_id"] == report["run"]["run_id"]:
            return path.with_suffix(".txt").read_text()
    raise AssertionError("no report file of run %s" % report["run"]["run_id"])


def wait_for_first_arrival(targets, moving, deadline_s=300):
    """Block until a guest of ``moving`` is active on a target: its migration has started
    (libvirt creates the incoming domain, paused, when the migration begins)."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        for target in targets:
            arrived = domains(target) or {}
            hit = sorted(n for n, state in arrived.items() if n in moving and state["active"])
            if hit:
                return target, hit
        time.sleep(0.1)
    return None, None


def test_killed_controller_leaves_a_journal_and_the_rerun_finishes_every_vm_exactly_once():
    uncordon_all()
    source, targets, moving = busiest_source()
    reports_before = set(report_files())
    vars_file = EPHEMERAL / ("extra-vars-%s.json" % uuid.uuid4().hex)
    vars_file.write_text(json.dumps({"evacuate_source": source, "evacuate_targets": targets, "evacuate_max_parallel": 2,
                                     "evacuate_report_dir": str(REPORTS)}))
    # its own process group, so SIGKILL reaches ansible-playbook, its forks and their docker exec
    # clients at once, as when a job runner kills the job
    dead = subprocess.Popen(playbook_argv("evacuate_host.yml", vars_file), cwd=str(EPHEMERAL),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        target, arrived = wait_for_first_arrival(targets, moving)
        os.killpg(dead.pid, signal.SIGKILL)
    finally:
        if dead.poll() is None:
            os.killpg(dead.pid, signal.SIGKILL)
        dead.wait(timeout=60)
        vars_file.unlink()
    assert arrived, "no guest of %s reached a target: the controller was killed before any migration" % source
    assert set(report_files()) == reports_before, "the killed run wrote a report"
    assert docker_exec(source, "test", "-e", LOCK_FILE, check=False).returncode == 0, "the dead run's lock vanished"
    left = journal_entries(source)
    assert left, "the dead run left no journal entry although %r was migrating to %s" % (arrived, target)

    proc, report = evacuate(source, evacuate_targets=targets, evacuate_max_parallel=2, evacuate_break_lock=True)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    assert report is not None and report["failed"] is False, output[-4000:]
    resumed = report["resumed"]
    assert resumed and all(item["ok"] for item in resumed), resumed
    assert {item["name"] for item in resumed} <= set(moving), resumed
    assert len(resumed) >= len(left), (resumed, left)  # a begin already under way may land after the kill
    text = report_text(report)
    assert "resumed from an interrupted run" in text, text
    for item in resumed:
        assert item["name"] in text or json.dumps(item["name"])[1:-1] in text, item["name"]
    # every guest runs exactly once, counted by libvirt and by the QEMU processes themselves
    where = assert_every_guest_runs_once()
    assert all(qemu_processes().get(name) == 1 for name in GUESTS), qemu_processes()
    assert not any(source in hosts for hosts in where.values()), where
    assert domains(source) == {}, "the source still holds VMs"
    assert docker_exec(source, "test", "-e", LOCK_FILE, check=False).returncode != 0, "the lock was not released"
    assert journal_entries(source) == []


# ------------------------------------------------ 7. the source unreachable mid-run --

def test_source_unreachable_mid_run_fails_clearly_keeps_lock_and_journal_and_a_rerun_finishes():
    uncordon_all()
    source, targets, moving = busiest_source()
    away = "%s-away-%s" % (source, uuid.uuid4().hex[:6])
    cut = {}

    def cut_the_source_after_the_first_arrival():
        target, arrived = wait_for_first_arrival(targets, moving)
        if arrived:
            subprocess.run(["docker", "rename", source, away], check=True, capture_output=True, timeout=60)
            cut["after"] = arrived

    watcher = threading.Thread(target=cut_the_source_after_the_first_arrival, daemon=True)
    watcher.start()
    try:
        proc, report = evacuate(source, evacuate_targets=targets, evacuate_max_parallel=1)
    finally:
        watcher.join(timeout=320)
        if cut:
            subprocess.run(["docker", "rename", away, source], check=True, capture_output=True, timeout=60)
    output = proc.stdout + proc.stderr
    assert cut, "no guest reached a target: the source was never cut off"
    assert proc.returncode != 0, output[-4000:]
    # a clear failure that says what stays and how to finish
    assert "could not be reached" in output, output[-4000:]
    assert "evacuation lock" in output and "journal" in output, output[-4000:]
    assert "evacuate_break_lock=true" in output and "evacuate_source=%s" % source in output, output[-4000:]
    # no claim of success
    assert "evacuation done" not in output, output[-4000:]
    assert report is None or report["failed"] is True, report and report["msg"]
    if report is not None:
        assert any(vm["status"] == "unverified" for vm in report["vms"]), report["vms"]
        assert "FAILED" in report_text(report)
    # the lock stays (the release could not reach the source)
    assert docker_exec(source, "test", "-e", LOCK_FILE, check=False).returncode == 0
    # nothing was lost or duplicated meanwhile
    processes = qemu_processes()
    assert all(processes.get(name) == 1 for name in GUESTS), processes

    proc, report = evacuate(source, evacuate_targets=targets, evacuate_max_parallel=2, evacuate_break_lock=True)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    assert report is not None and report["failed"] is False, output[-4000:]
    assert all(item["ok"] for item in report["resumed"]), report["resumed"]
    assert_every_guest_runs_once()
    assert all(qemu_processes().get(name) == 1 for name in GUESTS), qemu_processes()
    assert domains(source) == {}, "the source still holds VMs"
    assert docker_exec(source, "test", "-e", LOCK_FILE, check=False).returncode != 0, "the lock was not released"
    assert journal_entries(source) == []
