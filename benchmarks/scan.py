# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Benchmark: poison_info's page-table scan of a large process vs a raw read of its pagemap.

In one run it spawns a helper process that maps and touches ``--gib`` GiB of anonymous memory
(MADV_NOHUGEPAGE, so pagemap holds one 4 KiB entry per page, the worst case), then times, over
the same mappings of that process, interleaved and best of ``--repeat``:

- ``raw pread``: ``os.pread`` of the pagemap in 1 MiB chunks and nothing else (the baseline);
- ``scan pread``: the detection core's scan (``ProcessScanner.scan``) as poison_info runs it on
  a host with no poisoned PFN (swap-entry classification, PFN visibility check);
- ``scan pread + present check``: the same on a host with 4 and with 64 poisoned PFNs, which
  every present page is compared against (``PresentMatcher``). The PFNs are random PFNs of this
  host's RAM that the helper does not map, as on a host whose poisoned pages were unmapped;
  ``set path`` rows force the chunk-wide big-integer/``set`` comparison (the method before
  issue 20) for reference;
- ``scan PAGEMAP_SCAN`` (Linux 6.7+): the ioctl path, without and with the present check
  (the kernel names the present and swapped ranges, only those are read and compared).

Before the timing, a check run puts 2 PFNs the helper does map into each poisoned set and
requires both paths to report exactly those pages.

It prints each scan's ratio to the raw read (goals: ``scan pread`` within 1.3x, the present
check within 2.0x with 4 and with 64 PFNs on both paths), the seconds per TiB of guest RAM,
and a scaling table (``--scaling``, default 1 2 4 8 GiB) of the present check over synthetic
pagemap files written to a temporary directory (dense 4 KiB pages and THP runs; no root needed)
to show the cost grows linearly. Run as root: the process scan needs CAP_SYS_ADMIN to see PFNs.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

HELPER = textwrap.dedent("""\
    import ctypes, mmap, sys
    size = int(sys.argv[1])
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    base = libc.mmap(None, size + 4096, mmap.PROT_READ | mmap.PROT_WRITE,
                     mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
    libc.mprotect(base + size, 4096, 0)       # QEMU-style guard page after the RAM block
    libc.madvise(base, size, 15)              # MADV_NOHUGEPAGE: 4 KiB PTEs
    step = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    for block in range(0, size, 2 << 20):     # touch every page (or every step-th 2 MiB)
        if (block >> 21) % step == 0:
            ctypes.memset(base + block, 0x5a, min(2 << 20, size - block))
    print("READY %#x %d" % (base, size), flush=True)
    sys.stdin.read()
    """)


def _imports():
    collections = REPO / ".cache" / "collections"
    if not (collections / "ansible_collections").exists():
        subprocess.run([str(REPO / "tools" / "collection-link")], check=True,
                       capture_output=True)
    sys.path.insert(0, str(collections))
    from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.poison import (  # noqa
        host as hostmod, pagemap, procfs)
    return hostmod, pagemap, procfs


def best_of(repeat, funcs):
    """Interleave the functions ``repeat`` times; best (minimum) seconds of each."""
    best = {name: float("inf") for name in funcs}
    for _round in range(repeat):
        for name, func in funcs.items():
            started = time.perf_counter()
            func()
            best[name] = min(best[name], time.perf_counter() - started)
    return best


SYNTHETIC_BASE = 1 << 32  # the synthetic file holds entries from this address on
SYNTHETIC_HOST_PFNS = 1 << 26  # PFNs of a 256 GiB host


def synthetic_pagemap(directory, size, seed=20):
    """Write a pagemap-like file for ``size`` bytes of guest RAM at ``SYNTHETIC_BASE``: present
    entries as the kernel writes them (``PM_PRESENT | PM_MMAP_EXCLUSIVE``, soft-dirty on some),
    three of four 2 MiB blocks as scattered 4 KiB pages, every fourth as a THP (512
    consecutive PFNs). Returns ``(path, [(start, end)], set of mapped PFNs)``."""
    rng = random.Random(seed)
    pages = size >> 12
    blocks = (pages + 511) // 512
    thp_blocks = set(range(3, blocks, 4))
    scattered = rng.sample(range(1, SYNTHETIC_HOST_PFNS // 2), pages)
    heads = rng.sample(range(SYNTHETIC_HOST_PFNS // 1024, SYNTHETIC_HOST_PFNS // 512),
                       len(thp_blocks))
    heads = dict(zip(sorted(thp_blocks), (h * 512 for h in heads)))
    path = os.path.join(directory, "pagemap-%d" % size)
    mapped = set()
    with open(path, "wb") as handle:
        handle.seek((SYNTHETIC_BASE >> 12) * 8)
        for block in range(blocks):
            count = min(512, pages - block * 512)
            if block in heads:
                pfns = range(heads[block], heads[block] + count)
                flags = 0x81 << 56
            else:
                pfns = scattered[block * 512:block * 512 + count]
                flags = (0x81 << 56) | (1 << 55 if block % 3 else 0)
            mapped.update(pfns)
            handle.write(struct.pack("<%dQ" % count, *(flags | pfn for pfn in pfns)))
    return path, [(SYNTHETIC_BASE, SYNTHETIC_BASE + pages * 4096)], mapped


def unmapped_pfns(rng, count, mapped, limit):
    """``count`` random PFNs below ``limit`` that are not in ``mapped``."""
    chosen = []
    while len(chosen) < count:
        pfn = rng.randrange(1, limit)
        if pfn not in mapped and pfn not in chosen:
            chosen.append(pfn)
    return chosen


def scan_and_read(pagemap, path, ctx, targets, times):
    """Two functions: scan ``path`` ``times`` times, and read its ranges ``times`` times."""
    ranges = [(t.mapping.start, t.mapping.end) for t in targets]

    def scan():
        for _time in range(times):
            result = pagemap.ProcessScanner(path, ctx).scan(targets)
            assert not result.holes and not result.reasons, (result.holes, result.reasons)

    def raw():
        for _time in range(times):
            pagemap.raw_read(path, ranges)

    return scan, raw


def scaling_table(pagemap, procfs, sizes_gib, repeat):
    """Present check (64 PFNs, pread path) over synthetic pagemap files of each size; sizes
    interleaved in every round, best of ``repeat``."""
    directory = tempfile.mkdtemp(prefix="poison-scan-bench-")
    funcs = {}
    repeats = {}
    try:
        for gib in sizes_gib:
            path, ranges, mapped = synthetic_pagemap(directory, int(gib * (1 << 30)))
            pfns = unmapped_pfns(random.Random(64), 64, mapped, SYNTHETIC_HOST_PFNS)
            mapping = procfs.Mapping(ranges[0][0], ranges[0][1], "rw-p", 0, "00:00", 0, "")
            targets = [pagemap.Target(mapping, guest_ram=True)]
            ctx = pagemap.ScanContext(poisoned_pfns=pfns, method="pread")

            # every measurement covers the largest size's worth of RAM (small files are
            # scanned several times) so that each one is exposed alike to other load
            times = max(int(round(max(sizes_gib) / gib)), 1)

            funcs[("scan", gib)], raw = scan_and_read(pagemap, path, ctx, targets, times)
            funcs[("raw", gib)] = raw
            repeats[gib] = times
        best = best_of(max(repeat, 9), funcs)
        best = dict((key, seconds / repeats[key[1]]) for key, seconds in best.items())
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    print("")
    print("scaling: present check with 64 poisoned PFNs over synthetic pagemap files (written to")
    print("a temporary directory, read from the page cache: the file read is much cheaper than")
    print("the kernel's page-table walk, so only the scan's growth is meaningful here)")
    print("%8s %12s %10s %12s %12s" % ("GiB", "file read s", "scan s", "scan s/GiB",
                                       "vs smallest"))
    first = best[("scan", sizes_gib[0])] / sizes_gib[0]
    rows = []
    for gib in sizes_gib:
        scan = best[("scan", gib)]
        rows.append((gib, best[("raw", gib)], scan))
        print("%8g %12.4f %10.4f %12.4f %11.2fx" % (gib, best[("raw", gib)], scan, scan / gib,
                                                    (scan / gib) / first))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--gib", type=float, default=4.0, help="helper memory in GiB (default 4)")
    parser.add_argument("--repeat", type=int, default=5, help="runs per method (default 5)")
    parser.add_argument("--touch-every", type=int, default=1, metavar="N",
                        help="touch only every N-th 2 MiB block of the helper (sparse guest "
                             "RAM; default 1: every page)")
    parser.add_argument("--scaling", type=float, nargs="*", default=[1, 2, 4, 8],
                        help="GiB of guest RAM per synthetic file (default 1 2 4 8; none: skip)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: the scan needs CAP_SYS_ADMIN to see PFNs")
    hostmod, pagemap, procfs = _imports()
    size = int(args.gib * (1 << 30)) // 4096 * 4096
    started = time.perf_counter()
    helper = subprocess.Popen([sys.executable, "-c", HELPER, str(size), str(args.touch_every)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        line = helper.stdout.readline().split()
        if not line or line[0] != "READY":
            sys.exit("helper failed to map %d bytes" % size)
        print("helper pid %d: %.2f GiB anonymous, %s touched in %.1f s" % (
            helper.pid, size / float(1 << 30), "every page" if args.touch_every <= 1 else
            "every %d. 2 MiB block" % args.touch_every, time.perf_counter() - started))
        facts, _version, _problems = hostmod.collect("/proc", "/sys", "/boot")
        mappings = [m for m in procfs.read_maps("/proc", helper.pid) if procfs.scannable(m)]
        ram = set(id(m) for m in procfs.guest_ram_mappings(mappings))
        targets = [pagemap.Target(m, guest_ram=id(m) in ram) for m in mappings]
        ranges = [(m.start, m.end) for m in mappings]
        pagemap_path = "/proc/%d/pagemap" % helper.pid
        pagemap_bytes = sum((e - s) // 4096 * 8 for s, e in ranges)
        print("%d mappings, %.2f GiB of address space, %.1f MiB of pagemap; kernel %s" % (
            len(mappings), sum(e - s for s, e in ranges) / float(1 << 30),
            pagemap_bytes / float(1 << 20), facts["kernel_release"]))
        kpf = pagemap.Kpageflags("/proc/kpageflags")
        swap_areas = facts["swap_areas"] or 0
        scan_available = pagemap.probe_pagemap_scan("/proc/self/pagemap")

        # the helper's present PFNs, and poisoned-looking PFNs of this host that it does not map
        mapped = {}
        fd = os.open(pagemap_path, os.O_RDONLY)
        try:
            for start, end in ranges:
                data = os.pread(fd, (end - start) // 4096 * 8, start // 4096 * 8)
                for index, value in enumerate(struct.unpack("=%dQ" % (len(data) // 8), data)):
                    if value >> 63 and value & ((1 << 55) - 1):
                        mapped[value & ((1 << 55) - 1)] = start + index * 4096
        finally:
            os.close(fd)
        rng = random.Random(20)
        host_pfns = max(max(mapped) + 1, os.sysconf("SC_PHYS_PAGES"))
        absent = unmapped_pfns(rng, 64, mapped, host_pfns)
        hit_pfns = rng.sample(sorted(mapped), 2)
        print("poisoned PFNs for the present check: random below %#x, not mapped by the helper"
              % host_pfns)

        def context(poisoned=(), method="pread", scan_fn=None, set_path=False,
                    populated_first=None):
            ctx = pagemap.ScanContext(
                real_swap_types=swap_areas, hwpoison_type=facts["hwpoison_swap_type"],
                pte_marker_type=facts["pte_marker_swap_type"],
                swapin_error_type=facts["swapin_error_swap_type"], kpageflags=kpf,
                poisoned_pfns=poisoned, pagemap_scan=scan_fn, method=method,
                populated_first=populated_first)
            if set_path:
                ctx.matcher = pagemap.PresentMatcher(poisoned, max_passes=0)
            return ctx

        ioctl = dict(method="pagemap_scan", scan_fn=pagemap.pagemap_scan_swapped)
        # correctness first: 2 mapped PFNs among the poisoned ones, both paths, same pages
        want = sorted((mapped[p], p) for p in hit_pfns)
        for count in (4, 64):
            poisoned = absent[:count - 2] + hit_pfns
            checks = [("pread", context(poisoned))]
            if scan_available:
                checks.append(("pagemap_scan", context(poisoned, populated_first=True, **ioctl)))
            for method, ctx in checks:
                result = pagemap.ProcessScanner(pagemap_path, ctx).scan(targets)
                got = sorted((h["hva"], h["pfn"]) for h in result.holes)
                assert result.method == method and got == want, (method, count, got, want)
        print("check: with 2 mapped PFNs among 4 and 64 poisoned ones, %s report exactly "
              "those 2 pages" % ("both paths" if scan_available else "the pread path"))

        contexts = {
            "scan pread": context(),
            "scan pread + present check (4 PFNs)": context(poisoned=absent[:4]),
            "scan pread + present check (64 PFNs)": context(poisoned=absent),
            "  set path (before), 4 PFNs": context(poisoned=absent[:4], set_path=True),
            "  set path (before), 64 PFNs": context(poisoned=absent, set_path=True),
        }
        if scan_available:
            contexts["scan PAGEMAP_SCAN"] = context(**ioctl)
            for count in (4, 64):
                contexts["scan PAGEMAP_SCAN + present check (%d PFNs)" % count] = context(
                    absent[:count], **ioctl)
            for count in (4, 64):
                contexts["  populated ranges first, %d PFNs" % count] = context(
                    absent[:count], populated_first=True, **ioctl)

        results = {}

        def scan_with(ctx, name):
            def run():
                result = pagemap.ProcessScanner(pagemap_path, ctx).scan(targets)
                assert not result.holes and not result.reasons, (result.holes, result.reasons)
                assert result.pfn_visible is not False, "PFNs hidden: not root?"
                results[name] = result
            return run

        funcs = {"raw pread": lambda: pagemap.raw_read(pagemap_path, ranges)}
        funcs.update((name, scan_with(ctx, name)) for name, ctx in contexts.items())
        best = best_of(args.repeat, funcs)
        kpf.close()
        raw = best["raw pread"]
        gib = size / float(1 << 30)
        print("")
        print("%-44s %9s %8s %10s %9s" % ("method", "seconds", "ratio", "GiB RAM/s", "s/TiB"))
        for name, seconds in best.items():
            print("%-44s %9.4f %7.2fx %10.1f %9.1f" % (name, seconds, seconds / raw,
                                                       gib / seconds, seconds / gib * 1024))
        print("")
        ratio = best["scan pread"] / raw
        print("scan pread / raw pread = %.2fx (goal: within 1.3x) -> %s" % (
            ratio, "met" if ratio <= 1.3 else "NOT met"))
        paths = [("pread", "scan pread")]
        if scan_available:
            paths.append(("PAGEMAP_SCAN", "scan PAGEMAP_SCAN"))
        for label, prefix in paths:
            for count in (4, 64):
                name = "%s + present check (%d PFNs)" % (prefix, count)
                ratio = best[name] / raw
                print("present check, %-12s %2d PFNs: %.2fx the raw read, %.1f s per TiB of "
                      "guest RAM (goal: within 2.0x) -> %s" % (
                          label, count, ratio, best[name] / gib * 1024,
                          "met" if ratio <= 2.0 else "NOT met"))
        if scan_available:
            print("PAGEMAP_SCAN path with a present check, as chosen for this process "
                  "(resident share %s %.1f%%): %s" % (
                      "<" if results["scan PAGEMAP_SCAN + present check (64 PFNs)"].method ==
                      "pagemap_scan" else ">=", 100.0 * pagemap.POPULATED_FIRST_BELOW,
                      results["scan PAGEMAP_SCAN + present check (64 PFNs)"].method))
        default = "scan PAGEMAP_SCAN" if scan_available else "scan pread"
        print("throughput of the module's default scan on this kernel (%s): %.1f GiB of guest "
              "RAM per second" % (results[default].method, gib / best[default]))
    finally:
        helper.stdin.close()
        helper.wait()
    if args.scaling:
        scaling_table(pagemap, procfs, args.scaling, args.repeat)


if __name__ == "__main__":
    main()
