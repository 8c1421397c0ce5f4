# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Test guests (the tick boot sector of tick.S): `lab/hvlab guests create|list|delete`."""

from __future__ import annotations

import json
import threading

from .config import (
    GUEST_DISK,
    GUEST_NAME_RE,
    GUEST_PREFIX_RE,
    GUEST_TEMPLATE,
    HOST_NAMES,
    MAX_GUESTS_PER_CALL,
    MAX_HOSTS,
    SHARED_DIR,
)
from .errors import LabError
from .system import check_root, lab_lock
from .dockerd import DaemonState
from .hosts import ensure_shared_disk, query_host, running_lab_hosts


def guests_by_host(hosts) -> dict[str, list[dict]]:
    found = {}

    def ask(name):
        found[name] = query_host(name, "info", timeout=60)

    threads = [threading.Thread(target=ask, args=(h,)) for h in hosts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for name, answer in found.items():
        if "error" in answer:
            raise LabError(f"libvirtd on {name} does not answer: {answer['error']}",
                           "check `lab/hvlab status`; `lab/hvlab down` and `lab/hvlab up` rebuild the lab")
    return {name: [dict(g, host=name, serial_log=f"/var/log/libvirt/qemu/{g['name']}-serial.log")
                   for g in found[name]["guests"]] for name in hosts}


def require_running_lab() -> list[str]:
    state = DaemonState()
    hosts = running_lab_hosts() if state.answering else []
    if not hosts:
        raise LabError("the lab is not up (no running lab hosts)", "run `lab/hvlab up` first")
    return hosts


def render_guest(name: str) -> str:
    text = GUEST_TEMPLATE.read_text()
    text = text.replace("{{ guest_name }}", name).replace("{{ guest_disk }}", GUEST_DISK)
    if "{{" in text or "{%" in text:
        raise LabError(f"{GUEST_TEMPLATE} has placeholders other than guest_name and guest_disk",
                       "keep the template to those two placeholders")
    return text


def cmd_guests_create(args) -> int:
    if args.host not in HOST_NAMES:
        raise LabError(f"unknown host {args.host!r}: lab hosts are named hv1..hv{MAX_HOSTS}",
                       "pass --host with the name of a running lab host (see `lab/hvlab status`)",
                       code=2)
    if not 1 <= args.count <= MAX_GUESTS_PER_CALL:
        raise LabError(f"--count {args.count} is out of range", f"pass --count from 1 to "
                       f"{MAX_GUESTS_PER_CALL} (call again for more guests)", code=2)
    if not GUEST_PREFIX_RE.match(args.prefix):
        raise LabError(f"--prefix {args.prefix!r} is not a usable guest name prefix",
                       "use a letter followed by up to 31 letters, digits, '-' or '_'", code=2)
    check_root()
    with lab_lock():
        hosts = require_running_lab()
        if args.host not in hosts:
            raise LabError(f"unknown host {args.host!r}: it is not running in the lab (running: "
                           f"{', '.join(hosts)})",
                           f"pass one of {', '.join(hosts)}, or start more hosts with "
                           f"`lab/hvlab up --hosts {int(args.host[2:])}`", code=2)
        taken = {g["name"] for guests in guests_by_host(hosts).values() for g in guests}
        names, number = [], 1
        while len(names) < args.count:
            candidate = f"{args.prefix}-{number}"
            if candidate not in taken:
                names.append(candidate)
            number += 1
        if not (SHARED_DIR / "tick.img").exists():
            ensure_shared_disk(args.host)
        answer = query_host(args.host, "create",
                            input_text=json.dumps([{"name": n, "xml": render_guest(n)} for n in names]))
        if "error" in answer:
            raise LabError(f"creating guests on {args.host} failed: {answer['error']}",
                           "see `lab/hvlab status`; no guest of this call was kept")
    created = [dict(g, host=args.host, serial_log=f"/var/log/libvirt/qemu/{g['name']}-serial.log")
               for g in answer]
    if args.json:
        print(json.dumps(created, indent=2))
    else:
        for guest in created:
            print(f"{guest['name']} {guest['host']} {guest['state']}")
    return 0


def cmd_guests_list(args) -> int:
    check_root()
    hosts = require_running_lab()
    guests = [g for name in hosts for g in guests_by_host([name])[name]]
    if args.json:
        print(json.dumps(guests, indent=2))
        return 0
    row = "{:<24} {:<5} {:<10} {}"
    print(row.format("NAME", "HOST", "STATE", "PERSISTENT"))
    for guest in guests:
        print(row.format(guest["name"], guest["host"], guest["state"], "yes" if guest["persistent"] else "no"))
    return 0


def cmd_guests_delete(args) -> int:
    bad = [n for n in args.names if not GUEST_NAME_RE.match(n)]
    if bad:
        raise LabError(f"not a guest name: {', '.join(map(repr, bad))}",
                       "pass guest names as `lab/hvlab guests list` shows them", code=2)
    check_root()
    with lab_lock():
        hosts = require_running_lab()
        where = {g["name"]: h for h, guests in guests_by_host(hosts).items() for g in guests}
        unknown = [n for n in args.names if n not in where]
        if unknown:
            raise LabError(f"no such guest in the lab: {', '.join(unknown)}",
                           "see `lab/hvlab guests list`", code=2)
        for name in args.names:
            answer = query_host(where[name], "delete", name)
            if "error" in answer:
                raise LabError(f"deleting {name} on {where[name]} failed: {answer['error']}")
            print(f"deleted {name} ({where[name]})")
    return 0
