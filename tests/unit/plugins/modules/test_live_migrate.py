# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""live_migrate's decisions against an in-memory stand-in for libvirt-python.

The stand-in copies the parts of libvirt-python's API the module uses (libvirt.open,
openReadOnly, virConnect.lookupByName/listAllDomains/getCapabilities, virDomain.isActive,
migrateToURI3, migrate3, jobStats, abortJob, migrateSetMaxDowntime, migrateStartPostCopy,
libvirtError.get_error_code) and libvirt's behaviour after a migration: with UNDEFINE_SOURCE the
source forgets the domain, with PERSIST_DEST the destination keeps a definition, an aborted job
raises "operation aborted: job 'migration out' canceled by client" (libvirt 9.0, recorded in the
hypervisor lab), a
poisoned VM's migrate fails with QEMU's refusal wrapped as libvirt 9.0 wraps it. Real libvirt
and QEMU are exercised by molecule/migrate.
"""

from __future__ import annotations

import threading

import pytest

from ansible.module_utils import basic
from ansible.module_utils.testing import patch_module_args

from ansible_collections.kvm_ras.poison_guard.plugins.module_utils import migration
from ansible_collections.kvm_ras.poison_guard.plugins.modules import live_migrate
from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.messages import UPSTREAM_REFUSAL

VIR_ERR_NO_DOMAIN = 42
VIR_MIGRATE_UNDEFINE_SOURCE = 16
VIR_MIGRATE_PERSIST_DEST = 8


class FakeLibvirtError(Exception):
    def __init__(self, msg, code=1):
        super().__init__(msg)
        self.code = code

    def get_error_code(self):
        return self.code


class Host:
    def __init__(self, uri, uuid):
        self.uri, self.uuid = uri, uuid
        self.domains = {}  # name -> {"active": bool}
        self.reachable = True


class World:
    """The hypervisors and how the next migration behaves."""

    def __init__(self):
        self.hosts = {}
        self.behaviour = "ok"
        self.calls = []
        self.abort_event = threading.Event()
        self.abort_conn = None
        self.migrate_conn = None
        self.source_open_limit = None  # connections the source accepts; None: any number

    def add(self, uri, uuid):
        self.hosts[uri] = Host(uri, uuid)
        return self.hosts[uri]


class FakeDomain:
    def __init__(self, world, host, name, conn=None):
        self.world, self.host, self.name_, self.conn = world, host, name, conn

    def name(self):
        return self.name_

    def UUIDString(self):
        return "uuid-of-" + self.name_

    def XMLDesc(self, flags=0):
        self.world.calls.append(("XMLDesc", flags))
        return ("<domain type='kvm'><name>%s</name><uuid>uuid-of-%s</uuid><memory>65536</memory>%s</domain>"
                % (self.name_, self.name_, "<description>inactive</description>" if flags & 2 else ""))

    def isPersistent(self):
        return True

    def isActive(self):
        record = self.host.domains.get(self.name_)
        if record is None:
            raise FakeLibvirtError("Domain not found: no domain with matching name '%s'" % self.name_,
                                   VIR_ERR_NO_DOMAIN)
        return record["active"]

    def migrateSetMaxDowntime(self, ms, flags):
        self.world.calls.append(("migrateSetMaxDowntime", ms))

    def migrateStartPostCopy(self, flags):
        self.world.calls.append(("migrateStartPostCopy",))
        self.world.abort_event.set()

    def abortJob(self):
        self.world.calls.append(("abortJob",))
        self.world.abort_conn = self.conn
        self.world.abort_event.set()

    def jobStats(self, flags=0):
        if flags == 1:  # VIR_DOMAIN_JOB_STATS_COMPLETED
            return self.host.domains.get(self.name_, {}).get("completed", {"type": 0})
        return {"type": 2, "time_elapsed": 100, "data_total": 67108864, "data_processed": 1048576,
                "data_remaining": 66060288, "memory_iteration": 1}

    def migrateToURI3(self, dest_uri, params, flags):
        self.world.calls.append(("migrateToURI3", dest_uri, dict(params), flags))
        self.world.migrate_conn = self.conn
        return self._migrate(self.world.hosts[dest_uri], flags)

    def migrate3(self, dconn, params, flags):
        self.world.calls.append(("migrate3", dconn.host.uri, dict(params), flags))
        return self._migrate(dconn.host, flags)

    def _migrate(self, dest, flags):
        behaviour = self.world.behaviour
        if behaviour == "poisoned":
            raise FakeLibvirtError("internal error: unable to execute QEMU command 'migrate': " + UPSTREAM_REFUSAL)
        if behaviour == "dest_down":
            raise FakeLibvirtError("operation failed: Failed to connect to remote libvirt URI %s: unable to "
                                   "connect to server at 'hv2:16509': Connection refused" % dest.uri)
        if behaviour in ("hang", "postcopy", "ignores_abort"):
            self.world.abort_event.wait(10)
            if behaviour == "hang":
                raise FakeLibvirtError("operation aborted: job 'migration out' canceled by client")
        if behaviour == "lost":
            self.host.domains.pop(self.name_)
            raise FakeLibvirtError("internal error: qemu unexpectedly closed the monitor")
        if behaviour == "dest_qemu_died":
            raise FakeLibvirtError("internal error: qemu unexpectedly closed the monitor")
        if behaviour == "split":
            dest.domains[self.name_] = {"active": True}
            raise FakeLibvirtError("operation failed: Lost connection to destination host")
        record = self.host.domains.pop(self.name_)
        if not flags & VIR_MIGRATE_UNDEFINE_SOURCE:
            self.host.domains[self.name_] = {"active": False}
        dest.domains[self.name_] = {"active": True, "completed": {
            "type": 3, "time_elapsed": 812, "downtime": 21, "data_total": 67773440,
            "data_processed": 624640, "data_remaining": 0, "memory_iteration": 2}}
        del record
        return FakeDomain(self.world, dest, self.name_)


class FakeConn:
    def __init__(self, world, host, read_only):
        self.world, self.host, self.read_only = world, host, read_only

    def lookupByName(self, name):
        if name not in self.host.domains:
            raise FakeLibvirtError("Domain not found: no domain with matching name '%s'" % name,
                                   VIR_ERR_NO_DOMAIN)
        return FakeDomain(self.world, self.host, name, self)

    def lookupByUUIDString(self, uuid):
        for name in self.host.domains:
            if "uuid-of-" + name == uuid:
                return FakeDomain(self.world, self.host, name, self)
        raise FakeLibvirtError("Domain not found: no domain with matching uuid '%s'" % uuid, VIR_ERR_NO_DOMAIN)

    def listAllDomains(self, flags):
        return [FakeDomain(self.world, self.host, n) for n in self.host.domains]

    def getCapabilities(self):
        return "<capabilities>\n  <host>\n    <uuid>%s</uuid>\n  </host>\n</capabilities>" % self.host.uuid

    def close(self):
        return 0


class FakeLibvirt:
    """The module-level API of libvirt-python that live_migrate uses."""

    libvirtError = FakeLibvirtError
    VIR_ERR_NO_DOMAIN = VIR_ERR_NO_DOMAIN
    VIR_DOMAIN_JOB_STATS_COMPLETED = 1
    VIR_MIGRATE_PARAM_BANDWIDTH = "bandwidth"
    VIR_MIGRATE_PARAM_DEST_XML = "destination_xml"
    VIR_MIGRATE_PARAM_PERSIST_XML = "persistent_xml"
    VIR_MIGRATE_LIVE = 1
    VIR_MIGRATE_PEER2PEER = 2
    VIR_MIGRATE_TUNNELLED = 4
    VIR_MIGRATE_PERSIST_DEST = 8
    VIR_MIGRATE_UNDEFINE_SOURCE = 16
    VIR_MIGRATE_NON_SHARED_DISK = 64
    VIR_MIGRATE_NON_SHARED_INC = 128
    VIR_MIGRATE_UNSAFE = 512
    VIR_MIGRATE_AUTO_CONVERGE = 8192
    VIR_MIGRATE_POSTCOPY = 32768

    def __init__(self, world):
        self.world = world

    def _open(self, uri, read_only):
        self.world.calls.append(("openReadOnly" if read_only else "open", uri))
        host = self.world.hosts.get(uri)
        if host is None or not host.reachable:
            raise FakeLibvirtError("unable to connect to server at 'hv2:16509': Connection refused")
        if self.world.source_open_limit is not None and uri == SRC:
            if self.world.source_open_limit == 0:
                # what libvirtd answers when max_clients is reached
                raise FakeLibvirtError("Cannot recv data: Connection reset by peer")
            self.world.source_open_limit -= 1
        return FakeConn(self.world, host, read_only)

    def open(self, uri):
        return self._open(uri, False)

    def openReadOnly(self, uri):
        return self._open(uri, True)


class Exit(Exception):
    def __init__(self, failed, result):
        super().__init__(result.get("msg"))
        self.failed, self.result = failed, result


SRC, DST = "qemu:///system", "qemu+tcp://hv2/system"
NAME = "web 01 $(touch .pwned)"


@pytest.fixture
def world(monkeypatch):
    w = World()
    w.add(SRC, "11111111-1111-1111-1111-111111111111")
    w.add(DST, "22222222-2222-2222-2222-222222222222")
    monkeypatch.setattr(live_migrate, "libvirt", FakeLibvirt(w))
    # The poison check right before the migration (poison_check=true) runs the detection core on
    # this machine's /proc; here it is replaced by a stand-in returning w.poison_verdict for the
    # exact domain asked for (its own tests run the real core on fixture trees).
    w.poison_verdict = "clean"
    w.poison_checks = []

    w.holes_entry = {}  # poison_info's x-poison-holes fields of the VM (binary_poison_holes, ...)

    def fake_precheck(uuid, name, source_uri, on_unknown="fail", collect=None, options=None,
                      target_facts=None):
        w.poison_checks.append((uuid, name, source_uri, on_unknown))
        entry = {"name": name, "uuid": uuid, "pid": 4242, "start_ticks": 1234, "status": w.poison_verdict,
                 "reasons": [] if w.poison_verdict != "unknown" else ["/proc/4242/pagemap: permission denied"],
                 "poisoned_pages": [{"hva": "0x7fafe2145000", "pfn": "0xf945", "gpa": "0x2345000",
                                     "source": "pagemap_hwpoison"}] if w.poison_verdict == "poisoned" else [],
                 "evidence": [{"source": "pagemap", "detail": "1 poisoned page(s)"}]
                 if w.poison_verdict == "poisoned" else [], "migration_guard": False}
        entry.update(w.holes_entry)
        return migration.poison_precheck(uuid, name, source_uri, on_unknown,
                                         collect=lambda _opts: {"vms": [entry], "origin": {}},
                                         target_facts=target_facts)

    monkeypatch.setattr(live_migrate, "poison_precheck", fake_precheck)

    # module.warn() records the warning for the result (or prints it when ansible-core thinks it
    # runs on the controller, as it does once an action plugin test imported controller code):
    # collect them here and hand them back the way exit_json would.
    w.warnings = []

    def warn(self, warning, **_kwargs):
        w.warnings.append(warning)

    def exit_json(self, **kwargs):
        assert "warnings" not in kwargs, "warnings= in exit_json is deprecated: use module.warn()"
        kwargs["warnings"] = list(w.warnings)
        raise Exit(False, kwargs)

    def fail_json(self, **kwargs):
        assert "warnings" not in kwargs, "warnings= in fail_json is deprecated: use module.warn()"
        kwargs["warnings"] = list(w.warnings)
        raise Exit(True, kwargs)

    monkeypatch.setattr(basic.AnsibleModule, "warn", warn)

    monkeypatch.setattr(basic.AnsibleModule, "exit_json", exit_json)
    monkeypatch.setattr(basic.AnsibleModule, "fail_json", fail_json)
    return w


def run(args, check_mode=False):
    args = {"name": NAME, "dest_uri": DST, "poll_interval": 0.02, **args}
    if check_mode:
        args["_ansible_check_mode"] = True
    with patch_module_args(args):
        with pytest.raises(Exit) as exc:
            live_migrate.main()
    return exc.value


def test_migrates_a_running_vm_and_reports_job_statistics(world):
    world.hosts[SRC].domains[NAME] = {"active": True}
    out = run({"bandwidth": 5, "max_downtime": 50})
    assert out.failed is False, out.result["msg"]
    r = out.result
    assert r["changed"] is True and r["migrated"] is True
    assert r["running_on"] == "destination"
    assert r["placement"] == {"source": "absent", "destination": "running"}
    assert r["flags"] == ["VIR_MIGRATE_LIVE", "VIR_MIGRATE_PEER2PEER", "VIR_MIGRATE_PERSIST_DEST",
                          "VIR_MIGRATE_UNDEFINE_SOURCE"]
    assert ("migrateToURI3", DST, {"bandwidth": 5}, 1 | 2 | 8 | 16) in world.calls
    assert ("migrateSetMaxDowntime", 50) in world.calls
    assert r["job"]["duration_ms"] == 812 and r["job"]["downtime_ms"] == 21
    assert r["job"]["job_type"] == "completed"
    assert r["failure"] is None and r["critical"] is False


def test_without_peer2peer_the_module_drives_migrate3_between_its_connections(world):
    world.hosts[SRC].domains[NAME] = {"active": True}
    out = run({"peer2peer": False, "undefine_source": False})
    assert out.failed is False
    assert ("migrate3", DST, {}, 1 | 8) in world.calls
    assert out.result["placement"] == {"source": "defined", "destination": "running"}
    assert out.result["running_on"] == "destination"


def test_already_on_destination_is_unchanged(world):
    world.hosts[DST].domains[NAME] = {"active": True}
    out = run({})
    assert out.failed is False
    assert out.result["changed"] is False
    assert out.result["running_on"] == "destination"
    assert not [c for c in world.calls if c[0] in ("migrateToURI3", "migrate3")]


def test_check_mode_reports_the_plan_and_changes_nothing(world):
    world.hosts[SRC].domains[NAME] = {"active": True}
    out = run({"tunnelled": True, "copy_storage": "all"}, check_mode=True)
    assert out.failed is False
    assert out.result["changed"] is True
    assert "would migrate" in out.result["msg"]
    assert "VIR_MIGRATE_TUNNELLED" in out.result["flags"] and "VIR_MIGRATE_NON_SHARED_DISK" in out.result["flags"]
    assert world.hosts[SRC].domains[NAME]["active"] is True
    assert NAME not in world.hosts[DST].domains
    assert {c[0] for c in world.calls} == {"openReadOnly"}


def test_poison_refusal_is_classified_and_the_vm_stays_on_the_source(world):
    world.hosts[SRC].domains[NAME] = {"active": True}
    world.behaviour = "poisoned"
    out = run({})
    assert out.failed is True
    assert out.result["failure"]["class"] == "poisoned"
    assert UPSTREAM_REFUSAL in out.result["failure"]["message"]
    assert out.result["running_on"] == "source"
    assert out.result["changed"] is False
    assert "failed (poisoned)" in out.result["msg"]


def test_timeout_aborts_the_job_and_the_vm_stays_on_the_source(world):
    world.hosts[SRC].domains[NAME] = {"active": True}
    world.behaviour = "hang"
    out = run({"timeout": 0.2})
    assert out.failed is True
    assert ("abortJob",) in world.calls
    assert out.result["aborted"] is True
    assert out.result["failure"]["class"] == "timeout"
    assert out.result["failure"]["message"] == "operation aborted: job 'migration out' canceled by client"
    assert out.result["running_on"] == "source"
    assert out.result["progress"], "job statistics were polled while the migration ran"


def test_the_abort_travels_on_its_own_connection_not_the_migrating_one(world):
    # libvirt 9.0's client held an abort sent on the connection that carries the blocking
    # migrate call until the migration had finished (seen in the lab about one run in nine).
    world.hosts[SRC].domains[NAME] = {"active": True}
    world.behaviour = "hang"
    out = run({"timeout": 0.2})
    assert out.result["aborted"] is True
    assert world.migrate_conn is not None and world.abort_conn is not None
    assert world.abort_conn is not world.migrate_conn
    assert world.abort_conn.host is world.migrate_conn.host
    assert [c for c in world.calls if c == ("open", SRC)] == [("open", SRC), ("open", SRC)]


def test_without_a_second_source_connection_the_abort_shares_the_migrating_one(world):
    world.hosts[SRC].domains[NAME] = {"active": True}
    world.behaviour = "hang"
    world.source_open_limit = 1
    out = run({"timeout": 0.2})
    assert out.failed is True
    assert out.result["failure"]["class"] == "timeout"
    assert out.result["running_on"] == "source"
    assert world.abort_conn is world.migrate_conn


def test_a_migration_that_completes_despite_the_abort_is_reported_as_moved_with_a_warning(world):
    world.hosts[SRC].domains[NAME] = {"active": True}
    world.behaviour = "ignores_abort"
    out = run({"timeout": 0.2})
    assert out.failed is False, out.result["msg"]
    assert out.result["aborted"] is True
    assert out.result["migrated"] is True
    assert out.result["running_on"] == "destination"
    assert any("completed although" in w for w in out.result["warnings"]), out.result["warnings"]


def test_postcopy_switches_instead_of_aborting(world):
    world.hosts[SRC].domains[NAME] = {"active": True}
    world.behaviour = "postcopy"
    out = run({"timeout": 0.2, "postcopy": True})
    assert out.failed is False, out.result["msg"]
    assert ("migrateStartPostCopy",) in world.calls
    assert ("abortJob",) not in world.calls
    assert out.result["postcopy_started"] is True


def test_unreachable_destination_is_classified_before_anything_starts(world):
    world.hosts[SRC].domains[NAME] = {"active": True}
    world.hosts[DST].reachable = False
    out = run({})
    assert out.failed is True
    assert out.result["failure"]["class"] == "destination"
    assert out.result["running_on"] == "source"


def test_destination_refusing_mid_migration_is_classified(world):
    world.hosts[SRC].domains[NAME] = {"active": True}
    world.behaviour = "dest_down"
    out = run({})
    assert out.result["failure"]["class"] == "destination"
    assert out.result["running_on"] == "source"


def test_destination_qemu_dying_is_destination_while_the_vm_runs_on_the_source(world):
    world.hosts[SRC].domains[NAME] = {"active": True}
    world.behaviour = "dest_qemu_died"
    out = run({})
    assert out.result["failure"]["class"] == "destination"
    assert out.result["running_on"] == "source"
    assert out.result["critical"] is False


def test_vm_lost_during_migration_is_critical(world):
    world.hosts[SRC].domains[NAME] = {"active": True}
    world.behaviour = "lost"
    out = run({})
    assert out.failed is True
    assert out.result["running_on"] == "none"
    assert out.result["critical"] is True
    assert out.result["msg"].startswith("CRITICAL: VM %r is running on NEITHER hypervisor" % NAME)
    assert "9.0" in out.result["failure"]["explanation"]


def test_vm_on_both_after_a_failure_is_critical(world):
    world.hosts[SRC].domains[NAME] = {"active": True}
    world.behaviour = "split"
    out = run({})
    assert out.result["running_on"] == "both"
    assert out.result["critical"] is True
    assert out.result["msg"].startswith("CRITICAL: VM %r is running on BOTH hypervisors" % NAME)


def test_vm_already_on_both_is_refused_as_critical(world):
    world.hosts[SRC].domains[NAME] = {"active": True}
    world.hosts[DST].domains[NAME] = {"active": True}
    out = run({})
    assert out.failed is True and out.result["critical"] is True
    assert "already running on BOTH" in out.result["msg"]
    assert not [c for c in world.calls if c[0] in ("migrateToURI3", "migrate3")]


def test_unknown_vm_lists_what_the_source_has(world):
    world.hosts[SRC].domains["other"] = {"active": True}
    out = run({})
    assert out.failed is True
    assert "was not found on the source (qemu:///system: other)" in out.result["msg"]


def test_shut_off_vm_is_refused(world):
    world.hosts[SRC].domains[NAME] = {"active": False}
    out = run({})
    assert out.failed is True
    assert "defined on the source but not running" in out.result["msg"]


def test_destination_that_is_the_source_is_refused(world):
    world.hosts[DST].uuid = world.hosts[SRC].uuid
    world.hosts[SRC].domains[NAME] = {"active": True}
    out = run({})
    assert out.failed is True
    assert "reaches the source hypervisor itself" in out.result["msg"]


@pytest.mark.parametrize("args,needle", [
    ({"tunnelled": True, "peer2peer": False}, "tunnelled=true needs peer2peer=true"),
    ({"timeout": -1}, "timeout must be a positive number"),
    ({"copy_storage": "maybe"}, "value of copy_storage must be one of"),
    ({"name": ""}, "name is empty"),
])
def test_bad_input_fails_before_connecting(world, args, needle):
    out = run(args)
    assert out.failed is True
    assert needle in out.result["msg"]
    assert not [c for c in world.calls if c[0] in ("open", "openReadOnly")]


# -- issue 13 ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("verdict,klass,needle", [
    ("poisoned", "poisoned", "is poisoned: " + UPSTREAM_REFUSAL),
    ("unknown", "poison_unknown", "its poison status is unknown: /proc/4242/pagemap: permission denied"),
])
def test_vm_not_clean_at_the_last_scan_is_not_migrated(world, verdict, klass, needle):
    world.hosts[SRC].domains[NAME] = {"active": True}
    world.poison_verdict = verdict
    out = run({})
    assert out.failed is True
    assert needle in out.result["msg"] and "Nothing was started" in out.result["msg"]
    assert out.result["failure"]["class"] == klass
    assert out.result["poison_check"]["status"] == verdict and out.result["poison_check"]["pid"] == 4242
    assert world.poison_checks == [("uuid-of-" + NAME, NAME, SRC, "fail")]
    assert not [c for c in world.calls if c[0].startswith("migrate")]
    assert world.hosts[SRC].domains[NAME]["active"] is True and NAME not in world.hosts[DST].domains


def test_clean_vm_is_scanned_once_right_before_it_is_migrated(world):
    world.hosts[SRC].domains[NAME] = {"active": True}
    out = run({})
    assert out.failed is False and out.result["migrated"] is True
    assert out.result["poison_check"]["status"] == "clean"
    assert world.poison_checks == [("uuid-of-" + NAME, NAME, SRC, "fail")]


def test_unknown_vm_goes_with_on_unknown_allow_and_a_warning(world):
    world.hosts[SRC].domains[NAME] = {"active": True}
    world.poison_verdict = "unknown"
    out = run({"on_unknown": "allow"})
    assert out.failed is False and out.result["migrated"] is True
    assert any("on_unknown=allow" in w for w in out.result["warnings"])


def test_poison_check_false_skips_the_scan(world):
    world.hosts[SRC].domains[NAME] = {"active": True}
    world.poison_verdict = "poisoned"
    out = run({"poison_check": False})
    assert out.result["poison_check"] is None and world.poison_checks == []


def test_poison_check_refuses_a_remote_source_uri_before_connecting(world):
    out = run({"source_uri": "qemu+ssh://root@hv1/system"})
    assert out.failed is True
    assert "poison_check=true scans the VM's QEMU process on the host the module runs on" in out.result["msg"]
    assert world.calls == []


@pytest.mark.parametrize("args,needle", [
    ({"tunnelled": True, "peer2peer": False}, "tunnelled=true needs peer2peer=true"),
    ({"name": ""}, "name is empty"),
    ({"timeout": 0}, "timeout must be a positive number"),
])
def test_bad_input_is_reported_on_a_host_without_python3_libvirt(world, monkeypatch, args, needle):
    monkeypatch.setattr(live_migrate, "libvirt", None)
    out = run(args)
    assert out.failed is True
    assert needle in out.result["msg"]
    assert "libvirt-python" not in out.result["msg"]


def test_good_input_on_a_host_without_python3_libvirt_names_the_library(world, monkeypatch):
    monkeypatch.setattr(live_migrate, "libvirt", None)
    out = run({})
    assert out.failed is True and "python3-libvirt" in out.result["msg"]


def test_raw_os_error_becomes_a_sentence_with_the_path_and_the_fix(world, monkeypatch):
    world.hosts[SRC].domains[NAME] = {"active": True}

    def broken(*_args, **_kwargs):
        raise IsADirectoryError(21, "Is a directory", "/var/lib/libvirt/qemu/save")

    monkeypatch.setattr(live_migrate, "poison_precheck", broken)
    out = run({})
    assert out.failed is True
    assert "[Errno" not in out.result["msg"]
    assert "/var/lib/libvirt/qemu/save" in out.result["msg"] and "give the path of a file" in out.result["msg"]


def test_live_migrate_passes_no_warnings_to_exit_json():
    """ansible-core 2.19 deprecates warnings= in exit_json/fail_json; the module uses module.warn."""
    import inspect
    assert "warnings=" not in inspect.getsource(live_migrate)


# -- issue 19: poison_holes ----------------------------------------------------------------------
HOLE = {"block": "pc.ram", "offset": 16777216, "page-size": 4096, "gpa": 16777216, "hva": 0x7F6F8A000000}
HOLES_ENTRY = {"binary_poison_holes": True, "qemu_hwpoison": [HOLE], "holes_unknown_to_qemu": [],
               "qemu_hwpoison_problem": None}
TARGET = {"name": "hv2", "poison_holes": True, "uffd_poison": True}


class FakeQemu:
    """libvirt_qemu.qemuMonitorCommand: QEMU's reply passed through as libvirt 9.0 does."""

    def __init__(self, world):
        self.world = world
        self.refuse_capability = False

    def qemuMonitorCommand(self, dom, command, flags):
        import json
        request = json.loads(command)
        self.world.calls.append(("qmp", dom.host.uri, request))
        if request["execute"] == "migrate-set-capabilities":
            if self.refuse_capability:  # QEMU without the series: QAPI rejects the enum value
                return json.dumps({"error": {"class": "GenericError", "desc":
                                             "Parameter 'capability' does not accept value 'x-poison-holes'"}})
            return '{"return": {}}'
        if request["execute"] == "x-query-hwpoison":
            return json.dumps({"return": self.world.hosts[dom.host.uri].domains[dom.name_].get("holes", [])})
        return json.dumps({"error": {"class": "CommandNotFound", "desc": "no"}})


@pytest.fixture
def holes_world(world, monkeypatch):
    from ansible_collections.kvm_ras.poison_guard.plugins.module_utils import libvirt as adapter
    world.qemu = FakeQemu(world)
    monkeypatch.setattr(adapter, "load_qemu", lambda: (world.qemu, None))
    world.hosts[SRC].domains[NAME] = {"active": True}
    world.poison_verdict = "poisoned"
    world.holes_entry = dict(HOLES_ENTRY)
    original = FakeDomain._migrate

    def migrate_carrying_holes(self, dest, flags):
        result = original(self, dest, flags)
        dest.domains[self.name_]["holes"] = [dict(HOLE, hva=0x7F1122000000)]
        return result

    monkeypatch.setattr(FakeDomain, "_migrate", migrate_carrying_holes)
    return world


def _qmp(world):
    return [(c[1], c[2]) for c in world.calls if c[0] == "qmp"]


def test_poisoned_vm_moves_with_its_holes_carried(holes_world):
    out = run({"poison_holes": True, "target_facts": TARGET})
    assert out.failed is False and out.result["migrated"] is True
    assert out.result["poison_check"]["with_holes"] is True
    assert _qmp(holes_world) == [
        (SRC, {"execute": "migrate-set-capabilities",
               "arguments": {"capabilities": [{"capability": "x-poison-holes", "state": True}]}}),
        (DST, {"execute": "x-query-hwpoison"})]
    [call] = [c for c in holes_world.calls if c[0] == "migrateToURI3"]
    params = call[2]
    assert "<qemu:arg value=\"migration.x-poison-holes=on\" />" in params["destination_xml"]
    assert 'xmlns:qemu="http://libvirt.org/schemas/domain/qemu/1.0"' in params["destination_xml"]
    assert "x-poison-holes" not in params["persistent_xml"] and "inactive" in params["persistent_xml"]
    assert out.result["holes_carried"] == [dict(HOLE, hva=0x7F1122000000)]
    assert out.result["holes_expected"] == [HOLE]
    assert any("holes carried" in w for w in out.result["warnings"])


@pytest.mark.parametrize("entry_over, target_over, needle", [
    ({"holes_unknown_to_qemu": ["0x7fafe2145000"]}, {}, "not in QEMU's own poison list"),
    ({"binary_poison_holes": False}, {}, "does not carry the x-poison-holes"),
    ({}, {"uffd_poison": False}, "hv2's kernel has no UFFDIO_POISON"),
])
def test_poisoned_vm_that_fails_the_gate_rule_is_not_migrated(holes_world, entry_over, target_over, needle):
    holes_world.holes_entry.update(entry_over)
    out = run({"poison_holes": True, "target_facts": dict(TARGET, **target_over)})
    assert out.failed is True and needle in out.result["msg"]
    assert out.result["failure"]["class"] == "poisoned"
    assert _qmp(holes_world) == [] and not [c for c in holes_world.calls if c[0].startswith("migrate")]
    assert holes_world.hosts[SRC].domains[NAME]["active"] is True


def test_without_poison_holes_a_poisoned_vm_is_refused_as_before(holes_world):
    out = run({"target_facts": TARGET})
    assert out.failed is True and UPSTREAM_REFUSAL in out.result["msg"]


def test_source_qemu_without_the_series_refuses_the_capability_and_nothing_starts(holes_world):
    holes_world.qemu.refuse_capability = True
    out = run({"poison_holes": True, "target_facts": TARGET})
    assert out.failed is True and "lacks the patched_qemu role's x-poison-holes series" in out.result["msg"]
    assert not [c for c in holes_world.calls if c[0] == "migrateToURI3"]


def test_failed_migration_switches_the_capability_off_again(holes_world):
    holes_world.behaviour = "dest_qemu_died"  # e.g. the destination refused at setup (no UFFDIO_POISON)
    out = run({"poison_holes": True, "target_facts": TARGET})
    assert out.failed is True and out.result["running_on"] == "source"
    assert _qmp(holes_world)[-1] == (SRC, {"execute": "migrate-set-capabilities", "arguments": {
        "capabilities": [{"capability": "x-poison-holes", "state": False}]}})


@pytest.mark.parametrize("args, needle", [
    ({"poison_holes": True}, "needs target_facts"),
    ({"poison_holes": True, "target_facts": {"poison_holes": True}}, "no 'uffd_poison'"),
    ({"poison_holes": True, "target_facts": TARGET, "postcopy": True}, "cannot be combined with postcopy"),
])
def test_poison_holes_input_errors_come_before_connecting(holes_world, args, needle):
    out = run(args)
    assert out.failed is True and needle in out.result["msg"]
    assert not [c for c in holes_world.calls if c[0] in ("open", "openReadOnly")]


def test_dest_xml_adds_the_argument_once_and_keeps_other_qemu_args():
    xml = ("<domain type='kvm' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'><name>a</name>"
           "<qemu:commandline><qemu:arg value='-trace'/><qemu:arg value='migration_*'/></qemu:commandline></domain>")
    once = migration.dest_xml_with_poison_holes(xml)
    twice = migration.dest_xml_with_poison_holes(once)
    assert once == twice and once.count("migration.x-poison-holes=on") == 1
    assert "migration_*" in once
    back = migration.without_poison_holes_arg(twice)
    assert "x-poison-holes" not in back and "migration_*" in back and "-trace" in back
    plain = migration.without_poison_holes_arg(migration.dest_xml_with_poison_holes("<domain><name>b</name></domain>"))
    assert "commandline" not in plain
