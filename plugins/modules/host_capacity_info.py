#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) kvm_ras.poison_guard contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: host_capacity_info
short_description: Capacity, VMs, cordon and evacuation lock of a KVM/libvirt hypervisor
version_added: 0.1.0
description:
  - Read-only. Reports what a hypervisor can take and what it runs, for placing VMs during an
    evacuation and for checking afterwards where every VM runs.
  - Capacity comes from libvirt (logical CPUs, total and free memory; free memory counts page
    cache and buffers as free, like C(MemAvailable)) and from the VMs that run there (vCPUs and
    memory in use).
  - Every VM libvirt knows, with its state, persistence, size and disks. The size of each
    disk file is read from the host so a cold migration can check that a target sees the
    same storage.
  - Whether the host is cordoned (M(kvm_ras.poison_guard.cordon)) and whether an evacuation
    holds its lock (M(kvm_ras.poison_guard.evacuation_lock)).
  - When libvirt does not answer, the module fails but still lists the QEMU processes that
    run on the host (RV(qemu_processes)), so a caller can tell where a VM runs even when the
    host's libvirtd is down.
author:
  - kvm_ras maintainers (@kvm-ras)
extends_documentation_fragment:
  - kvm_ras.poison_guard.attributes
  - kvm_ras.poison_guard.attributes.INFO_MODULE
  - kvm_ras.poison_guard.libvirt
options:
  paths:
    description:
      - Files whose existence and size to report in RV(paths), for example the disk images
        of VMs that may be cold-migrated to this host.
    type: list
    elements: path
    default: []
  cordon_path:
    description:
      - The cordon marker file (see M(kvm_ras.poison_guard.cordon)).
    type: path
    default: /var/lib/kvm_ras/cordon.json
  lock_path:
    description:
      - The evacuation lock file (see M(kvm_ras.poison_guard.evacuation_lock)).
    type: path
    default: /run/kvm_ras/evacuation.lock
  proc_root:
    description:
      - Where the process file system is mounted, for the QEMU process list.
    type: path
    default: /proc
notes:
  - Needs root or membership of the C(libvirt) group for V(qemu:///system); reading disk sizes
    and the QEMU process list needs root.
seealso:
  - module: kvm_ras.poison_guard.cordon
  - module: kvm_ras.poison_guard.evacuation_lock
"""

EXAMPLES = r"""
- name: What can hv2 take?
  kvm_ras.poison_guard.host_capacity_info:
  register: hv2_capacity

- name: Show free memory and vCPUs in use
  ansible.builtin.debug:
    msg: "{{ hv2_capacity.memory_free_mib }} MiB free, {{ hv2_capacity.running_vcpus }} vCPUs of {{ hv2_capacity.cpus }} CPUs in use"

- name: Does hv3 see the disk images of the VMs of hv1?
  kvm_ras.poison_guard.host_capacity_info:
    paths:
      - /var/lib/libvirt/images/shared/web01.qcow2
  delegate_to: hv3
  register: hv3_capacity
"""

RETURN = r"""
hostname:
  description: Host name as libvirt reports it.
  returned: success
  type: str
  sample: hv2
libvirt_version:
  description: Version of the libvirt daemon.
  returned: success
  type: str
  sample: 9.0.0
cpus:
  description: Logical CPUs of the host.
  returned: success
  type: int
  sample: 32
memory_total_mib:
  description: Physical memory of the host in MiB.
  returned: success
  type: int
  sample: 257000
memory_free_mib:
  description: Free memory in MiB (free + buffers + page cache).
  returned: success
  type: int
  sample: 180000
running_count:
  description: Number of active VMs.
  returned: success
  type: int
  sample: 12
running_vcpus:
  description: vCPUs of the active VMs.
  returned: success
  type: int
  sample: 40
running_memory_mib:
  description: Memory of the active VMs in MiB (their current allocation).
  returned: success
  type: int
  sample: 65536
domains:
  description: Every VM libvirt knows on this host, sorted by name.
  returned: success
  type: list
  elements: dict
  contains:
    name:
      description: Domain name.
      type: str
    uuid:
      description: Domain UUID.
      type: str
    state:
      description: Same words as C(virsh domstate), for example V(running) or V(shut off).
      type: str
    active:
      description: True when a QEMU process runs the VM.
      type: bool
    persistent:
      description: True when the VM has a persistent definition on this host.
      type: bool
    autostart:
      description: True when libvirt starts the VM with the host.
      type: bool
    memory_mib:
      description: Maximum memory of the VM in MiB.
      type: int
    vcpus:
      description: vCPUs of the VM.
      type: int
    disks:
      description: Disks with target, type, device, path, readonly, shareable and size (bytes, files only).
      type: list
      elements: dict
  sample:
    - name: web01
      uuid: 7d3c1a52-52f6-4b40-9c55-0c5a4c1e0f11
      state: running
      active: true
      persistent: true
      autostart: false
      memory_mib: 4096
      vcpus: 2
      disks: [{target: vda, type: file, device: disk, path: /var/lib/libvirt/images/web01.qcow2,
               readonly: false, shareable: false, size: 10737418240}]
paths:
  description: For each of O(paths), whether it exists and its size in bytes.
  returned: success
  type: dict
  sample: {/var/lib/libvirt/images/shared/web01.qcow2: {exists: true, size: 10737418240}}
cordon:
  description: The cordon marker, or C(cordoned=false).
  returned: always
  type: dict
  sample: {cordoned: true, since: "2026-03-01T02:59:12Z", reason: DIMM B2 replacement, by: awx}
evacuation_lock:
  description: Whether an evacuation holds this host's lock, and whose.
  returned: always
  type: dict
  sample: {held: true, owner: hv1-20260301T025901Z-5f2a, since_iso: "2026-03-01T02:59:01Z", controller: awx-task-1}
qemu_processes:
  description:
    - QEMU processes running on the host, from the process table (independent of libvirt).
  returned: always
  type: list
  elements: dict
  sample: [{name: web01, uuid: 7d3c1a52-52f6-4b40-9c55-0c5a4c1e0f11, pid: 4242}]
libvirt_ok:
  description: True when libvirt answered.
  returned: always
  type: bool
  sample: true
"""

import os

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.kvm_ras.poison_guard.plugins.module_utils import host_markers
from ansible_collections.kvm_ras.poison_guard.plugins.module_utils import libvirt as libvirt_adapter
from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.poison import procfs

libvirt = libvirt_adapter.binding()  # None without python3-libvirt
LIBVIRT_IMPORT_ERROR = libvirt_adapter.import_error()


def qemu_processes(proc_root):
    """QEMU processes from the process table: [{name, uuid, pid}] (no libvirt needed)."""
    try:
        found = procfs.qemu_processes(proc_root)
    except OSError:
        return []
    return [{"name": info.get("name"), "uuid": info.get("uuid"), "pid": info["pid"]} for info in found]


def file_size(path):
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size if not (st.st_mode & 0o170000) == 0o060000 else None


def describe_domain(dom):
    state, max_kib, _cur_kib, vcpus, _cpu = dom.info()
    try:
        autostart = bool(dom.autostart())
    except libvirt.libvirtError:
        autostart = False
    disks = libvirt_adapter.domain_disks(dom.XMLDesc(0))
    for disk in disks:
        disk["size"] = file_size(disk["path"]) if disk.get("type") == "file" and disk.get("path") else None
    return {
        "name": dom.name(),
        "uuid": dom.UUIDString(),
        "state": libvirt_adapter.state_word(state),
        "active": state in libvirt_adapter.ACTIVE_STATES,
        "persistent": bool(dom.isPersistent()),
        "autostart": autostart,
        "memory_mib": int(max_kib // 1024),
        "vcpus": int(vcpus),
        "disks": disks,
    }


def free_memory_mib(conn):
    stats = conn.getMemoryStats(libvirt.VIR_NODE_MEMORY_STATS_ALL_CELLS, 0)
    kib = sum(int(stats.get(key, 0)) for key in ("free", "buffers", "cached"))
    return int(kib // 1024)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            uri=libvirt_adapter.uri_argument("libvirt_uri"),
            paths=dict(type="list", elements="path", default=[]),
            cordon_path=dict(type="path", default=host_markers.DEFAULT_CORDON_PATH),
            lock_path=dict(type="path", default=host_markers.DEFAULT_LOCK_PATH),
            proc_root=dict(type="path", default="/proc"),
        ),
        supports_check_mode=True,
    )
    params = module.params
    # A marker that exists but cannot be read (a symlink, a directory, no permission) counts as
    # present, with ``unreadable`` saying why: a lock or cordon nobody can read is not absent.
    cordon, cordon_problem = host_markers.read_json_marker(params["cordon_path"])
    lock, lock_problem = host_markers.read_json_marker(params["lock_path"])
    result = {
        "changed": False,
        "cordon": dict(cordon or {}, cordoned=cordon is not None, path=params["cordon_path"]),
        "evacuation_lock": dict(lock or {}, held=lock is not None, path=params["lock_path"]),
        "qemu_processes": qemu_processes(params["proc_root"]),
        "libvirt_ok": False,
    }
    for problem in (cordon_problem, lock_problem):
        if problem:
            module.warn("cannot read %s" % problem)
    if libvirt is None:
        module.fail_json(msg=missing_required_lib(libvirt_adapter.LIBRARY), exception=LIBVIRT_IMPORT_ERROR, **result)
    conn, error = libvirt_adapter.connect(libvirt, params["uri"])
    if conn is None:
        module.fail_json(msg="libvirt at %s does not answer: %s" % (params["uri"], error), **result)
    try:
        _model, memory_mib, cpus, _mhz, _nodes, _sockets, _cores, _threads = conn.getInfo()
        version = conn.getLibVersion()
        domains = []
        for dom in conn.listAllDomains(0):
            try:
                domains.append(describe_domain(dom))
            except libvirt.libvirtError as exc:
                if not libvirt_adapter.is_no_domain(libvirt, exc):
                    raise
                # gone between listing and reading (it just migrated away or was undefined)
        domains.sort(key=lambda d: d["name"])
        result.update({
            "libvirt_ok": True,
            "hostname": conn.getHostname(),
            "libvirt_version": "%d.%d.%d" % (version // 1000000, version // 1000 % 1000, version % 1000),
            "cpus": int(cpus),
            "memory_total_mib": int(memory_mib),
            "memory_free_mib": free_memory_mib(conn),
            "domains": domains,
            "running_count": sum(1 for d in domains if d["active"]),
            "running_vcpus": sum(d["vcpus"] for d in domains if d["active"]),
            "running_memory_mib": sum(d["memory_mib"] for d in domains if d["active"]),
        })
    except libvirt.libvirtError as exc:
        module.fail_json(msg="libvirt at %s failed while listing the host: %s" % (params["uri"], exc), **result)
    finally:
        libvirt_adapter.close_quietly(libvirt, conn)
    result["paths"] = {path: {"exists": os.path.exists(path), "size": file_size(path)} for path in params["paths"]}
    module.exit_json(**result)


if __name__ == "__main__":
    main()
