# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""kvm_ras.poison_guard.migration_preflight, run for real by ansible-playbook (in check mode)
against libvirt's own test driver (python3-libvirt 9.0.0 from Debian, which `make deps`
installs), so every answer is a real libvirt object's answer, with no daemon.

The test driver loads a whole host from an XML file (``test:///path/node.xml``): the source
runs one VM with two disks and three interfaces; the target has the network ``default``, the
bridge ``br0`` and a storage pool holding one of the two disk files, and lacks the network
``prod``. What the test driver cannot do is real too and shows the fail-closed rule: it
implements neither virConnectCompareHypervisorCPU nor virConnectGetDomainCapabilities, and its
capabilities list no machine types, so the VM is never usable there and the reasons say why.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

VENV_BIN = Path(sys.executable).parent
SYSTEM_PYTHON = "/usr/bin/python3"

NODE_HEAD = """<node>
  <cpu><nodes>1</nodes><sockets>1</sockets><cores>2</cores><threads>1</threads>
    <active>2</active><mhz>2000</mhz><model>i686</model></cpu>
  <memory>4194304</memory>
"""

SOURCE_NODE = NODE_HEAD + """  <domain type='test'>
    <name>web01</name>
    <uuid>7d3c1a52-52f6-4b40-9c55-0c5a4c1e0f11</uuid>
    <memory>65536</memory>
    <vcpu>1</vcpu>
    <os><type arch='i686' machine='pc'>hvm</type></os>
    <cpu mode='custom' match='exact'><model fallback='forbid'>qemu64</model></cpu>
    <devices>
      <disk type='file' device='disk'><source file='/guest/diskimage1'/><target dev='vda' bus='virtio'/></disk>
      <disk type='file' device='disk'><source file='/guest/elsewhere.img'/><target dev='vdb' bus='virtio'/></disk>
      <interface type='network'><mac address='52:54:00:00:00:01'/><source network='default'/></interface>
      <interface type='network'><mac address='52:54:00:00:00:02'/><source network='prod'/></interface>
      <interface type='bridge'><mac address='52:54:00:00:00:03'/><source bridge='br0'/></interface>
    </devices>
  </domain>
  <network><name>default</name><bridge name='virbr0'/><ip address='192.168.122.1' netmask='255.255.255.0'/></network>
  <network><name>prod</name><bridge name='virbr1'/><ip address='192.168.123.1' netmask='255.255.255.0'/></network>
</node>
"""

TARGET_NODE = NODE_HEAD + """  <network><name>default</name><bridge name='virbr9'/>
    <ip address='192.168.99.1' netmask='255.255.255.0'/></network>
  <interface type='bridge' name='br0'><start mode='onboot'/>
    <bridge><interface type='ethernet' name='eth0'/></bridge></interface>
  <pool type='dir'><name>images</name><target><path>/guest</path></target>
    <volume type='file'><name>diskimage1</name><capacity unit='bytes'>1000000</capacity>
      <allocation unit='bytes'>1000000</allocation><target><path>/guest/diskimage1</path></target></volume>
  </pool>
</node>
"""


def _has_libvirt():
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        return False
    return subprocess.run([SYSTEM_PYTHON, "-c", "import libvirt"], capture_output=True, check=False).returncode == 0


def _run(tmp_path, tasks):
    playbook = tmp_path / "play.yml"
    playbook.write_text(json.dumps([{"name": "preflight", "hosts": "localhost", "gather_facts": False,
                                     "tasks": tasks}]), encoding="utf-8")
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_LOCAL_TEMP=str(tmp_path / "tmp"),
               ANSIBLE_PYTHON_INTERPRETER=SYSTEM_PYTHON)
    env.pop("ANSIBLE_CONFIG", None)
    proc = subprocess.run([str(VENV_BIN / "ansible-playbook"), "-i", "localhost,", "-c", "local", "--check",
                           str(playbook)], capture_output=True, text=True, env=env, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def _keep(register, path):
    return {"name": "Keep " + register, "ansible.builtin.copy": {
        "content": "{{ %s | to_json }}" % register, "dest": str(path), "mode": "0644"}, "check_mode": False}


@pytest.mark.skipif(not _has_libvirt(), reason="needs Debian's python3-libvirt (make deps installs it)")
def test_preflight_against_the_libvirt_test_driver(tmp_path):
    (tmp_path / "source.xml").write_text(SOURCE_NODE, encoding="utf-8")
    (tmp_path / "target.xml").write_text(TARGET_NODE, encoding="utf-8")
    source_uri = "test://%s/source.xml" % tmp_path
    targets = {"hv2": "test://%s/target.xml" % tmp_path, "hv3": "qemu+tcp://127.0.0.1:1/system", "hv4": None}
    facts = [{"item": "hv2", "paths": {"/guest/elsewhere.img": {"exists": True, "size": 5}}}]
    _run(tmp_path, [
        {"name": "Preflight", "kvm_ras.poison_guard.migration_preflight": {
            "uri": source_uri, "targets": targets}, "register": "plain"},
        _keep("plain", tmp_path / "plain.json"),
        {"name": "Preflight with the target's view of the disk paths", "kvm_ras.poison_guard.migration_preflight": {
            "uri": source_uri, "targets": targets, "vms": ["7D3C1A52-52F6-4B40-9C55-0C5A4C1E0F11"],
            "target_facts": facts, "planned": {"web01": "hv2"}}, "register": "with_facts"},
        _keep("with_facts", tmp_path / "with_facts.json"),
        {"name": "A VM the source does not run", "kvm_ras.poison_guard.migration_preflight": {
            "uri": source_uri, "targets": targets, "vms": ["nope"]},
         "register": "unknown_vm", "ignore_errors": True},
        _keep("unknown_vm", tmp_path / "unknown_vm.json"),
        {"name": "No targets", "kvm_ras.poison_guard.migration_preflight": {"uri": source_uri, "targets": {}},
         "register": "no_targets", "ignore_errors": True},
        _keep("no_targets", tmp_path / "no_targets.json"),
    ])
    plain = json.loads((tmp_path / "plain.json").read_text())
    assert plain["changed"] is False and not plain.get("failed")
    assert plain["source"]["vms"] == ["web01"] and plain["source"]["libvirt_version"] == "9.0.0"

    targets_out = plain["targets"]
    assert targets_out["hv2"]["usable"] is True and targets_out["hv2"]["libvirt_version"] == "9.0.0"
    assert targets_out["hv3"]["usable"] is False
    assert "unable to connect to server at '127.0.0.1:1': Connection refused" in targets_out["hv3"]["reasons"][0]
    assert "migration_transport" in targets_out["hv3"]["fix"]
    assert targets_out["hv4"]["usable"] is False and "no migration URI" in targets_out["hv4"]["reasons"][0]

    on_hv2 = plain["vms"]["web01"]["hv2"]
    reasons = " | ".join(on_hv2["reasons"])
    assert on_hv2["usable"] is False
    assert "no libvirt network 'prod'" in reasons                # 'default' exists on the target: no reason
    assert "'default'" not in reasons and "br0" not in reasons   # the bridge is found through the interface driver
    assert "/guest/elsewhere.img (disk vdb) could not be found on hv2" in reasons
    assert "/guest/diskimage1" not in reasons                    # a volume of the target's pool
    assert "virConnectCompareHypervisorCPU" in reasons           # the test driver cannot compare: fail closed
    assert "no machine type pc" in reasons
    assert plain["vms"]["web01"]["hv3"]["usable"] is False
    assert plain["summary"]["vms_without_target"] == ["web01"] and plain["summary"]["usable_targets"] == ["hv2"]
    assert any(line.startswith("target hv3 (qemu+tcp://127.0.0.1:1/system): usable: no, why:")
               for line in plain["summary"]["lines"])

    with_facts = json.loads((tmp_path / "with_facts.json").read_text())
    assert "elsewhere.img" not in " | ".join(with_facts["vms"]["web01"]["hv2"]["reasons"])
    planned = with_facts["summary"]["planned"]
    assert planned["ok"] is False and planned["problems"][0].startswith("web01 -> hv2 no longer passes the preflight")
    assert "planned" not in plain["summary"]

    unknown_vm = json.loads((tmp_path / "unknown_vm.json").read_text())
    assert unknown_vm["failed"] and "'nope'" in unknown_vm["msg"] and "web01" in unknown_vm["msg"]
    no_targets = json.loads((tmp_path / "no_targets.json").read_text())
    assert no_targets["failed"] and "targets is empty" in no_targets["msg"]
