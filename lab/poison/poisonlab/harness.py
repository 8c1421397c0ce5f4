# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Host-side API of the poison lab.

    from poisonlab.harness import run_lab, Hook
    run = run_lab(hooks={'detector': Hook('/path/to/dir-with-run', experiments=['qemu-kvm-mce'])})
    run.results['qemu-kvm-mce']['hooks']['after-inject']['detector']['json']

run_lab() installs the Debian packages it needs (when root), fetches the pinned kernel
(kernel='6.1', the default, or kernel='6.12': see hostsetup.KERNELS), builds (or reuses) the
base initramfs of that kernel, writes a small overlay with the run's configuration,
hooks and optional inner QEMU binary, boots the VM under QEMU TCG and parses the RESULT
lines of its serial console. A run whose log shows a kernel panic/oops, or lacks the end
marker, is booted once more; LabRun.attempts says how many boots it took.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from . import checks, hostsetup, initramfs
from .errors import LabError, LabUnavailable

LAB_DIR = Path(__file__).resolve().parent.parent
REPO_ROOT = LAB_DIR.parent.parent
DEFAULT_WORKDIR = REPO_ROOT / 'lab' / 'state' / 'poison'
EXPERIMENTS = list(checks.DEFAULT_EXPERIMENTS)  # a run's default
KNOWN_EXPERIMENTS = list(checks.KNOWN_EXPERIMENTS)  # what a run may ask for
HOOK_POINTS = ('after-inject', 'after-migrate')
GUEST_QEMU = '/usr/bin/qemu-system-x86_64'
ALT_QEMU = '/lab/qemu/qemu-system-x86_64'
# firmware search path for a QEMU built from source (its compiled-in data dir is not in the VM)
ALT_QEMU_ARGS = ['-L', '/usr/share/seabios', '-L', '/usr/share/qemu']
KEEP_RUNS = 10

KERNELS = tuple(hostsetup.KERNELS)
DEFAULT_KERNEL = hostsetup.DEFAULT_KERNEL

__all__ = ['Hook', 'LabRun', 'Attempt', 'run_lab', 'prepare', 'LabError', 'LabUnavailable', 'EXPERIMENTS',
           'HOOK_POINTS', 'KERNELS', 'DEFAULT_KERNEL', 'default_workdir']


@dataclasses.dataclass(frozen=True)
class Hook:
    """Code run inside the lab VM against the live victim.

    path: an executable file (copied as the hook's `run`) or a directory holding an
          executable `run` plus whatever it needs (copied whole).
    experiments: names of the experiments to run it in; None = all.
    points: 'after-inject' (victim poisoned, still running when it survived) and/or
            'after-migrate' (QEMU experiments whose QEMU survived the injection, after the
            migrate attempt; QEMU may be dead then: see LAB_VICTIM_ALIVE).
    timeout_s: per invocation, inside the VM (everything there runs under TCG: slow).
    """
    path: str | os.PathLike
    experiments: tuple[str, ...] | None = None
    points: tuple[str, ...] = ('after-inject',)
    timeout_s: int = 300

    def __post_init__(self) -> None:
        if self.experiments is not None:
            object.__setattr__(self, 'experiments', tuple(self.experiments))
        object.__setattr__(self, 'points', tuple(self.points))


@dataclasses.dataclass
class Attempt:
    number: int
    verdict: str  # 'ok' or a checks.judge() verdict
    detail: str
    log_path: Path
    duration_s: float


@dataclasses.dataclass
class LabRun:
    results: dict[str, dict]
    attempts: int
    attempt_log: list[Attempt]
    log_path: Path
    duration_s: float  # whole run_lab() call: setup, build and every boot
    boot_s: float  # the last boot alone
    ok: bool  # the last boot ran to the end marker without a panic
    verdict: str
    experiments: list[str]
    kernel: dict
    inner_qemu: str
    run_dir: Path
    timings: dict[str, float]

    def hook(self, experiment: str, name: str, point: str = 'after-inject') -> dict | None:
        """The report of one hook invocation ({rc, stdout, stderr, json, ...}) or None."""
        return self.results.get(experiment, {}).get('hooks', {}).get(point, {}).get(name)

    def summary(self) -> dict:
        return {'ok': self.ok, 'verdict': self.verdict, 'attempts': self.attempts,
                'attempt_verdicts': [(a.verdict, a.detail) for a in self.attempt_log],
                'duration_s': round(self.duration_s, 1), 'boot_s': round(self.boot_s, 1),
                'timings': {k: round(v, 1) for k, v in self.timings.items()}, 'log_path': str(self.log_path),
                'kernel': self.kernel, 'inner_qemu': self.inner_qemu, 'experiments': self.experiments}


def default_workdir() -> Path:
    return Path(os.environ.get('POISON_LAB_DIR') or DEFAULT_WORKDIR)


@contextlib.contextmanager
def _locked(workdir: Path):
    """One build/boot at a time per work directory (two pytest sessions may share it)."""
    workdir.mkdir(parents=True, exist_ok=True)
    with (workdir / '.lock').open('w') as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def prepare(workdir: Path | None = None, install_packages: bool = True, kernel: str | None = None) -> dict:
    """Packages, kernel and base image; returns paths and timings. Safe to call repeatedly.

    kernel: the lab kernel ('6.1', the default, or '6.12').
    """
    spec = hostsetup.kernel_spec(kernel)
    workdir = Path(workdir or default_workdir())
    timings: dict[str, float] = {}
    started = time.monotonic()
    installed = hostsetup.ensure_packages(install=install_packages)
    timings['packages_s'] = time.monotonic() - started
    if not shutil.which('qemu-system-x86_64'):
        raise LabUnavailable('qemu-system-x86_64 is not installed and could not be installed')
    mark = time.monotonic()
    kernel_package = hostsetup.ensure_kernel(workdir, kernel=spec)
    kroot = hostsetup.extract_kernel(kernel_package, workdir)
    timings['kernel_s'] = time.monotonic() - mark
    mark = time.monotonic()
    base = initramfs.build_base(kroot, workdir / 'base', kernel_package.sha256, spec.name)
    memhog = initramfs.compile_memhog(workdir / 'build')
    helpers = {name: initramfs.compile_helper(workdir / 'build', name) for name in initramfs.HELPERS
               if name != 'memhog'}
    firmware = initramfs.assemble_firmware(workdir / 'build')
    timings['build_s'] = time.monotonic() - mark
    return {'kernel': kernel_package, 'base': base, 'memhog': memhog, 'helpers': helpers, 'firmware': firmware,
            'timings': timings, 'installed': installed}


def _validate(experiments, hooks, qemu_binary, kernel=None):
    hostsetup.kernel_spec(kernel)  # an unknown kernel fails here, before anything is fetched or built
    if isinstance(experiments, str):
        raise LabError(f'experiments must be a list of names, not the string {experiments!r}')
    names = list(experiments) if experiments is not None else list(EXPERIMENTS)
    unknown = [n for n in names if n not in KNOWN_EXPERIMENTS]
    if unknown or not names:
        raise LabError(f'unknown or no experiments {unknown or names}; known: {KNOWN_EXPERIMENTS}')
    resolved: dict[str, tuple[Path, Hook]] = {}
    for name, hook in (hooks or {}).items():
        if not isinstance(hook, Hook):
            hook = Hook(hook)
        if not name or not all(ch.isalnum() or ch in '-_' for ch in name):
            raise LabError(f'hook name {name!r}: use letters, digits, "-" and "_" only')
        path = Path(hook.path)
        if not path.exists():
            raise LabError(f'hook {name}: {path} does not exist')
        bad_points = [p for p in hook.points if p not in HOOK_POINTS]
        if bad_points or not hook.points:
            raise LabError(f'hook {name}: unknown points {bad_points or hook.points}; known: {HOOK_POINTS}')
        if hook.experiments is not None:
            bad = [e for e in hook.experiments if e not in KNOWN_EXPERIMENTS]
            if bad:
                raise LabError(f'hook {name}: unknown experiments {bad}; known: {KNOWN_EXPERIMENTS}')
        resolved[name] = (path, hook)
    qemu = None
    if qemu_binary is not None:
        qemu = Path(qemu_binary)
        if not (qemu.is_file() and os.access(qemu, os.X_OK)):
            raise LabError(f'qemu_binary {qemu} is not an executable file')
    return names, resolved, qemu


def run_lab(experiments: list[str] | None = None, hooks: dict[str, Hook | str | os.PathLike] | None = None,
            qemu_binary: str | os.PathLike | None = None, workdir: str | os.PathLike | None = None, *,
            kernel: str | None = None, install_packages: bool = True, timeout_s: int = 900,
            max_attempts: int = 2, memory_mib: int = 2048, echo: bool = False) -> LabRun:
    """Boot the poison lab once (plus one retry on a panic/missing end marker); see module doc.

    experiments: names from KNOWN_EXPERIMENTS, in run order (default: EXPERIMENTS).
    hooks: name -> Hook (or a plain path = Hook(path): every experiment, after-inject).
    qemu_binary: the INNER QEMU to use instead of the host's Debian one (copied into the VM with
                 its libraries, run with -L firmware paths).
    workdir: cache and run records (default $POISON_LAB_DIR or lab/state/poison).
    kernel: the lab kernel, '6.1' (default: Debian 12's own) or '6.12' (bookworm-backports,
            the first with UFFDIO_POISON); each has its pin (hostsetup.KERNELS).
    timeout_s: per boot, bounded; on expiry the VM is killed and the attempt counts as failed.
    echo: copy the serial console to stderr while it runs.
    Raises LabError when setup/build fails (LabUnavailable: the machine cannot run it at all).
    """
    started = time.monotonic()
    names, resolved_hooks, qemu = _validate(experiments, hooks, qemu_binary, kernel)
    spec = hostsetup.kernel_spec(kernel)
    workdir = Path(workdir or default_workdir()).resolve()
    with _locked(workdir):
        prepared = prepare(workdir, install_packages=install_packages, kernel=spec.name)
        base: Path = prepared['base']
        manifest = json.loads((base / 'manifest.json').read_text())
        run_dir = _new_run_dir(workdir)
        config = {
            'experiments': names,
            'hooks': [{'name': name, 'experiments': None if h.experiments is None else list(h.experiments),
                       'points': list(h.points), 'timeout_s': int(h.timeout_s)}
                      for name, (dummy, h) in resolved_hooks.items()],
            'qemu': {'binary': ALT_QEMU if qemu else GUEST_QEMU, 'extra_args': ALT_QEMU_ARGS if qemu else [],
                     'source': str(qemu) if qemu else 'host /usr/bin/qemu-system-x86_64'},
            'lab_kernel': spec.name,
            'collection_path': initramfs.COLLECTION_GUEST_ROOT,
        }
        mark = time.monotonic()
        overlay_info = initramfs.build_overlay(
            run_dir / 'overlay.cpio', config=config, hooks={n: p for n, (p, dummy) in resolved_hooks.items()},
            memhog=prepared['memhog'], base_paths=set(manifest['paths']), qemu_binary=qemu,
            helpers=prepared['helpers'], collection=initramfs.collection_files(REPO_ROOT),
            firmware=prepared['firmware'])
        initrd = run_dir / 'initrd.cpio'
        with initrd.open('wb') as out:
            for part in (base / 'base.cpio', run_dir / 'overlay.cpio'):
                with part.open('rb') as f:
                    shutil.copyfileobj(f, out, 1 << 20)
        timings = dict(prepared['timings'], overlay_s=time.monotonic() - mark)
        attempts: list[Attempt] = []
        parsed = None
        try:
            for number in range(1, max_attempts + 1):
                log_path = run_dir / f'serial-{number}.log'
                boot_started = time.monotonic()
                timed_out = _boot(base / 'vmlinuz', initrd, log_path, timeout_s, memory_mib, echo)
                boot_s = time.monotonic() - boot_started
                parsed = checks.parse_log(log_path.read_text(errors='replace'))
                verdict, detail = checks.judge(parsed, timed_out)
                attempts.append(Attempt(number, verdict, detail, log_path, round(boot_s, 1)))
                if verdict not in checks.RETRY_VERDICTS:
                    break
                hostsetup.warn(f'boot {number} failed ({verdict}: {detail}); log {log_path}')
        finally:
            initrd.unlink(missing_ok=True)
        timings['boot_s'] = boot_s
        run = LabRun(results=parsed.results, attempts=len(attempts), attempt_log=attempts,
                     log_path=attempts[-1].log_path, duration_s=time.monotonic() - started, boot_s=boot_s,
                     ok=attempts[-1].verdict == 'ok', verdict=attempts[-1].verdict, experiments=names,
                     kernel=dict(prepared['kernel'].as_dict(), release=manifest['kernel_release']),
                     inner_qemu=config['qemu']['source'], run_dir=run_dir, timings=timings)
        record = dict(run.summary(), overlay=overlay_info, hooks=config['hooks'], results=run.results)
        (run_dir / 'run.json').write_text(json.dumps(record, indent=1, sort_keys=True, default=str))
        return run


def _new_run_dir(workdir: Path) -> Path:
    runs = workdir / 'runs'
    runs.mkdir(parents=True, exist_ok=True)
    for old in sorted(p for p in runs.iterdir() if p.is_dir())[:-(KEEP_RUNS - 1)]:
        shutil.rmtree(old, ignore_errors=True)
    stamp = time.strftime('%Y%m%d-%H%M%S')
    run_dir = runs / f'{stamp}-{os.getpid()}'
    run_dir.mkdir()
    return run_dir


def boot_argv(vmlinuz: Path, initrd: Path, memory_mib: int) -> list[str]:
    """The outer VM: TCG (the host kernel cannot poison pages; -cpu max gives the guest SVM,
    so the nested kernel can run KVM), one vCPU, console on the serial port, no reboot."""
    return ['qemu-system-x86_64', '-accel', 'tcg', '-cpu', 'max', '-smp', '1', '-m', str(memory_mib),
            '-kernel', str(vmlinuz), '-initrd', str(initrd),
            '-append', 'console=ttyS0 loglevel=4 panic=-1 oops=panic',
            '-display', 'none', '-nodefaults', '-serial', 'stdio', '-monitor', 'none', '-no-reboot']


def _boot(vmlinuz: Path, initrd: Path, log_path: Path, timeout_s: int, memory_mib: int, echo: bool) -> bool:
    """Run the VM to power-off with the console in log_path; return True if it timed out."""
    argv = boot_argv(vmlinuz, initrd, memory_mib)
    deadline = time.monotonic() + timeout_s
    with log_path.open('wb') as log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True)
        os.set_blocking(proc.stdout.fileno(), False)
        try:
            while True:
                chunk = proc.stdout.read(65536)
                if chunk:
                    log.write(chunk)
                    log.flush()
                    if echo:
                        sys.stderr.write(chunk.decode(errors='replace'))
                        sys.stderr.flush()
                    continue
                if chunk is None or chunk == b'':
                    if proc.poll() is not None:
                        rest = proc.stdout.read() or b''
                        log.write(rest)
                        if echo:
                            sys.stderr.write(rest.decode(errors='replace'))
                        return False
                    if time.monotonic() > deadline:
                        return True
                    time.sleep(0.1)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()
