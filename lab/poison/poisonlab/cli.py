# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Command line of the poison lab (entry script: lab/poison/poison-lab)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import checks, harness, hostsetup
from .errors import LabError, LabUnavailable


def _hook_arg(text: str) -> tuple[str, str]:
    name, sep, path = text.partition('=')
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f'expected NAME=PATH, got {text!r}')
    return name, path


def _kernel_arg(text: str) -> str:
    if text not in hostsetup.KERNELS:
        raise argparse.ArgumentTypeError(f'unknown lab kernel {text!r}: choose one of {", ".join(sorted(hostsetup.KERNELS))}')
    return text


def _add_kernel_option(parser: argparse.ArgumentParser, what: str) -> None:
    choices = ', '.join(f'{name} ({spec.description})' for name, spec in hostsetup.KERNELS.items())
    parser.add_argument('--kernel', type=_kernel_arg, default=hostsetup.DEFAULT_KERNEL, metavar='KERNEL',
                        help=f'{what}: {choices}; default {hostsetup.DEFAULT_KERNEL}')


def _print_checks(results: dict, experiments: list[str], migration_guard: bool | None) -> int:
    evaluated = checks.evaluate(results, experiments, migration_guard=migration_guard)
    failing = 0
    for items in evaluated.values():
        for check in items:
            print(check)
            failing += not check.ok
    total = sum(len(items) for items in evaluated.values())
    types = checks.hwpoison_swap_types(results)
    print(f'hwpoison swap types seen: {types}')
    print(f'poison-lab checks: {total - failing} ok, {failing} failing')
    return failing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog='poison-lab', description=__doc__)
    parser.add_argument('--workdir', type=Path, default=None, help='cache directory (default $POISON_LAB_DIR '
                        'or lab/state/poison)')
    sub = parser.add_subparsers(dest='command', required=True)
    setup = sub.add_parser('setup', help='install packages, fetch the pinned kernel, build the base image')
    _add_kernel_option(setup, 'the kernel to fetch and build for')
    run = sub.add_parser('run', help='boot the lab and check every experiment')
    _add_kernel_option(run, 'the kernel the lab VM boots')
    run.add_argument('-e', '--experiments', default=None,
                     help=f'comma-separated subset of {",".join(harness.KNOWN_EXPERIMENTS)} '
                          f'(default {",".join(harness.EXPERIMENTS)})')
    run.add_argument('--hook', action='append', type=_hook_arg, default=[], metavar='NAME=PATH',
                     help='executable or directory with an executable "run"; runs after every injection')
    run.add_argument('--hook-after-migrate', action='store_true', help='also run the hooks after the migrate attempt')
    run.add_argument('--qemu-binary', default=None, help='inner QEMU to test instead of the host one')
    run.add_argument('--migration-guard', choices=['expect-crash', 'expect-refusal', 'ignore'],
                     default='expect-crash', help='what qemu-kvm-mce must show on migrate (default: the 7.2 crash)')
    run.add_argument('--timeout', type=int, default=900, help='seconds per boot (default 900)')
    run.add_argument('--quiet', action='store_true', help='do not copy the serial console to stderr')
    run.add_argument('--json', action='store_true', help='print the run summary and results as JSON')
    check = sub.add_parser('check', help='judge a saved serial log')
    check.add_argument('log', type=Path)
    check.add_argument('--migration-guard', choices=['expect-crash', 'expect-refusal', 'ignore'],
                       default='expect-crash')
    pin = sub.add_parser('pin', help='show or update the pinned kernel package')
    pin.add_argument('--update', action='store_true', help='pin the current linux-image-amd64 candidate')
    _add_kernel_option(pin, 'the pin to show or update')
    args = parser.parse_args(argv)
    guard_modes = {'expect-crash': False, 'expect-refusal': True, 'ignore': None}

    try:
        if args.command == 'setup':
            prepared = harness.prepare(args.workdir or harness.default_workdir(), kernel=args.kernel)
            print(json.dumps({'kernel': prepared['kernel'].as_dict(), 'base': str(prepared['base']),
                              'installed': prepared['installed'],
                              'timings': {k: round(v, 1) for k, v in prepared['timings'].items()}}, indent=1))
            return 0
        if args.command == 'pin':
            spec = hostsetup.kernel_spec(args.kernel)
            if args.update:
                package, version, sha256 = hostsetup.update_pin(kernel=spec,
                                                                cache=args.workdir or harness.default_workdir())
                print(f'pinned {package} {version} sha256 {sha256} in {spec.pin_file}')
            else:
                hostsetup.read_pin(kernel=spec)  # a pin that cannot be used is an error here too
                print(spec.pin_file.read_text(), end='')
            return 0
        if args.command == 'check':
            parsed = checks.parse_log(args.log.read_text(errors='replace'))
            verdict, detail = checks.judge(parsed, timed_out=False)
            print(f'log verdict: {verdict} {detail}')
            failing = _print_checks(parsed.results, list(parsed.results) or checks.DEFAULT_EXPERIMENTS,
                                    guard_modes[args.migration_guard])
            return 0 if verdict == 'ok' and not failing else 1
        points = ('after-inject', 'after-migrate') if args.hook_after_migrate else ('after-inject',)
        hooks = {name: harness.Hook(path, points=points) for name, path in args.hook}
        experiments = args.experiments.split(',') if args.experiments else None
        lab_run = harness.run_lab(experiments, hooks=hooks, qemu_binary=args.qemu_binary, workdir=args.workdir,
                                  kernel=args.kernel, timeout_s=args.timeout, echo=not args.quiet)
    except LabUnavailable as exc:
        print(f'poison-lab: cannot run on this machine: {exc}', file=sys.stderr)
        return 3
    except LabError as exc:
        print(f'poison-lab: {exc}', file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(dict(lab_run.summary(), results=lab_run.results), indent=1, default=str))
    failing = _print_checks(lab_run.results, lab_run.experiments, guard_modes[args.migration_guard])
    print(f'poison-lab: kernel {lab_run.kernel.get("release")} ({lab_run.kernel.get("package")} '
          f'{lab_run.kernel.get("version")}, --kernel {lab_run.kernel.get("lab_kernel")})')
    print(f'poison-lab: verdict {lab_run.verdict}, attempts {lab_run.attempts}, '
          f'{lab_run.duration_s:.0f} s total (boot {lab_run.boot_s:.0f} s), log {lab_run.log_path}')
    return 0 if lab_run.ok and not failing else 1


if __name__ == '__main__':
    sys.exit(main())
