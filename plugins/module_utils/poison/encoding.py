# -*- coding: utf-8 -*-
# Copyright (c) kvm_ras.poison_guard contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Bit layout of ``/proc/PID/pagemap`` and ``/proc/kpageflags`` entries.

One little-endian u64 per 4 KiB virtual page (file offset ``vaddr // 4096 * 8``):

====== ===========================================================================
bits   meaning
====== ===========================================================================
0-54   PFN when present (bit 63); zeroed for readers without CAP_SYS_ADMIN
0-4    swap type when bit 62 is set (0 .. MAX_SWAPFILES-1 real swap, above: special)
5-54   swap offset when bit 62 is set; the PFN for hwpoison/migration/device entries,
       the marker bits (1 uffd-wp, 2 poisoned, 4 guard) for PTE markers
55     soft-dirty
56     exclusively mapped
57     uffd-wp
58     guard region (6.15+)
61     file page or shared anonymous
62     swap / non-present special entry
63     present
====== ===========================================================================

The top byte (index 7) therefore tells present (``0x80``) from swap-format (``0x40``) entries
without decoding the entry.
"""

from __future__ import annotations

PAGE_SIZE = 4096
PAGE_SHIFT = 12
ENTRY_SIZE = 8

PM_PRESENT = 1 << 63
PM_SWAP = 1 << 62
PM_FILE = 1 << 61
PM_GUARD_REGION = 1 << 58
PM_UFFD_WP = 1 << 57
PM_MMAP_EXCLUSIVE = 1 << 56
PM_SOFT_DIRTY = 1 << 55
PM_PFRAME_MASK = (1 << 55) - 1
SWP_TYPE_BITS = 5
SWP_TYPE_MASK = (1 << SWP_TYPE_BITS) - 1

# PTE marker bits (swap offset of a marker entry).
PTE_MARKER_UFFD_WP = 1 << 0
PTE_MARKER_POISONED = 1 << 1
PTE_MARKER_GUARD = 1 << 2
# Marker offsets are tiny; anything at or above this is not a marker.
PTE_MARKER_OFFSET_LIMIT = 8

# /proc/kpageflags bits (include/uapi/linux/kernel-page-flags.h).
KPF_COMPOUND_HEAD = 15
KPF_COMPOUND_TAIL = 16
KPF_HUGE = 17
KPF_HWPOISON = 19
KPF_NOPAGE = 20
KPF_THP = 22

# Top byte of a pagemap entry: which values mean "non-present swap-format entry" and which
# mean "present". Used with bytes.translate so that no Python loop touches single entries.
SWAP_FORMAT_TOP_BYTES = bytes(b for b in range(256) if b & 0xC0 == 0x40)
NOT_SWAP_FORMAT_TOP_BYTES = bytes(b for b in range(256) if b & 0xC0 != 0x40)
PRESENT_TOP_BYTES = bytes(b for b in range(256) if b & 0x80)
# Translation table: swap-format top byte -> 1, anything else -> 0.
SWAP_FORMAT_TO_ONE = bytes(1 if b & 0xC0 == 0x40 else 0 for b in range(256))
# Byte 2 of a kpageflags entry holds bits 16-23; KPF_HWPOISON (19) is 0x08 there.
KPF_HWPOISON_BYTE = KPF_HWPOISON // 8
KPF_HWPOISON_BYTE_BIT = 1 << (KPF_HWPOISON % 8)
NOT_HWPOISON_BYTES = bytes(b for b in range(256) if not b & KPF_HWPOISON_BYTE_BIT)


def special_type_table(real_swap_types):
    """Translation table for byte 0 of an entry: 1 where the swap type (low 5 bits) is not a
    real swap device (``type >= real_swap_types``), else 0."""
    return bytes(1 if (b & SWP_TYPE_MASK) >= real_swap_types else 0 for b in range(256))


class PagemapEntry:
    """One decoded pagemap entry."""

    __slots__ = ("raw",)

    def __init__(self, raw):
        self.raw = raw

    @classmethod
    def from_bytes(cls, data):
        return cls(int.from_bytes(data, "little"))

    @property
    def present(self):
        return bool(self.raw & PM_PRESENT)

    @property
    def swap_format(self):
        return bool(self.raw & PM_SWAP) and not self.raw & PM_PRESENT

    @property
    def file_or_shared(self):
        return bool(self.raw & PM_FILE)

    @property
    def guard_region(self):
        return bool(self.raw & PM_GUARD_REGION)

    @property
    def pfn(self):
        """PFN of a present page (0 when hidden from an unprivileged reader)."""
        return self.raw & PM_PFRAME_MASK if self.present else None

    @property
    def swap_type(self):
        return self.raw & SWP_TYPE_MASK if self.swap_format else None

    @property
    def swap_offset(self):
        return (self.raw & PM_PFRAME_MASK) >> SWP_TYPE_BITS if self.swap_format else None

    def hex(self):
        return "0x%016x" % self.raw

    def __repr__(self):
        return "PagemapEntry(%s)" % self.hex()


def encode_swap_entry(swap_type, offset, soft_dirty=True, file_or_shared=False):
    """Pagemap value the kernel shows for a swap-format entry (used by tests and docs)."""
    value = PM_SWAP | ((offset << SWP_TYPE_BITS) | swap_type) & PM_PFRAME_MASK
    if soft_dirty:
        value |= PM_SOFT_DIRTY
    if file_or_shared:
        value |= PM_FILE
    return value


def encode_present_entry(pfn, soft_dirty=True, exclusive=True, file_or_shared=False):
    """Pagemap value the kernel shows for a present page."""
    value = PM_PRESENT | (pfn & PM_PFRAME_MASK)
    if soft_dirty:
        value |= PM_SOFT_DIRTY
    if exclusive:
        value |= PM_MMAP_EXCLUSIVE
    if file_or_shared:
        value |= PM_FILE
    return value


def has_hwpoison(kpageflags_value):
    return bool(kpageflags_value >> KPF_HWPOISON & 1)


def to_hex(value):
    return None if value is None else "0x%x" % value
