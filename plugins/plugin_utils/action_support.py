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
- ``ControllerAction``: the base of the action plugins that work on the controller only (no
  connection, no files to transfer, check mode, no async).
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


class ControllerAction(ActionBase):
    """An action plugin that works on the controller only: it needs no connection to the host,
    transfers no files, supports check mode (it changes nothing on hosts) and not async."""

    TRANSFERS_FILES = False
    _requires_connection = False
    _supports_check_mode = True
    _supports_async = False
