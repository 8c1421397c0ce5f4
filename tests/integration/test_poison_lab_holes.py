# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Live migration of a really poisoned VM with its hole carried to the destination (x-poison-holes).

The patched_qemu role's QEMU 7.2 package carries the x-poison-holes series
(roles/patched_qemu/files/patches/7.2/0002-0005): a page in QEMU's poison list is sent as a hole
record instead of being read, and the destination installs it with UFFDIO_POISON (Linux 6.6+)
and adds it to its own poison list. This proves it on REAL hardware poison in the poison lab
(lab/poison): an inner KVM guest (src/holes_bios.S: a firmware that fills RAM around guest
address 0x80000 with a TSC-seeded sequence, handles machine checks and reads 0x80000 when a byte
arrives on COM1) has the host page behind 0x80000 poisoned with hwpoison_inject corrupt-pfn, then
the same source QEMU is migrated (experiment qemu-holes, see lab/poison/guest/lab.py):

1. without the capability: the upstream guard refuses, the VM keeps running;
2. capability on the source only: the destination refuses the stream ("Capability
   x-poison-holes is off, but received capability is on"), the VM keeps running;
3. capability on the destination only: the source's guard refuses;
4. capability on both sides, to a second inner QEMU in the same lab VM:
   - on Debian's 6.12 kernel (bookworm-backports, UFFDIO_POISON): the migration completes and the
     source survives (no SIGBUS); every guest page but the hole is identical on both sides
     (sha256 of QEMU's pmemsave of [0, hole) and [hole + 4 KiB, 64 MiB)); the destination lists
     the page in x-query-hwpoison, its pagemap shows the POISONED PTE marker at the hole (read by
     the collection's own scanner); the guest's read of the hole on the destination ends in a
     machine check the guest's own handler logs ("MCE ... AR" on COM1) and QEMU's "Guest MCE
     Memory Error ... BUS_MCEERR_AR" line, never in data (no "VALUE" line: not zeros);
   - on Debian 12's own 6.1 kernel (no UFFD_FEATURE_POISON): the destination fails at RAM setup,
     before any page moves, and the source keeps running.

The control in the same 6.12 run (qemu-holes-stock): the same guest on Debian's stock QEMU 7.2
dies with SIGBUS when the migration reads the page. The package is the one the role builds (a
cache hit in `make test`, see test_patched_qemu_poison_lab.py).
"""
from __future__ import annotations

import pytest

from poison_lab_fixture import checks, get_run

pytestmark = [pytest.mark.poison_lab, pytest.mark.slow]

HOLES = 'qemu-holes'
STOCK = 'qemu-holes-stock'


@pytest.fixture(scope='session')
def holes_612(patched_binary):  # pylint: disable=redefined-outer-name
    run = get_run(qemu_binary=patched_binary['binary'], kernel='6.12', with_hooks=False, experiments=[HOLES, STOCK])
    print(f'\npoison lab holes (6.12, {run.kernel.get("release")}): verdict {run.verdict}, '
          f'{run.duration_s:.0f} s, log {run.log_path}')
    return run


@pytest.fixture(scope='session')
def holes_61(patched_binary):  # pylint: disable=redefined-outer-name
    run = get_run(qemu_binary=patched_binary['binary'], kernel='6.1', with_hooks=False, experiments=[HOLES])
    print(f'\npoison lab holes (6.1, {run.kernel.get("release")}): verdict {run.verdict}, '
          f'{run.duration_s:.0f} s, log {run.log_path}')
    return run


def _checks(run, experiment):
    assert run.ok, f'lab run verdict {run.verdict}; log {run.log_path}'
    items = checks.evaluate(run.results, [experiment])[experiment]
    failed = [str(c) for c in items if not c.ok]
    assert not failed, '\n'.join(failed) + f'\nlog {run.log_path}'
    return {c.id for c in items}


def test_612_kernel_has_uffdio_poison(holes_612):
    assert checks.expects_uffd_poison(holes_612.results[HOLES].get('kernel_release'))


def test_hole_carried_to_the_destination(holes_612):
    ids = _checks(holes_612, HOLES)
    # every step of the proof was judged, not skipped
    assert {'guard-refused-with-guard', 'source-only-destination-says-why', 'destination-only-refused-with-guard',
            'holes-migration-completed', 'source-survives-without-sigbus', 'guest-ram-identical-except-hole',
            'guest-ram-holds-the-pattern', 'destination-lists-the-hole', 'destination-pagemap-poisoned-marker',
            'collection-finds-the-hole-on-destination', 'destination-guest-read-machine-check',
            'destination-qemu-log-guest-mce-ar', 'destination-alive-after-read'} <= ids


def test_hole_migration_moved_the_ram(holes_612):
    holes = holes_612.results[HOLES]['attempts']['holes']
    ram = holes_612.results[HOLES]['destination']['ram']
    # the pattern region is in the compared ranges, and the stream carried pages, not only the hole
    assert holes['query_migrate']['ram']['normal'] > 0
    assert [part['sha256'] for part in ram['source']] == [part['sha256'] for part in ram['destination']]


def test_stock_qemu_dies_on_the_same_guest(holes_612):
    ids = _checks(holes_612, STOCK)
    assert 'migration-crashed-qemu-sigbus' in ids


def test_61_destination_without_uffdio_poison_refuses_at_setup(holes_61):
    assert not checks.expects_uffd_poison(holes_61.results[HOLES].get('kernel_release'))
    ids = _checks(holes_61, HOLES)
    assert {'no-uffdio-poison-migration-failed', 'no-uffdio-poison-destination-says-why',
            'no-uffdio-poison-source-keeps-running'} <= ids
    holes = holes_61.results[HOLES]['attempts']['holes']
    # refused before any RAM moved: the destination never got past setup
    assert not any('Guest MCE' in line for line in holes['destination_log'])
