# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""hvlab: a multi-host libvirt/QEMU lab on one machine, as privileged docker containers.

    lab/hvlab up [--hosts N]          start (or reuse) hosts hv1..hvN (default 2, at most 4)
    lab/hvlab status [--json]         hosts, addresses, libvirtd, guests; exit 3 if not up
    lab/hvlab down [--purge]          remove the lab, stop the dockerd it started, restore the
                                      firewall policy; --purge also removes images and state
    lab/hvlab image                   build or reuse the hypervisor image, print its name
    lab/hvlab inventory               print the path of the running lab's Ansible inventory
    lab/hvlab guests create --host hvX --count K [--prefix NAME] [--json]
    lab/hvlab guests list [--json]
    lab/hvlab guests delete NAME...

Every check on input and environment runs before anything is changed, and a failed `up`
removes what that run started. See docs/lab.md.
"""

from __future__ import annotations

import argparse
import signal
import sys

from .config import DEFAULT_HOSTS, MAX_HOSTS
from .errors import Interrupted, LabError, raise_interrupted
from .guests import cmd_guests_create, cmd_guests_delete, cmd_guests_list
from .commands import cmd_down, cmd_image, cmd_inventory, cmd_status, cmd_up


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="lab/hvlab", description=__doc__.split("\n\n", maxsplit=1)[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    up = commands.add_parser("up", help="start or reuse the lab")
    up.add_argument("--hosts", type=int, default=DEFAULT_HOSTS,
                    help=f"number of hypervisor hosts, 1..{MAX_HOSTS} (default {DEFAULT_HOSTS})")
    up.set_defaults(func=cmd_up)
    status = commands.add_parser("status", help="show the lab")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_status)
    down = commands.add_parser("down", help="remove the lab and restore the machine")
    down.add_argument("--purge", action="store_true", help="also remove the images and lab/state")
    down.set_defaults(func=cmd_down)
    image = commands.add_parser("image", help="build or reuse the hypervisor image; print its name")
    image.set_defaults(func=cmd_image)
    inventory = commands.add_parser("inventory", help="print the running lab's inventory path")
    inventory.set_defaults(func=cmd_inventory)
    guests = commands.add_parser("guests", help="test guests")
    guest_commands = guests.add_subparsers(dest="guests_command", required=True, metavar="ACTION")
    create = guest_commands.add_parser("create", help="define and start K test guests on a host")
    create.add_argument("--host", required=True)
    create.add_argument("--count", type=int, default=1)
    create.add_argument("--prefix", default="tick")
    create.add_argument("--json", action="store_true")
    create.set_defaults(func=cmd_guests_create)
    listing = guest_commands.add_parser("list", help="list the guests of all lab hosts")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=cmd_guests_list)
    delete = guest_commands.add_parser("delete", help="destroy and undefine guests")
    delete.add_argument("names", nargs="+", metavar="NAME")
    delete.set_defaults(func=cmd_guests_delete)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, raise_interrupted)
    try:
        return args.func(args)
    except LabError as error:
        print(f"hvlab: error: {error.problem}", file=sys.stderr)
        if error.fix:
            print(f"hvlab: fix: {error.fix}", file=sys.stderr)
        return error.code
    except (Interrupted, KeyboardInterrupt) as error:
        print(f"hvlab: stopped: {error or 'interrupted'}; changes of this run were undone",
              file=sys.stderr)
        return 130
