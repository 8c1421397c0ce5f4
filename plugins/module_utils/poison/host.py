# -*- coding: utf-8 -*-
# Copyright (c) kvm_ras.poison_guard contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Host-level figures: kernel release, HardwareCorrupted, per-node memory_failure counters,
swap areas and the special swap types derived from the kernel's build config.

``HardwareCorrupted`` (``/proc/meminfo``, CONFIG_MEMORY_FAILURE only) counts every poisoned
PFN since boot (soft-offlined pages and repeated events included) and never means "holes in
VMs"; 0 means no page on the host is hwpoisoned. The per-node counters
(``/sys/devices/system/node/nodeN/memory_failure/{total,ignored,failed,delayed,recovered}``)
exist from Linux 6.3 on.
"""

from __future__ import annotations

import os
import re

from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.poison import procfs
from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.poison import swaptype
from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.poison import uffd

_NODE_RE = re.compile(r"^node\d+$")


def hardware_corrupted_kb(proc_root):
    """``(kB or None, problem or None)``; None without a problem means the line is absent
    (kernel built without CONFIG_MEMORY_FAILURE)."""
    path = os.path.join(proc_root, "meminfo")
    try:
        text = procfs.read_text(path)
    except OSError as exc:
        return None, "cannot read %s: %s" % (path, exc.strerror or exc)
    for line in text.splitlines():
        if line.startswith("HardwareCorrupted:"):
            try:
                return int(line.split()[1]), None
            except (IndexError, ValueError):
                return None, "unparsable line in %s: %r" % (path, line)
    return None, None


def memory_failure_counters(sys_root):
    """``{"node0": {"total": N, ...}, ...}`` or None where the kernel has no such counters."""
    base = os.path.join(sys_root, "devices", "system", "node")
    try:
        nodes = sorted(n for n in os.listdir(base) if _NODE_RE.match(n))
    except OSError:
        return None
    counters = {}
    for node in nodes:
        directory = os.path.join(base, node, "memory_failure")
        try:
            names = sorted(os.listdir(directory))
        except OSError:
            continue
        values = {}
        for name in names:
            try:
                values[name] = int(procfs.read_text(os.path.join(directory, name)).strip())
            except (OSError, ValueError):
                values[name] = None
        counters[node] = values
    return counters or None


def kernel_release(proc_root):
    try:
        return procfs.read_text(os.path.join(proc_root, "sys", "kernel", "osrelease")).strip()
    except OSError:
        return None


def collect(proc_root, sys_root, boot_dir, uffd_probe=uffd.probe):
    """Host facts as reported in the result's ``host`` key, plus ``problems`` (list).

    ``uffd_probe`` asks the running kernel whether it has ``UFFD_FEATURE_POISON`` (what a
    destination QEMU with ``x-poison-holes`` needs); tests hand in a stand-in."""
    problems = []
    release = kernel_release(proc_root)
    if release is None:
        problems.append("cannot read %s" % os.path.join(proc_root, "sys", "kernel", "osrelease"))
    version = swaptype.parse_kernel_version(release)
    config, config_path, config_problems = swaptype.read_kernel_config(release, boot_dir,
                                                                       proc_root)
    problems.extend(config_problems)
    special = swaptype.derive_special_types(version, config)
    hc_kb, hc_problem = hardware_corrupted_kb(proc_root)
    if hc_problem:
        problems.append(hc_problem)
    try:
        swap_areas = procfs.swap_area_count(proc_root)
    except OSError as exc:
        swap_areas = None
        problems.append("cannot read %s: %s" % (os.path.join(proc_root, "swaps"),
                                                exc.strerror or exc))
    memory_failure_config = None
    if config is not None:
        memory_failure_config = config.get("CONFIG_MEMORY_FAILURE") == "y"
    facts = {
        "kernel_release": release,
        "hardware_corrupted_kb": hc_kb,
        "hardware_corrupted_present": hc_kb is not None,
        "hardware_corrupted_problem": hc_problem,
        "memory_failure": memory_failure_counters(sys_root),
        "memory_failure_config": memory_failure_config,
        "hwpoison_swap_type": special["hwpoison"],
        "pte_marker_swap_type": special["pte_marker"],
        "swapin_error_swap_type": special["swapin_error"],
        "swap_types_basis": special["basis"],
        "kernel_config": config_path,
        "swap_areas": swap_areas,
    }
    facts["uffd_poison"], facts["uffd_poison_detail"] = uffd_probe()
    return facts, version, problems
