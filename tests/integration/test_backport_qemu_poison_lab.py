# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Debian's QEMU 10.0 from bookworm-backports against REAL hardware poison (the poison lab).

This is the binary the patched_qemu role installs with ``patched_qemu_strategy:
distro_backport``. Its package is fetched with a private apt configuration under the test's
temporary directory (its own sources list naming the suite ``bookworm-backports`` on the
mirror and key of this machine's own Debian entry, read with the role's helper
roles/patched_qemu/files/qemu_backport.py; its own lists, cache and an empty dpkg status), so
the machine's apt configuration is neither read for sources nor changed, and nothing is
installed: ``apt-get download`` checks the .deb against the signed index, and only its
binary is unpacked. That binary is the inner QEMU of the nested VM (the lab copies the host's
libraries it needs; the backport is built for bookworm, so they are all bookworm's), where a
page of its guest RAM is poisoned for real (hwpoison_inject corrupt-pfn) while the guest has
machine checks enabled. Expected, as for the patched 7.2 build
(tests/integration/test_patched_qemu_poison_lab.py): ``migrate`` is refused with the
upstream message and the VM keeps running (stock 7.2 dies of SIGBUS in the same experiment).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.messages import UPSTREAM_REFUSAL
from poison_lab_fixture import checks, lab_run
from poisonlab.errors import LabError, LabUnavailable

pytestmark = [pytest.mark.poison_lab, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
FILES = REPO / "roles" / "patched_qemu" / "files"
EXPERIMENT = "qemu-kvm-mce"  # inner QEMU under nested KVM, guest with CR4.MCE, page still mapped
RELEASE = "bookworm"
SUITE = "bookworm-backports"
PACKAGE = "qemu-system-x86"


def _helper():
    if str(FILES) not in sys.path:
        sys.path.insert(0, str(FILES))
    spec = importlib.util.spec_from_file_location("pq_qemu_backport", FILES / "qemu_backport.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _private_apt(root: Path) -> list[str]:
    """apt options confined to root, with one sources entry: SUITE on this machine's mirror."""
    helper = _helper()
    mirror = helper.mirror_entry(helper.index_targets(), RELEASE)
    if mirror is None:
        pytest.skip(f"this machine has no Debian {RELEASE} apt entry to take the mirror from")
    signed_by = helper.signed_by_of(mirror["entry"])
    if len(signed_by) != 1 or not Path(signed_by[0]).is_file():
        pytest.skip(f"the {RELEASE} entry {mirror['entry']} has no keyring file as Signed-By ({signed_by})")
    for sub in ("lists/partial", "cache/archives/partial"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "sources.list").write_text(f"deb [signed-by={signed_by[0]}] {mirror['uris'][0]} {SUITE} main\n")
    (root / "status").touch()
    values = {"Dir::Etc::SourceList": root / "sources.list", "Dir::Etc::SourceParts": "/dev/null",
              "Dir::Etc::Preferences": "/dev/null", "Dir::Etc::PreferencesParts": "/dev/null",
              "Dir::State::Lists": root / "lists", "Dir::Cache": root / "cache",
              "Dir::State::status": root / "status"}
    options = []
    for key, value in values.items():
        options += ["-o", f"{key}={value}"]
    return options


def _apt(argv: list[str], cwd: Path | None = None) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, cwd=cwd,
                          env={"LC_ALL": "C", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    assert proc.returncode == 0, (argv, proc.stdout[-2000:], proc.stderr[-2000:])
    return proc.stdout


@pytest.fixture(scope="session")
def backport_binary(tmp_path_factory) -> dict:
    if os.geteuid() != 0:
        pytest.skip("booting the poison lab needs root")
    work = tmp_path_factory.mktemp("backport-qemu")
    options = _private_apt(work / "apt")
    _apt(["apt-get", *options, "-q", "update"])
    policy = _apt(["apt-cache", *options, "show", "--no-all-versions", PACKAGE])
    version = policy.split("Version: ", 1)[1].split()[0]
    debs = work / "debs"
    debs.mkdir()
    _apt(["apt-get", *options, "-q", "-o", "APT::Sandbox::User=root", "download", f"{PACKAGE}={version}"], cwd=debs)
    (deb,) = debs.glob(f"{PACKAGE}_*.deb")
    root = work / "root"
    subprocess.run(["dpkg-deb", "--extract", str(deb), str(root)], check=True)
    binary = root / "usr" / "bin" / "qemu-system-x86_64"
    assert binary.is_file()
    return {"binary": binary, "version": version, "deb": deb}


@pytest.fixture(scope="session")
def backport_run(backport_binary):
    # only the experiment this test judges: the run takes one boot of the nested VM
    try:
        run = lab_run(qemu_binary=backport_binary["binary"], with_hooks=False, experiments=[EXPERIMENT])
    except LabUnavailable as exc:
        pytest.skip(f"poison lab cannot run on this machine: {exc}")
    except LabError as exc:
        pytest.fail(f"poison lab setup failed: {exc}", pytrace=False)
    print(f"\npoison lab (inner QEMU {backport_binary['version']} from {SUITE}): verdict {run.verdict}, "
          f"attempts {run.attempts}, {run.duration_s:.0f} s, log {run.log_path}")
    return run


def test_backport_binary_is_qemu_10_with_the_guard(backport_binary):
    assert "~bpo12" in backport_binary["version"], backport_binary["version"]
    version = subprocess.run([str(backport_binary["binary"]), "--version"], capture_output=True, text=True,
                             check=True).stdout
    assert version.startswith("QEMU emulator version 10."), version
    assert UPSTREAM_REFUSAL.encode() in backport_binary["binary"].read_bytes()


def test_backport_run_used_the_backport_inner_qemu(backport_run, backport_binary):
    assert backport_run.inner_qemu == str(backport_binary["binary"])
    assert EXPERIMENT in backport_run.results, backport_run.summary()


def test_real_poison_migration_refused_and_vm_keeps_running(backport_run):
    result = backport_run.results[EXPERIMENT]
    items = {c.id: c for c in checks.evaluate(backport_run.results, [EXPERIMENT], migration_guard=True)[EXPERIMENT]}
    failed = [str(c) for c in items.values() if not c.ok]
    assert not failed, failed
    # real hwpoison: the inner QEMU's guest page is a hwpoison swap entry, still mapped
    assert items["hwpoison-pagemap-entry"].ok and items["migration-refused"].ok
    reply = result["migrate"]["reply"]
    assert reply["error"]["class"] == "GenericError"
    assert reply["error"]["desc"] == UPSTREAM_REFUSAL
    victim = result["migrate"]["victim"]
    assert victim["alive"] and victim.get("signal") is None, victim
    # still answering QMP after the refusal, and not migrating
    assert result["migrate"]["status"]["status"] in ("running", "paused"), result["migrate"]["status"]
