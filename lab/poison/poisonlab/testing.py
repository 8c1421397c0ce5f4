# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""One shared poison-lab run per test session, with the hooks every test module registered.

Test modules register hooks at import time (module level); pytest imports every test module
before it runs the first test, so the run that the first test triggers carries all of them:

    from poison_lab_fixture import register_hook, register_module_hook
    register_hook('scan', Hook('/path/to/dir-with-run', experiments=['qemu-kvm-mce']))
    register_module_hook('info', 'kvm_ras.poison_guard.poison_info', {'vms': ['@LAB_QEMU_NAME@']},
                         experiments=['qemu-kvm-mce'], points=('after-inject', 'after-migrate'))

The registry and the run cache live here (one module object whatever name the pytest side is
imported under), so the lab boots once per session, inner QEMU binary, lab kernel and hook
choice (lab_run(kernel='6.12', with_hooks=False) is a run of its own).
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import threading
from pathlib import Path

from . import hostsetup
from .errors import LabError
from .harness import REPO_ROOT, Hook, LabRun, run_lab

COLLECTION = ('kvm_ras', 'poison_guard')


@dataclasses.dataclass(frozen=True)
class ModuleHookSpec:
    module: str
    args: dict
    experiments: tuple[str, ...] | None
    points: tuple[str, ...]
    check_mode: bool
    timeout_s: int


_hooks: dict[str, Hook | ModuleHookSpec] = {}
_runs: dict[str, LabRun] = {}
_failures: dict[str, LabError] = {}
_lock = threading.Lock()


def register_hook(name: str, hook: Hook | str | os.PathLike) -> None:
    """Add a hook (executable or directory with `run`) to the session's lab run."""
    _register(name, hook if isinstance(hook, Hook) else Hook(hook))


def register_module_hook(name: str, module: str, args: dict | None = None, *,
                         experiments: list[str] | None = None, points: tuple[str, ...] = ('after-inject',),
                         check_mode: bool = False, timeout_s: int = 600) -> None:
    """Add a hook that runs an Ansible module (FQCN) in the VM as Ansible would (AnsiballZ).

    Modules of this collection (kvm_ras.poison_guard.*) are found in this checkout. Argument
    values may hold @LAB_*@ placeholders (see poisonlab.ansiballz).
    """
    _register(name, ModuleHookSpec(module, dict(args or {}), None if experiments is None else tuple(experiments),
                                   tuple(points), check_mode, timeout_s))


def _register(name: str, hook) -> None:
    with _lock:
        if _runs:
            raise LabError(f'hook {name} registered after the lab already ran: register hooks at module level')
        if name in _hooks and _hooks[name] != hook:
            raise LabError(f'hook name {name} is registered twice with different hooks')
        _hooks[name] = hook


def registered_hooks() -> dict:
    return dict(_hooks)


def collection_paths(workdir: Path) -> list[str]:
    """A collections path holding a copy of this checkout's collection (plugins + metadata)."""
    root = workdir / 'collections'
    target = root / 'ansible_collections' / COLLECTION[0] / COLLECTION[1]
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    for name in ('galaxy.yml', 'meta', 'plugins'):
        source = REPO_ROOT / name
        if source.is_dir():
            shutil.copytree(source, target / name, ignore=shutil.ignore_patterns('__pycache__', '*.pyc'))
        elif source.exists():
            shutil.copy2(source, target / name)
    return [str(root)]


def _materialize(workdir: Path) -> dict[str, Hook]:
    hooks: dict[str, Hook] = {}
    module_specs = {n: h for n, h in _hooks.items() if isinstance(h, ModuleHookSpec)}
    if module_specs:
        from . import ansiballz  # needs ansible-core: only imported when a module hook is registered

        paths = collection_paths(workdir)
        for name, spec in module_specs.items():
            hooks[name] = ansiballz.module_hook(workdir / 'hooks' / name, spec.module, spec.args,
                                                experiments=None if spec.experiments is None else list(spec.experiments),
                                                points=spec.points, collections_paths=paths,
                                                check_mode=spec.check_mode, timeout_s=spec.timeout_s)
    for name, hook in _hooks.items():
        if isinstance(hook, Hook):
            hooks[name] = hook
    return hooks


def run_key(qemu_binary: str | os.PathLike | None = None, kernel: str | None = None,
            with_hooks: bool = True, experiments: list[str] | tuple[str, ...] | None = None) -> str:
    """Cache key of a session run; the default kernel, hooks and experiments keep the old key."""
    name = hostsetup.kernel_spec(kernel).name
    key = str(qemu_binary or '')
    if name != hostsetup.DEFAULT_KERNEL:
        key += f'|kernel={name}'
    if not with_hooks:
        key += '|no-hooks'
    if experiments is not None:
        key += '|experiments=' + ','.join(experiments)
    return key


def lab_run(qemu_binary: str | os.PathLike | None = None, kernel: str | None = None, with_hooks: bool = True,
            **kwargs) -> LabRun:
    """The session's run for this inner QEMU and lab kernel (booted on first use, then cached).

    with_hooks=False boots without the registered hooks (a run that only needs the
    experiments themselves, e.g. on the second kernel).
    """
    key = run_key(qemu_binary, kernel, with_hooks, kwargs.get('experiments'))
    with _lock:
        if key in _failures:  # do not boot again for every test that asks
            raise _failures[key]
        if key not in _runs:
            workdir = Path(tempfile.mkdtemp(prefix='poison-lab-hooks-'))
            try:
                hooks = _materialize(workdir) if with_hooks else {}
                _runs[key] = run_lab(hooks=hooks, qemu_binary=qemu_binary, kernel=kernel, **kwargs)
            except LabError as exc:
                _failures[key] = exc
                raise
            finally:
                shutil.rmtree(workdir, ignore_errors=True)
        return _runs[key]
