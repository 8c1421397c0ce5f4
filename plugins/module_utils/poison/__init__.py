# -*- coding: utf-8 -*-
# Copyright (c) kvm_ras.poison_guard contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Detection core of ``kvm_ras.poison_guard.poison_info`` (pure Python, no Ansible imports).

Modules, one rule each:

- ``encoding``: bit layout of ``/proc/PID/pagemap`` and ``/proc/kpageflags`` entries.
- ``swaptype``: kernel version/config parsing and the special swap types (hwpoison, PTE
  marker, swap-in error) derived from them.
- ``procfs``: QEMU process discovery, command line parsing, ``maps`` and guest-RAM selection.
- ``pagemap``: the pagemap scan (pread and ``PAGEMAP_SCAN``), kpageflags look-ups and sweep.
- ``logs``: QEMU (libvirt per-domain) log and kernel log parsers.
- ``libvirt_source``: optional libvirt discovery (``libvirt`` imported lazily).
- ``host``: host-level figures (HardwareCorrupted, per-node memory_failure counters, ...).
- ``guard``: does the running QEMU binary refuse migration of poisoned VMs.
- ``verdict``: the per-VM verdict rules.
- ``inventory``: puts it all together into the ``poison_info`` result.
"""
