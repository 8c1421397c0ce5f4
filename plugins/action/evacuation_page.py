# -*- coding: utf-8 -*-
# Copyright (c) kvm_ras.poison_guard contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin of kvm_ras.poison_guard.evacuation_page (documented in
plugins/modules/evacuation_page.py): the evacuation report as an HTML page, on the controller.
The page's content and chart are computed in plugins/plugin_utils/evacuation_page.py."""

from __future__ import annotations

import jinja2

from ansible.errors import AnsibleActionFail

from ansible_collections.kvm_ras.poison_guard.plugins.plugin_utils import action_support
from ansible_collections.kvm_ras.poison_guard.plugins.modules.evacuation_page import DOCUMENTATION
from ansible_collections.kvm_ras.poison_guard.plugins.plugin_utils import evacuation_page


class ActionModule(action_support.ControllerAction):
    """Render the evacuation report as HTML and write it once."""

    argument_spec = action_support.argument_spec_from_doc(DOCUMENTATION)

    def act(self, args, result, task_vars):
        report = args["report"]
        try:
            evacuation_page.check_report(report)
            path = evacuation_page.page_path(report, args["path"])
            template_text = action_support.read_page_template(self, args["html_template"], "evacuation_report.html.j2")
            html = evacuation_page.render_html(report, template_text)
            chart_mode = evacuation_page.timeline(report)["mode"]
            if not self._task.check_mode:
                evacuation_page.write_page(path, html)
        except evacuation_page.PageInputError as exc:
            raise AnsibleActionFail(str(exc)) from exc
        except jinja2.TemplateError as exc:
            raise action_support.page_template_error(args["html_template"], "evacuation_report.html.j2", exc) from exc
        except OSError as exc:
            raise AnsibleActionFail("cannot write the evacuation page %s on the controller: %s" % (path, exc)) from exc
        # The page is the run's record on the controller, not a change to a managed host
        # (like the report files of evacuation_report).
        result.update(changed=False, html_path=path, chart_mode=chart_mode)
        return result
