#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) kvm_ras.poison_guard contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

# Documentation only: the work is done by the action plugin plugins/action/evacuation_transport.py,
# which also validates its options against the options documented here.

from __future__ import annotations

DOCUMENTATION = r"""
---
module: evacuation_transport
short_description: Give each target of an evacuation the migration URI of the transport its source was set up with
version_added: 0.1.0
description:
  - Action plugin that runs on the controller only, on the checked request
    (M(kvm_ras.poison_guard.evacuation_request)) and the source's local fact
    C(kvm_ras_migration_transport), which role C(kvm_ras.poison_guard.migration_transport) writes
    on every hypervisor it sets up (C(ansible.builtin.setup) with C(gather_subset=local) reads it).
    C(evacuate_host.yml) runs it in its plan, before the preflight.
  - "Each target's migration URI, strongest first: the target's C(kvm_ras_migration_uri) host
    variable; C(evacuate_migration_uri_template) when the operator gave one; the C(uri_template)
    of the source's transport (for example C(qemu+tls://{address}/system)) with the target's
    C({address}) (C(kvm_ras_migration_address), else C(ansible_host), else its inventory name)."
  - A target that gets no URI is not usable, with the reason and the fix (the plan shows it and
    puts no VM there).
  - A transport fact that cannot be used (not a JSON object, a template that is not a libvirt URI,
    C(qemu+tcp) without C(evacuate_allow_plain_tcp=true)) fails the task, before anything changes.
author:
  - kvm_ras maintainers (@kvm-ras)
extends_documentation_fragment:
  - kvm_ras.poison_guard.attributes
  - kvm_ras.poison_guard.attributes.DECISION_ACTION
  - kvm_ras.poison_guard.attributes.ACTION_PLUGIN
options:
  request:
    description: RV(kvm_ras.poison_guard.evacuation_request#module:request) of the run.
    type: dict
    required: true
  transport:
    description:
      - The source's local fact C(kvm_ras_migration_transport) (C(mode), C(uri_template), ...),
        for example C(ansible_facts.ansible_local.kvm_ras_migration_transport) after
        C(ansible.builtin.setup) with C(gather_subset=[!all, !min, local]).
      - Null or left out when the source has none.
    type: raw
  facts_path:
    description: Directory the fact was read from, named in messages.
    type: str
seealso:
  - module: kvm_ras.poison_guard.evacuation_request
  - module: kvm_ras.poison_guard.migration_preflight
  - module: kvm_ras.poison_guard.evacuation_plan
"""

EXAMPLES = r"""
- name: Read the source's migration transport (its local fact)
  ansible.builtin.setup:
    gather_subset: ['!all', '!min', 'local']

- name: Take the URIs of the targets without one from the source's transport
  kvm_ras.poison_guard.evacuation_transport:
    request: "{{ evacuation_request }}"
    transport: "{{ ansible_facts.ansible_local.kvm_ras_migration_transport | default(none) }}"
  register: evacuation_transport
"""

RETURN = r"""
request:
  description:
    - The request, with C(migration_uris) complete (target -> URI, null when the target has none),
      C(migration_uri_origins) (target -> V(kvm_ras_migration_uri), V(evacuate_migration_uri_template)
      or V(transport)), C(migration_uri_problems) (target -> why it has no URI, with the fix) and
      C(migration_transport) (C(mode), C(uri_template), C(source), or null when no URI came from it).
  returned: success
  type: dict
  sample:
    evacuate_source: hv1
    evacuate_targets: [hv2, hv3]
    migration_uris: {hv2: "qemu+tls://hv2/system", hv3: "qemu+tls://hv3/system"}
    migration_uri_origins: {hv2: transport, hv3: transport}
    migration_uri_problems: {}
    migration_transport: {mode: tls, uri_template: "qemu+tls://{address}/system", source: hv1}
problems:
  description: Every problem found (the task fails when there is any).
  returned: failure
  type: list
  elements: str
"""
