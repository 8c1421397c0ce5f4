#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) kvm_ras.poison_guard contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: evacuation_journal
short_description: Journal the VM operations of an evacuation on the source, and finish those a dead run left
version_added: 0.1.0
description:
  - Runs on the B(source) hypervisor of an evacuation.
  - V(begin) writes the journal entry of one VM operation (reboot, live or cold migration)
    before it starts. V(end) removes it when the operation has ended, whatever its outcome.
    Each entry is a small JSON file in O(journal_dir), written atomically, mode 0600.
  - An evacuation that dies (controller killed, Ctrl-C, source unreachable) leaves the entries
    of the operations it had in flight. V(resume) reads them, first thing in the next run, and
    finishes each one. It waits until no process of the dead run still works on the VM (its
    operation lock) and no libvirt job (the dead run's migration) still runs on it. Then it
    finds where the VM runs, on the source, on the entry's target (a fresh libvirt connection
    to O(dest_uri) as recorded), or nowhere. A VM that runs exactly once is left running; its
    source definition is removed when it runs persistently on the target. A VM that runs
    nowhere is started again exactly once. That is on the source when the source still
    defines it (the move is undone), else on the target that defines it (the move is
    completed), else from the XML a restart or cold migration kept for a transient VM.
  - An entry that cannot be finished safely stays in the journal and V(resume) fails,
    naming the VM and what to do. This happens when the VM runs on two hosts, or runs nowhere
    on the source while its target cannot be asked, or when a job of the dead run does not end
    within O(wait_timeout). Nothing is ever started a second time.
  - Only V(resume) connects to libvirt, through O(uri) (the source hypervisor itself).
author:
  - kvm_ras maintainers (@kvm-ras)
extends_documentation_fragment:
  - kvm_ras.poison_guard.attributes
  - kvm_ras.poison_guard.attributes.ACTING_MODULE
  - kvm_ras.poison_guard.libvirt.SOURCE
options:
  state:
    description:
      - V(begin), V(end) or V(resume).
    type: str
    choices: [begin, end, resume]
    required: true
  name:
    description:
      - The VM (libvirt domain name). Required for V(begin) and V(end).
    type: str
  uuid:
    description:
      - The VM's UUID (the entry's key when given; otherwise a digest of the name).
    type: str
  operation:
    description:
      - What the run does with the VM, for V(begin).
    type: str
    choices: [live_migrate, reboot_then_migrate, cold_migrate]
  run_id:
    description:
      - The evacuation's run id. Required for V(begin) and V(end). V(end) removes only an entry of this run.
    type: str
  target:
    description:
      - Inventory name of the target, for V(begin).
    type: str
  dest_uri:
    description:
      - libvirt URI of the target as the source reaches it, for V(begin). V(resume) asks the target through it.
    type: str
  persistent:
    description:
      - Whether the VM was persistent on the source, for V(begin).
    type: bool
  info:
    description:
      - Extra facts stored in the entry (controller, ...), for V(begin).
    type: dict
    default: {}
  journal_dir:
    description:
      - The journal directory on the source.
    type: path
    default: /var/lib/kvm_ras/journal
  restore_dir:
    description:
      - Where M(kvm_ras.poison_guard.guest_power) and M(kvm_ras.poison_guard.cold_migrate) keep the XML
        of a transient VM they powered off (V(resume) starts such a VM from it).
    type: path
    default: /var/lib/kvm_ras/restore
  wait_timeout:
    description:
      - Seconds V(resume) waits, per VM, for an operation of the dead run that is still going
        (a module process that outlived its controller, a migration job) to end.
      - The alias O(wait) is deprecated and will be removed in version 0.2.0 of the collection.
    type: int
    default: 600
    aliases: [wait]
notes:
  - C(evacuate_host.yml) runs V(resume) right after it takes the source's lock, and V(begin)
    and V(end) around each VM's operations.
"""

EXAMPLES = r"""
- name: Finish what an interrupted evacuation of this host left in flight
  kvm_ras.poison_guard.evacuation_journal:
    state: resume
  register: resumed

- name: Journal a live migration before it starts
  kvm_ras.poison_guard.evacuation_journal:
    state: begin
    name: web01
    uuid: 3f0c1a8e-2b1e-4c55-9d1e-0a1b2c3d4e5f
    operation: live_migrate
    run_id: "{{ run_id }}"
    target: hv2
    dest_uri: qemu+tls://hv2/system
    persistent: true
"""

RETURN = r"""
entry:
  description: The entry written (V(begin)) or removed (V(end)); null when there was none.
  returned: always
  type: dict
  sample: {name: web01, operation: live_migrate, run_id: hv1-20260301T025901Z-5f2a3c, target: hv2}
path:
  description: The entry's file (V(begin), V(end)).
  returned: when O(state) is V(begin) or V(end)
  type: str
  sample: /var/lib/kvm_ras/journal/3f0c1a8e-2b1e-4c55-9d1e-0a1b2c3d4e5f.json
resumed:
  description:
    - One item per entry an earlier run left (V(resume)). C(name), C(uuid), C(operation), C(run_id) (the
      interrupted run), C(target), C(found) (where the VM ran, V(source), V(target), V(both), V(nowhere),
      V(unknown)), C(action) (V(none), V(undefine_source), V(start_on_source), V(start_on_target),
      V(create_from_saved_xml), V(unresolved)), C(ok), C(message).
  returned: when O(state=resume)
  type: list
  elements: dict
  sample:
    - {name: web01, operation: live_migrate, run_id: hv1-20260301T025901Z-5f2a3c, target: hv2, found: target,
       action: none, ok: true, message: "runs on hv2: the interrupted operation had completed"}
unresolved:
  description: Names of the VMs whose entries stay in the journal for the operator (V(resume)).
  returned: when O(state=resume)
  type: list
  elements: str
  sample: []
"""

import time

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.kvm_ras.poison_guard.plugins.module_utils import host_markers, journal
from ansible_collections.kvm_ras.poison_guard.plugins.module_utils import libvirt as libvirt_adapter

libvirt = libvirt_adapter.binding()  # None without python3-libvirt
LIBVIRT_IMPORT_ERROR = libvirt_adapter.import_error()

POLL = 0.5


def has_job(dom):
    try:
        return dom.jobInfo()[0] != libvirt.VIR_DOMAIN_JOB_NONE
    except libvirt.libvirtError:
        return False


def domain_state(conn, name, uuid, error=None):
    """{reachable, error, exists, active, persistent, job} of a VM on one host."""
    state = {"reachable": False, "error": error, "exists": False, "active": False, "persistent": False,
             "job": False, "domain": None}
    if conn is None:
        return state
    try:
        dom = libvirt_adapter.find_domain(libvirt, conn, name, uuid)
        if dom is not None:
            state.update(exists=True, active=bool(dom.isActive()), persistent=bool(dom.isPersistent()),
                         domain=dom)
            state["job"] = bool(state["active"] and has_job(dom))
        state["reachable"] = True
    except libvirt.libvirtError as exc:
        state["error"] = str(exc)
    return state


def open_conn(uri):
    conn, error = libvirt_adapter.connect(libvirt, uri)
    return conn, None if conn is not None else "%s: %s" % (uri, error)


def wait_running(dom, seconds):
    return libvirt_adapter.wait_until(dom.isActive, seconds, POLL)


def resume_one(module, item, src):
    """Finish one entry; returns its report item (the entry is removed when ok)."""
    params = module.params
    entry = item["entry"]
    name, uuid = entry["name"], entry.get("uuid")
    report = {"name": name, "uuid": uuid, "operation": entry.get("operation"), "run_id": entry.get("run_id"),
              "target": entry.get("target"), "started_at": entry.get("started_at"), "found": journal.FOUND_UNKNOWN,
              "action": journal.DO_UNRESOLVED, "ok": False, "message": None, "path": item["path"]}

    # 1. no process of the dead run may still work on the VM
    op_lock = journal.OperationLock(journal.DEFAULT_VM_LOCK_DIR, name, uuid)
    if not op_lock.acquire(timeout=params["wait_timeout"], poll=POLL):
        report["message"] = ("an operation of the interrupted run still works on it after %d s (its lock %s is "
                             "held); wait for it to end, then run again" % (params["wait_timeout"], op_lock.path))
        return report
    try:
        # 2. nor a libvirt job (its migration, which libvirtd drives on its own)
        deadline = time.time() + params["wait_timeout"]
        while True:
            source = domain_state(src, name, uuid)
            if not source["job"] or time.time() >= deadline:
                break
            time.sleep(POLL)
        dest = dconn = None
        if entry.get("dest_uri"):
            dconn, error = open_conn(entry["dest_uri"])
            dest = domain_state(dconn, name, uuid, error)
        try:
            saved = journal.restore_path(params["restore_dir"], name, uuid)
            try:
                has_saved = host_markers.read_bytes(saved) is not None
            except host_markers.MarkerError:
                has_saved = False
            decision = journal.resume_decision(entry, source, dest, saved_xml=has_saved)
            report.update(found=decision["found"], action=decision["action"], message=decision["reason"])
            if decision["action"] == journal.DO_UNRESOLVED:
                return report
            if module.check_mode:
                report["ok"] = True
                return report
            act(decision["action"], source, dest, src, saved, params["wait_timeout"], entry.get("operation"))
            report["ok"] = True
        except (libvirt.libvirtError, host_markers.MarkerError) as exc:
            report.update(action=journal.DO_UNRESOLVED,
                          message="%s; then it failed: %s" % (report["message"], exc))
            return report
        finally:
            libvirt_adapter.close_quietly(libvirt, dconn)
        try:
            host_markers.remove(item["path"])
        except host_markers.MarkerError as exc:
            module.warn("%r is finished but its journal entry could not be removed: %s" % (name, exc))
        return report
    finally:
        op_lock.release()


def act(action, source, dest, src, saved, wait, operation=None):
    """Carry out a resume decision; raises libvirt.libvirtError on failure. Starts at most once."""
    if action == journal.DO_NOTHING:
        return
    if action == journal.DO_FINISH:
        libvirt_adapter.undefine(libvirt, source["domain"])
        return
    if action == journal.DO_START_SOURCE:
        dom = source["domain"]
        dom.create()
        if (operation == "cold_migrate" and dest is not None and dest.get("exists") and dest.get("persistent")
                and not dest.get("active")):
            # the cold migration had defined it on the target already: one definition, where it runs
            dest["domain"].undefine()
    elif action == journal.DO_START_TARGET:
        dom = dest["domain"]
        dom.create()
    elif action == journal.DO_CREATE_SOURCE:
        xml = host_markers.read_bytes(saved).decode("utf-8")
        dom = src.createXML(xml, 0)
    else:
        raise libvirt.libvirtError("unknown resume action %r" % action)
    if not wait_running(dom, wait):
        raise libvirt.libvirtError("it was started but does not run after %d s" % wait)
    if action == journal.DO_CREATE_SOURCE:
        host_markers.remove(saved)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            state=dict(type="str", choices=["begin", "end", "resume"], required=True),
            name=dict(type="str"),
            uuid=dict(type="str"),
            operation=dict(type="str", choices=list(journal.OPERATIONS)),
            run_id=dict(type="str"),
            target=dict(type="str"),
            dest_uri=dict(type="str"),
            persistent=dict(type="bool"),
            info=dict(type="dict", default={}),
            journal_dir=dict(type="path", default=journal.DEFAULT_JOURNAL_DIR),
            restore_dir=dict(type="path", default=journal.DEFAULT_RESTORE_DIR),
            uri=libvirt_adapter.uri_argument("source_uri"),
            wait_timeout=libvirt_adapter.wait_timeout_argument(600),
        ),
        required_if=[("state", "begin", ("name", "run_id", "operation")),
                     ("state", "end", ("name", "run_id"))],
        supports_check_mode=True,
    )
    params = module.params
    if params["wait_timeout"] < 0:
        module.fail_json(msg="wait_timeout must be 0 or a positive number of seconds")
    for key in ("name", "run_id"):
        if params[key] is not None and not params[key].strip():
            module.fail_json(msg="%s must not be empty" % key)

    if params["state"] == "begin":
        entry = journal.make_entry(params["name"], params["uuid"], params["operation"], params["run_id"], target=params["target"],
                                   dest_uri=params["dest_uri"], persistent=params["persistent"])
        for key, value in (params["info"] or {}).items():
            entry.setdefault(key, value)
        path = journal.entry_path(params["journal_dir"], params["name"], params["uuid"])
        if not module.check_mode:
            try:
                journal.write_entry(params["journal_dir"], entry)
            except host_markers.MarkerError as exc:
                module.fail_json(msg="cannot journal the %s of %r, so it does not start: %s"
                                 % (params["operation"], params["name"], exc), entry=None, path=path)
        module.exit_json(changed=True, entry=entry, path=path)

    if params["state"] == "end":
        path = journal.entry_path(params["journal_dir"], params["name"], params["uuid"])
        if module.check_mode:
            module.exit_json(changed=False, entry=None, path=path)
        try:
            removed, entry = journal.remove_entry(params["journal_dir"], params["name"], params["uuid"], params["run_id"])
        except host_markers.MarkerError as exc:
            module.fail_json(msg="cannot close the journal entry of %r: %s" % (params["name"], exc), entry=None, path=path)
        if entry is not None and not removed:
            module.warn("the journal entry %s belongs to run %s, not %s: left in place"
                        % (path, entry.get("run_id"), params["run_id"]))
        module.exit_json(changed=removed, entry=entry, path=path)

    # resume
    try:
        items = journal.read_entries(params["journal_dir"])
    except host_markers.MarkerError as exc:
        module.fail_json(msg=str(exc), resumed=[], unresolved=[])
    if not items:
        module.exit_json(changed=False, resumed=[], unresolved=[], entry=None)
    bad = [item for item in items if item["entry"] is None]
    if bad:
        module.fail_json(msg="the evacuation journal %s holds entries that cannot be read, so the interrupted run "
                         "cannot be finished safely: %s. Inspect them (each names one VM operation of the dead "
                         "run), finish those VMs by hand, remove the files, then run again"
                         % (params["journal_dir"], "; ".join(item["problem"] for item in bad)),
                         resumed=[], unresolved=[item["path"] for item in bad])
    if libvirt is None:
        module.fail_json(msg=missing_required_lib(libvirt_adapter.LIBRARY), exception=LIBVIRT_IMPORT_ERROR,
                         resumed=[], unresolved=[])
    src, error = open_conn(params["uri"])
    if src is None:
        module.fail_json(msg="libvirt on the source does not answer (%s), so the %d operation(s) an interrupted "
                         "evacuation left in %s cannot be finished: start libvirtd, then run again"
                         % (error, len(items), params["journal_dir"]), resumed=[], unresolved=[])
    try:
        resumed = [resume_one(module, item, src) for item in items]
    finally:
        libvirt_adapter.close_quietly(libvirt, src)
    unresolved = [r["name"] for r in resumed if not r["ok"]]
    # finishing an entry changes the host (a VM started or undefined, the entry removed)
    changed = any(r["ok"] for r in resumed)
    result = {"changed": changed, "resumed": resumed, "unresolved": unresolved, "entry": None}
    if unresolved:
        module.fail_json(msg="an interrupted evacuation left %d VM operation(s) that cannot be finished safely; "
                         "their journal entries stay in %s and nothing more was done: %s"
                         % (len(unresolved), params["journal_dir"],
                            "; ".join("%r: %s" % (r["name"], r["message"]) for r in resumed if not r["ok"])),
                         **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
