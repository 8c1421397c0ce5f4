# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""hvlab: a multi-host libvirt/QEMU lab on one machine, as privileged docker containers.

    lab/hvlab up [--hosts N]          start (or reuse) hosts hv1..hvN (default 2, at most 4)
    lab/hvlab status [--json]         hosts, addresses, libvirtd, guests; exit 3 if not up
    lab/hvlab down [--purge]          remove the lab, stop the dockerd it started, restore the
                                      firewall policy; --purge also removes images and state
    lab/hvlab image                   build or reuse the hypervisor image, print its name
    lab/hvlab inventory               print the path of the running lab's Ansible inventory
    lab/hvlab guests create --host hvX --count K [--prefix NAME] [--json]
    lab/hvlab guests list [--json]
    lab/hvlab guests delete NAME...

Every check on input and environment runs before anything is changed, and a failed `up`
removes what that run started. See docs/lab.md.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import fcntl
import hashlib
import importlib.machinery
import importlib.util
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

LAB_DIR = Path(__file__).resolve().parent.parent
CONTEXT_DIR = LAB_DIR / "hvlab.d"
IMAGE_CONTEXT_DIR = CONTEXT_DIR / "image"
STATE_DIR = LAB_DIR / "state"
STATIC_INVENTORY = LAB_DIR / "inventory" / "hosts.yml"
GENERATED_INVENTORY = STATE_DIR / "inventory" / "hosts.yml"
SSH_DIR = STATE_DIR / "ssh"
SSH_KEY = SSH_DIR / "id_ed25519"
SHARED_DIR = STATE_DIR / "shared"
BUILD_DIR = STATE_DIR / "build"
LAB_RECORD = STATE_DIR / "lab.json"
DOCKERD_RECORD = STATE_DIR / "dockerd.json"
DOCKERD_LOG = STATE_DIR / "dockerd.log"
DOCKERD_CONFIG = STATE_DIR / "docker-daemon.json"
LOCK_FILE = STATE_DIR / ".lock"
RUNTIME_WRAPPER = CONTEXT_DIR / "runc-bounded"  # sh, runs runc_bounded.py
RUNTIME_WRAPPER_CODE = CONTEXT_DIR / "runc_bounded.py"
RUNTIME_NAME = "hvlab-runc"
# Live migration between the lab hosts runs the way production does: over TLS, set up by the
# collection's own role (playbooks/migration_transport.yml) with a CA kept in the lab's state.
REPO_DIR = LAB_DIR.parent
TRANSPORT_PLAYBOOK = REPO_DIR / "playbooks" / "migration_transport.yml"
TRANSPORT_CA_DIR = STATE_DIR / "migration-ca"
TRANSPORT_FACT = "/etc/ansible/facts.d/kvm_ras_migration_transport.fact"
TRANSPORT_URI = "qemu+tls://{host}/system"
TRANSPORT_TIMEOUT = 900

SUITE = "bookworm"
BASE_REPOSITORY = "kvm-ras/hvlab-base"
IMAGE_REPOSITORY = "kvm-ras/hvlab"
IMAGE_LATEST = f"{IMAGE_REPOSITORY}:latest"
LABEL = "io.kvm-ras.hvlab"  # containers/network: "lab"; images: input hash
HOST_LABEL = "io.kvm-ras.hvlab.host"
INPUTS_LABEL = "io.kvm-ras.hvlab.inputs"
# Bumped when the way the images are built changes in ways the hashed files do not show.
BUILD_FORMAT = "2"

NETWORK = "hvlab"
SUBNET = ipaddress.ip_network("172.30.10.0/24")
GATEWAY = "172.30.10.1"
MAX_HOSTS = 4
DEFAULT_HOSTS = 2
HOST_NAMES = tuple(f"hv{i}" for i in range(1, MAX_HOSTS + 1))
SHARED_IN_CONTAINER = "/var/lib/libvirt/images/shared"
GUEST_DISK = f"{SHARED_IN_CONTAINER}/tick.img"
GUEST_TEMPLATE = CONTEXT_DIR / "guest.xml.j2"
QUERY_TOOL = "/usr/local/lib/hvlab/hvlab_query.py"  # in the image, from image/hvlab_query.py
MAX_GUESTS_PER_CALL = 16
GUEST_PREFIX_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,31}$")
GUEST_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")
LIBVIRTD_TIMEOUT = 180
DOCKERD_TIMEOUT = 60
LOCK_TIMEOUT = 1800

# Free disk space needed, MiB (see docs/lab.md). Building the images: the mmdebstrap chroot in
# $TMPDIR (about 700 MiB) and the imported base (about 450 MiB) plus the hypervisor layer in
# docker's data root, with room to spare. Running the lab from existing images: container
# layers, logs and guest serial logs. HVLAB_MIN_FREE_MIB replaces every threshold.
MIN_FREE_BUILD_DOCKER_MIB = 3072
MIN_FREE_BUILD_TMP_MIB = 1536
MIN_FREE_RUN_MIB = 1024

SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
APT_OPTIONS = ["-o", "DPkg::Lock::Timeout=600", "-o", "Acquire::Retries=3"]


class LabError(Exception):
    """A problem the user can fix; printed as the problem and what to do about it."""

    def __init__(self, problem: str, fix: str | None = None, code: int = 1):
        super().__init__(problem)
        self.problem = problem
        self.fix = fix
        self.code = code


def log(message: str) -> None:
    print(f"hvlab: {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- processes


def run(argv, *, check=True, input_text=None, timeout=600, env=None, what=None):
    """Run argv (a list, never a shell string) and return the CompletedProcess."""
    try:
        result = subprocess.run(
            [str(a) for a in argv], input=input_text, capture_output=True, text=True,
            timeout=timeout, env=env, check=False,
        )
    except FileNotFoundError as error:
        raise LabError(f"{argv[0]} is not installed ({error})") from error
    except subprocess.TimeoutExpired as error:
        raise LabError(f"{what or ' '.join(map(str, argv[:3]))} did not finish within {timeout} s") from error
    if check and result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()[-5:]
        raise LabError(f"{what or ' '.join(map(str, argv[:3]))} failed (exit {result.returncode}): "
                       + " | ".join(detail))
    return result


def which(command: str) -> str | None:
    return shutil.which(command, path=os.environ.get("PATH", "") + os.pathsep + SYSTEM_PATH)


def docker_cli() -> str:
    cli = which("docker")
    if not cli:
        raise LabError("the docker command is not installed", "run `lab/hvlab up` (it installs docker.io)")
    return cli


def docker(*args, check=True, input_text=None, timeout=600, what=None, env=None):
    return run([docker_cli(), *args], check=check, input_text=input_text, timeout=timeout,
               what=what or f"docker {args[0]}", env=env)


def process_alive(pid: int, name: str | None = None) -> bool:
    """True if pid runs (zombies count as gone) and, if given, its command name is name."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    comm = stat[stat.index("(") + 1:stat.rindex(")")]
    state = stat[stat.rindex(")") + 2:].split()[0]
    if state in ("Z", "X"):
        return False
    return name is None or comm == name


def processes_named(name: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and process_alive(int(entry.name), name):
            pids.append(int(entry.name))
    return sorted(pids)


def child_pids(parent: int) -> list[int]:
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat[stat.rindex(")") + 2:].split()[1]) == parent:
            children.append(int(entry.name))
    return children


def wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        if not process_alive(pid):
            return True
        time.sleep(0.2)
    return not process_alive(pid)


def read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(temporary, path)


# --------------------------------------------------------------------------- checks


def check_root() -> None:
    if os.geteuid() != 0:
        raise LabError("lab/hvlab must run as root: it installs packages, starts dockerd and "
                       "runs privileged containers",
                       "run it as root, e.g. `sudo lab/hvlab ...`")


def check_hosts_count(count: int) -> None:
    if not 1 <= count <= MAX_HOSTS:
        raise LabError(f"--hosts {count} is out of range: the lab has 1 to {MAX_HOSTS} hosts "
                       f"(hv1..hv{MAX_HOSTS})",
                       f"pass --hosts with a number from 1 to {MAX_HOSTS} (default {DEFAULT_HOSTS})",
                       code=2)


def check_docker_host_env() -> None:
    if os.environ.get("DOCKER_HOST") or os.environ.get("DOCKER_CONTEXT"):
        raise LabError("DOCKER_HOST/DOCKER_CONTEXT is set: the lab needs the local docker daemon "
                       "(it bind-mounts lab/state into the containers)",
                       "unset DOCKER_HOST and DOCKER_CONTEXT and run the command again")


def host_ip(name: str) -> str:
    return str(SUBNET.network_address + 10 + int(name[2:]))


def capability_names() -> tuple[str, ...]:
    """Capability names by bit number, from the runtime wrapper (one list for both)."""
    loader = importlib.machinery.SourceFileLoader("hvlab_runc_bounded", str(RUNTIME_WRAPPER_CODE))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module.CAPABILITY_NAMES


def missing_capabilities(status_text: str | None = None, last_cap: int | None = None) -> list[str]:
    """Capabilities the kernel knows but this process's bounding set lacks.

    `docker run --privileged` asks for all of them; any missing one makes runc fail with
    "unable to apply caps: operation not permitted"."""
    if status_text is None:
        status_text = Path("/proc/self/status").read_text()
    if last_cap is None:
        last_cap = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    mask = int(re.search(r"^CapBnd:\s*([0-9a-fA-F]+)", status_text, re.M).group(1), 16)
    names = capability_names()
    return [names[bit] if bit < len(names) else f"capability {bit}"
            for bit in range(last_cap + 1) if not mask >> bit & 1]


def free_mib(path: Path) -> tuple[int, int]:
    """(free MiB for root, st_dev) of the filesystem holding path or its nearest parent."""
    probe = path
    while not probe.exists():
        probe = probe.parent
    stats = os.statvfs(probe)
    return stats.f_bavail * stats.f_frsize // (1024 * 1024), os.stat(probe).st_dev


def check_disk(needs: list[tuple[Path, int, str]]) -> None:
    """needs: (path, MiB, what for). Needs on one filesystem add up."""
    override = os.environ.get("HVLAB_MIN_FREE_MIB")
    by_device: dict[int, dict] = {}
    for path, mib, purpose in needs:
        if override:
            mib = int(override)
        available, device = free_mib(path)
        entry = by_device.setdefault(device, {"free": available, "need": 0, "what": [], "path": path})
        entry["need"] = max(entry["need"], mib) if override else entry["need"] + mib
        entry["what"].append(f"{purpose} ({path})")
    for entry in by_device.values():
        if entry["free"] < entry["need"]:
            raise LabError(
                f"not enough free disk space: {entry['free']} MiB free on the filesystem of "
                f"{entry['path']}, the lab needs {entry['need']} MiB there for "
                + ", ".join(entry["what"]),
                "free some space there (e.g. `docker image prune`, remove old files) and run the "
                "command again; docs/lab.md lists the thresholds")


def docker_data_root() -> Path:
    config = read_json(Path("/etc/docker/daemon.json")) or {}
    return Path(config.get("data-root") or "/var/lib/docker")


def image_known_offline(reference: str) -> bool:
    """Whether dockerd has this image tag, read from its on-disk tag store (no daemon needed)."""
    repository = reference.rsplit(":", 1)[0]
    for store in (docker_data_root() / "image").glob("*/repositories.json"):
        tags = (read_json(store) or {}).get("Repositories", {}).get(repository, {})
        if reference in tags:
            return True
    return False


def check_subnet_free() -> None:
    """The lab subnet must not overlap a route of this machine that docker does not own."""
    result = run(["ip", "-json", "route", "show"], check=False)
    if result.returncode != 0:
        return
    for route in json.loads(result.stdout or "[]"):
        destination = route.get("dst", "")
        if destination in ("default", ""):
            continue
        try:
            network = ipaddress.ip_network(destination, strict=False)
        except ValueError:
            continue
        if network.version == 4 and network.overlaps(SUBNET) and not route.get("dev", "").startswith("br-"):
            raise LabError(
                f"the lab subnet {SUBNET} overlaps this machine's route {destination} "
                f"(dev {route.get('dev')})",
                "the lab's addresses are fixed (lab/inventory/hosts.yml); remove that route or "
                "run the lab on a machine without it")


def check_static_inventory() -> None:
    expected = render_inventory(HOST_NAMES[:DEFAULT_HOSTS], "../state/ssh/id_ed25519")
    try:
        actual = STATIC_INVENTORY.read_text()
    except OSError as error:
        raise LabError(f"{STATIC_INVENTORY} is missing ({error})",
                       "restore it from git: `git checkout -- lab/inventory/hosts.yml`") from error
    if actual != expected:
        diff = "".join(difflib.unified_diff(actual.splitlines(True), expected.splitlines(True),
                                            "lab/inventory/hosts.yml", "expected", n=1))
        raise LabError("lab/inventory/hosts.yml does not match the lab's fixed hosts and "
                       "addresses:\n" + diff,
                       "restore it (`git checkout -- lab/inventory/hosts.yml`) or change the "
                       "inventory text in lab/hvlab (render_inventory) and the file together")


# --------------------------------------------------------------------------- docker daemon


class DaemonState:
    def __init__(self):
        self.record = read_json(DOCKERD_RECORD)
        record_pid = (self.record or {}).get("pid")
        self.ours_pid = record_pid if record_pid and process_alive(record_pid, "dockerd") else None
        self.pids = processes_named("dockerd")
        self.info = None
        cli = which("docker")
        if cli and (Path("/var/run/docker.sock").exists() or self.pids):
            result = run([cli, "info", "--format", "{{json .}}"], check=False, timeout=60)
            if result.returncode == 0:
                with contextlib.suppress(ValueError):
                    info = json.loads(result.stdout)
                    if info.get("ServerVersion"):
                        self.info = info

    @property
    def answering(self) -> bool:
        return self.info is not None

    @property
    def ours(self) -> bool:
        return self.ours_pid is not None

    def as_dict(self) -> dict:
        return {
            "running": self.answering,
            "pid": self.ours_pid or (self.pids[0] if self.pids else None),
            "started_by_lab": self.ours,
            "version": (self.info or {}).get("ServerVersion"),
            "default_runtime": (self.info or {}).get("DefaultRuntime"),
        }


def foreign_daemon_problem(info: dict | None, pids: list[int], missing_caps: list[str]) -> LabError | None:
    """Why a dockerd that lab/hvlab did not start cannot host the lab (None if it can).

    info is `docker info --format '{{json .}}'` of that daemon, or None if it does not answer."""
    pid_text = ", ".join(map(str, pids)) or "unknown"
    stop_fix = (f"stop that dockerd (`systemctl stop docker.service docker.socket`, or `kill "
                f"{pid_text}`) and run the command again: lab/hvlab then starts its own dockerd")
    if info is None:
        return LabError(f"a dockerd is running (pid {pid_text}) but does not answer on "
                        "/var/run/docker.sock", stop_fix)
    security = " ".join(info.get("SecurityOptions") or [])
    if "rootless" in security:
        return LabError("the running dockerd is rootless: it cannot run the privileged "
                        "containers the lab needs", stop_fix)
    if "userns" in security:
        return LabError("the running dockerd remaps user namespaces (userns-remap): privileged "
                        "containers cannot manage /dev/kvm and cgroups there", stop_fix)
    if missing_caps:
        runtime = info.get("DefaultRuntime") or "runc"
        runtime_path = ((info.get("Runtimes") or {}).get(runtime) or {}).get("path", "")
        if not runtime_path or os.path.realpath(runtime_path) != str(RUNTIME_WRAPPER.resolve()):
            return LabError(
                f"the running dockerd (pid {pid_text}, not started by lab/hvlab) cannot run "
                f"privileged containers here: this machine's capability bounding set lacks "
                f"{', '.join(missing_caps)} and the daemon's default runtime is {runtime!r}, so "
                "runc fails with 'unable to apply caps'",
                stop_fix + f"; or make {RUNTIME_WRAPPER} its default runtime in "
                f"/etc/docker/daemon.json ({{\"runtimes\": {{\"{RUNTIME_NAME}\": {{\"path\": "
                f"\"{RUNTIME_WRAPPER}\"}}}}, \"default-runtime\": \"{RUNTIME_NAME}\"}}) and restart it")
    return None


def check_daemon_usable(state: DaemonState) -> None:
    if state.ours or (not state.answering and not state.pids):
        return
    problem = foreign_daemon_problem(state.info, state.pids, missing_capabilities())
    if problem:
        raise problem


def forward_policy() -> str | None:
    iptables = which("iptables")
    if not iptables:
        return "ACCEPT"  # no iptables tool: nothing has set a policy, the kernel default holds
    result = run([iptables, "-w", "-S", "FORWARD"], check=False)
    match = re.search(r"^-P FORWARD (\w+)", result.stdout, re.M)
    return match.group(1) if match else None


def read_sysctl(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def link_exists(name: str) -> bool:
    return Path(f"/sys/class/net/{name}").exists()


def start_dockerd(rollback: "Rollback") -> None:
    dockerd = which("dockerd")
    if not dockerd:
        raise LabError("dockerd is not installed", "run `lab/hvlab up` (it installs docker.io)")
    previous = read_json(DOCKERD_RECORD)
    if previous and previous.get("host_before"):
        host_before = previous["host_before"]  # a dockerd of ours died: keep what we saw first
    else:
        host_before = {
            "forward_policy": forward_policy(),
            "ip_forward": read_sysctl("/proc/sys/net/ipv4/ip_forward"),
            "docker0_existed": link_exists("docker0"),
        }
    argv = [dockerd]
    missing = missing_capabilities()
    if missing:
        config = {}
        system_config = Path("/etc/docker/daemon.json")
        if system_config.exists():
            config = read_json(system_config)
            if not isinstance(config, dict):
                raise LabError(f"{system_config} is not valid JSON", "fix or remove it")
        config.setdefault("runtimes", {})[RUNTIME_NAME] = {"path": str(RUNTIME_WRAPPER)}
        config["default-runtime"] = RUNTIME_NAME
        write_json(DOCKERD_CONFIG, config)
        argv += ["--config-file", str(DOCKERD_CONFIG)]
        log(f"capability bounding set lacks {', '.join(missing)}: dockerd gets the runtime "
            f"wrapper {RUNTIME_WRAPPER.relative_to(LAB_DIR.parent)} as default runtime")
    env = {"PATH": SYSTEM_PATH, "HOME": "/root", "LANG": "C.UTF-8"}
    env.update({k: v for k, v in os.environ.items() if k.lower().endswith("_proxy")})
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    with open(DOCKERD_LOG, "ab") as log_file:
        log_file.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} lab/hvlab starts {argv}\n".encode())
        log_file.flush()
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log_file,
                                   stderr=subprocess.STDOUT, start_new_session=True, env=env)
    write_json(DOCKERD_RECORD, {"pid": process.pid, "argv": argv, "started": time.time(),
                                "runtime": RUNTIME_NAME if missing else None,
                                "host_before": host_before})
    rollback.add("stop the dockerd started by this run", stop_dockerd)
    log(f"started dockerd (pid {process.pid}, log {DOCKERD_LOG})")
    deadline = time.monotonic() + DOCKERD_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise LabError(f"dockerd exited with status {process.returncode} while starting: "
                           + tail(DOCKERD_LOG), f"see {DOCKERD_LOG}")
        if run([docker_cli(), "info", "--format", "{{.ServerVersion}}"], check=False, timeout=30).returncode == 0:
            return
        time.sleep(0.3)
    raise LabError(f"dockerd did not answer within {DOCKERD_TIMEOUT} s: " + tail(DOCKERD_LOG),
                   f"see {DOCKERD_LOG}")


def stop_dockerd() -> list[str]:
    """Stop the dockerd lab/hvlab started (by its recorded PID) and restore what it changed."""
    record = read_json(DOCKERD_RECORD)
    notes = []
    if not record:
        return notes
    pid = record.get("pid")
    if pid and process_alive(pid, "dockerd"):
        helpers = [c for c in child_pids(pid) if process_alive(c, "containerd")]
        os.kill(pid, signal.SIGTERM)
        if not wait_gone(pid, 45):
            os.kill(pid, signal.SIGKILL)
            wait_gone(pid, 10)
        for helper in helpers:
            if process_alive(helper, "containerd"):
                os.kill(helper, signal.SIGTERM)
                wait_gone(helper, 15)
        notes.append(f"stopped dockerd (pid {pid})")
    before = record.get("host_before") or {}
    remaining = processes_named("dockerd")
    if remaining:
        # Another dockerd (not ours) runs now and relies on the state dockerd set up.
        notes.append(f"firewall and docker0 left as they are: another dockerd runs (pid "
                     f"{', '.join(map(str, remaining))})")
        DOCKERD_RECORD.unlink(missing_ok=True)
        return notes
    policy = before.get("forward_policy")
    if policy and forward_policy() not in (policy, None):
        run([which("iptables") or "iptables", "-w", "-P", "FORWARD", policy])
        notes.append(f"iptables FORWARD policy restored to {policy}")
    if before.get("ip_forward") is not None and read_sysctl("/proc/sys/net/ipv4/ip_forward") != before["ip_forward"]:
        Path("/proc/sys/net/ipv4/ip_forward").write_text(before["ip_forward"] + "\n")
        notes.append(f"net.ipv4.ip_forward restored to {before['ip_forward']}")
    if before.get("docker0_existed") is False and link_exists("docker0"):
        run(["ip", "link", "delete", "docker0"], check=False)
        notes.append("removed the docker0 bridge dockerd created")
    DOCKERD_RECORD.unlink(missing_ok=True)
    DOCKERD_CONFIG.unlink(missing_ok=True)
    return notes


def tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return "(no log)"


# --------------------------------------------------------------------------- packages


def ensure_packages(tools: dict[str, str]) -> None:
    """tools: command -> Debian package providing it; installs the packages of missing ones."""
    packages = sorted({package for command, package in tools.items() if not which(command)})
    if not packages:
        return
    if not which("apt-get"):
        raise LabError(f"missing {', '.join(packages)} and apt-get is not available",
                       "install them by hand, then run the command again")
    log(f"installing {' '.join(packages)} (apt-get)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    run(["apt-get", *APT_OPTIONS, "update"], env=env, timeout=900, what="apt-get update")
    run(["apt-get", *APT_OPTIONS, "install", "-y", "--no-install-recommends", *packages],
        env=env, timeout=1800, what=f"apt-get install {' '.join(packages)}")


# --------------------------------------------------------------------------- images


def base_packages() -> list[str]:
    packages = []
    for line in (CONTEXT_DIR / "base-packages.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            packages.append(line)
    return packages


MMDEBSTRAP_OPTIONS = [
    "--variant=apt",
    "--format=tar",
    "--aptopt=Apt::Install-Recommends \"false\"",
    "--dpkgopt=path-exclude=/usr/share/man/*",
    "--dpkgopt=path-exclude=/usr/share/doc/*",
    "--dpkgopt=path-include=/usr/share/doc/*/copyright",
    "--dpkgopt=path-exclude=/usr/share/locale/*",
    "--customize-hook=rm -rf \"$1\"/var/lib/apt/lists/* \"$1\"/var/cache/apt/*.bin",
]


def image_hashes() -> tuple[str, str]:
    """(base hash, hypervisor hash): sha256 over every input of each image build."""
    base = hashlib.sha256()
    base.update(f"format {BUILD_FORMAT}\nsuite {SUITE}\n".encode())
    base.update("\n".join(MMDEBSTRAP_OPTIONS + base_packages()).encode())
    base_hash = base.hexdigest()
    image = hashlib.sha256(f"format {BUILD_FORMAT}\nbase {base_hash}\n".encode())
    for path in sorted(IMAGE_CONTEXT_DIR.iterdir()) + [CONTEXT_DIR / "tick.S"]:
        image.update(f"{path.name} {path.stat().st_mode & 0o777:o}\n".encode())
        image.update(path.read_bytes())
    return base_hash, image.hexdigest()


def image_names() -> tuple[str, str, str]:
    base_hash, image_hash = image_hashes()
    return f"{BASE_REPOSITORY}:{base_hash[:12]}", f"{IMAGE_REPOSITORY}:{image_hash[:12]}", image_hash


def parse_apt_sources(files: dict[str, str], suite: str) -> str:
    """deb822 text with the machine's own apt sources for suite (and suite-updates etc.).

    files: path -> content of sources.list / *.list (one-line format) and *.sources (deb822)."""
    stanzas = []
    for path, text in sorted(files.items()):
        if path.endswith(".sources"):
            for block in re.split(r"\n\s*\n", text):
                fields, key = {}, None
                for line in block.splitlines():
                    if not line.strip() or line.lstrip().startswith("#"):
                        continue
                    if line[0].isspace() and key:
                        fields[key] += "\n" + line
                        continue
                    key, _colon, value = line.partition(":")
                    key = key.strip()
                    fields[key] = value.strip()
                if fields.get("Enabled", "yes").lower() == "no":
                    continue
                if "deb" not in fields.get("Types", "").split():
                    continue
                suites = [s for s in fields.get("Suites", "").split() if s.split("-")[0] == suite]
                if not suites or not fields.get("URIs"):
                    continue
                fields["Types"] = "deb"
                fields["Suites"] = " ".join(suites)
                stanzas.append("\n".join(f"{k}: {v}" for k, v in fields.items()))
        else:
            for line in text.splitlines():
                line = line.split("#", 1)[0].strip()
                match = re.match(r"^deb\s+(?:\[([^\]]*)\]\s+)?(\S+)\s+(\S+)\s+(.*)$", line)
                if not match or match.group(3).split("-")[0] != suite:
                    continue
                fields = {"Types": "deb", "URIs": match.group(2), "Suites": match.group(3),
                          "Components": match.group(4).strip()}
                for option in (match.group(1) or "").split():
                    name, _equals, value = option.partition("=")
                    name = {"arch": "Architectures", "signed-by": "Signed-By", "trusted": "Trusted",
                            "lang": "Languages"}.get(name.lower(), name)
                    fields[name] = value.replace(",", " ")
                stanzas.append("\n".join(f"{k}: {v}" for k, v in fields.items()))
    return "\n\n".join(stanzas) + ("\n" if stanzas else "")


def machine_apt_sources() -> str:
    override = os.environ.get("HVLAB_APT_SOURCES")
    if override:
        return Path(override).read_text()
    files = {}
    candidates = [Path("/etc/apt/sources.list")] + sorted(Path("/etc/apt/sources.list.d").glob("*.list")) \
        + sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))
    for path in candidates:
        with contextlib.suppress(OSError):
            files[str(path)] = path.read_text()
    text = parse_apt_sources(files, SUITE)
    if not text:
        raise LabError(f"this machine's apt configuration has no source for Debian {SUITE}, "
                       "which the lab image is built from",
                       f"add a {SUITE} entry to /etc/apt/sources.list.d/, or point "
                       "HVLAB_APT_SOURCES at a deb822 .sources file for it")
    return text


def image_exists(reference: str, inputs_hash: str | None = None) -> bool:
    result = docker("image", "inspect", "--format", "{{json .Config.Labels}}", reference, check=False)
    if result.returncode != 0:
        return False
    if inputs_hash is None:
        return True
    labels = json.loads(result.stdout or "null") or {}
    return labels.get(INPUTS_LABEL) == inputs_hash


def build_base_image(base_ref: str) -> None:
    ensure_packages({"mmdebstrap": "mmdebstrap"})
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    sources = BUILD_DIR / "apt.sources"
    sources.write_text(machine_apt_sources())
    log_path = BUILD_DIR / f"base-{base_ref.rsplit(':', 1)[1]}.log"
    log(f"building {base_ref} with mmdebstrap ({len(base_packages())} packages; log {log_path})")
    started = time.monotonic()
    argv = ["mmdebstrap", *MMDEBSTRAP_OPTIONS, "--include=" + ",".join(base_packages()),
            SUITE, "-", str(sources)]
    with open(log_path, "wb") as log_file:
        builder = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log_file)
        importer = subprocess.Popen(
            [docker_cli(), "import", "--change", f"LABEL {INPUTS_LABEL}={base_ref.rsplit(':', 1)[1]}",
             "-", base_ref], stdin=builder.stdout, stdout=subprocess.PIPE, stderr=log_file)
        builder.stdout.close()
        importer.communicate()
        builder.wait()
    if builder.returncode != 0 or importer.returncode != 0:
        with contextlib.suppress(LabError):
            docker("image", "rm", base_ref, check=False)
        raise LabError(f"building the base image failed (mmdebstrap exit {builder.returncode}, "
                       f"docker import exit {importer.returncode}): {tail(log_path)}",
                       f"see {log_path}; check that this machine reaches its Debian mirror")
    log(f"built {base_ref} in {time.monotonic() - started:.1f} s")


def assemble_guest_disk(destination: Path) -> None:
    """tick.S -> 512-byte boot sector -> 1 MiB raw disk image."""
    with tempfile.TemporaryDirectory(dir=BUILD_DIR) as scratch:
        obj, binary = Path(scratch, "tick.o"), Path(scratch, "tick.bin")
        run(["as", "--32", "-o", obj, CONTEXT_DIR / "tick.S"], what="as (tick.S)")
        run(["ld", "-m", "elf_i386", "-Ttext", "0x7c00", "--oformat", "binary", "-o", binary, obj],
            what="ld (tick.S)")
        sector = binary.read_bytes()
    if len(sector) != 512 or sector[510:] != b"\x55\xaa":
        raise LabError(f"tick.S assembled to {len(sector)} bytes without a boot signature at the end",
                       "tick.S must assemble to exactly one 512-byte sector ending in 0xaa55")
    destination.write_bytes(sector + bytes(1024 * 1024 - len(sector)))


def build_hypervisor_image(base_ref: str, image_ref: str, image_hash: str) -> None:
    ensure_packages({"as": "binutils", "ld": "binutils"})
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    log_path = BUILD_DIR / f"image-{image_ref.rsplit(':', 1)[1]}.log"
    started = time.monotonic()
    with tempfile.TemporaryDirectory(dir=BUILD_DIR, prefix="context-") as context:
        for path in IMAGE_CONTEXT_DIR.iterdir():
            shutil.copy2(path, context)
        assemble_guest_disk(Path(context, "tick.img"))
        result = docker("build", "--build-arg", f"HVLAB_BASE={base_ref}",
                        "--label", f"{INPUTS_LABEL}={image_hash}", "-t", image_ref, context,
                        check=False, timeout=900, env=dict(os.environ, DOCKER_BUILDKIT="0"))
    log_path.write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        raise LabError(f"building {image_ref} failed: {tail(log_path)}", f"see {log_path}")
    log(f"built {image_ref} in {time.monotonic() - started:.1f} s")


def remove_old_images(keep: set[str]) -> None:
    """Drop earlier builds (other tags) that no container uses; ignore those still in use."""
    for repository in (IMAGE_REPOSITORY, BASE_REPOSITORY):
        result = docker("image", "ls", "--format", "{{.Repository}}:{{.Tag}}", repository, check=False)
        for reference in result.stdout.split():
            if reference not in keep and not reference.endswith(":latest"):
                docker("image", "rm", reference, check=False)


def ensure_image() -> str:
    """Build the images whose inputs changed, reuse the others; return the hypervisor image."""
    base_ref, image_ref, image_hash = image_names()
    if image_exists(image_ref, image_hash):
        log(f"reusing {image_ref}")
    else:
        if image_exists(base_ref):
            log(f"reusing {base_ref}")
        else:
            build_base_image(base_ref)
        build_hypervisor_image(base_ref, image_ref, image_hash)
        remove_old_images({base_ref, image_ref})
    docker("tag", image_ref, IMAGE_LATEST)
    return image_ref


# --------------------------------------------------------------------------- lab objects


class Rollback:
    """Undo steps of a run, applied in reverse order if the run fails."""

    def __init__(self):
        self.steps = []

    def add(self, what, action, *args):
        self.steps.append((what, action, args))

    def undo(self):
        for what, action, args in reversed(self.steps):
            log(f"rolling back: {what}")
            try:
                action(*args)
            except Exception as error:  # keep undoing the rest
                log(f"  could not {what}: {error}")
        self.steps.clear()


def lab_containers(all_states=True) -> list[dict]:
    """Lab containers: [{name, id, state, image, ip}] sorted by name."""
    args = ["ps", "--filter", f"label={LABEL}=lab", "--format", "{{.Names}}"]
    if all_states:
        args.insert(1, "--all")
    names = docker(*args).stdout.split()
    if not names:
        return []
    inspected = json.loads(docker("inspect", *names).stdout)
    containers = []
    for item in inspected:
        networks = item["NetworkSettings"].get("Networks") or {}
        containers.append({
            "name": item["Name"].lstrip("/"),
            "id": item["Id"],
            "state": item["State"]["Status"],
            "image": item["Config"]["Image"],
            "image_id": item["Image"],
            "ip": (networks.get(NETWORK) or {}).get("IPAddress") or None,
        })
    return sorted(containers, key=lambda c: c["name"])


def running_lab_hosts() -> list[str]:
    return [c["name"] for c in lab_containers(all_states=False) if c["name"] in HOST_NAMES]


def ensure_network(rollback: Rollback) -> None:
    result = docker("network", "inspect", NETWORK, check=False)
    if result.returncode == 0:
        network = json.loads(result.stdout)[0]
        subnets = [c.get("Subnet") for c in (network.get("IPAM") or {}).get("Config") or []]
        if (network.get("Labels") or {}).get(LABEL) != "lab":
            raise LabError(f"a docker network named {NETWORK!r} exists and is not the lab's",
                           f"remove or rename it (`docker network rm {NETWORK}`)")
        if str(SUBNET) not in subnets or not network.get("Internal"):
            raise LabError(f"the lab network {NETWORK!r} has subnets {subnets} / internal="
                           f"{network.get('Internal')}, expected {SUBNET} internal",
                           "run `lab/hvlab down` and `lab/hvlab up` again")
        return
    rollback.add(f"remove network {NETWORK}", docker, "network", "rm", NETWORK)
    docker("network", "create", "--internal", "--subnet", str(SUBNET), "--gateway", GATEWAY,
           "--label", f"{LABEL}=lab", NETWORK,
           what=f"docker network create {NETWORK} ({SUBNET})")


def host_uuid(name: str) -> str:
    """Stable, distinct libvirt host UUID per lab host."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"hvlab:{name}"))


def ensure_ssh_key() -> None:
    SSH_DIR.mkdir(parents=True, exist_ok=True)
    SSH_DIR.chmod(0o700)
    if not SSH_KEY.exists() or not SSH_KEY.with_suffix(".pub").exists():
        ensure_packages({"ssh-keygen": "openssh-client"})
        SSH_KEY.unlink(missing_ok=True)
        SSH_KEY.with_suffix(".pub").unlink(missing_ok=True)
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "hvlab", "-f", SSH_KEY],
            what="ssh-keygen")


def start_host(name: str, image_ref: str, rollback: Rollback) -> None:
    # Registered first: `docker run` can fail after it created the container.
    rollback.add(f"remove container {name}", docker, "rm", "--force", name)
    try:
        docker("run", "--detach", "--name", name, "--hostname", name,
               "--network", NETWORK, "--ip", host_ip(name), "--privileged",
               "--label", f"{LABEL}=lab", "--label", f"{HOST_LABEL}={name}",
               "--env", f"HVLAB_HOST_UUID={host_uuid(name)}",
               "--volume", f"{SHARED_DIR}:{SHARED_IN_CONTAINER}",
               "--volume", f"{SSH_DIR}:/etc/hvlab/ssh:ro",
               image_ref, what=f"docker run {name}")
    except LabError as error:
        error.fix = error.fix or (f"check what else uses the name {name} or the address "
                                  f"{host_ip(name)} (`docker network inspect {NETWORK}`); the "
                                  "lab was left as it was before this run")
        raise


def query_host(name: str, *args, input_text=None, timeout=120) -> dict:
    """Run hvlab_query.py in a lab host; its JSON answer (with "error" on failure)."""
    interactive = ["--interactive"] if input_text is not None else []
    result = docker("exec", *interactive, name, "/usr/bin/python3", "-I", QUERY_TOOL, *args, check=False,
                    input_text=input_text, timeout=timeout)
    try:
        answer = json.loads(result.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        answer = {"error": (result.stderr or result.stdout).strip() or f"exit {result.returncode}"}
    if result.returncode != 0 and not isinstance(answer, dict):
        answer = {"error": str(answer)}
    if result.returncode != 0:
        answer.setdefault("error", f"exit {result.returncode}")
    return answer


def wait_libvirtd(names: list[str]) -> None:
    failures = {}

    def wait_one(name):
        deadline = time.monotonic() + LIBVIRTD_TIMEOUT
        answer = {}
        while time.monotonic() < deadline:
            answer = query_host(name, "info", timeout=60)
            if answer.get("libvirtd") and "error" not in answer:
                if tcp_open(host_ip(name), 22) and tcp_open(host_ip(name), 16509):
                    return
                answer = {"error": "sshd (22) or libvirtd (16509) not reachable from this machine"}
            time.sleep(0.5)
        failures[name] = answer.get("error", "no answer")

    threads = [threading.Thread(target=wait_one, args=(n,)) for n in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        detail = "; ".join(f"{n}: {e}" for n, e in sorted(failures.items()))
        raise LabError(f"lab hosts not ready within {LIBVIRTD_TIMEOUT} s: {detail}",
                       "look at `docker logs hvN` and /var/log/libvirt in the container")


def tcp_open(address: str, port: int, timeout: float = 2.0) -> bool:
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True
    except OSError:
        return False


def ensure_shared_disk(host: str) -> None:
    """Copy the guest disk from the image into the shared directory if it differs."""
    SHARED_DIR.mkdir(parents=True, exist_ok=True)
    SHARED_DIR.chmod(0o755)
    target = SHARED_DIR / "tick.img"
    fresh = SHARED_DIR / ".tick.img.new"
    fresh.unlink(missing_ok=True)
    docker("cp", f"{host}:/usr/share/hvlab/tick.img", str(fresh))
    if target.exists() and target.read_bytes() == fresh.read_bytes():
        fresh.unlink()
        return
    fresh.chmod(0o444)
    os.replace(fresh, target)


def render_inventory(hosts, key_path_from_inventory_dir: str) -> str:
    lines = [
        "---",
        "# Ansible inventory of the hypervisor lab (lab/hvlab, docs/lab.md).",
        "# lab/inventory/hosts.yml is the default two-host lab; `lab/hvlab up` refuses to run if",
        "# it differs from what lab/hvlab would write. `lab/hvlab inventory` prints the inventory",
        "# of the running lab (any number of hosts).",
        "all:",
        "  children:",
        "    hypervisors:",
        "      hosts:",
    ]
    for name in hosts:
        lines += [f"        {name}:", f"          ansible_host: {host_ip(name)}"]
    lines += [
        "      vars:",
        "        ansible_user: root",
        f"        ansible_ssh_private_key_file: \"{{{{ inventory_dir }}}}/{key_path_from_inventory_dir}\"",
        "        ansible_ssh_common_args: -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR",
        "        ansible_python_interpreter: /usr/bin/python3",
        "        # libvirt URI of each host as seen from the other lab hosts (live migration target,",
        "        # TLS set up by `lab/hvlab up` with the migration_transport role)",
        "        lab_libvirt_uri: \"qemu+tls://{{ inventory_hostname }}/system\"",
        "        lab_libvirt_ssh_uri: \"qemu+ssh://root@{{ inventory_hostname }}/system\"",
        "",
    ]
    return "\n".join(lines)


def transport_configured(hosts) -> bool:
    """Every host has the TLS transport's local fact, and the lab's CA is still there."""
    if not (TRANSPORT_CA_DIR / "ca.pem").is_file():
        return False
    for name in hosts:
        fact = docker("exec", name, "cat", TRANSPORT_FACT, check=False)
        try:
            if fact.returncode != 0 or json.loads(fact.stdout).get("mode") != "tls":
                return False
        except ValueError:
            return False
    return True


def ensure_transport(hosts) -> None:
    """TLS migration between the lab hosts, from the collection's migration_transport role.

    The TCP listener of the lab image stays on for the lab's own tools (status, the event
    source's watch from the controller); migrations use qemu+tls:// like production."""
    if transport_configured(hosts):
        return
    venv_playbook = REPO_DIR / ".venv" / "bin" / "ansible-playbook"
    playbook = str(venv_playbook) if venv_playbook.exists() else which("ansible-playbook")
    if not playbook:
        raise LabError("ansible-playbook is missing: the lab sets up TLS migration between its hosts "
                       "with the collection's migration_transport role",
                       "run `make venv` in the checkout (or put ansible-core on PATH), then `lab/hvlab up` again")
    collections = run([REPO_DIR / "tools" / "collection-link"], what="tools/collection-link").stdout.strip()
    env = {**os.environ, "ANSIBLE_COLLECTIONS_PATH": collections, "ANSIBLE_FORCE_COLOR": "0",
           "ANSIBLE_CONFIG": str(REPO_DIR / "ansible.cfg")}
    extra = {"migration_transport_mode": "tls", "migration_transport_ca_dir": str(TRANSPORT_CA_DIR),
             "migration_transport_become": False, "ansible_python_interpreter": "/usr/bin/python3"}
    log(f"setting up TLS migration between {', '.join(hosts)} (playbooks/migration_transport.yml)")
    started = time.monotonic()
    run([playbook, "-i", GENERATED_INVENTORY, TRANSPORT_PLAYBOOK, "-e", json.dumps(extra)],
        timeout=TRANSPORT_TIMEOUT, env=env, what="the migration_transport role on the lab hosts")
    log(f"TLS migration set up in {time.monotonic() - started:.1f} s")


def write_generated_inventory(hosts) -> None:
    GENERATED_INVENTORY.parent.mkdir(parents=True, exist_ok=True)
    GENERATED_INVENTORY.write_text(render_inventory(hosts, "../ssh/id_ed25519"))


@contextlib.contextmanager
def lab_lock():
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    with open(LOCK_FILE, "a+") as handle:
        deadline = time.monotonic() + LOCK_TIMEOUT
        announced = False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not announced:
                    handle.seek(0)
                    log(f"waiting for another lab/hvlab run ({handle.read().strip() or 'unknown'})")
                    announced = True
                if time.monotonic() > deadline:
                    raise LabError(f"another lab/hvlab run held {LOCK_FILE} for {LOCK_TIMEOUT} s",
                                   "wait for it to finish or stop it") from None
                time.sleep(1)
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}: {' '.join(sys.argv[1:])}\n")
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            fcntl.flock(handle, fcntl.LOCK_UN)


class Interrupted(Exception):
    pass


def raise_interrupted(signum, _frame):
    raise Interrupted(f"interrupted by signal {signum}")


# --------------------------------------------------------------------------- commands


def prepare_docker(rollback: Rollback, *, for_lab: bool) -> DaemonState:
    """Checks (no changes), then packages and dockerd. Returns the daemon state."""
    check_docker_host_env()
    state = DaemonState()
    check_daemon_usable(state)
    image_ref = image_names()[1]
    images_present = image_known_offline(image_ref) or (state.answering and image_exists(image_ref))
    data_root = Path((state.info or {}).get("DockerRootDir") or docker_data_root())
    needs = [(STATE_DIR, 64, "lab state")]
    if images_present:
        needs.append((data_root, MIN_FREE_RUN_MIB, "lab containers and logs"))
    else:
        needs.append((data_root, MIN_FREE_BUILD_DOCKER_MIB, "building the lab images"))
        needs.append((Path(tempfile.gettempdir()), MIN_FREE_BUILD_TMP_MIB, "the mmdebstrap chroot"))
    check_disk(needs)
    if for_lab:
        check_subnet_free()
    # --- changes start here
    if not state.answering:
        ensure_packages({"dockerd": "docker.io", "docker": "docker.io", "iptables": "iptables"})
        start_dockerd(rollback)
        state = DaemonState()
    return state


def cmd_image(_args) -> int:
    check_root()
    with lab_lock():
        rollback = Rollback()
        try:
            prepare_docker(rollback, for_lab=False)
            image_ref = ensure_image()
        except BaseException:
            rollback.undo()
            raise
    print(image_ref)
    return 0


def cmd_up(args) -> int:
    check_hosts_count(args.hosts)
    check_root()
    check_static_inventory()
    wanted = list(HOST_NAMES[:args.hosts])
    with lab_lock():
        rollback = Rollback()
        try:
            prepare_docker(rollback, for_lab=True)
            existing = {c["name"]: c for c in lab_containers()}
            for name in wanted:
                other = docker("inspect", "--format", "{{json .Config.Labels}}", name, check=False)
                if other.returncode == 0 and name not in existing:
                    raise LabError(f"a container named {name} exists and is not part of the lab",
                                   f"remove or rename it (`docker rm -f {name}`); the lab needs "
                                   f"the names hv1..hv{MAX_HOSTS}")
            image_ref = ensure_image()
            image_id = json.loads(docker("image", "inspect", image_ref).stdout)[0]["Id"]
            ensure_ssh_key()
            SHARED_DIR.mkdir(parents=True, exist_ok=True)
            SHARED_DIR.chmod(0o755)
            ensure_network(rollback)
            started = []
            for name in wanted:
                current = existing.get(name)
                if current and current["state"] == "running":
                    if current["image_id"] == image_id:
                        continue
                    guests = docker("exec", name, "virsh", "-c", "qemu:///system", "list",
                                    "--all", "--name", check=False)
                    if guests.returncode != 0 or guests.stdout.split():
                        log(f"{name} keeps running an earlier lab image because it holds guests; "
                            "`lab/hvlab down` and `lab/hvlab up` give it the current one")
                        continue
                    log(f"{name} runs an earlier lab image and holds no guests: recreating it")
                elif current:
                    log(f"{name} is {current['state']}: recreating it")
                if current:
                    docker("rm", "--force", name)
                start_host(name, image_ref, rollback)
                started.append(name)
            hosts = running_lab_hosts()
            if started:
                log(f"started {', '.join(started)}; waiting for libvirtd")
            wait_libvirtd(hosts)
            ensure_shared_disk(hosts[0])
            write_generated_inventory(hosts)
            ensure_transport(hosts)
            write_json(LAB_RECORD, {"hosts": hosts, "image": image_ref, "network": NETWORK,
                                    "subnet": str(SUBNET)})
        except BaseException:
            rollback.undo()
            raise
    extra = [h for h in hosts if h not in wanted]
    print(f"lab up: {', '.join(f'{h} ({host_ip(h)})' for h in hosts)}; image {image_ref}")
    if extra:
        print(f"note: {', '.join(extra)} kept running from an earlier `up --hosts`")
    print(f"inventory: {GENERATED_INVENTORY}")
    return 0


def collect_status() -> dict:
    state = DaemonState()
    status = {"up": False, "dockerd": state.as_dict(), "network": NETWORK, "subnet": str(SUBNET),
              "image": None, "inventory": None, "hosts": []}
    if not state.answering:
        return status
    containers = lab_containers()
    answers = {}

    def ask(container):
        if container["state"] == "running":
            answers[container["name"]] = query_host(container["name"], "info", timeout=60)

    threads = [threading.Thread(target=ask, args=(c,)) for c in containers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for container in containers:
        name = container["name"]
        answer = answers.get(name, {})
        ip = container["ip"]
        status["hosts"].append({
            "name": name,
            "ip": ip,
            "container_state": container["state"],
            "image": container["image"],
            "libvirtd": bool(answer.get("libvirtd")) and "error" not in answer,
            "libvirt_version": answer.get("libvirt_version"),
            "host_uuid": answer.get("host_uuid"),
            "libvirt_uri": TRANSPORT_URI.format(host=name),
            "ssh": bool(ip) and tcp_open(ip, 22),
            "libvirt_tcp": bool(ip) and tcp_open(ip, 16509),
            "guests": [dict(g, host=name) for g in answer.get("guests", [])],
            "error": answer.get("error"),
        })
    hosts = status["hosts"]
    status["up"] = bool(hosts) and all(h["container_state"] == "running" and h["libvirtd"] for h in hosts)
    if hosts:
        status["image"] = hosts[0]["image"]
    if GENERATED_INVENTORY.exists():
        status["inventory"] = str(GENERATED_INVENTORY)
    return status


def cmd_status(args) -> int:
    check_root()
    status = collect_status()
    if args.json:
        print(json.dumps(status, indent=2))
        return 0 if status["up"] else 3
    daemon = status["dockerd"]
    if not daemon["running"]:
        print("lab: down (dockerd not running)")
        return 3
    print(f"lab: {'up' if status['up'] else 'NOT up'} -- {len(status['hosts'])} host(s), network "
          f"{status['network']} {status['subnet']}, image {status['image']}")
    print(f"dockerd: pid {daemon['pid']}, {'started by lab/hvlab' if daemon['started_by_lab'] else 'not started by lab/hvlab'}, "
          f"default runtime {daemon['default_runtime']}")
    if status["hosts"]:
        row = "{:<5} {:<14} {:<9} {:<9} {:<4} {:<7} {}"
        print(row.format("HOST", "ADDRESS", "STATE", "LIBVIRTD", "SSH", "GUESTS", "LIBVIRT URI"))
        for host in status["hosts"]:
            print(row.format(host["name"], host["ip"] or "-", host["container_state"],
                             host["libvirt_version"] or "NO", "yes" if host["ssh"] else "NO",
                             len(host["guests"]), host["libvirt_uri"]))
            if host["error"]:
                print(f"      error: {host['error']}")
    if status["inventory"]:
        print(f"inventory: {status['inventory']}")
    return 0 if status["up"] else 3


def cmd_down(args) -> int:
    check_root()
    check_docker_host_env()
    with lab_lock():
        state = DaemonState()
        notes = []
        if args.purge and not state.answering and not state.pids and which("dockerd"):
            start_dockerd(Rollback())  # only to delete the images; stopped again below
            state = DaemonState()
        if state.answering:
            containers = lab_containers()
            if containers:
                docker("rm", "--force", *[c["name"] for c in containers])
                notes.append(f"removed {', '.join(c['name'] for c in containers)}")
            if docker("network", "inspect", NETWORK, check=False).returncode == 0:
                docker("network", "rm", NETWORK)
                notes.append(f"removed network {NETWORK}")
            if args.purge:
                for repository in (IMAGE_REPOSITORY, BASE_REPOSITORY):
                    refs = docker("image", "ls", "--format", "{{.Repository}}:{{.Tag}}",
                                  repository).stdout.split()
                    for ref in refs:
                        if docker("image", "rm", ref, check=False).returncode == 0:
                            notes.append(f"removed image {ref}")
                        else:
                            notes.append(f"kept image {ref}: containers still use it")
        if read_json(DOCKERD_RECORD):
            others = []
            if state.answering and state.ours:
                others = docker("ps", "--format", "{{.Names}}").stdout.split()
            if others:
                notes.append(f"dockerd (pid {state.ours_pid}, started by lab/hvlab) left running: "
                             f"other containers still use it ({', '.join(others)}); run "
                             "`lab/hvlab down` again once they are gone")
            else:
                notes += stop_dockerd()
        elif state.answering:
            notes.append("dockerd was not started by lab/hvlab: left running")
        LAB_RECORD.unlink(missing_ok=True)
        shutil.rmtree(GENERATED_INVENTORY.parent, ignore_errors=True)
        shutil.rmtree(TRANSPORT_CA_DIR, ignore_errors=True)
        if args.purge:
            for path in (SSH_DIR, SHARED_DIR, BUILD_DIR):
                shutil.rmtree(path, ignore_errors=True)
            DOCKERD_LOG.unlink(missing_ok=True)
            notes.append("removed lab/state contents")
    print("lab down" + "".join(f"\n  {n}" for n in notes))
    return 0


def cmd_inventory(_args) -> int:
    if not GENERATED_INVENTORY.exists():
        raise LabError("the lab is not up, so there is no inventory of a running lab",
                       f"run `lab/hvlab up` (the default two-host lab matches {STATIC_INVENTORY})")
    print(GENERATED_INVENTORY)
    return 0


def guests_by_host(hosts) -> dict[str, list[dict]]:
    found = {}

    def ask(name):
        found[name] = query_host(name, "info", timeout=60)

    threads = [threading.Thread(target=ask, args=(h,)) for h in hosts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for name, answer in found.items():
        if "error" in answer:
            raise LabError(f"libvirtd on {name} does not answer: {answer['error']}",
                           "check `lab/hvlab status`; `lab/hvlab down` and `lab/hvlab up` rebuild the lab")
    return {name: [dict(g, host=name, serial_log=f"/var/log/libvirt/qemu/{g['name']}-serial.log")
                   for g in found[name]["guests"]] for name in hosts}


def require_running_lab() -> list[str]:
    state = DaemonState()
    hosts = running_lab_hosts() if state.answering else []
    if not hosts:
        raise LabError("the lab is not up (no running lab hosts)", "run `lab/hvlab up` first")
    return hosts


def render_guest(name: str) -> str:
    text = GUEST_TEMPLATE.read_text()
    text = text.replace("{{ guest_name }}", name).replace("{{ guest_disk }}", GUEST_DISK)
    if "{{" in text or "{%" in text:
        raise LabError(f"{GUEST_TEMPLATE} has placeholders other than guest_name and guest_disk",
                       "keep the template to those two placeholders")
    return text


def cmd_guests_create(args) -> int:
    if args.host not in HOST_NAMES:
        raise LabError(f"unknown host {args.host!r}: lab hosts are named hv1..hv{MAX_HOSTS}",
                       "pass --host with the name of a running lab host (see `lab/hvlab status`)",
                       code=2)
    if not 1 <= args.count <= MAX_GUESTS_PER_CALL:
        raise LabError(f"--count {args.count} is out of range", f"pass --count from 1 to "
                       f"{MAX_GUESTS_PER_CALL} (call again for more guests)", code=2)
    if not GUEST_PREFIX_RE.match(args.prefix):
        raise LabError(f"--prefix {args.prefix!r} is not a usable guest name prefix",
                       "use a letter followed by up to 31 letters, digits, '-' or '_'", code=2)
    check_root()
    with lab_lock():
        hosts = require_running_lab()
        if args.host not in hosts:
            raise LabError(f"unknown host {args.host!r}: it is not running in the lab (running: "
                           f"{', '.join(hosts)})",
                           f"pass one of {', '.join(hosts)}, or start more hosts with "
                           f"`lab/hvlab up --hosts {int(args.host[2:])}`", code=2)
        taken = {g["name"] for guests in guests_by_host(hosts).values() for g in guests}
        names, number = [], 1
        while len(names) < args.count:
            candidate = f"{args.prefix}-{number}"
            if candidate not in taken:
                names.append(candidate)
            number += 1
        if not (SHARED_DIR / "tick.img").exists():
            ensure_shared_disk(args.host)
        answer = query_host(args.host, "create",
                            input_text=json.dumps([{"name": n, "xml": render_guest(n)} for n in names]))
        if "error" in answer:
            raise LabError(f"creating guests on {args.host} failed: {answer['error']}",
                           "see `lab/hvlab status`; no guest of this call was kept")
    created = [dict(g, host=args.host, serial_log=f"/var/log/libvirt/qemu/{g['name']}-serial.log")
               for g in answer]
    if args.json:
        print(json.dumps(created, indent=2))
    else:
        for guest in created:
            print(f"{guest['name']} {guest['host']} {guest['state']}")
    return 0


def cmd_guests_list(args) -> int:
    check_root()
    hosts = require_running_lab()
    guests = [g for name in hosts for g in guests_by_host([name])[name]]
    if args.json:
        print(json.dumps(guests, indent=2))
        return 0
    row = "{:<24} {:<5} {:<10} {}"
    print(row.format("NAME", "HOST", "STATE", "PERSISTENT"))
    for guest in guests:
        print(row.format(guest["name"], guest["host"], guest["state"], "yes" if guest["persistent"] else "no"))
    return 0


def cmd_guests_delete(args) -> int:
    bad = [n for n in args.names if not GUEST_NAME_RE.match(n)]
    if bad:
        raise LabError(f"not a guest name: {', '.join(map(repr, bad))}",
                       "pass guest names as `lab/hvlab guests list` shows them", code=2)
    check_root()
    with lab_lock():
        hosts = require_running_lab()
        where = {g["name"]: h for h, guests in guests_by_host(hosts).items() for g in guests}
        unknown = [n for n in args.names if n not in where]
        if unknown:
            raise LabError(f"no such guest in the lab: {', '.join(unknown)}",
                           "see `lab/hvlab guests list`", code=2)
        for name in args.names:
            answer = query_host(where[name], "delete", name)
            if "error" in answer:
                raise LabError(f"deleting {name} on {where[name]} failed: {answer['error']}")
            print(f"deleted {name} ({where[name]})")
    return 0


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="lab/hvlab", description=__doc__.split("\n\n", maxsplit=1)[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    up = commands.add_parser("up", help="start or reuse the lab")
    up.add_argument("--hosts", type=int, default=DEFAULT_HOSTS,
                    help=f"number of hypervisor hosts, 1..{MAX_HOSTS} (default {DEFAULT_HOSTS})")
    up.set_defaults(func=cmd_up)
    status = commands.add_parser("status", help="show the lab")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_status)
    down = commands.add_parser("down", help="remove the lab and restore the machine")
    down.add_argument("--purge", action="store_true", help="also remove the images and lab/state")
    down.set_defaults(func=cmd_down)
    image = commands.add_parser("image", help="build or reuse the hypervisor image; print its name")
    image.set_defaults(func=cmd_image)
    inventory = commands.add_parser("inventory", help="print the running lab's inventory path")
    inventory.set_defaults(func=cmd_inventory)
    guests = commands.add_parser("guests", help="test guests")
    guest_commands = guests.add_subparsers(dest="guests_command", required=True, metavar="ACTION")
    create = guest_commands.add_parser("create", help="define and start K test guests on a host")
    create.add_argument("--host", required=True)
    create.add_argument("--count", type=int, default=1)
    create.add_argument("--prefix", default="tick")
    create.add_argument("--json", action="store_true")
    create.set_defaults(func=cmd_guests_create)
    listing = guest_commands.add_parser("list", help="list the guests of all lab hosts")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=cmd_guests_list)
    delete = guest_commands.add_parser("delete", help="destroy and undefine guests")
    delete.add_argument("names", nargs="+", metavar="NAME")
    delete.set_defaults(func=cmd_guests_delete)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, raise_interrupted)
    try:
        return args.func(args)
    except LabError as error:
        print(f"hvlab: error: {error.problem}", file=sys.stderr)
        if error.fix:
            print(f"hvlab: fix: {error.fix}", file=sys.stderr)
        return error.code
    except (Interrupted, KeyboardInterrupt) as error:
        print(f"hvlab: stopped: {error or 'interrupted'}; changes of this run were undone",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
