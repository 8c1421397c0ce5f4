#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) kvm_ras.poison_guard contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: migration_preflight
short_description: Check from the source hypervisor that each target can be reached and can run each VM
version_added: 0.1.0
description:
  - Read-only. Runs on the B(source) hypervisor and answers, before anything moves, the two
    questions a live migration answers only by failing. Can the source reach each target over
    the migration URI the migration will use? Can each VM run on each target?
  - For each target, the module opens its migration URI from the source, as the user the task
    runs as (root with C(become), the same identity libvirtd uses for a peer-to-peer
    migration). A target that cannot be opened is not usable, with libvirt's error text and
    the fix. Configure the transport with the M(kvm_ras.poison_guard.migration_transport) role
    (see C(docs/migration-transport.md)). A URI that reaches the source itself (same libvirt
    host UUID) is not usable either.
  - "For each running VM and each reachable target, the module checks several things. CPU:
    libvirt's hypervisor CPU comparison (C(virConnectCompareHypervisorCPU), like
    C(virsh hypervisor-cpu-compare --error)) of the VM's CPU definition on the target. With
    C(host-passthrough) or C(maximum) the source host's CPU model is compared instead, as is
    an unexpanded C(host-model). Machine type, architecture and emulator: the target's domain
    capabilities for exactly the VM's emulator, arch, machine type and virt type (libvirt
    refuses a machine type the target's QEMU does not have), or its capabilities when domain
    capabilities are not available. QEMU version: a target with an older QEMU than the source
    is flagged. Networks: libvirt networks (present and active, with the portgroup) and host
    bridges or interfaces (present; a bridge must be a bridge). Disks: disk files, block
    devices and backing files must exist on the target unless O(copy_storage) copies them.
    Copied disk files need a storage pool for their directory on the target. Pool volumes and
    the secrets of network disks must exist too."
  - Anything the module cannot determine makes the target or the VM not usable, with the
    reason (fail closed). Every reason names the problem and the fix.
  - The module never fails because of what it finds. It fails only for bad inputs or when the
    source libvirt cannot be read.
author:
  - kvm_ras maintainers (@kvm-ras)
extends_documentation_fragment:
  - kvm_ras.poison_guard.attributes
  - kvm_ras.poison_guard.attributes.INFO_MODULE
  - kvm_ras.poison_guard.libvirt.SOURCE
options:
  targets:
    description:
      - The target hypervisors and the libvirt URI the migration to each uses, as a dict
        target -> URI (RV(kvm_ras.poison_guard.evacuation_request#module:request.migration_uris))
        or a list of dicts with C(name) and C(uri).
      - A target with no URI (null) is reported as not usable.
    type: raw
    required: true
  vms:
    description:
      - Names (or UUIDs) of the running VMs to check. Empty means every running VM of the
        source. A name the source does not run is an error.
    type: list
    elements: str
    default: []
  copy_storage:
    description:
      - The storage mode the migration will use (C(migration_copy_storage) of the evacuation,
        O(kvm_ras.poison_guard.live_migrate#module:copy_storage) of the migration).
      - With V(none) every disk file, block device and backing file must exist on the target.
      - With V(all) or V(inc), writable local disk files are copied. The target needs the file
        already, or a storage pool whose target path is the file's directory (where libvirt
        creates it). With V(inc) the backing files must exist on the target. Read-only and
        shareable disks are not copied and must exist.
    type: str
    choices: [none, all, inc]
    default: none
  target_facts:
    description:
      - Results of M(kvm_ras.poison_guard.host_capacity_info) run on the targets with the VMs' disk
        paths in its O(kvm_ras.poison_guard.host_capacity_info#module:paths), either the C(results)
        of a loop over the targets (each with its C(item)) or a dict target -> result.
      - When a target's result lists a path, its file system's answer is used. Otherwise the
        module asks the target's libvirt for a storage volume at that path. libvirt knows only
        the volumes of active storage pools as of their last refresh, so a file outside any
        pool cannot be confirmed that way and counts as missing.
    type: raw
  planned:
    description:
      - Planned moves, a dict VM name -> target (for example from the evacuation plan), to check
        again right before the source is cordoned. RV(summary.planned) says whether each still
        passes.
    type: dict
  allow_older_qemu:
    description:
      - Accept targets whose QEMU is older than the source's, with a note instead of a reason.
        QEMU supports migration to the same or a newer version. An older one works only if it
        has the VM's machine type and understands every device's state, so test the pair of
        versions first.
    type: bool
    default: false
  timeout:
    description:
      - Seconds each target may take, from opening its URI to the last check of the last VM.
        A target that takes longer is not usable (an unreachable host can hold a connection
        attempt for minutes).
    type: float
    default: 60
notes:
  - The module only reads. It opens the source read-write (libvirt gives the migratable XML of a VM only on a
    read-write connection), and each target with the same URI and the same read-write
    access the migration uses (a read-only connection can succeed where the migration's does
    not, for example over ssh for a user outside the target's C(libvirt) group), and calls
    only libvirt's query functions on it.
  - What it cannot see. Whether the migration data port range (49152-49215) is open
    between the hosts, unless the migration is tunnelled. Whether a network disk's storage
    server is reachable from the target. Disk files outside every storage pool of the target
    (pass O(target_facts)). Enough free memory (see M(kvm_ras.poison_guard.host_capacity_info)).
seealso:
  - module: kvm_ras.poison_guard.live_migrate
  - module: kvm_ras.poison_guard.host_capacity_info
  - module: kvm_ras.poison_guard.evacuation_plan
"""

EXAMPLES = r"""
- name: Can hv2 and hv3 take the VMs of hv1?
  kvm_ras.poison_guard.migration_preflight:
    targets:
      hv2: qemu+tls://hv2.example.com/system
      hv3: qemu+tls://hv3.example.com/system
  register: preflight

- name: Show per target and per VM whether it is usable, and why not
  ansible.builtin.debug:
    msg: "{{ preflight.summary.lines }}"

- name: Check the VMs an evacuation would move, with the targets' own view of the disk paths
  kvm_ras.poison_guard.migration_preflight:
    targets: "{{ evacuation_request.migration_uris }}"
    copy_storage: "{{ evacuation_request.migration_copy_storage }}"
    target_facts: "{{ evacuation_target_facts.results }}"
  register: preflight
"""

RETURN = r"""
source:
  description: The source as the module read it.
  returned: success
  type: dict
  contains:
    uri:
      description: The source URI.
      type: str
    hostname:
      description: Host name as the source's libvirt reports it.
      type: str
    qemu_version:
      description: QEMU version of the source.
      type: str
    libvirt_version:
      description: libvirt version of the source.
      type: str
    vms:
      description: The running VMs that were checked.
      type: list
      elements: str
    gone:
      description: UUIDs of VMs that stopped or left between being listed and being read (not checked).
      type: list
      elements: str
  sample: {uri: "qemu:///system", hostname: hv1, qemu_version: 7.2.0, libvirt_version: 9.0.0, vms: [web01], gone: []}
targets:
  description:
    - Per target, whether it is usable at all. C(reasons) are sentences that name the problem and
      the fix; C(fix) joins the fixes; C(notes) say what was checked differently or not at all.
  returned: success
  type: dict
  sample:
    hv2: {usable: true, reasons: [], fix: null, notes: [], uri: "qemu+tls://hv2/system", hostname: hv2,
          libvirt_version: 9.0.0, qemu_version: 7.2.0}
    hv3:
      usable: false
      reasons:
        - >-
          the source could not open hv3's migration URI qemu+tls://hv3/system: unable to connect to server at
          'hv3:16514': Connection refused. Fix: configure the migration transport between the hypervisors
          with the kvm_ras.poison_guard.migration_transport role (docs/migration-transport.md), ...
      fix: configure the migration transport ...
      notes: []
      uri: qemu+tls://hv3/system
      hostname: null
      libvirt_version: null
      qemu_version: null
vms:
  description:
    - Per VM, per target, whether the VM can run there (C(usable), C(reasons), C(fix), C(notes)).
      On a target that is not usable every VM is not usable either.
  returned: success
  type: dict
  sample:
    web01:
      hv2:
        usable: false
        reasons:
          - >-
            hv2 cannot run the VM's CPU: the CPU is incompatible with host CPU: Host CPU does not provide
            required features: avx512f. Fix: choose a target with a CPU that has these features, ...
        fix: choose a target with a CPU that has these features, ...
        notes: []
summary:
  description: The flat summary.
  returned: success
  type: dict
  contains:
    usable_targets:
      description: Targets that passed their own checks.
      type: list
      elements: str
    unusable_targets:
      description: Targets that did not.
      type: list
      elements: str
    vm_targets:
      description: Per VM, the targets it can run on (empty when none).
      type: dict
    vms_without_target:
      description: VMs no target can take.
      type: list
      elements: str
    ok:
      description: True when at least one target is usable and every VM can run on one.
      type: bool
    lines:
      description: One line per target and per VM on a usable target, for the plan's output.
      type: list
      elements: str
    planned:
      description:
        - With O(planned), whether every planned move still passes (C(ok)), the moves that do not,
          with the reasons (C(problems)), and planned VMs that no longer run (C(notes)).
      type: dict
      returned: when O(planned) is given
      sample: {ok: false, problems: ["web01 -> hv2 no longer passes the preflight: hv2 has no libvirt network 'prod' ..."], notes: []}
  sample:
    usable_targets: [hv2]
    unusable_targets: [hv3]
    vm_targets: {web01: [hv2]}
    vms_without_target: []
    ok: true
    lines: ["target hv2 (qemu+tls://hv2/system): usable: yes", "VM web01 on hv2: usable: yes"]
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.kvm_ras.poison_guard.plugins.module_utils import libvirt as libvirt_adapter
from ansible_collections.kvm_ras.poison_guard.plugins.module_utils import preflight

libvirt = libvirt_adapter.binding()  # None without python3-libvirt
LIBVIRT_IMPORT_ERROR = libvirt_adapter.import_error()

ARGUMENT_SPEC = dict(
    targets=dict(type="raw", required=True),
    uri=libvirt_adapter.uri_argument("source_uri"),
    vms=dict(type="list", elements="str", default=[]),
    copy_storage=dict(type="str", choices=list(preflight.COPY_STORAGE_MODES), default="none"),
    target_facts=dict(type="raw"),
    planned=dict(type="dict"),
    allow_older_qemu=dict(type="bool", default=False),
    timeout=dict(type="float", default=60),
)


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    params = module.params
    # Inputs first: a bad input is reported as such even on a host without python3-libvirt.
    try:
        preflight.normalize_targets(params["targets"])
    except preflight.PreflightInputError as exc:
        module.fail_json(msg=str(exc))
    if params["timeout"] <= 0:
        module.fail_json(msg="timeout must be a positive number of seconds, got %r" % params["timeout"])
    target_facts = params["target_facts"]
    if target_facts is not None and not isinstance(target_facts, (dict, list)):
        module.fail_json(msg="target_facts must be the results of host_capacity_info on the targets (a loop's results "
                             "or a dict target -> result), got %s" % type(target_facts).__name__)
    if libvirt is None:
        module.fail_json(msg=missing_required_lib(libvirt_adapter.LIBRARY),
                         exception=LIBVIRT_IMPORT_ERROR)
    # libvirt-python prints every error to stderr by default; the errors are in the result.
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    try:
        result = preflight.run(libvirt, params["uri"], params["targets"], vms=params["vms"] or None,
                               copy_storage=params["copy_storage"], allow_older_qemu=params["allow_older_qemu"],
                               target_paths=preflight.paths_by_target(target_facts), timeout=params["timeout"],
                               planned=params["planned"])
    except (preflight.PreflightInputError, preflight.PreflightSourceError) as exc:
        module.fail_json(msg=str(exc))
    summary = result["summary"]
    module.exit_json(changed=False, msg="%d of %d target(s) usable; %d VM(s) with no usable target" % (
        len(summary["usable_targets"]), len(result["targets"]), len(summary["vms_without_target"])), **result)


if __name__ == "__main__":
    main()
