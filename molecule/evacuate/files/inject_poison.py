# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Give a running lab guest a poisoned page of guest RAM, through QEMU's own code.

usage: inject_poison.py CONTAINER DOMAIN [GPA]      (root on the docker host; prints JSON)

The hypervisor lab cannot poison memory for real: this kernel has no CONFIG_MEMORY_FAILURE
(the poison lab, lab/poison, covers real kernel hwpoison in a nested VM). What a real memory
error leaves behind is reproduced in two halves, both inside the guest's own QEMU process,
driven by gdb attached from the docker host (gdb calls the process's own functions; nothing
is written into its memory except the arguments gdb passes):

Kernel side (stands in for memory_failure() unmapping a poisoned page). QEMU's guest-RAM page
at GPA is dropped (madvise MADV_DONTNEED) and replaced by a userfaultfd poison marker
(UFFDIO_POISON, Linux 6.6+). Like a hwpoisoned page, any later access raises SIGBUS
BUS_MCEERR_AR. A live migration, which reads every page, would take it on its migration
thread and kill QEMU, which is the crash upstream QEMU 9.0 refuses to risk. /proc/PID/pagemap
shows the page as a PTE marker with the POISONED bit, which poison_info reports as
``pte_marker_poisoned``. The guest itself never touches GPA 0x1000000 (the tick guest runs in
the first 64 KiB), so it keeps running.

QEMU side: what x86 ``kvm_arch_on_sigbus_vcpu()`` does when the kernel signals an action-optional
memory error for guest RAM, called as QEMU's own exported functions (Debian's binary exports
its symbols in .dynsym). ``qemu_ram_addr_from_host()`` and ``kvm_hwpoison_page_add()`` add the
page to QEMU's poison list, which a guest reset walks under KVM. ``qapi_event_send_memory_failure
(guest, inject)`` sends the MEMORY_FAILURE QMP event that libvirt forwards as its memory-failure
domain event. ``warn_report("Guest MCE Memory Error at QEMU addr %p and GUEST addr 0x%lx of type
%s injected", ...)`` writes QEMU's own log line, with QEMU's own timestamp, into the libvirt
domain log. The one step left out is the machine-check injection into the guest. It needs a
KVM vCPU (the lab guests run under TCG, where ``kvm_arch_on_sigbus_vcpu`` itself would dereference
the missing KVM state), and the tick guest has no MCE handler anyway. Under TCG a guest reset
also does not remap the page (QEMU registers ``kvm_unpoison_all`` only under KVM), so the
marker survives a reset and only a new QEMU process (power off, start) gets clean memory.

The guest must run; the page must be guest RAM (``gpa2hva`` on the monitor, which only
translates addresses and never touches the page). Exit status 0 and JSON on stdout on
success; a message naming the failed step and exit status 1 otherwise.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

PAGE = 4096
SYS_USERFAULTFD = 323                    # x86_64
UFFD_FLAGS = 0o2000000 | 0o4000 | 1      # O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY
UFFD_API = 0xAA
UFFD_FEATURE_POISON = 1 << 14
UFFDIO_API = 0xC018AA3F                  # _IOWR(0xAA, 0x3F, struct uffdio_api: 24 bytes)
UFFDIO_REGISTER = 0xC020AA00             # _IOWR(0xAA, 0x00, struct uffdio_register: 32 bytes)
UFFDIO_POISON = 0xC020AA08               # _IOWR(0xAA, 0x08, struct uffdio_poison: 32 bytes)
UFFDIO_REGISTER_MODE_MISSING = 1
MADV_DONTNEED = 4
RECIPIENT_GUEST = 1                      # qapi MemoryFailureRecipient
ACTION_INJECT = 1                        # qapi MemoryFailureAction
MCE_FORMAT = "Guest MCE Memory Error at QEMU addr %p and GUEST addr 0x%lx of type %s injected"

GDB_SCRIPT = """set pagination off
set confirm off
set $page = (unsigned long) {hva:#x}
set $uffd = (long) syscall((long) {sys_uffd}, (long) {uffd_flags:#x})
printf "STEP userfaultfd %ld\\n", $uffd
set $buf = (unsigned long) malloc((unsigned long) 64)
set *(unsigned long *)($buf) = {uffd_api:#x}
set *(unsigned long *)($buf + 8) = {feature:#x}
set *(unsigned long *)($buf + 16) = 0
printf "STEP api %d %#lx\\n", (int) ioctl((int) $uffd, (unsigned long) {uffdio_api:#x}, $buf), *(unsigned long *)($buf + 8)
printf "STEP madvise %d\\n", (int) madvise((void *) $page, (unsigned long) {page}, (int) {madv})
set *(unsigned long *)($buf) = $page
set *(unsigned long *)($buf + 8) = {page}
set *(unsigned long *)($buf + 16) = {mode_missing}
set *(unsigned long *)($buf + 24) = 0
printf "STEP register %d %#lx\\n", (int) ioctl((int) $uffd, (unsigned long) {uffdio_register:#x}, $buf), *(unsigned long *)($buf + 24)
set *(unsigned long *)($buf) = $page
set *(unsigned long *)($buf + 8) = {page}
set *(unsigned long *)($buf + 16) = 0
set *(long *)($buf + 24) = 0
printf "STEP poison %d %ld\\n", (int) ioctl((int) $uffd, (unsigned long) {uffdio_poison:#x}, $buf), *(long *)($buf + 24)
set $ram = (unsigned long) qemu_ram_addr_from_host((void *) $page)
printf "STEP ram_addr %#lx\\n", $ram
call (void) kvm_hwpoison_page_add((unsigned long) $ram)
printf "STEP list_add 0\\n"
set *(unsigned char *)($buf) = 0
set *(unsigned char *)($buf + 1) = 0
call (void) qapi_event_send_memory_failure((int) {recipient}, (int) {action}, (void *) $buf)
printf "STEP event 0\\n"
call (void) warn_report("{fmt}", (void *) $page, (unsigned long) {gpa:#x}, "BUS_MCEERR_AO")
printf "STEP log 0\\n"
detach
"""


def fail(step, message):
    sys.stderr.write("inject_poison: %s: %s\n" % (step, message))
    sys.exit(1)


def run(argv, step):
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        fail(step, "%s exited %d: %s" % (argv[0], proc.returncode, (proc.stderr or proc.stdout).strip()))
    return proc.stdout


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
            with open("/proc/%s/status" % entry) as handle:
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
    gpa = int(argv[3], 0) if len(argv) == 4 else 0x1000000
    if gpa % PAGE:
        fail("arguments", "GPA %#x is not page aligned" % gpa)
    if os.geteuid() != 0:
        fail("arguments", "run as root on the docker host (gdb attaches to the guest's QEMU)")
    gdb = shutil.which("gdb")
    if not gdb:
        fail("gdb", "gdb is not installed on the docker host (Debian: apt-get install gdb)")

    cpid = int(run(["docker", "exec", container, "cat", "/run/libvirt/qemu/%s.pid" % domain], "pid file").strip())
    hpid = host_pid(container, cpid)
    answer = run(["docker", "exec", container, "virsh", "-c", "qemu:///system", "qemu-monitor-command",
                  "--hmp", domain, "gpa2hva %#x" % gpa], "gpa2hva")
    match = re.search(r"Host virtual address for (0x[0-9a-f]+) \((.*?)\) is (0x[0-9a-f]+)", answer)
    if not match:
        fail("gpa2hva", "GPA %#x is not guest RAM of %r: %s" % (gpa, domain, answer.strip()))
    hva = int(match.group(3), 16)
    script = GDB_SCRIPT.format(hva=hva, gpa=gpa, page=PAGE, sys_uffd=SYS_USERFAULTFD, uffd_flags=UFFD_FLAGS,
                               uffd_api=UFFD_API, feature=UFFD_FEATURE_POISON, uffdio_api=UFFDIO_API,
                               madv=MADV_DONTNEED, mode_missing=UFFDIO_REGISTER_MODE_MISSING,
                               uffdio_register=UFFDIO_REGISTER, uffdio_poison=UFFDIO_POISON,
                               recipient=RECIPIENT_GUEST, action=ACTION_INJECT, fmt=MCE_FORMAT)
    with tempfile.NamedTemporaryFile("w", suffix=".gdb") as handle:
        handle.write(script)
        handle.flush()
        out = run([gdb, "-nx", "-batch", "-iex", "set sysroot /proc/%d/root" % hpid, "-p", str(hpid),
                   "-x", handle.name], "gdb")
    steps = {}
    for line in out.splitlines():
        if line.startswith("STEP "):
            name, *values = line.split()[1:]
            steps[name] = values
    checks = [
        ("userfaultfd", lambda v: int(v[0]) >= 0),
        ("api", lambda v: int(v[0]) == 0 and int(v[1], 16) & UFFD_FEATURE_POISON),
        ("madvise", lambda v: int(v[0]) == 0),
        ("register", lambda v: int(v[0]) == 0),
        ("poison", lambda v: int(v[0]) == 0 and int(v[1]) == PAGE),
        ("ram_addr", lambda v: int(v[0], 16) != (1 << 64) - 1),
        ("list_add", lambda v: True),
        ("event", lambda v: True),
        ("log", lambda v: True),
    ]
    for name, ok in checks:
        if name not in steps:
            fail(name, "gdb did not get to this step; its output:\n%s" % out)
        if not ok(steps[name]):
            fail(name, "failed in QEMU pid %d: %s" % (hpid, " ".join(steps[name])))
    print(json.dumps({"container": container, "domain": domain, "container_pid": cpid, "host_pid": hpid,
                      "gpa": "%#x" % gpa, "hva": "%#x" % hva, "ram_block": match.group(2),
                      "ram_addr": steps["ram_addr"][0], "userfaultfd": int(steps["userfaultfd"][0])}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
