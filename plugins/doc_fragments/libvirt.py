# -*- coding: utf-8 -*-
# Copyright (c) kvm_ras.poison_guard contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The libvirt connection option of the collection's modules: one name, O(uri), everywhere.

The argument spec that goes with it is ``module_utils/libvirt.py``'s ``uri_argument()``.
"""

from __future__ import annotations


class ModuleDocFragment:
    """Use ``kvm_ras.poison_guard.libvirt`` (the hypervisor the module runs on) or
    ``kvm_ras.poison_guard.libvirt.SOURCE`` (the source hypervisor of a migration)."""

    # Modules that act on the hypervisor they run on (host_capacity_info, guest_power).
    DOCUMENTATION = r"""
requirements:
  - libvirt-python on the hypervisor the module runs on (Debian/Ubuntu package C(python3-libvirt)).
options:
  uri:
    description:
      - libvirt connection URI of the hypervisor, as seen from the host the module runs on.
      - V(qemu:///system) needs root on the host (run the task with C(become)).
      - The alias O(libvirt_uri) is deprecated and will be removed in version 0.2.0 of the
        collection.
    type: str
    default: qemu:///system
    aliases: [libvirt_uri]
"""

    # Modules that move a VM away from the host they run on (live_migrate, cold_migrate,
    # evacuation_journal); the destination has an option of its own (dest_uri).
    SOURCE = r"""
requirements:
  - libvirt-python on the source hypervisor, where the module runs (Debian/Ubuntu package C(python3-libvirt)).
options:
  uri:
    description:
      - libvirt connection URI of the source hypervisor (the one the VM runs on now), as seen
        from the host the module runs on.
      - V(qemu:///system) needs root on the host (run the task with C(become)).
      - The alias O(source_uri) is deprecated and will be removed in version 0.2.0 of the
        collection.
    type: str
    default: qemu:///system
    aliases: [source_uri]
"""
