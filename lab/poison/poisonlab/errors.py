# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Errors of the poison lab."""
from __future__ import annotations


class LabError(Exception):
    """The lab cannot be set up, built or run; the message names the problem and the fix."""


class LabUnavailable(LabError):
    """This machine cannot run the lab at all (no QEMU and it could not be installed)."""
