# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Migration time of the same VM with one hole against none (x-poison-holes), in the same run.

Two QEMU processes of the patched_qemu role's package (guard + x-poison-holes series) on this
machine, KVM, migrating over a unix socket with the capability set on both sides:

- baseline: the VM with no poisoned page;
- holes: the same VM configuration with one poisoned page, given to it the way the hypervisor
  lab does (the collection's injector, plugins/module_utils/procinject: the page becomes a
  userfaultfd poison marker and enters QEMU's poison list; this machine's kernel cannot poison
  memory for real). The migration sends that page as a hole record and the destination installs
  it with UFFDIO_POISON.

Guest RAM is filled with non-zero data (a random blob loaded with -device loader), because QEMU
sends zero pages almost for free; the guest never runs (-S), so nothing touches the hole.
The rounds alternate baseline and holes; each migration is capped to the same bandwidth, so the
time depends on the pages sent, not on how busy this machine is.

Prints the median time of each and the ratio holes/baseline (expected about 1: a hole costs a
header, not a page), and checks that every holes migration completed with the page in the
destination's x-query-hwpoison and a POISONED PTE marker at the destination's address.
Exits non-zero when a check fails.

    .venv/bin/python benchmarks/poison_holes.py [--qemu-binary PATH] [--rounds 3] [--ram-mib 256]

Without --qemu-binary the package is taken from the CI cache the tests use (and built there on
first use, about 8 minutes), as the integration tests do (tests/integration/patched_qemu_package.py).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GPA = 0x100000 * 3  # 3 MiB: inside the blob the loader puts at 2 MiB
BLOB_GPA = 0x200000
PAGE = 4096
PTE_MARKER_POISONED = 1 << 1


class Qemu:
    def __init__(self, binary, workdir, name, ram_mib, blob, incoming=False):
        self.name = name
        self.qmp_path = str(workdir / f"{name}.qmp")
        argv = [binary, "-accel", "kvm", "-m", str(ram_mib), "-S", "-display", "none", "-nodefaults",
                "-L", "/usr/share/seabios", "-L", "/usr/share/qemu",
                "-device", f"loader,file={blob},addr={BLOB_GPA:#x}",
                "-qmp", f"unix:{self.qmp_path},server=on,wait=off"]
        if incoming:
            argv += ["-incoming", "defer"]
        self.log = open(workdir / f"{name}.log", "w", encoding="utf-8")  # pylint: disable=consider-using-with
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX)
                self.sock.connect(self.qmp_path)
                break
            except OSError:
                self.sock.close()
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{name}: QEMU did not start: {Path(self.log.name).read_text()}") from None
                time.sleep(0.1)
        self.stream = self.sock.makefile("rw")
        self.stream.readline()
        self.command("qmp_capabilities")

    def command(self, name, arguments=None):
        request = {"execute": name}
        if arguments:
            request["arguments"] = arguments
        self.stream.write(json.dumps(request) + "\n")
        self.stream.flush()
        while True:
            line = self.stream.readline()
            if not line:
                raise RuntimeError(f"{self.name}: QMP closed ({Path(self.log.name).read_text()[-500:]})")
            message = json.loads(line)
            if "event" not in message:
                if "error" in message:
                    raise RuntimeError(f"{self.name}: {name}: {message['error']}")
                return message.get("return")

    def holes(self, bandwidth):
        self.command("migrate-set-capabilities",
                     {"capabilities": [{"capability": "x-poison-holes", "state": True}]})
        self.command("migrate-set-parameters", {"max-bandwidth": bandwidth})

    def hva(self, gpa):
        answer = self.command("human-monitor-command", {"command-line": f"gpa2hva {gpa:#x}"})
        return int(answer.split()[-1], 16)

    def stop(self):
        if self.proc.poll() is None:
            try:
                self.command("quit")
            except (RuntimeError, OSError):
                pass
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.sock.close()
        self.log.close()


def pagemap(pid, vaddr):
    with open(f"/proc/{pid}/pagemap", "rb") as f:
        f.seek(vaddr // PAGE * 8)
        return struct.unpack("<Q", f.read(8))[0]


def one_migration(binary, workdir, ram_mib, blob, bandwidth, with_hole, number):
    """One source -> destination migration; returns its record."""
    label = f"{'holes' if with_hole else 'baseline'}-{number}"
    source = Qemu(binary, workdir, f"{label}-src", ram_mib, blob)
    destination = Qemu(binary, workdir, f"{label}-dst", ram_mib, blob, incoming=True)
    record = {"case": "holes" if with_hole else "baseline", "round": number}
    try:
        source.holes(bandwidth)
        destination.holes(bandwidth)
        if with_hole:
            sys.path.insert(0, subprocess.run([str(REPO / "tools" / "collection-link")], capture_output=True,
                                              text=True, check=True).stdout.strip())
            # pylint: disable=import-outside-toplevel
            from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.procinject.qemu import QemuProcess
            QemuProcess(source.proc.pid).poison_guest_page(source.hva(GPA), GPA)
            record["source_list"] = source.command("x-query-hwpoison")
        uri = f"unix:{workdir}/{label}.mig"
        destination.command("migrate-incoming", {"uri": uri})
        started = time.monotonic()
        source.command("migrate", {"uri": uri})
        while True:
            status = source.command("query-migrate").get("status")
            if status in ("completed", "failed", "cancelled"):
                break
            time.sleep(0.05)
        record["seconds"] = time.monotonic() - started
        record["status"] = status
        info = source.command("query-migrate")
        record["pages_sent"] = info.get("ram", {}).get("normal")
        if with_hole and status == "completed":
            listed = destination.command("x-query-hwpoison")
            entry = pagemap(destination.proc.pid, destination.hva(GPA))
            record["destination_list"] = listed
            record["destination_pagemap"] = f"{entry:#018x}"
            record["hole_carried"] = (len(listed) == 1 and listed[0].get("gpa") == GPA
                                      and entry >> 62 & 1 == 1 and entry >> 5 & ((1 << 50) - 1) == PTE_MARKER_POISONED)
        record["source_alive"] = source.proc.poll() is None
    finally:
        source.stop()
        destination.stop()
    return record


def patched_binary(workdir):
    """qemu-system-x86_64 of the role's package from the CI cache (built there on first use)."""
    sys.path.insert(0, str(REPO / "tests" / "integration"))
    sys.path.insert(0, subprocess.run([str(REPO / "tools" / "collection-link")], capture_output=True, text=True,
                                      check=True).stdout.strip())
    # pylint: disable=import-outside-toplevel
    import patched_qemu_package
    package = patched_qemu_package.obtain_package(workdir, patched_qemu_package.host_source_version())
    return str(patched_qemu_package.extract_binary(package, workdir))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--qemu-binary", help="patched qemu-system-x86_64 (default: the role's package)")
    parser.add_argument("--rounds", type=int, default=3, help="migrations per case (default 3)")
    parser.add_argument("--ram-mib", type=int, default=256, help="guest RAM (default 256)")
    parser.add_argument("--data-mib", type=int, default=128, help="non-zero guest RAM (default 128)")
    parser.add_argument("--bandwidth", type=int, default=256, help="MiB/s cap per migration (default 256)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("run as root (the injector attaches to QEMU with ptrace)")
    if not os.path.exists("/dev/kvm"):
        parser.error("/dev/kvm is missing: the benchmark needs KVM")
    if args.data_mib + BLOB_GPA // (1 << 20) > args.ram_mib:
        parser.error("--data-mib does not fit in --ram-mib")
    with tempfile.TemporaryDirectory(prefix="bench-holes-") as scratch:
        workdir = Path(scratch)
        binary = args.qemu_binary or patched_binary(workdir)
        blob = workdir / "data.bin"
        with open(blob, "wb") as f:
            f.write(os.urandom(args.data_mib << 20))
        records = []
        for number in range(1, args.rounds + 1):
            for with_hole in (False, True):
                record = one_migration(binary, workdir, args.ram_mib, blob, args.bandwidth << 20, with_hole, number)
                print(f"{record['case']:8} round {number}: {record['status']} in {record['seconds']:.2f} s, "
                      f"{record['pages_sent']} pages" + (f", hole carried: {record['hole_carried']}"
                                                         if with_hole else ""))
                records.append(record)
    baseline = [r["seconds"] for r in records if r["case"] == "baseline"]
    holes = [r["seconds"] for r in records if r["case"] == "holes"]
    problems = [f"{r['case']} round {r['round']}: status {r['status']}" for r in records if r["status"] != "completed"]
    problems += [f"holes round {r['round']}: hole not carried ({r.get('destination_list')}, "
                 f"{r.get('destination_pagemap')})" for r in records if r["case"] == "holes" and not r.get("hole_carried")]
    problems += [f"{r['case']} round {r['round']}: source QEMU died" for r in records if not r["source_alive"]]
    median_baseline, median_holes = statistics.median(baseline), statistics.median(holes)
    print(f"baseline (no hole): median {median_baseline:.2f} s over {len(baseline)}")
    print(f"one hole:           median {median_holes:.2f} s over {len(holes)}")
    print(f"ratio holes/baseline: {median_holes / median_baseline:.3f}")
    for problem in problems:
        print(f"FAIL {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
