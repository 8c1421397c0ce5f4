# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""libvirt runs a real guest on the patched binary and live-migrates it between a patched and
a stock QEMU, in both directions.

The guest is the lab's boot-sector counter (its counter proves that the RAM moved) with what a
production VM uses: VNC graphics with a VGA card, virtio-net on a tap device (with
``<driver name='vhost'/>`` when the host offers /dev/vhost-net; the lab's kernel is built
without CONFIG_VHOST_NET, so there it is QEMU's own virtio-net backend) and a virtio disk.

Both containers run the patched package after converge; the stock binary is still there,
diverted to /usr/bin/qemu-system-x86_64.distrib. ``virsh migrate --xml`` gives the destination
another ``<emulator>``, so the migrations run patched (hv1) -> stock (hv2) and back stock (hv2)
-> patched (hv1): exactly what an evacuation between an upgraded and a not yet upgraded host
does. The counter must go on after each move. Runs once, from the first hypervisor.
"""

from __future__ import annotations

import json
import re
import shlex
import time

testinfra_hosts = ["patched-qemu-hv1"]

GUEST = "pq-prod"
GUEST_UUID = "6b1f3c2e-4a0d-4f6e-9c57-2d8e0a51b7c3"  # one identity for the three XML files of one guest
DISK = "/var/lib/libvirt/images/shared/tick.img"
SERIAL_LOG = f"/var/log/libvirt/qemu/{GUEST}-serial.log"
TICK = re.compile(r"^tick (\d+)\r?$", re.M)
TARGET = "patched-qemu-hv2"
PATCHED = "/usr/bin/qemu-system-x86_64"
STOCK = "/usr/bin/qemu-system-x86_64.distrib"
GUARD = "hardware poisoned memory"


def guest_xml(emulator: str, vhost: bool) -> str:
    driver = "<driver name='vhost'/>" if vhost else "<driver name='qemu'/>"
    return f"""<domain type='qemu'>
  <name>{GUEST}</name>
  <uuid>{GUEST_UUID}</uuid>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc-i440fx-7.2'>hvm</type><boot dev='hd'/></os>
  <cpu mode='custom' match='exact'><model fallback='allow'>qemu64</model></cpu>
  <on_poweroff>destroy</on_poweroff><on_reboot>restart</on_reboot><on_crash>destroy</on_crash>
  <devices>
    <emulator>{emulator}</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='{DISK}'/>
      <target dev='vda' bus='virtio'/>
      <readonly/>
    </disk>
    <interface type='ethernet'>
      <mac address='52:54:00:7a:51:01'/>
      <model type='virtio'/>
      {driver}
    </interface>
    <graphics type='vnc' port='-1' autoport='yes' listen='127.0.0.1'/>
    <video><model type='vga'/></video>
    <serial type='file'>
      <source path='{SERIAL_LOG}'/>
      <target port='0'/>
    </serial>
    <memballoon model='none'/>
  </devices>
</domain>
"""


def _run(host, *argv, ok=(0,)):
    result = host.run(" ".join(shlex.quote(a) for a in argv))
    assert result.rc in ok, (argv, result.stdout, result.stderr)
    return result


def _virsh(host, *args, ok=(0,)):
    return _run(host, "virsh", "-c", "qemu:///system", *args, ok=ok)


def _ticks(host) -> list[int]:
    log = host.file(SERIAL_LOG)
    return [int(n) for n in TICK.findall(log.content_string)] if log.exists else []


def _wait(predicate, what, timeout=90.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def _copy(host, content, dest):
    result = host.ansible("copy", json.dumps({"content": content, "dest": dest, "mode": "0600"}), check=False)
    assert not result.get("failed"), result


def _qemu_of(host) -> dict:
    """The running guest's QEMU: its binary, whether it carries the guard, its command line."""
    pid = int(_run(host, "cat", f"/run/libvirt/qemu/{GUEST}.pid").stdout.strip())
    exe = _run(host, "readlink", f"/proc/{pid}/exe").stdout.strip()
    guard = _run(host, "grep", "-c", "-a", "-F", "-e", GUARD, f"/proc/{pid}/exe", ok=(0, 1))
    cmdline = _run(host, "cat", f"/proc/{pid}/cmdline").stdout.replace("\0", " ")
    return {"exe": exe, "guard": int(guard.stdout.strip() or 0) > 0, "cmdline": cmdline}


def _moved(target, old: list[int]) -> None:
    """The guest's counter goes on on the target: the first tick its new QEMU wrote is not 0
    (a restarted guest counts from 0). ``old`` is what the target's log held before (QEMU
    truncates the file, a log daemon may append: both are handled)."""
    def fresh():
        ticks = _ticks(target)
        return ticks[len(old):] if old and ticks[:len(old)] == old else ticks
    ticks = _wait(fresh, "the guest's counter on the target")
    assert ticks[0] > 0, "the guest restarted on the target instead of moving"
    assert _wait(lambda: [n for n in fresh() if n > ticks[-1]], "the counter to go on")


def test_production_guest_migrates_between_patched_and_stock_qemu(host, request):
    target = host.get_host(f"ansible://{TARGET}", ansible_inventory=request.config.option.ansible_inventory)
    for side in (host, target):
        assert side.file(STOCK).exists, "the stock binary is diverted beside the patched one"
    vhost = host.file("/dev/vhost-net").exists and target.file("/dev/vhost-net").exists
    _copy(host, guest_xml(PATCHED, vhost), f"/root/{GUEST}.xml")
    _copy(host, guest_xml(STOCK, vhost), f"/root/{GUEST}-stock.xml")
    _copy(target, guest_xml(PATCHED, vhost), f"/root/{GUEST}-patched.xml")
    _virsh(host, "define", f"/root/{GUEST}.xml")
    try:
        _virsh(host, "start", GUEST)
        on_patched = _qemu_of(host)
        assert on_patched["exe"] == PATCHED and on_patched["guard"], on_patched
        for option in ("vnc", "virtio-net-pci", "virtio-blk-pci", "VGA"):
            assert option in on_patched["cmdline"], (option, on_patched["cmdline"])
        uses_vhost = '"vhost":true' in on_patched["cmdline"] or "vhost=on" in on_patched["cmdline"]
        assert uses_vhost == vhost, on_patched["cmdline"]
        assert _virsh(host, "domdisplay", GUEST).stdout.strip().startswith("vnc://")
        _wait(lambda: any(n > 0 for n in _ticks(host)), "the guest to count")

        # patched (hv1) -> stock (hv2)
        _virsh(host, "migrate", "--live", "--persistent", "--undefinesource", "--xml", f"/root/{GUEST}-stock.xml",
               GUEST, f"qemu+tls://{TARGET}/system")
        assert _virsh(target, "domstate", GUEST).stdout.strip() == "running"
        on_stock = _qemu_of(target)
        assert on_stock["exe"] == STOCK and not on_stock["guard"], on_stock
        _moved(target, [])
        assert GUEST not in _virsh(host, "list", "--all", "--name").stdout.split()

        # stock (hv2) -> patched (hv1)
        before = _ticks(host)
        _virsh(target, "migrate", "--live", "--persistent", "--undefinesource", "--xml",
               f"/root/{GUEST}-patched.xml", GUEST, f"qemu+tls://{host.backend.get_hostname()}/system")
        assert _virsh(host, "domstate", GUEST).stdout.strip() == "running"
        back = _qemu_of(host)
        assert back["exe"] == PATCHED and back["guard"], back
        _moved(host, before)
    finally:
        for side in (host, target):
            _virsh(side, "destroy", GUEST, ok=(0, 1))
            _virsh(side, "undefine", GUEST, ok=(0, 1))
