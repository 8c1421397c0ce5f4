# -*- coding: utf-8 -*-
# Copyright (c) kvm_ras.poison_guard contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin of kvm_ras.poison_guard.evacuation_request (documented in
plugins/modules/evacuation_request.py): checks an evacuation's inputs against the inventory on
the controller, with the rules of plugins/plugin_utils/evacuation_request.py."""

from __future__ import annotations

import os
import socket
import time

from ansible import context
from ansible.errors import AnsibleActionFail
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from ansible.utils.display import Display

from ansible_collections.kvm_ras.poison_guard.plugins.plugin_utils import action_support
from ansible_collections.kvm_ras.poison_guard.plugins.plugin_utils import evacuation_request as rules
from ansible_collections.kvm_ras.poison_guard.plugins.modules.evacuation_request import DOCUMENTATION

ARGUMENT_SPEC = action_support.argument_spec_from_doc(DOCUMENTATION)
HOSTVAR_KEYS = ("kvm_ras_migration_uri", "kvm_ras_migration_address", "ansible_host")
# The task takes every documented option as given; typed_inputs types them, so that a value of
# the wrong type is reported with every other problem of the request.
TASK_SPEC = {name: (spec if name == "extra_var_names" else {"type": "raw"}) for name, spec in ARGUMENT_SPEC.items()}
COLLECTION = "kvm_ras.poison_guard"
display = Display()


def extra_var_names():
    """Names of the extra vars given on the command line (-e k=v, -e @file, -e JSON)."""
    from ansible.parsing.dataloader import DataLoader
    from ansible.utils.vars import load_extra_vars

    try:
        return sorted(load_extra_vars(DataLoader()).keys())
    except Exception:  # pylint: disable=broad-except
        return []


def typed_inputs(values):
    """The inputs typed by their documented option (ArgumentSpecValidator, one option at a time).

    ``values``: input name -> value as given (strings from ``-e name=value`` included). A value
    that does not convert is kept as given: the request's rules then refuse it with its bounds,
    choices and fix, together with every other problem.
    """
    typed = {}
    for name, value in values.items():
        spec = dict(ARGUMENT_SPEC.get(name) or {"type": "raw"})
        spec.pop("default", None)
        spec.pop("choices", None)
        result = ArgumentSpecValidator({name: spec}).validate({name: value})
        typed[name] = value if result.error_messages else result.validated_parameters[name]
    return typed


class ActionModule(action_support.ControllerAction):
    """Validate the request; nothing is contacted or changed."""

    # Options absent from the task are the inputs not given: the documented defaults are
    # filled in by the request's rules, which also need to know what was given.
    argument_spec = TASK_SPEC

    def act(self, args, result, task_vars):
        names = args.pop("extra_var_names")
        names = extra_var_names() if names is None else names
        given = {name: value for name, value in self._task.args.items()
                 if name in ARGUMENT_SPEC and name != "extra_var_names" and value is not None}
        # Inputs under their old unprefixed names count only as extra vars (never group_vars).
        old = {name: self._templar.template(task_vars[name]) for name in rules.DEPRECATED_INPUTS
               if name in names and name in task_vars}
        old_typed = {}
        for name, value in old.items():
            new = rules.DEPRECATED_INPUTS[name]
            old_typed[name] = typed_inputs({new: value})[new]
        raw, deprecated, problems = rules.deprecated_inputs(typed_inputs(given), old_typed)
        for name in deprecated:
            display.deprecated(rules.deprecation_message(name), version=rules.DEPRECATED_INPUTS_REMOVED_IN,
                               collection_name=COLLECTION)

        groups = {name: list(hosts) for name, hosts in (task_vars.get("groups") or {}).items()}
        inventory = sorted(set(groups.get("all") or []) | set(groups.get("ungrouped") or []))
        hostvars = {}
        all_hostvars = task_vars.get("hostvars") or {}
        wanted = set()
        targets = raw.get("evacuate_targets")
        if isinstance(targets, str):
            wanted.update(t.strip() for t in targets.split(","))
        elif isinstance(targets, (list, tuple)):
            wanted.update(t for t in targets if isinstance(t, str))
        wanted.update(groups.get(raw.get("evacuate_group") or rules.DEFAULTS["evacuate_group"]) or [])
        for host in wanted:
            if host in inventory:
                hvars = all_hostvars[host]
                hostvars[host] = {key: self._templar.template(hvars[key]) for key in HOSTVAR_KEYS if key in hvars}

        forks = context.CLIARGS.get("forks")
        problems = rules.misspelt_inputs(names) + problems
        try:
            request = rules.validate_request(raw, inventory, groups, hostvars, forks=forks)
        except rules.EvacuationInputError as exc:
            problems.extend(exc.problems)
        if problems:
            raise AnsibleActionFail(rules.format_problems(problems), result={"problems": problems})

        now = time.time()
        compact = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
        result.update({
            "changed": False,
            "request": request,
            "run": {
                "run_id": "%s-%s-%s" % (request["evacuate_source"], compact, os.urandom(3).hex()),
                "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
                "started_epoch": now,
                "started_compact": compact,
                "controller": socket.gethostname(),
                "check_mode": bool(self._task.check_mode),
                "forks": forks,
            },
        })
        return result
