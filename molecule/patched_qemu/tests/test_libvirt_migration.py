# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""libvirt runs real guests on the patched binary and live-migrates them between hosts.

The lab's boot-sector guest (its counter proves the RAM moved) is started through libvirt on
the first hypervisor, where /proc/PID/exe must be the patched binary, then live-migrated to the
second with ``virsh migrate --live``; the counter must continue there, and the guest is then
removed again. Runs once, from the first hypervisor.
"""

from __future__ import annotations

import json
import re
import shlex
import time
from pathlib import Path

import jinja2

testinfra_hosts = ["patched-qemu-hv1"]

REPO = Path(__file__).resolve().parents[3]
GUEST = "pq-tick"
DISK = "/var/lib/libvirt/images/shared/tick.img"
SERIAL_LOG = f"/var/log/libvirt/qemu/{GUEST}-serial.log"
TICK = re.compile(r"^tick (\d+)\r?$", re.M)
TARGET = "patched-qemu-hv2"


def _run(host, *argv, ok=(0,)):
    result = host.run(" ".join(shlex.quote(a) for a in argv))
    assert result.rc in ok, (argv, result.stdout, result.stderr)
    return result


def _virsh(host, *args, ok=(0,)):
    return _run(host, "virsh", "-c", "qemu:///system", *args, ok=ok)


def _ticks(host) -> list[int]:
    return [int(n) for n in TICK.findall(host.file(SERIAL_LOG).content_string)]


def _wait(predicate, what, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def test_libvirt_guest_on_patched_binary_live_migrates(host, request):
    target = host.get_host(f"ansible://{TARGET}", ansible_inventory=request.config.option.ansible_inventory)
    template = (REPO / "lab" / "hvlab.d" / "guest.xml.j2").read_text()
    xml = jinja2.Template(template).render(guest_name=GUEST, guest_disk=DISK)
    copied = host.ansible("copy", json.dumps({"content": xml, "dest": f"/root/{GUEST}.xml", "mode": "0600"}),
                          check=False)
    assert not copied.get("failed"), copied
    _virsh(host, "define", f"/root/{GUEST}.xml")
    try:
        _virsh(host, "start", GUEST)
        pid = int(_run(host, "cat", f"/run/libvirt/qemu/{GUEST}.pid").stdout.strip())
        exe = _run(host, "readlink", f"/proc/{pid}/exe").stdout.strip()
        assert exe == "/usr/bin/qemu-system-x86_64", exe
        guard = _run(host, "grep", "-c", "-a", "-F", "-e", "hardware poisoned memory", f"/proc/{pid}/exe")
        assert int(guard.stdout.strip()) >= 1, "the guest does not run the patched binary"
        _wait(lambda: any(n > 0 for n in _ticks(host)), "the guest to count")

        _virsh(host, "migrate", "--live", "--persistent", "--undefinesource", GUEST,
               f"qemu+tcp://{TARGET}/system")

        assert _virsh(target, "domstate", GUEST).stdout.strip() == "running"
        first = _wait(lambda: _ticks(target), "the guest's counter on the target")
        assert first[0] != 0, "the guest restarted on the target instead of moving"
        later = _wait(lambda: [n for n in _ticks(target) if n > first[-1]], "the counter to go on")
        assert later
        assert GUEST not in _virsh(host, "list", "--all", "--name").stdout.split()
    finally:
        for side in (host, target):
            _virsh(side, "destroy", GUEST, ok=(0, 1))
            _virsh(side, "undefine", GUEST, ok=(0, 1))
