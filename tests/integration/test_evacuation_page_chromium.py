# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The evacuation report's HTML page in a real headless Chromium.

The report is the realistic one of tests/fixtures/evacuation_reports.py (made by the
collection's own rules: migrated, timed out and stayed, poisoned and left, poisoned and
rebooted then migrated, not running); the page is written by the real action plugin
(kvm_ras.poison_guard.evacuation_page through ansible-playbook). Chromium is the one of
tests/integration/test_poison_report.py (Debian's chromium, installed with apt-get when
missing), with its DevTools checks: no console error, no exception, no network request but the
page itself. ``--dump-dom`` gives the text Chromium rendered; the screenshot
(tests/output/evacuation_page/evacuation_report.png) is decoded and must show the status
colours of the timeline and the badges.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
OUTPUT = REPO / "tests" / "output" / "evacuation_page"
VENV_BIN = Path(sys.executable).parent
sys.path.insert(0, str(REPO / "tests" / "fixtures"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import evacuation_reports  # noqa: E402  pylint: disable=wrong-import-position
from test_poison_report import chromium_binary, load_in_chromium  # noqa: E402  pylint: disable=wrong-import-position

from ansible_collections.kvm_ras.poison_guard.plugins.plugin_utils import evacuation_page as ep  # noqa: E402


def png_pixels(path):
    """(width, height, rows of RGB(A) tuples) of an 8-bit RGB/RGBA, non-interlaced PNG."""
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        length, kind = struct.unpack("!I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack("!IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    width, height, depth, color, _comp, _filter, interlace = header
    assert depth == 8 and color in (2, 6) and interlace == 0, header
    channels = 3 if color == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * channels
    rows, previous = [], bytearray(stride)
    for y in range(height):
        kind = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            left = line[i - channels] if i >= channels else 0
            up = previous[i]
            corner = previous[i - channels] if i >= channels else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + ((left + up) >> 1)) & 0xFF
            elif kind == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                pred = left if pa <= pb and pa <= pc else (up if pb <= pc else corner)
                line[i] = (line[i] + pred) & 0xFF
        rows.append(bytes(line))
        previous = line
    return width, height, channels, rows


def colour_counts(path, colours):
    """How many pixels of the screenshot have each of ``colours`` (#rrggbb)."""
    _w, _h, channels, rows = png_pixels(path)
    wanted = {bytes.fromhex(c[1:]): c for c in colours}
    counts = dict.fromkeys(colours, 0)
    for row in rows:
        for i in range(0, len(row), channels):
            hit = wanted.get(row[i:i + 3])
            if hit:
                counts[hit] += 1
    return counts


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    work = tmp_path_factory.mktemp("evacuation-page")
    report_file = work / "hv1-20260301T025500Z.json"
    report = evacuation_reports.realistic_report(str(report_file))
    report_file.write_text(json.dumps(report), encoding="utf-8")
    playbook = work / "page.yml"
    playbook.write_text(json.dumps([{"name": "Write the page", "hosts": "localhost", "gather_facts": False,
                                     "tasks": [{"name": "Write the evacuation page",
                                                "kvm_ras.poison_guard.evacuation_page": {
                                                    "report": "{{ lookup('ansible.builtin.file', '%s') | from_json }}"
                                                              % report_file}}]}]), encoding="utf-8")
    env = dict(os.environ, ANSIBLE_LOCAL_TEMP=str(work / "tmp"))
    env.pop("ANSIBLE_CONFIG", None)
    proc = subprocess.run([str(VENV_BIN / "ansible-playbook"), "-i", "localhost,", "-c", "local", str(playbook)],
                          cwd=str(work), env=env, capture_output=True, text=True, check=False, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    html = work / "hv1-20260301T025500Z.html"
    assert html.is_file()
    return {"html": html, "report": report}


def test_page_renders_in_chromium_without_errors_or_network(page, tmp_path):
    screenshot = OUTPUT / "evacuation_report.png"
    if screenshot.exists():
        screenshot.unlink()
    problems, _facts, log = load_in_chromium(page["html"], tmp_path, screenshot=screenshot)
    assert problems == [], "\n".join(problems)
    assert [line for line in log if "CONSOLE" in line or "Uncaught" in line] == []
    assert screenshot.stat().st_size > 20000, "a page with a table and a chart, not a blank image"
    width, height, _channels, _rows = png_pixels(screenshot)
    assert (width, height) == (1400, 1800)
    counts = colour_counts(screenshot, [ep.STATUS_INFO["migrated"][0], ep.STATUS_INFO["stayed"][0],
                                        ep.STATUS_INFO["left"][0], ep.POISON_COLORS["poisoned"]])
    # timeline bars and badges are painted in their status colours
    assert all(count > 200 for count in counts.values()), counts


def test_rendered_dom_has_every_vm_and_the_story(page, tmp_path):
    proc = subprocess.run([chromium_binary(), "--headless", "--no-sandbox", "--disable-gpu",
                           "--user-data-dir=%s" % (tmp_path / "profile"), "--dump-dom", page["html"].as_uri()],
                          capture_output=True, text=True, check=False, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = proc.stdout
    for vm in page["report"]["vms"]:
        assert 'data-vm="%s" data-status="%s"' % (vm["name"], vm["status"]) in dom, vm["name"]
    for text in ("FAILED: evacuation of hv1", "db01</strong>: stayed", "operation aborted: migration out job",
                 "Poisoned VMs", "pg01</strong> (leave): left", "app03</strong> (reboot_then_migrate): migrated to hv2",
                 "re-check after reboot: clean", "KPF_HWPOISON", "Timeline of the moves", 'id="timeline"',
                 "10 min 00 s live_migrate \u2192 hv3", "21.7 s reboot_then_migrate \u2192 hv2"):
        assert text in dom, text
    # the timeline: a bar for each VM whose move ran, none for the one left on purpose
    timeline = dom[dom.index('id="timeline"'):dom.index("</svg>")]
    assert timeline.count("<rect") == 4
