# -*- coding: utf-8 -*-
# Copyright (c) kvm_ras.poison_guard contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The collection's one adapter to libvirt on a hypervisor (pure Python, no Ansible imports).

Every module that talks to libvirt takes from here:

- ``load()`` (``binding()``, ``import_error()``) / ``require()``: the import guard for
  libvirt-python (Debian: python3-libvirt), and ``LIBRARY``, the name ``missing_required_lib``
  reports.
- ``DEFAULT_URI`` / ``uri_argument``: the local system connection every module defaults to and
  the argument spec of the ``uri`` option (doc fragment ``kvm_ras.poison_guard.libvirt``).
- ``connect`` / ``close_quietly``: open and close a connection; the module words the error.
- ``STATE_WORDS`` and ``ACTIVE_STATES`` / ``ACTIVE_STATE_WORDS``: libvirt's domain states as
  ``virsh domstate`` names them, and the one definition of "active" (a QEMU process holds the
  VM: running, blocked, paused, shutting down or suspended to memory).
- ``find_domain``, ``undefine``, ``wait_until``: lookups that tell "no such domain" from a
  failure, undefining that keeps NVRAM, polling until a domain runs.
- ``domain_disks``: disk sources of a domain XML (the storage check of a cold migration).
- ``QEMU_RUN_DIR`` / ``qemu_pid``: libvirt's pid file (or status XML) of a running domain.
- ``load_qemu()`` / ``qmp``: libvirt-python's ``libvirt_qemu`` and one QMP command sent to a
  running domain's QEMU through libvirt (``virDomainQemuMonitorCommand``; needs a read-write
  connection, and libvirt marks the domain tainted ``custom-monitor`` in its log).

Functions that call libvirt take the libvirt module (``binding``) as their first argument:
the module passes the binding it loaded, so a unit test can hand in a stand-in.
"""

from __future__ import annotations

import json
import os
import re
import time
import traceback
import xml.etree.ElementTree as ET

LIBRARY = "libvirt-python (Debian/Ubuntu: python3-libvirt)"
DEFAULT_URI = "qemu:///system"
COLLECTION = "kvm_ras.poison_guard"
# The former names of renamed options (libvirt_uri and source_uri of ``uri``, ``wait`` of
# ``wait_timeout``) are accepted until then.
ALIAS_REMOVED_IN = "0.2.0"
QEMU_RUN_DIR = "/run/libvirt/qemu"

# virDomainState -> the word `virsh domstate` prints (VIR_DOMAIN_BLOCKED is shown as "idle").
STATE_WORDS = {0: "no state", 1: "running", 2: "idle", 3: "paused", 4: "in shutdown", 5: "shut off",
               6: "crashed", 7: "pmsuspended"}
# Active: a QEMU process holds the VM (running, blocked, paused, in shutdown, pmsuspended).
ACTIVE_STATES = (1, 2, 3, 4, 7)
# The same set by name, for facts that carry only a state word ("blocked" is libvirt's own
# name of state 2, which virsh prints as "idle").
ACTIVE_STATE_WORDS = tuple(STATE_WORDS[code] for code in ACTIVE_STATES) + ("blocked",)

VIR_ERR_NO_DOMAIN = 42  # libvirt's error code for "no domain with matching name/uuid"


def load():
    """``(libvirt module, None)``, or ``(None, traceback text)`` when libvirt-python is missing.

    The import happens at call time, so a caller that loads lazily sees the interpreter's
    current ``sys.modules``.
    """
    try:
        import libvirt  # pylint: disable=import-outside-toplevel,import-error
    except ImportError:
        return None, traceback.format_exc()
    return libvirt, None


def binding():
    """The libvirt module, or None when libvirt-python is missing (see ``import_error``)."""
    return load()[0]


def import_error():
    """The traceback of the failed import of libvirt-python, or None when it imports."""
    return load()[1]


def require():
    """The libvirt module; raises ImportError naming the package when it is missing."""
    binding, _error = load()
    if binding is None:
        raise ImportError("%s is not installed" % LIBRARY)
    return binding


def state_word(code):
    return STATE_WORDS.get(code, str(code))


def is_active_word(word):
    return word in ACTIVE_STATE_WORDS


def connect(binding, uri, read_only=False):
    """``(connection, None)`` or ``(None, libvirt's error text)``; never raises libvirtError."""
    opener = binding.openReadOnly if read_only else binding.open
    try:
        conn = opener(uri)
    except binding.libvirtError as exc:
        return None, str(exc)
    if conn is None:  # old bindings returned None instead of raising
        return None, "no connection"
    return conn, None


def close_quietly(binding, conn):
    """Close a connection (None is accepted); a connection that already broke is ignored."""
    if conn is None:
        return
    try:
        conn.close()
    except binding.libvirtError:
        pass


def is_no_domain(binding, exc):
    code = getattr(exc, "get_error_code", lambda: None)()
    return code == getattr(binding, "VIR_ERR_NO_DOMAIN", VIR_ERR_NO_DOMAIN)


def find_domain(binding, conn, name=None, uuid=None):
    """The domain by UUID (when given), else by name; None when the host does not have it.

    Any other libvirt error (a broken connection) is raised: "not there" and "cannot tell"
    must never be confused.
    """
    for how, key in (("uuid", uuid), ("name", name)):
        if not key:
            continue
        try:
            return conn.lookupByUUIDString(key) if how == "uuid" else conn.lookupByName(key)
        except binding.libvirtError as exc:
            if not is_no_domain(binding, exc):
                raise
    return None


def undefine(binding, dom):
    """Remove a persistent definition, keeping the VM's NVRAM file when libvirt allows it."""
    try:
        dom.undefineFlags(binding.VIR_DOMAIN_UNDEFINE_KEEP_NVRAM)
    except binding.libvirtError:
        dom.undefine()


def wait_until(predicate, seconds, poll):
    """Call ``predicate`` every ``poll`` seconds until it is true (True) or ``seconds`` passed (False)."""
    deadline = time.time() + seconds
    while True:
        if predicate():
            return True
        if time.time() >= deadline:
            return False
        time.sleep(poll)


def domain_disks(xml_text):
    """Disks of a libvirt domain XML: [{target, type, device, path, readonly, shareable}].

    ``path`` is the file or block device path (``source/@file`` or ``@dev``), or the network
    source name, or None (empty CD-ROM). Network disks have type ``network``.
    """
    root = ET.fromstring(xml_text)
    disks = []
    for disk in root.findall("./devices/disk"):
        source = disk.find("source")
        target = disk.find("target")
        path = None
        if source is not None:
            path = source.get("file") or source.get("dev") or source.get("name") or source.get("dir")
        disks.append({
            "target": target.get("dev") if target is not None else None,
            "type": disk.get("type"),
            "device": disk.get("device") or "disk",
            "path": path,
            "readonly": disk.find("readonly") is not None,
            "shareable": disk.find("shareable") is not None,
        })
    return disks


def qemu_pid(run_dir, name):
    """QEMU PID of a running domain from ``<run_dir>/<name>.pid`` or libvirt's status XML
    (``<domstatus ... pid='N'>``); None if neither is readable."""
    try:
        with open(os.path.join(run_dir, name + ".pid"), "r", encoding="utf-8") as handle:
            return int(handle.read().strip())
    except (OSError, ValueError):
        pass
    try:
        with open(os.path.join(run_dir, name + ".xml"), "r", encoding="utf-8") as handle:
            head = handle.read(4096)
    except OSError:
        return None
    match = re.search(r"<domstatus[^>]*\spid=['\"](\d+)['\"]", head)
    return int(match.group(1)) if match else None


def renamed_argument(old_name, **spec):
    """The argument spec ``spec`` of a renamed option, with its former name ``old_name`` kept
    as a deprecated alias until 0.2.0 (the collection is pre-1.0: one release)."""
    return dict(spec, aliases=[old_name],
                deprecated_aliases=[dict(name=old_name, version=ALIAS_REMOVED_IN, collection_name=COLLECTION)])


def uri_argument(old_name):
    """The argument spec of the ``uri`` option (doc fragment ``kvm_ras.poison_guard.libvirt``),
    with the option's former name ``old_name`` kept as a deprecated alias until 0.2.0."""
    return renamed_argument(old_name, type="str", default=DEFAULT_URI)


def wait_timeout_argument(default):
    """The argument spec of ``wait_timeout`` (seconds to wait for a VM or a job; ``default``
    seconds), formerly ``wait``: a name that in other collections (openstack.cloud,
    kubernetes.core) is a boolean."""
    return renamed_argument("wait", type="int", default=default)


class QmpError(Exception):
    """QEMU answered a QMP command with an error (``class`` and ``desc`` of its reply)."""

    def __init__(self, klass, desc):
        self.klass = klass or "GenericError"
        self.desc = desc or ""
        super().__init__("%s: %s" % (self.klass, self.desc))


def load_qemu():
    """``(libvirt_qemu module, None)``, or ``(None, traceback text)`` when it is missing."""
    try:
        import libvirt_qemu  # pylint: disable=import-outside-toplevel,import-error
    except ImportError:
        return None, traceback.format_exc()
    return libvirt_qemu, None


def qmp(qemu_binding, dom, command, arguments=None):
    """Run one QMP command in ``dom``'s QEMU through libvirt and return its ``return`` member.

    libvirt passes QEMU's reply through unchanged, an error reply included (libvirt 9.0,
    ``qemuMonitorJSONArbitraryCommand``): that raises ``QmpError``. A failure of libvirt itself
    raises its ``libvirtError``; a reply that is not QMP JSON raises ``QmpError``
    (``InvalidReply``).
    """
    request = {"execute": command}
    if arguments:
        request["arguments"] = arguments
    reply = qemu_binding.qemuMonitorCommand(dom, json.dumps(request), 0)
    try:
        data = json.loads(reply)
    except (TypeError, ValueError) as exc:
        raise QmpError("InvalidReply", "%s answered %r, not JSON: %s" % (command, reply, exc)) from exc
    if not isinstance(data, dict):
        raise QmpError("InvalidReply", "%s answered %r" % (command, reply))
    if "error" in data:
        error = data["error"] if isinstance(data["error"], dict) else {}
        raise QmpError(error.get("class"), error.get("desc"))
    return data.get("return")
