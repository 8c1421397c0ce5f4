# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Paths, names and limits of the hypervisor lab: where its state lives, the images, the
network, the hosts and the thresholds of its checks."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path


LAB_DIR = Path(__file__).resolve().parents[2]  # lab/ (this file: lab/hvlab.d/hvlab/config.py)


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
