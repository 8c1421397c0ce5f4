# -*- coding: utf-8 -*-
# Copyright (c) kvm_ras.poison_guard contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""QEMU's own poison list (QMP ``x-query-hwpoison`` of the x-poison-holes series) and the
holes QEMU does not know.

A QEMU with the ``x-poison-holes`` capability sends every page of its poison list as a hole
and reads every other page. A hole that the kernel shows (``poison_info``'s pagemap scan) but
that is missing from QEMU's list would be read by the migration: QEMU dies with SIGBUS.
``unknown_to_qemu`` names those pages; the gate lets a poisoned VM migrate with holes only when
that list is empty.

``x-query-hwpoison`` answers one entry per poisoned page, for example
``{"block": "pc.ram", "offset": 524288, "page-size": 4096, "gpa": 524288, "hva": 139706426195968}``
(``gpa`` absent when the page is not mapped into the guest); ``page-size`` is the RAM block's
host page size: the whole host page is unreadable.
"""

from __future__ import annotations

from ansible_collections.kvm_ras.poison_guard.plugins.module_utils import libvirt as libvirt_adapter

QUERY = "x-query-hwpoison"
_INT_KEYS = ("offset", "page-size", "hva")


def parse_entries(value):
    """QEMU's reply (the ``return`` member) as a list of entries; ValueError for another shape."""
    if not isinstance(value, list):
        raise ValueError("%s returned %r, not a list" % (QUERY, value))
    entries = []
    for item in value:
        if not isinstance(item, dict) or not isinstance(item.get("block"), str):
            raise ValueError("%s returned an entry without a block name: %r" % (QUERY, item))
        for key in _INT_KEYS:
            if not isinstance(item.get(key), int) or isinstance(item.get(key), bool) or item[key] < 0:
                raise ValueError("%s returned an entry without a valid %s: %r" % (QUERY, key, item))
        if item["page-size"] == 0:
            raise ValueError("%s returned an entry with page-size 0: %r" % (QUERY, item))
        entry = {"block": item["block"], "offset": item["offset"], "page-size": item["page-size"],
                 "hva": item["hva"]}
        if isinstance(item.get("gpa"), int) and not isinstance(item.get("gpa"), bool):
            entry["gpa"] = item["gpa"]
        entries.append(entry)
    return entries


def unknown_to_qemu(holes, entries):
    """The HVAs (ints) of ``holes`` (poison_info's, ``hva`` int and optional ``size``) that no
    entry of QEMU's list covers, in order. A hole is covered when its first byte lies in an
    entry's host page ``[hva, hva + page-size)``; a hole larger than that entry (a huge page
    seen through PAGEMAP_SCAN) must be covered byte for byte by the entries."""
    missing = []
    for hole in holes:
        start = hole["hva"]
        end = start + (hole.get("size") or 1)
        cursor = start
        progressed = True
        while cursor < end and progressed:
            progressed = False
            for entry in entries:
                if entry["hva"] <= cursor < entry["hva"] + entry["page-size"]:
                    cursor = entry["hva"] + entry["page-size"]
                    progressed = True
                    break
        if cursor < end and start not in missing:
            missing.append(start)
    return missing


def read(uri, domains):
    """QEMU's poison list of each running libvirt domain in ``domains`` (``(name, uuid)`` pairs).

    Returns ``{(name, uuid): (entries or None, problem or None)}``. One read-write connection to
    ``uri`` (libvirt runs monitor commands on no other); the command only reads. Never raises:
    a QEMU without the command (``CommandNotFound``), a missing ``libvirt_qemu`` or a libvirt
    error gives None with the reason.
    """
    results = {}
    if not domains:
        return results
    binding, _error = libvirt_adapter.load()
    qemu_binding, _qemu_error = libvirt_adapter.load_qemu()
    if binding is None or qemu_binding is None:
        problem = ("python3-libvirt (libvirt_qemu) is not installed, so QEMU's poison list (%s) "
                   "could not be read" % QUERY)
        return {key: (None, problem) for key in domains}
    conn, error = libvirt_adapter.connect(binding, uri)
    if conn is None:
        problem = ("cannot open a read-write libvirt connection to %s to ask QEMU for its poison "
                   "list (%s): %s; run poison_info as root (become: true)" % (uri, QUERY, error))
        return {key: (None, problem) for key in domains}
    try:
        for name, uuid in domains:
            results[(name, uuid)] = _read_one(binding, qemu_binding, conn, name, uuid)
    finally:
        libvirt_adapter.close_quietly(binding, conn)
    return results


def _read_one(binding, qemu_binding, conn, name, uuid):
    try:
        dom = libvirt_adapter.find_domain(binding, conn, name=name, uuid=uuid)
        if dom is None:
            return None, "libvirt no longer has domain %r, so its QEMU poison list was not read" % name
        value = libvirt_adapter.qmp(qemu_binding, dom, QUERY)
    except libvirt_adapter.QmpError as exc:
        if exc.klass == "CommandNotFound":
            return None, ("the running QEMU has no %s (%s): it lacks the x-poison-holes series "
                          "of the patched_qemu role, so its poison list cannot be read" % (QUERY, exc))
        return None, "QEMU answered %s with an error: %s" % (QUERY, exc)
    except binding.libvirtError as exc:
        text = str(exc)
        if "CommandNotFound" in text or "has not been found" in text:
            return None, ("the running QEMU has no %s (%s): it lacks the x-poison-holes series "
                          "of the patched_qemu role, so its poison list cannot be read" % (QUERY, text))
        return None, "libvirt could not run %s in domain %r: %s" % (QUERY, name, text)
    try:
        return parse_entries(value), None
    except ValueError as exc:
        return None, str(exc)
