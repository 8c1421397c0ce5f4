# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The present-page check (``PresentMatcher`` and the scan around it) against a plain loop.

Every fixture is a pagemap buffer or file laid out as the kernel writes it
(docs: /work/shared/research/poison-detection-facts.md §1.1, §1.4, §1.5):

- dense 4 KiB anonymous RAM: one present entry per page, ``PM_PRESENT | PM_MMAP_EXCLUSIVE``
  (top byte 0x81), soft-dirty (bit 55) on some, PFNs scattered over the host (§1.1);
- THP: 512 entries with consecutive PFNs from the head PFN (``pagemap_pmd_range`` adds the
  subpage index); an unsplit poisoned THP keeps its poisoned subpage present (§1.5a);
- hugetlb: consecutive PFNs with ``PM_FILE``, and ``/proc/kpageflags`` reports KPF_HWPOISON
  for every subpage of a poisoned huge page (copied from the folio, §1.4), so the poisoned set
  holds whole aligned runs of 512 (2 MiB) or 262144 (1 GiB) PFNs;
- swap-format entries that carry a poisoned PFN as their offset (hwpoison entry, type 26 on
  Debian 6.1), PTE markers (``0x400000000000005f`` poisoned, ``0x440000000000009f`` guard),
  real swap entries, empty entries (0, or soft-dirty only): never a present hit (§1.1, §1.6);
- an unprivileged reader sees PFN 0 in every present entry (§1.2).
"""

from __future__ import annotations

import os
import random
import struct
import sys
from pathlib import Path

import pytest

from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.poison import encoding as enc
from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.poison import pagemap
from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.poison.procfs import Mapping

SEED = 20
HOST_PFNS = 1 << 23  # a 32 GiB host
HWPOISON_TYPE_61 = 26


def reference(buf, pfns):
    """The plain loop the fast path must match: every entry, one by one."""
    found = []
    for index in range(len(buf) // 8):
        value = int.from_bytes(buf[index * 8:index * 8 + 8], "little")
        if value & enc.PM_PRESENT and value & enc.PM_PFRAME_MASK in pfns:
            found.append((index, value))
    return found


def pack(values):
    return struct.pack("<%dQ" % len(values), *values)


def anon_4k(rng, pfn):
    return enc.encode_present_entry(pfn, soft_dirty=rng.random() < 0.3)


def mixed_entries(rng, count, poisoned):
    """Dense anon pages, THP runs, hugetlb runs, holes and special entries, with some present
    pages on poisoned PFNs."""
    values = []
    poisoned = sorted(poisoned)
    while len(values) < count:
        kind = rng.random()
        if kind < 0.55:
            values.append(anon_4k(rng, rng.randrange(1, HOST_PFNS)))
        elif kind < 0.6:
            head = rng.randrange(0, HOST_PFNS, 512)
            values.extend(enc.encode_present_entry(head + i, soft_dirty=False) for i in range(512))
        elif kind < 0.62:
            head = rng.randrange(0, HOST_PFNS, 512)
            values.extend(enc.encode_present_entry(head + i, exclusive=False, file_or_shared=True)
                          for i in range(512))
        elif kind < 0.75:
            values.extend([0] * rng.randrange(1, 300))
        elif kind < 0.77:
            values.append(enc.PM_SOFT_DIRTY)
        elif kind < 0.8:
            values.append(0x400000000000005f if rng.random() < 0.5 else 0x440000000000009f)
        elif kind < 0.83:
            values.append(enc.encode_swap_entry(rng.randrange(2), rng.randrange(1, 1 << 20)))
        elif kind < 0.86 and poisoned:
            # hwpoison entry: the offset is the poisoned PFN, but it is not present
            values.append(enc.encode_swap_entry(HWPOISON_TYPE_61, rng.choice(poisoned)))
        elif poisoned:
            values.append(anon_4k(rng, rng.choice(poisoned)))
    return values[:count]


def poisoned_set(rng, count):
    return set(rng.randrange(1, HOST_PFNS) for _number in range(count))


@pytest.mark.parametrize("count", [1, 4, 8, 9, 64, 65, 200, 600])
def test_matcher_equals_the_plain_loop_on_random_chunks(count):
    rng = random.Random(SEED * 1000 + count)
    pfns = poisoned_set(rng, count)
    matcher = pagemap.PresentMatcher(pfns)
    assert matcher.bulk is (len(matcher.passes) > pagemap.LANE_MAX_PASSES)
    total = 0
    for _chunk in range(4):
        buf = pack(mixed_entries(rng, 1 << 14, pfns))
        expected = reference(buf, pfns)
        assert matcher.find(buf) == expected
        total += len(expected)
    assert total > 0  # the fixture does hold present pages on poisoned PFNs


def test_lanes_are_used_for_4_and_64_pfns_and_leave_few_candidates():
    rng = random.Random(SEED)
    for count in (4, 64):
        pfns = poisoned_set(rng, count)
        matcher = pagemap.PresentMatcher(pfns)
        assert not matcher.bulk and len(matcher.passes) == 1
        buf = pack([anon_4k(rng, rng.randrange(1, HOST_PFNS)) for _number in range(1 << 15)])
        assert matcher.find(buf) == reference(buf, pfns)
        assert matcher.stats["bulk_chunks"] == 0
        assert matcher.stats["candidates"] < 64, matcher.stats


def test_soft_dirty_bit_does_not_hide_a_pfn_with_high_bits():
    """PFN bits 48-54 share byte 6 with soft-dirty (bit 55)."""
    pfns = {(0x12 << 48) | 0x345678, (0x7f << 48) | 1}
    values = [enc.encode_present_entry(pfn, soft_dirty=dirty) for pfn in sorted(pfns)
              for dirty in (False, True)]
    values.append(enc.encode_present_entry(0x345678))  # same low bytes, other high bits
    buf = pack(values)
    assert [i for i, _v in pagemap.PresentMatcher(pfns).find(buf)] == [0, 1, 2, 3]
    assert pagemap.PresentMatcher(pfns).find(buf) == reference(buf, pfns)


def test_whole_hugetlb_pages_are_compared_by_their_high_bytes():
    """A poisoned 2 MiB and a poisoned 1 GiB hugetlb page: kpageflags flags every subpage."""
    rng = random.Random(SEED)
    head_2m = 0x3ff200
    head_1g = 0x540000
    single = {0x123457, 0x7654321}
    pfns = set(range(head_2m, head_2m + 512)) | set(range(head_1g, head_1g + (1 << 18))) | single
    levels = pagemap.compress_pfns(pfns)
    assert levels == [single, {head_2m >> 8, (head_2m >> 8) + 1}, {head_1g >> 16 | i for i in range(4)}]
    matcher = pagemap.PresentMatcher(pfns)
    assert not matcher.bulk and len(matcher.passes) == 3
    values = [anon_4k(rng, rng.randrange(1, HOST_PFNS)) for _number in range(6000)]
    # still mapped (unmap failed) huge page: 512 present entries, PM_FILE, consecutive PFNs
    values[1000:1512] = [enc.encode_present_entry(head_2m + i, exclusive=False, file_or_shared=True)
                         for i in range(512)]
    values[3000:3512] = [enc.encode_present_entry(head_1g + (1 << 17) + i, file_or_shared=True)
                         for i in range(512)]
    # neighbours: the huge pages just before and after, not poisoned
    values[4000:4512] = [enc.encode_present_entry(head_2m - 512 + i) for i in range(512)]
    values[5000:5512] = [enc.encode_present_entry(head_1g + (1 << 18) + i) for i in range(512)]
    buf = pack(values)
    found = matcher.find(buf)
    assert found == reference(buf, pfns)
    assert [i for i, _v in found if 1000 <= i < 1512] == list(range(1000, 1512))
    assert len([i for i, _v in found if 3000 <= i < 3512]) == 512
    assert not [i for i, _v in found if 4000 <= i < 4512 or 5000 <= i < 5512]


def test_unsplit_thp_reports_only_its_poisoned_subpage():
    head = 0x40000
    pfns = {head + 0x123}
    buf = pack([enc.encode_present_entry(head + i, exclusive=False) for i in range(512)])
    assert pagemap.PresentMatcher(pfns).find(buf) == [(0x123, buf_value(buf, 0x123))]


def buf_value(buf, index):
    return int.from_bytes(buf[index * 8:index * 8 + 8], "little")


@pytest.mark.parametrize("pfn", [0, 1 << 24, 1 << 16])
def test_pfns_with_zero_low_bytes_do_not_match_empty_entries(pfn):
    """Empty entries, soft-dirty-only entries and markers have an all-zero low PFN field."""
    values = [0] * 1000 + [enc.PM_SOFT_DIRTY] * 10 + [0x440000000000009f]
    values += [enc.encode_present_entry(pfn), enc.encode_present_entry(pfn + 1)]
    buf = pack(values)
    matcher = pagemap.PresentMatcher({pfn})
    assert matcher.find(buf) == reference(buf, {pfn}) == [(1011, values[1011])]
    assert matcher.stats["bulk_chunks"] == 0


def test_hidden_pfns_fall_back_to_the_set_path_with_the_same_answer():
    """Unprivileged reader: every present entry shows PFN 0; poisoned PFN 0x1000000 shares
    its low 3 bytes with PFN 0, so the lanes pass every entry and the chunk goes to the
    set path."""
    buf = pack([enc.encode_present_entry(0)] * 6000)
    matcher = pagemap.PresentMatcher({1 << 24})
    assert matcher.find(buf) == [] == reference(buf, {1 << 24})
    assert matcher.stats["bulk_chunks"] == 1
    assert pagemap.PresentMatcher({0}).find(buf) == reference(buf, {0})


def test_candidate_limit_and_many_pfns_take_the_set_path_with_the_same_answer():
    rng = random.Random(SEED)
    pfns = poisoned_set(rng, 64)
    buf = pack(mixed_entries(rng, 1 << 14, pfns))
    expected = reference(buf, pfns)
    tight = pagemap.PresentMatcher(pfns, candidate_limit=1)
    assert tight.find(buf) == expected and tight.stats["bulk_chunks"] == 1
    bulk = pagemap.PresentMatcher(pfns, max_passes=0)
    assert bulk.bulk and bulk.find(buf) == expected


# -- the scanner over a pagemap file: chunk borders, both scan paths ----------------------------

BASE = 0x7F0000000000


def write_pagemap(path, base, values):
    with open(path, "wb") as handle:
        handle.seek((base >> enc.PAGE_SHIFT) * 8)
        handle.write(pack(values))


def fake_pagemap_scan(pagemap_path, anyof):
    """PAGEMAP_SCAN over the fixture file, as the kernel answers it: merged runs of pages with
    the same categories, PAGE_IS_SWAPPED for swap-format entries, PAGE_IS_PRESENT for present
    ones (only those asked for by ``anyof``)."""
    def categories(value):
        if value & enc.PM_PRESENT:
            return pagemap.PAGE_IS_PRESENT | (pagemap.PAGE_IS_FILE if value & enc.PM_FILE else 0)
        if value & enc.PM_SWAP:
            return pagemap.PAGE_IS_SWAPPED
        return 0

    def scan(_fd, start, end):
        with open(pagemap_path, "rb") as handle:
            handle.seek((start >> enc.PAGE_SHIFT) * 8)
            data = handle.read(((end - start) >> enc.PAGE_SHIFT) * 8)
        regions = []
        for index in range(len(data) // 8):
            cat = categories(int.from_bytes(data[index * 8:index * 8 + 8], "little")) & \
                (anyof | pagemap.PAGE_IS_FILE)
            if not cat & anyof:
                continue
            hva = start + index * enc.PAGE_SIZE
            if regions and regions[-1][1] == hva and regions[-1][2] == cat:
                regions[-1][1] = hva + enc.PAGE_SIZE
            else:
                regions.append([hva, hva + enc.PAGE_SIZE, cat])
        return [tuple(r) for r in regions]
    return scan


def scan_file(path, size, pfns, method, chunk, monkeypatch, populated_first=None):
    monkeypatch.setattr(pagemap, "READ_CHUNK", chunk)
    ioctl = method != "pread"
    ctx = pagemap.ScanContext(
        real_swap_types=1, hwpoison_type=HWPOISON_TYPE_61, pte_marker_type=30,
        swapin_error_type=31, kpageflags=None, poisoned_pfns=pfns,
        pagemap_scan=fake_pagemap_scan(path, pagemap.PAGE_IS_SWAPPED) if ioctl else None,
        pagemap_scan_populated=fake_pagemap_scan(
            path, pagemap.PAGE_IS_SWAPPED | pagemap.PAGE_IS_PRESENT) if ioctl else None,
        method=method, reread_delay=0, reread_rounds=0, populated_first=populated_first)
    mapping = Mapping(BASE, BASE + size, "rw-p", 0, "00:00", 0, "")
    return pagemap.ProcessScanner(path, ctx).scan([pagemap.Target(mapping, guest_ram=True)])


@pytest.mark.parametrize("chunk", [4096, 1 << 20])
def test_scanner_finds_pfns_at_chunk_borders_on_both_paths(tmp_path, monkeypatch, chunk):
    rng = random.Random(SEED)
    entries = (2 << 20) // 8 + 512  # two full 1 MiB chunks and a short one
    pfns = poisoned_set(rng, 64)
    values = [anon_4k(rng, rng.randrange(1, HOST_PFNS)) for _number in range(entries)]
    per_chunk = chunk // 8
    border = sorted(pfns)
    marked = {}
    for number, index in enumerate((0, per_chunk - 1, per_chunk, 2 * per_chunk - 1,
                                    2 * per_chunk, entries - 1)):
        values[index] = enc.encode_present_entry(border[number])
        marked[index] = border[number]
    values[77] = enc.encode_swap_entry(HWPOISON_TYPE_61, border[10])  # not present
    values[100:400] = [0] * 300  # a hole
    path = str(tmp_path / "pagemap")
    write_pagemap(path, BASE, values)
    expected = [(BASE + i * enc.PAGE_SIZE, v & enc.PM_PFRAME_MASK)
                for i, v in reference(pack(values), pfns)]
    assert {hva for hva, _pfn in expected} >= {BASE + i * enc.PAGE_SIZE for i in marked}
    results = {}
    for method in ("pread", "pagemap_scan"):
        res = scan_file(path, entries * enc.PAGE_SIZE, pfns, method, chunk, monkeypatch)
        assert res.method == method
        present = [(h["hva"], h["pfn"]) for h in res.holes if h["source"] == "present_hwpoison"]
        assert present == expected
        # the hwpoison entry is found by the swap-entry path (its PFN is not in kpageflags
        # here, so it stays unexplained: the scan is incomplete, not clean)
        assert res.reasons
        results[method] = sorted((h["hva"], h["source"], h["pfn"]) for h in res.holes)
    assert results["pread"] == results["pagemap_scan"]


def test_pagemap_scan_path_reads_only_populated_ranges(tmp_path, monkeypatch):
    """Sparse guest RAM: PAGEMAP_SCAN names the populated ranges and only those are read."""
    rng = random.Random(SEED)
    pfns = poisoned_set(rng, 4)
    entries = 1 << 16
    values = [0] * entries
    values[5:9] = [anon_4k(rng, rng.randrange(1, HOST_PFNS)) for _number in range(4)]
    values[40000] = enc.encode_present_entry(min(pfns))
    values[50000] = enc.encode_swap_entry(0, 1234)  # real swap
    path = str(tmp_path / "pagemap")
    write_pagemap(path, BASE, values)
    reads = []
    real_read = pagemap.ProcessScanner._read

    def counting_read(self, size, offset):
        reads.append(size)
        return real_read(self, size, offset)

    monkeypatch.setattr(pagemap.ProcessScanner, "_read", counting_read)
    res = scan_file(path, entries * enc.PAGE_SIZE, pfns, "pagemap_scan", 1 << 20, monkeypatch)
    assert [(h["hva"], h["pfn"]) for h in res.holes] == [(BASE + 40000 * enc.PAGE_SIZE, min(pfns))]
    assert res.complete and res.stats["real_swap_entries"] == 1
    assert sum(reads) == 6 * 8


def test_benchmark_helpers_run_at_tiny_sizes(tmp_path):
    """benchmarks/scan.py builds synthetic pagemap files for its scaling table."""
    bench = Path(__file__).resolve().parents[5] / "benchmarks"
    sys.path.insert(0, str(bench))
    try:
        import scan as scan_bench  # pylint: disable=import-outside-toplevel
    finally:
        sys.path.remove(str(bench))
    path, ranges, pfns = scan_bench.synthetic_pagemap(str(tmp_path), 4 << 20, seed=SEED)
    assert os.path.getsize(path) == (ranges[0][1] >> enc.PAGE_SHIFT) * 8
    assert ranges == [(scan_bench.SYNTHETIC_BASE, scan_bench.SYNTHETIC_BASE + (4 << 20))]
    assert len(pfns) == 1024 and 0 not in pfns


@pytest.mark.parametrize("resident, method", [(60000, "pread"), (100, "pagemap_scan")])
def test_dense_process_is_read_whole_and_sparse_one_by_ranges(tmp_path, monkeypatch, resident,
                                                              method):
    """``/proc/PID/statm`` (size resident shared text lib data dt, in pages) decides: densely
    populated RAM is cheaper to read whole than to walk twice."""
    rng = random.Random(SEED)
    pfns = poisoned_set(rng, 4)
    entries = 1 << 16
    values = [anon_4k(rng, rng.randrange(1, HOST_PFNS)) for _number in range(entries)]
    values[1234] = enc.encode_present_entry(max(pfns))
    path = str(tmp_path / "pagemap")
    write_pagemap(path, BASE, values)
    (tmp_path / "statm").write_text("70000 %d 100 10 0 60000 0\n" % resident)
    res = scan_file(path, entries * enc.PAGE_SIZE, pfns, "auto", 1 << 20, monkeypatch)
    assert res.method == method
    assert [(h["hva"], h["pfn"]) for h in res.holes] == [(BASE + 1234 * enc.PAGE_SIZE, max(pfns))]


@pytest.mark.parametrize("count", [4, 64])
def test_sparse_chunk_is_compared_block_by_block_with_the_same_answer(count):
    """Guest RAM the guest never touched reads as empty entries (pte_none, §1.1); a chunk with
    a few populated 2 MiB blocks, one of them partial at the end of the chunk."""
    rng = random.Random(SEED + count)
    pfns = poisoned_set(rng, count)
    entries = (1 << 17) + 300
    values = [0] * entries
    for first in (0, 512 * 7, 512 * 100, 1 << 17):
        for index in range(first, min(first + 512, entries)):
            values[index] = anon_4k(rng, rng.randrange(1, HOST_PFNS))
    hits = (3, 512 * 7 + 511, 512 * 100 + 200, (1 << 17) + 299)
    for number, index in enumerate(hits):
        values[index] = enc.encode_present_entry(sorted(pfns)[number])
    values[512 * 50] = enc.encode_present_entry(sorted(pfns)[-1])  # a lone present page
    buf = pack(values)
    matcher = pagemap.PresentMatcher(pfns)
    found = matcher.find(buf)
    assert found == reference(buf, pfns)
    assert [i for i, _v in found] == sorted(hits + (512 * 50,))
