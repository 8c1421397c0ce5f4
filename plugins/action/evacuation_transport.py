# -*- coding: utf-8 -*-
# Copyright (c) kvm_ras.poison_guard contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin of kvm_ras.poison_guard.evacuation_transport (documented in
plugins/modules/evacuation_transport.py): each target's migration URI, from the checked request
and the source's transport fact, with the rule of plugins/plugin_utils/evacuation_request.py
(follow_transport)."""

from __future__ import annotations

from ansible.errors import AnsibleActionFail

from ansible_collections.kvm_ras.poison_guard.plugins.plugin_utils import action_support
from ansible_collections.kvm_ras.poison_guard.plugins.plugin_utils import evacuation_request as rules
from ansible_collections.kvm_ras.poison_guard.plugins.modules.evacuation_transport import DOCUMENTATION


class ActionModule(action_support.ControllerAction):
    """Complete the request's migration URIs; nothing is contacted or changed."""

    argument_spec = action_support.argument_spec_from_doc(DOCUMENTATION)

    def act(self, args, result, task_vars):
        try:
            request = rules.follow_transport(args["request"], args["transport"], facts_path=args["facts_path"])
        except rules.EvacuationInputError as exc:
            raise AnsibleActionFail(str(exc), result={"problems": exc.problems}) from exc
        result.update({"changed": False, "request": request})
        return result
