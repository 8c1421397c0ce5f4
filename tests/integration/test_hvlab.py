# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Checks of the hypervisor lab script (lab/hvlab) against the real lab.

The module brings the default lab up itself (`lab/hvlab up` reuses a running lab), then checks
what the lab reports and does with real dockerd, libvirtd and QEMU: host status, test guests
that count in their RAM, refusal of bad input without side effects, and the rollback of a
failed `up`. It leaves the lab running for the other integration tests; `lab/hvlab down`
stops it.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HVLAB = REPO / "lab" / "hvlab"
HVLAB_PACKAGE_DIR = REPO / "lab" / "hvlab.d"  # the package hvlab (lab/hvlab runs hvlab.cli)
TICK = re.compile(r"^tick (\d+)\r?$", re.M)

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="the hypervisor lab runs docker and privileged containers: needs root")


def hvlab(*args, env=None, timeout=1800):
    return subprocess.run([str(HVLAB), *args], capture_output=True, text=True, timeout=timeout,
                          env=None if env is None else {**os.environ, **env}, check=False)


def docker(*args):
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=120, check=True).stdout


def docker_objects():
    """What 'nothing changed' compares: the lab's containers (id, state), its network, dockerd.

    Only lab objects, so that other scenarios running on the same daemon do not disturb it."""
    containers = docker("ps", "--all", "--filter", "label=io.kvm-ras.hvlab=lab",
                        "--format", "{{.Names}} {{.ID}} {{.State}}").split("\n")
    named = [c for c in docker("ps", "--all", "--format", "{{.Names}} {{.ID}} {{.State}}").split("\n")
             if re.match(r"^(hv\d|itest-blocker-\w+) ", c)]
    network = docker("network", "ls", "--filter", "name=^hvlab$", "--format", "{{.Name}} {{.ID}}")
    dockerd = subprocess.run(["pidof", "dockerd"], capture_output=True, text=True, check=False).stdout
    return sorted(filter(None, containers)), sorted(named), network, dockerd


def load_hvlab_module(name):
    """The module ``name`` of the lab's package lab/hvlab.d/hvlab (standard library only)."""
    if str(HVLAB_PACKAGE_DIR) not in sys.path:
        sys.path.insert(0, str(HVLAB_PACKAGE_DIR))
    return importlib.import_module("hvlab." + name)


def serial_counters(host, guest):
    log = subprocess.run(["docker", "exec", host, "cat", f"/var/log/libvirt/qemu/{guest}-serial.log"],
                         capture_output=True, text=True, timeout=60, check=False).stdout
    return [int(n) for n in TICK.findall(log)]


@pytest.fixture(scope="module")
def lab():
    result = hvlab("up")
    assert result.returncode == 0, result.stderr
    status = hvlab("status", "--json")
    assert status.returncode == 0, status.stdout + status.stderr
    return json.loads(status.stdout)


@pytest.fixture()
def guest_cleanup():
    names = []
    yield names
    if names:
        hvlab("guests", "delete", *names)


def test_status_lists_hosts_with_answering_libvirtd(lab):
    hosts = {h["name"]: h for h in lab["hosts"]}
    assert {"hv1", "hv2"} <= set(hosts)
    assert lab["up"] is True and lab["dockerd"]["running"] is True
    for name in ("hv1", "hv2"):
        host = hosts[name]
        assert host["container_state"] == "running"
        assert host["libvirtd"] is True, host["error"]
        assert re.match(r"^\d+\.\d+\.\d+$", host["libvirt_version"])
        assert host["ip"] == f"172.30.10.{10 + int(name[2:])}"
        assert host["ssh"] is True and host["libvirt_tcp"] is True
        assert host["libvirt_uri"] == f"qemu+tls://{name}/system"
        fact = json.loads(docker("exec", name, "cat", "/etc/ansible/facts.d/kvm_ras_migration_transport.fact"))
        assert fact["mode"] == "tls" and fact["uri_template"] == "qemu+tls://{address}/system", fact
    uuids = [h["host_uuid"] for h in hosts.values()]
    assert all(uuids) and len(set(uuids)) == len(uuids), f"libvirt host UUIDs not distinct: {uuids}"


def test_status_text_and_exit_code(lab):
    result = hvlab("status")
    assert result.returncode == 0
    assert re.search(r"^hv1\s+172\.30\.10\.11\s+running\s+\d", result.stdout, re.M), result.stdout


def test_up_again_reuses_the_running_lab(lab):
    before = docker("ps", "--filter", "label=io.kvm-ras.hvlab=lab", "--format", "{{.Names}} {{.ID}}")
    result = hvlab("up")
    assert result.returncode == 0, result.stderr
    assert "reusing kvm-ras/hvlab:" in result.stderr
    after = docker("ps", "--filter", "label=io.kvm-ras.hvlab=lab", "--format", "{{.Names}} {{.ID}}")
    assert sorted(after.split("\n")) == sorted(before.split("\n"))


def test_dockerd_of_the_lab_can_run_privileged_containers(lab):
    """The real daemon passes the same check lab/hvlab applies to a dockerd it did not start."""
    module = load_hvlab_module("dockerd")
    info = json.loads(docker("info", "--format", "{{json .}}"))
    problem = module.foreign_daemon_problem(info, [lab["dockerd"]["pid"] or 0], module.missing_capabilities())
    assert problem is None, problem and problem.problem
    inside = docker("exec", "hv1", "grep", "CapEff", "/proc/1/status")
    assert int(inside.split()[1], 16) & (1 << 21), "hv1 lacks CAP_SYS_ADMIN: not privileged"


def test_guests_create_starts_counting_guests(lab, guest_cleanup):
    result = hvlab("guests", "create", "--host", "hv1", "--count", "2", "--prefix", "itest", "--json")
    assert result.returncode == 0, result.stderr
    created = json.loads(result.stdout)
    guest_cleanup.extend(g["name"] for g in created)
    assert len(created) == 2 and len({g["name"] for g in created}) == 2
    assert all(g["host"] == "hv1" and g["state"] == "running" and g["persistent"] for g in created)

    listed = {g["name"]: g for g in json.loads(hvlab("guests", "list", "--json").stdout)}
    for guest in created:
        assert listed[guest["name"]]["host"] == "hv1"
        assert listed[guest["name"]]["state"] == "running"

    name = created[0]["name"]
    deadline = time.monotonic() + 30
    first = []
    while time.monotonic() < deadline and len(first) < 2:
        time.sleep(0.5)
        first = serial_counters("hv1", name)
    assert len(first) >= 2, f"{name} printed no ticks within 30 s"
    time.sleep(1.5)
    later = serial_counters("hv1", name)
    assert later[-1] > first[-1], f"the counter of {name} stopped at {first[-1]}"
    assert later == list(range(later[0], later[0] + len(later))), "ticks are not consecutive"

    # Names are unique across the lab: the same prefix on hv2 gets a new number.
    other = hvlab("guests", "create", "--host", "hv2", "--count", "1", "--prefix", "itest", "--json")
    assert other.returncode == 0, other.stderr
    second = json.loads(other.stdout)
    guest_cleanup.extend(g["name"] for g in second)
    assert second[0]["name"] not in {g["name"] for g in created}
    assert second[0]["host"] == "hv2"


def test_guest_live_migrates_between_lab_hosts(lab, guest_cleanup):
    """The lab's purpose: hv1 -> hv2 over the inventory's lab_libvirt_uri (TLS, set up by the
    migration_transport role at `up`), RAM carried over."""
    result = hvlab("guests", "create", "--host", "hv1", "--count", "1", "--prefix", "itestmig", "--json")
    assert result.returncode == 0, result.stderr
    name = json.loads(result.stdout)[0]["name"]
    guest_cleanup.append(name)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not [n for n in serial_counters("hv1", name) if n >= 2]:
        time.sleep(0.5)
    subprocess.run(["docker", "exec", "hv1", "virsh", "-c", "qemu:///system", "migrate", "--live",
                    "--persistent", "--undefinesource", name, "qemu+tls://hv2/system"],
                   check=True, capture_output=True, text=True, timeout=120)
    listed = {g["name"]: g for g in json.loads(hvlab("guests", "list", "--json").stdout)}
    assert listed[name]["host"] == "hv2" and listed[name]["state"] == "running"
    time.sleep(1.0)
    moved = serial_counters("hv2", name)
    assert moved and moved[0] != 0, f"{name} restarted on hv2 instead of continuing: {moved[:3]}"


def test_up_rejects_hosts_out_of_range_without_changes(lab):
    before = docker_objects()
    for value in ("9", "0"):
        result = hvlab("up", "--hosts", value)
        assert result.returncode == 2
        assert f"--hosts {value} is out of range" in result.stderr
        assert "fix: pass --hosts with a number from 1 to 4" in result.stderr
    assert docker_objects() == before


def test_guests_create_rejects_unknown_host_without_changes(lab):
    before = docker_objects()
    guests_before = hvlab("guests", "list", "--json").stdout
    result = hvlab("guests", "create", "--host", "nope", "--count", "1")
    assert result.returncode == 2
    assert "unknown host 'nope'" in result.stderr and "fix:" in result.stderr
    running = {h["name"] for h in json.loads(hvlab("status", "--json").stdout)["hosts"]}
    idle = next((h for h in ("hv3", "hv4") if h not in running), None)
    if idle:
        result = hvlab("guests", "create", "--host", idle, "--count", "1")
        assert result.returncode == 2
        assert f"unknown host '{idle}': it is not running in the lab" in result.stderr
        assert f"lab/hvlab up --hosts {idle[2:]}" in result.stderr
    for bad in (["--prefix", "x;rm -rf /"], ["--count", "0"], ["--count", "17"]):
        result = hvlab("guests", "create", "--host", "hv1", *bad)
        assert result.returncode == 2, bad
        assert "fix:" in result.stderr
    assert docker_objects() == before
    assert hvlab("guests", "list", "--json").stdout == guests_before


def test_not_root_is_refused(lab):
    setpriv = shutil.which("setpriv")
    assert setpriv, "setpriv (util-linux) is part of Debian's base system"
    result = subprocess.run([setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", str(HVLAB), "up"],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1
    assert "must run as root" in result.stderr and "sudo lab/hvlab" in result.stderr


def test_not_enough_disk_stops_before_changes(lab):
    before = docker_objects()
    result = hvlab("up", env={"HVLAB_MIN_FREE_MIB": str(1 << 40)})
    assert result.returncode == 1
    assert "not enough free disk space" in result.stderr and "fix:" in result.stderr
    assert docker_objects() == before


def test_failed_up_removes_what_it_started(lab):
    """A failure in the middle of `up` (the next host's address is taken) leaves the lab as it was."""
    running = {h["name"] for h in json.loads(hvlab("status", "--json").stdout)["hosts"]}
    idle = next((h for h in ("hv3", "hv4") if h not in running), None)
    if idle is None:
        pytest.skip("all four lab hosts are running: no free host slot to fail on")
    blocker = f"itest-blocker-{uuid.uuid4().hex[:8]}"
    docker("run", "--detach", "--name", blocker, "--network", "hvlab", "--ip",
           f"172.30.10.{10 + int(idle[2:])}", "--entrypoint", "sleep", "kvm-ras/hvlab:latest", "infinity")
    try:
        before = docker_objects()
        result = hvlab("up", "--hosts", idle[2:])
        assert result.returncode == 1
        assert f"docker run {idle} failed" in result.stderr and "fix:" in result.stderr
        assert f"rolling back: remove container {idle}" in result.stderr
        assert docker_objects() == before
    finally:
        docker("rm", "--force", blocker)


def test_inventories_match_the_lab(lab):
    static = (REPO / "lab" / "inventory" / "hosts.yml").read_text()
    for host in ("hv1", "hv2"):
        assert re.search(rf"^        {host}:\n          ansible_host: 172\.30\.10\.{10 + int(host[2:])}$", static, re.M)
    generated = hvlab("inventory")
    assert generated.returncode == 0
    path = Path(generated.stdout.strip())
    for host in lab["hosts"]:
        assert f"        {host['name']}:\n          ansible_host: {host['ip']}\n" in path.read_text()
    ansible = Path(sys.executable).parent / "ansible"
    if not ansible.exists():
        pytest.fail(f"ansible is not installed next to {sys.executable}: run tests from the project venv")
    pong = subprocess.run([str(ansible), "-i", str(REPO / "lab" / "inventory" / "hosts.yml"), "hypervisors",
                           "-m", "ansible.builtin.command", "-a", "virsh -c qemu:///system uri"],
                          capture_output=True, text=True, timeout=180, check=False)
    assert pong.returncode == 0, pong.stdout + pong.stderr
    assert pong.stdout.count("qemu:///system") == 2


def test_apt_sources_come_from_the_machine_config():
    """Parsing copies Debian 12's own formats: deb822 debian.sources and one-line sources.list."""
    module = load_hvlab_module("image")
    deb822 = ("Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates trixie\n"
              "Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n"
              "Types: deb-src\nURIs: http://mirror.example/debian\nSuites: bookworm\nComponents: main\n\n"
              "Enabled: no\nTypes: deb\nURIs: http://disabled.example/debian\nSuites: bookworm\nComponents: main\n")
    one_line = ("deb [arch=amd64 signed-by=/k.gpg] http://security.example/debian-security bookworm-security main\n"
                "# deb http://commented.example/debian bookworm main\n"
                "deb https://vendor.example/apt stable main\n")
    text = module.parse_apt_sources({"/etc/apt/sources.list.d/debian.sources": deb822,
                                     "/etc/apt/sources.list": one_line}, "bookworm")
    assert "URIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n" in text
    assert "URIs: http://security.example/debian-security\nSuites: bookworm-security\n" in text
    assert "Architectures: amd64" in text and "Signed-By: /k.gpg" in text
    for absent in ("disabled.example", "commented.example", "vendor.example", "deb-src", "trixie"):
        assert absent not in text
    assert module.parse_apt_sources({"/etc/apt/sources.list": one_line}, "trixie") == ""


def test_foreign_dockerd_without_runtime_wrapper_is_refused():
    """`docker info` of Debian's docker.io 20.10 as started by systemd (default runtime runc)."""
    module = load_hvlab_module("dockerd")
    info = {"ServerVersion": "20.10.24+dfsg1", "DefaultRuntime": "runc",
            "Runtimes": {"io.containerd.runc.v2": {"path": "runc"}, "runc": {"path": "runc"}},
            "SecurityOptions": ["name=seccomp,profile=default"]}
    problem = module.foreign_daemon_problem(info, [4242], ["CAP_SYS_RESOURCE"])
    assert problem is not None
    assert "CAP_SYS_RESOURCE" in problem.problem and "'runc'" in problem.problem
    assert "kill 4242" in problem.fix and "default-runtime" in problem.fix
    assert module.foreign_daemon_problem(info, [4242], []) is None  # ordinary host: usable
    wrapped = dict(info, DefaultRuntime="hvlab-runc",
                   Runtimes={"hvlab-runc": {"path": str(REPO / "lab" / "hvlab.d" / "runc-bounded")}})
    assert module.foreign_daemon_problem(wrapped, [4242], ["CAP_SYS_RESOURCE"]) is None
    rootless = dict(info, SecurityOptions=["name=seccomp,profile=default", "name=rootless"])
    assert "rootless" in module.foreign_daemon_problem(rootless, [4242], []).problem
    assert "does not answer" in module.foreign_daemon_problem(None, [4242], []).problem


def test_missing_capabilities_reads_the_bounding_set():
    """CapBnd 0x1fffeffffff with cap_last_cap 40 is this machine class (CAP_SYS_RESOURCE gone)."""
    module = load_hvlab_module("dockerd")
    assert module.missing_capabilities("CapBnd:\t000001fffeffffff\n", 40) == ["CAP_SYS_RESOURCE"]
    assert module.missing_capabilities("CapBnd:\t000001ffffffffff\n", 40) == []
