# -*- coding: utf-8 -*-
# Copyright (c) kvm_ras.poison_guard contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The evacuation journal and the per-VM operation lock (pure Python, no Ansible imports).

An evacuation writes one journal entry on the source for every VM operation it starts
(reboot, live or cold migration), before the operation starts, and removes it when the
operation has ended. A run that dies (controller killed, Ctrl-C, source unreachable) leaves
its entries behind; the next run reads them first and, for each, finds where the VM runs now
and finishes the operation (``resume_decision``): a VM runs again exactly once.

The modules that stop a VM (cold_migrate, guest_power) hold the VM's operation lock
(``flock`` on a file under /run) for as long as they work on it, so a re-run waits for an
operation of the dead run that is still going (a module process survives its controller)
instead of racing it. A live migration is visible to the re-run as the source domain's
libvirt job.

The XML of a transient VM that is stopped (guest_power ``restarted``, cold_migrate) is kept
in ``restore_path`` until the VM runs again: a transient VM that runs nowhere exists nowhere
else.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import re
import time

try:
    from ansible_collections.kvm_ras.poison_guard.plugins.module_utils import host_markers
except ImportError:  # pragma: no cover - only outside an installed collection
    import host_markers  # type: ignore[no-redef]

from ansible_collections.kvm_ras.poison_guard.plugins.module_utils import libvirt as libvirt_adapter

DEFAULT_JOURNAL_DIR = "/var/lib/kvm_ras/journal"
DEFAULT_RESTORE_DIR = "/var/lib/kvm_ras/restore"
DEFAULT_VM_LOCK_DIR = "/run/kvm_ras/vm-locks"
JOURNAL_VERSION = 1
OPERATIONS = ("live_migrate", "reboot_then_migrate", "cold_migrate")

UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")

# What resume found (where the VM runs) and did.
FOUND_SOURCE = "source"
FOUND_TARGET = "target"
FOUND_BOTH = "both"
FOUND_NOWHERE = "nowhere"
FOUND_UNKNOWN = "unknown"

DO_NOTHING = "none"                      # it runs exactly once already
DO_FINISH = "undefine_source"            # it runs on the target; remove the source's definition
DO_START_SOURCE = "start_on_source"      # runs nowhere, defined on the source: undo the move
DO_START_TARGET = "start_on_target"      # runs nowhere, defined only on the target: complete the move
DO_CREATE_SOURCE = "create_from_saved_xml"  # runs nowhere, transient: start it from the kept XML
DO_UNRESOLVED = "unresolved"             # cannot be decided safely: the operator decides


def entry_key(name, uuid=None):
    """File-name key of a VM: its UUID when known, else a digest of its name (names are data)."""
    if isinstance(uuid, str) and UUID_RE.match(uuid):
        return uuid.lower()
    return "name-" + hashlib.sha256((name or "").encode("utf-8", "surrogateescape")).hexdigest()[:40]


def entry_path(journal_dir, name, uuid=None):
    return os.path.join(journal_dir, entry_key(name, uuid) + ".json")


def restore_path(restore_dir, name, uuid=None):
    """Where the XML of a stopped transient VM is kept until it runs again."""
    return os.path.join(restore_dir, entry_key(name, uuid) + ".xml")


def make_entry(name, uuid, operation, run_id, target=None, dest_uri=None, persistent=None, controller=None,
               now=None):
    now = time.time() if now is None else now
    return {
        "version": JOURNAL_VERSION,
        "name": name,
        "uuid": uuid,
        "operation": operation,
        "run_id": run_id,
        "target": target,
        "dest_uri": dest_uri,
        "persistent": persistent,
        "controller": controller,
        "started_epoch": now,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
    }


def write_entry(journal_dir, entry):
    """Write (or replace) a VM's entry atomically; returns its path. Raises host_markers.MarkerError."""
    path = entry_path(journal_dir, entry["name"], entry.get("uuid"))
    host_markers.write_json_atomic(path, entry, mode=0o600, dir_mode=0o700)
    return path


def remove_entry(journal_dir, name, uuid=None, run_id=None):
    """Remove a VM's entry when it belongs to ``run_id`` (any run when None).

    Returns (removed, entry found or None).
    """
    path = entry_path(journal_dir, name, uuid)
    record, _problem = host_markers.read_json_marker(path)
    if record is None:
        return False, None
    if run_id is not None and record.get("run_id") != run_id:
        return False, record
    host_markers.remove(path)
    return True, record


def read_entries(journal_dir):
    """Every entry of the journal, oldest first: [{path, entry or None, problem or None}].

    A missing journal directory is an empty journal. An entry that cannot be read (not JSON,
    a symlink) is returned with its problem, never with its content.
    """
    if os.path.islink(journal_dir):
        raise host_markers.MarkerError("the evacuation journal %s is a symlink: it must be a real directory "
                                       "(inspect it, remove the link, then run again)" % journal_dir)
    try:
        names = sorted(os.listdir(journal_dir))
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise host_markers.MarkerError("cannot list the evacuation journal %s: %s"
                                       % (journal_dir, exc.strerror or exc)) from None
    found = []
    for fname in names:
        if not fname.endswith(".json") or fname.startswith("."):
            continue
        path = os.path.join(journal_dir, fname)
        record, problem = host_markers.read_json_marker(path)
        if record is None:
            continue  # removed meanwhile
        if problem is None and (record.get("unreadable") is not None or not isinstance(record.get("name"), str)):
            problem = record.get("unreadable") or "%s is not an evacuation journal entry (no VM name)" % path
        found.append({"path": path, "entry": None if problem else record, "problem": problem})
    found.sort(key=lambda item: ((item["entry"] or {}).get("started_epoch") or 0, item["path"]))
    return found


class OperationLock:
    """Exclusive ``flock`` on one VM's lock file, held while a module works on that VM.

    The kernel drops it when the process ends, however it ends, so a lock held by a module
    process that lost its controller lasts exactly as long as that process.
    """

    def __init__(self, lock_dir, name, uuid=None):
        self.path = os.path.join(lock_dir, entry_key(name, uuid) + ".lock")
        self.lock_dir = lock_dir
        self.fd = None

    def acquire(self, timeout=0.0, poll=0.2):
        """True when taken within ``timeout`` seconds (0: one try), False when another process holds it."""
        host_markers.ensure_directory(self.lock_dir, 0o700)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o600)
        except OSError as exc:
            raise host_markers.MarkerError("cannot open the VM operation lock %s: %s"
                                           % (self.path, exc.strerror or exc)) from None
        deadline = time.monotonic() + max(timeout, 0)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self.fd = fd
                return True
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    os.close(fd)
                    raise host_markers.MarkerError("cannot lock %s: %s" % (self.path, exc.strerror or exc)) from None
            if time.monotonic() >= deadline:
                os.close(fd)
                return False
            time.sleep(poll)

    def release(self):
        if self.fd is not None:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            finally:
                os.close(self.fd)
                self.fd = None


def power_off_arguments():
    """The options of the modules that power a VM off and start it again (guest_power,
    cold_migrate): ``wait_timeout`` (seconds for the VM to run again; formerly ``wait``) and
    ``restore_dir`` (where ``before_power_off`` keeps the XML of a transient VM)."""
    return dict(wait_timeout=libvirt_adapter.wait_timeout_argument(60),
                restore_dir=dict(type="path", default=DEFAULT_RESTORE_DIR))


class NotTouched(Exception):
    """An operation on a VM refused before anything changed; ``busy`` when another operation
    holds the VM's lock."""

    def __init__(self, message, busy=False):
        super().__init__(message)
        self.busy = busy


def before_power_off(name, uuid, transient_xml, restore_dir, doing):
    """What a module does before it powers a VM off (guest_power V(restarted), cold_migrate).

    Takes the VM's operation lock without waiting and, for a transient VM (``transient_xml``
    given: a transient VM that is powered off exists nowhere), keeps its XML in
    ``restore_dir`` (``restore_path``, mode 0600, written atomically) so that it can be started
    again whatever happens to this process. Returns ``(lock held, path of the kept XML or
    None)``; the caller releases the lock. Raises NotTouched, with the lock released, when
    the lock is held or cannot be taken, or the XML cannot be kept; ``doing`` ("shutting it
    down") completes its message.
    """
    op_lock = OperationLock(DEFAULT_VM_LOCK_DIR, name, uuid)
    try:
        taken = op_lock.acquire(timeout=0)
    except host_markers.MarkerError as exc:
        raise NotTouched("cannot take the operation lock of %r before %s, nothing was changed: %s"
                         % (name, doing, exc)) from None
    if not taken:
        raise NotTouched("another operation on %r is running on this host (its lock %s is held); nothing was "
                         "changed: wait for it to end, then run again" % (name, op_lock.path), busy=True)
    if transient_xml is None:
        return op_lock, None
    saved = restore_path(restore_dir, name, uuid)
    try:
        host_markers.write_atomic(saved, transient_xml.encode("utf-8"), mode=0o600, dir_mode=0o700)
    except host_markers.MarkerError as exc:
        op_lock.release()
        raise NotTouched("cannot keep the XML of the transient VM %r before %s, so it was not touched: %s"
                         % (name, doing, exc)) from None
    return op_lock, saved


def where_found(source, dest):
    """Where the VM runs from the two hosts' states ({reachable, active, ...}, dest may be None)."""
    on_source = bool(source.get("reachable") and source.get("active"))
    dest_known = dest is not None and dest.get("reachable")
    on_dest = bool(dest_known and dest.get("active"))
    if on_source and on_dest:
        return FOUND_BOTH
    if on_source:
        return FOUND_SOURCE
    if on_dest:
        return FOUND_TARGET
    if not source.get("reachable") or (dest is not None and not dest_known):
        return FOUND_UNKNOWN
    return FOUND_NOWHERE


def resume_decision(entry, source, dest, saved_xml=False):
    """What to do with one VM an interrupted run left in flight: {found, action, reason}.

    ``source`` and ``dest``: {reachable, error, exists, active, persistent, job} of the VM on
    the source and on the entry's target (``dest`` None when the entry names no target).
    ``saved_xml``: the XML of the (transient) VM is kept on the source.

    Rules: a VM that runs exactly once is left running (its source definition is removed when
    it runs persistently on the target); a VM that runs nowhere is started exactly once, on
    the source when the source still defines it (the move is undone), else on the target when
    the target defines it (the move is completed), else from the kept XML; a VM that runs
    twice, or whose target cannot be asked while it runs nowhere on the source, is left to
    the operator (fail closed: never a second copy).
    """
    target = entry.get("target") or "the target"
    if not source.get("reachable"):
        return {"found": FOUND_UNKNOWN, "action": DO_UNRESOLVED,
                "reason": "libvirt on the source does not answer: %s" % (source.get("error") or "no details")}
    if source.get("job"):
        return {"found": FOUND_UNKNOWN, "action": DO_UNRESOLVED,
                "reason": "a libvirt job (the interrupted run's migration) still runs on the source; wait "
                          "for it to end, then run again"}
    found = where_found(source, dest)
    if found == FOUND_BOTH:
        return {"found": found, "action": DO_UNRESOLVED,
                "reason": "CRITICAL: it runs on the source and on %s at once; stop the copy that must not "
                          "run (virsh destroy on one host), then run again" % target}
    if found == FOUND_SOURCE:
        note = "" if dest is None or dest.get("reachable") else " (%s could not be asked: %s)" % (
            target, dest.get("error") or "no answer")
        return {"found": found, "action": DO_NOTHING,
                "reason": "still runs on the source: the interrupted operation had not moved it%s" % note}
    if found == FOUND_TARGET:
        if source.get("exists") and source.get("persistent") and dest.get("persistent"):
            return {"found": found, "action": DO_FINISH,
                    "reason": "runs on %s; its definition is still on the source: removed there" % target}
        return {"found": found, "action": DO_NOTHING,
                "reason": "runs on %s: the interrupted operation had completed" % target}
    if found == FOUND_UNKNOWN:
        return {"found": found, "action": DO_UNRESOLVED,
                "reason": "runs nowhere on the source and %s cannot be asked (%s): it may run there, so it is "
                          "started nowhere; when %s answers again, run again"
                          % (target, (dest or {}).get("error") or "no answer", target)}
    # runs nowhere
    if source.get("exists") and source.get("persistent"):
        return {"found": found, "action": DO_START_SOURCE,
                "reason": "ran nowhere (the interrupted run had stopped it): started again on the source"}
    if dest is not None and dest.get("exists") and dest.get("persistent"):
        return {"found": found, "action": DO_START_TARGET,
                "reason": "ran nowhere, defined only on %s (the interrupted run had moved its definition): "
                          "started there" % target}
    if saved_xml:
        return {"found": found, "action": DO_CREATE_SOURCE,
                "reason": "ran nowhere (transient; the interrupted run had stopped it): started again on the "
                          "source from its kept XML"}
    return {"found": found, "action": DO_UNRESOLVED,
            "reason": "CRITICAL: runs nowhere and no host defines it, and no copy of its XML was kept; "
                      "recreate it from your own records"}
