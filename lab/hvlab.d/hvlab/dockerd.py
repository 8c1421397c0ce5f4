# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The docker daemon of the lab: the docker CLI, whether a running daemon can run the lab's
privileged containers (capabilities, runtime, rootless), and starting and stopping the
daemon the lab owns (with the bounded runc wrapper and the firewall policy it restores)."""

from __future__ import annotations

import contextlib
import importlib.machinery
import importlib.util
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

from .config import (
    DOCKERD_CONFIG,
    DOCKERD_LOG,
    DOCKERD_RECORD,
    DOCKERD_TIMEOUT,
    LAB_DIR,
    RUNTIME_NAME,
    RUNTIME_WRAPPER,
    RUNTIME_WRAPPER_CODE,
    STATE_DIR,
    SYSTEM_PATH,
)
from .errors import LabError
from .system import (
    Rollback,
    child_pids,
    link_exists,
    log,
    process_alive,
    processes_named,
    read_json,
    read_sysctl,
    run,
    tail,
    wait_gone,
    which,
    write_json,
)


def docker_cli() -> str:
    cli = which("docker")
    if not cli:
        raise LabError("the docker command is not installed", "run `lab/hvlab up` (it installs docker.io)")
    return cli


def docker(*args, check=True, input_text=None, timeout=600, what=None, env=None):
    return run([docker_cli(), *args], check=check, input_text=input_text, timeout=timeout,
               what=what or f"docker {args[0]}", env=env)


def check_docker_host_env() -> None:
    if os.environ.get("DOCKER_HOST") or os.environ.get("DOCKER_CONTEXT"):
        raise LabError("DOCKER_HOST/DOCKER_CONTEXT is set: the lab needs the local docker daemon "
                       "(it bind-mounts lab/state into the containers)",
                       "unset DOCKER_HOST and DOCKER_CONTEXT and run the command again")


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


def docker_data_root() -> Path:
    config = read_json(Path("/etc/docker/daemon.json")) or {}
    return Path(config.get("data-root") or "/var/lib/docker")


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
