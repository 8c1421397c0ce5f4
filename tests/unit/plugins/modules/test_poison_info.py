# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""poison_info end to end through Ansible: one ``ansible-playbook`` run calls
``kvm_ras.poison_guard.poison_info`` (AnsiballZ, the module's argument spec, exit/fail JSON)
on fixture procfs trees, with the hypervisor's Python (Debian's /usr/bin/python3, stdlib only)
as the module interpreter, once per case below; each test then checks its case's result."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[4]
FIXTURES = REPO / "tests" / "fixtures" / "procfs"
if str(FIXTURES) not in sys.path:
    sys.path.insert(0, str(FIXTURES))

import scenarios  # noqa: E402
from procfs_builder import Proc  # noqa: E402

BIN = Path(sys.executable).parent
ANSIBLE_PLAYBOOK = str(BIN / "ansible-playbook") if (BIN / "ansible-playbook").exists() \
    else shutil.which("ansible-playbook")
ANSIBLE_DOC = str(BIN / "ansible-doc") if (BIN / "ansible-doc").exists() else shutil.which(
    "ansible-doc")
INTERPRETER = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable

pytestmark = pytest.mark.skipif(ANSIBLE_PLAYBOOK is None, reason="ansible-core is not installed "
                                                                 "in this environment (make venv)")

PLAYBOOK = """\
- name: Run poison_info on fixture trees
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Run the module once per case
      kvm_ras.poison_guard.poison_info: "{{ item.args }}"
      check_mode: "{{ item.check }}"
      loop: "{{ cases }}"
      loop_control:
        label: "{{ item.id }}"
      register: poison_info_results
      ignore_errors: true

    - name: Save the results
      ansible.builtin.copy:
        content: "{{ poison_info_results.results | to_json }}"
        dest: "{{ result_file }}"
        mode: "0600"
"""


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Build every case's tree, run the playbook once, return {case id: module result}."""
    top = tmp_path_factory.mktemp("poison-info-module")
    kvmmce = scenarios.kvmmce_61(top / "kvmmce").write()
    reset = scenarios.kvm_reset_61(top / "reset").write()
    clean = scenarios.clean_host(top / "clean").write()
    # issue 13: a second QEMU started by hand with libvirt's VM name
    twins = scenarios.clean_host(top / "twins")
    twins.add(Proc(1500, scenarios.libvirt_argv("web01", "11111111-2222-4333-8444-555555555556"),
                   maps=scenarios.ram_maps(0x7F3000000000, 8 << 20), fds={20: "anon_inode:kvm-vm"},
                   binary=scenarios.QEMU_VERSION_BANNER))
    twins.write()
    cases = {
        "poisoned": (kvmmce.module_args(), False),
        "poisoned_check": (kvmmce.module_args(), True),
        "reset": (reset.module_args(), False),
        "unknown_vm": (clean.module_args(vms=["nosuchvm"]), False),
        "absent_proc": (clean.module_args(proc_root=str(top / "absent"), vms=["web01"]), False),
        "empty_proc_root": (clean.module_args(proc_root=""), False),
        "bad_method": (clean.module_args(scan_method="fast"), False),
        "empty_vm_name": (clean.module_args(vms=["web01", " "]), False),
        "bogus_option": (dict(clean.module_args(), bogus=1), False),
        "twins": (twins.module_args(), False),
        "kernel_log_dir": (clean.module_args(kernel_log=str(top)), False),
        "negative_limit": (clean.module_args(backing_read_limit_mib=-1), False),
    }
    varfile = top / "vars.json"
    result_file = top / "results.json"
    varfile.write_text(json.dumps({
        "cases": [{"id": k, "args": a, "check": c} for k, (a, c) in cases.items()],
        "result_file": str(result_file)}))
    playbook = top / "play.yml"
    playbook.write_text(PLAYBOOK)
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_LOCALHOST_WARNING="0",
               ANSIBLE_INVENTORY_UNPARSED_WARNING="0")
    out = subprocess.run([ANSIBLE_PLAYBOOK, "-i", "localhost,", "-c", "local",
                          "-e", "ansible_python_interpreter=%s" % INTERPRETER,
                          "-e", "@%s" % varfile, str(playbook)],
                         capture_output=True, text=True, env=env, timeout=900, check=False)
    assert out.returncode == 0 and result_file.exists(), out.stdout + out.stderr
    found = {r["item"]["id"]: r for r in json.loads(result_file.read_text())}
    found["_output"] = out.stdout + out.stderr  # ansible-core 2.19 prints module warnings there
    return found


@pytest.mark.parametrize("case", ["poisoned", "poisoned_check"])
def test_poisoned_vm_through_ansible(results, case):
    result = results[case]
    assert not result.get("failed"), result
    assert result["changed"] is False
    assert result["poisoned_vms"] == ["inner-kvmmce-ek0"]
    [vm] = result["vms"]
    assert vm["status"] == "poisoned" and vm["pid"] == 190
    page = vm["poisoned_pages"][0]
    assert (page["hva"], page["pfn"], page["gpa"]) == ("0x7fafe2145000", "0xf945", "0x2345000")
    assert result["host"]["kernel_release"] == "6.1.0-56-amd64"
    assert result["host"]["hwpoison_swap_type"] == 26


def test_check_mode_gives_the_same_verdict(results):
    plain, check = results["poisoned"], results["poisoned_check"]
    assert [v["status"] for v in plain["vms"]] == [v["status"] for v in check["vms"]]
    assert plain["vms"][0]["poisoned_pages"] == check["vms"][0]["poisoned_pages"]


def test_reset_vm_clean_and_memhog_not_a_vm_through_ansible(results):
    result = results["reset"]
    assert result["clean_vms"] == ["inner-kvm-ek0"] and len(result["vms"]) == 1
    assert result["host"]["hardware_corrupted_kb"] == 8


def test_unknown_vm_fails_with_the_list(results):
    result = results["unknown_vm"]
    assert result["failed"] is True
    assert "Unknown VM: nosuchvm. VMs running on this host: db01, web01." in result["msg"]
    assert result["available"] == ["db01", "web01"]


def test_unreadable_proc_root_is_not_a_traceback(results):
    result = results["absent_proc"]
    assert not result.get("failed"), result
    assert result["unknown_vms"] == ["web01"] and result["complete"] is False


@pytest.mark.parametrize("case, message", [
    ("empty_proc_root", "proc_root must not be empty"),
    ("bad_method", "value of scan_method must be one of"),
    ("empty_vm_name", "vms holds an empty name"),
    ("bogus_option", "Unsupported parameters"),
    ("kernel_log_dir", "is a directory: give a file (dmesg output, /dev/kmsg), auto, or an empty string"),
    ("negative_limit", "backing_read_limit_mib must be 0 or more"),
])
def test_bad_input_is_refused_with_the_fix(results, case, message):
    result = results[case]
    assert result["failed"] is True and message in result["msg"], result["msg"]


@pytest.mark.skipif(ANSIBLE_DOC is None, reason="ansible-doc is not installed")
def test_documentation_renders():
    out = subprocess.run([ANSIBLE_DOC, "-j", "kvm_ras.poison_guard.poison_info"],
                         capture_output=True, text=True, timeout=300, check=True)
    doc = json.loads(out.stdout)["kvm_ras.poison_guard.poison_info"]
    options = doc["doc"]["options"]
    assert set(options) >= {"vms", "proc_root", "sys_root", "uri", "qemu_log_dir",
                            "kernel_log", "scan_method"}
    assert doc["doc"]["attributes"]["check_mode"]["support"] == "full"
    assert "poisoned_vms" in doc["return"]
    # the libvirt URI option has the collection's one name; the former one stays until 0.2.0
    assert options["uri"]["aliases"] == ["libvirt_uri"] and options["uri"]["default"] == "qemu:///system"


def test_two_vms_with_one_name_are_not_listed_silently(results):
    """Issue 13: the name is in ambiguous_vms, not in clean_vms, and the run warns about it."""
    result = results["twins"]
    assert not result.get("failed"), result
    assert [vm["pid"] for vm in result["vms"] if vm["name"] == "web01"] == [1000, 1500]
    assert result["ambiguous_vms"] == ["web01"] and result["clean_vms"] == ["db01"]
    output = " ".join(results["_output"].split())
    assert "2 QEMU processes carry the name 'web01' (pids 1000, 1500)" in output
    assert result["origin"]["boot_id"] == "4c2f6b8e-1d3a-4e5f-9a7b-0c1d2e3f4a5b"
    assert all(isinstance(vm["start_ticks"], int) for vm in result["vms"])
