# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Libvirt queries and guest changes run inside a hypervisor lab container.

lab/hvlab calls it as `docker exec HOST /usr/bin/python3 -I /usr/local/lib/hvlab/hvlab_query.py
...` so that one round trip answers a whole question and no command line is ever built from
guest names (they travel as argv items or as JSON on stdin).

    info                  JSON: libvirt version, host UUID, guests with state
    create < guests.json  define + start [{"name": .., "xml": ..}, ..]; all or none
    delete NAME...        destroy (if running) and undefine
Exit status 0 on success; on failure a JSON object with "error" and exit status 1.
"""

import json
import re
import sys

import libvirt

URI = "qemu:///system"
# Same words as `virsh domstate`.
STATE_NAMES = {
    libvirt.VIR_DOMAIN_NOSTATE: "no state",
    libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_BLOCKED: "idle",
    libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_SHUTDOWN: "in shutdown",
    libvirt.VIR_DOMAIN_SHUTOFF: "shut off",
    libvirt.VIR_DOMAIN_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_PMSUSPENDED: "pmsuspended",
}


def fail(message):
    print(json.dumps({"error": message}))
    sys.exit(1)


def describe(domain):
    state = domain.state()[0]
    return {
        "name": domain.name(),
        "uuid": domain.UUIDString(),
        "state": STATE_NAMES.get(state, str(state)),
        "persistent": bool(domain.isPersistent()),
    }


def info(conn):
    capabilities = conn.getCapabilities()
    match = re.search(r"<host>\s*<uuid>([0-9a-fA-F-]+)</uuid>", capabilities)
    version = conn.getLibVersion()
    return {
        "libvirtd": True,
        "libvirt_version": f"{version // 1000000}.{version // 1000 % 1000}.{version % 1000}",
        "host_uuid": match.group(1) if match else None,
        "hostname": conn.getHostname(),
        "guests": sorted((describe(d) for d in conn.listAllDomains()), key=lambda g: g["name"]),
    }


def create(conn, requests):
    done = []
    try:
        for request in requests:
            domain = conn.defineXML(request["xml"])
            done.append(domain)
            if domain.name() != request["name"]:
                raise libvirt.libvirtError(f"defined {domain.name()!r}, expected {request['name']!r}")
            domain.create()
    except libvirt.libvirtError as error:
        for domain in done:
            try:
                if domain.isActive():
                    domain.destroy()
                domain.undefine()
            except libvirt.libvirtError:
                pass
        fail(f"guest creation failed, nothing kept: {error}")
    return [describe(d) for d in done]


def delete(conn, names):
    for name in names:
        try:
            domain = conn.lookupByName(name)
        except libvirt.libvirtError:
            fail(f"no guest named {name!r} on this host")
        if domain.isActive():
            domain.destroy()
        if domain.isPersistent():
            domain.undefine()
    return {"deleted": names}


def main():
    if len(sys.argv) < 2 or sys.argv[1] not in ("info", "create", "delete"):
        fail("usage: hvlab_query.py info | create < guests.json | delete NAME...")
    try:
        conn = libvirt.open(URI)
    except libvirt.libvirtError as error:
        print(json.dumps({"libvirtd": False, "error": str(error)}))
        sys.exit(1)
    try:
        if sys.argv[1] == "info":
            result = info(conn)
        elif sys.argv[1] == "create":
            result = create(conn, json.load(sys.stdin))
        else:
            result = delete(conn, sys.argv[2:])
    except libvirt.libvirtError as error:
        fail(str(error))
    finally:
        conn.close()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
