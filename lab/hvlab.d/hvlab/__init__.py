# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""hvlab: a multi-host libvirt/QEMU lab on one machine, as privileged docker containers.

The entry point is lab/hvlab (it runs ``hvlab.cli.main`` on the machine's /usr/bin/python3);
see docs/lab.md. One module per job, each importing only those below it:

- ``config``: paths, names and limits; ``errors``: LabError (problem and fix), Interrupted;
- ``system``: commands, processes, state files, disk space, packages, the lock, Rollback;
- ``dockerd``: the docker CLI and the lab's own docker daemon;
- ``image``: the base and hypervisor images; ``network``: the lab network and addresses;
- ``hosts``: the hypervisor containers and the lab's status;
- ``inventory``: the Ansible inventories; ``transport``: TLS migration between the hosts;
- ``guests``: test guests; ``commands``: image, up, status, down, inventory;
- ``cli``: the command line (options, exit codes, error lines).

Standard library only.
"""
