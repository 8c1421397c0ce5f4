# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A stand-in QEMU for tests on the real kernel: a process whose argv[0] is
``qemu-system-x86_64`` that maps and touches anonymous memory laid out like a QEMU RAM block
(RAM followed by a PROT_NONE guard page) and can put real PTE markers into it:

- ``UFFDIO_POISON`` (Linux 6.6+): a PTE marker with the POISONED bit, the same entry a swap-in
  error leaves; the kernel shows it in pagemap as ``0x400000000000005f`` (type 31, offset 2)
  and touching it raises SIGBUS, like a hwpoisoned page (checked in the research notes);
- ``MADV_GUARD_INSTALL`` (Linux 6.13+): a guard marker (type 31, offset 4, bit 58), harmless
  for migration.

Run as ``python3 victim.py MIB POISON_PAGE GUARD_PAGE [extra QEMU-like args]`` (page -1 = none);
it prints ``READY base=0x.. size=.. poison=0|1 guard=0|1`` and waits for stdin to close.
"""

import ctypes
import mmap
import os
import struct
import sys

PAGE = 4096
MADV_NOHUGEPAGE = 15
MADV_DONTNEED = 4
MADV_GUARD_INSTALL = 102
SYS_USERFAULTFD = 323  # x86_64
UFFD_API = 0xAA
UFFD_FEATURE_POISON = 1 << 14
UFFDIO_API = 0xC018AA3F
UFFDIO_REGISTER = 0xC020AA00
UFFDIO_POISON = 0xC020AA08
UFFDIO_REGISTER_MODE_MISSING = 1

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                      ctypes.c_long]
libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]


def ioctl(fd, req, buf):
    import fcntl
    return fcntl.ioctl(fd, req, buf, True)


def uffd_poison(addr):
    fd = libc.syscall(SYS_USERFAULTFD, os.O_CLOEXEC | os.O_NONBLOCK)
    if fd < 0:
        raise OSError(ctypes.get_errno(), "userfaultfd")
    api = bytearray(struct.pack("QQQ", UFFD_API, UFFD_FEATURE_POISON, 0))
    ioctl(fd, UFFDIO_API, api)
    reg = bytearray(struct.pack("QQQQ", addr, PAGE, UFFDIO_REGISTER_MODE_MISSING, 0))
    ioctl(fd, UFFDIO_REGISTER, reg)
    poison = bytearray(struct.pack("QQQq", addr, PAGE, 0, 0))
    ioctl(fd, UFFDIO_POISON, poison)
    return fd  # keep it open: closing unregisters but the marker stays


def main():
    mib, poison_page, guard_page = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    size = mib << 20
    # RAM block + one PROT_NONE guard page after it, as qemu_ram_mmap() lays it out
    base = libc.mmap(None, size + PAGE, mmap.PROT_READ | mmap.PROT_WRITE,
                     mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
    if base in (None, ctypes.c_void_p(-1).value):
        raise OSError(ctypes.get_errno(), "mmap")
    libc.mprotect(base + size, PAGE, 0)
    libc.madvise(base, size, MADV_NOHUGEPAGE)
    ctypes.memset(base, 1, size)
    poisoned = guarded = 0
    if poison_page >= 0:
        addr = base + poison_page * PAGE
        libc.madvise(addr, PAGE, MADV_DONTNEED)
        try:
            keep = uffd_poison(addr)  # noqa: F841  pylint: disable=unused-variable
            poisoned = 1
        except OSError as exc:
            print("POISON-ERROR %s" % exc, flush=True)
    if guard_page >= 0:
        rc = libc.madvise(base + guard_page * PAGE, PAGE, MADV_GUARD_INSTALL)
        guarded = int(rc == 0)
    print("READY base=%#x size=%d poison=%d guard=%d" % (base, size, poisoned, guarded),
          flush=True)
    sys.stdin.read()


if __name__ == "__main__":
    main()
