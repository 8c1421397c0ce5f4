# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The memory_errors event source (extensions/eda/plugins/event_source/memory_errors.py).

The kernel lines are the real output of Debian's kernels captured in the poison lab
(/work/shared/research/nested-hwpoison.md: Debian 6.1 "one full run", and the 6.12 line quoted
there), wrapped in the framings the kernel and journald really use:

- /dev/kmsg records "prio,seq,usec,flags;message" (Documentation/ABI/testing/dev-kmsg), with
  continuation lines " KEY=value";
- dmesg lines "[  seconds.micro] message" (exactly as captured);
- ``journalctl -o export`` entries (KEY=value lines, a blank line ends an entry) and
  ``journalctl -o json`` lines, with journald's own field names.

rasdaemon rows are written into a real sqlite database with rasdaemon's own schema
(ras-record.c: mc_event; memory_failure_event as rasdaemon >= 0.6.7 creates it) and
timestamps in its "%Y-%m-%d %H:%M:%S %z" format.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import os
import sqlite3
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[4]
PLUGIN = REPO / "extensions" / "eda" / "plugins" / "event_source" / "memory_errors.py"


def load_plugin():
    spec = importlib.util.spec_from_file_location("kvm_ras_memory_errors_under_test", PLUGIN)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


me = load_plugin()

BOOT = 1_765_000_000.0  # wall-clock time of boot used to date kmsg/dmesg records

# Debian 6.1, nested poison lab (nested-hwpoison.md, "Exact kernel / QEMU output").
DEB61_RECOVERED = "[   15.096747] Memory failure: 0x8d0d: recovery action for dirty LRU page: Recovered"
DEB61_SIGBUS_MEMHOG = "[   17.930129] Memory failure: 0xa3ef: Sending SIGBUS to memhog:122 due to hardware memory corruption"
DEB61_KILLING = "[   17.454480] MCE: Killing memhog:117 due to hardware memory corruption fault at 7f3fd8370000"
DEB61_INJECTING = "[   15.083498] Injecting memory failure at pfn 0x8d0d"
DEB61_SIGBUS_QEMU = ("[   59.737750] Memory failure: 0xae00: Sending SIGBUS to qemu-system-x86:166 due to hardware "
                     "memory corruption")
DEB61_MIGRATION_KILL = "[   50.632238] MCE: Killing live_migration:155 due to hardware memory corruption fault at 7f4d01e00000"
# Debian 6.12, same lab (quoted in nested-hwpoison.md without its timestamp).
DEB612_SIGBUS = "Memory failure: 0xb3d3: Sending SIGBUS to memhog:176 due to hardware memory corruption"


def feed_all(lines, boot=BOOT):
    parser = me.KernelLogParser(boot=boot)
    events = []
    for line in lines:
        events.extend(parser.feed(line))
    events.extend(parser.close())
    return parser, events


# --- kernel messages ---------------------------------------------------------------------


def test_recovery_line_of_debian_61():
    _parser, (event,) = feed_all([DEB61_RECOVERED])
    assert event["kind"] == "memory_failure"
    assert event["pfn"] == "0x8d0d"
    assert event["result"] == "Recovered"
    assert event["page_type"] == "dirty LRU page"
    assert event["process"] is None and event["pid"] is None
    assert event["uptime"] == pytest.approx(15.096747)
    assert event["time"] == me.utc_iso(BOOT + 15.096747)
    assert event["message"] == DEB61_RECOVERED.split("] ", 1)[1]


def test_sigbus_lines_name_the_process_and_thread_id():
    _parser, events = feed_all([DEB61_SIGBUS_MEMHOG, DEB61_SIGBUS_QEMU, DEB612_SIGBUS])
    assert [(e["pfn"], e["process"], e["pid"]) for e in events] == [
        ("0xa3ef", "memhog", 122), ("0xae00", "qemu-system-x86", 166), ("0xb3d3", "memhog", 176)]
    assert all(e["kind"] == "memory_failure" and e["result"] is None for e in events)
    assert events[1]["detail"] == "Sending SIGBUS to qemu-system-x86:166 due to hardware memory corruption"


def test_arch_kill_line_is_a_consumed_poisoned_page():
    _parser, events = feed_all([DEB61_KILLING, DEB61_MIGRATION_KILL])
    assert [(e["process"], e["pid"], e["address"], e["result"]) for e in events] == [
        ("memhog", 117, "0x7f3fd8370000", "Killed"), ("live_migration", 155, "0x7f4d01e00000", "Killed")]
    assert all(e["pfn"] is None for e in events)


def test_injection_announcement_is_not_a_second_event():
    # hwpoison_inject prints "Injecting memory failure at pfn" and then the real line.
    _parser, events = feed_all([DEB61_INJECTING, DEB61_RECOVERED])
    assert [e["pfn"] for e in events] == ["0x8d0d"]


@pytest.mark.parametrize("message, kind, pfn, result", [
    # mm/memory-failure.c format strings of 6.1/6.12 (poison-detection-facts.md section 3.1)
    ("Memory failure: 0x1f2e3: recovery action for huge page: Delayed", "memory_failure", "0x1f2e3", "Delayed"),
    ("Memory failure: 0x1f2e3: recovery action for already poisoned: Failed", "memory_failure", "0x1f2e3", "Failed"),
    ("Memory failure: 0x1f2e3: recovery action for reserved kernel page: Ignored", "memory_failure", "0x1f2e3",
     "Ignored"),
    ("Memory failure: 0x1f2e3: already hardware poisoned", "memory_failure", "0x1f2e3", "already hardware poisoned"),
    ("Soft offline: 0x4242: invalidated", "soft_offline", "0x4242", "invalidated"),
    ("soft offline: 0x4242 page already poisoned", "soft_offline", "0x4242", "page already poisoned"),
    ("soft_offline: 0x4242: invalidated", "soft_offline", "0x4242", "invalidated"),
    ("Unpoison: Software-unpoisoned page 0x4242", "unpoison", "0x4242", "Software-unpoisoned page 0x4242"),
    # <= 4.6 prefix
    ("MCE 0x9a00: Killing qemu-kvm:4242 due to hardware memory corruption", "memory_failure", "0x9a00", None),
])
def test_kernel_message_formats(message, kind, pfn, result):
    fields = me.parse_kernel_message(message)
    assert (fields["kind"], fields["pfn"], fields["result"]) == (kind, pfn, result)


def test_vcpu_thread_names_keep_their_spaces():
    fields = me.parse_kernel_message(
        "Memory failure: 0xbe00: Sending SIGBUS to CPU 0/KVM:4251 due to hardware memory corruption")
    assert (fields["process"], fields["pid"]) == ("CPU 0/KVM", 4251)


def test_edac_corrected_error_line():
    # drivers/edac/edac_mc.c prints "EDAC MC%d: %d CE %s on %s (%s ...)"
    fields = me.parse_kernel_message(
        "EDAC MC0: 3 CE memory read error on CPU_SrcID#0_MC#0_Chan#1_DIMM#0 (channel:1 slot:0 page:0x12345 "
        "offset:0x0 grain:32 syndrome:0x0)")
    assert fields["kind"] == "corrected_errors"
    assert fields["count"] == 3
    assert fields["dimm"] == "mc0 CPU_SrcID#0_MC#0_Chan#1_DIMM#0"
    assert fields["pfn"] == "0x12345"
    assert fields["location"] == {"channel": 1, "slot": 0}


@pytest.mark.parametrize("line", [
    "[    0.000000] Linux version 6.1.0-41-amd64 (debian-kernel@lists.debian.org)",
    "[   12.000000] EXT4-fs (vda1): mounted filesystem",
    "qemu-system-x86_64: warning: Guest MCE Memory Error at QEMU addr 0x7f7c15e00000 and GUEST addr 0x2000000 "
    "of type BUS_MCEERR_AO injected",
    "",
    "6,99,1000,-;random: crng init done",
])
def test_other_lines_produce_nothing(line):
    parser, events = feed_all([line])
    assert events == [] and parser.skipped == 0


def test_malformed_lines_are_logged_and_skipped(caplog):
    lines = [DEB61_RECOVERED,
             "[   16.000000] Memory failure: 0xzz12: recovery action for dirty LRU page: Recovered",
             "[   16.100000] Memory failure: 0x8d0d",          # cut off
             "{\"MESSAGE\": \"Memory failure: 0x1",              # a broken JSON line
             DEB61_SIGBUS_MEMHOG]
    with caplog.at_level(logging.WARNING):
        parser, events = feed_all(lines)
    assert [e["pfn"] for e in events] == ["0x8d0d", "0xa3ef"]
    assert parser.skipped == 3
    assert sum("skipped a malformed" in r.getMessage() for r in caplog.records) == 3


# --- framings ----------------------------------------------------------------------------


def test_kmsg_records_and_continuation_lines():
    # /dev/kmsg: "prio,seq,usec,flags[,more];message", prio 3 = facility 0 (kernel), level err.
    records = [
        "3,1234,59737750,-;" + DEB61_SIGBUS_QEMU.split("] ", 1)[1],
        " SUBSYSTEM=memory",
        "3,1235,59745538,-,caller=T166;Memory failure: 0xae00: recovery action for dirty LRU page: Recovered",
        "4,1236,59745600,c;Memory failure: 0xae01: recovery action for clean LRU page: Recovered",
    ]
    _parser, events = feed_all(records)
    assert [(e["seq"], e["pfn"], e["result"]) for e in events] == [
        (1234, "0xae00", None), (1235, "0xae00", "Recovered"), (1236, "0xae01", "Recovered")]
    assert events[0]["time"] == me.utc_iso(BOOT + 59.73775)
    assert events[0]["process"] == "qemu-system-x86"


def test_kmsg_escapes_are_decoded():
    record = "3,7,1000,-;Memory failure: 0x10: Sending SIGBUS to a\\x20b:7 due to hardware memory corruption"
    _parser, (event,) = feed_all([record])
    assert event["process"] == "a b"


def test_journald_export_entries():
    # journalctl -k -o export: fields in any order, entries separated by a blank line.
    export = [
        "__CURSOR=s=6a1b;i=1a2b;b=0c;m=3a2f0b;t=5f0;x=1",
        "__REALTIME_TIMESTAMP=1765000015096747",
        "__MONOTONIC_TIMESTAMP=15096747",
        "_BOOT_ID=0c1d",
        "_TRANSPORT=kernel",
        "PRIORITY=3",
        "SYSLOG_IDENTIFIER=kernel",
        "MESSAGE=Memory failure: 0x8d0d: recovery action for dirty LRU page: Recovered",
        "_HOSTNAME=hv1",
        "",
        "__CURSOR=s=6a1b;i=1a2c",
        "__REALTIME_TIMESTAMP=1765000016000000",
        "_TRANSPORT=kernel",
        "MESSAGE=EXT4-fs (vda1): mounted filesystem",
        "",
        "__CURSOR=s=6a1b;i=1a2d",
        "__REALTIME_TIMESTAMP=1765000017930129",
        "_TRANSPORT=kernel",
        "MESSAGE=" + DEB61_SIGBUS_MEMHOG.split("] ", 1)[1],
        # the last entry of a file may lack its blank line: close() flushes it
    ]
    _parser, events = feed_all(export)
    assert [(e["pfn"], e["time"], e["log_hostname"] if "log_hostname" in e else None) for e in events] == [
        ("0x8d0d", me.utc_iso(1765000015.096747), "hv1"), ("0xa3ef", me.utc_iso(1765000017.930129), None)]


def test_journald_json_lines_and_non_kernel_entries():
    lines = [
        json.dumps({"__REALTIME_TIMESTAMP": "1765000015096747", "_TRANSPORT": "kernel",
                    "MESSAGE": "Memory failure: 0x8d0d: recovery action for dirty LRU page: Recovered"}),
        # a user-space program writing the same words is not the kernel
        json.dumps({"__REALTIME_TIMESTAMP": "1765000015096748", "_TRANSPORT": "syslog", "SYSLOG_IDENTIFIER": "logger",
                    "MESSAGE": "Memory failure: 0x1: recovery action for dirty LRU page: Recovered"}),
        # journald stores non-UTF-8 messages as byte arrays
        json.dumps({"__REALTIME_TIMESTAMP": "1765000015100000", "_TRANSPORT": "kernel",
                    "MESSAGE": list(b"Memory failure: 0x8d0e: recovery action for dirty LRU page: Recovered")}),
    ]
    _parser, events = feed_all(lines)
    assert [e["pfn"] for e in events] == ["0x8d0d", "0x8d0e"]


def test_syslog_and_iso_framings():
    _parser, events = feed_all([
        "Dec  6 02:17:27 hv1 kernel: [   15.096747] Memory failure: 0x8d0d: recovery action for dirty LRU page: Recovered",
        "2026-12-06T02:17:28.500000+00:00 hv1 kernel: Memory failure: 0x8d0e: recovery action for dirty LRU page: Recovered",
    ])
    assert [e["pfn"] for e in events] == ["0x8d0d", "0x8d0e"]
    assert events[0]["log_hostname"] == "hv1"
    assert events[1]["time"] == "2026-12-06T02:17:28.500000Z"


# --- domains, arguments, storms --------------------------------------------------------------


def make_libvirt_run(tmp_path, name="vm-a", pid=4242, uuid="6f1d3a52-2c55-4c2f-9e0b-0d1e2f3a4b5c"):
    """libvirt's /run/libvirt/qemu: <name>.pid (the QEMU pid) and <name>.xml, the live status XML
    (<domstatus> wrapping the <domain>), as libvirtd 9.0 writes them."""
    run = tmp_path / "run"
    run.mkdir()
    (run / (name + ".pid")).write_text("%d" % pid)
    (run / (name + ".xml")).write_text(
        "<!--\nWARNING: THIS IS AN AUTO-GENERATED FILE.\n-->\n"
        "<domstatus state='running' reason='booted' pid='%d'>\n"
        "  <monitor path='/var/lib/libvirt/qemu/domain-1-%s/monitor.sock' type='unix'/>\n"
        "  <domain type='kvm' id='1'>\n    <name>%s</name>\n    <uuid>%s</uuid>\n"
        "    <memory unit='KiB'>65536</memory>\n  </domain>\n</domstatus>\n" % (pid, name, name, uuid))
    proc = tmp_path / "proc"
    # a vCPU thread 4251 of QEMU process 4242 (/proc/<tid>/status resolves thread ids too)
    for tid, tgid, comm in ((4242, 4242, "qemu-system-x86"), (4251, 4242, "CPU 0/KVM"), (77, 77, "memhog")):
        (proc / str(tid)).mkdir(parents=True)
        (proc / str(tid) / "status").write_text("Name:\t%s\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t%d\n"
                                                "Ngid:\t0\nPid:\t%d\n" % (comm, tgid, tid))
    return proc, run


def test_domain_of_a_qemu_thread(tmp_path):
    proc, run = make_libvirt_run(tmp_path)
    expected = {"name": "vm-a", "uuid": "6f1d3a52-2c55-4c2f-9e0b-0d1e2f3a4b5c"}
    assert me.domain_of_pid(4251, str(proc), str(run)) == expected   # vCPU thread
    assert me.domain_of_pid(4242, str(proc), str(run)) == expected   # main thread
    assert me.domain_of_pid(77, str(proc), str(run)) is None          # not a domain's
    assert me.domain_of_pid(99999, str(proc), str(run)) is None       # gone


def test_validate_args_defaults_and_errors():
    args = me.validate_args({"kernel_log": "/tmp/x", "corrected_storm_count": "7", "kernel_log_from_start": "yes",
                             "libvirt_uri": "", "eda_feedback_queue": object()})
    assert args["corrected_storm_count"] == 7 and args["kernel_log_from_start"] is True
    assert args["libvirt_uri"] is None and args["rasdaemon_interval"] == 5.0
    with pytest.raises(me.SourceArgumentError, match="unknown argument.*kernellog"):
        me.validate_args({"kernellog": "/x"})
    with pytest.raises(me.SourceArgumentError, match="corrected_storm_count='many' is not a int"):
        me.validate_args({"corrected_storm_count": "many"})
    with pytest.raises(me.SourceArgumentError, match="no source"):
        me.validate_args({"kernel_log": ""})
    with pytest.raises(me.SourceArgumentError, match="not a host name"):
        me.validate_args({"host": "hv1; rm -rf /"})
    with pytest.raises(me.SourceArgumentError, match="must be 1 or more"):
        me.validate_args({"corrected_storm_count": 0})


def test_storm_counter_slides_per_dimm():
    storms = me.StormCounter(threshold=5, minutes=10)
    t0 = 1_765_000_000.0
    assert storms.add("hv1", "mc0 DIMM_A1", 2, t0)["storm"] is False
    assert storms.add("hv1", "mc0 DIMM_B1", 4, t0 + 1)["storm"] is False     # another DIMM
    third = storms.add("hv1", "mc0 DIMM_A1", 3, t0 + 60)
    assert third == {"window_count": 5, "window_minutes": 10, "threshold": 5, "storm": True}
    # 10 min 50 s after the first: the first 2 fell out of the window, the 3 of t0+60 did not
    assert storms.add("hv1", "mc0 DIMM_A1", 1, t0 + 650)["window_count"] == 4


def test_libvirt_event_arguments():
    fields = me.libvirt_memory_failure("vm-a", "6f1d3a52-2c55-4c2f-9e0b-0d1e2f3a4b5c", 1, 1, 0, epoch=BOOT)
    assert fields["kind"] == "memory_failure"
    assert fields["vm"] == {"name": "vm-a", "uuid": "6f1d3a52-2c55-4c2f-9e0b-0d1e2f3a4b5c"}
    assert (fields["recipient"], fields["action"], fields["action_required"], fields["recursive"]) == (
        "guest", "inject", False, False)
    assert me.libvirt_memory_failure("v", "u", 0, 2, 3)["action"] == "fatal"
    assert me.libvirt_memory_failure("v", "u", 0, 2, 3)["recursive"] is True


# --- rasdaemon ---------------------------------------------------------------------------------

MC_EVENT_DDL = ("CREATE TABLE IF NOT EXISTS mc_event (id INTEGER PRIMARY KEY, timestamp TEXT, err_count INTEGER, "
                "err_type TEXT, err_msg TEXT, label TEXT, mc INTEGER, top_layer INTEGER, middle_layer INTEGER, "
                "lower_layer INTEGER, address INTEGER, grain INTEGER, syndrome INTEGER, driver_detail TEXT)")
MF_EVENT_DDL = ("CREATE TABLE IF NOT EXISTS memory_failure_event (id INTEGER PRIMARY KEY, timestamp TEXT, "
                "pfn TEXT, page_type TEXT, action_result TEXT)")


def ras_db(path, tables=(MC_EVENT_DDL, MF_EVENT_DDL)):
    conn = sqlite3.connect(path)
    for ddl in tables:
        conn.execute(ddl)
    conn.commit()
    return conn


def mc_row(conn, stamp, count, label="CPU_SrcID#0_MC#0_Chan#1_DIMM#0", err_type="Corrected", address=0x12345000):
    conn.execute("INSERT INTO mc_event (timestamp, err_count, err_type, err_msg, label, mc, top_layer, middle_layer, "
                 "lower_layer, address, grain, syndrome, driver_detail) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                 (stamp, count, err_type, "memory read error", label, 0, 0, 1, 0, address, 32, 0,
                  "err_code:0x0101:0x0090 ProcessorSocketId:0x0"))
    conn.commit()


def mf_row(conn, stamp, pfn, page_type="dirty LRU page", result="Recovered"):
    conn.execute("INSERT INTO memory_failure_event (timestamp, pfn, page_type, action_result) VALUES (?,?,?,?)",
                 (stamp, pfn, page_type, result))
    conn.commit()


def test_rasdaemon_rows():
    fields = me.rasdaemon_memory_failure({"id": 3, "timestamp": "2026-12-06 02:17:27 +0000", "pfn": "0x8d0d",
                                          "page_type": "dirty LRU page", "action_result": "Recovered"})
    assert (fields["kind"], fields["pfn"], fields["result"], fields["time"]) == (
        "memory_failure", "0x8d0d", "Recovered", "2026-12-06T02:17:27.000000Z")
    mc = me.rasdaemon_mc_event({"id": 9, "timestamp": "2026-12-06 03:17:27 +0100", "err_count": 4,
                                "err_type": "Corrected", "err_msg": "memory read error", "label": "DIMM_A1", "mc": 0,
                                "top_layer": 0, "middle_layer": 1, "lower_layer": -1, "address": 0x12345000})
    assert (mc["kind"], mc["count"], mc["dimm"], mc["pfn"], mc["time"]) == (
        "corrected_errors", 4, "mc0 DIMM_A1", "0x12345", "2026-12-06T02:17:27.000000Z")
    assert me.rasdaemon_mc_event({"id": 1, "err_type": "Info", "err_count": 1}) is None
    with pytest.raises(ValueError, match="no readable pfn"):
        me.rasdaemon_memory_failure({"id": 4, "pfn": "page?"})


# --- main(): the source as ansible-rulebook runs it -------------------------------------------------


async def drain(queue, count, timeout=10.0):
    events = []
    while len(events) < count:
        events.append(await asyncio.wait_for(queue.get(), timeout))
    return events


async def run_source(args, body):
    queue = asyncio.Queue()
    task = asyncio.create_task(me.main(queue, args))
    try:
        return await body(queue, task)
    finally:
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass


def test_main_follows_an_appended_kernel_log(tmp_path, caplog):
    log = tmp_path / "kern.log"
    log.write_text(DEB61_RECOVERED + "\n")          # already there: not replayed (follow from the end)
    proc, run = make_libvirt_run(tmp_path, pid=166)

    async def body(queue, task):
        for _attempt in range(100):
            if any("following" in r.getMessage() for r in caplog.records):
                break
            await asyncio.sleep(0.05)
        with open(log, "a") as handle:
            handle.write(DEB61_INJECTING + "\n")
            handle.write("[   59.9] Memory failure: 0xq: garbage\n")   # malformed: skipped, source lives on
            handle.write(DEB61_SIGBUS_QEMU + "\n")
            handle.write("[   60.0] Memory failure: 0xae00: recovery action for dirty")  # no newline yet
            handle.flush()
            await asyncio.sleep(0.3)
            handle.write(" LRU page: Recovered\n")
        events = await drain(queue, 2)
        await asyncio.sleep(0.3)
        assert queue.empty() and not task.done()
        return events

    with caplog.at_level(logging.INFO):
        events = asyncio.run(run_source({"kernel_log": str(log), "host": "hv1", "poll_interval": 0.05,
                                         "proc_root": str(proc), "libvirt_run_dir": str(run)}, body))
    first, second = (e["memory_error"] for e in events)
    assert (first["host"], first["source"], first["kind"], first["pfn"], first["process"], first["pid"]) == (
        "hv1", "kernel_log", "memory_failure", "0xae00", "qemu-system-x86", 166)
    assert first["vm"] == {"name": "vm-a", "uuid": "6f1d3a52-2c55-4c2f-9e0b-0d1e2f3a4b5c"}
    assert (second["pfn"], second["result"], second["vm"]) == ("0xae00", "Recovered", None)
    assert any("skipped a malformed line" in r.getMessage() for r in caplog.records)


def test_main_reads_from_start_and_survives_truncation(tmp_path):
    log = tmp_path / "kern.log"
    log.write_text(DEB61_RECOVERED + "\n")

    async def body(queue, _task):
        (first,) = await drain(queue, 1)
        await asyncio.sleep(0.2)
        log.write_text("")                          # logrotate copytruncate: cut to 0 ...
        await asyncio.sleep(0.3)
        log.write_text(DEB612_SIGBUS + "\n")        # ... then the kernel log goes on
        (second,) = await drain(queue, 1)
        return first, second

    first, second = asyncio.run(run_source({"kernel_log": str(log), "kernel_log_from_start": True, "host": "hv2",
                                            "poll_interval": 0.05}, body))
    assert first["memory_error"]["pfn"] == "0x8d0d"
    assert second["memory_error"]["pfn"] == "0xb3d3"


def test_main_reopens_a_rotated_log(tmp_path):
    log = tmp_path / "kern.log"
    log.write_text("")

    async def body(queue, _task):
        await asyncio.sleep(0.3)
        with open(log, "a") as handle:
            handle.write(DEB61_RECOVERED + "\n")
        (first,) = await drain(queue, 1)
        with open(log, "a") as handle:               # written just before logrotate renames it
            handle.write(DEB61_SIGBUS_MEMHOG + "\n")
            log.rename(tmp_path / "kern.log.1")      # logrotate's default: rename, new file
        log.write_text(DEB61_SIGBUS_QEMU + "\n")
        rest = await drain(queue, 2)
        return [first] + rest

    events = asyncio.run(run_source({"kernel_log": str(log), "host": "hv1", "poll_interval": 0.5}, body))
    assert [e["memory_error"]["pfn"] for e in events] == ["0x8d0d", "0xa3ef", "0xae00"]


def test_main_says_when_it_cannot_read_the_log(tmp_path):
    """A path that exists but cannot be read as a log (a directory: EISDIR, also for root)."""
    log = tmp_path / "kern.log"
    log.mkdir()
    with pytest.raises(me.SourceArgumentError, match="cannot read .*kern.log"):
        asyncio.run(me.main(asyncio.Queue(), {"kernel_log": str(log)}))


def test_main_polls_rasdaemon_and_flags_a_storm(tmp_path, caplog):
    db = tmp_path / "ras-mc_event.db"
    conn = ras_db(str(db))
    mc_row(conn, "2026-12-06 01:00:00 +0000", 1)      # before the source starts: not replayed

    async def body(queue, _task):
        await asyncio.sleep(0.4)
        mf_row(conn, "2026-12-06 02:17:27 +0000", "0x8d0d")
        mc_row(conn, "2026-12-06 02:18:00 +0000", 2)
        mc_row(conn, "2026-12-06 02:18:30 +0000", 2, label="CPU_SrcID#0_MC#0_Chan#0_DIMM#0")  # another DIMM
        mc_row(conn, "2026-12-06 02:19:00 +0000", 1)
        conn.execute("INSERT INTO memory_failure_event (timestamp, pfn, page_type, action_result) "
                     "VALUES ('2026-12-06 02:20:00 +0000', 'garbage', 'x', 'Failed')")   # malformed row
        conn.commit()
        mc_row(conn, "2026-12-06 02:21:00 +0000", 1, err_type="Info")                    # not an error
        return await drain(queue, 4)

    with caplog.at_level(logging.WARNING):
        events = asyncio.run(run_source({"kernel_log": "", "rasdaemon_db": str(db), "rasdaemon_interval": 0.1,
                                         "host": "hv1", "corrected_storm_count": 3, "corrected_storm_minutes": 10},
                                        body))
    events = [e["memory_error"] for e in events]
    mf = [e for e in events if e["kind"] == "memory_failure"]
    ce = [e for e in events if e["kind"] == "corrected_errors"]
    assert [(e["pfn"], e["result"], e["source"]) for e in mf] == [("0x8d0d", "Recovered", "rasdaemon")]
    assert [(e["dimm"], e["count"], e["window_count"], e["storm"]) for e in ce] == [
        ("mc0 CPU_SrcID#0_MC#0_Chan#1_DIMM#0", 2, 2, False),
        ("mc0 CPU_SrcID#0_MC#0_Chan#0_DIMM#0", 2, 2, False),
        ("mc0 CPU_SrcID#0_MC#0_Chan#1_DIMM#0", 1, 3, True)]
    assert any("skipped a malformed row" in r.getMessage() for r in caplog.records)


def test_main_waits_for_a_missing_rasdaemon_table(tmp_path, caplog):
    db = tmp_path / "ras-mc_event.db"
    conn = ras_db(str(db), tables=(MC_EVENT_DDL,))   # rasdaemon built without --enable-memory-failure

    async def body(queue, _task):
        await asyncio.sleep(0.3)
        conn.execute(MF_EVENT_DDL)
        mf_row(conn, "2026-12-06 02:17:27 +0000", "0x8d0d")
        return await drain(queue, 1)

    with caplog.at_level(logging.WARNING):
        (event,) = asyncio.run(run_source({"kernel_log": "", "rasdaemon_db": str(db), "rasdaemon_interval": 0.1,
                                           "rasdaemon_from_start": True, "host": "hv1"}, body))
    assert event["memory_error"]["pfn"] == "0x8d0d"
    assert any("memory_failure_event not readable" in r.getMessage() for r in caplog.records)


def test_main_refuses_bad_arguments_before_starting():
    with pytest.raises(me.SourceArgumentError, match="no source"):
        asyncio.run(me.main(asyncio.Queue(), {"kernel_log": "", "libvirt_uri": "", "rasdaemon_db": ""}))


# --- libvirt: connection handling with a stand-in for libvirt-python ------------------------------


class StandInLibvirt:
    """The parts of libvirt-python the watcher uses. Copies libvirt's behaviour: openReadOnly()
    raises libvirtError while the daemon is down; a connection whose daemon went away answers
    isAlive() False; domainEventRegisterAny(None, id, cb, opaque) calls cb(conn, dom, recipient,
    action, flags, opaque) for each memory-failure event."""

    VIR_DOMAIN_EVENT_ID_MEMORY_FAILURE = 25

    class libvirtError(Exception):  # noqa: N801 (libvirt's name)
        pass

    def __init__(self):
        self.up = False
        self.connections = []

    def virEventRegisterDefaultImpl(self):  # noqa: N802
        pass

    def virEventRunDefaultImpl(self):  # noqa: N802
        import time
        time.sleep(0.05)

    def virEventAddTimeout(self, *_args):  # noqa: N802
        return 1

    def openReadOnly(self, uri):  # noqa: N802
        if not self.up:
            raise self.libvirtError("unable to connect to server at 'hv1:16509': Connection refused")
        conn = StandInConn(self, uri)
        self.connections.append(conn)
        return conn


class StandInDomain:
    def __init__(self, name, uuid):
        self._name, self._uuid = name, uuid

    def name(self):
        return self._name

    def UUIDString(self):  # noqa: N802
        return self._uuid


class StandInConn:
    def __init__(self, lib, uri):
        self.lib, self.uri, self.alive, self.callbacks = lib, uri, True, {}

    def setKeepAlive(self, *_args):  # noqa: N802
        pass

    def getHostname(self):  # noqa: N802
        return "hv1.lab"

    def registerCloseCallback(self, *_args):  # noqa: N802
        pass

    def unregisterCloseCallback(self):  # noqa: N802
        pass

    def domainEventRegisterAny(self, dom, event_id, callback, opaque):  # noqa: N802
        assert dom is None and event_id == 25
        self.callbacks[len(self.callbacks) + 1] = (callback, opaque)
        return len(self.callbacks)

    def domainEventDeregisterAny(self, callback_id):  # noqa: N802
        self.callbacks.pop(callback_id, None)

    def isAlive(self):  # noqa: N802
        return self.alive

    def close(self):
        self.alive = False

    def fire(self, name, uuid, recipient=1, action=1, flags=0):
        for callback, opaque in list(self.callbacks.values()):
            callback(self, StandInDomain(name, uuid), recipient, action, flags, opaque)


def test_libvirt_watcher_reconnects_after_libvirtd_restarts(caplog):
    lib = StandInLibvirt()
    me.LibvirtWatcher._loop_started = False

    async def scenario():
        queue = asyncio.Queue()
        options = me.validate_args({"kernel_log": "", "libvirt_uri": "qemu+tcp://hv1/system",
                                    "libvirt_reconnect_interval": 0.1})
        watcher = me.LibvirtWatcher(me.Emitter(queue, options), options["libvirt_uri"], 0.1, libvirt_module=lib)
        task = asyncio.create_task(watcher.run())
        try:
            await asyncio.sleep(0.3)                  # libvirtd down: retried, not fatal
            assert not task.done() and lib.connections == []
            lib.up = True
            for _attempt in range(50):
                if lib.connections and lib.connections[0].callbacks:
                    break
                await asyncio.sleep(0.05)
            lib.connections[0].fire("vm-a", "6f1d3a52-2c55-4c2f-9e0b-0d1e2f3a4b5c")
            first = await asyncio.wait_for(queue.get(), 5)
            lib.connections[0].alive = False          # libvirtd restarts
            for _attempt in range(100):
                if len(lib.connections) == 2 and lib.connections[1].callbacks:
                    break
                await asyncio.sleep(0.05)
            assert len(lib.connections) == 2 and lib.connections[0].callbacks == {}
            lib.connections[1].fire("vm-b", "0b7c5e1a-95f3-4d59-8c53-3f0d1b2a4c6e", recipient=0, action=3, flags=1)
            second = await asyncio.wait_for(queue.get(), 5)
            return first["memory_error"], second["memory_error"]
        finally:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    with caplog.at_level(logging.INFO):
        first, second = asyncio.run(scenario())
    assert (first["host"], first["source"], first["vm"]["name"], first["action"]) == ("hv1", "libvirt", "vm-a", "inject")
    assert (second["vm"]["name"], second["recipient"], second["action"], second["action_required"]) == (
        "vm-b", "hypervisor", "reset", True)
    messages = [r.getMessage() for r in caplog.records]
    assert any("cannot connect to qemu+tcp://hv1/system" in m for m in messages)
    assert any("connection to qemu+tcp://hv1/system lost" in m for m in messages)


def test_plugin_documents_its_options():
    import yaml
    doc = yaml.safe_load(me.DOCUMENTATION)
    assert set(doc["options"]) == set(me.ARG_SPEC)
    for name, (kind, default) in me.ARG_SPEC.items():
        option = doc["options"][name]
        assert option["type"] == kind.__name__, name
        assert option.get("default") == default, name
    examples = yaml.safe_load(me.EXAMPLES)
    assert "kvm_ras.poison_guard.memory_errors" in examples[0]["sources"][0]
    assert os.access(PLUGIN, os.R_OK)
