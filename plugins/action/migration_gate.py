# -*- coding: utf-8 -*-
# Copyright (c) kvm_ras.poison_guard contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin of kvm_ras.poison_guard.migration_gate (documented in plugins/modules/migration_gate.py).

Validates its options against the documented ones, gets a poison_info result (given, or by
running kvm_ras.poison_guard.poison_info on the host) and applies the decision table of
plugins/module_utils/gate.py. Read-only: ``changed`` is always false, check mode decides the same.
"""

from __future__ import annotations

import re

from ansible.errors import AnsibleActionFail

from ansible_collections.kvm_ras.poison_guard.plugins.module_utils import gate
from ansible_collections.kvm_ras.poison_guard.plugins.plugin_utils import action_support
from ansible_collections.kvm_ras.poison_guard.plugins.modules.migration_gate import DOCUMENTATION

POISON_INFO_MODULE = "kvm_ras.poison_guard.poison_info"
# A fixed string (no host or VM name in it): the host's boot id, uptime and host name.
IDENTITY_COMMAND = "cat /proc/sys/kernel/random/boot_id /proc/uptime /proc/sys/kernel/hostname"
_BOOT_ID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


class ActionModule(action_support.DocumentedAction):
    """Decide per VM whether an operation that reads all guest RAM may go ahead."""

    argument_spec = action_support.argument_spec_from_doc(DOCUMENTATION)
    TRANSFERS_FILES = False
    _supports_check_mode = True
    _supports_async = False

    def _host_identity(self):
        """``(boot id, uptime seconds, hostname)`` of the host the task reaches, now.

        One raw command over the task's connection (with its become): it needs no Python and no
        gathered facts (``ansible_facts`` has no boot id, and may be stale or missing), and the
        boot id, a random UUID drawn at every boot, tells both the host and the boot apart.
        Values that cannot be read come back as None (the gate then refuses the result).
        """
        res = self._low_level_execute_command(IDENTITY_COMMAND, sudoable=True)
        if res.get("rc") != 0:
            raise AnsibleActionFail(
                "could not read this host's boot id and uptime to check the poison_info result "
                "(%s exited %s: %s); the gate decides on nothing (fail closed)" % (
                    IDENTITY_COMMAND, res.get("rc"),
                    (res.get("stderr") or res.get("stdout") or "no output").strip()[:300]))
        lines = [line.strip() for line in (res.get("stdout") or "").splitlines() if line.strip()]
        boot_id = lines[0].lower() if lines and _BOOT_ID_RE.match(lines[0]) else None
        uptime = None
        if len(lines) > 1:
            try:
                uptime = float(lines[1].split()[0])
            except (IndexError, ValueError):
                uptime = None
        hostname = lines[2] if len(lines) > 2 else None
        return boot_id, uptime, hostname

    def act(self, args, result, task_vars):
        try:
            gate.check_holes_options(args["operation"], args["on_poisoned"], args["target_facts"])
        except gate.GateInputError as exc:
            raise AnsibleActionFail(str(exc)) from exc

        poison = args["poison_info"]
        gathered = poison is None
        if gathered:
            module_args = {} if args["vms"] is None else {"vms": list(args["vms"])}
            poison = self._execute_module(module_name=POISON_INFO_MODULE, module_args=module_args,
                                          task_vars=task_vars)
            if poison.get("failed") or poison.get("skipped"):
                raise AnsibleActionFail(
                    "%s failed on this host, so the gate cannot decide and blocks everything (fail "
                    "closed): %s" % (POISON_INFO_MODULE, poison.get("msg") or "no message"),
                    result={"poison_info": poison, "allowed": [], "blocked": [], "unguarded": [],
                            "with_holes": [], "decisions": []},
                )

        age = None
        if not gathered:
            try:
                gate.validate_poison_result(poison)
            except gate.GateInputError as exc:
                raise AnsibleActionFail(str(exc)) from exc
            boot_id, uptime, hostname = self._host_identity()
            try:
                age = gate.check_origin(poison, boot_id, uptime, args["max_result_age"], hostname)
            except gate.GateInputError as exc:
                raise AnsibleActionFail(
                    "%s; nothing is allowed (fail closed)" % exc,
                    result={"allowed": [], "blocked": [], "unguarded": [], "with_holes": [],
                            "decisions": []},
                ) from exc

        try:
            decision = gate.evaluate(poison, args["vms"], args["operation"], args["on_poisoned"],
                                     args["on_unknown"], target_facts=args["target_facts"])
        except gate.GateInputError as exc:
            raise AnsibleActionFail(str(exc)) from exc

        warnings = decision.pop("warnings")
        result.update(decision)
        result["changed"] = False
        result["poison_info_gathered"] = gathered
        result["poison_info_age_seconds"] = age
        if gathered:
            result["poison_info"] = poison
        if warnings:
            result.setdefault("warnings", []).extend(warnings)
        return result
