# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Host preparation: the Debian packages the lab uses and the pinned kernel package.

The kernel .deb comes from the machine's own apt sources (`apt-get download`), is checked
against the sha256 pinned in lab/poison/kernel.pin, cached in the work directory and never
installed on the host (only unpacked with dpkg-deb).

Pin policy: the pinned version is used when it is cached or still on the mirror. The
security archive moves on, so when the pinned version is gone the current candidate of
`linux-image-amd64` is accepted if it is still a 6.1 kernel (`linux-image-6.1.0-N-amd64`),
with a warning that prints its version and sha256 and the command that updates the pin.
POISON_LAB_STRICT_PIN=1 turns that fallback into an error.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from .errors import LabError, LabUnavailable

LAB_DIR = Path(__file__).resolve().parent.parent
PIN_FILE = LAB_DIR / 'kernel.pin'
PACKAGES = ['qemu-system-x86', 'busybox-static', 'cpio', 'gcc', 'libc6-dev', 'binutils', 'xz-utils',
            'python3']
KERNEL_META = 'linux-image-amd64'
KERNEL_NAME_RE = re.compile(r'^linux-image-6\.1\.0-\d+-amd64$')
REQUIRED_CONFIG = {'CONFIG_MEMORY_FAILURE': ('y',), 'CONFIG_HWPOISON_INJECT': ('y', 'm'),
                   'CONFIG_KVM_AMD': ('y', 'm'), 'CONFIG_PROC_PAGE_MONITOR': ('y',), 'CONFIG_DEBUG_FS': ('y',)}
APT = ['apt-get', '-o', 'DPkg::Lock::Timeout=600', '-q']


@dataclasses.dataclass(frozen=True)
class KernelPackage:
    package: str
    version: str
    sha256: str
    deb: Path
    pinned: bool  # False: the pin was gone from the mirror and the current candidate was used

    def as_dict(self) -> dict:
        return {'package': self.package, 'version': self.version, 'sha256': self.sha256,
                'deb': str(self.deb), 'pinned': self.pinned}


def warn(message: str) -> None:
    print(f'poison-lab: WARNING: {message}', file=sys.stderr, flush=True)


def info(message: str) -> None:
    print(f'poison-lab: {message}', file=sys.stderr, flush=True)


def _env() -> dict:
    return dict(os.environ, DEBIAN_FRONTEND='noninteractive', LC_ALL='C')


def missing_packages() -> list[str]:
    missing = []
    for package in PACKAGES:
        proc = subprocess.run(['dpkg-query', '-W', '-f=${Status}', package], capture_output=True, text=True,
                              check=False)
        if proc.returncode != 0 or 'install ok installed' not in proc.stdout:
            missing.append(package)
    return missing


def ensure_packages(install: bool = True) -> list[str]:
    """Install the lab's Debian packages that are missing; return what was installed."""
    if not shutil.which('dpkg-query'):
        raise LabUnavailable('this is not a Debian-based machine (no dpkg-query): the poison lab needs Debian 12')
    missing = missing_packages()
    if not missing:
        return []
    if not install:
        raise LabError(f'missing packages {missing}: run `lab/poison/poison-lab setup` (as root)')
    if os.geteuid() != 0:
        error = LabUnavailable if 'qemu-system-x86' in missing else LabError
        raise error(f'missing packages {missing} and not root: run `apt-get install {" ".join(missing)}` as root')
    info(f'installing {" ".join(missing)}')
    steps = [APT + ['update'], APT + ['install', '-y', '--no-install-recommends', *missing]]
    for argv in steps:
        proc = subprocess.run(argv, capture_output=True, text=True, env=_env(), check=False)
        if proc.returncode != 0:
            error = LabUnavailable if 'qemu-system-x86' in missing and not shutil.which('qemu-system-x86_64') else LabError
            raise error(f'`{" ".join(argv)}` failed (rc {proc.returncode}): {proc.stderr.strip()[-2000:]}')
    still = missing_packages()
    if still:
        raise LabError(f'packages still missing after apt-get install: {still}')
    return missing


# ------------------------------------------------------------------ the pin ---
def read_pin(path: Path = PIN_FILE) -> dict[str, str]:
    pin = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith('#'):
            continue
        key, sep, value = line.partition('=')
        if not sep:
            raise LabError(f'{path}:{number}: expected key=value, got {line!r}')
        pin[key.strip()] = value.strip()
    for key in ('package', 'version', 'sha256'):
        if not pin.get(key):
            raise LabError(f'{path}: "{key}=" is missing; run `lab/poison/poison-lab pin --update`')
    if not re.fullmatch(r'[0-9a-f]{64}', pin['sha256']):
        raise LabError(f'{path}: sha256 must be 64 lowercase hex digits')
    return pin


def write_pin(package: str, version: str, sha256: str, path: Path = PIN_FILE) -> None:
    path.write_text(
        '# The Debian kernel the poison lab boots as its nested VM (downloaded with apt-get download\n'
        '# into the lab cache, checked against this sha256, never committed and never installed).\n'
        '# Update to the current candidate of linux-image-amd64 with: lab/poison/poison-lab pin --update\n'
        f'package={package}\nversion={version}\nsha256={sha256}\n')


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open('rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def apt_record(package: str, version: str | None = None) -> dict[str, str] | None:
    """The apt index record of package (=version), or None when the mirror does not have it."""
    spec = f'{package}={version}' if version else package
    argv = ['apt-cache', 'show', spec] if version else ['apt-cache', 'show', '--no-all-versions', spec]
    proc = subprocess.run(argv, capture_output=True, text=True, env=_env(), check=False)
    if proc.returncode != 0 or not proc.stdout.strip():
        return None
    record = {}
    for line in proc.stdout.split('\n\n')[0].splitlines():
        key, sep, value = line.partition(': ')
        if sep and not line.startswith(' '):
            record[key] = value.strip()
    return record


def kernel_candidate() -> tuple[str, str, str]:
    """(package, version, sha256) of the image package linux-image-amd64 currently depends on."""
    meta = apt_record(KERNEL_META)
    if meta is None:
        raise LabError(f'apt does not know {KERNEL_META}: run `apt-get update` (the lab needs Debian 12 sources)')
    match = re.search(r'(linux-image-[0-9][^ ,]*)', meta.get('Depends', ''))
    if not match:
        raise LabError(f'cannot find the image package in {KERNEL_META} Depends: {meta.get("Depends")!r}')
    package = match.group(1)
    record = apt_record(package)
    if record is None:
        raise LabError(f'apt does not know {package}: run `apt-get update`')
    return package, record['Version'], record['SHA256']


def _download(package: str, version: str, debs: Path) -> Path:
    debs.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(APT + ['download', f'{package}={version}'], cwd=debs, capture_output=True, text=True,
                          env=_env(), check=False)
    candidates = sorted(debs.glob(f'{package}_*.deb'))
    wanted = [p for p in candidates if _deb_version(p) == version]
    if proc.returncode != 0 or not wanted:
        raise LabError(f'apt-get download {package}={version} failed (rc {proc.returncode}): '
                       f'{proc.stderr.strip()[-1500:]}')
    return wanted[0]


def _deb_version(deb: Path) -> str:
    # file names quote ':' of an epoch as %3a; the kernel image packages have no epoch
    return deb.name.split('_')[1].replace('%3a', ':')


def ensure_kernel(cache: Path, pin_path: Path = PIN_FILE) -> KernelPackage:
    """The kernel .deb, from the cache or the mirror, checked against the pin (see module doc)."""
    pin = read_pin(pin_path)
    debs = cache / 'debs'
    cached = debs / f'{pin["package"]}_{pin["version"]}_amd64.deb'
    if cached.exists() and sha256_file(cached) == pin['sha256']:
        return KernelPackage(pin['package'], pin['version'], pin['sha256'], cached, True)
    if apt_record(pin['package'], pin['version']) is None:
        subprocess.run(APT + ['update'], capture_output=True, text=True, env=_env(), check=False)
    if apt_record(pin['package'], pin['version']) is not None:
        deb = _download(pin['package'], pin['version'], debs)
        actual = sha256_file(deb)
        if actual != pin['sha256']:
            deb.unlink()
            raise LabError(f'{deb.name}: sha256 {actual} does not match the pin {pin["sha256"]} in {pin_path}; '
                           'the mirror serves different bytes for the pinned version: do not use it')
        return KernelPackage(pin['package'], pin['version'], pin['sha256'], deb, True)

    # the pinned version is gone from the mirror
    package, version, sha256 = kernel_candidate()
    how = f'update the pin with `lab/poison/poison-lab pin --update` (writes {pin_path})'
    if os.environ.get('POISON_LAB_STRICT_PIN') == '1':
        raise LabError(f'pinned kernel {pin["package"]} {pin["version"]} is no longer on the mirror '
                       f'(current candidate: {package} {version} sha256 {sha256}); {how}')
    if not KERNEL_NAME_RE.match(package):
        raise LabError(f'pinned kernel {pin["package"]} {pin["version"]} is gone and the current candidate '
                       f'{package} is not a 6.1 kernel; the lab is tested with 6.1 only: pin a 6.1 package by hand')
    deb = debs / f'{package}_{version}_amd64.deb'
    if not (deb.exists() and sha256_file(deb) == sha256):
        deb = _download(package, version, debs)
        actual = sha256_file(deb)
        if actual != sha256:
            deb.unlink()
            raise LabError(f'{deb.name}: sha256 {actual} does not match the apt index ({sha256})')
    warn(f'pinned kernel {pin["package"]} {pin["version"]} is no longer on the mirror; using the current '
         f'candidate {package} {version} sha256 {sha256}; {how}')
    return KernelPackage(package, version, sha256, deb, False)


def update_pin(pin_path: Path = PIN_FILE) -> tuple[str, str, str]:
    subprocess.run(APT + ['update'], capture_output=True, text=True, env=_env(), check=False)
    package, version, sha256 = kernel_candidate()
    if not KERNEL_NAME_RE.match(package):
        raise LabError(f'the current candidate {package} is not a 6.1 kernel; not pinning it')
    write_pin(package, version, sha256, pin_path)
    return package, version, sha256


def extract_kernel(kernel: KernelPackage, cache: Path) -> Path:
    """Unpack the .deb (once per sha256) and check the kernel can poison pages and run KVM."""
    root = cache / 'kernel' / kernel.sha256[:16]
    stamp = root / '.extracted'
    if not stamp.exists():
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        proc = subprocess.run(['dpkg-deb', '-x', str(kernel.deb), str(root)], capture_output=True, text=True,
                              check=False)
        if proc.returncode != 0:
            raise LabError(f'dpkg-deb -x {kernel.deb} failed: {proc.stderr.strip()}')
        stamp.write_text(kernel.version + '\n')
    configs = sorted((root / 'boot').glob('config-*'))
    if len(configs) != 1:
        raise LabError(f'{kernel.deb.name}: expected one boot/config-*, found {[c.name for c in configs]}')
    config = dict(line.split('=', 1) for line in configs[0].read_text().splitlines() if line.startswith('CONFIG_'))
    bad = {key: config.get(key, 'unset') for key, ok in REQUIRED_CONFIG.items() if config.get(key) not in ok}
    if bad:
        raise LabError(f'{kernel.package} {kernel.version} cannot run the lab, kernel config: {bad}')
    return root
