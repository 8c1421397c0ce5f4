# -*- coding: utf-8 -*-
# Copyright (c) kvm_ras.poison_guard contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Special swap types of the running kernel, derived from its version and build config.

Special swap entries are allocated downward from type 31 (``include/linux/swap.h``)::

    MAX_SWAPFILES = 32 - DEVICE - MIGRATION - HWPOISON - PTE_MARKER [- SWAPIN_ERROR]
    SWP_HWPOISON  = MAX_SWAPFILES
    then MIGRATION_*, DEVICE_*, PTE_MARKER, [SWAPIN_ERROR (5.19 .. 6.1)] up to 31

Examples (checked against Debian kernels): 6.1 with ``CONFIG_PTE_MARKER=y`` and no
``CONFIG_DEVICE_PRIVATE`` -> hwpoison type 26, marker 30, swap-in error 31; 6.12 -> 27, marker
31. Distribution kernels carry backports, so the derived value is a cross-check only: the
decisive test for a hwpoison entry is ``KPF_HWPOISON`` at its offset in ``/proc/kpageflags``.
"""

from __future__ import annotations

import gzip
import os
import re

_VERSION_RE = re.compile(r"^(\d+)\.(\d+)")
_CONFIG_RE = re.compile(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$")
_CONFIG_UNSET_RE = re.compile(r"^# (CONFIG_[A-Za-z0-9_]+) is not set$")

CONFIG_KEYS = ("CONFIG_MEMORY_FAILURE", "CONFIG_MIGRATION", "CONFIG_DEVICE_PRIVATE",
               "CONFIG_PTE_MARKER")


def parse_kernel_version(release):
    """``"6.1.0-56-amd64"`` -> ``(6, 1)``; ``None`` when unparsable."""
    match = _VERSION_RE.match(release or "")
    if not match:
        return None
    return int(match.group(1)), int(match.group(2))


def parse_config(text):
    """Kernel ``.config`` text -> ``{CONFIG_X: value}``; unset options map to ``"n"``."""
    config = {}
    for line in text.splitlines():
        line = line.strip()
        match = _CONFIG_RE.match(line)
        if match:
            config[match.group(1)] = match.group(2).strip('"')
            continue
        match = _CONFIG_UNSET_RE.match(line)
        if match:
            config[match.group(1)] = "n"
    return config


def read_kernel_config(release, boot_dir, proc_root):
    """Find and parse the running kernel's config.

    Tries ``<boot_dir>/config-<release>`` then ``<proc_root>/config.gz``. Returns
    ``(config dict or None, path used or None, list of problems)``.
    """
    problems = []
    candidates = []
    if release and boot_dir:
        candidates.append(os.path.join(boot_dir, "config-" + release))
    if proc_root:
        candidates.append(os.path.join(proc_root, "config.gz"))
    for path in candidates:
        try:
            if path.endswith(".gz"):
                with gzip.open(path, "rt", encoding="utf-8", errors="replace") as handle:
                    text = handle.read()
            else:
                with open(path, "r", encoding="utf-8", errors="replace") as handle:
                    text = handle.read()
        except FileNotFoundError:
            continue
        except (OSError, EOFError) as exc:
            problems.append("%s: %s" % (path, exc))
            continue
        return parse_config(text), path, problems
    return None, None, problems


def _enabled(config, key):
    return config.get(key) in ("y", "m")


def derive_special_types(version, config):
    """Special swap types for a kernel ``version`` (tuple) and ``config`` (dict or None).

    Returns a dict with ``hwpoison``, ``pte_marker``, ``swapin_error``, ``max_swapfiles``
    (each int or None when it cannot be derived) and ``basis`` (what it was derived from).
    """
    result = {"hwpoison": None, "pte_marker": None, "swapin_error": None,
              "max_swapfiles": None, "basis": None}
    if version is None:
        return result
    # PTE markers: unconditional and the top type from 6.2 on; 5.19 .. 6.1 they exist only
    # with CONFIG_PTE_MARKER and sit below the swap-in error type.
    if version >= (6, 2):
        result["pte_marker"] = 31
        result["basis"] = "kernel version"
    if config is None:
        return result
    if version < (5, 19):
        marker = 0
    elif version >= (6, 2):
        marker = 1
    else:
        marker = 1 if _enabled(config, "CONFIG_PTE_MARKER") else 0
    swapin_error = 1 if (5, 19) <= version < (6, 2) else 0
    device = 0
    if _enabled(config, "CONFIG_DEVICE_PRIVATE"):
        if version < (5, 14):
            device = 2
        elif version < (6, 15):
            device = 4
        else:
            device = 3
    migration = 0
    if _enabled(config, "CONFIG_MIGRATION"):
        migration = 2 if version < (5, 19) else 3
    hwpoison = 1 if _enabled(config, "CONFIG_MEMORY_FAILURE") else 0
    max_swapfiles = 32 - device - migration - hwpoison - marker - swapin_error
    result["max_swapfiles"] = max_swapfiles
    result["hwpoison"] = max_swapfiles if hwpoison else None
    if marker:
        result["pte_marker"] = 31 - swapin_error
    if swapin_error:
        result["swapin_error"] = 31
    result["basis"] = "kernel version and build config"
    return result
