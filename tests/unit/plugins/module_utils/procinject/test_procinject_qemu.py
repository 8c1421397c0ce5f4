# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""procinject.qemu against this machine's real Debian QEMU (`make test` installs
qemu-system-x86 with tools/test-deps before tests are collected; no root needed: the test
traces its own child).

A throw-away TCG guest gets a poisoned page at GPA 0x1000000 exactly as the hypervisor lab's
guests do (lab/inject_poison.py). The test then reads what the rest of the collection reads:
the POISONED PTE marker in /proc/PID/pagemap, the MEMORY_FAILURE QMP event, QEMU's own "Guest
MCE Memory Error" log line, QEMU's poison list; the guest keeps running. The control shows why
the collection exists: a migration of that guest makes the stock QEMU 7.2 read the page and die.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time

import pytest

from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.poison import encoding
from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.procinject.qemu import (
    MCE_FORMAT,
    QemuProcess,
)
from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.qemu_selftest import QMP

QEMU = "/usr/bin/qemu-system-x86_64"
GPA = 0x1000000
GP_ONLY = {"PTRACE_SEIZE", "PTRACE_INTERRUPT", "PTRACE_GETREGS", "PTRACE_SETREGS", "PTRACE_CONT",
           "PTRACE_SINGLESTEP", "PTRACE_DETACH"}

pytestmark = pytest.mark.skipif(not os.access(QEMU, os.X_OK),
                                reason="needs Debian's qemu-system-x86 (make deps installs it)")


@pytest.fixture(name="guest")
def fixture_guest():
    workdir = tempfile.mkdtemp(prefix="procinject-")
    sock = os.path.join(workdir, "qmp.sock")
    proc = subprocess.Popen([QEMU, "-accel", "tcg", "-machine", "q35", "-m", "128", "-nodefaults",
                             "-display", "none", "-serial", "none", "-monitor", "none",
                             "-qmp", "unix:%s,server=on,wait=off" % sock, "-S"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while not os.path.exists(sock):
        assert proc.poll() is None and time.monotonic() < deadline, "QEMU did not start"
        time.sleep(0.05)
    qmp = QMP(sock, timeout=20)
    assert "error" not in qmp.execute("cont")
    yield proc, qmp
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    proc.stderr.close()
    for name in os.listdir(workdir):
        os.unlink(os.path.join(workdir, name))
    os.rmdir(workdir)


def _hva(qmp):
    answer = qmp.execute("human-monitor-command", {"command-line": "gpa2hva %#x" % GPA})["return"]
    return int(answer.split()[-1], 16)


def _pagemap_entry(pid, hva):
    with open("/proc/%d/pagemap" % pid, "rb") as handle:
        handle.seek(hva // encoding.PAGE_SIZE * encoding.ENTRY_SIZE)
        return int.from_bytes(handle.read(encoding.ENTRY_SIZE), "little")


def test_poisoned_guest_page_shows_everything_a_real_memory_error_leaves(guest):
    proc, qmp = guest
    hva = _hva(qmp)
    assert not _pagemap_entry(proc.pid, hva) & encoding.PM_SWAP
    done = QemuProcess(proc.pid).poison_guest_page(hva, GPA)
    assert [step[0] for step in done["steps"]] == ["scratch", "userfaultfd", "api", "madvise", "register",
                                                   "poison", "ram_addr", "list_add", "event", "log"]
    assert done["ram_addr"] == "%#x" % GPA           # pc.ram starts at ram_addr 0 on q35
    assert set(done["ptrace_requests"]) <= GP_ONLY, done["ptrace_requests"]
    # kernel side: a swap-format entry, offset PTE_MARKER_POISONED (the type number varies by kernel)
    entry = _pagemap_entry(proc.pid, hva)
    assert entry & encoding.PM_SWAP and not entry & encoding.PM_PRESENT, hex(entry)
    assert (entry >> encoding.SWP_TYPE_BITS) & encoding.PM_PFRAME_MASK == encoding.PTE_MARKER_POISONED, hex(entry)
    # QEMU side: the event, and the guest still runs
    status = qmp.execute("query-status")["return"]
    assert status["status"] == "running" and proc.poll() is None
    events = [e for e in qmp.events if e.get("event") == "MEMORY_FAILURE"]
    assert events and events[0]["data"]["recipient"] == "guest" and events[0]["data"]["action"] == "inject", qmp.events
    # QEMU's own list now holds the page: a second add finds it and changes nothing
    again = QemuProcess(proc.pid).add_to_poison_list(GPA)
    assert again["lh_first_before"] == again["lh_first_after"] != "0x0", again
    assert again["entry_ram_addr"] == "%#x" % GPA
    # the log line QEMU wrote through its own warn_report()
    qmp.execute("quit")
    proc.wait(timeout=20)
    log = proc.stderr.read().decode(errors="replace")
    expected = MCE_FORMAT.replace("%p", "0x%x" % hva).replace("0x%lx", "%#x" % GPA).replace("%s", "BUS_MCEERR_AO")
    assert expected in log, log


def test_stock_qemu_dies_when_a_migration_reads_the_poisoned_page(guest):
    """The crash the collection exists to prevent, on the real stock binary (no guard in 7.2)."""
    proc, qmp = guest
    QemuProcess(proc.pid).poison_guest_page(_hva(qmp), GPA)
    qmp.execute("migrate", {"uri": "exec:cat > /dev/null"})
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("QEMU survived a migration that read a poisoned page")
    assert proc.returncode < 0, proc.returncode     # killed by a signal, not a clean exit
