# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""poison_info on the hypervisor lab: real libvirtd 9.0 and real QEMU 7.2 (TCG) processes in
privileged containers, reached by ansible-playbook over ssh with the lab's inventory.

- every guest is discovered through libvirt and procfs and reported ``clean``;
- run as an unprivileged user (``become_user: nobody`` through su) every guest is ``unknown`` with the
  reason, never ``clean``;
- an unknown VM name fails with the list of the VMs that exist.

The containers share this machine's kernel (no CONFIG_MEMORY_FAILURE: no HardwareCorrupted
line), so the full page-table scan decides there.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HVLAB = REPO / "lab" / "hvlab"
BIN = Path(sys.executable).parent
ANSIBLE_PLAYBOOK = str(BIN / "ansible-playbook") if (BIN / "ansible-playbook").exists() \
    else shutil.which("ansible-playbook")
HOST = "hv1"

pytestmark = [
    pytest.mark.hvlab,
    pytest.mark.skipif(os.geteuid() != 0, reason="the hypervisor lab runs docker and privileged "
                                                 "containers: needs root"),
    pytest.mark.skipif(ANSIBLE_PLAYBOOK is None, reason="ansible-core is not installed (make venv)"),
]

PLAYBOOK = """\
- name: poison_info on a lab hypervisor
  hosts: "{{ target }}"
  gather_facts: false
  tasks:
    - name: Inventory every VM as root
      kvm_ras.poison_guard.poison_info:
      register: as_root

    - name: Inventory as an unprivileged user
      kvm_ras.poison_guard.poison_info:
      become: true
      become_method: ansible.builtin.su  # the lab image has no sudo; root needs no password
      become_flags: -s /bin/sh  # nobody's login shell is nologin
      become_user: nobody
      register: as_nobody

    - name: Ask for a VM that does not exist
      kvm_ras.poison_guard.poison_info:
        vms: ["{{ missing_vm }}"]
      register: missing
      ignore_errors: true

    - name: Hand the results to the test
      ansible.builtin.copy:
        content: "{{ {'root': as_root, 'nobody': as_nobody, 'missing': missing} | to_json }}"
        dest: "{{ result_file }}"
        mode: "0600"
      delegate_to: localhost
"""


def hvlab(*args, timeout=1800):
    out = subprocess.run([str(HVLAB), *args], capture_output=True, text=True, timeout=timeout,
                         check=False)
    assert out.returncode == 0, "lab/hvlab %s failed: %s%s" % (
        " ".join(args), out.stdout, out.stderr)
    return out.stdout


@pytest.fixture(scope="module")
def lab_results(tmp_path_factory):
    hvlab("up")
    inventory = hvlab("inventory").strip()
    prefix = "pinfo%s" % uuid.uuid4().hex[:6]
    created = json.loads(hvlab("guests", "create", "--host", HOST, "--count", "2", "--prefix",
                               prefix, "--json"))
    names = [g["name"] for g in created]
    try:
        top = tmp_path_factory.mktemp("poison-info-hvlab")
        playbook = top / "play.yml"
        playbook.write_text(PLAYBOOK)
        result_file = top / "results.json"
        extra = {"target": HOST, "result_file": str(result_file), "missing_vm": prefix + "-none"}
        env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_HOST_KEY_CHECKING="0")
        out = subprocess.run([ANSIBLE_PLAYBOOK, "-i", inventory, "-e", json.dumps(extra),
                              str(playbook)], capture_output=True, text=True, env=env,
                             timeout=1200, check=False)
        assert out.returncode == 0 and result_file.exists(), out.stdout + out.stderr
        results = json.loads(result_file.read_text())
        results["created"] = names
        yield results
    finally:
        hvlab("guests", "delete", *names)


def test_every_guest_is_clean_with_real_libvirt_and_qemu(lab_results):
    result = lab_results["root"]
    by_name = {vm["name"]: vm for vm in result["vms"]}
    for name in lab_results["created"]:
        vm = by_name[name]
        assert vm["status"] == "clean", vm
        assert vm["discovered_by"] == ["libvirt", "procfs"]
        assert vm["pid"] and vm["uuid"] and vm["memory_mib"] == 64
        assert vm["accelerator"] == "tcg"  # type='qemu' guests
        assert vm["migration_guard"] is False  # TCG: QEMU never records poisoned pages
        assert vm["qemu_version"].startswith("7.2")
        assert vm["qemu_binary"].endswith("qemu-system-x86_64")
        assert vm["scan"]["guest_ram_bytes"] >= 64 << 20
        details = " | ".join(e["detail"] for e in vm["evidence"])
        assert "no HardwareCorrupted line" in details
        assert "no 'Guest MCE Memory Error' line in the current QEMU lifetime" in details
    assert result["poisoned_vms"] == []
    assert result["discovery"]["libvirt"]["problem"] is None
    assert result["host"]["hardware_corrupted_kb"] is None
    assert result["host"]["cap_sys_admin"] is True


def test_unprivileged_run_is_unknown_with_the_reason(lab_results):
    result = lab_results["nobody"]
    by_name = {vm["name"]: vm for vm in result["vms"]}
    for name in lab_results["created"]:
        vm = by_name[name]
        assert vm["status"] == "unknown", vm
        assert any("CAP_SYS_ADMIN" in reason for reason in vm["reasons"]), vm["reasons"]
    assert result["clean_vms"] == [] and result["poisoned_vms"] == []
    assert result["host"]["cap_sys_admin"] is False


def test_unknown_vm_name_fails_with_the_list(lab_results):
    missing = lab_results["missing"]
    assert missing["failed"] is True
    assert "Unknown VM: %s" % missing["unknown"][0] in missing["msg"]
    for name in lab_results["created"]:
        assert name in missing["available"]
