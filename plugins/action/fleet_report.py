# -*- coding: utf-8 -*-
# Copyright (c) kvm_ras.poison_guard contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin of kvm_ras.poison_guard.fleet_report (documented in
plugins/modules/fleet_report.py).

Runs on the controller only. ``state=started`` checks the settings and creates the report's
directory; ``state=merged`` merges the parts and writes the JSON and HTML report. The rules
(part format, merge, ordering, summary, chart) are in plugins/module_utils/fleet_report.py.
"""

from __future__ import annotations

import os

import jinja2

from ansible.errors import AnsibleActionFail

from ansible_collections.kvm_ras.poison_guard.plugins.plugin_utils import action_support
from ansible_collections.kvm_ras.poison_guard.plugins.module_utils import fleet_report
from ansible_collections.kvm_ras.poison_guard.plugins.modules.fleet_report import DOCUMENTATION


class ActionModule(action_support.ControllerAction):
    """Start a fleet poison report or merge its parts."""

    argument_spec = action_support.argument_spec_from_doc(DOCUMENTATION)

    def act(self, args, result, task_vars):
        check_mode = self._task.check_mode
        try:
            report_dir = fleet_report.check_report_dir(args["report_dir"])
            if args["state"] == "started":
                report_id = args["report_id"] or fleet_report.new_report_id()
                paths = fleet_report.report_paths(report_dir, report_id)
                created = not os.path.isdir(paths["root"])
                if created and not check_mode:
                    fleet_report.ensure_directory(paths["parts"])
                result.update(changed=created, report_id=report_id, report_dir=report_dir,
                              path=paths["root"])
                return result
            if not args["report_id"]:
                raise fleet_report.ReportInputError(
                    "report_id is required with state=merged: give the id that state=started "
                    "returned (the id the parts were written under)")
            template_text = action_support.read_page_template(self, args["html_template"], "fleet_report.html.j2")
            report = fleet_report.merge_directory(report_dir, args["report_id"], args["hosts"],
                                                  args["hosts_pattern"])
            paths = fleet_report.report_paths(report_dir, args["report_id"])
            if check_mode:
                fleet_report.render_html(report, template_text)  # template errors show up now
            else:
                fleet_report.write_report(report_dir, report, template_text)
        except fleet_report.ReportInputError as exc:
            raise AnsibleActionFail(str(exc)) from exc
        except jinja2.TemplateError as exc:
            raise action_support.page_template_error(args["html_template"], "fleet_report.html.j2", exc) from exc
        except OSError as exc:
            raise AnsibleActionFail("cannot write the fleet report under %s: %s" % (
                args["report_dir"], exc)) from exc
        result.update(
            changed=True,
            report_id=report["report_id"],
            report_dir=report_dir,
            path=paths["root"],
            json_path=paths["json"],
            html_path=paths["html"],
            summary=report["summary"],
            poisoned_vms=report["poisoned_vms"],
            hosts_not_scanned=[{"name": h["name"], "status": h["status"], "error": h["error"]}
                               for h in report["hosts"] if h["status"] in fleet_report.NOT_SCANNED],
        )
        if report["problems"]:
            result["warnings"] = list(report["problems"])
        return result
