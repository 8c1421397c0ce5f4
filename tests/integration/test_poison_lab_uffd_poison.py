# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""UFFDIO_POISON on real Debian kernels: what a migration destination needs to carry a hole.

Issue 19 carries a guest page that is hardware-poisoned on the source to the destination
without reading it: the destination installs the hole with UFFDIO_POISON (Linux 6.6+). The
poison lab's ``uffd-poison`` experiment does that on one page of a userfaultfd-registered
anonymous mapping and records what the kernel shows. It runs on both lab kernels:

- Debian's 6.12 from bookworm-backports (``--kernel 6.12``, a run of its own here, without the
  session's hooks): UFFD_FEATURE_POISON is advertised; the ioctl poisons exactly one page; after
  UFFDIO_UNREGISTER and close() the page is a POISONED PTE marker in /proc/PID/pagemap, which the
  collection's own scanner classifies as ``pte_marker_poisoned``; a read raises SIGBUS
  BUS_MCEERR_AR with si_addr_lsb 12 (CONFIG_MEMORY_FAILURE=y); the neighbours keep their data;
  a forked child inherits the marker. The other experiments pass on 6.12 too.
- Debian 12's own 6.1 (the session's default run): no UFFD_FEATURE_POISON, UFFDIO_API asking for
  it fails with EINVAL, UFFDIO_POISON is refused, and the page that should have been a hole
  reads as zeros: the reason a destination without the feature must refuse the migration.
"""
from __future__ import annotations

import pytest

from poison_lab_fixture import checks, get_run, poison_lab_run  # noqa: F401  pylint: disable=unused-import
from poisonlab import harness, hostsetup

pytestmark = pytest.mark.poison_lab

EXPERIMENT = 'uffd-poison'
PAGE = 4096
EINVAL = 22
BUS_MCEERR_AR = '4'

CHECKS_WITH_UFFD_POISON = {
    'api-handshake', 'neighbours-keep-data', 'every-other-page-keeps-data', 'victim-exit-0',
    'api-advertises-poison', 'api-accepts-poison', 'register-offers-uffdio-poison', 'uffdio-poison-one-page',
    'unregister-and-close', 'pagemap-poisoned-pte-marker', 'marker-seen-by-the-process-itself',
    'collection-decodes-poisoned-marker', 'collection-classifies-poisoned', 'collection-pagemap-scan-used',
    'read-sigbus-mceerr-ar-lsb-12', 'dmesg-mce-killing-uffd-poison', 'forked-child-inherits-marker',
    'hardware-corrupted-unchanged'}
CHECKS_WITHOUT_UFFD_POISON = {
    'api-handshake', 'neighbours-keep-data', 'every-other-page-keeps-data', 'victim-exit-0',
    'api-does-not-advertise-poison', 'api-with-poison-einval', 'uffdio-poison-refused', 'no-marker-page-is-empty',
    'unpoisoned-hole-reads-zeros', 'collection-sees-no-hole'}


@pytest.fixture(scope='session')
def run_612():
    run = get_run(kernel='6.12', with_hooks=False)
    print(f'\npoison lab (--kernel 6.12, {run.kernel.get("release")}): verdict {run.verdict}, '
          f'attempts {run.attempts}, {run.duration_s:.0f} s (boot {run.boot_s:.0f} s), log {run.log_path}')
    return run


def _fields(line: str) -> dict:
    return dict(token.split('=', 1) for token in line.split() if '=' in token)


def _evaluated(run, experiment):
    items = checks.evaluate(run.results, [experiment], migration_guard=False)[experiment]
    failed = [str(c) for c in items if not c.ok]
    assert not failed, '\n'.join(failed) + f'\nlog: {run.log_path}'
    return {c.id for c in items}


def test_612_run_boots_the_pinned_backports_kernel(run_612):
    assert run_612.ok, run_612.summary()
    pin = hostsetup.read_pin(kernel='6.12')
    assert run_612.kernel['lab_kernel'] == '6.12'
    assert run_612.kernel['package'] == pin['package'] and run_612.kernel['sha256'] == pin['sha256']
    assert run_612.kernel['pinned'] is True
    assert run_612.kernel['release'].startswith('6.12.') and run_612.kernel['release'].endswith('+deb12-amd64')
    assert sorted(run_612.results) == sorted(harness.EXPERIMENTS)
    assert all(r['kernel_release'] == run_612.kernel['release'] for r in run_612.results.values())


@pytest.mark.parametrize('experiment', [e for e in harness.EXPERIMENTS if e != EXPERIMENT])
def test_612_hwpoison_experiments_pass(run_612, experiment):
    """The hwpoison experiments show on 6.12 what they show on 6.1 (stock QEMU 7.2 inside)."""
    assert _evaluated(run_612, experiment)


def test_612_hwpoison_swap_type_differs_from_61(run_612, poison_lab_run):
    """SWP_HWPOISON is a kernel build constant: 27 on Debian's 6.12, 26 on its 6.1."""
    assert set(checks.hwpoison_swap_types(run_612.results).values()) == {27}
    assert set(checks.hwpoison_swap_types(poison_lab_run.results).values()) == {26}


def test_612_uffdio_poison_installs_a_hole(run_612):
    r = run_612.results[EXPERIMENT]
    assert _evaluated(run_612, EXPERIMENT) == CHECKS_WITH_UFFD_POISON
    vaddr = int(r['vaddr'], 16)
    # the feature is advertised and granted; UFFDIO_REGISTER offers the ioctl (bit _UFFDIO_POISON)
    assert int(r['api_plain']['features'], 16) & checks.UFFD_FEATURE_POISON
    assert int(r['poison']['register_ioctls'], 16) & checks.UFFDIO_POISON_IOCTL_BIT
    assert r['poison']['ret'] == '0' and int(r['poison']['updated']) == PAGE
    # the page was an ordinary present page before, a POISONED PTE marker after unregister + close
    assert r['pagemap_before']['present'] == 1
    raw = int(r['pagemap']['raw'], 16)
    assert raw >> 63 & 1 == 0 and raw >> 62 & 1 == 1
    assert (raw & ((1 << 55) - 1)) >> 5 == 2  # PTE_MARKER_POISONED
    assert raw & 0x1f == 31  # PTE markers are the top special swap type from 6.2 on
    assert r['collection']['facts']['pte_marker_swap_type'] == 31  # the collection derives the same
    for method in ('pread', 'pagemap_scan'):
        scan = r['collection']['scans'][method]
        assert scan['complete'] and scan['method'] == method, scan
        assert [(h['hva'], h['source'], h['pfn']) for h in scan['holes']] == [(hex(vaddr), 'pte_marker_poisoned', None)]
    # a read raises SIGBUS BUS_MCEERR_AR at the page with si_addr_lsb 12, as for real hwpoison
    bus = _fields(r['read'][0])
    assert r['read'][0].startswith('SIGBUS ') and r['read'][-1] == f'READ page={r["page"]} sigbus'
    assert bus['code'] == BUS_MCEERR_AR and bus['lsb'] == '12' and int(bus['addr'], 16) == vaddr
    # neighbours and every other page keep their data
    assert [(n['page'], n['good'], n['bad']) for n in r['neighbours']] == [
        (str(r['page'] - 1), str(PAGE), '0'), (str(r['page'] + 1), str(PAGE), '0')]
    assert r['checkall']['bad_pages'] == '0' and int(r['checkall']['good_pages']) == r['pages'] - 1
    # a forked child inherits the marker and gets the same signal
    child = [line for line in r['fork'] if line.startswith('CHILD ')]
    assert child[0].endswith(f'raw={r["pagemap"]["raw"]}')
    child_bus = _fields(child[1][len('CHILD '):])
    assert child[1].startswith('CHILD SIGBUS ') and child_bus['code'] == BUS_MCEERR_AR and child_bus['lsb'] == '12'
    assert r['fork'][-1].endswith('status=exit:0')
    # no physical page is poisoned: the host counter does not move, only the marker tells
    assert r['hardware_corrupted_kb_before'] == r['hardware_corrupted_kb_after']


def test_61_has_no_uffdio_poison_and_the_hole_would_read_zeros(poison_lab_run):
    r = poison_lab_run.results[EXPERIMENT]
    assert r['kernel_release'].startswith('6.1.0-')
    assert _evaluated(poison_lab_run, EXPERIMENT) == CHECKS_WITHOUT_UFFD_POISON
    assert not int(r['api_plain']['features'], 16) & checks.UFFD_FEATURE_POISON
    assert (r['api_poison']['ret'], int(r['api_poison']['errno'])) == ('-1', EINVAL)
    assert not int(r['poison']['register_ioctls'], 16) & checks.UFFDIO_POISON_IOCTL_BIT
    assert (r['poison']['ret'], int(r['poison']['errno'])) == ('-1', EINVAL)
    assert r['pagemap']['present'] == 0 and r['pagemap']['swap'] == 0
    assert f'READ page={r["page"]} value=0' in r['read']  # a zero page where the hole should be
    assert all(not scan['holes'] for scan in r['collection']['scans'].values())
