# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Give a running lab guest a poisoned page of guest RAM, through QEMU's own code.

usage: inject_poison.py CONTAINER DOMAIN [GPA]      (root on the docker host; prints JSON)

The hypervisor lab cannot poison memory for real: this kernel has no CONFIG_MEMORY_FAILURE
(the poison lab, lab/poison, covers real kernel hwpoison in a nested VM). What a real memory
error leaves behind is reproduced inside the guest's own QEMU process by the collection's
injector (plugins/module_utils/procinject/qemu.py, which documents each step and what is
simulated), attached from the docker host with plain ptrace and general-purpose registers
only, so it works on every x86-64 CPU (gdb's inferior calls fail on CPUs with AMX):

- kernel side: the page at GPA is dropped and replaced by a userfaultfd poison marker; any
  later access raises SIGBUS, and /proc/PID/pagemap shows the POISONED PTE marker, which
  poison_info reports as ``pte_marker_poisoned``. A live migration reads the page and kills the
  stock QEMU, the crash upstream QEMU 9.0 refuses to risk;
- QEMU side: the page enters QEMU's own poison list, QEMU emits MEMORY_FAILURE (libvirt's
  memory-failure domain event) and writes its "Guest MCE Memory Error ..." line into the
  libvirt domain log.

The guest itself never touches GPA 0x1000000 (the tick guest runs in the first 64 KiB), so it
keeps running. Under TCG a guest reset does not remap the page (QEMU registers its unpoison
hook only under KVM): only a new QEMU process (power off, start) gets clean memory.

The address is found with the monitor's ``gpa2hva``, which only translates and never touches
the page. Exit status 0 and JSON on stdout on success; a message naming the failed step and
exit status 1 otherwise.
"""

import json
import os
import re
import subprocess
import sys

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGE = 4096
DEFAULT_GPA = 0x1000000


def fail(step, message):
    sys.stderr.write("inject_poison: %s: %s\n" % (step, message))
    sys.exit(1)


def run(argv, step):
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        fail(step, "%s exited %d: %s" % (argv[0], proc.returncode, (proc.stderr or proc.stdout).strip()))
    return proc.stdout


def collection_root():
    """The ansible_collections root that resolves kvm_ras.poison_guard to this checkout."""
    return run([os.path.join(TOP, "tools", "collection-link")], "collection path").strip()


def host_pid(container, container_pid):
    """The docker host's PID of a process known by its PID inside the container."""
    init = run(["docker", "inspect", "-f", "{{.State.Pid}}", container], "docker inspect").strip()
    namespace = os.readlink("/proc/%s/ns/pid" % init)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.readlink("/proc/%s/ns/pid" % entry) != namespace:
                continue
            with open("/proc/%s/status" % entry, encoding="ascii", errors="replace") as handle:
                for line in handle:
                    if line.startswith("NSpid:"):
                        pids = line.split()[1:]
                        if len(pids) >= 2 and pids[-1] == str(container_pid):
                            return int(pids[0])
        except OSError:
            continue
    fail("pid", "no process with PID %s in the PID namespace of %s" % (container_pid, container))
    return None


def main(argv):
    if len(argv) not in (3, 4):
        sys.stderr.write(__doc__.split("\n\n")[1] + "\n")
        return 2
    container, domain = argv[1], argv[2]
    try:
        gpa = int(argv[3], 0) if len(argv) == 4 else DEFAULT_GPA
    except ValueError:
        fail("arguments", "GPA %r is not a number (e.g. 0x1000000)" % argv[3])
    if gpa % PAGE:
        fail("arguments", "GPA %#x is not page aligned" % gpa)
    if os.geteuid() != 0:
        fail("arguments", "run as root on the docker host (the injector attaches to the guest's QEMU with ptrace)")
    sys.path.insert(0, collection_root())
    # pylint: disable=import-outside-toplevel
    from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.procinject.elf import ElfError
    from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.procinject.qemu import QemuProcess
    from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.procinject.tracee import InjectError

    cpid = int(run(["docker", "exec", container, "cat", "/run/libvirt/qemu/%s.pid" % domain], "pid file").strip())
    hpid = host_pid(container, cpid)
    answer = run(["docker", "exec", container, "virsh", "-c", "qemu:///system", "qemu-monitor-command",
                  "--hmp", domain, "gpa2hva %#x" % gpa], "gpa2hva")
    match = re.search(r"Host virtual address for (0x[0-9a-f]+) \((.*?)\) is (0x[0-9a-f]+)", answer)
    if not match:
        fail("gpa2hva", "GPA %#x is not guest RAM of %r: %s" % (gpa, domain, answer.strip()))
    hva = int(match.group(3), 16)
    try:
        qemu = QemuProcess(hpid)
        done = qemu.poison_guest_page(hva, gpa)
    except (InjectError, ElfError, OSError) as exc:
        fail("inject", "QEMU pid %d: %s (steps done: %s)" % (hpid, exc, locals().get("qemu") and qemu.steps))
    steps = dict(done["steps"])
    print(json.dumps({"container": container, "domain": domain, "container_pid": cpid, "host_pid": hpid,
                      "gpa": "%#x" % gpa, "hva": "%#x" % hva, "ram_block": match.group(2),
                      "ram_addr": done["ram_addr"], "userfaultfd": steps["userfaultfd"],
                      "steps": [name for name, _value in done["steps"]],
                      "ptrace_requests": done["ptrace_requests"], "thread": done["thread"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
