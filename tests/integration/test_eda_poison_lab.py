# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The memory_errors source's kernel-log reader inside the poison lab, on real hwpoison.

A hook of the poison lab (a real Debian 6.1 kernel in a nested VM, pages poisoned with
hwpoison_inject corrupt-pfn) runs the unmodified plugin file with the VM's python3 right after
the injection. main() gets ``kernel_log: /dev/kmsg`` and ``kernel_log_from_start: true``. The
source opens the real character device, reads the kernel's own kmsg records (including the
``Memory failure:`` records of this injection) from the start of the ring buffer, then keeps
following. The hook collects the events it put on its queue.

The injection happens before hooks run, so the source reads those records as a replay of the
ring buffer, not while the page is poisoned. What this test proves is the /dev/kmsg path on a
real kernel: record framing, seq and timestamps, the messages of real hwpoison, and a source
that does not end. The image carries the plugin's only needs (Python's stdlib: asyncio,
sqlite3, xml).
"""
from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

from poison_lab_fixture import Hook, poison_lab_run, register_hook  # noqa: F401  pylint: disable=unused-import

REPO = Path(__file__).resolve().parents[2]
PLUGIN = REPO / "extensions" / "eda" / "plugins" / "event_source" / "memory_errors.py"
HOOK_DIR = REPO / ".cache" / "eda-poison-lab-hook"
EXPERIMENTS = ["memhog-early", "qemu-kvm-mce"]

DRIVER = textwrap.dedent('''\
    """Run the memory_errors source on /dev/kmsg until the injected PFN's recovery event arrives."""
    import asyncio
    import json
    import os
    import sys
    import time

    sys.path.insert(0, os.environ["LAB_HOOK_DIR"])
    import memory_errors  # noqa: E402  pylint: disable=wrong-import-position

    PFN = os.environ["LAB_PFN"]


    async def collect():
        queue = asyncio.Queue()
        task = asyncio.create_task(memory_errors.main(
            queue, {"kernel_log": "/dev/kmsg", "kernel_log_from_start": True, "host": "poisonlab"}))
        events, started = [], time.monotonic()
        while time.monotonic() - started < 120:
            try:
                event = await asyncio.wait_for(queue.get(), 5)
            except asyncio.TimeoutError:
                if task.done():
                    break
                continue
            events.append(event)
            if event["memory_error"]["pfn"] == PFN and event["memory_error"]["result"] == "Recovered":
                break
        alive = not task.done()
        error = None if alive else repr(task.exception())
        task.cancel()
        return {"events": events, "source_alive": alive, "source_error": error,
                "seconds": round(time.monotonic() - started, 1)}


    print(json.dumps({"pfn": PFN, "victim_pid": os.environ.get("LAB_VICTIM_PID"), **asyncio.run(collect())}))
    ''')


def build_hook():
    if HOOK_DIR.exists():
        shutil.rmtree(HOOK_DIR)
    HOOK_DIR.mkdir(parents=True)
    shutil.copy(PLUGIN, HOOK_DIR / "memory_errors.py")
    (HOOK_DIR / "kmsg_source.py").write_text(DRIVER)
    run = HOOK_DIR / "run"
    run.write_text('#!/bin/sh\nexec python3 "$LAB_HOOK_DIR/kmsg_source.py"\n')
    run.chmod(0o755)
    return HOOK_DIR


register_hook("eda-kmsg-source", Hook(build_hook(), experiments=EXPERIMENTS, timeout_s=600))


def report_of(run, experiment):
    report = run.hook(experiment, "eda-kmsg-source")
    assert report is not None, "the hook did not run in %s" % experiment
    assert report["rc"] == 0, report
    assert report["json"], report
    return report["json"]


def events_for(result):
    return [e["memory_error"] for e in result["events"] if e["memory_error"]["pfn"] == result["pfn"]]


def test_kmsg_source_sees_the_injected_pfn_recovered(poison_lab_run):
    for experiment in EXPERIMENTS:
        result = report_of(poison_lab_run, experiment)
        assert result["source_alive"], result            # the source never ends by itself
        events = events_for(result)
        recovered = [e for e in events if e["result"] == "Recovered"]
        assert recovered, result
        event = recovered[-1]
        assert (event["kind"], event["source"], event["host"], event["page_type"]) == (
            "memory_failure", "kernel_log", "poisonlab", "dirty LRU page")
        # kmsg framing: a sequence number and a time since boot on every record
        assert isinstance(event["seq"], int) and event["uptime"] > 0
        assert event["message"] == "Memory failure: %s: recovery action for dirty LRU page: Recovered" % result["pfn"]


def test_kmsg_source_names_the_signalled_process(poison_lab_run):
    memhog = report_of(poison_lab_run, "memhog-early")
    signalled = [e for e in events_for(memhog) if e["process"]]
    assert [(e["process"], str(e["pid"])) for e in signalled][-1:] == [("memhog", memhog["victim_pid"])], memhog

    qemu = report_of(poison_lab_run, "qemu-kvm-mce")
    signalled = [e for e in events_for(qemu) if e["process"]]
    assert signalled and signalled[-1]["process"] == "qemu-system-x86", qemu
    assert str(signalled[-1]["pid"]) == qemu["victim_pid"]
    # no libvirt in the nested VM: the QEMU process belongs to no domain
    assert signalled[-1]["vm"] is None
