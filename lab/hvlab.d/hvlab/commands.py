# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The lab's commands: `image`, `up`, `status`, `down`, `inventory` (`guests` is in
guests.py)."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from .config import (
    BASE_REPOSITORY,
    BUILD_DIR,
    DOCKERD_LOG,
    DOCKERD_RECORD,
    GENERATED_INVENTORY,
    HOST_NAMES,
    IMAGE_REPOSITORY,
    LAB_RECORD,
    MAX_HOSTS,
    MIN_FREE_BUILD_DOCKER_MIB,
    MIN_FREE_BUILD_TMP_MIB,
    MIN_FREE_RUN_MIB,
    NETWORK,
    SHARED_DIR,
    SSH_DIR,
    STATE_DIR,
    STATIC_INVENTORY,
    SUBNET,
    TRANSPORT_CA_DIR,
)
from .errors import LabError
from .system import (
    Rollback,
    check_disk,
    check_root,
    ensure_packages,
    lab_lock,
    log,
    read_json,
    which,
    write_json,
)
from .dockerd import (
    DaemonState,
    check_daemon_usable,
    check_docker_host_env,
    docker,
    docker_data_root,
    start_dockerd,
    stop_dockerd,
)
from .image import ensure_image, image_exists, image_known_offline, image_names
from .network import check_subnet_free, ensure_network, host_ip
from .hosts import (
    check_hosts_count,
    collect_status,
    ensure_shared_disk,
    ensure_ssh_key,
    lab_containers,
    running_lab_hosts,
    start_host,
    wait_libvirtd,
)
from .inventory import check_static_inventory, write_generated_inventory
from .transport import ensure_transport


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
