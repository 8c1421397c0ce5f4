# -*- coding: utf-8 -*-
# Copyright (c) kvm_ras.poison_guard contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Can this host's kernel install a poisoned page with ``UFFDIO_POISON``?

A QEMU with the ``x-poison-holes`` migration capability installs every hole it receives with
``UFFDIO_POISON`` (Linux 6.6+, ``UFFD_FEATURE_POISON``); without it the incoming migration fails
at setup. The probe asks the running kernel the way that QEMU does: it opens a userfaultfd
(``userfaultfd(2)`` with ``O_CLOEXEC | UFFD_USER_MODE_ONLY``, which needs no privilege and no
``vm.unprivileged_userfaultfd``) and runs the ``UFFDIO_API`` handshake asking for
``UFFD_FEATURE_POISON``. The kernel refuses a feature it does not know with ``EINVAL``.

``probe()`` returns ``(True | False | None, detail)``: None means the answer is not known (the
detail names the errno); callers treat None like False (fail closed).
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform

UFFD_API = 0xAA
UFFD_FEATURE_POISON = 1 << 14
UFFD_USER_MODE_ONLY = 1
# _IOWR(0xAA, 0x3F, struct uffdio_api), struct uffdio_api = {__u64 api, features, ioctls}
UFFDIO_API = 0xC018AA3F
# userfaultfd(2) per architecture (arch/x86/entry/syscalls/syscall_64.tbl: 323;
# include/uapi/asm-generic/unistd.h, used by arm64: 282).
SYSCALL_NUMBERS = {"x86_64": 323, "amd64": 323, "aarch64": 282, "arm64": 282}


class _UffdioApi(ctypes.Structure):  # pylint: disable=too-few-public-methods
    _fields_ = [("api", ctypes.c_uint64), ("features", ctypes.c_uint64),
                ("ioctls", ctypes.c_uint64)]


class KernelCalls:
    """The two system calls of the probe, through the C library (ctypes)."""

    def __init__(self, machine=None):
        self.machine = machine or platform.machine()
        self._libc = None

    def _lib(self):
        if self._libc is None:
            self._libc = ctypes.CDLL(None, use_errno=True)
        return self._libc

    def userfaultfd(self, flags):
        """``(fd, 0)`` or ``(-1, errno)``."""
        number = SYSCALL_NUMBERS.get(self.machine)
        if number is None:
            return -1, errno.ENOSYS
        libc = self._lib()
        libc.syscall.restype = ctypes.c_long
        fd = libc.syscall(ctypes.c_long(number), ctypes.c_long(flags))
        return (fd, 0) if fd >= 0 else (-1, ctypes.get_errno())

    def uffdio_api(self, fd, features):
        """``(0, features the kernel granted)`` or ``(-1, errno)``."""
        api = _UffdioApi(UFFD_API, features, 0)
        libc = self._lib()
        rc = libc.ioctl(ctypes.c_int(fd), ctypes.c_ulong(UFFDIO_API), ctypes.byref(api))
        return (0, api.features) if rc == 0 else (-1, ctypes.get_errno())

    @staticmethod
    def close(fd):
        os.close(fd)


def _name(code):
    return "%s (%s)" % (errno.errorcode.get(code, str(code)), os.strerror(code))


def probe(calls=None):
    """``(uffd_poison, detail)`` for the running kernel; see the module docstring."""
    calls = calls or KernelCalls()
    fd, code = calls.userfaultfd(os.O_CLOEXEC | UFFD_USER_MODE_ONLY)
    if fd < 0:
        if code == errno.ENOSYS:
            return False, ("userfaultfd(2) is not available here (%s: kernel without "
                           "CONFIG_USERFAULTFD, or an architecture the probe does not know: %s), "
                           "so UFFDIO_POISON cannot be used" % (
                               _name(code), getattr(calls, "machine", "?")))
        if code == errno.EINVAL:
            return False, ("userfaultfd(2) refused UFFD_USER_MODE_ONLY with %s: the kernel is "
                           "older than 5.11, so it has no UFFD_FEATURE_POISON (Linux 6.6+)"
                           % _name(code))
        return None, "userfaultfd(2) failed with %s: UFFD_FEATURE_POISON could not be asked for" % (
            _name(code))
    try:
        rc, value = calls.uffdio_api(fd, UFFD_FEATURE_POISON)
    finally:
        calls.close(fd)
    if rc == 0:
        if value & UFFD_FEATURE_POISON:
            return True, "UFFDIO_API granted UFFD_FEATURE_POISON: UFFDIO_POISON is available"
        return False, "UFFDIO_API succeeded without granting UFFD_FEATURE_POISON (features %#x)" % value
    if value == errno.EINVAL:
        return False, ("UFFDIO_API refused UFFD_FEATURE_POISON with %s: the kernel has no "
                       "UFFDIO_POISON (Linux 6.6 or later needed)" % _name(value))
    return None, "UFFDIO_API failed with %s: whether UFFDIO_POISON works is not known" % _name(value)
