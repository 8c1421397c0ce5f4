# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The hypervisor containers: starting them, asking them (hvlab_query.py in the image),
waiting for libvirtd, the shared guest disk, and the lab's status."""

from __future__ import annotations

import json
import os
import threading
import time
import uuid

from .config import (
    DEFAULT_HOSTS,
    GENERATED_INVENTORY,
    HOST_LABEL,
    HOST_NAMES,
    LABEL,
    LIBVIRTD_TIMEOUT,
    MAX_HOSTS,
    NETWORK,
    QUERY_TOOL,
    SHARED_DIR,
    SHARED_IN_CONTAINER,
    SSH_DIR,
    SSH_KEY,
    SUBNET,
    TRANSPORT_URI,
)
from .errors import LabError
from .system import Rollback, ensure_packages, run, tcp_open
from .dockerd import DaemonState, docker
from .network import host_ip


def check_hosts_count(count: int) -> None:
    if not 1 <= count <= MAX_HOSTS:
        raise LabError(f"--hosts {count} is out of range: the lab has 1 to {MAX_HOSTS} hosts "
                       f"(hv1..hv{MAX_HOSTS})",
                       f"pass --hosts with a number from 1 to {MAX_HOSTS} (default {DEFAULT_HOSTS})",
                       code=2)


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
