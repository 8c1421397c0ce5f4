# -*- coding: utf-8 -*-
# Copyright (c) kvm_ras.poison_guard contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Run system calls and function calls inside one thread of another process, x86-64 Linux.

Why not a debugger: gdb's "call" saves and restores the thread's whole register file, including
the XSAVE area (x87/SSE/AVX/AVX-512/AMX state), through ``PTRACE_SETREGSET NT_X86_XSTATE``.
Debian 12's gdb 13.1 cannot write that area back on CPUs with AMX ("Couldn't write extended
state status: Bad address"), so every inferior call fails there. This module never reads or
writes extended state: the only register requests it issues are ``PTRACE_GETREGS`` and
``PTRACE_SETREGS`` (the general-purpose ``user_regs_struct``); memory goes through
``/proc/PID/mem``. ``Tracee.requests`` records every ptrace request, so a test can prove it.

Why that is safe: the thread is stopped while it sits in a system call (``PTRACE_INTERRUPT``
interrupts a blocking call such as QEMU's main-loop ``ppoll``; the stop is accepted only when
``orig_rax`` names a system call and the bytes before ``rip`` are the ``syscall`` instruction).
At that point the thread is inside a C library wrapper, and the System V x86-64 ABI makes every
vector and x87 register caller-saved across that call: no value the program still needs lives
there, so functions called on top of it may clobber them, as any signal handler may. The
callee-saved control state (MXCSR and x87 control word) is left as the callee found it by the
same ABI. After the work the saved general-purpose registers are written back, including
``orig_rax`` and the interrupted call's ``-ERESTART*`` return value, so the kernel restarts
the interrupted system call exactly as after a signal.

Injected system calls reuse the interrupted thread's own ``syscall`` instruction (``rip - 2``)
and a single step. Injected function calls get a stack frame below the red zone and return to
address 0; the resulting fault stop (SIGSEGV at rip 0) ends the call and is never delivered.
Other signals that arrive during a call are passed on to the program.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import signal
import time

PTRACE_CONT = 7
PTRACE_SINGLESTEP = 9
PTRACE_GETREGS = 12
PTRACE_SETREGS = 13
PTRACE_DETACH = 17
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
PTRACE_GETSIGINFO = 0x4202
PTRACE_EVENT_STOP = 128
# The only requests this module may issue (tests assert it).
ALLOWED_REQUESTS = frozenset({PTRACE_SEIZE, PTRACE_INTERRUPT, PTRACE_GETREGS, PTRACE_SETREGS,
                              PTRACE_CONT, PTRACE_SINGLESTEP, PTRACE_GETSIGINFO, PTRACE_DETACH})
REQUEST_NAMES = {PTRACE_CONT: "PTRACE_CONT", PTRACE_SINGLESTEP: "PTRACE_SINGLESTEP",
                 PTRACE_GETREGS: "PTRACE_GETREGS", PTRACE_SETREGS: "PTRACE_SETREGS",
                 PTRACE_DETACH: "PTRACE_DETACH", PTRACE_SEIZE: "PTRACE_SEIZE",
                 PTRACE_INTERRUPT: "PTRACE_INTERRUPT", PTRACE_GETSIGINFO: "PTRACE_GETSIGINFO"}
SYSCALL_INSN = b"\x0f\x05"
RED_ZONE = 128
CALL_FRAME_GAP = 1024
ERESTART_CODES = (512, 513, 514, 516)   # ERESTARTSYS, ERESTARTNOINTR, ERESTARTNOHAND, ERESTART_RESTARTBLOCK
WAIT_ALL_THREADS = 0x40000000

# x86-64 system call numbers used by the callers of this module.
SYS = {"close": 3, "mmap": 9, "munmap": 11, "ioctl": 16, "madvise": 28, "getpid": 39, "gettid": 186,
       "userfaultfd": 323}


class user_regs_struct(ctypes.Structure):  # pylint: disable=invalid-name  # the kernel's name
    """General-purpose registers, <sys/user.h> order (what PTRACE_GETREGS/SETREGS move)."""

    _fields_ = [(name, ctypes.c_ulonglong) for name in (
        "r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8", "rax", "rcx", "rdx",
        "rsi", "rdi", "orig_rax", "rip", "cs", "eflags", "rsp", "ss", "fs_base", "gs_base", "ds",
        "es", "fs", "gs")]

    def copy(self):
        clone = user_regs_struct()
        ctypes.pointer(clone)[0] = self
        return clone


class InjectError(Exception):
    """A step inside the target process failed; the message says which and why."""


def _libc():
    lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    lib.ptrace.restype = ctypes.c_long
    lib.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
    return lib


def _signed(value):
    return value - (1 << 64) if value >= 1 << 63 else value


def thread_in_syscall(pid, tid, proc="/proc"):
    """True when /proc says the thread is blocked in a system call (not running user code)."""
    try:
        with open("%s/%d/task/%d/syscall" % (proc, pid, tid), encoding="ascii") as handle:
            first = handle.read().split()
    except OSError:
        return False
    return bool(first) and first[0] not in ("running", "-1")


class Tracee:
    """One thread of another process, stopped in a system call, driven by ptrace.

    Use as a context manager: entering seizes and stops the thread; leaving writes its saved
    registers back and detaches, whatever happened in between."""

    def __init__(self, pid, tid=None, timeout=10.0, attempts=50):
        self.pid = pid
        self.tid = tid or pid
        self.timeout = timeout
        self.attempts = attempts
        self.requests = []
        self.saved = None
        self.pending_signal = 0
        self._libc = _libc()
        self._mem = None

    # ------------------------------------------------------------------ ptrace plumbing
    def _ptrace(self, request, addr=0, data=0):
        if request not in ALLOWED_REQUESTS:
            raise InjectError("refusing ptrace request %#x" % request)
        self.requests.append(REQUEST_NAMES[request])
        ctypes.set_errno(0)
        result = self._libc.ptrace(request, self.tid, ctypes.c_void_p(addr), ctypes.c_void_p(data))
        if result == -1:
            err = ctypes.get_errno()
            if err:
                raise InjectError("%s on thread %d: %s" % (REQUEST_NAMES[request], self.tid, os.strerror(err)))
        return result

    def _wait(self):
        """Wait for the thread's next stop; returns (stopsig, event)."""
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                waited, status = os.waitpid(self.tid, os.WNOHANG | WAIT_ALL_THREADS)
            except ChildProcessError as exc:
                raise InjectError("thread %d is gone" % self.tid) from exc
            if waited:
                if os.WIFEXITED(status) or os.WIFSIGNALED(status):
                    raise InjectError("process %d ended while being driven (status %#x)" % (self.pid, status))
                return os.WSTOPSIG(status), status >> 16
            if time.monotonic() > deadline:
                raise InjectError("thread %d did not stop within %.0f s" % (self.tid, self.timeout))
            time.sleep(0.0005)

    def get_regs(self):
        regs = user_regs_struct()
        self._ptrace(PTRACE_GETREGS, 0, ctypes.addressof(regs))
        return regs

    def set_regs(self, regs):
        self._ptrace(PTRACE_SETREGS, 0, ctypes.addressof(regs))

    # ------------------------------------------------------------------ memory
    def read(self, address, size):
        try:
            return os.pread(self._mem, size, address)
        except OSError as exc:
            raise InjectError("cannot read %d bytes at %#x of process %d: %s"
                              % (size, address, self.pid, exc.strerror)) from exc

    def write(self, address, data):
        try:
            written = os.pwrite(self._mem, data, address)
        except OSError as exc:
            raise InjectError("cannot write %d bytes at %#x of process %d: %s"
                              % (len(data), address, self.pid, exc.strerror)) from exc
        if written != len(data):
            raise InjectError("short write at %#x of process %d" % (address, self.pid))

    def read_u64(self, address):
        return int.from_bytes(self.read(address, 8), "little")

    # ------------------------------------------------------------------ stop and resume
    def _stop_in_syscall(self):
        """Seize and interrupt the thread until it stops inside a system call."""
        for _attempt in range(self.attempts):
            self._ptrace(PTRACE_SEIZE, 0, 0)
            self._ptrace(PTRACE_INTERRUPT, 0, 0)
            sig, event = self._wait()
            pending = 0 if event == PTRACE_EVENT_STOP else sig
            regs = self.get_regs()
            at_syscall = (_signed(regs.orig_rax) >= 0 and regs.rip >= 2
                          and self.read(regs.rip - 2, 2) == SYSCALL_INSN)
            if at_syscall:
                self.pending_signal = pending
                return regs
            # Running user code: let it go and try again a moment later.
            self._ptrace(PTRACE_DETACH, 0, pending)
            time.sleep(0.002)
        raise InjectError("thread %d of process %d was never found inside a system call "
                          "(%d tries); pick a thread that blocks, e.g. the main loop" % (self.tid, self.pid, self.attempts))

    def __enter__(self):
        self._mem = os.open("/proc/%d/mem" % self.pid, os.O_RDWR)
        try:
            self.saved = self._stop_in_syscall()
        except BaseException:
            os.close(self._mem)
            raise
        return self

    def __exit__(self, *exc_info):
        try:
            self.set_regs(self.saved)
            self._ptrace(PTRACE_DETACH, 0, self.pending_signal)
        finally:
            os.close(self._mem)
        return False

    # ------------------------------------------------------------------ work
    def syscall(self, name_or_number, *args):
        """Run one system call in the thread; returns its raw (signed) result."""
        number = SYS[name_or_number] if isinstance(name_or_number, str) else name_or_number
        if len(args) > 6:
            raise InjectError("a system call takes at most 6 arguments")
        regs = self.saved.copy()
        regs.rip = self.saved.rip - 2
        regs.rax = number
        regs.orig_rax = (1 << 64) - 1          # no system call to restart on resume
        for reg, value in zip(("rdi", "rsi", "rdx", "r10", "r8", "r9"), args):
            setattr(regs, reg, value & ((1 << 64) - 1))
        self.set_regs(regs)
        self._ptrace(PTRACE_SINGLESTEP, 0, 0)
        sig, _event = self._wait()
        after = self.get_regs()
        if sig != signal.SIGTRAP or after.rip != self.saved.rip:
            raise InjectError("system call %s did not complete with a single step (signal %d, rip %#x)"
                              % (name_or_number, sig, after.rip))
        return _signed(after.rax)

    def call(self, address, *args):
        """Call the function at ``address`` with up to six integer/pointer arguments.

        Variadic functions are fine: ``al`` (the count of vector registers used) is 0. Returns
        ``rax``. Signals other than the end-of-call fault are passed on to the program."""
        if len(args) > 6:
            raise InjectError("a function call takes at most 6 register arguments")
        regs = self.saved.copy()
        stack = (self.saved.rsp - RED_ZONE - CALL_FRAME_GAP) & ~0xF
        stack -= 8                                # return address slot: rsp % 16 == 8 at entry
        self.write(stack, (0).to_bytes(8, "little"))
        regs.rsp = stack
        regs.rip = address
        regs.rax = 0
        regs.orig_rax = (1 << 64) - 1
        for reg, value in zip(("rdi", "rsi", "rdx", "rcx", "r8", "r9"), args):
            setattr(regs, reg, value & ((1 << 64) - 1))
        self.set_regs(regs)
        deliver = 0
        while True:
            self._ptrace(PTRACE_CONT, 0, deliver)
            sig, event = self._wait()
            if event == PTRACE_EVENT_STOP:
                deliver = 0
                continue
            after = self.get_regs()
            if sig == signal.SIGSEGV and after.rip == 0:
                return after.rax
            if sig in (signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE, signal.SIGTRAP):
                raise InjectError("the call to %#x faulted with signal %d at rip %#x" % (address, sig, after.rip))
            deliver = sig                         # somebody else's signal: hand it on

    def check_errno(self, result, what):
        """Raise naming ``what`` when a raw system call result is an error."""
        if -4096 < result < 0:
            raise InjectError("%s failed in process %d: %s" % (what, self.pid, os.strerror(-result)))
        return result


def choose_thread(pid, proc="/proc"):
    """The process's main thread when it blocks in a system call, else another that does."""
    tids = sorted(int(t) for t in os.listdir("%s/%d/task" % (proc, pid)))
    ordered = [pid] + [t for t in tids if t != pid]
    for tid in ordered:
        if thread_in_syscall(pid, tid, proc):
            return tid
    return pid


def errno_name(code):
    return errno.errorcode.get(code, str(code))
