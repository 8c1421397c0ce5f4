# -*- coding: utf-8 -*-
# Copyright (c) kvm_ras.poison_guard contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Read the backing file of a shared-memory mapping to prove it holds no poisoned page.

A poisoned page of shmem/memfd (5.16+) or hugetlbfs (6.1+) stays in the page cache; pagemap
cannot see it behind an empty page table entry, but ``read()`` of that file offset fails with
EIO (``shmem_file_read_iter``; hugetlbfs returns the healthy bytes before the first poisoned
subpage and EIO at it, 6.4+). ``/proc/PID/map_files/<start>-<end>`` opens the very file QEMU
mapped (CAP_SYS_ADMIN only). Holes of the file are skipped with ``SEEK_DATA``/``SEEK_HOLE``
(reading a hole of shmem or hugetlbfs returns zeros without allocating, and a hole holds no
page, so no poison); filesystems without them report the whole file as data.
"""

from __future__ import annotations

import errno
import os

READ_CHUNK = 1 << 20
EHWPOISON = getattr(errno, "EHWPOISON", 133)
POISON_ERRNOS = (errno.EIO, EHWPOISON)


class ReadOutcome:
    """``bytes_read``; ``bad_offset`` (file offset whose read failed with EIO/EHWPOISON) or
    None; ``error`` (text) when the read failed for any reason."""

    __slots__ = ("bytes_read", "bad_offset", "error")

    def __init__(self, bytes_read=0, bad_offset=None, error=None):
        self.bytes_read = bytes_read
        self.bad_offset = bad_offset
        self.error = error


def _errname(exc):
    name = "EHWPOISON" if exc.errno == EHWPOISON else errno.errorcode.get(exc.errno, "")
    text = exc.strerror or str(exc)
    return "%s (%s)" % (name, text) if name else text


def _data_segments(fd, start, end):
    """``(begin, stop)`` data ranges of [start, end) of the file."""
    pos = start
    while pos < end:
        try:
            data = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # no data after pos
                return
            if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP):
                yield pos, end
                return
            raise
        if data >= end:
            return
        try:
            hole = os.lseek(fd, data, os.SEEK_HOLE)
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP):
                hole = end
            else:
                raise
        stop = min(max(hole, data + 1), end)
        yield data, stop
        pos = stop


def read_range(path, offset, length, chunk=READ_CHUNK):
    """Read [offset, offset+length) of the file behind ``path``, data only; a ``ReadOutcome``."""
    outcome = ReadOutcome()
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        outcome.error = "cannot open: %s" % _errname(exc)
        return outcome
    try:
        for begin, stop in _data_segments(fd, offset, offset + length):
            pos = begin
            while pos < stop:
                try:
                    got = len(os.pread(fd, min(chunk, stop - pos), pos))
                except OSError as exc:
                    outcome.error = _errname(exc)
                    if exc.errno in POISON_ERRNOS:
                        outcome.bad_offset = pos
                    return outcome
                if got == 0:
                    return outcome  # end of file: the rest of the mapping has no page
                outcome.bytes_read += got
                pos += got
    except OSError as exc:
        outcome.error = "seeking data failed: %s" % _errname(exc)
    finally:
        os.close(fd)
    return outcome
