# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""playbooks/poison_report.yml end to end, with real ansible-playbook / ansible-runner runs, and
the HTML page in a real headless Chromium.

The fleet is the one of benchmarks/fleet.py: local-connection hosts, each with its own fixture
procfs/sysfs/boot/log tree from tests/fixtures/procfs (copies of what real Debian 6.1 / 6.12
kernels and QEMU 7.2 showed with hardware-poisoned guest pages; clean hosts copy healthy
libvirt QEMUs). Two more hosts are broken for real: one whose SSH port refuses connections
(unreachable) and one whose Python interpreter does not exist (the module fails).

Chromium is driven through its DevTools protocol (a small websocket client below): every
uncaught exception, console error and browser log error is collected, and every network
request is checked to be the page itself, so "no console errors" and "self-contained" are
observed, not assumed. The screenshot is kept in tests/output/poison_report/.
"""

from __future__ import annotations

import base64
import json
import os
import re
import select
import shutil
import socket
import struct
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import jsonschema
import pytest

REPO = Path(__file__).resolve().parents[2]
PLAYBOOK = REPO / "playbooks" / "poison_report.yml"
SCHEMA = json.loads((REPO / "schemas" / "fleet_report.schema.json").read_text(encoding="utf-8"))
OUTPUT = REPO / "tests" / "output" / "poison_report"
VENV_BIN = Path(sys.executable).parent

sys.path.insert(0, str(REPO / "benchmarks"))
import fleet as fleet_bench  # noqa: E402  (benchmarks/fleet.py: the simulated fleet)

POISONED_HOSTS = 2
CLEAN_HOSTS = 4
UNREACHABLE = "hv-unreachable"
BROKEN = "hv-broken-python"


def closed_port():
    """A local TCP port nothing listens on (connecting to it is refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    root = tmp_path_factory.mktemp("poison-report")
    hosts = fleet_bench.build_fleet(str(root / "fleet"), POISONED_HOSTS + CLEAN_HOSTS, POISONED_HOSTS)
    broken = {
        UNREACHABLE: {"ansible_connection": "ssh", "ansible_host": "127.0.0.1",
                      "ansible_port": closed_port(), "ansible_user": "nobody",
                      "ansible_ssh_common_args": "-o ConnectTimeout=5 -o BatchMode=yes",
                      "ansible_python_interpreter": sys.executable, "poison_report_become": False},
        BROKEN: dict(fleet_bench.host_vars(next(iter(hosts.values()))["tree"], sys.executable),
                     ansible_python_interpreter="/nonexistent/bin/python3"),
    }
    inventory = fleet_bench.write_inventory(str(root / "inventory.yml"), hosts, sys.executable,
                                            extra_hosts=broken)
    env = fleet_bench.ansible_env(str(root))
    return {"root": root, "hosts": hosts, "inventory": inventory, "env": env,
            "all": sorted(list(hosts) + list(broken))}


def playbook(fleet, *args, env=None):
    run_env = dict(fleet["env"], **(env or {}))
    proc = subprocess.run([str(VENV_BIN / "ansible-playbook"), "-i", fleet["inventory"], "-f", "8",
                           str(PLAYBOOK)] + list(args), env=run_env, cwd=str(fleet["root"]),
                          capture_output=True, text=True, check=False, timeout=900)
    return proc.returncode, proc.stdout + proc.stderr


def task_ran(out, task):
    """Whether the task named ``task`` ran on any host (not just skipped) in ``out``."""
    for section in out.split("TASK [")[1:]:
        if section.startswith(task):
            return bool(re.search(r"^(ok|changed|failed|fatal): ", section, re.M))
    return False


def load_report(report_dir, report_id):
    path = Path(report_dir) / report_id / "fleet_report.json"
    report = json.loads(path.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator(SCHEMA).validate(report)
    return report


def expected_poisoned(fleet):
    return {(name, vm) for name, spec in fleet["hosts"].items() for vm in spec["poisoned_vms"]}


def poisoned_in(report):
    return {(vm["host"], vm["name"]) for vm in report["poisoned_vms"]}


@pytest.fixture(scope="module")
def full_run(fleet):
    """One normal run (linear strategy) over the whole fleet, broken hosts included."""
    report_dir = fleet["root"] / "reports"
    rc, out = playbook(fleet, "-e", "poison_report_dir=%s" % report_dir, "-e", "poison_report_id=full")
    return {"rc": rc, "out": out, "dir": report_dir, "id": "full"}


# -- the playbook ----------------------------------------------------------------------------
def test_full_run_reports_every_host_and_fails_because_two_were_not_scanned(fleet, full_run):
    # The report is written, then the run fails: two hosts could not be scanned.
    assert full_run["rc"] == 2, full_run["out"][-3000:]
    assert "2 hosts were not scanned: %s, %s" % (BROKEN, UNREACHABLE) in full_run["out"]
    report = load_report(full_run["dir"], full_run["id"])
    fleet_bench_problems = fleet_bench.check_report(
        dict(report, hosts=[h for h in report["hosts"] if h["name"] in fleet["hosts"]]), fleet["hosts"])
    assert fleet_bench_problems == []
    assert poisoned_in(report) == expected_poisoned(fleet)
    assert sorted(h["name"] for h in report["hosts"]) == fleet["all"]
    statuses = {h["name"]: h for h in report["hosts"]}
    assert statuses[UNREACHABLE]["status"] == "unreachable"
    assert "Connection refused" in statuses[UNREACHABLE]["error"]
    assert statuses[BROKEN]["status"] == "failed"
    assert "/nonexistent/bin/python3" in statuses[BROKEN]["error"]
    order = [h["status"] for h in report["hosts"]]
    assert order == ["poisoned"] * POISONED_HOSTS + ["failed", "unreachable"] + ["clean"] * CLEAN_HOSTS
    assert report["summary"]["hosts"] == {"poisoned": 2, "unknown": 0, "failed": 1,
                                          "unreachable": 1, "missing": 0, "clean": 4}
    assert report["summary"]["complete"] is False
    assert report["hosts_pattern"] == "hypervisors"
    assert (full_run["dir"] / "full" / "fleet_report.html").is_file()


def test_fleet_without_broken_hosts_succeeds(fleet):
    report_dir = fleet["root"] / "reports"
    limit = ",".join(fleet["hosts"])
    rc, out = playbook(fleet, "--limit", limit, "-e", "poison_report_dir=%s" % report_dir)
    assert rc == 0, out[-3000:]
    # no report id given: a new one was made, and printed with the report's path
    match = re.search(r'Fleet poison report (\d{8}T\d{6}Z-[0-9a-f]{6}): ([^"\s]+)', out)
    assert match, out[-3000:]
    report = load_report(report_dir, match.group(1))
    assert match.group(2) == str(report_dir / match.group(1) / "fleet_report.html")
    assert poisoned_in(report) == expected_poisoned(fleet)
    assert report["summary"]["complete"] is True
    assert fleet_bench.check_report(report, fleet["hosts"]) == []


def test_strategy_free(fleet):
    report_dir = fleet["root"] / "reports"
    rc, out = playbook(fleet, "-e", "poison_report_dir=%s" % report_dir, "-e", "poison_report_id=free",
                       "-e", "poison_report_fail_on_incomplete=false",
                       env={"ANSIBLE_STRATEGY": "free"})
    assert rc == 0, out[-3000:]
    report = load_report(report_dir, "free")
    assert poisoned_in(report) == expected_poisoned(fleet)
    assert sorted(h["name"] for h in report["hosts"]) == fleet["all"]
    assert [h["status"] for h in report["hosts"][:2]] == ["poisoned", "poisoned"]


def test_the_scan_play_follows_the_configured_strategy(fleet):
    """The scan play has no strategy of its own, so ANSIBLE_STRATEGY (free above) governs it:
    an invalid one is refused exactly there."""
    rc, out = playbook(fleet, "-e", "poison_report_dir=%s" % (fleet["root"] / "reports"),
                       env={"ANSIBLE_STRATEGY": "no-such-strategy"})
    assert rc != 0
    assert "PLAY [Start the fleet poison report]" in out  # linear by its own keyword: it ran
    assert re.search(r"Invalid play strategy specified: no-such-strategy", out), out[-2000:]
    assert "TASK [Inspect the VMs of this hypervisor]" not in out


def start_with_ansible_runner(fleet, report_dir):
    """The start phase as AWX runs it (ansible-runner); returns the set_stats artifacts AWX
    passes to the next workflow nodes as extra vars."""
    import ansible_runner  # pylint: disable=import-outside-toplevel

    private = fleet["root"] / "runner-start"
    shutil.rmtree(private, ignore_errors=True)
    private.mkdir()
    env = {k: v for k, v in fleet["env"].items() if k.startswith("ANSIBLE_")}
    # the project venv's ansible-playbook, as the execution environment's would be
    env["PATH"] = os.pathsep.join([str(VENV_BIN), os.environ.get("PATH", "")])
    result = ansible_runner.run(
        private_data_dir=str(private), playbook=str(PLAYBOOK), inventory=fleet["inventory"],
        extravars={"poison_report_phase": "start", "poison_report_dir": str(report_dir)},
        envvars=env, quiet=True)
    assert result.rc == 0, result.stdout.read()[-3000:]
    stats = [e for e in result.events if e.get("event") == "playbook_on_stats"]
    return stats[-1]["event_data"].get("artifact_data") or {}


def test_sliced_run_then_merge(fleet):
    """AWX job slicing: a start job hands the report id on, each slice scans its part of the
    inventory (here: two --limit subsets), a last job merges."""
    report_dir = fleet["root"] / "sliced"
    artifacts = start_with_ansible_runner(fleet, report_dir)
    report_id = artifacts["poison_report_id"]
    assert re.match(r"^\d{8}T\d{6}Z-[0-9a-f]{6}$", report_id)
    assert (report_dir / report_id / "parts").is_dir()
    assert not (report_dir / report_id / "fleet_report.json").exists()

    names = sorted(fleet["hosts"])
    slices = [names[0::2] + [UNREACHABLE], names[1::2] + [BROKEN]]
    common = ["-e", "poison_report_dir=%s" % report_dir, "-e", "poison_report_id=%s" % report_id]
    for index, hosts in enumerate(slices):
        rc, out = playbook(fleet, "--limit", ",".join(hosts), "-e", "poison_report_phase=scan", *common)
        assert rc == 0, out[-3000:]  # a slice only writes parts; broken hosts are recorded, not fatal
        assert task_ran(out, "Inspect the VMs of this hypervisor")
        assert not task_ran(out, "Merge every host's part")
        assert not (report_dir / report_id / "fleet_report.json").exists()
        parts = sorted(os.listdir(report_dir / report_id / "parts"))
        assert len(parts) == sum(len(s) for s in slices[:index + 1])

    rc, out = playbook(fleet, "-e", "poison_report_phase=merge",
                       "-e", "poison_report_fail_on_incomplete=false", *common)
    assert rc == 0, out[-3000:]
    assert not task_ran(out, "Inspect the VMs of this hypervisor")  # the merge scans nothing
    assert task_ran(out, "Merge every host's part")
    report = load_report(report_dir, report_id)
    assert poisoned_in(report) == expected_poisoned(fleet)
    assert sorted(h["name"] for h in report["hosts"]) == fleet["all"]
    statuses = {h["name"]: h["status"] for h in report["hosts"]}
    assert statuses[UNREACHABLE] == "unreachable" and statuses[BROKEN] == "failed"
    assert "missing" not in statuses.values()


def test_a_slice_that_never_ran_leaves_its_hosts_missing_not_dropped(fleet):
    report_dir = fleet["root"] / "one-slice"
    names = sorted(fleet["hosts"])
    common = ["-e", "poison_report_dir=%s" % report_dir, "-e", "poison_report_id=half"]
    rc, out = playbook(fleet, "--limit", ",".join(names[:3]), "-e", "poison_report_phase=scan", *common)
    assert rc == 0, out[-3000:]
    rc, out = playbook(fleet, "-e", "poison_report_phase=merge", *common)
    assert rc == 2  # incomplete report: the merge job fails, after writing it
    report = load_report(report_dir, "half")
    missing = sorted(h["name"] for h in report["hosts"] if h["status"] == "missing")
    assert missing == sorted(set(fleet["all"]) - set(names[:3]))
    assert "were not scanned" in out


def test_check_mode_writes_nothing(fleet):
    report_dir = fleet["root"] / "check-mode"
    rc, out = playbook(fleet, "--check", "-e", "poison_report_dir=%s" % report_dir)
    assert rc == 0, out[-3000:]
    assert not report_dir.exists()


@pytest.mark.parametrize("extra, message", [
    (["-e", "poison_report_phase=scan"], "need the poison_report_id that the start phase returned"),
    (["-e", "poison_report_phase=everything"], "poison_report_phase must be all, start, scan or merge"),
    (["-e", "poison_report_id=../../etc"], "is not usable as a directory name"),
])
def test_bad_settings_fail_before_any_host_is_scanned(fleet, extra, message):
    report_dir = fleet["root"] / "bad"
    rc, out = playbook(fleet, "-e", "poison_report_dir=%s" % report_dir, *extra)
    assert rc == 2
    assert message in re.sub(r"\s+", " ", out)
    assert not task_ran(out, "Inspect the VMs of this hypervisor")
    assert not (report_dir / "etc").exists() and not (fleet["root"] / "etc").exists()


# -- the page in Chromium ------------------------------------------------------------------------
def chromium_binary():
    found = shutil.which("chromium")
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("Debian's chromium is not installed and cannot be installed here "
                    "(needs root and apt-get): apt-get install chromium")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "-o", "DPkg::Lock::Timeout=600", "install", "-y", "-q", "chromium"]
    if subprocess.run(install, env=env, capture_output=True, check=False).returncode != 0:
        subprocess.run(["apt-get", "-o", "DPkg::Lock::Timeout=600", "update", "-q"], env=env,
                       capture_output=True, check=True)
        subprocess.run(install, env=env, capture_output=True, check=True)
    return shutil.which("chromium")


class DevTools:
    """The smallest websocket client the DevTools protocol needs (RFC 6455: masked client text
    frames, server frames of any length, fragmentation, ping)."""

    def __init__(self, url, timeout=60.0):
        parsed = urllib.parse.urlparse(url)
        self.sock = socket.create_connection((parsed.hostname, parsed.port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        request = ("GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                   "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % (
                       parsed.path, parsed.hostname, parsed.port, key))
        self.sock.sendall(request.encode())
        header = b""
        while b"\r\n\r\n" not in header:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("DevTools closed the connection during the handshake")
            header += chunk
        head, self.buffer = header.split(b"\r\n\r\n", 1)
        if b" 101 " not in head.split(b"\r\n")[0]:
            raise ConnectionError("websocket handshake refused: %r" % head[:200])
        self.next_id = 0
        self.events = []

    def _read(self, count):
        while len(self.buffer) < count:
            chunk = self.sock.recv(max(65536, count - len(self.buffer)))
            if not chunk:
                raise ConnectionError("DevTools closed the connection")
            self.buffer += chunk
        data, self.buffer = self.buffer[:count], self.buffer[count:]
        return data

    def _send_frame(self, opcode, payload):
        mask = os.urandom(4)
        length = len(payload)
        if length < 126:
            header = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
        elif length < 65536:
            header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
        else:
            header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(header + mask + masked)

    def _message(self):
        parts = []
        while True:
            first, second = self._read(2)
            opcode, length = first & 0x0F, second & 0x7F
            if length == 126:
                length = struct.unpack("!H", self._read(2))[0]
            elif length == 127:
                length = struct.unpack("!Q", self._read(8))[0]
            mask = self._read(4) if second & 0x80 else None
            payload = self._read(length)
            if mask:
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            if opcode == 0x9:  # ping
                self._send_frame(0xA, payload)
                continue
            if opcode == 0x8:
                raise ConnectionError("DevTools closed the websocket")
            parts.append(payload)
            if first & 0x80:
                return json.loads(b"".join(parts).decode("utf-8"))

    def send(self, method, params=None, session=None, timeout=60.0):
        self.next_id += 1
        wanted = self.next_id
        message = {"id": wanted, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        self._send_frame(0x1, json.dumps(message).encode())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            reply = self._message()
            if reply.get("id") == wanted:
                if "error" in reply:
                    raise RuntimeError("%s failed: %s" % (method, reply["error"]))
                return reply.get("result", {})
            self.events.append(reply)
        raise TimeoutError(method)

    def wait_event(self, method, timeout=60.0):
        deadline = time.monotonic() + timeout
        for event in self.events:
            if event.get("method") == method:
                return event
        while time.monotonic() < deadline:
            ready, _w, _x = select.select([self.sock], [], [], 0.5) if not self.buffer else ([1], [], [])
            if ready:
                event = self._message()
                self.events.append(event)
                if event.get("method") == method:
                    return event
        raise TimeoutError(method)

    def drain(self, seconds):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            ready, _w, _x = select.select([self.sock], [], [], 0.1) if not self.buffer else ([1], [], [])
            if ready:
                self.events.append(self._message())

    def close(self):
        self.sock.close()


def load_in_chromium(path, tmp_path, screenshot=None, width=1400, height=1800):
    """Open ``path`` in headless Chromium; returns (problems, dom facts, chromium log)."""
    binary = chromium_binary()
    profile = tmp_path / "chromium-profile"
    proc = subprocess.Popen(
        [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--enable-logging=stderr",
         "--v=0", "--remote-debugging-port=0", "--remote-debugging-address=127.0.0.1",
         "--user-data-dir=%s" % profile, "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    log = []
    devtools = None
    try:
        deadline = time.monotonic() + 60
        url = None
        while url is None and time.monotonic() < deadline:
            line = proc.stderr.readline().decode("utf-8", "replace")
            if not line and proc.poll() is not None:
                break
            log.append(line)
            found = re.search(r"DevTools listening on (ws://\S+)", line)
            url = found.group(1) if found else None
        assert url, "chromium did not start its DevTools endpoint:\n" + "".join(log)
        devtools = DevTools(url)
        target = devtools.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = devtools.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Page", "Network"):
            devtools.send(domain + ".enable", session=session)
        devtools.send("Emulation.setDeviceMetricsOverride", {"width": width, "height": height,
                                                             "deviceScaleFactor": 1, "mobile": False},
                      session=session)
        devtools.send("Page.navigate", {"url": Path(path).resolve().as_uri()}, session=session)
        devtools.wait_event("Page.loadEventFired")
        devtools.drain(0.5)  # late errors
        facts = devtools.send("Runtime.evaluate", {"returnByValue": True, "expression": """(() => {
            const hosts = [...document.querySelectorAll('details.host')];
            const firstRow = hosts.length ? hosts[0].querySelector('tr.vm') : null;
            const chartRows = [...document.querySelectorAll('#status-chart g.row')];
            const select = document.getElementById('status-filter');
            let attention = null;
            if (select) {
              select.value = 'attention';
              select.dispatchEvent(new Event('change'));
              attention = hosts.filter(h => !h.hidden).map(h => h.dataset.name);
              select.value = 'all';
              select.dispatchEvent(new Event('change'));
            }
            return {
              title: document.title,
              hosts: hosts.map(h => [h.dataset.name, h.dataset.status]),
              first_vm: firstRow ? [firstRow.dataset.vm, firstRow.dataset.status] : null,
              chart_rows: chartRows.map(g => [g.dataset.host, g.dataset.status, g.querySelectorAll('rect').length]),
              controls_shown: !document.getElementById('controls').hidden,
              filter_count: (document.getElementById('filter-count') || {}).textContent,
              attention: attention,
              alert: (document.getElementById('poisoned-alert') || {}).innerText || null,
            };
        })()"""}, session=session)["result"].get("value")
        if screenshot:
            shot = devtools.send("Page.captureScreenshot", {"format": "png"}, session=session)
            Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
            Path(screenshot).write_bytes(base64.b64decode(shot["data"]))
        devtools.drain(0.2)
        problems = []
        page_url = Path(path).resolve().as_uri()
        for event in devtools.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                problems.append("exception: %s" % (details.get("exception", {}).get("description")
                                                   or details.get("text")))
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert", "warning"):
                problems.append("console.%s: %s" % (params["type"], " ".join(
                    str(a.get("value", a.get("description"))) for a in params.get("args", []))))
            elif method == "Log.entryAdded" and params["entry"]["level"] in ("error", "warning"):
                problems.append("log %s: %s" % (params["entry"]["level"], params["entry"]["text"]))
            elif method == "Network.requestWillBeSent":
                requested = params["request"]["url"]
                if requested != page_url and not requested.startswith("data:"):
                    problems.append("network request: %s" % requested)
            elif method == "Page.javascriptDialogOpening":
                problems.append("dialog: %s" % params.get("message"))
        return problems, facts, log
    finally:
        if devtools:
            devtools.close()
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stderr.close()


def test_chromium_check_sees_console_errors_exceptions_and_external_loads(tmp_path):
    """The detector is not blind: a page with each kind of fault is caught."""
    page = tmp_path / "faulty.html"
    page.write_text("<!DOCTYPE html><html><head><title>t</title></head><body>"
                    "<details class=\"host\" data-name=\"x\" data-status=\"clean\"></details>"
                    "<div id=\"controls\"></div>"
                    "<img src=\"http://127.0.0.1:9/pixel.png\">"
                    "<script>console.error('deliberate console error');</script>"
                    "<script>undefinedFunction();</script></body></html>", encoding="utf-8")
    problems, _facts, _log = load_in_chromium(page, tmp_path)
    text = "\n".join(problems)
    assert "deliberate console error" in text
    assert "undefinedFunction" in text
    assert "http://127.0.0.1:9/pixel.png" in text


def test_report_page_renders_in_chromium_without_errors_poisoned_vm_first(fleet, full_run, tmp_path):
    html = full_run["dir"] / full_run["id"] / "fleet_report.html"
    screenshot = OUTPUT / "fleet_report.png"
    problems, facts, log = load_in_chromium(html, tmp_path, screenshot=screenshot)
    assert problems == [], "\n".join(problems)
    console_lines = [line for line in log if "CONSOLE" in line or "Uncaught" in line]
    assert console_lines == [], console_lines
    report = load_report(full_run["dir"], full_run["id"])
    assert facts["hosts"] == [[h["name"], h["status"]] for h in report["hosts"]]
    first = report["hosts"][0]
    assert first["status"] == "poisoned"
    assert facts["first_vm"] == [first["vms"][0]["name"], "poisoned"]
    assert (first["name"], first["vms"][0]["name"]) in expected_poisoned(fleet)
    assert facts["chart_rows"][0][:2] == [first["name"], "poisoned"]
    assert [row[0] for row in facts["chart_rows"]] == [h["name"] for h in report["hosts"]]
    assert facts["controls_shown"] is True
    assert facts["filter_count"] == "%d of %d hosts shown" % (len(report["hosts"]), len(report["hosts"]))
    assert facts["attention"] == [h["name"] for h in report["hosts"] if h["status"] != "clean"]
    assert facts["title"].startswith("[2 poisoned] Fleet poison report")
    assert "Can't migrate this vm with hardware poisoned memory" in facts["alert"]
    assert screenshot.stat().st_size > 10000
