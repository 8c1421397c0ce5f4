# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""procinject.elf and procinject.tracee against real processes of this machine (no root:
a process may trace its own children).

The target is a child Python process blocked in read() on a pipe, as QEMU's main loop blocks
in ppoll(): the injector must stop it inside that system call, run system calls and C library
functions in it, and hand it back so that the interrupted read() restarts and the child goes on
as if nothing happened. Every ptrace request the injector issues is recorded; the tests assert
that none of them touches extended register state (what gdb's inferior calls need and cannot do
on CPUs with AMX)."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import time

import pytest

from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.procinject import elf, tracee
from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.procinject.tracee import (
    InjectError,
    Tracee,
    choose_thread,
)

GP_ONLY = {"PTRACE_SEIZE", "PTRACE_INTERRUPT", "PTRACE_GETREGS", "PTRACE_SETREGS", "PTRACE_CONT",
           "PTRACE_SINGLESTEP", "PTRACE_DETACH", "PTRACE_GETSIGINFO"}
CHILD = "import sys\nfor line in sys.stdin:\n    print('echo ' + line.strip(), flush=True)\n"
BUSY = "print('busy', flush=True)\nwhile True:\n    pass\n"


def _libc_path(pid):
    with open("/proc/%d/maps" % pid, encoding="ascii") as handle:
        for line in handle:
            fields = line.split()
            if len(fields) >= 6 and os.path.basename(fields[5]).startswith("libc.so"):
                return fields[5]
    raise AssertionError("no libc mapped in %d" % pid)


@pytest.fixture(name="child")
def fixture_child():
    proc = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    # wait until it blocks in read() on stdin
    proc.stdin.write("ready\n")
    proc.stdin.flush()
    assert proc.stdout.readline().strip() == "echo ready"
    _wait_blocked_in_read(proc.pid)
    yield proc
    proc.kill()
    proc.wait()


def _wait_blocked_in_read(pid, timeout=30.0):
    """Until /proc says the child sits in read() (system call 0), not still in its write()."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open("/proc/%d/syscall" % pid, encoding="ascii") as handle:
                if handle.read().split()[0] == "0":
                    return
        except (OSError, IndexError):
            pass
        time.sleep(0.01)
    raise AssertionError("the child never blocked in read()")


def _still_answers(proc, word):
    proc.stdin.write(word + "\n")
    proc.stdin.flush()
    assert proc.stdout.readline().strip() == "echo " + word


def test_elf_symbols_match_the_dynamic_loader():
    """Our ELF reader finds libc's getpid where the dynamic loader put it in this process."""
    libc = ctypes.CDLL(_libc_path(os.getpid()))
    symbols = elf.ProcessSymbols(os.getpid(), path=_libc_path(os.getpid()))
    found = symbols.lookup(["getpid", "snprintf"])
    assert found["getpid"] == ctypes.cast(libc.getpid, ctypes.c_void_p).value
    assert found["snprintf"] == ctypes.cast(libc.snprintf, ctypes.c_void_p).value
    assert symbols.found_in["getpid"] == "binary"
    with pytest.raises(elf.ElfError, match="no_such_symbol_here"):
        symbols.lookup(["no_such_symbol_here"])
    assert symbols.lookup(["no_such_symbol_here"], required=False) == {}


def test_elf_build_id_and_debug_path():
    build_id = elf.ElfFile(sys.executable if os.path.exists(sys.executable) else "/bin/sh").build_id()
    assert build_id is None or len(build_id) == 40
    assert elf.debug_file_path("ab" + "c" * 38, "/x") == "/x/usr/lib/debug/.build-id/ab/" + "c" * 38 + ".debug"


def test_elf_rejects_a_file_that_is_not_elf(tmp_path):
    bogus = tmp_path / "bogus"
    bogus.write_bytes(b"#!/bin/sh\necho\n")
    with pytest.raises(elf.ElfError, match="not a 64-bit little-endian ELF"):
        elf.ElfFile(str(bogus))
    with pytest.raises(elf.ElfError, match="cannot read"):
        elf.ElfFile(str(tmp_path / "missing"))


def test_syscalls_and_calls_run_inside_the_child_and_it_goes_on(child):
    libc = elf.ProcessSymbols(child.pid, path=_libc_path(child.pid)).lookup(["snprintf", "getpid"])
    assert tracee.thread_in_syscall(child.pid, child.pid)
    with Tracee(child.pid, choose_thread(child.pid)) as traced:
        # stopped in read(): orig_rax is read's number, the call was interrupted for restart
        assert traced.saved.orig_rax == 0
        assert traced.syscall("getpid") == child.pid
        page = traced.check_errno(traced.syscall("mmap", 0, 4096, 3, 0x22, -1, 0), "mmap")
        traced.write(page, b"%s=%d\0")
        traced.write(page + 64, b"pid\0")
        length = traced.call(libc["snprintf"], page + 128, 64, page, page + 64, 4242)
        assert length == len("pid=4242")
        assert traced.read(page + 128, length + 1) == b"pid=4242\0"
        assert traced.call(libc["getpid"]) == child.pid
        assert traced.check_errno(traced.syscall("munmap", page, 4096), "munmap") == 0
        requests = list(traced.requests)
    # the interrupted read() was restarted: the child still echoes, twice
    _still_answers(child, "after")
    _still_answers(child, "again")
    assert set(requests) <= GP_ONLY, requests
    assert "PTRACE_GETREGS" in requests and "PTRACE_SETREGS" in requests


def test_a_failing_system_call_is_reported_by_name(child):
    with Tracee(child.pid) as traced:
        result = traced.syscall("close", 987654)
        with pytest.raises(InjectError, match="close of nothing failed in process %d: Bad file descriptor" % child.pid):
            traced.check_errno(result, "close of nothing")
    _still_answers(child, "fine")


def test_a_faulting_call_is_reported_and_the_child_survives(child):
    """A call to an unmapped address faults inside the child; the injector says so, restores
    the registers and detaches without delivering the fault: the child goes on."""
    with pytest.raises(InjectError, match="faulted with signal 11 at rip 0x1000"):
        with Tracee(child.pid) as traced:
            traced.call(0x1000)
    _still_answers(child, "survived")


def test_a_thread_running_user_code_is_not_used():
    busy = subprocess.Popen([sys.executable, "-c", BUSY], stdout=subprocess.PIPE, text=True)
    try:
        assert busy.stdout.readline().strip() == "busy"   # past start-up: no more system calls
        time.sleep(0.2)
        with pytest.raises(InjectError, match="never found inside a system call"):
            with Tracee(busy.pid, attempts=5):
                pass
        assert busy.poll() is None, "the busy process must keep running"
    finally:
        busy.kill()
        busy.wait()


def test_extended_state_requests_are_refused_by_construction(child):
    """Asking for the XSAVE area (PTRACE_GETREGSET 0x4204 / SETREGSET 0x4205) or the FP
    registers (GETFPREGS 14 / SETFPREGS 15) is refused before it reaches the kernel."""
    traced = Tracee(child.pid)
    for request in (0x4204, 0x4205, 14, 15):
        with pytest.raises(InjectError, match="refusing ptrace request"):
            traced._ptrace(request)  # pylint: disable=protected-access
    assert traced.requests == []
    assert not {0x4204, 0x4205, 14, 15} & tracee.ALLOWED_REQUESTS


def test_choose_thread_prefers_a_blocked_main_thread(child):
    assert choose_thread(child.pid) == child.pid
