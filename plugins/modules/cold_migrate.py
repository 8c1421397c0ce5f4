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
  - If the VM cannot be started on the destination, its definition there is removed again and
    the VM is started again on the source.
  - Idempotent. A VM that runs on the destination and not on the source is left alone.
author:
  - kvm_ras maintainers (@kvm-ras)
requirements:
  - libvirt-python on the source hypervisor (Debian/Ubuntu package C(python3-libvirt)).
extends_documentation_fragment:
  - kvm_ras.poison_guard.attributes
  - kvm_ras.poison_guard.attributes.ACTING_MODULE
options:
  name:
    description:
      - Name of the libvirt domain.
    type: str
    required: true
  dest_uri:
    description:
      - libvirt URI of the destination hypervisor, for example V(qemu+tcp://hv2/system).
    type: str
    required: true
  source_uri:
    description:
      - libvirt URI of the source hypervisor.
    type: str
    default: qemu:///system
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
  wait:
    description:
      - Seconds to wait for the VM to run after starting it.
    type: int
    default: 60
notes:
  - A guest that ignores ACPI shutdown requests (no ACPI support, hung) needs O(force_off=true).
"""

EXAMPLES = r"""
- name: Move a VM with poisoned memory to hv2 without reading its RAM
  kvm_ras.poison_guard.cold_migrate:
    name: db01
    dest_uri: qemu+tcp://hv2/system
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
      description: V(shutdown), V(destination) or V(other).
      type: str
    message:
      description: The error message, unchanged.
      type: str
  sample: {class: destination, message: "Cannot access storage file '/var/lib/libvirt/images/db01.qcow2'"}
"""

import time
import traceback

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.evacuation import DEFAULT_LIBVIRT_URI

LIBVIRT_IMPORT_ERROR = None
try:
    import libvirt
except ImportError:
    libvirt = None
    LIBVIRT_IMPORT_ERROR = traceback.format_exc()


def lookup(conn, name):
    try:
        return conn.lookupByName(name)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return None
        raise


def wait_for(predicate, seconds):
    deadline = time.time() + seconds
    while True:
        if predicate():
            return True
        if time.time() >= deadline:
            return False
        time.sleep(0.5)


def is_gone_or_off(conn, name):
    dom = lookup(conn, name)
    return dom is None or not dom.isActive()


def main():
    module = AnsibleModule(
        argument_spec=dict(
            name=dict(type="str", required=True),
            dest_uri=dict(type="str", required=True),
            source_uri=dict(type="str", default=DEFAULT_LIBVIRT_URI),
            shutdown_timeout=dict(type="int", default=120),
            force_off=dict(type="bool", default=False),
            undefine_source=dict(type="bool", default=True),
            wait=dict(type="int", default=60),
        ),
        supports_check_mode=True,
    )
    if libvirt is None:
        module.fail_json(msg=missing_required_lib("libvirt-python (Debian/Ubuntu: python3-libvirt)"),
                         exception=LIBVIRT_IMPORT_ERROR)
    p = module.params
    name = p["name"]
    result = {"name": name, "changed": False, "migrated": False, "forced_off": False, "restored": False,
              "running_on": "unknown", "duration_seconds": None, "failure": None}

    def fail(klass, message, **extra):
        result.update(extra)
        result["failure"] = {"class": klass, "message": message}
        module.fail_json(msg=message, **result)

    try:
        src = libvirt.open(p["source_uri"])
    except libvirt.libvirtError as exc:
        fail("other", "source libvirt at %s does not answer: %s" % (p["source_uri"], exc))
    try:
        dst = libvirt.open(p["dest_uri"])
    except libvirt.libvirtError as exc:
        fail("destination", "destination libvirt at %s does not answer: %s" % (p["dest_uri"], exc),
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
        flags = libvirt.VIR_DOMAIN_XML_SECURE | libvirt.VIR_DOMAIN_XML_MIGRATABLE
        if persistent:
            flags |= libvirt.VIR_DOMAIN_XML_INACTIVE
        xml = sdom.XMLDesc(flags)
        result["changed"] = True
        if module.check_mode:
            result["running_on"] = "source" if sdom.isActive() else "none"
            module.exit_json(**result)

        if sdom.isActive():
            sdom.shutdown()
            if not wait_for(lambda: is_gone_or_off(src, name), p["shutdown_timeout"]):
                if not p["force_off"]:
                    fail("shutdown", "%r did not shut down within %d s; it keeps running on the source "
                         "(set force_off to power it off)" % (name, p["shutdown_timeout"]), running_on="source")
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
            if not wait_for(ddom.isActive, p["wait"]):
                raise libvirt.libvirtError("%r was started on the destination but does not run" % name)
        except libvirt.libvirtError as exc:
            message = str(exc)
            try:
                if defined_here:
                    stray = lookup(dst, name)
                    if stray is not None:
                        if stray.isActive():
                            stray.destroy()
                        stray.undefine()
            except libvirt.libvirtError:
                pass
            try:
                again = lookup(src, name)
                if again is not None:
                    again.create()
                else:
                    src.createXML(xml, 0)
                result["restored"] = True
                where = "source"
            except libvirt.libvirtError as exc2:
                where = "none"
                message += "; CRITICAL: starting it again on the source failed too: %s" % exc2
            fail("destination", "starting %r on the destination failed: %s" % (name, message), running_on=where)

        result["duration_seconds"] = round(time.time() - started, 3)
        result["migrated"] = True
        result["running_on"] = "destination"
        if p["undefine_source"] and persistent:
            leftover = lookup(src, name)
            if leftover is not None:
                try:
                    leftover.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_KEEP_NVRAM)
                except libvirt.libvirtError:
                    leftover.undefine()
        module.exit_json(**result)
    except libvirt.libvirtError as exc:
        fail("other", "libvirt failed while cold-migrating %r: %s" % (name, exc))
    finally:
        for conn in (src, dst):
            try:
                conn.close()
            except libvirt.libvirtError:
                pass


if __name__ == "__main__":
    main()
