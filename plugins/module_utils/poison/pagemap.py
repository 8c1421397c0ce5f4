# -*- coding: utf-8 -*-
# Copyright (c) kvm_ras.poison_guard contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ground-truth scan of a process's page tables through ``/proc/PID/pagemap``.

No Python loop runs per pagemap entry. Each 1 MiB ``pread`` (128 Ki entries = 512 MiB of
address space) is tested with ``bytes`` operations implemented in C:

- ``buf[7::8]`` picks the top byte of every entry; ``translate(None, NOT_SWAP_FORMAT)`` keeps
  only swap-format top bytes (``0x40..0x7f``): empty means no swap-format entry in the chunk.
- otherwise the swap type byte (``buf[0::8]``) is mapped to 1/0 (special type or real swap
  device) and AND-ed with the swap-format mask as two big integers; ``re.finditer`` over the
  result yields only the special entries, which are decoded one by one (there are few).
- present pages are checked against the host's poisoned PFNs (from a ``/proc/kpageflags``
  sweep) by ``PresentMatcher``: byte lanes of the PFN field (``buf[k::8]``) are mapped with
  ``bytes.translate`` to bit masks of PFN groups and AND-ed as big integers, so only entries
  whose low PFN bytes match a poisoned PFN of the same group survive; those few are confirmed
  one by one (whole PFN and present bit). Whole aligned runs of poisoned PFNs (every subpage of
  a poisoned hugetlb page reports KPF_HWPOISON) are compared by their high bytes. Chunks where
  the lanes leave too many candidates fall back to masking all PFN fields at once as a big
  integer and intersecting a ``set`` of them.

Special entries are classified by what the kernel put there: ``KPF_HWPOISON`` at the entry's
offset (= PFN) means a hwpoison entry; a PTE marker with the POISONED bit is a poison marker;
anything unexplained is re-read (migration entries are transient) and, if it persists, makes
the scan incomplete. hugetlbfs mappings are blind in pagemap (non-present huge PTEs read as
0), so they need ``PAGEMAP_SCAN`` (Linux 6.7+).
"""

from __future__ import annotations

import errno
import os
import re
import struct
import sys
import time

from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.poison import encoding as enc
from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.poison.procfs import ProcessGone

try:
    import ctypes
    import fcntl
except ImportError:  # pragma: no cover - stripped-down interpreters
    ctypes = None
    fcntl = None

READ_CHUNK = 1 << 20
FIND_LIMIT = 16  # kept for callers; the present check no longer switches method at this count
LANE_GROUPS = 8  # one bit per group in a translate table entry
LANE_KEYS = 64  # keys (PFNs or aligned PFN blocks) per pass of lane tables: 8 groups of 8
LANE_MAX_PASSES = 8  # more passes than this cost more than the set path (benchmarks/scan.py)
LANE_CANDIDATES = 4096  # per chunk: more candidates than this are confirmed by the set path
LANE_BLOCK = 512  # entries (2 MiB of address space): a sparse chunk is compared block by block
# With a present check on a PAGEMAP_SCAN kernel: ask the kernel for the populated ranges first
# only when less than this share of the scanned pages is resident. The ioctl walks every PTE
# once more; measured with benchmarks/scan.py --touch-every N (4 GiB, 4 KiB PTEs): whole read
# cheaper at 1/1 and 1/4 resident, both alike at 1/16, the ranges far cheaper at 1/64.
POPULATED_FIRST_BELOW = 0.125
REREAD_DELAY = 0.1
REREAD_ROUNDS = 3

PAGEMAP_SCAN_IOCTL = 0xC0606610  # _IOWR('f', 16, struct pm_scan_arg)
PAGE_IS_FILE = 1 << 2
PAGE_IS_PRESENT = 1 << 3
PAGE_IS_SWAPPED = 1 << 4
PAGE_IS_HUGE = 1 << 6

_SWAP_TOP_RE = re.compile(b"[\x40-\x7f]")
_PRESENT_TOP_RE = re.compile(b"[\x80-\xff]")
_ONE_RE = re.compile(b"\x01")
_HWPOISON_BYTES = b"".join(re.escape(bytes([b])) for b in range(256)
                           if b & enc.KPF_HWPOISON_BYTE_BIT)
_HWPOISON_BYTE_RE = re.compile(b"[" + _HWPOISON_BYTES + b"]")
_LITTLE = sys.byteorder == "little"
_PRESENT_TOP_TABLE = bytes(0xff if b & 0x80 else 0 for b in range(256))
_PRESENT_TOP_TO_ONE = bytes(1 if b & 0x80 else 0 for b in range(256))


def _native_to_little(buf):
    """pagemap/kpageflags hold native-endian u64; the fast paths read little-endian."""
    if _LITTLE:
        return buf
    import array  # pylint: disable=import-outside-toplevel
    values = array.array("Q", buf)
    values.byteswap()
    return values.tobytes()


def _pread_full(fd, size, offset):
    data = os.pread(fd, size, offset)
    if len(data) == size:
        return data
    parts = [data]
    got = len(data)
    while got < size:
        more = os.pread(fd, size - got, offset + got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


class Kpageflags:
    """``/proc/kpageflags`` reader: single look-ups (cached) and the host-wide HWPOISON sweep."""

    def __init__(self, path):
        self.path = path
        self._fd = os.open(path, os.O_RDONLY)
        self._cache = {}

    def close(self):
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def get(self, pfn):
        """Flags of ``pfn``, or None past the end of the file (not a PFN)."""
        if pfn in self._cache:
            return self._cache[pfn]
        data = os.pread(self._fd, enc.ENTRY_SIZE, pfn * enc.ENTRY_SIZE)
        value = int.from_bytes(data, sys.byteorder) if len(data) == enc.ENTRY_SIZE else None
        self._cache[pfn] = value
        return value

    def sweep_hwpoison(self, chunk=READ_CHUNK):
        """Every PFN whose flags have KPF_HWPOISON (one pass over the file, 1 MiB preads)."""
        found = []
        offset = 0
        byte_index = enc.KPF_HWPOISON_BYTE if _LITTLE else 7 - enc.KPF_HWPOISON_BYTE
        while True:
            buf = os.pread(self._fd, chunk, offset)
            if not buf:
                break
            flag_bytes = buf[byte_index::8]
            if flag_bytes.translate(None, enc.NOT_HWPOISON_BYTES):
                base = offset // enc.ENTRY_SIZE
                for match in _HWPOISON_BYTE_RE.finditer(flag_bytes):
                    pfn = base + match.start()
                    value = int.from_bytes(buf[match.start() * 8:match.start() * 8 + 8],
                                           sys.byteorder)
                    if enc.has_hwpoison(value):
                        found.append(pfn)
                        self._cache[pfn] = value
            offset += len(buf)
        return found


def compress_pfns(pfns):
    """Split a set of PFNs into keys by level: level 0 holds single PFNs, level 1 the keys
    ``pfn >> 8`` of aligned 256-PFN blocks that are poisoned as a whole, level 2 the keys
    ``pfn >> 16`` of whole aligned 64 Ki-PFN blocks. The union of the levels is exactly the
    input (every subpage of a poisoned 2 MiB or 1 GiB hugetlb page reports KPF_HWPOISON)."""
    levels = []
    current = set(pfns)
    for _level in range(2):
        counts = {}
        for key in current:
            counts[key >> 8] = counts.get(key >> 8, 0) + 1
        full = set(block for block, count in counts.items() if count == 256)
        levels.append(set(key for key in current if key >> 8 not in full) if full else current)
        current = full
    levels.append(current)
    return levels


class PresentMatcher:
    """Find the present pagemap entries of a chunk whose PFN is in a set, with no Python loop
    per entry (see the module docstring). ``find`` gives the same answer as checking every
    entry for ``value & PM_PRESENT and value & PM_PFRAME_MASK in pfns``."""

    def __init__(self, pfns, candidate_limit=LANE_CANDIDATES, max_passes=LANE_MAX_PASSES):
        self.pfns = frozenset(pfns)
        self.candidate_limit = candidate_limit
        self.passes = []
        for level, keys in enumerate(compress_pfns(self.pfns)):
            keys = sorted(keys)
            for first in range(0, len(keys), LANE_KEYS):
                self.passes.append(self._lane_tables(level, keys[first:first + LANE_KEYS]))
        self.bulk = len(self.passes) > max_passes
        self.stats = {"chunks": 0, "lane_chunks": 0, "candidates": 0, "bulk_chunks": 0}

    @staticmethod
    def _lane_tables(level, keys):
        """``[(byte index, table)]`` for one pass: table[byte] has bit g set when a key of
        group g has that byte at that position. A pass of up to 8 keys (one per group) needs
        2 lanes (1 false candidate per 65536 entries and key), more keys 3."""
        width = 2 if len(keys) <= LANE_GROUPS else 3
        lanes = []
        for shift in range(width):
            index = level + shift
            if index > 6:
                break
            # byte 6 holds PFN bits 48-54 and soft-dirty (bit 55): compare its low 7 bits only
            mask = 0x7f if index == 6 else 0xff
            table = bytearray(256)
            for number, key in enumerate(keys):
                bit = 1 << (number % LANE_GROUPS)
                want = (key >> (8 * shift)) & mask
                for value in ((want, want | 0x80) if mask == 0x7f else (want,)):
                    table[value] |= bit
            lanes.append((index, bytes(table)))
        zero = 0xff
        for _index, table in lanes:
            zero &= table[0]
        if zero:
            # an all-zero PFN field (empty entry, marker, hidden PFN) would pass: test the
            # present bit first so that empty ranges do not flood the confirmation
            lanes.insert(0, (7, _PRESENT_TOP_TABLE))
        return lanes

    def find(self, buf, tops=None):
        """``[(index, value)]`` of the present entries of ``buf`` (little-endian u64 pagemap
        entries) whose PFN is in the set, by entry index."""
        self.stats["chunks"] += 1
        if not self.pfns:
            return []
        if tops is None:
            tops = buf[7::8]
        # the 2 MiB blocks (LANE_BLOCK entries) that hold a present entry: one memchr-based
        # find per such block, empty ranges are skipped in C
        ones = tops.translate(_PRESENT_TOP_TO_ONE)
        blocks = []
        index = ones.find(b"\x01")
        while index != -1:
            first = index - index % LANE_BLOCK
            blocks.append(first)
            index = ones.find(b"\x01", first + LANE_BLOCK)
        if not blocks:
            return []  # no present entry in this chunk
        if self.bulk:
            return self._find_bulk(buf)
        count = len(buf) >> 3
        if len(blocks) * LANE_BLOCK * 2 <= count:
            # sparse chunk: compare only the blocks with a present entry
            packed = b"".join(buf[first * 8:(first + LANE_BLOCK) * 8] for first in blocks)
            return [(blocks[index // LANE_BLOCK] + index % LANE_BLOCK, value)
                    for index, value in self._find_lanes(packed)]
        return self._find_lanes(buf, tops)

    def _find_lanes(self, buf, tops=None):
        self.stats["lane_chunks"] += 1
        count = len(buf) >> 3
        if tops is None:
            tops = buf[7::8]
        lanes = {7: tops}
        candidates = set()
        for tables in self.passes:
            acc = -1
            for index, table in tables:
                data = lanes.get(index)
                if data is None:
                    data = lanes[index] = buf[index::8]
                acc &= int.from_bytes(data.translate(table), "little")
                if not acc:
                    break
            if not acc:
                continue
            marks = acc.to_bytes(count, "little")
            present_marks = marks.translate(None, b"\0")
            if len(present_marks) + len(candidates) > self.candidate_limit:
                return self._find_bulk(buf)
            for mark in set(present_marks):
                needle = bytes((mark,))
                index = marks.find(needle)
                while index != -1:
                    candidates.add(index)
                    index = marks.find(needle, index + 1)
        self.stats["candidates"] += len(candidates)
        found = []
        pfns = self.pfns
        for index in sorted(candidates):
            value = int.from_bytes(buf[index * 8:index * 8 + 8], "little")
            if value & enc.PM_PRESENT and value & enc.PM_PFRAME_MASK in pfns:
                found.append((index, value))
        return found

    def _find_bulk(self, buf):
        """All PFN fields of present entries at once (one big integer), intersected with the
        set; positions of the hits by ``bytes.find`` of their 6 low bytes."""
        self.stats["bulk_chunks"] += 1
        count = len(buf) // 8
        whole = int.from_bytes(buf, "little")
        present = (whole >> 63) & _lanes(count)
        pfn_fields = (whole & (present * enc.PM_PFRAME_MASK)).to_bytes(len(buf), "little")
        hits = set(struct.unpack("<%dQ" % count, pfn_fields)) & self.pfns
        found = []
        for pfn in sorted(hits):
            needle = pfn.to_bytes(6, "little")
            pos = buf.find(needle)
            while pos != -1:
                if pos % 8 == 0:
                    value = int.from_bytes(buf[pos:pos + 8], "little")
                    if value & enc.PM_PRESENT and value & enc.PM_PFRAME_MASK == pfn:
                        found.append((pos // 8, value))
                    pos = buf.find(needle, pos + 8)
                else:
                    pos = buf.find(needle, pos + 1)
        found.sort()
        return found


_LANES = {}


def _lanes(count):
    """Big integer with bit 0 of each of ``count`` 64-bit lanes set."""
    value = _LANES.get(count)
    if value is None:
        value = int.from_bytes(b"\x01\0\0\0\0\0\0\0" * count, "little")
        _LANES[count] = value
    return value


def pagemap_scan_regions(fd, start, end, category_mask=0, anyof=0, nvec=512):
    """``PAGEMAP_SCAN`` ioctl: ``[(start, end, categories)]`` of the pages in ``[start, end)``
    that have every category of ``category_mask`` and one of ``anyof``; categories returned:
    those asked for plus HUGE and FILE. Raises OSError (``ENOTTY`` before Linux 6.7,
    ``EINVAL`` for VMAs it cannot walk)."""
    if ctypes is None or fcntl is None:
        raise OSError(errno.ENOTTY, "ctypes/fcntl not available")
    vec = ctypes.create_string_buffer(24 * nvec)
    regions = []
    return_mask = category_mask | anyof | PAGE_IS_HUGE | PAGE_IS_FILE
    while start < end:
        arg = bytearray(struct.pack("12Q", 96, 0, start, end, 0, ctypes.addressof(vec), nvec,
                                    0, 0, category_mask, anyof, return_mask))
        count = fcntl.ioctl(fd, PAGEMAP_SCAN_IOCTL, arg, True)
        if count:
            values = struct.unpack_from("%dQ" % (3 * count), vec.raw)
            regions.extend(tuple(values[i:i + 3]) for i in range(0, 3 * count, 3))
        walk_end = struct.unpack_from("Q", arg, 32)[0]
        if walk_end <= start:
            break
        start = walk_end
    return regions


def pagemap_scan_swapped(fd, start, end, nvec=512):
    """``PAGEMAP_SCAN``: ``[(start, end, categories)]`` of swap-format PTEs in ``[start, end)``.
    Raises OSError (``ENOTTY`` before Linux 6.7, ``EINVAL`` for VMAs it cannot walk)."""
    return pagemap_scan_regions(fd, start, end, category_mask=PAGE_IS_SWAPPED, nvec=nvec)


def pagemap_scan_populated_ranges(fd, start, end, nvec=512):
    """``PAGEMAP_SCAN``: ``[(start, end, categories)]`` of present or swap-format PTEs: the only
    ranges whose pagemap entries can hold a PFN."""
    return pagemap_scan_regions(fd, start, end, anyof=PAGE_IS_SWAPPED | PAGE_IS_PRESENT,
                                nvec=nvec)


def probe_pagemap_scan(pagemap_path):
    """True when the kernel answers ``PAGEMAP_SCAN`` on ``pagemap_path`` (Linux 6.7+)."""
    try:
        fd = os.open(pagemap_path, os.O_RDONLY)
    except OSError:
        return False
    try:
        pagemap_scan_swapped(fd, 0, enc.PAGE_SIZE, nvec=1)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


class ScanContext:
    """Host-wide knowledge the scan needs to classify entries."""

    def __init__(self, real_swap_types=0, hwpoison_type=None, pte_marker_type=None,
                 swapin_error_type=None, kpageflags=None, poisoned_pfns=None,
                 present_check_reason=None, pagemap_scan=None, method="auto",
                 reread_delay=REREAD_DELAY, reread_rounds=REREAD_ROUNDS,
                 pagemap_scan_populated=None, populated_first=None):
        self.real_swap_types = real_swap_types
        self.hwpoison_type = hwpoison_type
        self.pte_marker_type = pte_marker_type
        self.swapin_error_type = swapin_error_type
        self.kpageflags = kpageflags
        # frozenset of PFNs with KPF_HWPOISON; empty: none exist; None: could not be known
        self.poisoned_pfns = None if poisoned_pfns is None else frozenset(poisoned_pfns)
        self.present_check_reason = present_check_reason
        self.pagemap_scan = pagemap_scan
        # PAGEMAP_SCAN for present + swapped ranges (the present check on the ioctl path);
        # follows the swapped-range function unless given
        if pagemap_scan_populated is None and pagemap_scan is pagemap_scan_swapped:
            pagemap_scan_populated = pagemap_scan_populated_ranges
        self.pagemap_scan_populated = pagemap_scan_populated
        # None: decide per process from its resident share (POPULATED_FIRST_BELOW)
        self.populated_first = populated_first
        self.method = method
        self.reread_delay = reread_delay
        self.reread_rounds = reread_rounds
        self.special_table = enc.special_type_table(real_swap_types)
        self.matcher = PresentMatcher(self.poisoned_pfns) if self.poisoned_pfns else None

    @property
    def present_check_needed(self):
        return bool(self.poisoned_pfns)

    @staticmethod
    def lanes(count):
        """Big integer with bit 0 of each of ``count`` 64-bit lanes set."""
        return _lanes(count)


class Target:
    """One mapping to scan, with what is known about it."""

    __slots__ = ("mapping", "guest_ram", "hugetlb", "hugepage_size")

    def __init__(self, mapping, guest_ram=False, hugetlb=False, hugepage_size=2 << 20):
        self.mapping = mapping
        self.guest_ram = guest_ram
        self.hugetlb = hugetlb
        self.hugepage_size = hugepage_size


class ScanResult:
    """What one process's scan found."""

    def __init__(self, method):
        self.method = method
        self.holes = []
        self.reasons = []
        self.notes = []
        self.pfn_visible = None
        self.stats = {"mappings": 0, "guest_ram_mappings": 0, "bytes": 0, "guest_ram_bytes": 0,
                      "real_swap_entries": 0, "special_entries": 0, "benign_markers": 0,
                      "transient_entries": 0, "hugetlb_mappings": 0, "seconds": 0.0}

    @property
    def complete(self):
        return not self.reasons

    def add_hole(self, hva, pfn, source, raw, target, **extra):
        hole = {"hva": hva, "pfn": pfn, "source": source, "raw": raw,
                "mapping": target.mapping.label, "guest_ram": target.guest_ram}
        hole.update(extra)
        self.holes.append(hole)


class _Unexplained:
    __slots__ = ("hva", "raw", "target")

    def __init__(self, hva, raw, target):
        self.hva = hva
        self.raw = raw
        self.target = target


class ProcessScanner:
    """Scan one process's pagemap over a list of ``Target`` mappings."""

    def __init__(self, pagemap_path, ctx):
        self.pagemap_path = pagemap_path
        self.ctx = ctx
        self.fd = None
        use_scan = ctx.pagemap_scan is not None and ctx.method in ("auto", "pagemap_scan")
        if ctx.present_check_needed:
            # every present PFN must be read: with the ioctl only where it spares reading
            use_scan = use_scan and ctx.pagemap_scan_populated is not None and \
                ctx.populated_first is not False
        self.result = ScanResult("pagemap_scan" if use_scan else "pread")
        self._unexplained = []

    # -- entry classification ------------------------------------------------------------
    def _classify_special(self, hva, value, target):
        """Decide one non-present swap-format entry whose type is not a real swap device."""
        ctx = self.ctx
        res = self.result
        entry = enc.PagemapEntry(value)
        stype = entry.swap_type
        offset = entry.swap_offset
        res.stats["special_entries"] += 1
        if value & enc.PM_GUARD_REGION:
            res.stats["benign_markers"] += 1
            return
        if ctx.pte_marker_type is not None and stype == ctx.pte_marker_type and \
                offset < enc.PTE_MARKER_OFFSET_LIMIT:
            if offset & enc.PTE_MARKER_POISONED:
                res.add_hole(hva, None, "pte_marker_poisoned", entry.hex(), target)
            else:
                res.stats["benign_markers"] += 1
            return
        if ctx.swapin_error_type is not None and stype == ctx.swapin_error_type:
            res.add_hole(hva, None, "swapin_error_entry", entry.hex(), target)
            return
        flags = ctx.kpageflags.get(offset) if ctx.kpageflags is not None else None
        if flags is not None and enc.has_hwpoison(flags):
            extra = {"swap_type": stype, "kpageflags": "0x%016x" % flags}
            if ctx.hwpoison_type is not None and stype != ctx.hwpoison_type:
                extra["note"] = "swap type %d differs from the derived hwpoison type %d" % (
                    stype, ctx.hwpoison_type)
            res.add_hole(hva, offset, "pagemap_hwpoison", entry.hex(), target, **extra)
            return
        self._unexplained.append(_Unexplained(hva, value, target))

    def _scan_swap_entries(self, buf, base_hva, target, tops=None):
        if tops is None:
            tops = buf[7::8]
        if not tops.translate(None, enc.NOT_SWAP_FORMAT_TOP_BYTES):
            return
        count = len(tops)
        swap_entries = count - len(tops.translate(None, enc.SWAP_FORMAT_TOP_BYTES))
        if self.ctx.real_swap_types:
            swap_mask = int.from_bytes(tops.translate(enc.SWAP_FORMAT_TO_ONE), "little")
            type_mask = int.from_bytes(buf[0::8].translate(self.ctx.special_table), "little")
            special = (swap_mask & type_mask).to_bytes(count, "little")
            positions = [m.start() for m in _ONE_RE.finditer(special)]
        else:
            positions = [m.start() for m in _SWAP_TOP_RE.finditer(tops)]
        self.result.stats["real_swap_entries"] += swap_entries - len(positions)
        for index in positions:
            value = int.from_bytes(buf[index * 8:index * 8 + 8], "little")
            self._classify_special(base_hva + index * enc.PAGE_SIZE, value, target)

    def _check_pfn_visibility(self, buf, tops=None):
        if self.result.pfn_visible is not None:
            return
        match = _PRESENT_TOP_RE.search(buf[7::8] if tops is None else tops)
        if match:
            index = match.start()
            value = int.from_bytes(buf[index * 8:index * 8 + 8], "little")
            self.result.pfn_visible = bool(value & enc.PM_PFRAME_MASK)

    def _scan_present(self, buf, base_hva, target, tops=None):
        ctx = self.ctx
        for index, value in ctx.matcher.find(buf, tops):
            pfn = value & enc.PM_PFRAME_MASK
            flags = ctx.kpageflags.get(pfn) if ctx.kpageflags else None
            extra = {"kpageflags": "0x%016x" % flags} if flags is not None else {}
            self.result.add_hole(base_hva + index * enc.PAGE_SIZE, pfn, "present_hwpoison",
                                 "0x%016x" % value, target, **extra)

    # -- reading -------------------------------------------------------------------------
    def _read(self, size, offset):
        try:
            data = _pread_full(self.fd, size, offset)
        except OSError as exc:
            if exc.errno in (errno.ESRCH, errno.ENOENT):
                raise ProcessGone(exc.errno, "process exited during the scan")
            raise
        if len(data) < size:
            if not data:
                raise ProcessGone(errno.ESRCH,
                                  "process exited during the scan (pagemap read returned nothing)")
            raise OSError(errno.EIO, "short pagemap read: %d of %d bytes at offset %#x" % (
                len(data), size, offset))
        return _native_to_little(data)

    def _pread_range(self, target, start, end, swap=True, present=True):
        offset = (start >> enc.PAGE_SHIFT) * enc.ENTRY_SIZE
        stop = (end >> enc.PAGE_SHIFT) * enc.ENTRY_SIZE
        while offset < stop:
            size = min(READ_CHUNK, stop - offset)
            buf = self._read(size, offset)
            base_hva = (offset // enc.ENTRY_SIZE) << enc.PAGE_SHIFT
            tops = buf[7::8]
            self._check_pfn_visibility(buf, tops)
            if swap:
                self._scan_swap_entries(buf, base_hva, target, tops)
            if present and self.ctx.present_check_needed:
                self._scan_present(buf, base_hva, target, tops)
            offset += size

    def _scan_with_ioctl(self, target):
        mapping = target.mapping
        if not self.ctx.present_check_needed:
            regions = self.ctx.pagemap_scan(self.fd, mapping.start, mapping.end)
            for start, end, _categories in regions:
                self._pread_range(target, start, end, swap=True, present=False)
            return
        # present check: the kernel names the present and swapped ranges; read only those,
        # adjacent regions merged (their categories differ only in FILE/HUGE/soft-dirty)
        regions = self.ctx.pagemap_scan_populated(self.fd, mapping.start, mapping.end)
        ranges = []
        for start, end, _categories in regions:
            if ranges and ranges[-1][1] == start:
                ranges[-1][1] = end
            else:
                ranges.append([start, end])
        for start, end in ranges:
            self._pread_range(target, start, end)

    def _scan_hugetlb(self, target):
        """Non-present huge PTEs are invisible to pread; PAGEMAP_SCAN reports them SWAPPED."""
        mapping = target.mapping
        res = self.result
        res.stats["hugetlb_mappings"] += 1
        if self.ctx.pagemap_scan is None:
            res.reasons.append(
                "%s at %#x-%#x is hugetlbfs-backed: pagemap cannot show non-present huge pages "
                "and this kernel has no PAGEMAP_SCAN (Linux 6.7+), so it could not be scanned"
                % (mapping.label, mapping.start, mapping.end))
            return
        regions = self.ctx.pagemap_scan(self.fd, mapping.start, mapping.end)
        if regions:
            time.sleep(self.ctx.reread_delay)
            again = self.ctx.pagemap_scan(self.fd, mapping.start, mapping.end)
            persisting = set((s, e) for s, e, _c in again)
            for start, end, categories in regions:
                if (start, end) not in persisting:
                    res.stats["transient_entries"] += 1
                    continue
                size = target.hugepage_size or (end - start)
                hva = start
                while hva < end:
                    res.add_hole(hva, None, "pagemap_scan_hugetlb", None, target,
                                 size=min(size, end - hva), categories="0x%x" % categories)
                    hva += size

    def _sample_pfn_visibility(self, targets):
        for target in sorted(targets, key=lambda t: -t.mapping.size):
            mapping = target.mapping
            start = mapping.start
            while start < mapping.end and self.result.pfn_visible is None:
                size = min(64 << 10, ((mapping.end - start) >> enc.PAGE_SHIFT) * 8)
                buf = self._read(size, (start >> enc.PAGE_SHIFT) * 8)
                self._check_pfn_visibility(buf)
                start += (size // 8) << enc.PAGE_SHIFT
                if start - mapping.start >= (64 << 20):
                    break
            if self.result.pfn_visible is not None:
                return

    def _reread_unexplained(self):
        res = self.result
        pending = self._unexplained
        self._unexplained = []
        for _round in range(self.ctx.reread_rounds):
            if not pending:
                break
            time.sleep(self.ctx.reread_delay)
            still = []
            for item in pending:
                data = self._read(8, (item.hva >> enc.PAGE_SHIFT) * 8)
                value = int.from_bytes(data, "little")
                if value == item.raw:
                    still.append(item)
                    continue
                res.stats["transient_entries"] += 1
                entry = enc.PagemapEntry(value)
                if entry.swap_format and entry.swap_type >= self.ctx.real_swap_types:
                    res.stats["special_entries"] -= 1  # counted again by the re-classification
                    self._classify_special(item.hva, value, item.target)
            pending = still + self._unexplained
            self._unexplained = []
        if pending:
            types = sorted(set(enc.PagemapEntry(p.raw).swap_type for p in pending))
            examples = ", ".join("%#x=%s" % (p.hva, enc.PagemapEntry(p.raw).hex())
                                 for p in pending[:3])
            if self.ctx.kpageflags is None:
                why = "/proc/kpageflags is not readable, so their PFNs could not be checked"
            else:
                why = "their offsets have no KPF_HWPOISON and they did not go away on re-reads"
            res.reasons.append(
                "%d non-present special pagemap entries (swap types %s, e.g. %s) could not be "
                "explained: %s" % (len(pending), ", ".join(str(t) for t in types), examples, why))

    def _sparse(self, targets):
        """True when the process has less than POPULATED_FIRST_BELOW of the scanned pages
        resident (``/proc/PID/statm``), or when that cannot be read."""
        pages = sum(t.mapping.size for t in targets if not t.hugetlb) >> enc.PAGE_SHIFT
        try:
            with open(os.path.join(os.path.dirname(self.pagemap_path), "statm"), "rb") as handle:
                resident = int(handle.read().split()[1])
        except (OSError, IndexError, ValueError):
            return True
        return resident < pages * POPULATED_FIRST_BELOW

    def scan(self, targets):
        started = time.monotonic()
        res = self.result
        if res.method == "pagemap_scan" and self.ctx.present_check_needed and \
                self.ctx.populated_first is None and not self._sparse(targets):
            res.method = "pread"  # densely populated: the plain read is the cheaper one
        try:
            self.fd = os.open(self.pagemap_path, os.O_RDONLY)
        except OSError as exc:
            if exc.errno in (errno.ESRCH, errno.ENOENT):
                raise ProcessGone(exc.errno, "process exited before its pagemap was opened")
            raise
        try:
            for target in targets:
                mapping = target.mapping
                res.stats["mappings"] += 1
                res.stats["bytes"] += mapping.size
                if target.guest_ram:
                    res.stats["guest_ram_mappings"] += 1
                    res.stats["guest_ram_bytes"] += mapping.size
                if target.hugetlb:
                    self._scan_hugetlb(target)
                    if self.ctx.present_check_needed:
                        self._pread_range(target, mapping.start, mapping.end, swap=False)
                    continue
                if res.method == "pagemap_scan":
                    try:
                        self._scan_with_ioctl(target)
                        continue
                    except ProcessGone:
                        raise
                    except OSError as exc:
                        res.notes.append("PAGEMAP_SCAN refused %s (%s); read with pread" % (
                            mapping.label, exc.strerror or exc))
                self._pread_range(target, mapping.start, mapping.end)
            if res.method == "pagemap_scan" and res.pfn_visible is None:
                self._sample_pfn_visibility([t for t in targets if not t.hugetlb])
            self._reread_unexplained()
        finally:
            os.close(self.fd)
            self.fd = None
        res.stats["seconds"] = round(time.monotonic() - started, 4)
        return res

    def read_entry(self, hva):
        """One entry (for cross-checks after the scan): a PagemapEntry."""
        fd = os.open(self.pagemap_path, os.O_RDONLY)
        try:
            data = os.pread(fd, 8, (hva >> enc.PAGE_SHIFT) * 8)
        finally:
            os.close(fd)
        if len(data) != 8:
            raise ProcessGone(errno.ESRCH, "process exited")
        return enc.PagemapEntry(int.from_bytes(data, sys.byteorder))


def raw_read(pagemap_path, ranges, chunk=READ_CHUNK):
    """Baseline for benchmarks: pread the pagemap of ``ranges`` and do nothing else."""
    fd = os.open(pagemap_path, os.O_RDONLY)
    total = 0
    try:
        for start, end in ranges:
            offset = (start >> enc.PAGE_SHIFT) * 8
            stop = (end >> enc.PAGE_SHIFT) * 8
            while offset < stop:
                size = min(chunk, stop - offset)
                total += len(os.pread(fd, size, offset))
                offset += size
    finally:
        os.close(fd)
    return total
