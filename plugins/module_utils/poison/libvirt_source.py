# -*- coding: utf-8 -*-
# Copyright (c) kvm_ras.poison_guard contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Running libvirt domains (optional: ``libvirt`` from python3-libvirt is imported lazily).

A read-only connection is enough: name, UUID, domain type, memory, vCPUs and the
``<memoryBacking>`` of the live XML. The QEMU PID comes from libvirt's pid file
(``/run/libvirt/qemu/<name>.pid``) or status XML (``<domstatus ... pid='N'>``), read by the
libvirt adapter (``module_utils/libvirt.py``), and is cross-checked against procfs by the caller.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from ansible_collections.kvm_ras.poison_guard.plugins.module_utils import libvirt as libvirt_adapter
from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.libvirt import qemu_pid as pid_from_run_dir

_UNIT_KIB = {"b": 1.0 / 1024, "bytes": 1.0 / 1024, "k": 1, "kib": 1, "kb": 1000.0 / 1024,
             "m": 1024, "mib": 1024, "mb": 1000.0 ** 2 / 1024, "g": 1024 ** 2,
             "gib": 1024 ** 2, "gb": 1000.0 ** 3 / 1024, "t": 1024 ** 3, "tib": 1024 ** 3}


def parse_domain_xml(xml_text):
    """The facts poison_info needs from a domain XML."""
    root = ET.fromstring(xml_text)
    info = {"type": root.get("type"), "name": root.findtext("name"),
            "uuid": (root.findtext("uuid") or "").strip().lower() or None,
            "memory_mib": None, "vcpus": None, "memory_backing": {}}
    memory = root.find("currentMemory")
    if memory is None:
        memory = root.find("memory")
    if memory is not None and (memory.text or "").strip():
        unit = (memory.get("unit") or "KiB").lower()
        info["memory_mib"] = int(float(memory.text) * _UNIT_KIB.get(unit, 1) // 1024)
    vcpu = root.find("vcpu")
    if vcpu is not None:
        try:
            info["vcpus"] = int(vcpu.get("current") or vcpu.text)
        except (TypeError, ValueError):
            info["vcpus"] = None
    backing = root.find("memoryBacking")
    if backing is not None:
        mb = info["memory_backing"]
        hugepages = backing.find("hugepages")
        if hugepages is not None:
            sizes = ["%s%s" % (p.get("size"), p.get("unit", "KiB")) for p in hugepages.findall("page")]
            mb["hugepages"] = sizes or True
        source = backing.find("source")
        if source is not None:
            mb["source"] = source.get("type")
        access = backing.find("access")
        if access is not None:
            mb["access"] = access.get("mode")
        for flag in ("nosharepages", "locked", "discard"):
            if backing.find(flag) is not None:
                mb[flag] = True
        allocation = backing.find("allocation")
        if allocation is not None:
            mb["allocation"] = allocation.get("mode")
    return info


def discover(uri, run_dir):
    """Running domains of ``uri``: ``(list of dicts, problem or None)``.

    Each dict: ``name``, ``uuid``, ``id``, ``type``, ``memory_mib``, ``vcpus``,
    ``memory_backing``, ``pid`` (from ``run_dir``, may be None).
    """
    libvirt, _error = libvirt_adapter.load()
    if libvirt is None:
        return [], "python3-libvirt is not installed: libvirt domains were not listed"

    def _quiet(_ctx, _err):
        return None

    try:
        libvirt.registerErrorHandler(_quiet, None)
    except Exception:  # pylint: disable=broad-except
        pass
    try:
        conn = libvirt.openReadOnly(uri)
    except libvirt.libvirtError as exc:
        return [], "cannot connect to libvirt at %s: %s" % (uri, exc)
    if conn is None:
        return [], "cannot connect to libvirt at %s" % uri
    domains = []
    try:
        for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
            try:
                info = parse_domain_xml(dom.XMLDesc(0))
            except (libvirt.libvirtError, ET.ParseError) as exc:
                info = {"name": dom.name(), "uuid": dom.UUIDString().lower(), "type": None,
                        "memory_mib": None, "vcpus": None, "memory_backing": {},
                        "problem": "domain XML unreadable: %s" % exc}
            info["id"] = dom.ID()
            info["pid"] = pid_from_run_dir(run_dir, info["name"]) if run_dir else None
            domains.append(info)
    except libvirt.libvirtError as exc:
        return domains, "listing libvirt domains at %s failed: %s" % (uri, exc)
    finally:
        try:
            conn.close()
        except libvirt.libvirtError:
            pass
    return domains, None
