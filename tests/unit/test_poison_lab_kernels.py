# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Pure parts of the poison lab's two kernels and of its uffd-poison checks (no VM, no apt).

The lab itself (both kernels booted for real) is tested by
tests/integration/test_poison_lab_uffd_poison.py; these tests cover the pin files, the
--kernel / kernel= validation, the private apt configuration and the check rules.
"""
from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest

LAB_DIR = Path(__file__).resolve().parents[2] / 'lab' / 'poison'
if str(LAB_DIR) not in sys.path:
    sys.path.insert(0, str(LAB_DIR))

from poisonlab import checks, cli, harness, hostsetup, initramfs, testing  # noqa: E402  pylint: disable=wrong-import-position
from poisonlab.errors import LabError  # noqa: E402  pylint: disable=wrong-import-position

SHA = 'a' * 64


# ------------------------------------------------------------------ pins ---
def test_both_repository_pins_parse_and_name_their_kernel():
    pin_61 = hostsetup.read_pin(kernel='6.1')
    pin_612 = hostsetup.read_pin(kernel='6.12')
    assert hostsetup.KERNELS['6.1'].package_re.match(pin_61['package'])
    assert hostsetup.KERNELS['6.12'].package_re.match(pin_612['package'])
    assert pin_612['version'].endswith('~bpo12+1')  # a bookworm-backports build
    assert pin_61['sha256'] != pin_612['sha256']
    assert hostsetup.read_pin() == pin_61  # the default stays the 6.1 pin
    assert hostsetup.PIN_FILE == hostsetup.KERNELS['6.1'].pin_file == LAB_DIR / 'kernel.pin'
    assert hostsetup.KERNELS['6.12'].pin_file == LAB_DIR / 'kernel-6.12.pin'


@pytest.mark.parametrize('kernel, package', [('6.1', 'linux-image-6.1.0-57-amd64'),
                                             ('6.12', 'linux-image-6.12.95+deb12-amd64')])
def test_pin_round_trip(tmp_path, kernel, package):
    path = tmp_path / 'kernel.pin'
    hostsetup.write_pin(package, '1.2-3', SHA, path, kernel=kernel)
    assert hostsetup.read_pin(path, kernel=kernel) == {'package': package, 'version': '1.2-3', 'sha256': SHA}
    assert f'--kernel {kernel}' in path.read_text()


@pytest.mark.parametrize('kernel, package', [
    ('6.12', 'linux-image-6.1.0-56-amd64'),       # a 6.1 package in the 6.12 pin
    ('6.1', 'linux-image-6.12.95+deb12-amd64'),   # and the other way round
    ('6.12', 'linux-image-6.12.95-amd64'),        # not a Debian 12 build (+deb12)
    ('6.1', 'linux-image-6.1.0-56-cloud-amd64'),  # another flavour
])
def test_pin_naming_another_kernel_is_refused(kernel, package):
    text = f'package={package}\nversion=1\nsha256={SHA}\n'
    with pytest.raises(LabError) as error:
        hostsetup.parse_pin(text, kernel, 'test.pin')
    message = str(error.value)
    assert f'not a {kernel} kernel' in message and package in message
    assert hostsetup.KERNELS[kernel].pin_command in message  # names the fix


def test_write_pin_refuses_a_foreign_package_before_writing(tmp_path):
    path = tmp_path / 'kernel-6.12.pin'
    with pytest.raises(LabError, match='not a 6.12 kernel'):
        hostsetup.write_pin('linux-image-6.1.0-56-amd64', '6.1.192-2', SHA, path, kernel='6.12')
    assert not path.exists()


@pytest.mark.parametrize('text, problem', [
    ('package=linux-image-6.12.95+deb12-amd64\nversion=1\n', '"sha256=" is missing'),
    (f'package=linux-image-6.12.95+deb12-amd64\nversion=1\nsha256={"A" * 64}\n', '64 lowercase hex'),
    ('package linux-image-6.12.95+deb12-amd64\n', 'expected key=value'),
])
def test_broken_612_pin_is_an_error(text, problem):
    with pytest.raises(LabError, match=problem) as error:
        hostsetup.parse_pin(text, '6.12', 'kernel-6.12.pin')
    assert 'kernel-6.12.pin' in str(error.value)


def test_missing_pin_file_names_the_update_command(tmp_path):
    with pytest.raises(LabError, match=r'pin --update --kernel 6\.12'):
        hostsetup.read_pin(tmp_path / 'absent.pin', kernel='6.12')


# ------------------------------------------------------- kernel selection ---
def test_kernel_spec_default_and_unknown():
    assert hostsetup.kernel_spec(None).name == '6.1'
    assert hostsetup.kernel_spec('6.12').name == '6.12'
    with pytest.raises(LabError) as error:
        hostsetup.kernel_spec('6.6')
    assert "unknown lab kernel '6.6'" in str(error.value) and '6.1, 6.12' in str(error.value)


def test_run_lab_rejects_an_unknown_kernel_before_anything_changes(tmp_path):
    workdir = tmp_path / 'lab'
    with pytest.raises(LabError, match="unknown lab kernel '5.10'"):
        harness.run_lab(['uffd-poison'], workdir=workdir, kernel='5.10', install_packages=False)
    assert not workdir.exists()


def test_run_lab_rejects_a_string_of_experiments(tmp_path):
    with pytest.raises(LabError, match='list of names'):
        harness.run_lab('uffd-poison', workdir=tmp_path / 'lab', install_packages=False)
    assert not (tmp_path / 'lab').exists()


def test_cli_kernel_option(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(['run', '--kernel', '7.0'])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "unknown lab kernel '7.0'" in err and '6.1, 6.12' in err
    assert cli.main(['pin', '--kernel', '6.12']) == 0
    assert 'package=' + hostsetup.read_pin(kernel='6.12')['package'] in capsys.readouterr().out
    assert cli.main(['pin']) == 0
    assert 'package=' + hostsetup.read_pin(kernel='6.1')['package'] in capsys.readouterr().out


def test_session_run_keys_keep_the_default_and_separate_the_rest():
    assert testing.run_key() == testing.run_key(None, '6.1') == ''  # the existing session run
    assert testing.run_key(None, '6.12') != ''
    assert testing.run_key(None, '6.12', with_hooks=False) not in ('', testing.run_key(None, '6.12'))
    assert testing.run_key('/x/qemu', '6.12') != testing.run_key('/x/qemu')


# --------------------------------------------------------------- private apt ---
def test_612_uses_a_private_apt_configuration(tmp_path):
    apt = hostsetup.Apt(hostsetup.KERNELS['6.12'], tmp_path)
    apt.prepare()
    root = tmp_path / 'apt' / 'kernel-6.12'
    assert (root / 'sources.list').read_text().split() == [
        'deb', f'[signed-by={hostsetup.DEBIAN_KEYRING}]', 'http://deb.debian.org/debian', 'bookworm-backports', 'main']
    assert (root / 'lists' / 'partial').is_dir() and (root / 'cache' / 'archives' / 'partial').is_dir()
    assert (root / 'status').read_text() == ''
    argv = apt.get('download', 'linux-image-6.12.95+deb12-amd64=6.12.95-1~bpo12+1')
    options = dict(argv[i + 1].split('=', 1) for i, a in enumerate(argv) if a == '-o')
    assert options['Dir::Etc::SourceList'] == str(root / 'sources.list')
    assert options['Dir::Etc::SourceParts'] == '/dev/null'  # the system's sources.list.d is not read
    assert options['Dir::State::Lists'] == str(root / 'lists')  # nor are its lists written
    assert options['Dir::Cache'] == str(root / 'cache')
    assert options['Dir::State::status'] == str(root / 'status')
    assert options['Dir::Etc::Preferences'] == options['Dir::Etc::PreferencesParts'] == '/dev/null'
    assert apt.cache('show', 'x')[:1] == ['apt-cache'] and '-o' in apt.cache('show', 'x')


def test_61_uses_the_system_apt_sources():
    apt = hostsetup.Apt(hostsetup.KERNELS['6.1'], None)
    assert apt.get('download', 'p=1') == hostsetup.APT + ['download', 'p=1']
    assert apt.cache('show', 'p') == ['apt-cache', 'show', 'p']


def test_private_apt_needs_a_work_directory():
    with pytest.raises(LabError, match='work directory'):
        hostsetup.Apt(hostsetup.KERNELS['6.12'], None)


def test_backports_meta_package_record():
    """`apt-cache show --no-all-versions linux-image-amd64` with the bookworm-backports list
    (copied from the private configuration's output on 2026-12-06)."""
    record = hostsetup.parse_apt_record(
        'Package: linux-image-amd64\nSource: linux-signed-amd64 (6.12.95+1~bpo12+1)\n'
        'Version: 6.12.95-1~bpo12+1\nDepends: linux-image-6.12.95+deb12-amd64 (= 6.12.95-1~bpo12+1)\n'
        'Description: Linux for 64-bit PCs (meta-package)\n multi-line\n\nPackage: second\n')
    assert record['Version'] == '6.12.95-1~bpo12+1'
    package = hostsetup.image_package_of(record, hostsetup.KERNELS['6.12'])
    assert package == 'linux-image-6.12.95+deb12-amd64'
    assert hostsetup.KERNELS['6.12'].package_re.match(package)
    assert not hostsetup.KERNELS['6.1'].package_re.match(package)


# ------------------------------------------------------ guest collection code ---
def test_collection_files_ship_the_pagemap_decoder():
    files = initramfs.collection_files(LAB_DIR.parents[1])
    prefix = '/lab/collection/ansible_collections/kvm_ras/poison_guard/plugins/module_utils/poison/'
    for name in ('encoding.py', 'pagemap.py', 'procfs.py', 'swaptype.py', 'host.py', '__init__.py'):
        assert prefix + name in files and files[prefix + name].is_file()
    assert initramfs.HELPERS['uffd-poison'] == 'uffd_poison.c' and (initramfs.SRC_DIR / 'uffd_poison.c').is_file()


# --------------------------------------------------------------- the checks ---
# The uffd-poison RESULT of a real run on Debian's 6.12.95+deb12-amd64 (poison lab, 2026-12-06),
# reduced to the fields the checks read.
RESULT_612 = json.loads('''{
 "experiment": "uffd-poison", "victim": "uffd", "kernel_release": "6.12.95+deb12-amd64",
 "page": 10, "pages": 64, "vaddr": "0x7f60978af000",
 "api_plain": {"errno": "0", "features": "0x1ffff", "ret": "0"},
 "api_poison": {"errno": "0", "features": "0x1ffff", "ret": "0"},
 "poison": {"api": "0", "api_poison": "1", "register": "0", "register_ioctls": "0x13c", "ret": "0",
            "errno": "0", "updated": "4096"},
 "release": {"close": "0", "errno": "0", "unregister": "0"},
 "pagemap": {"raw": "0x408000000000005f", "present": 0, "swap": 1},
 "pagemap_self": {"page": "10", "raw": "0x408000000000005f"},
 "collection": {"entry": {"poisoned_bit": true, "pte_marker": true},
                "facts": {"pte_marker_swap_type": 31},
                "scans": {"pread": {"method": "pread", "complete": true,
                                    "holes": [{"hva": "0x7f60978af000", "source": "pte_marker_poisoned"}]},
                          "pagemap_scan": {"method": "pagemap_scan", "complete": true,
                                           "holes": [{"hva": "0x7f60978af000", "source": "pte_marker_poisoned"}]}}},
 "checkall": {"bad_pages": "0", "good_pages": "63", "pages": "64", "skip": "10"},
 "neighbours": [{"bad": "0", "good": "4096", "page": "9"}, {"bad": "0", "good": "4096", "page": "11"}],
 "fork": ["CHILD PAGEMAP page=10 vaddr=0x7f60978af000 raw=0x408000000000005f",
          "CHILD SIGBUS code=4 name=BUS_MCEERR_AR addr=0x7f60978af000 lsb=12", "CHILD READ page=10 sigbus",
          "CHILD CHECK page=11 good=4096 bad=0", "FORK child=154 status=exit:0"],
 "read": ["SIGBUS code=4 name=BUS_MCEERR_AR addr=0x7f60978af000 lsb=12", "READ page=10 sigbus"],
 "dmesg_after_touch": ["[   22.687602] MCE: Killing uffd-poison:153 due to hardware memory corruption fault at 7f60978af000"],
 "hardware_corrupted_kb_before": 0, "hardware_corrupted_kb_after": 0,
 "victim_exit": {"alive": false, "exit_code": 0, "signal": null}
}''')


def _failing(result):
    items = checks.evaluate({'uffd-poison': result}, ['uffd-poison'])['uffd-poison']
    return {c.id for c in items if not c.ok}, {c.id for c in items}


def test_real_612_result_passes_every_check():
    failing, ids = _failing(RESULT_612)
    assert not failing
    assert {'uffdio-poison-one-page', 'pagemap-poisoned-pte-marker', 'collection-classifies-poisoned',
            'read-sigbus-mceerr-ar-lsb-12', 'forked-child-inherits-marker', 'neighbours-keep-data'} <= ids


def test_sigbus_without_memory_failure_fails_the_check():
    """A kernel without CONFIG_MEMORY_FAILURE sends BUS_ADRERR (2) with lsb 0 for the marker
    (measured on the 6.18 build machine): QEMU would treat that as a crash, so it must fail."""
    result = copy.deepcopy(RESULT_612)
    result['read'][0] = 'SIGBUS code=2 name=BUS_ADRERR addr=0x7f60978af000 lsb=0'
    result['fork'][1] = 'CHILD SIGBUS code=2 name=BUS_ADRERR addr=0x7f60978af000 lsb=0'
    failing, _ids = _failing(result)
    assert failing == {'read-sigbus-mceerr-ar-lsb-12', 'forked-child-inherits-marker'}


@pytest.mark.parametrize('mutate, check_id', [
    (lambda r: r['pagemap'].update(raw='0x408000000000003f'), 'pagemap-poisoned-pte-marker'),  # uffd-wp marker (1)
    (lambda r: r['collection']['scans']['pread']['holes'].clear(), 'collection-classifies-poisoned'),
    (lambda r: r['neighbours'][1].update(good='0', bad='4096'), 'neighbours-keep-data'),
    (lambda r: r['poison'].update(updated='8192'), 'uffdio-poison-one-page'),
    (lambda r: r.update(hardware_corrupted_kb_after=4), 'hardware-corrupted-unchanged'),
    # the scanner fell back from the ioctl to pread: the PAGEMAP_SCAN path was not exercised
    (lambda r: r['collection']['scans']['pagemap_scan'].update(method='pread'), 'collection-pagemap-scan-used'),
])
def test_each_612_outcome_is_checked(mutate, check_id):
    result = copy.deepcopy(RESULT_612)
    mutate(result)
    assert check_id in _failing(result)[0]


def test_a_612_kernel_without_the_feature_fails():
    """The expectation comes from the kernel release, not from what the kernel advertises."""
    result = copy.deepcopy(RESULT_612)
    result['api_plain']['features'] = '0x1fff'  # what Debian's 6.1 advertises
    assert 'api-advertises-poison' in _failing(result)[0]


# The uffd-poison RESULT of a real run on Debian's 6.1.0-56-amd64 (poison lab, 2026-12-06), reduced.
RESULT_61 = json.loads('''{
 "experiment": "uffd-poison", "victim": "uffd", "kernel_release": "6.1.0-56-amd64", "page": 10, "pages": 64,
 "vaddr": "0x7fa4130bc000",
 "api_plain": {"errno": "0", "features": "0x1fff", "ret": "0"},
 "api_poison": {"errno": "22", "features": "0x0", "ret": "-1"},
 "poison": {"api": "-1", "api_errno": "22", "api_poison": "0", "register": "0", "register_ioctls": "0x1c",
            "ret": "-1", "errno": "22", "updated": "0"},
 "pagemap": {"raw": "0x0080000000000000", "present": 0, "swap": 0},
 "collection": {"scans": {"pread": {"complete": true, "holes": []}}},
 "checkall": {"bad_pages": "0", "good_pages": "63", "pages": "64", "skip": "10"},
 "neighbours": [{"bad": "0", "good": "4096", "page": "9"}, {"bad": "0", "good": "4096", "page": "11"}],
 "read": ["READ page=10 value=0"],
 "victim_exit": {"alive": false, "exit_code": 0, "signal": null}
}''')


def test_real_61_result_passes_the_no_feature_checks():
    failing, ids = _failing(RESULT_61)
    assert not failing
    assert {'api-with-poison-einval', 'uffdio-poison-refused', 'unpoisoned-hole-reads-zeros'} <= ids
    assert 'uffdio-poison-one-page' not in ids


def test_kernel_release_decides_the_expectation():
    assert checks.expects_uffd_poison('6.12.95+deb12-amd64')
    assert checks.expects_uffd_poison('6.6.0')
    assert not checks.expects_uffd_poison('6.1.0-56-amd64')
    assert not checks.expects_uffd_poison('garbage')
    assert not checks.expects_uffd_poison(None)
