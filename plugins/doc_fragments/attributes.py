# -*- coding: utf-8 -*-
# Copyright (c) kvm_ras.poison_guard contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Shared ``attributes`` documentation for the collection's modules and action plugins."""

from __future__ import annotations


class ModuleDocFragment:
    """Use ``kvm_ras.poison_guard.attributes`` plus one of the support-level fragments."""

    # Descriptions of every attribute the collection declares.
    DOCUMENTATION = r"""
options: {}
attributes:
  check_mode:
    description: Can run in C(check_mode) and return changed status prediction without modifying the target.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in C(check_mode)), when in diff mode.
  platform:
    description: Target OS/families that can be operated against.
    support: N/A
"""

    # Read-only modules: inventory and inspection of a hypervisor.
    INFO_MODULE = r"""
options: {}
attributes:
  check_mode:
    support: full
    details:
      - This module never changes anything, so check mode returns the same result as a normal run.
  diff_mode:
    support: N/A
    details:
      - This module never changes anything.
  platform:
    platforms: posix
"""

    # Modules that act on a hypervisor and fully support check mode.
    ACTING_MODULE = r"""
options: {}
attributes:
  check_mode:
    support: full
    details:
      - In check mode the module reports what it would do and changes nothing.
  diff_mode:
    support: none
  platform:
    platforms: posix
"""

    # Action plugins that only decide (run on the controller, read from the host).
    DECISION_ACTION = r"""
options: {}
attributes:
  check_mode:
    support: full
    details:
      - The decision is the same in check mode; nothing is ever changed.
  diff_mode:
    support: N/A
  platform:
    platforms: posix
"""

    # Modules whose work an action plugin of the same name does (the module file is its doc
    # stub); a module that supports async overrides O(async) with its own support and details.
    ACTION_PLUGIN = r"""
options: {}
attributes:
  action:
    description: Indicates this has a corresponding action plugin so some parts of the options can be executed on the controller.
    support: full
  async:
    description: Supports being used with the C(async) keyword.
    support: none
"""

    # Action plugins that work on the controller only and write files there (reports, pages);
    # each adds to O(check_mode) the details of what check mode leaves out.
    CONTROLLER_ONLY = r"""
options: {}
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
  platform:
    platforms: posix
    details:
      - Runs on the controller and never connects to the host.
"""
