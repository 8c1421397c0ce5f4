# -*- coding: utf-8 -*-
# Copyright (c) kvm_ras.poison_guard contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin of kvm_ras.poison_guard.evacuation_plan (documented in
plugins/modules/evacuation_plan.py): the plan of an evacuation, made on the controller from
gathered facts with the rules of plugins/plugin_utils/evacuation_plan.py."""

from __future__ import annotations

from ansible.errors import AnsibleActionFail

from ansible_collections.kvm_ras.poison_guard.plugins.plugin_utils import action_support
from ansible_collections.kvm_ras.poison_guard.plugins.plugin_utils import evacuation_plan as rules
from ansible_collections.kvm_ras.poison_guard.plugins.plugin_utils.evacuation_request import format_problems
from ansible_collections.kvm_ras.poison_guard.plugins.modules.evacuation_plan import DOCUMENTATION


class ActionModule(action_support.ControllerAction):
    """Make the plan; nothing is contacted or changed."""

    argument_spec = action_support.argument_spec_from_doc(DOCUMENTATION)

    def act(self, args, result, task_vars):
        request = args["request"]
        source = args["source"]
        if source.get("failed") or not source.get("libvirt_ok", True):
            raise AnsibleActionFail("the source's libvirt did not answer, nothing can be planned: %s"
                                    % (source.get("msg") or "no message"))
        for name in ("poison_info", "gate", "preflight"):
            if args[name] is not None and (args[name].get("failed") or args[name].get("skipped")):
                raise AnsibleActionFail("the %s step failed, so the evacuation cannot decide and stops before any "
                                        "change (fail closed): %s" % (name, args[name].get("msg") or "no message"))
        try:
            holes = action_support.by_host(args["holes_targets"]) if args["holes_targets"] is not None else None
            plan = rules.build_plan(request, source, action_support.by_host(args["targets"]), args["poison_info"],
                                    args["gate"], preflight=args["preflight"], holes_facts=holes)
        except rules.EvacuationInputError as exc:
            raise AnsibleActionFail(str(exc), result={"problems": exc.problems}) from exc
        lines = rules.render_plan(plan, request, check_mode=args["check_mode"])
        problems = rules.plan_problems(plan)
        result.update({"changed": False, "plan": plan, "lines": lines})
        if problems:
            result.update({"failed": True, "problems": problems, "msg": format_problems(problems)})
        return result
