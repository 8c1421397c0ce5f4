# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Benchmark: poison_info's page-table scan of a large process vs a raw read of its pagemap.

In one run it spawns a helper process that maps and touches ``--gib`` GiB of anonymous memory
(MADV_NOHUGEPAGE, so pagemap holds one 4 KiB entry per page, the worst case), then times, over
the same mappings of that process:

- ``raw pread``: ``os.pread`` of the pagemap in 1 MiB chunks and nothing else (the baseline);
- ``scan pread``: the detection core's scan (``ProcessScanner.scan``) as poison_info runs it on
  a host with no poisoned PFN (swap-entry classification, PFN visibility check);
- ``scan pread + present check``: the same with 4 and with 64 poisoned PFNs to look for among
  the present pages (the ``bytes.find`` path and the big-integer path);
- ``scan PAGEMAP_SCAN``: the ioctl path (Linux 6.7+).

Each figure is the best of ``--repeat`` interleaved runs. It prints the ratio of each scan to
the raw read (goal for ``scan pread``: within 1.3x) and the throughput in GiB of guest RAM per
second. Run as root: the scan needs CAP_SYS_ADMIN to see PFNs.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
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
    ctypes.memset(base, 0x5a, size)           # touch every page
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--gib", type=float, default=4.0, help="helper memory in GiB (default 4)")
    parser.add_argument("--repeat", type=int, default=5, help="runs per method (default 5)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: the scan needs CAP_SYS_ADMIN to see PFNs")
    hostmod, pagemap, procfs = _imports()
    size = int(args.gib * (1 << 30)) // 4096 * 4096
    started = time.perf_counter()
    helper = subprocess.Popen([sys.executable, "-c", HELPER, str(size)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        line = helper.stdout.readline().split()
        if not line or line[0] != "READY":
            sys.exit("helper failed to map %d bytes" % size)
        print("helper pid %d: %.2f GiB anonymous, touched in %.1f s" % (
            helper.pid, size / float(1 << 30), time.perf_counter() - started))
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

        def context(poisoned=(), method="pread", scan_fn=None):
            return pagemap.ScanContext(
                real_swap_types=swap_areas, hwpoison_type=facts["hwpoison_swap_type"],
                pte_marker_type=facts["pte_marker_swap_type"],
                swapin_error_type=facts["swapin_error_swap_type"], kpageflags=kpf,
                poisoned_pfns=poisoned, pagemap_scan=scan_fn, method=method)

        # PFNs that exist but are not mapped by the helper: the present check must find nothing
        absent = [1 << 40 | i for i in range(64)]
        contexts = {
            "scan pread": context(),
            "scan pread + present check (4 PFNs)": context(poisoned=absent[:4]),
            "scan pread + present check (64 PFNs)": context(poisoned=absent),
        }
        if scan_available:
            contexts["scan PAGEMAP_SCAN"] = context(method="pagemap_scan",
                                                    scan_fn=pagemap.pagemap_scan_swapped)

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
        print("%-40s %10s %10s %14s" % ("method", "seconds", "ratio", "GiB RAM/s"))
        for name, seconds in best.items():
            print("%-40s %10.4f %9.2fx %14.1f" % (name, seconds, seconds / raw, gib / seconds))
        ratio = best["scan pread"] / raw
        print("")
        print("scan pread / raw pread = %.2fx (goal: within 1.3x) -> %s" % (
            ratio, "met" if ratio <= 1.3 else "NOT met"))
        default = "scan PAGEMAP_SCAN" if scan_available else "scan pread"
        print("throughput of the module's default scan on this kernel (%s): %.1f GiB of guest "
              "RAM per second" % (results[default].method, gib / best[default]))
    finally:
        helper.stdin.close()
        helper.wait()


if __name__ == "__main__":
    main()
