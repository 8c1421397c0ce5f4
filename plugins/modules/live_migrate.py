#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) kvm_ras.poison_guard contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: live_migrate
short_description: Live-migrate one VM to another hypervisor through libvirt, with a timeout and a clear failure class
version_added: 0.1.0
description:
  - Runs on the B(source) hypervisor and moves one running libvirt domain to the hypervisor
    behind O(dest_uri) with libvirt's migration API (the same calls as C(virsh migrate)),
    no shell involved, so VM names with spaces, quotes or C($(...)) are plain data.
  - The migration runs in a thread while the module polls libvirt's job statistics. When
    O(timeout) passes, the job is aborted cleanly with C(virDomainAbortJob) and the VM keeps
    running on the source.
  - On failure the result says why, as one of four classes (RV(failure.class)) - V(poisoned)
    when QEMU refused because the VM has hardware-poisoned memory, V(timeout), V(destination)
    when the destination was unreachable or refused, V(other) - and where the VM now runs
    (RV(running_on)), checked on both hypervisors. A VM found running on both hypervisors or
    on neither is reported as critical.
  - Idempotent. A VM already running on the destination and not running on the source is
    left alone (C(changed=false)).
  - Gate migrations with M(kvm_ras.poison_guard.migration_gate) first. QEMU older than 9.0
    (Debian 12 ships 7.2) does not refuse a poisoned VM; it dies with SIGBUS during the
    migration and the VM is lost.
  - Right before the migration starts, the module scans this one VM's QEMU process again with
    the detection core of M(kvm_ras.poison_guard.poison_info) (O(poison_check), on by default),
    so a page poisoned since the gate decided is not read by the migration. A VM that is not
    V(clean) is not migrated (RV(failure.class=poisoned) or V(poison_unknown)) and keeps running
    on the source; RV(poison_check) holds the verdict and evidence.
author:
  - kvm_ras maintainers (@kvm-ras)
extends_documentation_fragment:
  - kvm_ras.poison_guard.attributes
  - kvm_ras.poison_guard.attributes.ACTING_MODULE
  - kvm_ras.poison_guard.attributes.ACTION_PLUGIN
  - kvm_ras.poison_guard.libvirt.SOURCE
attributes:
  action:
    details:
      - The action plugin shows the migration's progress while it runs when the task has C(async).
  async:
    support: full
    details:
      - With C(async) and C(poll) set to 0 the task still waits for the migration, and prints a line every
        O(progress_interval) seconds (VM, target, percent of memory transferred, rate, time left),
        in ansible-playbook and in AWX job output. The task holds its worker until the migration
        ends, so C(throttle) still bounds how many migrations run at once.
options:
  name:
    description:
      - Name of the libvirt domain to migrate.
    type: str
    required: true
  dest_uri:
    description:
      - libvirt URI of the destination hypervisor, for example V(qemu+tls://hv2/system) or
        V(qemu+ssh://root@hv2/system).
      - With O(peer2peer=true) the source libvirtd opens it; otherwise this module opens it.
        The module opens it in both cases to check where the VM runs.
    type: str
    required: true
  live:
    description:
      - Keep the VM running while its memory is copied (C(VIR_MIGRATE_LIVE)). With V(false)
        the VM is paused for the whole transfer.
    type: bool
    default: true
  persistent_dest:
    description:
      - Make the VM persistent (defined) on the destination (C(VIR_MIGRATE_PERSIST_DEST)).
    type: bool
    default: true
  undefine_source:
    description:
      - Remove the VM's definition from the source once it runs on the destination
        (C(VIR_MIGRATE_UNDEFINE_SOURCE)).
    type: bool
    default: true
  peer2peer:
    description:
      - Let the source libvirtd drive the migration and talk to the destination libvirtd
        itself (C(VIR_MIGRATE_PEER2PEER)). The migration then does not depend on this module's
        own connection to the destination, and O(tunnelled) becomes possible.
      - With V(false) the module drives the migration between the two libvirt connections,
        like C(virsh migrate) without C(--p2p).
    type: bool
    default: true
  tunnelled:
    description:
      - Send the migration stream through the libvirtd connection instead of a direct
        QEMU-to-QEMU connection (C(VIR_MIGRATE_TUNNELLED)). Needs O(peer2peer=true).
    type: bool
    default: false
  bandwidth:
    description:
      - Bandwidth limit for the migration stream in MiB/s. Unset means libvirt's default
        (unlimited).
    type: int
  max_downtime:
    description:
      - Longest pause of the VM at the end of the migration, in milliseconds
        (C(virDomainMigrateSetMaxDowntime)). Unset means QEMU's default (300 ms).
    type: int
  auto_converge:
    description:
      - Throttle the guest's vCPUs when its memory is dirtied faster than it can be sent
        (C(VIR_MIGRATE_AUTO_CONVERGE)).
    type: bool
    default: false
  postcopy:
    description:
      - Opt in to post-copy. The migration starts as pre-copy with C(VIR_MIGRATE_POSTCOPY)
        allowed. If it has not finished when O(timeout) passes, it switches to post-copy
        instead of aborting. The VM then runs on the destination while its remaining memory
        is pulled from the source, and it gets one more O(timeout) window to finish.
      - A post-copy migration cannot be aborted. If the network or either hypervisor fails
        during post-copy, the VM is lost. This is why it is off by default.
    type: bool
    default: false
  copy_storage:
    description:
      - Copy disks that are not on shared storage. V(all) copies whole disks
        (C(VIR_MIGRATE_NON_SHARED_DISK)). V(inc) copies only the top image of each backing
        chain (C(VIR_MIGRATE_NON_SHARED_INC)). V(none) expects shared storage. The destination
        needs a storage pool for the disks' directory.
    type: str
    choices: [none, all, inc]
    default: none
  unsafe:
    description:
      - Migrate even when libvirt considers it unsafe, for example writable disks on storage
        libvirt does not know to be shared (C(VIR_MIGRATE_UNSAFE)).
    type: bool
    default: false
  timeout:
    description:
      - Seconds the migration may take. When exceeded, the migration job is aborted and the
        VM keeps running on the source (RV(failure.class=timeout)). With O(postcopy=true) the
        migration switches to post-copy instead, see there.
      - If the job completes before libvirt carries out the abort, the VM runs on the
        destination only; the module then reports the migration (RV(migrated=true),
        RV(aborted=true)) with a warning rather than a failure.
    type: float
    default: 600
  poll_interval:
    description:
      - Seconds between two reads of the migration job's statistics (progress and timeout
        checks).
    type: float
    default: 1.0
  progress_interval:
    description:
      - With C(async) on the task, seconds between two progress lines (read on the controller).
    type: int
    default: 5
  progress_file:
    description:
      - Where the module writes the migration's progress on the source (JSON, replaced at every
        O(poll_interval)). The action plugin sets it when the task runs with C(async); there is no
        need to set it yourself.
    type: path
  poison_check:
    description:
      - Scan the VM's QEMU process for poisoned guest memory right before the migration starts
        (also in check mode; it only reads). The VM is selected by its libvirt UUID, so another
        QEMU process with the same name is never scanned in its place.
      - Needs root on the source hypervisor (the task runs there with become) and a local
        O(uri) such as V(qemu:///system).
      - V(false) skips the scan; the gate's earlier decision is then all that protects the VM.
    type: bool
    default: true
  on_unknown:
    description:
      - What O(poison_check) does when the VM's poison status is V(unknown) (its memory could not
        be fully inspected).
      - V(fail) does not migrate it. V(allow) migrates it with a warning; if the VM does hold a
        poisoned page, a QEMU older than 9.0 crashes during the migration.
      - A V(poisoned) VM is never migrated while O(poison_check=true).
    type: str
    choices: [fail, allow]
    default: fail
  poison_holes:
    description:
      - Live-migrate with QEMU's C(x-poison-holes) migration capability (the
        C(kvm_ras.poison_guard.patched_qemu) role's QEMU 7.2 series, docs/poison-holes.md), so the
        pages of QEMU's poison list are never read but sent as holes, and the destination
        installs each one with C(UFFDIO_POISON) before the guest runs. This is how a V(poisoned)
        VM moves without downtime.
      - The module sets the capability on the source QEMU (QMP C(migrate-set-capabilities)
        through libvirt) and gives libvirt a destination XML (C(VIR_MIGRATE_PARAM_DEST_XML)) that
        starts the incoming QEMU with C(-global migration.x-poison-holes=on). The persistent
        definition on the destination (C(VIR_MIGRATE_PARAM_PERSIST_XML)) is the source's
        without that argument, so the VM's next QEMU starts as any other; the running QEMU on
        the destination keeps the argument in its live XML until it is restarted, so a later
        migration of it needs a destination with the series too. After a failed migration the
        capability is switched off on the source again.
      - With O(poison_check=true), a V(poisoned) VM is migrated only when
        M(kvm_ras.poison_guard.migration_gate)'s
        O(kvm_ras.poison_guard.migration_gate#module:on_poisoned=migrate_with_holes) rule holds
        for it and O(target_facts) (its running QEMU carries the capability and lists every
        hole, the destination's QEMU carries it and its kernel has C(UFFDIO_POISON)).
      - After the migration, the destination QEMU's poison list is read (RV(holes_carried)).
      - Not with O(postcopy=true) (QEMU refuses the combination).
    type: bool
    default: false
  target_facts:
    description:
      - The destination's facts for the O(poison_check) of O(poison_holes=true) - C(poison_holes)
        (the destination's RV(kvm_ras.poison_guard.qemu_guard_info#module:binary.poison_holes)),
        C(uffd_poison) (the destination's RV(kvm_ras.poison_guard.poison_info#module:host)
        C(uffd_poison)) and optionally C(name); the same as
        O(kvm_ras.poison_guard.migration_gate#module:target_facts).
      - Required when O(poison_holes=true) and O(poison_check=true).
    type: dict
notes:
  - The module never undefines or destroys a VM itself. It only asks libvirt to migrate,
    abort, or switch to post-copy.
  - When O(max_downtime) is set, the source QEMU keeps that downtime limit after a failed or
    aborted migration.
  - The module opens a second connection to O(uri) for reading the job's progress and
    for the abort, so neither waits behind the blocking migrate call.
seealso:
  - module: kvm_ras.poison_guard.migration_gate
  - module: kvm_ras.poison_guard.poison_info
"""

EXAMPLES = r"""
- name: Gate, then migrate the allowed VMs of hv1 to hv2
  hosts: hv1
  become: true
  tasks:
    - name: Decide which VMs may be migrated
      kvm_ras.poison_guard.migration_gate:
        on_poisoned: skip
        on_unknown: skip
      register: gate

    - name: Live-migrate every allowed VM
      kvm_ras.poison_guard.live_migrate:
        name: "{{ item }}"
        dest_uri: qemu+tls://hv2/system
        bandwidth: 500
        timeout: 300
      loop: "{{ gate.allowed }}"

- name: Migrate one VM over ssh, copying local disks, with a short downtime limit
  hosts: hv1
  become: true
  tasks:
    - name: Migrate web 01 to hv3
      kvm_ras.poison_guard.live_migrate:
        name: web 01
        dest_uri: qemu+ssh://root@hv3/system
        copy_storage: all
        max_downtime: 100
        auto_converge: true
      register: move

    - name: Say where the VM ended up
      ansible.builtin.debug:
        msg: "{{ move.running_on }} after {{ move.job.duration_ms }} ms, {{ move.job.data_total_bytes }} bytes"
"""

RETURN = r"""
name:
  description: The VM's name.
  returned: always
  type: str
  sample: web01
dest_uri:
  description: The destination URI used.
  returned: always
  type: str
  sample: qemu+tls://hv2/system
running_on:
  description:
    - Where the VM runs after the module, as found by asking both hypervisors.
    - V(source), V(destination), V(both) or V(none). V(unknown) appears when a hypervisor could
      not be asked. V(both) and V(none) are critical, see RV(critical).
  returned: always
  type: str
  sample: destination
placement:
  description: What each hypervisor reported for the VM afterwards.
  returned: always
  type: dict
  contains:
    source:
      description: V(running), V(defined) (inactive definition), V(absent) or V(unknown).
      type: str
    destination:
      description: V(running), V(defined), V(absent) or V(unknown).
      type: str
  sample: {source: absent, destination: running}
critical:
  description:
    - True when the VM runs on both hypervisors (two QEMUs writing the same disks) or on
      neither (the VM is down) after a migration attempt. Such a run always fails with a
      message that starts with C(CRITICAL).
  returned: always
  type: bool
  sample: false
migrated:
  description: True when this run moved the VM.
  returned: always
  type: bool
  sample: true
flags:
  description: Names of the libvirt migration flags used (or that would be used in check mode).
  returned: always
  type: list
  elements: str
  sample: [VIR_MIGRATE_LIVE, VIR_MIGRATE_PEER2PEER, VIR_MIGRATE_PERSIST_DEST, VIR_MIGRATE_UNDEFINE_SOURCE]
params:
  description: Typed migration parameters passed to libvirt.
  returned: always
  type: dict
  sample: {bandwidth: 100}
job:
  description:
    - Statistics of the migration job, from the destination's record of the completed job
      when available, else from the last poll. Times in milliseconds, sizes in bytes.
      Keys libvirt did not report are null.
  returned: when a migration was started
  type: dict
  contains:
    duration_ms:
      description: Time the job took.
      type: int
    downtime_ms:
      description: How long the VM was paused at the switch-over (known after completion).
      type: int
    data_total_bytes:
      description: Total data to transfer.
      type: int
    data_processed_bytes:
      description: Data transferred.
      type: int
    data_remaining_bytes:
      description: Data still to transfer.
      type: int
    memory_iterations:
      description: Number of passes over guest memory.
      type: int
    job_type:
      description: V(completed), V(failed), V(cancelled), V(unbounded) and so on.
      type: str
  sample:
    duration_ms: 812
    downtime_ms: 21
    data_total_bytes: 67773440
    data_processed_bytes: 624640
    data_remaining_bytes: 0
    memory_iterations: 2
    job_type: completed
started_at:
  description: When the migration call started (UTC, ISO 8601); the evacuation report's timeline uses it.
  returned: when a migration was started
  type: str
  sample: "2026-12-06T03:30:12Z"
progress_lines:
  description: The progress lines printed while the task ran with C(async) (see O(progress_interval)).
  returned: when the task ran with C(async)
  type: list
  elements: str
  sample: ["vm1 -> hv2: 75% of 256.0 MiB, 1.0 MiB/s, about 64 s left (pass 1, 3 min 12 s so far)"]
duration_seconds:
  description: Wall-clock seconds from the start of the migration call to its end.
  returned: when a migration was started
  type: float
  sample: 0.93
progress:
  description: The last job-statistics samples taken while the migration ran (at most 20).
  returned: when a migration was started
  type: list
  elements: dict
  sample: [{elapsed_s: 1.0, data_processed_bytes: 1048576, data_remaining_bytes: 5242880, memory_iterations: 1}]
poison_check:
  description:
    - The scan right before the migration (O(poison_check=true)); null when it was switched off.
    - C(status) (V(clean), V(poisoned), V(unknown)), C(pid) and C(start_ticks) of the scanned QEMU
      process, C(uuid), C(reasons), C(poisoned_pages), C(evidence), C(migration_guard),
      C(qemu_version), C(seconds) the scan took and C(origin) (host, boot id, time).
  returned: when the VM was found running on the source and not on the destination
  type: dict
  sample: {status: clean, pid: 4242, start_ticks: 7000, uuid: 6f1c2a8e-3a50-4c3e-9d2b-7f1f6c3b9a10, reasons: [], seconds: 0.08}
failure:
  description: Why the migration failed; null when it did not.
  returned: always
  type: dict
  contains:
    class:
      description:
        - V(poisoned), V(timeout), V(destination) or V(other).
        - V(poisoned) also when O(poison_check) found the VM poisoned, and V(poison_unknown) when
          it found its status unknown; in both cases nothing was started.
      type: str
    message:
      description: libvirt's error message, unchanged.
      type: str
    explanation:
      description: What the class means for the VM and what to do.
      type: str
  sample:
    class: poisoned
    message: >-
      internal error: unable to execute QEMU command 'migrate': Can't migrate this vm with
      hardware poisoned memory, please reboot the vm and try again
    explanation: QEMU refused to migrate ...
holes_carried:
  description:
    - The destination QEMU's poison list (QMP C(x-query-hwpoison)) after a migration with
      O(poison_holes=true), one entry per page - C(block), C(offset), C(page-size), C(gpa),
      C(hva) (the destination's address). Null when it could not be read (a warning says why).
  returned: when O(poison_holes=true) and the VM was migrated
  type: list
  elements: dict
  sample: [{"block": "pc.ram", "offset": 16777216, "page-size": 4096, "gpa": 16777216, "hva": 140121327190016}]
holes_expected:
  description: The source QEMU's poison list read by O(poison_check) right before the migration
    (null when it was not read); RV(holes_carried) should list the same C(block) and C(offset).
  returned: when O(poison_holes=true) and the VM was migrated
  type: list
  elements: dict
aborted:
  description: True when the module asked libvirt to abort the job because O(timeout) passed.
  returned: always
  type: bool
  sample: false
postcopy_started:
  description: True when the migration was switched to post-copy.
  returned: always
  type: bool
  sample: false
"""

import json
import re
import time
import traceback

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.kvm_ras.poison_guard.plugins.module_utils import host_markers
from ansible_collections.kvm_ras.poison_guard.plugins.module_utils import libvirt as libvirt_adapter
from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.messages import describe_os_error
from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.migration import (
    CRITICAL_PLACEMENTS,
    POISON_HOLES_CAPABILITY,
    POISON_CHECK_ON_UNKNOWN,
    POISON_UNKNOWN,
    POISONED,
    MigrationInputError,
    build_plan,
    classify_error,
    describe_abort,
    dest_xml_with_poison_holes,
    poison_precheck,
    resolve_flags,
    resolve_params,
    shape_job_stats,
    progress_record,
    supervise,
    where_running,
    without_poison_holes_arg,
)
from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.poison import qemu_list

# How long an aborted job may take to wind down before the module stops waiting for it.
ABORT_GRACE_SECONDS = 60

libvirt = libvirt_adapter.binding()  # None without python3-libvirt
LIBVIRT_IMPORT_ERROR = libvirt_adapter.import_error()


HOST_UUID_RE = re.compile(r"<host>\s*<uuid>([^<]+)</uuid>")

ARGUMENT_SPEC = dict(
    name=dict(type="str", required=True),
    dest_uri=dict(type="str", required=True),
    uri=libvirt_adapter.uri_argument("source_uri"),
    live=dict(type="bool", default=True),
    persistent_dest=dict(type="bool", default=True),
    undefine_source=dict(type="bool", default=True),
    peer2peer=dict(type="bool", default=True),
    tunnelled=dict(type="bool", default=False),
    bandwidth=dict(type="int"),
    max_downtime=dict(type="int"),
    auto_converge=dict(type="bool", default=False),
    postcopy=dict(type="bool", default=False),
    copy_storage=dict(type="str", choices=["none", "all", "inc"], default="none"),
    unsafe=dict(type="bool", default=False),
    timeout=dict(type="float", default=600),
    poll_interval=dict(type="float", default=1.0),
    progress_interval=dict(type="int", default=5),
    progress_file=dict(type="path"),
    poison_check=dict(type="bool", default=True),
    on_unknown=dict(type="str", choices=list(POISON_CHECK_ON_UNKNOWN), default="fail"),
    poison_holes=dict(type="bool", default=False),
    target_facts=dict(type="dict"),
)
VIR_DOMAIN_XML_INACTIVE = 2
VIR_DOMAIN_XML_MIGRATABLE = 8


def domain_state(conn, name):
    """(state word, domain or None): running / defined / absent / unknown."""
    if conn is None:
        return "unknown", None
    try:
        dom = conn.lookupByName(name)
    except libvirt.libvirtError as exc:
        if libvirt_adapter.is_no_domain(libvirt, exc):
            return "absent", None
        return "unknown", None
    try:
        return ("running" if dom.isActive() else "defined"), dom
    except libvirt.libvirtError as exc:
        if libvirt_adapter.is_no_domain(libvirt, exc):
            return "absent", None
        return "unknown", dom


def host_uuid(conn):
    """The libvirt host UUID of a connection (from its capabilities), or None."""
    try:
        match = HOST_UUID_RE.search(conn.getCapabilities())
    except libvirt.libvirtError:
        return None
    return match.group(1).strip().lower() if match else None


def _active(state):
    return {"running": True, "defined": False, "absent": False}.get(state)


def _list_names(conn):
    try:
        return sorted(dom.name() for dom in conn.listAllDomains(0))
    except libvirt.libvirtError:
        return []


class LiveMigration:
    """One run of the module: connect, decide, migrate, check, report."""

    def __init__(self, module):
        self.module = module
        self.params = module.params
        self.name = module.params["name"]
        self.dest_uri = module.params["dest_uri"]
        self.source = None
        self.dest = None
        self.control = None
        self.qemu = None
        self.result = {
            "changed": False,
            "name": self.name,
            "dest_uri": self.dest_uri,
            "running_on": "unknown",
            "placement": {"source": "unknown", "destination": "unknown"},
            "critical": False,
            "migrated": False,
            "flags": [],
            "params": {},
            "failure": None,
            "aborted": False,
            "postcopy_started": False,
        }

    def fail(self, msg, **extra):
        self.result.update(extra)
        self.module.fail_json(msg=msg, **self.result)

    def fail_classified(self, message, timed_out=False, phase="migrate"):
        source_running = _active(self.result["placement"]["source"])
        error_class, explanation = classify_error(message, timed_out=timed_out, phase=phase,
                                                  source_running=source_running)
        self.result["failure"] = {"class": error_class, "message": message, "explanation": explanation}
        where = self.result["running_on"]
        text = "live migration of %r to %s failed (%s): %s; the VM runs on: %s" % (
            self.name, self.dest_uri, error_class, message, where)
        if where in CRITICAL_PLACEMENTS:
            text = "CRITICAL: VM %r is running on %s after a failed migration. %s" % (
                self.name, "BOTH hypervisors" if where == "both" else "NEITHER hypervisor", text)
        self.module.fail_json(msg=text, **self.result)

    def observe(self, migration_started):
        src_state, _dom = domain_state(self.source, self.name)
        dst_state, _ddom = domain_state(self.dest, self.name)
        self.result["placement"] = {"source": src_state, "destination": dst_state}
        self.result["running_on"] = where_running(_active(src_state), _active(dst_state), migration_started)
        self.result["critical"] = migration_started and self.result["running_on"] in CRITICAL_PLACEMENTS
        return src_state, dst_state

    def run(self, plan):
        self.result["flags"] = list(plan["flags"])
        self.result["params"] = dict(plan["params"])

        read_only = self.module.check_mode
        self.source, error = libvirt_adapter.connect(libvirt, self.params["uri"], read_only)
        if self.source is None:
            self.fail("cannot open the source libvirt %s: %s (is libvirtd running, and does the task run "
                      "with become on the source hypervisor?)" % (self.params["uri"], error))
        self.dest, error = libvirt_adapter.connect(libvirt, self.dest_uri, read_only)
        if self.dest is None:
            self.observe(migration_started=False)
            self.fail_classified(error, phase="connect_destination")

        source_host, dest_host = host_uuid(self.source), host_uuid(self.dest)
        if source_host and source_host == dest_host:
            self.fail("dest_uri %s reaches the source hypervisor itself (host UUID %s): give the URI of "
                      "another hypervisor" % (self.dest_uri, source_host))
        src_state, dst_state = self.observe(migration_started=False)
        if src_state == "running" and dst_state == "running":
            self.result["critical"] = True
            self.fail("CRITICAL: VM %r is already running on BOTH %s and %s; stop one of them by hand "
                      "(two QEMUs may be writing the same disks) before anything else" % (
                          self.name, self.params["uri"], self.dest_uri))
        if dst_state == "running":
            if src_state == "defined" and self.params["undefine_source"]:
                self.module.warn("VM %r runs on the destination but an inactive definition is left on the "
                                 "source; remove it when you no longer need it" % self.name)
            self.module.exit_json(msg="VM %r already runs on %s" % (self.name, self.dest_uri), **self.result)
        if src_state != "running":
            if src_state == "defined":
                self.fail("VM %r is defined on the source but not running: live_migrate moves running VMs "
                          "only" % self.name)
            if src_state == "absent":
                self.fail("VM %r was not found on the source (%s: %s) and does not run on %s" % (
                    self.name, self.params["uri"], ", ".join(_list_names(self.source)) or "no VMs",
                    self.dest_uri))
            self.fail("cannot tell whether VM %r runs on the source %s" % (self.name, self.params["uri"]))

        self.check_poison()
        if self.module.check_mode:
            self.result["changed"] = True
            self.module.exit_json(msg="would migrate %r to %s with %s" % (
                self.name, self.dest_uri, ", ".join(plan["flags"]) or "no flags"), **self.result)
        self.migrate(plan)

    def check_poison(self):
        """Scan this VM's QEMU right before the migration starts (poison_check=true): a page
        poisoned since the gate decided must not be read by the migration."""
        if not self.params["poison_check"]:
            self.result["poison_check"] = None
            return
        try:
            uuid = self.source.lookupByName(self.name).UUIDString()
        except libvirt.libvirtError as exc:
            self.fail("cannot read the UUID of VM %r for the poison check: %s" % (self.name, exc))
        go, report, message = poison_precheck(
            uuid, self.name, self.params["uri"], self.params["on_unknown"],
            target_facts=self.params["target_facts"] if self.params["poison_holes"] else None)
        self.result["poison_check"] = report
        if go:
            if report.get("with_holes"):
                self.module.warn("VM %r is poisoned and is migrated with its holes carried (x-poison-holes): %s" % (
                    self.name, ", ".join(p.get("hva") or "?" for p in report.get("poisoned_pages") or [])))
            elif report.get("status") != "clean":
                self.module.warn("VM %r is migrated with poison status %s because on_unknown=allow: %s" % (
                    self.name, report.get("status"), "; ".join(report.get("reasons") or [])))
            return
        klass = POISONED if report.get("status") == "poisoned" else POISON_UNKNOWN
        self.result["failure"] = {
            "class": klass, "message": message,
            "explanation": "the VM was not migrated: the poison check right before the migration did not "
                           "find it clean; it keeps running on the source"}
        self.module.fail_json(msg="live migration of %r to %s refused: %s" % (self.name, self.dest_uri, message),
                              **self.result)

    def open_control(self, dom):
        """The domain seen through a second source connection, for watching and aborting the job.

        The blocking migrate call keeps the first connection busy. libvirt 9.0's client was seen
        (about one run in nine) to hold an abort request sent on that same connection until the
        migration had finished, so polls, the downtime limit, the post-copy switch and the abort
        travel on a connection of their own. Falls back to the migrating connection if a second
        one cannot be opened.
        """
        try:
            self.control = libvirt.open(self.params["uri"])
            return self.control.lookupByUUIDString(dom.UUIDString())
        except libvirt.libvirtError as exc:
            self.module.warn("could not open a second connection to %s for watching the migration (%s); "
                             "polling and abort share the migrating connection" % (self.params["uri"], exc))
            return dom

    def poison_holes_params(self, dom):
        """The destination and persistent XML of a migration with x-poison-holes (see the
        option), and the capability set on the source QEMU. Fails the task before anything
        moves when the source QEMU refuses the capability."""
        qemu_binding, error = libvirt_adapter.load_qemu()
        if qemu_binding is None:
            self.fail("poison_holes=true needs libvirt_qemu of %s: %s" % (libvirt_adapter.LIBRARY, error))
        self.qemu = qemu_binding
        try:
            live_xml = dom.XMLDesc(VIR_DOMAIN_XML_MIGRATABLE)
            extra = {"dest_xml": dest_xml_with_poison_holes(live_xml)}
            if self.params["persistent_dest"]:
                persistent = dom.XMLDesc(VIR_DOMAIN_XML_INACTIVE | VIR_DOMAIN_XML_MIGRATABLE) \
                    if dom.isPersistent() else live_xml
                extra["persist_xml"] = without_poison_holes_arg(persistent)
        except libvirt.libvirtError as exc:
            self.fail("cannot read the domain XML of %r for the migration with poison_holes: %s" % (self.name, exc))
        try:
            libvirt_adapter.qmp(qemu_binding, dom, "migrate-set-capabilities", {
                "capabilities": [{"capability": POISON_HOLES_CAPABILITY, "state": True}]})
        except (libvirt_adapter.QmpError, libvirt.libvirtError) as exc:
            self.fail("the source QEMU of %r refused the %s migration capability (%s): its running binary "
                      "lacks the patched_qemu role's x-poison-holes series (a VM keeps the binary it was "
                      "started with); nothing was started and the VM keeps running on the source" % (
                          self.name, POISON_HOLES_CAPABILITY, exc))
        self.result["poison_holes_set"] = True
        return extra

    def reset_poison_holes(self, dom):
        """Switch the capability off again on a source QEMU that still runs the VM after a failed
        migration: left on, a later migration to a destination without it would be refused."""
        try:
            libvirt_adapter.qmp(self.qemu, dom, "migrate-set-capabilities", {
                "capabilities": [{"capability": POISON_HOLES_CAPABILITY, "state": False}]})
        except (libvirt_adapter.QmpError, libvirt.libvirtError) as exc:
            self.module.warn("could not switch %s off again on the source QEMU of %r: %s" % (
                POISON_HOLES_CAPABILITY, self.name, exc))

    def read_holes_carried(self):
        """The destination QEMU's poison list after the migration (None with a warning)."""
        self.result["holes_expected"] = (self.result.get("poison_check") or {}).get("qemu_hwpoison")
        self.result["holes_carried"] = None
        try:
            value = libvirt_adapter.qmp(self.qemu, self.dest.lookupByName(self.name), qemu_list.QUERY)
            self.result["holes_carried"] = qemu_list.parse_entries(value)
        except (libvirt_adapter.QmpError, libvirt.libvirtError, ValueError) as exc:
            self.module.warn("could not read the poison list (%s) of %r on %s after the migration: %s" % (
                qemu_list.QUERY, self.name, self.dest_uri, exc))
            return
        expected = self.result["holes_expected"]
        if expected is not None:
            carried = {(e["block"], e["offset"]) for e in self.result["holes_carried"]}
            missing = [e for e in expected if (e["block"], e["offset"]) not in carried]
            if missing:
                self.module.warn("the destination QEMU of %r does not list %d hole(s) the source listed: %s" % (
                    self.name, len(missing), ", ".join("%s+%#x" % (e["block"], e["offset"]) for e in missing)))

    def migrate(self, plan):
        dom = self.source.lookupByName(self.name)
        extra = self.poison_holes_params(dom) if plan["poison_holes"] else {}
        ctl = self.open_control(dom)
        flags = resolve_flags(plan["flags"], libvirt)
        params = resolve_params(dict(plan["params"], **extra), libvirt)
        downtime = {"pending": plan["max_downtime"]}
        if downtime["pending"]:
            try:
                ctl.migrateSetMaxDowntime(downtime["pending"], 0)
                downtime["pending"] = None
            except libvirt.libvirtError:
                pass  # some libvirt versions accept it only while the migration job runs: set it at the first poll

        if plan["peer2peer"]:
            def start():
                return dom.migrateToURI3(self.dest_uri, params, flags)
        else:
            def start():
                return dom.migrate3(self.dest, params, flags)

        def poll():
            if downtime["pending"]:
                ctl.migrateSetMaxDowntime(downtime["pending"], 0)
                downtime["pending"] = None
            return ctl.jobStats(0)

        switch = None
        if plan["postcopy"]:
            def switch():
                ctl.migrateStartPostCopy(0)

        wall = time.time()
        self.result["started_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(wall))
        write_progress = self.progress_writer()
        if write_progress:
            write_progress(progress_record(0.0, None, "starting"))
        outcome = supervise(start, poll, ctl.abortJob, self.params["timeout"], self.params["poll_interval"],
                            switch_to_postcopy=switch, abort_grace=ABORT_GRACE_SECONDS,
                            on_progress=write_progress)
        self.result["duration_seconds"] = round(time.time() - wall, 3)
        self.result["aborted"] = outcome["abort_requested"]
        self.result["postcopy_started"] = outcome["postcopy_started"]
        self.result["progress"] = outcome["progress"]
        src_state, dst_state = self.observe(migration_started=True)
        self.result["job"] = self.completed_stats(dom, dst_state) or shape_job_stats(outcome["last_stats"])
        moved = dst_state == "running" and src_state != "running"
        self.result["changed"] = moved or self.result["placement"]["source"] != "running"
        self.result["migrated"] = moved
        if plan["poison_holes"]:
            if moved:
                self.read_holes_carried()
            elif src_state == "running":
                self.reset_poison_holes(dom)

        if not outcome["finished"]:
            message = "the migration job was still running %d s after %s" % (
                self.params["timeout"] if outcome["postcopy_started"] else ABORT_GRACE_SECONDS,
                "the switch to post-copy" if outcome["postcopy_started"]
                else "the abort request (%s)" % describe_abort(outcome))
            self.fail_classified(message, timed_out=True)
        if outcome["error"] is not None:
            self.fail_classified(str(outcome["error"]), timed_out=outcome["abort_requested"])
        if self.result["critical"] or not moved:
            self.fail_classified("libvirt reported success but the VM is not running on the destination only "
                                 "(source: %s, destination: %s)" % (src_state, dst_state))
        if outcome["abort_requested"]:
            self.module.warn("the migration of %r completed although its %s s timeout had passed and the job was "
                             "asked to abort (%s); the VM runs on %s only" % (
                                 self.name, self.params["timeout"], describe_abort(outcome), self.dest_uri))
        self.module.exit_json(msg="migrated %r to %s in %.1f s" % (
            self.name, self.dest_uri, self.result["duration_seconds"]), **self.result)

    def completed_stats(self, dom, dst_state):
        """Statistics of the finished job: the destination keeps them, the source if it still has the VM."""
        candidates = []
        if dst_state in ("running", "defined"):
            try:
                candidates.append(self.dest.lookupByName(self.name))
            except libvirt.libvirtError:
                pass
        candidates.append(dom)
        for candidate in candidates:
            try:
                stats = candidate.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
            except libvirt.libvirtError:
                continue
            if stats and stats.get("type") not in (None, 0):
                return shape_job_stats(stats)
        return None

    def close(self):
        for conn in (self.control, self.dest, self.source):
            libvirt_adapter.close_quietly(libvirt, conn)

    def progress_writer(self):
        """A function that replaces the progress file atomically, or None without one."""
        path = self.params["progress_file"]
        if not path:
            return None

        def write(record):
            record = dict(record, vm=self.params["name"], dest_uri=self.params["dest_uri"])
            host_markers.replace_file(path, json.dumps(record).encode("utf-8"))
        return write


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    # Inputs first: a bad input is reported as such even on a host without python3-libvirt.
    try:
        plan = build_plan(module.params)
    except MigrationInputError as exc:
        module.fail_json(msg=str(exc), name=module.params["name"], dest_uri=module.params["dest_uri"])
    if libvirt is None:
        module.fail_json(msg=missing_required_lib(libvirt_adapter.LIBRARY), exception=LIBVIRT_IMPORT_ERROR)
    migration = LiveMigration(module)
    try:
        migration.run(plan)
    except OSError as exc:
        module.fail_json(msg=describe_os_error(exc, "live migration of %r stopped" % module.params["name"]),
                         exception=traceback.format_exc(), **migration.result)
    finally:
        migration.close()


if __name__ == "__main__":
    main()
