#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) kvm_ras.poison_guard contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

# Documentation only: the work is done on the controller by the action plugin
# plugins/action/evacuation_page.py, which also validates its options against the options
# documented here.

from __future__ import annotations

DOCUMENTATION = r"""
---
module: evacuation_page
short_description: Write an evacuation report as a self-contained HTML page on the controller
version_added: 0.1.0
description:
  - Action plugin that runs on the controller. It contacts no host.
  - Renders the report of M(kvm_ras.poison_guard.evacuation_report) as one HTML page for
    people. The page has the verdict of the run, one row per VM (status, action, target,
    duration, poison status and evidence, reason, steps and problems) and a timeline of the
    moves drawn as inline SVG.
  - The page is self-contained. It has no external stylesheet, script, font or image, and its
    Content-Security-Policy forbids loading any, so it can be attached to a ticket or opened
    offline.
  - The timeline places each move at its start time when the report records one
    (C(started_at) of a VM); otherwise it shows each move's duration from 0 and says so.
  - By default the page is written next to the report's JSON file, with the same name and the
    extension C(.html). An existing file is never replaced and a symbolic link is never
    followed.
author:
  - kvm_ras maintainers (@kvm-ras)
extends_documentation_fragment:
  - kvm_ras.poison_guard.attributes
  - kvm_ras.poison_guard.attributes.ACTION_PLUGIN
  - kvm_ras.poison_guard.attributes.CONTROLLER_ONLY
attributes:
  check_mode:
    details:
      - In check mode the page is rendered (so template errors show) but not written.
options:
  report:
    description:
      - RV(kvm_ras.poison_guard.evacuation_report#module:report) of the run, or the content of
        its JSON file.
    type: dict
    required: true
  path:
    description:
      - Where to write the page on the controller.
      - Not given means next to the report's JSON file (C(report.files.json)) with the
        extension C(.html).
    type: path
  html_template:
    description:
      - Jinja2 template of the page, looked up like the C(src) of M(ansible.builtin.template)
        (the role's or playbook's C(templates) directory, or a path).
      - The template is rendered with autoescaping on. It gets C(report), C(rows) (one per VM),
        C(chart) (the timeline's geometry), C(summary) and C(statuses).
      - Not given means the template shipped with the collection,
        C(playbooks/templates/evacuation_report.html.j2).
    type: str
seealso:
  - module: kvm_ras.poison_guard.evacuation_report
"""

EXAMPLES = r"""
- name: Verify and write the report
  kvm_ras.poison_guard.evacuation_report:
    request: "{{ evacuation.request }}"
    run: "{{ evacuation.run }}"
    plan: "{{ plan.plan }}"
    states: "{{ after.results }}"
  register: report

- name: Write the report as an HTML page next to its JSON file
  kvm_ras.poison_guard.evacuation_page:
    report: "{{ report.report }}"
  register: page

- name: Render a report file written earlier into a page of its own
  kvm_ras.poison_guard.evacuation_page:
    report: "{{ lookup('ansible.builtin.file', 'reports/hv1-20260301T025901Z.json') | from_json }}"
    path: /tmp/hv1-evacuation.html
"""

RETURN = r"""
html_path:
  description: Path of the page on the controller (in check mode, where it would be written).
  returned: always
  type: str
  sample: /home/ops/evacuation-reports/hv1-20260301T025901Z.html
chart_mode:
  description:
    - V(timeline) when every move's start time is known and the bars sit at their start,
      V(durations) when the bars show durations only.
  returned: always
  type: str
  sample: durations
"""
