# -*- coding: utf-8 -*-
# Copyright (c) kvm_ras.poison_guard contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller-side helpers shared by the collection's action plugins (never shipped to hosts).

Action plugins import from here, never from each other:

- ``argument_spec_from_doc``: the argument spec of a plugin's documented options, so the doc
  stub in plugins/modules/ is the one source of an action plugin's inputs;
- ``by_host``: registered loop results keyed by the host each item named;
- ``read_page_template``: the Jinja2 text of an HTML page, the operator's own (found like any
  template of the play) or the one the collection ships in playbooks/templates/;
- ``DocumentedAction``: the base of the action plugins whose options are those of their doc
  stub: ``run`` validates the task's options against ``argument_spec`` and hands them to ``act``;
- ``ControllerAction``: the base of the action plugins that work on the controller only (no
  connection, no files to transfer, check mode, no async);
- ``page_template_error``: the failure of a page template that does not render.
"""

from __future__ import annotations

import os

import yaml

from ansible.errors import AnsibleActionFail, AnsibleError
from ansible.plugins.action import ActionBase

_SPEC_KEYS = ("type", "elements", "choices", "default", "required", "no_log", "aliases")
# playbooks/templates/ of the collection (plugins/plugin_utils/ -> collection root)
SHIPPED_TEMPLATES = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir,
                                                  os.pardir, "playbooks", "templates"))


def argument_spec_from_doc(documentation):
    """The argument spec of a module's documented options (one source for docs and validation)."""
    options = yaml.safe_load(documentation).get("options") or {}
    spec = {}
    for name, option in options.items():
        entry = {key: option[key] for key in _SPEC_KEYS if key in option}
        entry.setdefault("type", "str")
        spec[name] = entry
    return spec


def by_host(results):
    """Loop results (each with ``item`` = host) or a dict host -> result -> dict host -> result."""
    if isinstance(results, dict):
        if isinstance(results.get("results"), list):
            results = results["results"]
        else:
            return dict(results)
    mapped = {}
    for entry in results or []:
        if isinstance(entry, dict) and isinstance(entry.get("item"), str):
            mapped[entry["item"]] = entry
    return mapped


def read_page_template(action, name, shipped):
    """Text of the page template: ``name`` looked up by the action plugin ``action`` among the
    play's templates, or without a name the collection's ``shipped`` file."""
    if name:
        try:
            path = action._find_needle("templates", name)  # pylint: disable=protected-access
        except AnsibleError as exc:
            raise AnsibleActionFail("html_template %r not found: %s" % (name, exc)) from exc
    else:
        path = os.path.join(SHIPPED_TEMPLATES, shipped)
    try:
        with open(path, "r", encoding="utf-8") as handle:
            return handle.read()
    except OSError as exc:
        raise AnsibleActionFail("cannot read the HTML template %s: %s" % (path, exc)) from exc


def page_template_error(name, shipped, exc):
    """The failure of the page template ``name`` (or the collection's ``shipped`` one) that
    raised the Jinja2 error ``exc`` while rendering."""
    return AnsibleActionFail("the HTML template %s cannot be rendered: %s" % (name or shipped, exc))


class DocumentedAction(ActionBase):
    """An action plugin whose options are the ones its doc stub documents.

    ``run`` validates the task's options against ``argument_spec`` (set by each plugin, usually
    ``argument_spec_from_doc(DOCUMENTATION)``) and hands them to ``act``, which does the work.
    """

    argument_spec: dict = {}

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        del tmp  # nothing is transferred
        _validation, args = self.validate_argument_spec(argument_spec=self.argument_spec)
        return self.act(args, result, task_vars or {})

    def act(self, args, result, task_vars):
        """Do the plugin's work with the validated ``args``; return ``result``, completed."""
        raise NotImplementedError


class ControllerAction(DocumentedAction):
    """An action plugin that works on the controller only: it needs no connection to the host,
    transfers no files, supports check mode (it changes nothing on hosts) and not async."""

    TRANSFERS_FILES = False
    _requires_connection = False
    _supports_check_mode = True
    _supports_async = False
