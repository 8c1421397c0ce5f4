# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The lab's docker network and the hosts' addresses on it."""

from __future__ import annotations

import ipaddress
import json

from .config import GATEWAY, LABEL, NETWORK, SUBNET
from .errors import LabError
from .system import Rollback, run
from .dockerd import docker


def host_ip(name: str) -> str:
    return str(SUBNET.network_address + 10 + int(name[2:]))


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
