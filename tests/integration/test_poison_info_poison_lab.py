# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""poison_info against REAL hwpoison: the poison lab's nested Debian 6.1 hypervisor.

The module runs inside the lab VM the way Ansible runs it on a managed host (AnsiballZ payload
built by ansible-core, executed by the VM's stdlib-only python3), right after the lab poisoned
a page for real (hwpoison_inject ``corrupt-pfn``) and while the victim is still alive:

- ``qemu-kvm-mce``: the inner QEMU (nested KVM, guest with CR4.MCE) keeps the page mapped as a
  hwpoison entry -> ``poisoned`` with the lab's HVA, PFN and GPA;
- ``qemu-kvm-reset``: QEMU reset the guest and remapped the page -> ``clean`` while the host's
  HardwareCorrupted is non-zero;
- ``memhog-late``: a plain process holds a real hwpoison entry -> not reported as a VM.
"""

from __future__ import annotations

import pytest

from poison_lab_fixture import poison_lab_run, register_module_hook  # noqa: F401  pylint: disable=unused-import

MODULE = "kvm_ras.poison_guard.poison_info"
register_module_hook("poison-info", MODULE, {"vms": ["@LAB_QEMU_NAME@"], "uri": ""},
                     experiments=["qemu-kvm-mce", "qemu-kvm-reset"])
register_module_hook("poison-info-all", MODULE, {"uri": ""},
                     experiments=["memhog-late", "qemu-kvm-mce"])

pytestmark = pytest.mark.poison_lab


def module_result(run, experiment, hook):
    report = run.hook(experiment, hook)
    assert report is not None, "hook %s did not run in %s (lab verdict %s, log %s)" % (
        hook, experiment, run.verdict, run.log_path)
    assert report["rc"] == 0, report
    result = report["json"]
    assert result and not result.get("failed"), report
    return result


def test_poisoned_inner_qemu_is_poisoned_with_hva_pfn_gpa(poison_lab_run):
    lab = poison_lab_run.results["qemu-kvm-mce"]
    assert lab["after_inject"]["victim"]["alive"], lab["after_inject"]["victim"]
    result = module_result(poison_lab_run, "qemu-kvm-mce", "poison-info")
    [vm] = result["vms"]
    assert vm["pid"] == lab["pid"]
    assert vm["status"] == "poisoned", vm
    assert result["poisoned_vms"] == [vm["name"]]
    [page] = vm["poisoned_pages"]
    assert int(page["hva"], 16) == int(lab["hva"], 16)
    assert int(page["pfn"], 16) == int(lab["pfn"], 16)
    assert int(page["gpa"], 16) == int(lab["gpa"], 16) == 0x2345000  # from QEMU's log line
    assert page["source"] == "pagemap_hwpoison"
    assert page["swap_type"] == 26  # Debian 6.1: SWP_HWPOISON = 26, read from the real entry
    assert int(page["kpageflags"], 16) >> 19 & 1
    assert page["guest_ram"] is True
    assert vm["accelerator"] == "kvm"
    assert vm["qemu_version"].startswith("7.2")
    assert vm["migration_guard"] is False  # stock Debian QEMU 7.2: it crashes on migration
    host = result["host"]
    assert host["kernel_release"].startswith("6.1.0-")
    assert host["hardware_corrupted_kb"] > 0
    assert host["memory_failure"] is None  # 6.1 has no per-node counters
    assert host["pagemap_scan"] is False  # PAGEMAP_SCAN is 6.7+
    assert host["cap_sys_admin"] is True and host["poisoned_pfns"] >= 1
    details = [e["detail"] for e in vm["evidence"]]
    assert any("Guest MCE Memory Error" in d and "confirmed by pagemap" in d for d in details)
    assert any(e["source"] == "kernel_log" and "Sending SIGBUS" in e["detail"]
               for e in vm["evidence"]), details


def test_reset_vm_is_clean_while_host_counter_is_non_zero(poison_lab_run):
    lab = poison_lab_run.results["qemu-kvm-reset"]
    assert lab["after_inject"]["victim"]["alive"]
    result = module_result(poison_lab_run, "qemu-kvm-reset", "poison-info")
    [vm] = result["vms"]
    assert vm["pid"] == lab["pid"]
    assert vm["status"] == "clean", vm
    assert vm["poisoned_pages"] == [] and vm["reasons"] == []
    assert result["host"]["hardware_corrupted_kb"] > 0
    assert result["host"]["poisoned_pfns"] >= 1
    details = [e["detail"] for e in vm["evidence"]]
    assert any("a guest reset remapped it" in d for d in details), details


def test_plain_process_with_a_poisoned_page_is_not_a_vm(poison_lab_run):
    lab = poison_lab_run.results["memhog-late"]
    after = lab["after_inject"]
    assert after["victim"]["alive"] and after["pagemap"]["swap"] == 1  # a real hwpoison entry
    result = module_result(poison_lab_run, "memhog-late", "poison-info-all")
    assert result["vms"] == [], result["vms"]
    assert result["host"]["hardware_corrupted_kb"] > 0
    everything = module_result(poison_lab_run, "qemu-kvm-mce", "poison-info-all")
    assert [vm["pid"] for vm in everything["vms"]] == [poison_lab_run.results["qemu-kvm-mce"]["pid"]]
