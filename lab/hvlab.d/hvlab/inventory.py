# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The lab's Ansible inventory: the static one in lab/inventory and the one generated for
the running lab."""

from __future__ import annotations

import difflib

from .config import DEFAULT_HOSTS, GENERATED_INVENTORY, HOST_NAMES, STATIC_INVENTORY
from .errors import LabError
from .network import host_ip


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


def write_generated_inventory(hosts) -> None:
    GENERATED_INVENTORY.parent.mkdir(parents=True, exist_ok=True)
    GENERATED_INVENTORY.write_text(render_inventory(hosts, "../ssh/id_ed25519"))
