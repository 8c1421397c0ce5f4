# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The detection core against the running kernel and real processes (no fixtures).

This machine's kernel has no CONFIG_MEMORY_FAILURE, so real hwpoison entries come from the
poison lab (tests/integration). What the running kernel can produce is tested here: real
pagemap/kpageflags reads of live processes, a real UFFDIO_POISON marker (the same PTE marker a
swap-in error leaves; touching it raises SIGBUS), a real MADV_GUARD_INSTALL marker, PAGEMAP_SCAN,
a process vanishing during the scan, and an unprivileged run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.poison import inventory
from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.poison import pagemap
from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.poison import swaptype

VICTIM = Path(__file__).with_name("victim.py")
REPO = Path(__file__).resolve().parents[5]

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="reading other processes' PFNs and /proc/kpageflags needs root")


class Victim:
    """A live stand-in QEMU (see victim.py)."""

    def __init__(self, name, mib=64, poison_page=-1, guard_page=-1):
        env = dict(os.environ, PYTHONHOME=sys.base_prefix)
        env.pop("PYTHONPATH", None)
        self.proc = subprocess.Popen(
            ["qemu-system-x86_64", str(VICTIM), str(mib), str(poison_page), str(guard_page),
             "-name", "guest=%s,debug-threads=on" % name, "-m", str(mib)],
            executable=sys.executable, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            env=env)
        line = self.proc.stdout.readline()
        if not line.startswith("READY"):
            self.stop()
            raise RuntimeError("victim did not start: %r" % line)
        fields = dict(f.split("=", 1) for f in line.split()[1:])
        self.base = int(fields["base"], 16)
        self.poisoned = fields["poison"] == "1"
        self.guarded = fields["guard"] == "1"
        self.name = name
        self.pid = self.proc.pid

    def stop(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def victims():
    started = []

    def start(*args, **kwargs):
        victim = Victim(*args, **kwargs)
        started.append(victim)
        return victim

    yield start
    for victim in started:
        victim.stop()


def collect_for(name, **kwargs):
    result = inventory.collect(inventory.Options(vms=[name], libvirt_uri="", **kwargs))
    [vm] = result["vms"]
    return result, vm


def test_clean_live_process_is_clean_with_full_privileges(victims):
    victim = victims("rk-clean")
    result, vm = collect_for("rk-clean", scan_method="pread")
    assert vm["pid"] == victim.pid and vm["status"] == "clean", vm
    assert vm["scan"]["guest_ram_bytes"] >= 64 << 20
    assert vm["memory_mib"] == 64
    assert result["host"]["cap_sys_admin"] is True


@pytest.mark.parametrize("method", ["pread", "pagemap_scan"])
def test_real_poison_marker_is_found_and_guard_marker_is_not(victims, method):
    victim = victims("rk-marker", poison_page=10, guard_page=20)
    if not victim.poisoned:
        pytest.skip("the kernel refused UFFDIO_POISON (needs Linux 6.6+ with userfaultfd)")
    scan_fn = pagemap.pagemap_scan_swapped if method == "pagemap_scan" else False
    if method == "pagemap_scan" and not pagemap.probe_pagemap_scan("/proc/self/pagemap"):
        pytest.skip("this kernel has no PAGEMAP_SCAN (Linux 6.7+)")
    _result, vm = collect_for("rk-marker", scan_method=method, pagemap_scan=scan_fn)
    assert vm["status"] == "poisoned"
    [page] = vm["poisoned_pages"]
    assert page["hva"] == hex(victim.base + 10 * 4096)
    assert page["source"] == "pte_marker_poisoned" and page["raw"] == "0x400000000000005f"
    assert page["guest_ram"] is True
    assert vm["scan"]["method"] == method
    assert vm["scan"]["benign_markers"] == (1 if victim.guarded else 0)


def test_pagemap_scan_probe_matches_the_kernel_version():
    release = os.uname().release
    version = swaptype.parse_kernel_version(release)
    assert pagemap.probe_pagemap_scan("/proc/self/pagemap") is (version >= (6, 7)), release


def test_process_exiting_during_the_scan_is_unknown(victims, monkeypatch):
    victim = victims("rk-vanish")
    real_scan = pagemap.ProcessScanner.scan

    def exit_then_scan(self, targets):
        victim.proc.send_signal(signal.SIGKILL)
        victim.proc.wait()
        return real_scan(self, targets)

    monkeypatch.setattr(pagemap.ProcessScanner, "scan", exit_then_scan)
    _result, vm = collect_for("rk-vanish", scan_method="pread")
    assert vm["status"] == "unknown"
    assert "exited" in vm["reasons"][0]


def test_unknown_name_lists_the_running_processes(victims):
    victims("rk-listed")
    with pytest.raises(inventory.UnknownVMError) as info:
        collect_for("rk-not-there")
    assert "rk-listed" in info.value.available


@pytest.fixture
def world_readable_collection():
    """The collection's module_utils in a directory an unprivileged user can read (pytest's
    tmp_path lives under a 0700 directory)."""
    top = Path(tempfile.mkdtemp(prefix="poison-info-nobody-", dir="/tmp"))
    root = top / "ansible_collections" / "kvm_ras" / "poison_guard"
    shutil.copytree(REPO / "plugins" / "module_utils", root / "plugins" / "module_utils")
    for path in [top] + list(top.rglob("*")):
        path.chmod(0o755 if path.is_dir() else 0o644)
    yield top
    shutil.rmtree(top)


def test_unprivileged_run_is_unknown_with_the_reason(victims, world_readable_collection):
    victim = victims("rk-nopriv")
    coll = world_readable_collection
    code = (
        "import json, sys\n"
        "sys.path.insert(0, %r)\n"
        "from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.poison import inventory\n"
        "r = inventory.collect(inventory.Options(vms=['rk-nopriv'], libvirt_uri=''))\n"
        "print(json.dumps(r))\n" % str(coll))

    def drop_privileges():
        os.setgroups([])
        os.setgid(65534)
        os.setuid(65534)

    python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
    out = subprocess.run([python, "-c", code], preexec_fn=drop_privileges, capture_output=True,
                         text=True, cwd="/", timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    [vm] = result["vms"]
    assert vm["pid"] == victim.pid
    assert vm["status"] == "unknown"
    assert "CAP_SYS_ADMIN" in vm["reasons"][0]
    assert result["host"]["cap_sys_admin"] is False
