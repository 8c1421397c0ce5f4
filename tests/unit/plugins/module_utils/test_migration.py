# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Flag building, error classification, job statistics, placement and supervision of live_migrate.

Every libvirt error string below copies a real message. The comment on each says which libvirt
(or QEMU) source produces it; libvirt builds the full text as the error code's prefix from
src/util/virerror.c (e.g. VIR_ERR_INTERNAL_ERROR -> "internal error: %s",
VIR_ERR_OPERATION_ABORTED -> "operation aborted: %s", VIR_ERR_OPERATION_FAILED ->
"operation failed: %s") followed by the reported text; virReportSystemError appends
": <strerror(errno)>".
"""

from __future__ import annotations

import itertools
import threading
import types

import pytest

from ansible_collections.kvm_ras.poison_guard.plugins.module_utils import migration
from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.messages import UPSTREAM_REFUSAL

# --- classification ---------------------------------------------------------------------

CLASSIFIED = [
    # QEMU 9.0 migration/migration.c migrate_prepare() error, wrapped by libvirt
    # src/qemu/qemu_monitor_json.c qemuMonitorJSONCheckErrorFull ("unable to execute QEMU
    # command '%s': %s", VIR_ERR_INTERNAL_ERROR). Same text for virsh migrate, save, managedsave.
    ("internal error: unable to execute QEMU command 'migrate': Can't migrate this vm with hardware "
     "poisoned memory, please reboot the vm and try again", "poisoned"),
    # The same refusal as virsh prints it ("error: " prefix from tools/virsh.c).
    ("error: internal error: unable to execute QEMU command 'migrate': " + UPSTREAM_REFUSAL, "poisoned"),
    # Recorded in the hypervisor lab (libvirt 9.0.0, Debian 12), destination libvirtd stopped,
    # with and without peer-to-peer: src/rpc/virnetsocket.c virNetSocketNewConnectTCP
    # "unable to connect to server at '%s:%s'" + strerror(ECONNREFUSED).
    ("unable to connect to server at 'migrate-hv1:16509': Connection refused", "destination"),
    # Older libvirt (qemu_migration.c qemuMigrationSrcPerformPeer2Peer, VIR_ERR_OPERATION_FAILED)
    # put "Failed to connect to remote libvirt URI %s" in front of the connect error.
    ("operation failed: Failed to connect to remote libvirt URI qemu+tcp://hv2/system: unable to "
     "connect to server at 'hv2:16509': Connection refused", "destination"),
    # Recorded in the hypervisor lab (libvirt 9.0.0), unknown destination host:
    # src/rpc/virnetsocket.c virNetSocketNewConnectTCP getaddrinfo failure (VIR_ERR_SYSTEM_ERROR).
    ("Unable to resolve address 'no-such-host' service '16509': Temporary failure in name resolution",
     "destination"),
    ("Unable to resolve address 'hv9' service '16509': Name or service not known", "destination"),
    # Recorded in the hypervisor lab (libvirt 9.0.0), qemu+ssh to a host that refuses the key:
    # src/rpc/virnetsocket.c virNetSocketReadWire "Cannot recv data: %s" with the ssh stderr and
    # strerror(ECONNRESET).
    ("Cannot recv data: root@migrate-hv1: Permission denied (publickey).: Connection reset by peer",
     "destination"),
    ("Cannot recv data: Connection reset by peer", "destination"),
    # Recorded in the hypervisor lab (libvirt 9.0.0): destination libvirtd killed (SIGKILL) in the
    # middle of a peer-to-peer migration. src/rpc/virnetclient.c (VIR_ERR_INTERNAL_ERROR).
    ("internal error: client socket is closed", "destination"),
    # Recorded in the hypervisor lab (libvirt 9.0.0): the guest's disk path does not exist on
    # the destination (src/storage_file/storage_source.c, virReportSystemError ENOENT).
    ("Cannot access storage file '/var/lib/libvirt/images/d2.img': No such file or directory", "destination"),
    # src/rpc/virnetsocket.c virNetSocketReadWire: EOF -> virReportSystemError(EIO, ...).
    ("End of file while reading data: Input/output error", "destination"),
    # src/qemu/qemu_migration.c (VIR_ERR_OPERATION_FAILED), keepalive to destination lost.
    ("operation failed: Lost connection to destination host", "destination"),
    # src/rpc/virnetsocket.c virNetSocketWriteWire: "Cannot write data" + strerror(EPIPE).
    ("Cannot write data: Broken pipe", "destination"),
    # Destination storage: recorded in the hypervisor lab with --copy-storage-all and no pool
    # (research/lab-feasibility.md §6), VIR_ERR_NO_STORAGE_POOL "Storage pool not found: %s".
    ("Storage pool not found: no storage pool with matching target path '/var/lib/libvirt/images'",
     "destination"),
    # Destination CPU: recorded in the hypervisor lab (research/lab-feasibility.md, KVM section),
    # VIR_ERR_CPU_INCOMPATIBLE "the CPU is incompatible with host CPU: %s".
    ("the CPU is incompatible with host CPU: Host CPU does not provide required features: svm",
     "destination"),
    # Recorded in the hypervisor lab (libvirt 9.0.0) after virsh domjobabort: qemu_migration.c
    # qemuMigrationJobCheckStatus (VIR_ERR_OPERATION_ABORTED "operation aborted: %s",
    # "job '%s' canceled by client" with the job name "migration out"). Without our timeout
    # someone else aborted the job: other.
    ("operation aborted: job 'migration out' canceled by client", "other"),
    # The wording of libvirt before 9.0 (qemuMigrationJobName() "migration out job", "%s: %s").
    ("operation aborted: migration out job: canceled by client", "other"),
    # Recorded in the hypervisor lab: writable disk on non-shared storage without unsafe
    # (research/lab-feasibility.md §6), VIR_ERR_MIGRATE_UNSAFE "Unsafe migration: %s".
    ("Unsafe migration: Migration without shared storage is unsafe", "other"),
    # src/qemu/qemu_migration_cookie.c (VIR_ERR_INTERNAL_ERROR): source and destination share a
    # host UUID.
    ("internal error: Attempt to migrate guest to the same host 3c7a1e4e-8d0f-4b61-9a4e-d0f1e2a3b4c5",
     "other"),
    # src/qemu/qemu_domainjob.c (VIR_ERR_OPERATION_TIMEOUT "Timed out during operation: %s"): a
    # libvirt job lock, not our deadline.
    ("Timed out during operation: cannot acquire state change lock (held by "
     "monitor=remoteDispatchDomainMigratePerform3Params)", "other"),
    # src/qemu/qemu_migration.c qemuMigrationJobCheckStatus, VIR_DOMAIN_JOB_STATUS_FAILED
    # without a QEMU error description.
    ("operation failed: migration out job: unexpectedly failed", "other"),
]


@pytest.mark.parametrize("message,expected", CLASSIFIED)
def test_classify_real_libvirt_messages(message, expected):
    error_class, explanation = migration.classify_error(message)
    assert error_class == expected
    assert explanation


def test_abort_after_our_deadline_is_a_timeout():
    error_class, explanation = migration.classify_error(
        "operation aborted: job 'migration out' canceled by client", timed_out=True)
    assert error_class == "timeout"
    assert "keeps running on the source" in explanation


def test_poison_refusal_wins_over_everything():
    message = "internal error: unable to execute QEMU command 'migrate': " + UPSTREAM_REFUSAL
    for timed_out, phase in itertools.product([False, True], ["migrate", "connect_destination"]):
        assert migration.classify_error(message, timed_out=timed_out, phase=phase)[0] == "poisoned"
    assert "reboot the VM" in migration.classify_error(message)[1]


def test_failure_to_open_the_destination_is_destination_whatever_the_text():
    assert migration.classify_error("authentication unavailable: no polkit agent available",
                                    phase="connect_destination")[0] == "destination"


# A QEMU died. "internal error: qemu unexpectedly closed the monitor" was recorded in the
# hypervisor lab (libvirt 9.0.0) when the destination's incoming QEMU was killed mid-migration;
# libvirt reports the same text when the source QEMU dies (qemu_monitor.c, qemu_process.c),
# e.g. a QEMU older than 9.0 reading a poisoned page (research/poison-detection-facts.md §5).
QEMU_DIED = [
    "internal error: qemu unexpectedly closed the monitor",
    "Unable to read from monitor: Connection reset by peer",
    "operation failed: domain is no longer running",
    "Requested operation is not valid: domain is not running",
]


@pytest.mark.parametrize("message", QEMU_DIED)
def test_qemu_death_is_the_destination_while_the_source_vm_runs(message):
    error_class, explanation = migration.classify_error(message, source_running=True)
    assert error_class == "destination"
    assert "destination QEMU stopped" in explanation


@pytest.mark.parametrize("message", QEMU_DIED)
def test_qemu_death_with_the_source_vm_gone_explains_the_old_qemu_crash(message):
    error_class, explanation = migration.classify_error(message, source_running=False)
    assert error_class == "other"
    assert "source QEMU stopped" in explanation and "9.0" in explanation


@pytest.mark.parametrize("message", QEMU_DIED)
def test_qemu_death_with_unknown_source_is_other(message):
    assert migration.classify_error(message)[0] == "other"


def test_empty_message_is_other():
    assert migration.classify_error(None) == ("other", "")


# --- flags and parameters ---------------------------------------------------------------

DEFAULTS = {
    "name": "web01", "dest_uri": "qemu+tcp://hv2/system", "source_uri": "qemu:///system",
    "live": True, "persistent_dest": True, "undefine_source": True, "peer2peer": True,
    "tunnelled": False, "bandwidth": None, "max_downtime": None, "auto_converge": False,
    "postcopy": False, "copy_storage": "none", "unsafe": False, "timeout": 600.0, "poll_interval": 1.0,
}


def plan(**overrides):
    return migration.build_plan({**DEFAULTS, **overrides})


def test_default_plan_is_live_p2p_persistent_undefine_source():
    p = plan()
    assert p["flags"] == ["VIR_MIGRATE_LIVE", "VIR_MIGRATE_PEER2PEER", "VIR_MIGRATE_PERSIST_DEST",
                          "VIR_MIGRATE_UNDEFINE_SOURCE"]
    assert p["params"] == {}
    assert p["peer2peer"] is True
    assert migration.resolve_flags(p["flags"], types.SimpleNamespace()) == 1 | 2 | 8 | 16


@pytest.mark.parametrize("overrides,flag", [
    ({"tunnelled": True}, "VIR_MIGRATE_TUNNELLED"),
    ({"auto_converge": True}, "VIR_MIGRATE_AUTO_CONVERGE"),
    ({"postcopy": True}, "VIR_MIGRATE_POSTCOPY"),
    ({"unsafe": True}, "VIR_MIGRATE_UNSAFE"),
    ({"copy_storage": "all"}, "VIR_MIGRATE_NON_SHARED_DISK"),
    ({"copy_storage": "inc"}, "VIR_MIGRATE_NON_SHARED_INC"),
])
def test_each_option_sets_its_flag(overrides, flag):
    assert flag in plan(**overrides)["flags"]
    assert flag not in plan()["flags"]


@pytest.mark.parametrize("option,flag", [
    ("live", "VIR_MIGRATE_LIVE"), ("persistent_dest", "VIR_MIGRATE_PERSIST_DEST"),
    ("undefine_source", "VIR_MIGRATE_UNDEFINE_SOURCE"), ("peer2peer", "VIR_MIGRATE_PEER2PEER"),
])
def test_default_flags_can_be_turned_off(option, flag):
    p = plan(**{option: False})
    assert flag not in p["flags"]


def test_bandwidth_becomes_a_typed_parameter():
    p = plan(bandwidth=1)
    assert p["params"] == {"bandwidth": 1}
    fake_libvirt = types.SimpleNamespace(VIR_MIGRATE_PARAM_BANDWIDTH="bandwidth")
    assert migration.resolve_params(p["params"], fake_libvirt) == {"bandwidth": 1}
    assert migration.resolve_params(p["params"], types.SimpleNamespace()) == {"bandwidth": 1}


def test_flag_values_come_from_libvirt_when_it_has_them():
    fake_libvirt = types.SimpleNamespace(VIR_MIGRATE_LIVE=1, VIR_MIGRATE_POSTCOPY=1 << 15)
    assert migration.resolve_flags(["VIR_MIGRATE_LIVE", "VIR_MIGRATE_POSTCOPY"], fake_libvirt) == 1 | 1 << 15
    with pytest.raises(migration.MigrationInputError):
        migration.resolve_flags(["VIR_MIGRATE_NOT_A_FLAG"], fake_libvirt)


def test_known_flag_values_match_libvirt_domain_h():
    # include/libvirt/libvirt-domain.h virDomainMigrateFlags
    assert migration.KNOWN_FLAG_VALUES == {
        "VIR_MIGRATE_LIVE": 1, "VIR_MIGRATE_PEER2PEER": 2, "VIR_MIGRATE_TUNNELLED": 4,
        "VIR_MIGRATE_PERSIST_DEST": 8, "VIR_MIGRATE_UNDEFINE_SOURCE": 16,
        "VIR_MIGRATE_NON_SHARED_DISK": 64, "VIR_MIGRATE_NON_SHARED_INC": 128,
        "VIR_MIGRATE_UNSAFE": 512, "VIR_MIGRATE_AUTO_CONVERGE": 8192, "VIR_MIGRATE_POSTCOPY": 32768,
    }


@pytest.mark.parametrize("overrides,needle", [
    ({"tunnelled": True, "peer2peer": False}, "tunnelled=true needs peer2peer=true"),
    ({"postcopy": True, "live": False}, "postcopy=true needs live=true"),
    ({"copy_storage": "some"}, "copy_storage must be one of none, all, inc"),
    ({"bandwidth": 0}, "bandwidth must be at least 1"),
    ({"max_downtime": -5}, "max_downtime must be at least 1"),
    ({"timeout": 0}, "timeout must be a positive number"),
    ({"poll_interval": 0}, "poll_interval must be a positive number"),
    ({"poll_interval": 10, "timeout": 5}, "must not exceed timeout"),
    ({"dest_uri": ""}, "dest_uri is empty"),
])
def test_impossible_combinations_are_rejected_with_the_fix(overrides, needle):
    with pytest.raises(migration.MigrationInputError) as err:
        plan(**overrides)
    assert needle in str(err.value)


# --- job statistics ---------------------------------------------------------------------

# Keys and units as virDomainGetJobStats reports them (include/libvirt/libvirt-domain.h
# VIR_DOMAIN_JOB_*): a completed live migration of the 64 MiB lab guest.
COMPLETED_STATS = {
    "type": 3, "operation": 2, "time_elapsed": 812, "time_elapsed_net": 809, "downtime": 21,
    "downtime_net": 19, "setup_time": 6, "data_total": 67773440, "data_processed": 624640,
    "data_remaining": 0, "memory_total": 67773440, "memory_processed": 624640, "memory_remaining": 0,
    "memory_constant": 16384, "memory_normal": 120, "memory_normal_bytes": 491520,
    "memory_bps": 44040192, "memory_dirty_rate": 4, "memory_iteration": 2, "success": True,
}


def test_shape_job_stats_names_units_and_keeps_absent_keys_null():
    shaped = migration.shape_job_stats(COMPLETED_STATS)
    assert shaped["duration_ms"] == 812
    assert shaped["downtime_ms"] == 21
    assert shaped["data_total_bytes"] == 67773440
    assert shaped["data_processed_bytes"] == 624640
    assert shaped["data_remaining_bytes"] == 0
    assert shaped["memory_iterations"] == 2
    assert shaped["job_type"] == "completed"
    assert shaped["disk_total_bytes"] is None
    assert shaped["error"] is None
    assert migration.shape_job_stats({}) is None
    assert migration.shape_job_stats({"type": 4, "errmsg": "canceled by client"})["job_type"] == "failed"
    assert migration.shape_job_stats({"type": 4, "errmsg": "canceled by client"})["error"] == "canceled by client"


# --- placement --------------------------------------------------------------------------

@pytest.mark.parametrize("source,destination,started,expected", [
    (True, False, True, "source"),
    (False, True, True, "destination"),
    (True, True, True, "both"),
    (False, False, True, "none"),
    (True, None, False, "source"),
    (True, None, True, "unknown"),
    (False, None, True, "unknown"),
    (None, True, True, "destination"),
    (None, False, True, "unknown"),
    (None, None, True, "unknown"),
])
def test_where_running(source, destination, started, expected):
    assert migration.where_running(source, destination, started) == expected


def test_critical_placements():
    assert migration.CRITICAL_PLACEMENTS == ("both", "none")


# --- supervision ------------------------------------------------------------------------

class FakeClock:
    """A clock that moves only when the fake job statistics are read (one step per poll)."""

    def __init__(self, step):
        self.now = 0.0
        self.step = step

    def __call__(self):
        return self.now

    def tick(self):
        self.now += self.step


def test_supervise_returns_when_the_migration_finishes():
    clock = FakeClock(1.0)
    release = threading.Event()

    def start():
        release.wait(5)
        return "ok"

    polls = []

    def poll():
        clock.tick()
        polls.append(clock.now)
        if len(polls) == 3:
            release.set()
        return {"type": 2, "data_processed": len(polls) * 1000, "data_remaining": 5000, "memory_iteration": 1}

    out = migration.supervise(start, poll, abort=lambda: pytest.fail("must not abort"), timeout=100,
                              poll_interval=0.01, clock=clock)
    assert out["finished"] is True
    assert out["error"] is None
    assert out["value"] == "ok"
    assert out["abort_requested"] is False
    assert out["progress"][0]["data_processed_bytes"] == 1000
    assert out["last_stats"]["type"] == 2


def test_supervise_aborts_at_the_deadline_and_reports_the_libvirt_error():
    clock = FakeClock(1.0)
    aborted = threading.Event()

    class Canceled(Exception):
        pass

    def start():
        aborted.wait(5)
        # what libvirt 9.0 raises after virDomainAbortJob (recorded in the lab, see CLASSIFIED)
        raise Canceled("operation aborted: job 'migration out' canceled by client")

    def poll():
        clock.tick()
        return {"type": 2, "data_processed": 1, "data_remaining": 1}

    out = migration.supervise(start, poll, abort=aborted.set, timeout=3, poll_interval=0.01, clock=clock)
    assert out["deadline_passed"] is True
    assert out["abort_requested"] is True
    assert out["finished"] is True
    assert isinstance(out["error"], Canceled)
    assert migration.classify_error(str(out["error"]), timed_out=out["abort_requested"])[0] == "timeout"
    assert len(out["progress"]) <= 20


def test_supervise_gives_up_waiting_when_abort_does_not_stop_the_job():
    clock = FakeClock(1.0)
    stop = threading.Event()

    def poll():
        clock.tick()
        return None

    def abort():
        raise RuntimeError("Requested operation is not valid: no job is active on the domain")

    try:
        out = migration.supervise(lambda: stop.wait(5), poll, abort=abort, timeout=2, poll_interval=0.01,
                                  abort_grace=3, clock=clock)
    finally:
        stop.set()
    assert out["finished"] is False
    assert out["abort_requested"] is True
    assert "no job is active" in out["abort_error"]


def test_supervise_keeps_watching_while_the_abort_call_hangs():
    # libvirt 9.0's client was seen to hold an abort until the migration it should have
    # cancelled had completed: the job must still be watched (and its end seen) meanwhile.
    clock = FakeClock(1.0)
    done = threading.Event()
    release_abort = threading.Event()
    polls = []

    def poll():
        clock.tick()
        polls.append(clock.now)
        if len(polls) == 8:
            done.set()  # the migration completes although the abort was asked for at t=3
        return {"type": 2, "data_processed": len(polls), "data_remaining": 1}

    try:
        out = migration.supervise(lambda: done.wait(5) and "completed", poll, abort=lambda: release_abort.wait(5),
                                  timeout=3, poll_interval=0.01, clock=clock)
    finally:
        release_abort.set()
    assert out["abort_requested"] is True
    assert out["finished"] is True
    assert out["value"] == "completed"
    assert out["abort_pending"] is True
    assert max(sample["elapsed_s"] for sample in out["progress"]) > 3, "polling went on after the abort"
    assert migration.describe_abort(out) == "libvirt had not answered the abort request"


def test_describe_abort_names_what_libvirt_answered():
    base = {"abort_pending": False, "abort_error": None, "abort_seconds": None}
    assert migration.describe_abort(base) == "no abort was requested"
    assert migration.describe_abort({**base, "abort_seconds": 0.25}) == "libvirt accepted the abort after 0.2 s"
    assert "no job is active" in migration.describe_abort({**base, "abort_error": "no job is active", "abort_seconds": 0.1})


def test_supervise_switches_to_postcopy_instead_of_aborting():
    clock = FakeClock(1.0)
    switched = threading.Event()

    def poll():
        clock.tick()
        return {"type": 2}

    out = migration.supervise(lambda: switched.wait(5) and "done", poll,
                              abort=lambda: pytest.fail("post-copy must never be aborted"),
                              timeout=2, poll_interval=0.01, switch_to_postcopy=switched.set, clock=clock)
    assert out["postcopy_started"] is True
    assert out["abort_requested"] is False
    assert out["finished"] is True
    assert out["value"] == "done"


def test_supervise_keeps_polling_through_poll_errors():
    clock = FakeClock(1.0)
    done = threading.Event()
    calls = []

    def poll():
        clock.tick()
        calls.append(1)
        if len(calls) == 2:
            done.set()
        raise RuntimeError("Requested operation is not valid: no job is active on the domain")

    out = migration.supervise(lambda: done.wait(5), poll, abort=lambda: None, timeout=100,
                              poll_interval=0.01, clock=clock)
    assert out["finished"] is True
    assert out["poll_errors"] >= 1
    assert out["error"] is None
