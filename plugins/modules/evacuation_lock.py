#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) kvm_ras.poison_guard contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: evacuation_lock
short_description: Take or release the per-hypervisor evacuation lock
version_added: 0.1.0
description:
  - One evacuation per hypervisor at a time. V(present) takes the lock for O(owner) (an
    evacuation run id) or fails, naming the run that holds it. V(absent) releases it, but
    only when O(owner) holds it.
  - The lock is a small JSON file created atomically (C(O_CREAT|O_EXCL)). Its default place
    is under C(/run), a tmpfs, so a host reboot (for example for the DIMM replacement that the
    evacuation prepares) clears a lock left behind by a run that died.
  - A lock left by a run that died without releasing it (controller crashed, job killed) is
    stale. It is broken when O(break_lock=true), or automatically when it is older than
    O(stale_after) seconds (off by default, because an evacuation may legitimately run for hours).
author:
  - kvm_ras maintainers (@kvm-ras)
extends_documentation_fragment:
  - kvm_ras.poison_guard.attributes
  - kvm_ras.poison_guard.attributes.ACTING_MODULE
options:
  state:
    description:
      - V(present) takes the lock, V(absent) releases it.
    type: str
    choices: [present, absent]
    default: present
  owner:
    description:
      - Who takes or releases the lock, that is the evacuation's run id.
    type: str
    required: true
  path:
    description:
      - The lock file.
    type: path
    default: /run/kvm_ras/evacuation.lock
  info:
    description:
      - Extra facts stored in the lock for whoever finds it held (controller, source, ...).
    type: dict
    default: {}
  stale_after:
    description:
      - Seconds after which a lock held by another owner counts as stale and is broken.
        V(0) never breaks a lock by age.
    type: int
    default: 0
  break_lock:
    description:
      - Take the lock even when another owner holds it. Only for a lock left by a run that is
        known to be dead.
    type: bool
    default: false
notes:
  - Releasing a lock another owner holds does nothing (and warns).
"""

EXAMPLES = r"""
- name: Take the evacuation lock of this hypervisor
  kvm_ras.poison_guard.evacuation_lock:
    owner: "{{ run_id }}"
    info:
      controller: "{{ lookup('ansible.builtin.pipe', 'hostname') }}"

- name: Release it
  kvm_ras.poison_guard.evacuation_lock:
    state: absent
    owner: "{{ run_id }}"
"""

RETURN = r"""
decision:
  description:
    - V(acquire) (was free), V(reenter) (this owner already held it), V(break) (a stale or
      forcibly broken lock was replaced), V(release), V(not_held), V(held_by_other) (release
      refused).
  returned: always
  type: str
  sample: acquire
lock:
  description: The lock record now in the file (or the one found, when refused or released).
  returned: always
  type: dict
  sample: {owner: hv1-20260301T025901Z-5f2a3c, since: 1772333941.2, since_iso: "2026-03-01T02:59:01Z", controller: awx-task-1}
previous:
  description: The record of the lock that was broken.
  returned: when a lock was broken
  type: dict
  sample: {owner: hv1-20260228T230000Z-77aa, since: 1772319600.0}
path:
  description: The lock file.
  returned: always
  type: str
  sample: /run/kvm_ras/evacuation.lock
"""

import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.kvm_ras.poison_guard.plugins.module_utils import host_markers
from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.host_markers import (
    DEFAULT_LOCK_PATH,
    LOCK_ACQUIRE,
    LOCK_BREAK,
    LOCK_REENTER,
    LOCK_REFUSE,
    lock_decision,
)


def read_lock(path):
    """The lock record, None when free, or {"unreadable": why} (never the file's content)."""
    record, _problem = host_markers.read_json_marker(path)
    return record


def make_record(owner, info, now):
    record = dict(info or {})
    record.update({"owner": owner, "since": now,
                   "since_iso": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))})
    return record


def main():
    module = AnsibleModule(
        argument_spec=dict(
            state=dict(type="str", choices=["present", "absent"], default="present"),
            owner=dict(type="str", required=True),
            path=dict(type="path", default=DEFAULT_LOCK_PATH),
            info=dict(type="dict", default={}),
            stale_after=dict(type="int", default=0),
            break_lock=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    params = module.params
    path, owner = params["path"], params["owner"]
    if not owner.strip():
        module.fail_json(msg="owner must not be empty: pass the evacuation's run id")
    if params["stale_after"] < 0:
        module.fail_json(msg="stale_after must be 0 (never) or a positive number of seconds")
    existing = read_lock(path)

    if params["state"] == "absent":
        if existing is None:
            module.exit_json(changed=False, decision="not_held", lock={}, path=path)
        if existing.get("owner") != owner:
            module.warn("evacuation lock %s is held by %s, not by %s: left in place"
                        % (path, existing.get("owner") or "an unknown owner", owner))
            module.exit_json(changed=False, decision="held_by_other", lock=existing, path=path)
        if not module.check_mode:
            try:
                host_markers.remove(path)
            except host_markers.MarkerError as exc:
                module.fail_json(msg=str(exc), decision="release", lock=existing, path=path)
        module.exit_json(changed=True, decision="release", lock=existing, path=path)

    now = time.time()
    decision, message = lock_decision(existing, owner, now, params["stale_after"], params["break_lock"])
    if decision == LOCK_REFUSE:
        module.fail_json(msg=message, decision=decision, lock=existing, path=path)
    if decision == LOCK_REENTER:
        module.exit_json(changed=False, decision=decision, lock=existing, path=path)
    record = make_record(owner, params["info"], now)
    if module.check_mode:
        module.exit_json(changed=True, decision=decision, lock=record, path=path, msg=message)
    try:
        if decision == LOCK_ACQUIRE:
            created = host_markers.create_exclusive(path, record, mode=0o600, dir_mode=0o700)
        else:  # LOCK_BREAK
            module.warn(message)
            host_markers.write_json_atomic(path, record, mode=0o600, dir_mode=0o700)
    except host_markers.MarkerError as exc:
        module.fail_json(msg="cannot take the evacuation lock: %s" % exc, decision=decision, lock=existing, path=path)
    if decision == LOCK_ACQUIRE:
        if not created:
            raced = read_lock(path) or {}
            _decision, message = lock_decision(raced, owner, now)
            module.fail_json(msg=message, decision=LOCK_REFUSE, lock=raced, path=path)
        module.exit_json(changed=True, decision=decision, lock=record, path=path)
    module.exit_json(changed=True, decision=LOCK_BREAK, lock=record, previous=existing, path=path, msg=message)


if __name__ == "__main__":
    main()
