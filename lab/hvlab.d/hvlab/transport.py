# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Live migration between the lab hosts over TLS, set up by the collection's own
migration_transport playbook with a CA kept in the lab's state."""

from __future__ import annotations

import json
import os
import time

from .config import (
    GENERATED_INVENTORY,
    REPO_DIR,
    TRANSPORT_CA_DIR,
    TRANSPORT_FACT,
    TRANSPORT_PLAYBOOK,
    TRANSPORT_TIMEOUT,
)
from .errors import LabError
from .system import log, run, which
from .dockerd import docker


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
