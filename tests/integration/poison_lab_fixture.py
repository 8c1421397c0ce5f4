# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""pytest side of the poison lab: the session fixture `poison_lab_run` and hook registration.

Use from a test module in tests/integration (pytest puts that directory on sys.path):

    from poison_lab_fixture import Hook, register_hook, register_module_hook

    register_module_hook('poison-info', 'kvm_ras.poison_guard.poison_info',
                         {'vms': ['@LAB_QEMU_NAME@']}, experiments=['qemu-kvm-mce'])

    def test_something(poison_lab_run):
        report = poison_lab_run.hook('qemu-kvm-mce', 'poison-info')
        assert report['rc'] == 0 and report['json']['vms'][0]['status'] == 'poisoned'

Register at module level: every test module is imported before the first test runs, and the
lab boots once per session (on first use) with all registered hooks. A test module that
uses the fixture imports `poison_lab_run` from here. For a different inner QEMU (the patched build) call
`lab_run(qemu_binary=...)` in your own fixture: it boots once per binary and session. For the
6.12 kernel call `get_run(kernel='6.12', with_hooks=False)` (once per session too).

The fixture skips only when this machine cannot run QEMU at all (qemu-system-x86_64 missing
and not installable); any other setup problem is an error with its cause.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

LAB_DIR = Path(__file__).resolve().parents[2] / 'lab' / 'poison'
if str(LAB_DIR) not in sys.path:
    sys.path.insert(0, str(LAB_DIR))

from poisonlab import checks  # noqa: E402  pylint: disable=wrong-import-position
from poisonlab.errors import LabError, LabUnavailable  # noqa: E402  pylint: disable=wrong-import-position
from poisonlab.harness import Hook, LabRun  # noqa: E402  pylint: disable=wrong-import-position
from poisonlab.testing import lab_run, register_hook, register_module_hook, registered_hooks  # noqa: E402  pylint: disable=wrong-import-position

__all__ = ['Hook', 'LabRun', 'checks', 'lab_run', 'poison_lab_run', 'register_hook', 'register_module_hook',
           'registered_hooks', 'LAB_DIR']


def get_run(qemu_binary=None, kernel=None, with_hooks=True, **kwargs) -> LabRun:
    """lab_run() with pytest semantics: skip when the machine cannot run the lab, else fail.
    kwargs go to run_lab (e.g. experiments=[...], part of the session run's key)."""
    try:
        return lab_run(qemu_binary=qemu_binary, kernel=kernel, with_hooks=with_hooks, **kwargs)
    except LabUnavailable as exc:
        pytest.skip(f'poison lab cannot run on this machine: {exc}')
    except LabError as exc:
        pytest.fail(f'poison lab setup failed: {exc}', pytrace=False)
    raise AssertionError('unreachable')


@pytest.fixture(scope='session')
def poison_lab_run() -> LabRun:
    """The session's poison-lab run with the host's Debian QEMU 7.2 as the inner QEMU."""
    run = get_run()
    print(f'\npoison lab: verdict {run.verdict}, attempts {run.attempts}, {run.duration_s:.0f} s '
          f'(boot {run.boot_s:.0f} s), log {run.log_path}')
    return run
