# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The evacuation end to end as a non-root operator who becomes root with sudo.

prepare.yml creates the account ``kvmops`` on both hypervisors with a NOPASSWD sudo rule, as
on most fleets. The Docker connection then runs every task as ``kvmops`` (``ansible_user``),
and the playbooks reach root only through ``become`` (``kvm_ras_become``, default true):

- as ``kvmops`` without become, libvirt's system socket refuses the account, and the run stops
  before anything changes, naming the problem;
- as ``kvmops`` with the playbook's own become, the guest that converge moved to the second
  hypervisor is evacuated back to the first one over TLS, the cordon marker is root's, and
  uncordon_host.yml (also with become) reopens the host.
Runs once, from the first hypervisor.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

testinfra_hosts = ["default-hv1"]

REPO = Path(__file__).resolve().parents[3]
BIN = Path(sys.executable).parent
GUEST = "tick1"
SOURCE = "default-hv2"  # where converge moved the guest
CORDON_FILE = "/var/lib/kvm_ras/cordon.json"


def _playbook(name, extra, check=False):
    ephemeral = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"])
    extra = dict(extra, ansible_user="kvmops", evacuate_report_dir=str(ephemeral / "sudo-reports"))
    vars_file = ephemeral / ("sudo-%s.json" % uuid.uuid4().hex)
    vars_file.write_text(json.dumps(extra))
    argv = [str(BIN / "ansible-playbook"), "-i", os.environ["MOLECULE_INVENTORY_FILE"],
            str(REPO / "playbooks" / name), "-e", "@%s" % vars_file] + (["--check"] if check else [])
    try:
        return subprocess.run(argv, capture_output=True, text=True, cwd=str(ephemeral), timeout=900, check=False)
    finally:
        vars_file.unlink()


def _docker(container, *argv):
    return subprocess.run(["docker", "exec", container, *argv], capture_output=True, text=True, timeout=60,
                          check=False)


def test_an_operator_without_root_is_refused_before_any_change(host):
    assert _docker(SOURCE, "id", "-u", "kvmops").stdout.strip() not in ("", "0")
    proc = _playbook("evacuate_host.yml", {"evacuate_source": SOURCE, "kvm_ras_become": False})
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output[-3000:]
    assert "Permission denied" in output or "permission denied" in output or "authentication" in output.lower(), \
        output[-3000:]
    assert _docker(SOURCE, "test", "-e", CORDON_FILE).returncode != 0, "cordoned although nothing could move"
    assert GUEST in _docker(SOURCE, "virsh", "-c", "qemu:///system", "list", "--name").stdout


def test_a_sudo_operator_evacuates_end_to_end(host):
    proc = _playbook("evacuate_host.yml", {"evacuate_source": SOURCE})
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    assert "qemu+tls://" in output, "the migration did not follow the TLS transport"
    assert GUEST in _docker("default-hv1", "virsh", "-c", "qemu:///system", "list", "--name").stdout
    assert GUEST not in _docker(SOURCE, "virsh", "-c", "qemu:///system", "list", "--all", "--name").stdout
    owner = _docker(SOURCE, "stat", "-c", "%U", CORDON_FILE).stdout.strip()
    assert owner == "root", "the cordon marker was not written as root: %r" % owner

    reopened = _playbook("uncordon_host.yml", {"uncordon_host": SOURCE})
    assert reopened.returncode == 0, (reopened.stdout + reopened.stderr)[-3000:]
    assert _docker(SOURCE, "test", "-e", CORDON_FILE).returncode != 0 or \
        '"cordoned": false' in _docker(SOURCE, "cat", CORDON_FILE).stdout
