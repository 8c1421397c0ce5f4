# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The evacuation's preflight on real libvirt, in check mode (nothing changes).

- A CPU the target cannot run: a guest whose CPU requires ``avx512f`` (``check='none'``, so
  QEMU's TCG starts it on the source without the feature, as a guest started on a newer host
  would carry a feature an older target lacks). libvirt's hypervisor CPU comparison on the
  target refuses it; the plan leaves it, naming the missing feature and the fix.
- A stock-like source with no migration transport configured: the transport's local fact is
  moved away on the source for the run, so no target gets a migration URI; the plan says so
  with the fix, the run stops before any change and the source is not cordoned.
Runs once, from the first hypervisor (no guest of converge is there any more).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

testinfra_hosts = ["default-hv1"]

REPO = Path(__file__).resolve().parents[3]
BIN = Path(sys.executable).parent
SOURCE = "default-hv1"
GUEST = "cpu-strict"
CORDON_FILE = "/var/lib/kvm_ras/cordon.json"
FACT = "/etc/ansible/facts.d/kvm_ras_migration_transport.fact"
STRICT_XML = """<domain type='qemu'>
  <name>%s</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
  <cpu mode='custom' match='exact' check='none'>
    <model fallback='allow'>qemu64</model>
    <feature policy='require' name='avx512f'/>
  </cpu>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <memballoon model='none'/>
  </devices>
</domain>
""" % GUEST


def _docker(*argv, stdin=None):
    return subprocess.run(["docker", "exec", "-i", SOURCE, *argv], input=stdin, capture_output=True, text=True,
                          timeout=120, check=False)


def _check_run(extra=None):
    ephemeral = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"])
    vars_file = ephemeral / ("preflight-%s.json" % uuid.uuid4().hex)
    vars_file.write_text(json.dumps(dict(extra or {}, evacuate_source=SOURCE)))
    argv = [str(BIN / "ansible-playbook"), "-i", os.environ["MOLECULE_INVENTORY_FILE"],
            str(REPO / "playbooks" / "evacuate_host.yml"), "-e", "@%s" % vars_file, "--check"]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, cwd=str(ephemeral), timeout=600, check=False)
    finally:
        vars_file.unlink()
    return proc.returncode, proc.stdout + proc.stderr


def test_a_vm_whose_cpu_the_target_cannot_run_is_left_with_the_reason(host):
    assert _docker("virsh", "-c", "qemu:///system", "define", "/dev/stdin", stdin=STRICT_XML).returncode == 0
    try:
        started = _docker("virsh", "-c", "qemu:///system", "start", GUEST)
        assert started.returncode == 0, started.stderr
        rc, output = _check_run()
        assert rc == 0, output[-4000:]
        flat = " ".join(output.split())
        assert "VM %s on default-hv2: usable: no" % GUEST in flat, flat[-4000:]
        assert "Host CPU does not provide required features: avx512f" in flat, flat[-4000:]
        assert "hypervisor-cpu-baseline" in flat  # the fix
        # the plan's VM table: name, status, action (the output's quoting depends on the callback)
        assert re.search(r"\b%s\s+clean\s+leave\s" % re.escape(GUEST), output), flat[-4000:]
        assert _docker("test", "-e", CORDON_FILE).returncode != 0, "check mode cordoned the source"
    finally:
        _docker("virsh", "-c", "qemu:///system", "destroy", GUEST)
        _docker("virsh", "-c", "qemu:///system", "undefine", GUEST)


def test_a_source_without_migration_transport_gets_no_target_and_is_not_cordoned(host):
    assert _docker("mv", FACT, FACT + ".away").returncode == 0, "prepare set up the transport"
    assert _docker("virsh", "-c", "qemu:///system", "define", "/dev/stdin",
                   stdin=STRICT_XML.replace(GUEST, "stock-1").replace(
                       "<feature policy='require' name='avx512f'/>", "")).returncode == 0
    try:
        assert _docker("virsh", "-c", "qemu:///system", "start", "stock-1").returncode == 0
        rc, output = _check_run()
        flat = " ".join(output.split())
        assert rc != 0, "a plan with VMs to move and no usable target must stop the run"
        assert "no migration transport" in flat, flat[-4000:]
        assert "migration_transport" in flat  # the fix names the role
        assert _docker("test", "-e", CORDON_FILE).returncode != 0, "cordoned although no VM could move"
    finally:
        _docker("mv", FACT + ".away", FACT)
        _docker("virsh", "-c", "qemu:///system", "destroy", "stock-1")
        _docker("virsh", "-c", "qemu:///system", "undefine", "stock-1")
