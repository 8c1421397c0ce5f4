# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Checks after converge: the test guest left the first hypervisor for the second, live.

Each test runs on both hypervisors of the scenario and asserts what that host must show as
the migration source (the first in sorted order) or target (the second).
"""

from __future__ import annotations

import re
import time

GUEST = "tick1"
SERIAL_LOG = f"/var/log/libvirt/qemu/{GUEST}-serial.log"
TICK = re.compile(r"^tick (\d+)\r?$", re.M)


def _is_source(host) -> bool:
    variables = host.ansible.get_variables()
    return variables["inventory_hostname"] == sorted(variables["groups"]["hypervisors"])[0]


def _virsh(host, *args):
    return host.run_expect([0], "virsh -c qemu:///system" + " %s" * len(args), *args)


def _counters(host) -> list[int]:
    return [int(n) for n in TICK.findall(host.file(SERIAL_LOG).content_string)]


def test_libvirtd_runs_and_listens_for_migration(host):
    assert host.process.filter(comm="libvirtd"), "no libvirtd process"
    assert host.socket("tcp://0.0.0.0:16509").is_listening
    assert host.socket("tcp://0.0.0.0:16514").is_listening, "no TLS listener (migration_transport in prepare)"


def test_guest_placement(host):
    defined = _virsh(host, "list", "--all", "--name").stdout.split()
    if _is_source(host):
        assert GUEST not in defined, f"{GUEST} is still defined on the source"
        assert not host.process.filter(comm="qemu-system-x86"), "a QEMU process is left on the source"
    else:
        assert GUEST in defined, f"{GUEST} is not defined on the target"
        assert _virsh(host, "domstate", GUEST).stdout.strip() == "running"
        info = _virsh(host, "dominfo", GUEST).stdout
        assert re.search(r"^Persistent:\s+yes$", info, re.M), info


def test_counter_continued_after_migration(host):
    before = _counters(host)
    time.sleep(1.5)
    after = _counters(host)
    if _is_source(host):
        # The guest ran here first (counted past zero), and this log no longer grows.
        assert before and before[-1] > 0, f"the guest never counted on the source: {before}"
        assert after == before, "the source's serial log still grows: the guest runs there"
        return
    assert before, f"no 'tick N' line in {SERIAL_LOG} on the target"
    assert before[0] != 0, "the target's first line is 'tick 0': the guest restarted instead of moving"
    assert after[-1] > before[-1], f"the counter stopped at {before[-1]}"
    assert after == sorted(after), "the counter went backwards"
