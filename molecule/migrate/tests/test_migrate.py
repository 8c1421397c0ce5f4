# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""End state after converge, asked of libvirt in both hypervisor containers.

- the clean guests (including `web 01 $(touch .pwned)`) run on the destination only,
  persistently, and their counters carried on (first destination line is not `tick 0`);
- the guest the gate was told is poisoned never left the source;
- the guest whose migration timed out still runs on the source and not on the destination;
- the command in the guest name never ran anywhere.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest
import yaml

VARS = yaml.safe_load((Path(__file__).resolve().parent.parent / "vars.yml").read_text())
GUESTS = {guest["name"]: guest["role"] for guest in VARS["migrate_guests"]}
CLEAN = [name for name, role in GUESTS.items() if role == "clean"]
STAYS = [name for name, role in GUESTS.items() if role != "clean"]
TICK = re.compile(r"^tick (\d+)\r?$", re.M)

# One JSON answer per host: every domain with its state and persistence (names travel as data).
QUERY = """
import json, libvirt
conn = libvirt.openReadOnly('qemu:///system')
print(json.dumps({d.name(): {'active': bool(d.isActive()), 'persistent': bool(d.isPersistent())}
                  for d in conn.listAllDomains(0)}))
"""


# Run once, on the source; the destination is reached through the same inventory.
testinfra_hosts = ["ansible://" + VARS["migrate_source"]]


@pytest.fixture(name="source")
def fixture_source(host):
    return host


@pytest.fixture(name="destination")
def fixture_destination(host):
    return host.get_host("ansible://" + VARS["migrate_destination"],
                         ansible_inventory=os.environ["MOLECULE_INVENTORY_FILE"])


def _domains(host):
    return json.loads(host.run_expect([0], "python3 -c %s", QUERY).stdout)


def _ticks(host, name):
    log = host.file("/var/log/libvirt/qemu/%s-serial.log" % name)
    return [int(n) for n in TICK.findall(log.content_string)] if log.exists else []


@pytest.mark.parametrize("name", CLEAN)
def test_clean_guest_runs_on_the_destination_only(name, source, destination):
    on_destination = _domains(destination)
    assert on_destination.get(name) == {"active": True, "persistent": True}, on_destination
    assert name not in _domains(source), "%r is still defined on the source" % name


@pytest.mark.parametrize("name", CLEAN)
def test_clean_guest_counter_continued(name, source, destination):
    source_ticks = _ticks(source, name)
    first = _ticks(destination, name)
    time.sleep(1.5)
    later = _ticks(destination, name)
    assert source_ticks and source_ticks[-1] > 0, "the guest never counted on the source"
    assert first, "no 'tick N' line on the destination"
    assert first[0] != 0, "the destination's first line is 'tick 0': the guest restarted instead of moving"
    assert first[0] >= source_ticks[-1], (first[0], source_ticks[-1])
    assert later[-1] > first[-1], "the counter stopped on the destination"


@pytest.mark.parametrize("name", STAYS)
def test_blocked_and_timed_out_guests_stay_on_the_source(name, source, destination):
    on_source = _domains(source)
    assert on_source.get(name) == {"active": True, "persistent": True}, on_source
    assert not _domains(destination).get(name, {}).get("active"), "%r runs on the destination" % name


def test_held_guest_still_counts_on_the_source(source):
    name = VARS["migrate_held_guest"]
    before = _ticks(source, name)
    time.sleep(1.5)
    assert _ticks(source, name)[-1] > before[-1]


def test_the_command_in_the_guest_name_never_ran(source, destination):
    # `touch .pwned` would create .pwned in the working directory of whatever ran it: look
    # for it everywhere on the hypervisors, and where Ansible and Molecule run on the controller.
    for host in (source, destination):
        found = host.run_expect([0], "find / -xdev -name .pwned -print").stdout
        assert found == "", found
    scenario = Path(__file__).resolve().parent.parent
    for directory in (Path.cwd(), Path.home(), scenario, scenario.parent.parent):
        assert not (directory / ".pwned").exists(), directory
