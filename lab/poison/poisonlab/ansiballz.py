# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Run an Ansible module inside the lab VM the way Ansible runs it on a managed host.

On the host, ansible-core's own `ansible.executor.module_common.modify_module` builds the
AnsiballZ payload: one self-contained python file holding the module, every module_utils it
imports (also collection module_utils) and its arguments. The payload goes into the lab
overlay as a hook; in the VM the guest's python3 (stdlib only) runs it and the module's JSON
result lands in the RESULT line of the experiment.

Argument values may name lab facts that are only known in the VM, as placeholders that the
in-VM runner replaces before it starts the payload: `@LAB_VICTIM_PID@`, `@LAB_QEMU_NAME@`,
`@LAB_PFN@` ... (any LAB_* hook environment variable, see docs/poison-lab.md).

Needs ansible-core (>= 2.19) importable on the host; the VM needs nothing but python3.
"""
from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from .errors import LabError
from .harness import Hook

PLACEHOLDER_RE = re.compile(r'@(LAB_[A-Z_]+)@')
INTERPRETER = '/usr/bin/python3'


def _internal_args(module: str, check_mode: bool) -> dict:
    """What ActionBase._update_module_args() adds to every module call (ansible-core 2.19)."""
    from ansible import __version__ as ansible_version
    from ansible import constants as C

    return {
        '_ansible_check_mode': check_mode, '_ansible_no_log': False, '_ansible_debug': False,
        '_ansible_diff': False, '_ansible_verbosity': 0, '_ansible_version': ansible_version,
        '_ansible_module_name': module, '_ansible_syslog_facility': C.DEFAULT_SYSLOG_FACILITY,
        '_ansible_selinux_special_fs': C.DEFAULT_SELINUX_SPECIAL_FS, '_ansible_socket': None,
        '_ansible_shell_executable': '/bin/sh', '_ansible_keep_remote_files': False,
        '_ansible_tmpdir': None, '_ansible_remote_tmp': '~/.ansible/tmp', '_ansible_ignore_unknown_opts': False,
        '_ansible_target_log_info': None, '_ansible_tracebacks_for': [],
    }


def build_payload(module: str, args: dict, *, collections_paths: list[str] | None = None,
                  check_mode: bool = False) -> bytes:
    """The AnsiballZ payload (a python script) for module (FQCN) called with args.

    collections_paths: directories holding ansible_collections/<ns>/<name>/ (needed for
    collection modules such as kvm_ras.poison_guard.poison_info).

    ansible-core's plugin loader is process-wide and can be set up once per process (a test
    session may already have set it up for other paths), so the payload is built by a fresh
    python process: this file run as ``python -m poisonlab.ansiballz``.
    """
    request = {'module': module, 'args': args, 'collections_paths': [str(p) for p in collections_paths or []],
               'check_mode': check_mode}
    package_parent = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [package_parent, os.environ.get('PYTHONPATH')])))
    env.pop('ANSIBLE_COLLECTIONS_PATH', None)
    env.pop('ANSIBLE_COLLECTIONS_PATHS', None)
    proc = subprocess.run([sys.executable, '-m', 'poisonlab.ansiballz'], input=json.dumps(request).encode(),
                          capture_output=True, env=env, cwd=package_parent, timeout=300, check=False)
    if proc.returncode != 0:
        raise LabError(proc.stderr.decode(errors='replace').strip().splitlines()[-1] if proc.stderr.strip()
                       else f'building the payload of {module} failed (exit {proc.returncode})')
    return base64.b64decode(proc.stdout)


def _build_in_this_process(module: str, args: dict, collections_paths: list[str], check_mode: bool) -> bytes:
    try:
        from ansible.plugins.loader import init_plugin_loader
    except ImportError as exc:
        raise LabError(f'ansible-core is not importable by {sys.executable}: {exc}; '
                       'run the lab from the project virtualenv (make venv)') from exc
    init_plugin_loader(collections_paths)
    from ansible.executor.module_common import modify_module
    from ansible.parsing.dataloader import DataLoader
    from ansible.plugins.loader import module_loader
    from ansible.template import Templar

    found = module_loader.find_plugin_with_context(module)
    if not found.resolved or not found.plugin_resolved_path:
        raise LabError(f'module {module} not found (collections paths: {collections_paths})')
    module_path = found.plugin_resolved_path
    if not module_path.endswith('.py'):
        raise LabError(f'module {module} resolves to {module_path}: only python modules can run in the lab VM')
    full_args = dict(args, **_internal_args(found.resolved_fqcn or module, check_mode))
    built = modify_module(module_name=found.resolved_fqcn or module, module_path=module_path,
                          module_args=full_args, templar=Templar(loader=DataLoader()),
                          task_vars={'ansible_python_interpreter': INTERPRETER})
    if built.module_style != 'new':
        raise LabError(f'module {module} is a {built.module_style!r} style module; only AnsiballZ (new style) '
                       'python modules are supported')
    return built.b_module_data


def _main() -> int:
    request = json.loads(sys.stdin.buffer.read())
    try:
        payload = _build_in_this_process(request['module'], request['args'], request['collections_paths'],
                                         request['check_mode'])
    except LabError as exc:
        sys.stderr.write(f'{exc}\n')
        return 1
    sys.stdout.buffer.write(base64.b64encode(payload))
    return 0


RUNNER = '''\
# Runs the AnsiballZ payload next to this file with the guest python3, after replacing
# @LAB_*@ placeholders in its arguments with the hook environment.
import os
import re
import subprocess
import sys

here = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(here, 'payload.py')) as f:
    payload = f.read()
missing = []


def value(match):
    name = match.group(1)
    text = os.environ.get(name)
    if text is None:
        missing.append(name)
        return match.group(0)
    if not re.fullmatch(r'[A-Za-z0-9_./:,=+-]*', text):
        sys.exit('placeholder %s: value %r has characters that cannot be embedded' % (name, text))
    return text


payload = re.sub(r'@(LAB_[A-Z_]+)@', value, payload)
if missing:
    sys.exit('placeholders without a value in this experiment: %s' % sorted(set(missing)))
path = '/tmp/ansiballz-%s-%s.py' % (os.environ.get('LAB_HOOK_NAME', 'hook'), os.getpid())
with open(path, 'w') as f:
    f.write(payload)
os.chmod(path, 0o700)
sys.stdout.flush()
proc = subprocess.run([sys.executable, path], check=False)
os.unlink(path)
sys.exit(proc.returncode)
'''


def module_hook(directory: str | os.PathLike, module: str, args: dict | None = None, *,
                experiments: list[str] | None = None, points: tuple[str, ...] = ('after-inject',),
                collections_paths: list[str] | None = None, check_mode: bool = False,
                timeout_s: int = 600) -> Hook:
    """Write a hook directory that runs module with args in the VM; return its Hook.

    The hook's stdout is the module's JSON result (LabRun.hook(...)['json']).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    args = dict(args or {})
    unknown = sorted({m.group(1) for m in PLACEHOLDER_RE.finditer(json.dumps(args))} - KNOWN_PLACEHOLDERS)
    if unknown:
        raise LabError(f'module {module}: unknown placeholders {unknown}; known: {sorted(KNOWN_PLACEHOLDERS)}')
    (directory / 'payload.py').write_bytes(build_payload(module, args, collections_paths=collections_paths,
                                                         check_mode=check_mode))
    (directory / 'runner.py').write_text(RUNNER)
    run = directory / 'run'
    run.write_text('#!/bin/sh\nexec python3 "$LAB_HOOK_DIR/runner.py"\n')
    run.chmod(0o755)
    (directory / 'module.json').write_text(json.dumps({'module': module, 'args': args, 'check_mode': check_mode}))
    return Hook(directory, experiments=experiments, points=points, timeout_s=timeout_s)


# every LAB_* variable lab.py gives a hook (docs/poison-lab.md, "Hooks")
KNOWN_PLACEHOLDERS = {
    'LAB_EXPERIMENT', 'LAB_HOOK_POINT', 'LAB_HOOK_NAME', 'LAB_HOOK_DIR', 'LAB_VICTIM_PID', 'LAB_VICTIM_COMM',
    'LAB_VICTIM_IS_QEMU', 'LAB_VICTIM_ALIVE', 'LAB_VADDR', 'LAB_HVA', 'LAB_PFN', 'LAB_GPA', 'LAB_QMP_SOCK',
    'LAB_QEMU_NAME', 'LAB_QEMU_LOG', 'LAB_QEMU_BINARY', 'LAB_QEMU_ACCEL',
}


if __name__ == '__main__':
    sys.exit(_main())
