# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Pure parts of the poison lab's hole-migration experiments (no VM): the guest firmware as the
lab assembles it (real GNU as and ld), the experiment registry, the session-run key, and the
check rules judged on a real RESULT.

The lab itself (both kernels booted for real, the patched QEMU from the role's package) is
tests/integration/test_poison_lab_holes.py.
"""
from __future__ import annotations

import copy
import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest

LAB_DIR = Path(__file__).resolve().parents[2] / 'lab' / 'poison'
if str(LAB_DIR) not in sys.path:
    sys.path.insert(0, str(LAB_DIR))

from poisonlab import checks, harness, initramfs, testing  # noqa: E402  pylint: disable=wrong-import-position
from poisonlab.errors import LabError  # noqa: E402  pylint: disable=wrong-import-position

FIXTURE = Path(__file__).resolve().parent / 'fixtures' / 'poison_lab'


def _guest_lab():
    spec = importlib.util.spec_from_file_location('poison_lab_guest', LAB_DIR / 'guest' / 'lab.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------- firmware ---
@pytest.mark.skipif(not (shutil.which('as') and shutil.which('ld')), reason='binutils (as, ld) not installed')
def test_holes_firmware_assembles_to_a_bios_image(tmp_path):
    images = initramfs.assemble_firmware(tmp_path)
    image = images['/lab/holes-bios.bin']
    data = image.read_bytes()
    assert len(data) == 65536
    # the reset vector (F000:FFF0) is a far jump to F000:0000, where the code starts with cli
    assert data[0xfff0:0xfff5] == bytes([0xea, 0x00, 0x00, 0x00, 0xf0])
    assert data[0] == 0xfa
    for text in (b'READY\r\n', b'READ\r\n', b'VALUE ', b'MCE mcg=', b' AR\r\n', b' AO\r\n'):
        assert text in data
    # cached by source hash: a second call reuses the file
    mtime = image.stat().st_mtime_ns
    assert initramfs.assemble_firmware(tmp_path)['/lab/holes-bios.bin'] == image
    assert image.stat().st_mtime_ns == mtime


@pytest.mark.skipif(not (shutil.which('as') and shutil.which('ld')), reason='binutils (as, ld) not installed')
def test_firmware_of_the_wrong_size_is_refused(tmp_path, monkeypatch):
    source = tmp_path / 'src'
    source.mkdir()
    (source / 'tiny.S').write_text('.code16\n.text\n_start:\n hlt\n')
    monkeypatch.setattr(initramfs, 'SRC_DIR', source)
    monkeypatch.setattr(initramfs, 'FIRMWARE', {'tiny.S': '/lab/tiny.bin'})
    with pytest.raises(LabError, match='not a 65536-byte BIOS image'):
        initramfs.assemble_firmware(tmp_path / 'cache')


# -------------------------------------------------------------- experiments ---
def test_hole_experiments_run_only_when_asked_for():
    assert set(checks.HOLES_EXPERIMENTS) == {'qemu-holes', 'qemu-holes-stock'}
    assert not set(checks.HOLES_EXPERIMENTS) & set(harness.EXPERIMENTS)
    assert set(checks.HOLES_EXPERIMENTS) <= set(harness.KNOWN_EXPERIMENTS)
    guest = _guest_lab()
    assert set(guest.EXPERIMENTS) == set(harness.KNOWN_EXPERIMENTS)
    assert guest.EXPERIMENTS['qemu-holes'] == ('holes', {'source': 'patched', 'gpa': 0x80000})
    assert guest.EXPERIMENTS['qemu-holes-stock'][1]['source'] == 'stock'
    # the firmware reads exactly the page the experiment poisons
    assert '.set    HOLE_SEGMENT, 0x8000' in (LAB_DIR / 'src' / 'holes_bios.S').read_text()


def test_unknown_experiment_names_every_known_one(tmp_path):
    with pytest.raises(LabError, match="unknown or no experiments \\['qemu-hole'\\].*qemu-holes-stock"):
        harness.run_lab(['qemu-hole'], workdir=tmp_path / 'lab', install_packages=False)
    assert not (tmp_path / 'lab').exists()


def test_session_run_key_separates_experiment_lists():
    assert testing.run_key('/x/qemu', '6.12', False) == testing.run_key('/x/qemu', '6.12', False, None)
    with_holes = testing.run_key('/x/qemu', '6.12', False, ['qemu-holes', 'qemu-holes-stock'])
    assert with_holes not in (testing.run_key('/x/qemu', '6.12', False),
                              testing.run_key('/x/qemu', '6.12', False, ['qemu-holes']))


# ----------------------------------------------------------------- checks ---
def _result(name):
    return json.loads((FIXTURE / name).read_text())


def _failing(result, experiment='qemu-holes'):
    items = checks.evaluate({experiment: result}, [experiment])[experiment]
    return {c.id for c in items if not c.ok}, {c.id for c in items}


def test_real_612_hole_migration_passes_every_check():
    failing, ids = _failing(_result('qemu-holes-6.12.json'))
    assert not failing
    assert {'guard-refused-with-guard', 'source-only-destination-says-why', 'destination-only-refused-with-guard',
            'holes-migration-completed', 'destination-pagemap-poisoned-marker', 'guest-ram-identical-except-hole',
            'destination-guest-read-machine-check', 'destination-qemu-log-guest-mce-ar'} <= ids


def test_real_61_refusal_at_setup_passes_every_check():
    failing, ids = _failing(_result('qemu-holes-6.1.json'))
    assert not failing
    assert {'no-uffdio-poison-migration-failed', 'no-uffdio-poison-destination-says-why',
            'no-uffdio-poison-source-keeps-running'} <= ids
    assert 'holes-migration-completed' not in ids


def test_real_stock_control_passes_every_check():
    failing, ids = _failing(_result('qemu-holes-stock-6.12.json'), 'qemu-holes-stock')
    assert not failing
    assert 'migration-crashed-qemu-sigbus' in ids


def _zeros(r):
    """What a destination that turned the hole into a page of zeros would show."""
    r['destination']['guest_read'] = ['READ', 'VALUE 00000000']
    r['destination']['pagemap']['raw'] = '0x8100000000012345'


@pytest.mark.parametrize('mutate, check_id', [
    (_zeros, 'destination-guest-read-machine-check'),
    (_zeros, 'destination-pagemap-poisoned-marker'),
    (lambda r: r['destination']['hwpoison'].update({'return': []}), 'destination-lists-the-hole'),
    (lambda r: r['destination']['ram']['destination'][1].update(sha256='0' * 64), 'guest-ram-identical-except-hole'),
    (lambda r: [p.update(nonzero_bytes=0) for p in r['destination']['ram']['source']], 'guest-ram-holds-the-pattern'),
    (lambda r: r['attempts']['holes']['source'].update(alive=False, signal=7), 'source-survives-without-sigbus'),
    (lambda r: r['attempts']['holes'].update(states=['setup', 'active', 'failed']), 'holes-migration-completed'),
    (lambda r: r['attempts']['guard'].update(reply={'return': {}}), 'guard-refused-with-guard'),
    (lambda r: r['attempts']['source-only'].update(destination_log=[]), 'source-only-destination-says-why'),
    (lambda r: r['attempts']['destination-only'].update(source_status={'status': 'postmigrate'}),
     'destination-only-source-keeps-running'),
    (lambda r: r['destination']['after_read'].update(alive=False, signal=7), 'destination-alive-after-read'),
    (lambda r: r['after_inject'].update(hwpoison={'return': []}), 'source-lists-the-poisoned-page'),
])
def test_each_hole_outcome_is_checked(mutate, check_id):
    result = copy.deepcopy(_result('qemu-holes-6.12.json'))
    mutate(result)
    assert check_id in _failing(result)[0]


def test_a_612_run_that_failed_at_setup_fails():
    """The expectation comes from the kernel release: a 6.12 run may not pass as a refusal."""
    result = copy.deepcopy(_result('qemu-holes-6.1.json'))
    result['kernel_release'] = '6.12.95+deb12-amd64'
    assert 'holes-migration-completed' in _failing(result)[0]
