# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""An in-memory stand-in for the parts of libvirt-python that cold_migrate, guest_power and
evacuation_journal use, for the faults the hypervisor lab cannot force on demand.

It copies libvirt's behaviour where the modules depend on it:

- ``libvirt.open(uri)`` gives a new connection each time; an unreachable host raises
  "unable to connect to server ... Connection refused" (what libvirt 9.0 says for a stopped
  libvirtd on qemu+tcp); a connection can be broken after it was opened (every later call
  raises "Cannot write data: Broken pipe", what a connection whose daemon died answers).
- lookups raise VIR_ERR_NO_DOMAIN (42) for a domain the host does not have;
- a transient domain disappears when it stops (destroy / shutdown); a persistent one stays
  defined and inactive; ``undefine`` of an active persistent domain makes it transient;
- ``create`` of an active domain raises "Requested operation is not valid: domain is already
  running"; ``createXML`` of a name the host already has raises "operation failed: domain
  ... already exists";
- ``jobInfo()[0]`` is VIR_DOMAIN_JOB_NONE (0) unless a job was set (an unbounded migration).

Faults are injected per host with ``Host.fail`` (method name -> error message or a callable).
"""

from __future__ import annotations

from ansible.module_utils import basic

VIR_ERR_NO_DOMAIN = 42
VIR_ERR_OPERATION_INVALID = 55


class FakeLibvirtError(Exception):
    def __init__(self, msg, code=1):
        super().__init__(msg)
        self.code = code

    def get_error_code(self):
        return self.code


class Host:
    def __init__(self, uri):
        self.uri = uri
        self.domains = {}  # name -> {uuid, active, persistent, xml, job}
        self.reachable = True
        self.fail = {}     # method name -> message (raise) or callable(domain_name) run instead
        self.calls = []

    def add(self, name, uuid, active=True, persistent=True, xml=None):
        self.domains[name] = {"uuid": uuid, "active": active, "persistent": persistent,
                              "xml": xml or "<domain><name>%s</name><uuid>%s</uuid></domain>" % (name, uuid),
                              "job": 0}
        return self.domains[name]

    def running(self, name):
        return bool(self.domains.get(name, {}).get("active"))


class World:
    def __init__(self):
        self.hosts = {}
        self.opened = []

    def add(self, uri):
        self.hosts[uri] = Host(uri)
        return self.hosts[uri]


def _xml_name(xml):
    return xml.split("<name>", 1)[1].split("</name>", 1)[0]


def _xml_uuid(xml):
    return xml.split("<uuid>", 1)[1].split("</uuid>", 1)[0] if "<uuid>" in xml else None


class FakeDomain:
    def __init__(self, conn, name):
        self.conn, self.host, self.name_ = conn, conn.host, name

    def _record(self):
        self.conn.check()
        record = self.host.domains.get(self.name_)
        if record is None:
            raise FakeLibvirtError("Domain not found: no domain with matching name '%s'" % self.name_,
                                   VIR_ERR_NO_DOMAIN)
        return record

    def _maybe_fail(self, method):
        self.host.calls.append((method, self.name_))
        action = self.host.fail.get(method)
        if action is None:
            return False
        if callable(action):
            action(self.name_)
            return True
        raise FakeLibvirtError(action)

    def name(self):
        return self.name_

    def UUIDString(self):
        return self._record()["uuid"]

    def isActive(self):
        return int(self._record()["active"])

    def isPersistent(self):
        return int(self._record()["persistent"])

    def XMLDesc(self, flags=0):
        return self._record()["xml"]

    def jobInfo(self):
        return [self._record()["job"], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]

    def _stop(self):
        record = self._record()
        if record["persistent"]:
            record["active"] = False
        else:
            del self.host.domains[self.name_]

    def shutdown(self):
        self._record()
        if self._maybe_fail("shutdown"):
            return 0
        self._stop()
        return 0

    def destroy(self):
        self._record()
        if self._maybe_fail("destroy"):
            return 0
        self._stop()
        return 0

    def destroyFlags(self, flags=0):
        return self.destroy()

    def create(self):
        record = self._record()
        if self._maybe_fail("create"):
            return 0
        if record["active"]:
            raise FakeLibvirtError("Requested operation is not valid: domain is already running",
                                   VIR_ERR_OPERATION_INVALID)
        record["active"] = True
        return 0

    def reset(self, flags=0):
        self._record()
        return 0

    def undefine(self):
        record = self._record()
        if self._maybe_fail("undefine"):
            return 0
        if record["active"]:
            record["persistent"] = False
        else:
            del self.host.domains[self.name_]
        return 0

    def undefineFlags(self, flags=0):
        return self.undefine()


class FakeConn:
    def __init__(self, world, host):
        self.world, self.host = world, host
        self.broken = False

    def check(self):
        if self.broken or not self.host.reachable:
            raise FakeLibvirtError("Cannot write data: Broken pipe")

    def lookupByName(self, name):
        self.check()
        if name not in self.host.domains:
            raise FakeLibvirtError("Domain not found: no domain with matching name '%s'" % name, VIR_ERR_NO_DOMAIN)
        return FakeDomain(self, name)

    def lookupByUUIDString(self, uuid):
        self.check()
        for name, record in self.host.domains.items():
            if record["uuid"] == uuid:
                return FakeDomain(self, name)
        raise FakeLibvirtError("Domain not found: no domain with matching uuid '%s'" % uuid, VIR_ERR_NO_DOMAIN)

    def defineXML(self, xml):
        self.check()
        self.host.calls.append(("defineXML", _xml_name(xml)))
        action = self.host.fail.get("defineXML")
        if action:
            raise FakeLibvirtError(action)
        name = _xml_name(xml)
        record = self.host.domains.get(name)
        if record is None:
            self.host.add(name, _xml_uuid(xml), active=False, persistent=True, xml=xml)
        else:
            record["persistent"] = True
            record["xml"] = xml
        return FakeDomain(self, name)

    def createXML(self, xml, flags=0):
        self.check()
        name = _xml_name(xml)
        self.host.calls.append(("createXML", name))
        action = self.host.fail.get("createXML")
        if action is not None:
            if callable(action):
                action(name)
            else:
                raise FakeLibvirtError(action)
        if name in self.host.domains:
            raise FakeLibvirtError("operation failed: domain '%s' already exists" % name)
        self.host.add(name, _xml_uuid(xml), active=True, persistent=False, xml=xml)
        return FakeDomain(self, name)

    def close(self):
        return 0


class FakeLibvirt:
    """The module-level API of libvirt-python."""

    libvirtError = FakeLibvirtError
    VIR_ERR_NO_DOMAIN = VIR_ERR_NO_DOMAIN
    VIR_DOMAIN_XML_SECURE = 1
    VIR_DOMAIN_XML_INACTIVE = 2
    VIR_DOMAIN_XML_MIGRATABLE = 8
    VIR_DOMAIN_DESTROY_GRACEFUL = 1
    VIR_DOMAIN_UNDEFINE_KEEP_NVRAM = 8
    VIR_DOMAIN_JOB_NONE = 0

    def __init__(self, world):
        self.world = world

    def open(self, uri):
        self.world.opened.append(uri)
        host = self.world.hosts.get(uri)
        if host is None or not host.reachable:
            raise FakeLibvirtError("unable to connect to server at '%s': Connection refused" % uri)
        return FakeConn(self.world, host)


class Exit(Exception):
    """What a module under test ended with: ``failed`` and its result (exit_json/fail_json)."""

    def __init__(self, failed, result):
        super().__init__(result.get("msg"))
        self.failed, self.result = failed, result


def capture_exit(monkeypatch):
    """Make AnsibleModule.exit_json/fail_json raise Exit instead of leaving the process."""

    def exit_json(_module, **kwargs):
        raise Exit(False, kwargs)

    def fail_json(_module, **kwargs):
        raise Exit(True, kwargs)

    monkeypatch.setattr(basic.AnsibleModule, "exit_json", exit_json)
    monkeypatch.setattr(basic.AnsibleModule, "fail_json", fail_json)
