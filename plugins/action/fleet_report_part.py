# -*- coding: utf-8 -*-
# Copyright (c) kvm_ras.poison_guard contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin of kvm_ras.poison_guard.fleet_report_part (documented in
plugins/modules/fleet_report_part.py).

Runs on the controller only: builds the host's part from the registered poison_info result
(plugins/module_utils/fleet_report.py) and writes it into the report's ``parts`` directory.
"""

from __future__ import annotations

from ansible.errors import AnsibleActionFail

from ansible_collections.kvm_ras.poison_guard.plugins.plugin_utils import action_support
from ansible_collections.kvm_ras.poison_guard.plugins.module_utils import fleet_report
from ansible_collections.kvm_ras.poison_guard.plugins.modules.fleet_report_part import DOCUMENTATION


class ActionModule(action_support.ControllerAction):
    """Write one host's part of a fleet poison report."""

    argument_spec = action_support.argument_spec_from_doc(DOCUMENTATION)

    def act(self, args, result, task_vars):
        host = args["host"] or task_vars.get("inventory_hostname")
        try:
            report_dir = fleet_report.check_report_dir(args["report_dir"])
            part = fleet_report.build_part(host, args["result"], args["report_id"])
            path = fleet_report.part_path(report_dir, part["report_id"], host)
            entry = fleet_report.host_entry(host, part)
            if not self._task.check_mode:
                fleet_report.write_part(report_dir, part)
        except fleet_report.ReportInputError as exc:
            raise AnsibleActionFail(str(exc)) from exc
        except OSError as exc:
            raise AnsibleActionFail("cannot write the report part of %s under %s: %s" % (
                host, args["report_dir"], exc)) from exc
        result.update(
            changed=True,
            path=path,
            report_id=part["report_id"],
            outcome=part["outcome"],
            status=entry["status"],
            error=entry["error"],
            poisoned_vms=[vm["name"] for vm in entry["vms"] if vm["status"] == "poisoned"],
        )
        return result
