# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The patched QEMU against REAL hardware poison (the poison lab, lab/poison).

The package comes from the patched_qemu role's own build entry point, run with
ansible-playbook on this machine as the builder (the poison lab copies the host's libraries
into the nested VM, so the binary must be built for the host's QEMU source version). In
`make test` it is a cache hit: the Molecule scenario built it into the same controller cache
(/var/cache/kvm_ras/ci/patched_qemu outside the git clone, or $KVM_RAS_PATCHED_QEMU_CACHE; the
package checksums in /var/lib/kvm_ras/ci/patched_qemu.sha256, or $KVM_RAS_PATCHED_QEMU_CHECKSUMS);
run alone, this test builds it once (about 8 minutes on 2 quiet cores, plus the build
dependencies on a fresh machine). The binary from that .deb is then the inner QEMU of the
nested VM, where a page of its guest RAM is poisoned for real (hwpoison_inject corrupt-pfn) while the guest has
machine checks enabled:

- stock Debian QEMU 7.2 (the session's default run): ``migrate`` kills QEMU with SIGBUS;
- the patched QEMU: ``migrate`` is refused with the upstream message and the VM keeps running.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.messages import UPSTREAM_REFUSAL
from poison_lab_fixture import checks, get_run, poison_lab_run  # noqa: F401  pylint: disable=unused-import

pytestmark = [pytest.mark.poison_lab, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
EXPERIMENT = "qemu-kvm-mce"  # inner QEMU under nested KVM, guest with CR4.MCE, page still mapped
SIGBUS = 7


@pytest.fixture(scope="session")
def patched_run(patched_binary):
    run = get_run(qemu_binary=patched_binary["binary"])
    print(f"\npoison lab (patched inner QEMU {patched_binary['package']['package_version']}, "
          f"from {patched_binary['package']['obtained_from']}): verdict {run.verdict}, "
          f"attempts {run.attempts}, {run.duration_s:.0f} s, log {run.log_path}")
    return run


def test_patched_binary_comes_from_the_role_package(patched_binary):
    package = patched_binary["package"]
    # built for the installed stock binary package (a binNMU suffix such as +b3 included): the
    # patched binary loads that package's modules
    stock = subprocess.run(["dpkg-query", "--show", "--showformat=${Version}", "qemu-system-x86"],
                           capture_output=True, text=True, check=True).stdout.strip()
    revision = yaml.safe_load((REPO / "roles" / "patched_qemu" / "defaults" / "main.yml").read_text())[
        "patched_qemu_package_revision"]
    assert package["package_version"] == stock + f"+poisonguard{revision}"
    assert package["stock_version"] == stock
    assert UPSTREAM_REFUSAL.encode() in patched_binary["binary"].read_bytes()


def test_patched_run_used_the_patched_inner_qemu(patched_run, patched_binary):
    assert patched_run.ok, patched_run.summary()
    assert patched_run.inner_qemu == str(patched_binary["binary"])


def test_real_poison_migration_refused_and_vm_keeps_running(patched_run):
    result = patched_run.results[EXPERIMENT]
    # real hwpoison: the inner QEMU's guest page is a hwpoison swap entry, still mapped
    items = {c.id: c for c in checks.evaluate(patched_run.results, [EXPERIMENT], migration_guard=True)[EXPERIMENT]}
    failed = [str(c) for c in items.values() if not c.ok]
    assert not failed, failed
    assert items["hwpoison-pagemap-entry"].ok and items["migration-refused"].ok
    reply = result["migrate"]["reply"]
    assert reply["error"]["class"] == "GenericError"
    assert reply["error"]["desc"] == UPSTREAM_REFUSAL
    victim = result["migrate"]["victim"]
    assert victim["alive"] and victim.get("signal") is None, victim
    # still answering QMP after the refusal, and not migrating
    assert result["migrate"]["status"]["status"] in ("running", "paused"), result["migrate"]["status"]


def test_stock_qemu_was_killed_by_sigbus_in_the_same_experiment(poison_lab_run):
    """The contrast, from the session's stock run: same experiment, QEMU 7.2 dies."""
    result = poison_lab_run.results[EXPERIMENT]
    assert result["migrate"]["reply"].get("return") == {}, result["migrate"]["reply"]
    assert result["migrate"]["victim"].get("signal") == SIGBUS, result["migrate"]["victim"]
