# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""evacuate_host.yml against a sequential ``virsh migrate --live`` loop, on the hypervisor lab.

Both move the same guests between the same two lab hypervisors with the same bandwidth cap,
in the same run:

- baseline: ``virsh migrate --live --persistent --undefinesource --bandwidth B`` for one guest
  after the other, from hv1 to hv2 (what an operator's shell loop does);
- evacuation: ``ansible-playbook playbooks/evacuate_host.yml`` emptying hv2 back onto hv1 with
  ``max_parallel`` migrations at once, with everything the playbook does besides migrating
  (lock, capacity, poison scan, gate, plan, verification, report).

The guests are the lab's 64 MiB TCG test guest with a boot sector that fills 40 MiB of its RAM
with non-zero data and halts (molecule/migrate/files/make_bulky_disk.py): QEMU sends zero pages
almost for free, so without such data a migration is over before it is worth measuring. The
bandwidth cap (default 4 MiB/s per migration, as operators cap migrations on a shared network)
makes the time a migration takes independent of how busy this machine is.

Prints both wall times and the ratio evacuation/sequential (goal: <= 0.6), and checks that the
evacuation moved every guest (its report: every guest ``migrated``, nothing failed). Exits
non-zero when a check fails (and, with --enforce-goal, when the ratio misses the goal).

Needs root and the lab (``lab/hvlab up`` is run; it reuses a running lab). hv1 and hv2 must run
no other guests. The bench guests are deleted at the end.

    .venv/bin/python benchmarks/evacuate.py [--guests 8] [--max-parallel 4] [--bandwidth 4]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HVLAB = REPO / "lab" / "hvlab"
SHARED_DIR = REPO / "lab" / "state" / "shared"
SHARED_IN_CONTAINER = "/var/lib/libvirt/images/shared"
GUEST_TEMPLATE = REPO / "lab" / "hvlab.d" / "guest.xml.j2"
BULKY_WRITER = REPO / "molecule" / "migrate" / "files" / "make_bulky_disk.py"
PLAYBOOK = REPO / "playbooks" / "evacuate_host.yml"
SOURCE, DESTINATION = "hv1", "hv2"
PREFIX = "bench"
DISK_NAME = "bench-bulky.img"
GOAL_RATIO = 0.6


class BenchError(Exception):
    pass


def run(argv, timeout=1800, input_text=None, check=True):
    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=timeout,
                          input=input_text, check=False)
    if check and proc.returncode != 0:
        raise BenchError("%s exited %d: %s" % (" ".join(str(a) for a in argv[:4]), proc.returncode,
                                               (proc.stderr or proc.stdout).strip()[-2000:]))
    return proc


def virsh(host, *args, **kwargs):
    return run(["docker", "exec", "-i", host, "virsh", "-c", "qemu:///system", *args], **kwargs)


def lab_guests():
    return json.loads(run([HVLAB, "guests", "list", "--json"]).stdout)


def write_bulky_disk():
    spec = importlib.util.spec_from_file_location("make_bulky_disk", BULKY_WRITER)
    writer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(writer)
    path = SHARED_DIR / DISK_NAME
    if writer.main(["make_bulky_disk.py", str(path)]) != 0:
        raise BenchError("could not write %s" % path)
    os.chmod(path, 0o444)
    return path


def guest_xml(name):
    text = GUEST_TEMPLATE.read_text()
    return text.replace("{{ guest_name }}", name).replace("{{ guest_disk }}",
                                                          "%s/%s" % (SHARED_IN_CONTAINER, DISK_NAME))


def start_guests(count):
    names = ["%s-%d" % (PREFIX, n) for n in range(1, count + 1)]
    for name in names:
        virsh(SOURCE, "define", "/dev/stdin", input_text=guest_xml(name))
        virsh(SOURCE, "start", name)
    # the boot sector fills its 40 MiB in well under a second of TCG time; give it a margin
    time.sleep(3)
    return names


def delete_guests(names):
    for guest in lab_guests():
        if guest["name"] in names:
            virsh(guest["host"], "destroy", guest["name"], check=False)
            virsh(guest["host"], "undefine", guest["name"], check=False)


def sequential_loop(names, bandwidth):
    """The baseline: one `virsh migrate --live` after the other, hv1 -> hv2."""
    started = time.monotonic()
    for name in names:
        virsh(SOURCE, "migrate", "--live", "--persistent", "--undefinesource", "--bandwidth", str(bandwidth),
              name, "qemu+tcp://%s/system" % DESTINATION, timeout=900)
    return time.monotonic() - started


def evacuation(names, max_parallel, bandwidth, report_dir):
    """evacuate_host.yml, hv2 -> hv1, max_parallel at once."""
    extra = {"evacuate_source": DESTINATION, "evacuate_targets": [SOURCE], "evacuate_max_parallel": max_parallel,
             "evacuate_bandwidth": bandwidth, "evacuate_cordon": False, "evacuate_report_dir": str(report_dir)}
    extra_file = report_dir / "extra-vars.json"
    extra_file.write_text(json.dumps(extra))
    env = dict(os.environ, ANSIBLE_FORKS=str(max(max_parallel, 5)))
    argv = [Path(sys.executable).parent / "ansible-playbook", PLAYBOOK, "-e", "@%s" % extra_file]
    started = time.monotonic()
    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True, cwd=str(REPO), env=env,
                          timeout=1800, check=False)
    wall = time.monotonic() - started
    reports = sorted(report_dir.glob("%s-*.json" % DESTINATION))
    if proc.returncode != 0 or not reports:
        raise BenchError("the evacuation failed (rc %d):\n%s" % (proc.returncode, proc.stdout[-4000:]))
    report = json.loads(reports[-1].read_text())
    moved = {vm["name"] for vm in report["vms"] if vm["status"] == "migrated" and vm["running_on"] == [SOURCE]}
    missing = sorted(set(names) - moved)
    if report["failed"] or missing:
        raise BenchError("the evacuation did not move %s: %s" % (", ".join(missing) or "everything", report["msg"]))
    durations = [vm["duration_s"] for vm in report["vms"] if vm["name"] in names and vm["duration_s"] is not None]
    return wall, durations


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--guests", type=int, default=8)
    parser.add_argument("--max-parallel", type=int, default=4)
    parser.add_argument("--bandwidth", type=int, default=4, help="MiB/s per migration, both sides (default 4)")
    parser.add_argument("--enforce-goal", action="store_true", help="exit 1 when the ratio misses %.1f" % GOAL_RATIO)
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("benchmarks/evacuate.py needs root: the hypervisor lab runs docker and privileged containers",
              file=sys.stderr)
        return 2
    if not 1 <= args.guests <= 16 or not 1 <= args.max_parallel <= 16 or args.bandwidth < 1:
        print("--guests and --max-parallel take 1..16, --bandwidth at least 1 (MiB/s)", file=sys.stderr)
        return 2
    names = []
    try:
        up = run([HVLAB, "up"], check=False)
        if up.returncode != 0:
            raise BenchError("the lab did not come up: %s" % up.stderr.strip()[-2000:])
        busy = sorted("%s on %s" % (g["name"], g["host"]) for g in lab_guests()
                      if g["host"] in (SOURCE, DESTINATION) and g["state"] == "running")
        if busy:
            raise BenchError("the benchmark needs %s and %s without other guests, found: %s; delete them with "
                             "`lab/hvlab guests delete NAME...`" % (SOURCE, DESTINATION, ", ".join(busy)))
        disk = write_bulky_disk()
        names = start_guests(args.guests)
        print("%d guests of 64 MiB (40 MiB non-zero), bandwidth cap %d MiB/s per migration"
              % (len(names), args.bandwidth))
        seq = sequential_loop(names, args.bandwidth)
        print("sequential virsh migrate --live loop (%s -> %s): %.1f s" % (SOURCE, DESTINATION, seq))
        with tempfile.TemporaryDirectory(prefix="evacuate-bench.") as tmp:
            wall, durations = evacuation(names, args.max_parallel, args.bandwidth, Path(tmp))
        print("evacuate_host.yml, max_parallel %d (%s -> %s): %.1f s (per-VM migrations %.1f..%.1f s)"
              % (args.max_parallel, DESTINATION, SOURCE, wall, min(durations), max(durations)))
        ratio = wall / seq
        verdict = "meets" if ratio <= GOAL_RATIO else "MISSES"
        print("ratio evacuation/sequential: %.2f (goal <= %.1f: %s)" % (ratio, GOAL_RATIO, verdict))
        disk.unlink()
        return 1 if args.enforce_goal and ratio > GOAL_RATIO else 0
    except BenchError as exc:
        print("benchmark failed: %s" % exc, file=sys.stderr)
        return 1
    finally:
        if names:
            delete_guests(names)


if __name__ == "__main__":
    sys.exit(main())
