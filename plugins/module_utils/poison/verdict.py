# -*- coding: utf-8 -*-
# Copyright (c) kvm_ras.poison_guard contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The per-VM verdict: ``poisoned``, ``clean`` or ``unknown``. The one place for the rules.

``poisoned`` when any hole was seen:

- a hwpoison entry in the QEMU process's pagemap whose offset (the PFN) has KPF_HWPOISON;
- a present page whose PFN has KPF_HWPOISON (touching it is a real machine check);
- a PTE marker with the POISONED bit, or a swap-in error entry (5.19-6.1): both SIGBUS;
- a non-present huge page reported by PAGEMAP_SCAN in a hugetlbfs mapping, persisting;
- a read of QEMU's shared backing file failing with EIO at a page QEMU logged as poisoned;
- QEMU's own "Guest MCE Memory Error ... injected" line in the current QEMU lifetime whose
  address could not be checked (QEMU's poison list is then presumed non-empty).

``unknown`` when no hole was seen but the scan was not complete: no CAP_SYS_ADMIN (PFNs and
swap offsets hidden), process not readable or gone, read errors, hugetlbfs RAM without
PAGEMAP_SCAN, special entries that could not be explained, mapped poisoned pages that could
not be checked, a logged poisoned page in shared memory that could not be probed.

``clean`` only when every mapping was scanned with full privileges and nothing was found.
A logged poisoned page that is no longer a hole in private memory was remapped by a guest
reset (which also empties QEMU's list): history, not a hole.
"""

from __future__ import annotations

POISONED = "poisoned"
CLEAN = "clean"
UNKNOWN = "unknown"

HOLE_SOURCES = {
    "pagemap_hwpoison": "pagemap hwpoison entry, KPF_HWPOISON set at its PFN",
    "present_hwpoison": "present page whose PFN has KPF_HWPOISON",
    "pte_marker_poisoned": "PTE marker with the POISONED bit",
    "swapin_error_entry": "swap-in error entry",
    "pagemap_scan_hugetlb": "non-present huge page reported by PAGEMAP_SCAN",
    "backing_read_eio": "read of QEMU's backing file fails with EIO",
    "qemu_log": "QEMU logged an injected memory error in this lifetime (not checked in pagemap)",
}


def decide(holes, incomplete_reasons):
    """``(status, reasons)``: reasons are given only with ``unknown``."""
    if holes:
        return POISONED, []
    if incomplete_reasons:
        return UNKNOWN, list(incomplete_reasons)
    return CLEAN, []
