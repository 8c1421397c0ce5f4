#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) kvm_ras.poison_guard contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: cold_migrate
short_description: Move one VM to another hypervisor by shutting it down and starting it there
version_added: 0.1.0
description:
  - Runs on the B(source) hypervisor. Shuts the VM down, defines it on the hypervisor behind
    O(dest_uri), starts it there and removes its definition from the source.
  - Nothing reads the VM's memory (no migration stream, no save file), so this is the way to
    move a VM with hardware-poisoned memory that must not be live-migrated. The guest is shut
    down and boots again on the destination, so its running state is lost.
  - The destination must see the VM's disks at the same paths (shared storage, or copies the
    operator made). C(evacuate_host.yml) checks that before it picks a destination.
  - If the VM cannot be started on the destination, its definition there is removed again.
    The VM is started again on the source only when a fresh connection to the destination
    confirms that the destination does not run it. When the destination cannot confirm that
    (its libvirt does not answer, or it runs the VM after all), the VM is left shut off on the
    source, so it never runs twice on the same disks, and the module fails with
    RV(needs_operator=true) and what to check.
  - The XML of a transient VM is kept in O(restore_dir) on the source while the VM is shut off,
    so a VM that runs nowhere (the module's process killed, the host rebooted) can be started
    again from it.
  - Holds the VM's operation lock (under C(/run/kvm_ras/vm-locks)) while it works, so a resumed
    evacuation waits for it and another run cannot act on the same VM at the same time.
  - Idempotent. A VM that runs on the destination and not on the source is left alone.
author:
  - kvm_ras maintainers (@kvm-ras)
extends_documentation_fragment:
  - kvm_ras.poison_guard.attributes
  - kvm_ras.poison_guard.attributes.ACTING_MODULE
  - kvm_ras.poison_guard.libvirt.SOURCE
options:
  name:
    description:
      - Name of the libvirt domain.
    type: str
    required: true
  dest_uri:
    description:
      - libvirt URI of the destination hypervisor, for example V(qemu+tls://hv2/system) (see the role C(kvm_ras.poison_guard.migration_transport)).
    type: str
    required: true
  shutdown_timeout:
    description:
      - Seconds to wait for the guest to shut down after the ACPI shutdown request.
    type: int
    default: 120
  force_off:
    description:
      - Power the VM off when it has not shut down within O(shutdown_timeout). Without it the
        module fails with RV(failure.class=shutdown) and the VM stays on the source; the guest
        may still finish the shutdown it was asked for later (C(evacuate_host.yml) starts any
        VM it finds running nowhere again at its end).
      - A forced power-off loses whatever the guest had not written to disk.
    type: bool
    default: false
  undefine_source:
    description:
      - Remove the VM's definition from the source once it runs on the destination.
    type: bool
    default: true
  wait_timeout:
    description:
      - Seconds to wait for the VM to run after starting it.
      - The alias O(wait) is deprecated and will be removed in version 0.2.0 of the collection.
    type: int
    default: 60
    aliases: [wait]
  restore_dir:
    description:
      - Directory on the source where the XML of a transient VM is kept while it is shut off
        (C(<uuid>.xml), mode 0600). Removed once the VM runs again.
    type: path
    default: /var/lib/kvm_ras/restore
notes:
  - A guest that ignores ACPI shutdown requests (no ACPI support, hung) needs O(force_off=true).
"""

EXAMPLES = r"""
- name: Move a VM with poisoned memory to hv2 without reading its RAM
  kvm_ras.poison_guard.cold_migrate:
    name: db01
    dest_uri: qemu+tls://hv2/system
    shutdown_timeout: 300
"""

RETURN = r"""
name:
  description: The VM.
  returned: always
  type: str
  sample: db01
running_on:
  description: V(source), V(destination), V(none) or V(unknown) after the module.
  returned: always
  type: str
  sample: destination
migrated:
  description: True when this run moved the VM.
  returned: always
  type: bool
  sample: true
forced_off:
  description: True when the VM had to be powered off.
  returned: always
  type: bool
  sample: false
restored:
  description: True when the move failed and the VM was started again on the source.
  returned: always
  type: bool
  sample: false
needs_operator:
  description:
    - True when the move failed and the destination could not confirm that it does not run the
      VM, so the VM was left shut off on the source. The failure message says what to check and how
      to start it.
  returned: always
  type: bool
  sample: false
destination_check:
  description:
    - What a fresh connection to the destination found after a failed start there,
      C({answered, running, defined, error}); null when no check was needed.
  returned: always
  type: dict
  sample: {answered: true, running: false, defined: false, error: null}
restore_xml:
  description: Where the XML of the transient VM is kept, when the module left it shut off.
  returned: always
  type: str
  sample: /var/lib/kvm_ras/restore/3f0c1a8e-2b1e-4c55-9d1e-0a1b2c3d4e5f.xml
duration_seconds:
  description: Seconds from the shutdown request until the VM ran on the destination.
  returned: always
  type: float
  sample: 14.2
failure:
  description: Why it failed; null on success.
  returned: always
  type: dict
  contains:
    class:
      description: V(shutdown), V(destination), V(busy) (another operation holds the VM) or V(other).
      type: str
    message:
      description: The error message, unchanged.
      type: str
  sample: {class: destination, message: "Cannot access storage file '/var/lib/libvirt/images/db01.qcow2'"}
"""

import time

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.kvm_ras.poison_guard.plugins.module_utils import host_markers, journal
from ansible_collections.kvm_ras.poison_guard.plugins.module_utils import libvirt as libvirt_adapter

libvirt = libvirt_adapter.binding()  # None without python3-libvirt
LIBVIRT_IMPORT_ERROR = libvirt_adapter.import_error()

POLL = 0.5


def lookup(conn, name):
    """The domain of that name, None when the host does not have it (other errors raise)."""
    return libvirt_adapter.find_domain(libvirt, conn, name)


def wait_for(predicate, seconds):
    return libvirt_adapter.wait_until(predicate, seconds, POLL)


def forget(path):
    """Remove a kept XML file once the VM runs again (a failure to remove it is harmless)."""
    if path:
        try:
            host_markers.remove(path)
        except host_markers.MarkerError:
            pass


def is_gone_or_off(conn, name):
    dom = lookup(conn, name)
    return dom is None or not dom.isActive()


def destination_check(dest_uri, name, uuid):
    """Ask the destination afresh (a new connection) whether it runs the VM.

    Returns {answered, running, defined, error}. Only ``answered`` and not ``running`` proves
    that the destination does not run it.
    """
    check = {"answered": False, "running": None, "defined": None, "error": None}
    conn, error = libvirt_adapter.connect(libvirt, dest_uri)
    if conn is None:
        check["error"] = "a new connection to %s failed: %s" % (dest_uri, error)
        return check
    try:
        dom = libvirt_adapter.find_domain(libvirt, conn, name, uuid)
        check["running"] = bool(dom is not None and dom.isActive())
        check["defined"] = bool(dom is not None and dom.isPersistent())
        check["answered"] = True
    except libvirt.libvirtError as exc:
        check["error"] = "%s did not answer whether it runs the VM: %s" % (dest_uri, exc)
    finally:
        libvirt_adapter.close_quietly(libvirt, conn)
    return check


def main():
    module = AnsibleModule(
        argument_spec=dict(
            name=dict(type="str", required=True),
            dest_uri=dict(type="str", required=True),
            uri=libvirt_adapter.uri_argument("source_uri"),
            shutdown_timeout=dict(type="int", default=120),
            force_off=dict(type="bool", default=False),
            undefine_source=dict(type="bool", default=True),
            **journal.power_off_arguments()
        ),
        supports_check_mode=True,
    )
    if libvirt is None:
        module.fail_json(msg=missing_required_lib(libvirt_adapter.LIBRARY), exception=LIBVIRT_IMPORT_ERROR)
    params = module.params
    name = params["name"]
    result = {"name": name, "changed": False, "migrated": False, "forced_off": False, "restored": False,
              "needs_operator": False, "destination_check": None, "restore_xml": None,
              "running_on": "unknown", "duration_seconds": None, "failure": None}
    op_lock = None

    def fail(klass, message, **extra):
        result.update(extra)
        result["failure"] = {"class": klass, "message": message}
        module.fail_json(msg=message, **result)

    src, error = libvirt_adapter.connect(libvirt, params["uri"])
    if src is None:
        fail("other", "source libvirt at %s does not answer: %s" % (params["uri"], error))
    dst, error = libvirt_adapter.connect(libvirt, params["dest_uri"])
    if dst is None:
        libvirt_adapter.close_quietly(libvirt, src)
        fail("destination", "destination libvirt at %s does not answer: %s" % (params["dest_uri"], error),
             running_on="source")
    started = time.time()
    try:
        sdom = lookup(src, name)
        ddom = lookup(dst, name)
        if ddom is not None and ddom.isActive():
            if sdom is not None and sdom.isActive():
                fail("other", "CRITICAL: %r runs on both the source and the destination" % name, running_on="both")
            result["running_on"] = "destination"
            module.exit_json(**result)
        if sdom is None:
            fail("other", "%r is neither on the source nor running on the destination" % name, running_on="none")
        persistent = bool(sdom.isPersistent())
        uuid = sdom.UUIDString()
        flags = libvirt.VIR_DOMAIN_XML_SECURE | libvirt.VIR_DOMAIN_XML_MIGRATABLE
        if persistent:
            flags |= libvirt.VIR_DOMAIN_XML_INACTIVE
        xml = sdom.XMLDesc(flags)
        result["changed"] = True
        if module.check_mode:
            result["running_on"] = "source" if sdom.isActive() else "none"
            module.exit_json(**result)

        try:
            op_lock, saved = journal.before_power_off(name, uuid, None if persistent else xml, params["restore_dir"],
                                                      "shutting it down")
        except journal.NotTouched as exc:
            fail("busy" if exc.busy else "other", str(exc), running_on="source" if sdom.isActive() else "none",
                 changed=False)

        if sdom.isActive():
            sdom.shutdown()
            if not wait_for(lambda: is_gone_or_off(src, name), params["shutdown_timeout"]):
                if not params["force_off"]:
                    # the guest may still finish the shutdown it was asked for: a transient VM's XML stays kept
                    result["restore_xml"] = saved
                    fail("shutdown", "%r did not shut down within %d s; it keeps running on the source "
                         "(set force_off to power it off)%s" % (
                             name, params["shutdown_timeout"],
                             "" if not saved else "; its XML is kept in %s in case the guest still shuts down" % saved),
                         running_on="source")
                sdom = lookup(src, name)
                if sdom is not None and sdom.isActive():
                    sdom.destroy()
                result["forced_off"] = True

        defined_here = False
        try:
            if persistent:
                ddom = dst.defineXML(xml)
                defined_here = True
                ddom.create()
            else:
                ddom = dst.createXML(xml, 0)
            if not wait_for(ddom.isActive, params["wait_timeout"]):
                raise libvirt.libvirtError("%r was started on the destination but does not run" % name)
        except libvirt.libvirtError as exc:
            message = "starting %r on the destination failed: %s" % (name, exc)
            try:
                stray = lookup(dst, name)
                if stray is not None:
                    if stray.isActive():
                        stray.destroy()
                    if defined_here and stray.isPersistent():
                        stray.undefine()
            except libvirt.libvirtError as exc2:
                message += "; removing it there again failed: %s" % exc2
            # Start it on the source only when the destination, asked afresh, does not run it.
            check = destination_check(params["dest_uri"], name, uuid)
            result["destination_check"] = check
            if not check["answered"] or check["running"]:
                result["needs_operator"] = True
                result["restore_xml"] = saved
                if check["answered"]:
                    why = "the destination runs it after all"
                    where = "destination"
                else:
                    why = "the destination could not confirm that it does not run it (%s)" % check["error"]
                    where = "unknown"
                fail("destination", "CRITICAL: %s; %s, so it was left shut off on the source to never run twice "
                     "on the same disks. The operator decides: check the destination (virsh -c %s domstate %s); "
                     "if it does not run there, start it on the source (virsh start %s%s), else remove its "
                     "definition on the source" % (
                         message, why, params["dest_uri"], name, name,
                         "" if persistent else "; transient: virsh create %s" % saved),
                     running_on=where)
            try:
                again = lookup(src, name)
                if again is not None:
                    again.create()
                else:
                    src.createXML(xml, 0)
                result["restored"] = True
                where = "source"
                forget(saved)
            except libvirt.libvirtError as exc2:
                where = "none"
                result["restore_xml"] = saved
                message += "; CRITICAL: starting it again on the source failed too: %s" % exc2
                if saved:
                    message += " (its XML is kept in %s)" % saved
            fail("destination", message, running_on=where)
        forget(saved)

        result["duration_seconds"] = round(time.time() - started, 3)
        result["migrated"] = True
        result["running_on"] = "destination"
        if params["undefine_source"] and persistent:
            leftover = lookup(src, name)
            if leftover is not None:
                libvirt_adapter.undefine(libvirt, leftover)
        module.exit_json(**result)
    except libvirt.libvirtError as exc:
        fail("other", "libvirt failed while cold-migrating %r: %s" % (name, exc))
    finally:
        if op_lock is not None:
            op_lock.release()
        for conn in (src, dst):
            libvirt_adapter.close_quietly(libvirt, conn)


if __name__ == "__main__":
    main()
