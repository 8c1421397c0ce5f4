# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""qemu_guard_info and qemu_guard_selftest end to end through Ansible: one ``ansible-playbook``
run (AnsiballZ, the argument specs, exit/fail JSON) with the hypervisor's Python (Debian's
/usr/bin/python3, stdlib only) as the module interpreter, once per case below.

Two kinds of binaries:
- stand-ins: shell scripts that answer ``--version`` and ``-device help`` & co. the way QEMU 7.2
  does (the lines are shortened copies of Debian 12's qemu-system-x86_64 output), one of them
  with upstream's refusal message in its bytes, as a guarded build has it in .rodata;
- this machine's real Debian QEMU (`make test` installs qemu-system-x86 with tools/test-deps):
  the self-test starts a throw-away TCG guest and migrates it, once with an entry injected into
  the stock binary's poison list (the negative control: 7.2 has no check, so it migrates)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.messages import UPSTREAM_REFUSAL

BIN = Path(sys.executable).parent
ANSIBLE_PLAYBOOK = str(BIN / "ansible-playbook") if (BIN / "ansible-playbook").exists() \
    else shutil.which("ansible-playbook")
ANSIBLE_DOC = str(BIN / "ansible-doc") if (BIN / "ansible-doc").exists() else shutil.which("ansible-doc")
INTERPRETER = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
STOCK_QEMU = "/usr/bin/qemu-system-x86_64"
HAVE_QEMU = os.access(STOCK_QEMU, os.X_OK)

pytestmark = pytest.mark.skipif(ANSIBLE_PLAYBOOK is None, reason="ansible-core is not installed "
                                                                 "in this environment (make venv)")

PLAYBOOK = """\
- name: Run the qemu_guard modules
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Run qemu_guard_info once per case
      kvm_ras.poison_guard.qemu_guard_info: "{{ item.args }}"
      check_mode: "{{ item.check }}"
      loop: "{{ info_cases }}"
      loop_control:
        label: "{{ item.id }}"
      register: info_results
      ignore_errors: true

    - name: Run qemu_guard_selftest once per case
      kvm_ras.poison_guard.qemu_guard_selftest: "{{ item.args }}"
      check_mode: "{{ item.check }}"
      loop: "{{ selftest_cases }}"
      loop_control:
        label: "{{ item.id }}"
      register: selftest_results
      ignore_errors: true

    - name: Save the results
      ansible.builtin.copy:
        content: "{{ (info_results.results + selftest_results.results) | to_json }}"
        dest: "{{ result_file }}"
        mode: "0600"
"""

# Shortened from Debian 12's qemu-system-x86_64 (7.2.22) `-device help` and `-netdev help`.
DEVICE_HELP = ('Controller/Bridge/Hub devices:\nname "pci-bridge", bus PCI, desc "Standard PCI Bridge"\n\n'
               'Display devices:\nname "qxl", bus PCI, desc "Spice QXL GPU (secondary)"\n')
NETDEV_HELP = "Available netdev backend types:\nsocket\nstream\ndgram\nhubport\ntap\nuser\nvde\n"


def _stand_in(path: Path, guarded: bool, qxl: bool = True) -> str:
    """A shell script answering like QEMU 7.2; without ``qxl`` it lacks the module-provided
    device (as a binary that cannot load the stock modules does). Other queries print the
    QEMU_MODULE_DIR it was given."""
    device = DEVICE_HELP if qxl else DEVICE_HELP.split("\n\nDisplay", maxsplit=1)[0] + "\n"
    path.write_text(
        "#!/bin/sh\n"
        + ("# %s\n" % UPSTREAM_REFUSAL if guarded else "")
        + 'case "$1" in\n'
        + '  --version) echo "QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)" ;;\n'
        + "  -device) cat <<'END'\n" + device + "END\n  ;;\n"
        + "  -netdev) cat <<'END'\n" + NETDEV_HELP + "END\n  ;;\n"
        + '  *) echo "QEMU_MODULE_DIR=${QEMU_MODULE_DIR:-none}" ;;\n'
        + "esac\n")
    path.chmod(0o755)
    return str(path)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Run the playbook once, return {case id: module result}."""
    top = tmp_path_factory.mktemp("qemu-guard-modules")
    guarded = _stand_in(top / "qemu-guarded", guarded=True)
    stock = _stand_in(top / "qemu-stock", guarded=False)
    no_modules = _stand_in(top / "qemu-no-modules", guarded=True, qxl=False)
    plain_file = top / "not-executable"
    plain_file.write_text("just a file\n")
    info = {
        "guarded_parity": (dict(binary=guarded, host_facts=False, compare_with=stock, module_dir="/x/modules"), False),
        "guarded_parity_check": (dict(binary=guarded, host_facts=False, compare_with=stock), True),
        "missing_modules": (dict(binary=no_modules, host_facts=False, compare_with=stock, features=True), False),
        "missing_binary": (dict(binary=str(top / "absent"), host_facts=False), False),
        "host": (dict(binary=stock, diverted_binary_path=guarded, build_info_path=str(top / "absent.json"),
                      module_packages=["qemu-system-common"]), True),
        "module_dir_alone": (dict(binary=guarded, host_facts=False, module_dir="/x"), False),
        "zero_timeout": (dict(binary=guarded, host_facts=False, timeout=0), False),
        "empty_symbol": (dict(binary=guarded, host_facts=False, symbols=["kvm_hwpoison_page_add", " "]), False),
    }
    selftest = {
        "not_executable": (dict(binary=str(plain_file)), False),
        "check_mode": (dict(binary=guarded), True),
        "bad_machine": (dict(binary=guarded, machine="-q35"), False),
    }
    if HAVE_QEMU:
        info["stock_qemu"] = (dict(binary=STOCK_QEMU, host_facts=False,
                                   symbols=["kvm_hwpoison_page_add", "no_such_symbol_here"]), False)
        selftest["stock_plain"] = (dict(binary=STOCK_QEMU, timeout=60), False)
        selftest["stock_inject"] = (dict(binary=STOCK_QEMU, inject=True, timeout=60), False)
    varfile = top / "vars.json"
    result_file = top / "results.json"
    varfile.write_text(json.dumps({
        "info_cases": [{"id": k, "args": a, "check": c} for k, (a, c) in info.items()],
        "selftest_cases": [{"id": k, "args": a, "check": c} for k, (a, c) in selftest.items()],
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
    return {r["item"]["id"]: r for r in json.loads(result_file.read_text())}


@pytest.mark.parametrize("case", ["guarded_parity", "guarded_parity_check"])
def test_guard_found_in_the_binary_and_parity_of_identical_features(results, case):
    result = results[case]
    assert not result.get("failed"), result
    assert result["changed"] is False
    binary = result["binary"]
    assert binary["exists"] and binary["guard"] is True
    assert binary["refusal_message"] == UPSTREAM_REFUSAL
    assert (binary["version"], binary["major"], binary["minor"], binary["rc"]) == ("7.2.22", 7, 2, 0)
    assert "packages" not in result  # host_facts: false
    parity = result["parity"]
    # the module directory goes to the patched binary only: the "*)" answer differs
    if case == "guarded_parity":
        assert parity["patched_module_dir"] == "/x/modules"
        assert "cpu" in parity["different"] and "device" not in parity["different"]
        assert parity["queries"]["cpu"]["only_patched"] == ["QEMU_MODULE_DIR=/x/modules"]
        assert not parity["identical"]
    else:
        assert parity["identical"] and parity["different"] == [], parity
        assert set(parity["queries"]) == {"device", "machine", "cpu", "accel", "display", "audiodev",
                                          "netdev", "object", "chardev", "vga"}


def test_a_binary_without_the_module_devices_differs(results):
    result = results["missing_modules"]
    assert not result.get("failed"), result
    assert result["parity"]["different"] == ["device"]
    assert result["parity"]["queries"]["device"]["only_stock"] == [
        "", "Display devices:", 'name "qxl", bus PCI, desc "Spice QXL GPU (secondary)"']
    assert result["features"]["device"] == ["pci-bridge"]
    assert result["features"]["netdev"] == ["dgram", "hubport", "socket", "stream", "tap", "user", "vde"]


def test_a_missing_binary_is_reported_not_failed(results):
    result = results["missing_binary"]
    assert not result.get("failed"), result
    assert result["binary"]["exists"] is False and result["binary"]["guard"] is None
    assert result["binary"]["error"] == "binary not found"


def test_host_facts_in_check_mode(results):
    """dpkg, dpkg-divert and apt-cache of this machine; the stand-in 'diverted' binary carries
    the guard, the build record is absent."""
    result = results["host"]
    assert not result.get("failed"), result
    assert set(result["packages"]) == {"qemu-system-x86", "qemu-system-x86-poison-guard", "qemu-system-common"}
    for package in result["packages"].values():
        assert set(package) == {"installed", "status", "version", "source_version"}
        assert package["installed"] == (package["version"] is not None)
    assert set(result["apt"]) == {"candidate", "candidate_source_version", "newer_than_installed"}
    assert isinstance(result["held"], list)
    assert result["diverted_binary"]["guard"] is True
    assert result["build_info"] is None
    assert result["binary"]["guard"] is False


@pytest.mark.parametrize("results_key, case, message", [
    ("info", "module_dir_alone", "missing parameter(s) required by 'module_dir': compare_with"),
    ("info", "zero_timeout", "timeout must be 1 or more"),
    ("info", "empty_symbol", "symbols holds an empty name"),
    ("selftest", "not_executable", "is not an executable file"),
    ("selftest", "bad_machine", "is not a machine type"),
])
def test_bad_input_is_refused_with_the_fix(results, results_key, case, message):
    result = results[case]
    assert result["failed"] is True and message in result["msg"], (results_key, result["msg"])


def test_the_selftest_does_not_run_in_check_mode(results):
    result = results["check_mode"]
    assert result.get("skipped") is True or "check mode" in result.get("msg", ""), result
    assert "pid" not in result


@pytest.mark.skipif(not HAVE_QEMU, reason="needs Debian's qemu-system-x86 (make deps installs it)")
def test_stock_binary_lacks_the_guard_when_it_is_7_2(results):
    result = results["stock_qemu"]["binary"]
    if (result["major"], result["minor"]) >= (9, 0):
        pytest.skip(f"this machine's QEMU is {result['version']}: it has the guard upstream")
    assert result["guard"] is False and result["rc"] == 0
    # Debian's stripped binary keeps kvm_hwpoison_page_add in its dynamic symbol table (QEMU
    # exports its symbols to its modules); a name it lacks is left out, not invented
    found = results["stock_qemu"]["symbols"]
    assert found["symbols"]["kvm_hwpoison_page_add"]["found_in"] == "binary", found
    assert "no_such_symbol_here" not in found["symbols"] and "error" not in found
    assert found["build_id"] and len(found["build_id"]) == 40


@pytest.mark.skipif(not HAVE_QEMU, reason="needs Debian's qemu-system-x86 (make deps installs it)")
def test_selftest_stock_qemu_migrates_without_poison(results):
    result = results["stock_plain"]
    assert not result.get("failed"), result
    assert result["changed"] is False
    assert result["ok"], result
    assert result["status_before"] == "running"
    assert result["migration"] == "completed"
    assert result["alive_after"] and result["exit_status"] == 0


@pytest.mark.skipif(not HAVE_QEMU, reason="needs Debian's qemu-system-x86 (make deps installs it)")
def test_selftest_stock_qemu_with_injected_poison_entry_still_migrates(results):
    """The module adds an entry to the stock binary's poison list (list head decoded from the
    first instruction of kvm_hwpoison_page_add) with ptrace and general-purpose registers only;
    7.2 has no check, so the migration completes."""
    result = results["stock_inject"]
    assert result["ok"], result
    injection = result["injection"]
    assert injection["ok"] and injection["head_found_by"] == "decoded-first-instruction", injection
    assert injection["lh_first_before"] == "0x0" and injection["lh_first_after"] != "0x0"
    assert injection["entry_ram_addr"] == "0x1000"
    assert injection["kvm_hwpoisoned_mem"] is None  # stock QEMU has no such function
    assert set(injection["ptrace_requests"]) <= {"PTRACE_SEIZE", "PTRACE_INTERRUPT", "PTRACE_GETREGS",
                                                 "PTRACE_SETREGS", "PTRACE_CONT", "PTRACE_DETACH"}, injection
    assert result["migration"] == "completed", result


@pytest.mark.skipif(ANSIBLE_DOC is None, reason="ansible-doc is not installed")
@pytest.mark.parametrize("module, check_mode", [("qemu_guard_info", "full"), ("qemu_guard_selftest", "none")])
def test_documentation_renders(module, check_mode):
    name = "kvm_ras.poison_guard." + module
    out = subprocess.run([ANSIBLE_DOC, "-j", name], capture_output=True, text=True, timeout=300, check=True)
    doc = json.loads(out.stdout)[name]
    assert doc["doc"]["attributes"]["check_mode"]["support"] == check_mode
    assert "binary" in doc["doc"]["options"] and "binary" in doc["return"]
