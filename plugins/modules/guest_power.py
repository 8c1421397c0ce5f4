#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) kvm_ras.poison_guard contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: guest_power
short_description: Start, reset or restart one libvirt VM without reading its memory
version_added: 0.1.0
description:
  - V(running) starts a defined VM that is not running (nothing to do when it runs).
  - V(reset) resets a running VM in place (C(virsh reset)). QEMU keeps running. On KVM,
    QEMU empties its hardware-poison list and maps fresh pages over the poisoned ones. Under
    TCG, and for guest RAM backed by shared memory or huge pages on QEMU older than 10.0, the
    poisoned page can survive a reset; check the VM again before migrating it.
  - V(restarted) powers the VM off and starts it again, so a new QEMU process holds it, with fresh guest
    memory and an empty poison list, whatever the QEMU version or memory backing. For the
    guest it is a hard reset, like V(reset).
  - None of these reads guest RAM, so they are safe for a VM with poisoned memory.
author:
  - kvm_ras maintainers (@kvm-ras)
extends_documentation_fragment:
  - kvm_ras.poison_guard.attributes
  - kvm_ras.poison_guard.attributes.ACTING_MODULE
  - kvm_ras.poison_guard.libvirt
options:
  name:
    description:
      - Name of the libvirt domain.
    type: str
    required: true
  state:
    description:
      - V(running), V(reset) or V(restarted).
    type: str
    choices: [running, reset, restarted]
    default: running
  wait_timeout:
    description:
      - Seconds to wait for the VM to run again (V(restarted), V(running)).
      - The alias O(wait) is deprecated and will be removed in version 0.2.0 of the collection.
    type: int
    default: 60
    aliases: [wait]
  restore_dir:
    description:
      - Directory on the host where V(restarted) keeps the XML of a transient VM while it is
        powered off (C(<uuid>.xml), mode 0600, written atomically before the power-off and
        removed once the VM runs again). When the VM does not start again, the file stays
        and the failure message names it (C(virsh create <file>) starts the VM from it).
    type: path
    default: /var/lib/kvm_ras/restore
notes:
  - V(restarted) first asks QEMU to exit (SIGTERM, so it can flush disk caches), then forces
    the power-off when that does not work. A transient VM is started again from its XML, which
    is kept on the host (O(restore_dir)) until it runs again.
  - V(restarted) holds the VM's operation lock (under C(/run/kvm_ras/vm-locks)) while it works;
    a second operation on the same VM fails instead of racing it.
"""

EXAMPLES = r"""
- name: Restart a poisoned VM so that a fresh QEMU holds its memory
  kvm_ras.poison_guard.guest_power:
    name: db01
    state: restarted

- name: Start a VM again that an interrupted run left shut off
  kvm_ras.poison_guard.guest_power:
    name: db01
    state: running
"""

RETURN = r"""
name:
  description: The VM.
  returned: always
  type: str
  sample: db01
state:
  description: The state asked for.
  returned: always
  type: str
  sample: restarted
mode:
  description: V(reset) or V(restart) for the reboot states (what a poison re-check needs to know).
  returned: always
  type: str
  sample: restart
running:
  description: True when the VM runs at the end.
  returned: always
  type: bool
  sample: true
pid_before:
  description: PID of the VM's QEMU before, from libvirt's PID file (null when unknown or not running).
  returned: always
  type: int
  sample: 4242
pid_after:
  description: PID of the VM's QEMU afterwards.
  returned: always
  type: int
  sample: 5120
restore_xml:
  description:
    - Where the XML of the transient VM is kept, when V(restarted) powered it off and it did not
      run again (null otherwise).
  returned: always
  type: str
  sample: /var/lib/kvm_ras/restore/3f0c1a8e-2b1e-4c55-9d1e-0a1b2c3d4e5f.xml
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.kvm_ras.poison_guard.plugins.module_utils import host_markers, journal
from ansible_collections.kvm_ras.poison_guard.plugins.module_utils import libvirt as libvirt_adapter

libvirt = libvirt_adapter.binding()  # None without python3-libvirt
LIBVIRT_IMPORT_ERROR = libvirt_adapter.import_error()

PID_DIR = libvirt_adapter.QEMU_RUN_DIR
POLL = 0.2


def qemu_pid(name):
    return libvirt_adapter.qemu_pid(PID_DIR, name)


def wait_running(dom, seconds):
    return libvirt_adapter.wait_until(dom.isActive, seconds, POLL)


def power_off(dom):
    """Ask QEMU to exit (SIGTERM), then force it; never reads guest RAM."""
    try:
        dom.destroyFlags(libvirt.VIR_DOMAIN_DESTROY_GRACEFUL)
    except libvirt.libvirtError:
        if dom.isActive():
            dom.destroy()


def untouched(result):
    """The result of a restart refused before anything changed: the VM still runs."""
    result.update({"changed": False, "running": True})
    return result


def restore_hint(saved, uri):
    if not saved:
        return ""
    return ("; it is transient and its XML is kept in %s on this host: start it with "
            "virsh -c %s create %s" % (saved, uri, saved))


def main():
    module = AnsibleModule(
        argument_spec=dict(
            name=dict(type="str", required=True),
            state=dict(type="str", choices=["running", "reset", "restarted"], default="running"),
            uri=libvirt_adapter.uri_argument("libvirt_uri"),
            **journal.power_off_arguments()
        ),
        supports_check_mode=True,
    )
    if libvirt is None:
        module.fail_json(msg=missing_required_lib(libvirt_adapter.LIBRARY), exception=LIBVIRT_IMPORT_ERROR)
    params = module.params
    name, state = params["name"], params["state"]
    mode = {"reset": "reset", "restarted": "restart"}.get(state)
    result = {"name": name, "state": state, "mode": mode, "changed": False, "pid_before": qemu_pid(name),
              "pid_after": None, "running": False, "restore_xml": None}
    op_lock = None
    conn, error = libvirt_adapter.connect(libvirt, params["uri"])
    if conn is None:
        module.fail_json(msg="libvirt at %s does not answer: %s" % (params["uri"], error), **result)
    try:
        try:
            dom = conn.lookupByName(name)
        except libvirt.libvirtError as exc:
            module.fail_json(msg="no VM %r on this host: %s" % (name, exc), **result)
        active = bool(dom.isActive())
        if state == "running":
            if active:
                result.update(running=True, pid_after=result["pid_before"])
                module.exit_json(**result)
            result["changed"] = True
            if not module.check_mode:
                dom.create()
                result["running"] = wait_running(dom, params["wait_timeout"])
                result["pid_after"] = qemu_pid(name)
                if not result["running"]:
                    module.fail_json(msg="%r was started but does not run after %d s" % (name, params["wait_timeout"]), **result)
            module.exit_json(**result)
        if not active:
            module.fail_json(msg="%r does not run, so it cannot be %s" % (name, "reset" if mode == "reset" else "restarted"),
                             **result)
        result["changed"] = True
        if module.check_mode:
            result["running"] = True
            module.exit_json(**result)
        if mode == "reset":
            dom.reset(0)
            result.update(running=bool(dom.isActive()), pid_after=qemu_pid(name))
            module.exit_json(**result)
        persistent = bool(dom.isPersistent())
        uuid = dom.UUIDString()
        # A transient VM that is powered off exists nowhere: its XML is kept on the host first.
        xml = None if persistent else dom.XMLDesc(libvirt.VIR_DOMAIN_XML_SECURE)
        try:
            op_lock, saved = journal.before_power_off(name, uuid, xml, params["restore_dir"], "powering it off for the restart")
        except journal.NotTouched as exc:
            module.fail_json(msg=str(exc), **untouched(result))
        power_off(dom)
        try:
            if persistent:
                dom.create()
            else:
                dom = conn.createXML(xml, 0)
        except libvirt.libvirtError as exc:
            result["restore_xml"] = saved
            module.fail_json(msg="CRITICAL: %r was powered off for the restart and did not start again: %s%s"
                             % (name, exc, restore_hint(saved, params["uri"])), **result)
        result["running"] = wait_running(dom, params["wait_timeout"])
        result["pid_after"] = qemu_pid(name)
        if not result["running"]:
            result["restore_xml"] = saved
            module.fail_json(msg="CRITICAL: %r was restarted but does not run after %d s%s"
                             % (name, params["wait_timeout"], restore_hint(saved, params["uri"])), **result)
        if saved:
            try:
                host_markers.remove(saved)
            except host_markers.MarkerError as exc:
                module.warn("%r runs again, but its kept XML could not be removed: %s" % (name, exc))
        module.exit_json(**result)
    except libvirt.libvirtError as exc:
        module.fail_json(msg="libvirt failed on %r: %s" % (name, exc), **result)
    finally:
        if op_lock is not None:
            op_lock.release()
        libvirt_adapter.close_quietly(libvirt, conn)


if __name__ == "__main__":
    main()
