#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) kvm_ras.poison_guard contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: cordon
short_description: Cordon or uncordon a KVM/libvirt hypervisor (nothing new lands on it)
version_added: 0.1.0
description:
  - V(cordoned) writes a marker file on the hypervisor that says since when, why and by whom
    it takes no new VMs; V(uncordoned) removes it.
  - The collection respects the marker. M(kvm_ras.poison_guard.host_capacity_info) reports it and
    C(evacuate_host.yml) never places a VM on a cordoned hypervisor. External schedulers can
    read the same file (JSON).
  - libvirt itself has no maintenance or cordon state, so the marker is the signal. The file
    lives under C(/var/lib) so the cordon survives the reboot of a DIMM replacement; it ends
    only with V(uncordoned).
author:
  - kvm_ras maintainers (@kvm-ras)
extends_documentation_fragment:
  - kvm_ras.poison_guard.attributes
  - kvm_ras.poison_guard.attributes.ACTING_MODULE
options:
  state:
    description:
      - V(cordoned) or V(uncordoned).
    type: str
    choices: [cordoned, uncordoned]
    default: cordoned
  path:
    description:
      - The marker file.
    type: path
    default: /var/lib/kvm_ras/cordon.json
  reason:
    description:
      - Why the host is cordoned (kept in the marker). An existing cordon keeps its first reason.
    type: str
    default: evacuation
  by:
    description:
      - Who cordoned it, for example a run id or a ticket.
    type: str
    default: kvm_ras.poison_guard
"""

EXAMPLES = r"""
- name: Take no new VMs on this hypervisor
  kvm_ras.poison_guard.cordon:
    reason: DIMM B2 replacement, ticket OPS-1234

- name: Take VMs again
  kvm_ras.poison_guard.cordon:
    state: uncordoned
"""

RETURN = r"""
cordon:
  description: The marker now in place (V(cordoned)) or the one removed (V(uncordoned)); empty when there was none.
  returned: always
  type: dict
  sample: {cordoned: true, reason: DIMM B2 replacement, by: hv1-20260301T025901Z-5f2a, since: "2026-03-01T02:59:12Z"}
path:
  description: The marker file.
  returned: always
  type: str
  sample: /var/lib/kvm_ras/cordon.json
"""

import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.kvm_ras.poison_guard.plugins.module_utils import host_markers


def read_marker(path):
    """The marker, None when there is none; an unreadable one counts as cordoned (its content is never shown)."""
    record, _problem = host_markers.read_json_marker(path)
    if record is not None and record.get("unreadable") is not None:
        return {"cordoned": True, "reason": "unreadable marker file: %s" % record["unreadable"]}
    return record


def main():
    module = AnsibleModule(
        argument_spec=dict(
            state=dict(type="str", choices=["cordoned", "uncordoned"], default="cordoned"),
            path=dict(type="path", default=host_markers.DEFAULT_CORDON_PATH),
            reason=dict(type="str", default="evacuation"),
            by=dict(type="str", default="kvm_ras.poison_guard"),
        ),
        supports_check_mode=True,
    )
    params = module.params
    path = params["path"]
    existing = read_marker(path)
    if params["state"] == "uncordoned":
        if existing is None:
            module.exit_json(changed=False, cordon={}, path=path)
        if not module.check_mode:
            try:
                host_markers.remove(path)
            except host_markers.MarkerError as exc:
                module.fail_json(msg=str(exc), cordon=existing, path=path)
        module.exit_json(changed=True, cordon=existing, path=path)
    if existing is not None:
        module.exit_json(changed=False, cordon=existing, path=path)
    record = host_markers.cordon_record(params["reason"], params["by"], time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    if not module.check_mode:
        try:
            # readable by everyone (external schedulers read it), written only by root
            host_markers.write_json_atomic(path, record, mode=0o644, dir_mode=0o755)
        except host_markers.MarkerError as exc:
            module.fail_json(msg="cannot cordon the host: %s" % exc, cordon={}, path=path)
    module.exit_json(changed=True, cordon=record, path=path)


if __name__ == "__main__":
    main()
