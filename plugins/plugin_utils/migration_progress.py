# -*- coding: utf-8 -*-
# Copyright (c) kvm_ras.poison_guard contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller side: one line a person reads about a live migration in flight.

The samples come from the progress file that kvm_ras.poison_guard.live_migrate writes on the
source while it runs (libvirt's job statistics, see plugins/module_utils/migration.py
``progress_record``); the live_migrate action plugin reads it every few seconds and prints
``format_progress()``.
"""

from __future__ import annotations

UNITS = ((1 << 40, "TiB"), (1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB"))


def human_bytes(value):
    """1536 -> '1.5 KiB'; None -> '?'."""
    if value is None:
        return "?"
    for size, unit in UNITS:
        if value >= size:
            return "%.1f %s" % (value / size, unit)
    return "%d B" % value


def human_seconds(value):
    if value is None:
        return "?"
    value = int(round(value))
    if value < 90:
        return "%d s" % value
    if value < 5400:
        return "%d min %02d s" % divmod(value, 60)
    return "%d h %02d min" % (value // 3600, (value % 3600) // 60)


def progress_numbers(sample):
    """Percent done, rate (bytes/s) and seconds left from one progress record (None when unknown)."""
    total = sample.get("data_total") or sample.get("memory_total")
    remaining = sample.get("data_remaining")
    if remaining is None:
        remaining = sample.get("memory_remaining")
    percent = None
    if total and remaining is not None:
        percent = max(0.0, min(100.0, 100.0 * (total - remaining) / total))
    rate = sample.get("memory_bps") or None
    left = remaining / rate if rate and remaining is not None else None
    return percent, rate, left


def format_progress(vm, target, sample, elapsed=None):
    """'web01 -> hv2: 45% of 1.0 GiB, 12.3 MiB/s, about 20 s left (pass 2, 31 s so far)'."""
    head = "%s -> %s: " % (vm, target)
    if not sample:
        return head + "starting%s" % ("" if elapsed is None else " (%s so far)" % human_seconds(elapsed))
    percent, rate, left = progress_numbers(sample)
    total = sample.get("data_total") or sample.get("memory_total")
    parts = ["%d%% of %s" % (percent, human_bytes(total)) if percent is not None else "size not known yet",
             "%s/s" % human_bytes(rate) if rate else "rate not known yet",
             "about %s left" % human_seconds(left) if left is not None else "time left not known yet"]
    tail = []
    if sample.get("memory_iteration"):
        tail.append("pass %d" % sample["memory_iteration"])
    so_far = sample.get("elapsed_s", elapsed)
    if so_far is not None:
        tail.append("%s so far" % human_seconds(so_far))
    if sample.get("phase") and sample["phase"] != "running":
        tail.append(sample["phase"])
    return head + ", ".join(parts) + (" (%s)" % ", ".join(tail) if tail else "")
