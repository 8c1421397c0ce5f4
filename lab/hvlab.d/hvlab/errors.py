# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The lab's errors: a problem the user can fix (LabError, printed as the problem and the fix)
and an interruption by a signal (Interrupted)."""

from __future__ import annotations


class LabError(Exception):
    """A problem the user can fix; printed as the problem and what to do about it."""

    def __init__(self, problem: str, fix: str | None = None, code: int = 1):
        super().__init__(problem)
        self.problem = problem
        self.fix = fix
        self.code = code


class Interrupted(Exception):
    pass


def raise_interrupted(signum, _frame):
    raise Interrupted(f"interrupted by signal {signum}")
