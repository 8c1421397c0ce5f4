# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The poison lab itself: real kernel hwpoison in the nested VM, and its hooks.

Everything asserted here comes from one boot of the lab (the session fixture), i.e. from a
real Debian 6.1 kernel poisoning real pages (debugfs corrupt-pfn, madvise MADV_HWPOISON)
of a plain process and of QEMU 7.2 processes under nested KVM and TCG.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from poison_lab_fixture import LAB_DIR, Hook, checks, poison_lab_run, register_hook, register_module_hook  # noqa: F401  pylint: disable=unused-import
from poisonlab import harness, hostsetup
from poisonlab.errors import LabError

# --- hooks this module adds to the session's run --------------------------------------
register_hook('victim-scan', Hook(LAB_DIR / 'hooks' / 'victim_scan', points=('after-inject', 'after-migrate')))
register_module_hook('ansible-stat', 'ansible.builtin.stat',
                     {'path': '/proc/@LAB_VICTIM_PID@/status', 'get_checksum': False},
                     experiments=['memhog-late', 'qemu-kvm-mce'])

POISONED_MAPPED = ['memhog-late', 'memhog-early', 'memhog-madvise', 'qemu-kvm-mce']

# What each experiment must show (check ids of poisonlab.checks.evaluate); the ids are listed
# here so that a check that silently stops being evaluated fails this test.
COMMON = {'inject-accepted', 'kpageflags-clean-before', 'kpageflags-hwpoison', 'hardware-corrupted',
          'dmesg-recovered'}
MEMHOG = COMMON | {'hwpoison-pagemap-entry', 'victim-alive-after-injection', 'touch-sigbus-ar',
                   'neighbour-page-readable', 'dmesg-mce-killing-memhog', 'victim-exit-0'}
EXPECTED_CHECKS = {
    'memhog-late': MEMHOG | {'no-sigbus-at-injection'},
    'memhog-early': MEMHOG | {'sigbus-ao-at-injection'},
    'memhog-madvise': MEMHOG | {'no-sigbus-at-injection', 'dmesg-madvise-injection'},
    'qemu-tcg': COMMON | {'dmesg-sigbus-sent-to-qemu', 'victim-died-at-injection', 'victim-killed-by-signal'},
    'qemu-kvm-reset': COMMON | {'victim-alive-after-injection', 'qemu-log-guest-mce', 'qmp-memory-failure-reset',
                                'qmp-reset-event', 'page-remapped', 'guest-page-readable-after-reset',
                                'migration-completed', 'victim-alive-after-migration'},
    'qemu-kvm-mce': COMMON | {'victim-alive-after-injection', 'qemu-log-guest-mce', 'guest-cr4-mce-set',
                              'qmp-memory-failure-inject', 'hwpoison-pagemap-entry', 'migration-started',
                              'migration-crashed-qemu-sigbus', 'dmesg-mce-killing-live-migration'},
    # Debian 6.1 has no UFFDIO_POISON (see test_poison_lab_uffd_poison.py for both kernels)
    'uffd-poison': {'api-handshake', 'neighbours-keep-data', 'every-other-page-keeps-data', 'victim-exit-0',
                    'api-does-not-advertise-poison', 'api-with-poison-einval', 'uffdio-poison-refused',
                    'no-marker-page-is-empty', 'unpoisoned-hole-reads-zeros', 'collection-sees-no-hole'},
}


@pytest.mark.poison_lab
def test_lab_booted_and_finished(poison_lab_run):
    run = poison_lab_run
    print(json.dumps(run.summary(), indent=1, default=str))
    assert run.ok, f'lab run failed: {run.verdict}; attempts {[(a.verdict, a.detail) for a in run.attempt_log]}; log {run.log_path}'
    assert 1 <= run.attempts <= 2
    assert run.kernel['release'].startswith('6.1.0-')
    assert sorted(run.results) == sorted(EXPECTED_CHECKS)


@pytest.mark.parametrize('experiment', list(EXPECTED_CHECKS))
@pytest.mark.poison_lab
def test_experiment_outcome(poison_lab_run, experiment):
    evaluated = checks.evaluate(poison_lab_run.results, [experiment], migration_guard=False)[experiment]
    ids = {c.id for c in evaluated}
    assert EXPECTED_CHECKS[experiment] <= ids, f'checks not evaluated: {EXPECTED_CHECKS[experiment] - ids}'
    failed = [str(c) for c in evaluated if not c.ok]
    assert not failed, '\n'.join(failed) + f'\nlog: {poison_lab_run.log_path}'


@pytest.mark.parametrize('experiment', POISONED_MAPPED)
@pytest.mark.poison_lab
def test_real_hwpoison_pagemap_entry(poison_lab_run, experiment):
    """Swap bit set, present clear, offset == PFN, swap type beyond every real swap area,
    and KPF_HWPOISON (bit 19) set for that PFN."""
    r = poison_lab_run.results[experiment]
    after = r['after_inject']
    pagemap, pfn = after['pagemap'], int(r['pfn'], 16)
    raw = int(pagemap['raw'], 16)
    assert raw >> 62 & 1 == 1, pagemap
    assert raw >> 63 & 1 == 0, pagemap
    assert raw >> 5 & ((1 << 50) - 1) == pfn, pagemap
    assert raw & 0x1f >= r['swap_areas'], pagemap
    assert int(after['kpageflags']['pfn'], 16) == pfn
    assert int(after['kpageflags']['raw'], 16) >> 19 & 1 == 1, after['kpageflags']
    # before the injection the same virtual page was an ordinary present page on that PFN
    assert r['pagemap_before']['present'] == 1 and int(r['pagemap_before']['pfn'], 16) == pfn


@pytest.mark.poison_lab
def test_hwpoison_swap_type_is_one_kernel_constant(poison_lab_run):
    """Every hwpoison entry of the run carries the same swap type (SWP_HWPOISON of this kernel)."""
    types = checks.hwpoison_swap_types(poison_lab_run.results)
    assert set(types) == set(POISONED_MAPPED), types
    assert len(set(types.values())) == 1, types


@pytest.mark.poison_lab
def test_migration_of_poisoned_vm_kills_qemu_72(poison_lab_run):
    """The upstream bug: migrating a VM whose RAM holds a mapped poisoned page kills QEMU 7.2."""
    r = poison_lab_run.results['qemu-kvm-mce']
    assert r['qemu_version']['major'] == 7
    assert r['after_inject']['victim']['alive'] is True
    assert r['migrate']['reply'] == {'return': {}}
    assert r['migrate']['victim']['signal'] == 7, r['migrate']['victim']
    assert any('MCE: Killing live_migration:' in line for line in r['migrate']['dmesg']), r['migrate']['dmesg']


@pytest.mark.poison_lab
def test_reset_vm_survives_and_migrates(poison_lab_run):
    r = poison_lab_run.results['qemu-kvm-reset']
    assert r['migrate']['states'][-1] == 'completed'
    assert r['migrate']['victim']['alive'] is True
    assert r['after_inject']['pagemap']['swap'] == 0  # QEMU remapped the page on reset
    assert r['after_inject']['hardware_corrupted_kb'] > 0  # the host still counts it
    assert r['victim_exit']['exit_code'] == 0  # quit cleanly afterwards


@pytest.mark.poison_lab
def test_tcg_qemu_dies_at_injection(poison_lab_run):
    r = poison_lab_run.results['qemu-tcg']
    assert r['after_inject']['victim']['alive'] is False
    assert r['victim_exit']['signal'] is not None, r['victim_exit']
    assert 'migrate' not in r


@pytest.mark.poison_lab
def test_victim_scan_hook_saw_the_live_victim(poison_lab_run):
    run = poison_lab_run
    for experiment in POISONED_MAPPED:
        report = run.hook(experiment, 'victim-scan')
        assert report and report['rc'] == 0, report
        found = report['json']
        assert found['pid_alive'] is True and found['pid'] == run.results[experiment]['pid']
        assert run.results[experiment]['pfn'] in [p['pfn'] for p in found['poisoned']], found['poisoned']
        assert found['env']['LAB_EXPERIMENT'] == experiment
        assert found['env']['LAB_HOOK_POINT'] == 'after-inject'
        assert found['env']['LAB_PFN'] == run.results[experiment]['pfn']
    qemu_env = run.hook('qemu-kvm-mce', 'victim-scan')['json']['env']
    assert qemu_env['LAB_VICTIM_IS_QEMU'] == '1' and qemu_env['LAB_QMP_SOCK'].endswith('-hooks.sock')
    assert qemu_env['LAB_GPA'] == run.results['qemu-kvm-mce']['gpa']
    memhog_env = run.hook('memhog-late', 'victim-scan')['json']['env']
    assert memhog_env['LAB_VICTIM_IS_QEMU'] == '0' and 'LAB_QMP_SOCK' not in memhog_env
    # after a reset QEMU no longer maps the poisoned page: a per-process scan is clean
    # while the host counter still shows the poison
    reset = run.hook('qemu-kvm-reset', 'victim-scan')['json']
    assert reset['pid_alive'] is True and reset['poisoned'] == [] and reset['hardware_corrupted_kb'] > 0
    # the second hook point runs after the migrate attempt: QEMU 7.2 is dead by then
    after_migrate = run.hook('qemu-kvm-mce', 'victim-scan', 'after-migrate')
    assert after_migrate['json']['env']['LAB_VICTIM_ALIVE'] == '0'
    assert after_migrate['json']['pid_alive'] is False


@pytest.mark.poison_lab
def test_ansible_module_ran_in_the_vm_as_ansiballz(poison_lab_run):
    for experiment in ('memhog-late', 'qemu-kvm-mce'):
        report = poison_lab_run.hook(experiment, 'ansible-stat')
        assert report is not None and report['rc'] == 0, report
        result = report['json']
        pid = poison_lab_run.results[experiment]['pid']
        assert result['stat']['exists'] is True, result
        assert result['stat']['path'] == f'/proc/{pid}/status'
        assert result['invocation']['module_args']['path'] == f'/proc/{pid}/status'
    assert poison_lab_run.hook('qemu-tcg', 'ansible-stat') is None  # limited to its experiments


def test_ansiballz_payload_of_a_collection_module_is_self_contained(tmp_path):
    """Host-side: a collection module with a collection module_util becomes one python file
    that runs with a bare python3 (isolated mode, no ansible installed for it)."""
    pytest.importorskip('ansible', reason='ansible-core is needed to build AnsiballZ payloads')
    code = textwrap.dedent('''
        import sys
        sys.path.insert(0, %r)
        from poisonlab import ansiballz
        root = %r
        hook = ansiballz.module_hook(root + '/hook', 'labns.labcoll.probe', {'pid': '@LAB_VICTIM_PID@'},
                                     collections_paths=[root + '/collections'])
        print(hook.path)
    ''') % (str(LAB_DIR), str(tmp_path))
    collection = tmp_path / 'collections' / 'ansible_collections' / 'labns' / 'labcoll'
    (collection / 'plugins' / 'modules').mkdir(parents=True)
    (collection / 'plugins' / 'module_utils').mkdir(parents=True)
    (collection / 'galaxy.yml').write_text('namespace: labns\nname: labcoll\nversion: 1.0.0\n')
    (collection / 'plugins' / 'module_utils' / 'answer.py').write_text('def answer(pid):\n    return pid * 2\n')
    (collection / 'plugins' / 'modules' / 'probe.py').write_text(textwrap.dedent('''
        from ansible.module_utils.basic import AnsibleModule
        from ansible_collections.labns.labcoll.plugins.module_utils.answer import answer
        def main():
            module = AnsibleModule(argument_spec={'pid': {'type': 'int', 'required': True}})
            module.exit_json(changed=False, doubled=answer(module.params['pid']))
        if __name__ == '__main__':
            main()
    '''))
    subprocess.run([sys.executable, '-c', code], check=True, cwd=tmp_path)
    hook_dir = tmp_path / 'hook'
    proc = subprocess.run(['/usr/bin/python3', '-I', str(hook_dir / 'runner.py')], capture_output=True, text=True,
                          env={'LAB_VICTIM_PID': '21', 'LAB_HOOK_DIR': str(hook_dir), 'PATH': '/usr/bin:/bin'},
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)['doubled'] == 42


@pytest.mark.poison_lab
def test_boot_without_end_marker_is_retried_once():
    """A boot that cannot finish (a 5 s limit kills the VM) is retried once, then reported."""
    run = harness.run_lab(['memhog-late'], timeout_s=5)
    assert run.attempts == 2 and not run.ok
    assert [a.verdict for a in run.attempt_log] == ['timeout', 'timeout']
    assert run.results == {}


@pytest.mark.poison_lab
def test_kernel_pin_gone_from_mirror_falls_back_with_warning(tmp_path, capsys, monkeypatch):
    """A pinned version the mirror no longer has: the current 6.1 candidate is used with a
    warning naming its version and sha256 and how to update the pin; strict mode refuses."""
    workdir = harness.default_workdir()
    pinned = hostsetup.ensure_kernel(workdir)  # cached by the lab run, else downloaded now
    assert pinned.pinned and pinned.sha256 == hostsetup.read_pin()['sha256']
    gone = tmp_path / 'kernel.pin'
    hostsetup.write_pin(pinned.package, '0.0.0-no-longer-on-the-mirror', pinned.sha256, gone)
    capsys.readouterr()
    fallback = hostsetup.ensure_kernel(workdir, pin_path=gone)
    warning = capsys.readouterr().err
    assert fallback.pinned is False
    assert hostsetup.KERNEL_NAME_RE.match(fallback.package)
    assert fallback.version in warning and fallback.sha256 in warning and 'pin --update' in warning
    assert hostsetup.sha256_file(fallback.deb) == fallback.sha256
    monkeypatch.setenv('POISON_LAB_STRICT_PIN', '1')
    with pytest.raises(LabError, match='no longer on the mirror.*pin --update'):
        hostsetup.ensure_kernel(workdir, pin_path=gone)


# A real panic of the nested kernel (6.12 guest at -smp 2, copied from the research log
# in shared/research/nested-hwpoison.md) and the driver's own quoting of dmesg lines.
PANIC_LOG = textwrap.dedent('''\
    === POISON-LAB BOOT kernel=6.12.95+deb12-amd64 uptime=5.10
    [lab    20.01] dmesg[qemu-kvm-mce after-inject] [ 19.9] Call Trace: (quoted from dmesg, not a console oops)
    [   31.204751] Oops: int3: 0000 [#1] PREEMPT SMP NOPTI
    [   31.205012] Kernel panic - not syncing: Fatal exception in interrupt
    ''')


def test_log_judge_retries_on_panic_and_missing_end_marker():
    parsed = checks.parse_log(PANIC_LOG)
    verdict, detail = checks.judge(parsed, timed_out=False)
    assert verdict == 'panic' and 'Oops: int3' in detail
    assert verdict in checks.RETRY_VERDICTS
    quiet = checks.parse_log(PANIC_LOG.splitlines()[0] + '\n' + PANIC_LOG.splitlines()[1] + '\n')
    assert checks.judge(quiet, timed_out=False)[0] == 'no-end-marker'
    done = checks.parse_log(PANIC_LOG.splitlines()[0] + '\n=== POISON-LAB DONE rc=0 uptime=40.00\n')
    assert checks.judge(done, timed_out=False) == ('ok', '')
