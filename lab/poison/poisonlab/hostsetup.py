# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Host preparation: the Debian packages the lab uses and the pinned kernel packages.

The lab boots one of two pinned Debian kernels (KERNELS):

* ``6.1`` (the default): ``linux-image-6.1.0-N-amd64`` from the machine's own apt sources,
  pinned in lab/poison/kernel.pin;
* ``6.12``: ``linux-image-6.12.N+deb12-amd64`` from bookworm-backports, pinned in
  lab/poison/kernel-6.12.pin. It is fetched with a private apt configuration under the work
  directory (its own sources.list, lists, cache and an empty dpkg status), so the system's
  apt sources, lists and preferences are neither read nor changed.

A kernel .deb is checked against the sha256 of its pin, cached in the work directory and never
installed on the host (only unpacked with dpkg-deb).

Pin policy: the pinned version is used when it is cached or still on the mirror. The archive
moves on, so when the pinned version is gone the current candidate of the pin's meta package
(``linux-image-amd64`` of that source) is accepted if its name still matches the pin's
pattern, with a warning that prints its version and sha256 and the command that updates the
pin. POISON_LAB_STRICT_PIN=1 turns that fallback into an error.
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
PACKAGES = ['qemu-system-x86', 'busybox-static', 'cpio', 'gcc', 'libc6-dev', 'binutils', 'xz-utils',
            'python3']
REQUIRED_CONFIG = {'CONFIG_MEMORY_FAILURE': ('y',), 'CONFIG_HWPOISON_INJECT': ('y', 'm'),
                   'CONFIG_KVM_AMD': ('y', 'm'), 'CONFIG_PROC_PAGE_MONITOR': ('y',), 'CONFIG_DEBUG_FS': ('y',),
                   'CONFIG_USERFAULTFD': ('y',)}
APT_LOCK = ['-o', 'DPkg::Lock::Timeout=600']
APT = ['apt-get', *APT_LOCK, '-q']
DEBIAN_KEYRING = Path('/usr/share/keyrings/debian-archive-keyring.gpg')


@dataclasses.dataclass(frozen=True)
class KernelSpec:
    """One kernel the lab can boot: where its package comes from and what its pin may name."""
    name: str  # what --kernel / run_lab(kernel=...) take
    pin_file: Path
    package_re: re.Pattern  # every pinned or fallback package must match it
    meta: str  # the meta package whose Depends names the current candidate
    apt_source: str | None  # sources.list line of a private apt configuration; None: the system's sources
    description: str

    @property
    def pin_command(self) -> str:
        return 'lab/poison/poison-lab pin --update' + ('' if self.name == DEFAULT_KERNEL else f' --kernel {self.name}')


DEFAULT_KERNEL = '6.1'
KERNELS = {
    '6.1': KernelSpec('6.1', LAB_DIR / 'kernel.pin', re.compile(r'^linux-image-6\.1\.0-\d+-amd64$'),
                      'linux-image-amd64', None, "Debian 12's own kernel (the system's apt sources)"),
    '6.12': KernelSpec('6.12', LAB_DIR / 'kernel-6.12.pin', re.compile(r'^linux-image-6\.12\.\d+\+deb12-amd64$'),
                       'linux-image-amd64',
                       f'deb [signed-by={DEBIAN_KEYRING}] http://deb.debian.org/debian bookworm-backports main',
                       "Debian's 6.12 from bookworm-backports (a private apt configuration)"),
}
# the 6.1 names, kept for callers of the single-kernel API
PIN_FILE = KERNELS[DEFAULT_KERNEL].pin_file
KERNEL_META = KERNELS[DEFAULT_KERNEL].meta
KERNEL_NAME_RE = KERNELS[DEFAULT_KERNEL].package_re


def kernel_spec(kernel: str | KernelSpec | None = None) -> KernelSpec:
    """The KernelSpec for a --kernel / run_lab(kernel=...) value (None: the default, 6.1)."""
    if kernel is None:
        return KERNELS[DEFAULT_KERNEL]
    if isinstance(kernel, KernelSpec):
        return kernel
    if isinstance(kernel, str) and kernel in KERNELS:
        return KERNELS[kernel]
    raise LabError(f'unknown lab kernel {kernel!r}: choose one of {", ".join(sorted(KERNELS))} '
                   f'(e.g. `poison-lab run --kernel 6.12` or run_lab(kernel="6.12"))')


@dataclasses.dataclass(frozen=True)
class KernelPackage:
    package: str
    version: str
    sha256: str
    deb: Path
    pinned: bool  # False: the pin was gone from the mirror and the current candidate was used
    lab_kernel: str = DEFAULT_KERNEL

    def as_dict(self) -> dict:
        return {'package': self.package, 'version': self.version, 'sha256': self.sha256,
                'deb': str(self.deb), 'pinned': self.pinned, 'lab_kernel': self.lab_kernel}


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


# ------------------------------------------------------------------- apt ---
class Apt:
    """apt-get / apt-cache argv for one kernel's package source.

    For a kernel with a private source, every call gets options that point apt at a sources
    list, package lists, cache and (empty) dpkg status under <cache>/apt/kernel-<name>/, and at
    no preferences: the system's apt configuration is neither read for sources nor changed.
    """

    def __init__(self, spec: KernelSpec, cache: Path | None) -> None:
        self.spec = spec
        self.options: list[str] = []
        self.root: Path | None = None
        if spec.apt_source is not None:
            if cache is None:
                raise LabError(f'kernel {spec.name}: a work directory is needed for its private apt configuration')
            self.root = Path(cache) / 'apt' / f'kernel-{spec.name}'
            self.options = private_apt_options(self.root)

    def prepare(self) -> None:
        """Write the private configuration (sources list, directories, empty status)."""
        if self.root is None:
            return
        if not DEBIAN_KEYRING.is_file():
            raise LabError(f'{DEBIAN_KEYRING} is missing: install debian-archive-keyring '
                           f'(kernel {self.spec.name} comes from {self.spec.apt_source.split()[-2]})')
        for sub in ('lists/partial', 'cache/archives/partial'):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        (self.root / 'sources.list').write_text(self.spec.apt_source + '\n')
        (self.root / 'status').touch()

    def get(self, *args: str) -> list[str]:
        return ['apt-get', *APT_LOCK, *self.options, '-q', *args]

    def cache(self, *args: str) -> list[str]:
        return ['apt-cache', *self.options, *args]

    def update(self) -> subprocess.CompletedProcess:
        self.prepare()
        return subprocess.run(self.get('update'), capture_output=True, text=True, env=_env(), check=False)


def private_apt_options(root: Path) -> list[str]:
    """apt options that confine apt to the configuration under root."""
    values = {'Dir::Etc::SourceList': root / 'sources.list', 'Dir::Etc::SourceParts': '/dev/null',
              'Dir::Etc::Preferences': '/dev/null', 'Dir::Etc::PreferencesParts': '/dev/null',
              'Dir::State::Lists': root / 'lists', 'Dir::Cache': root / 'cache',
              'Dir::State::status': root / 'status'}
    options = []
    for key, value in values.items():
        options += ['-o', f'{key}={value}']
    return options


# ------------------------------------------------------------------ the pin ---
def parse_pin(text: str, spec: KernelSpec | None = None, source: str = 'kernel.pin') -> dict[str, str]:
    """package/version/sha256 of a pin file's text; the package must be one the spec allows."""
    spec = kernel_spec(spec)
    pin = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith('#'):
            continue
        key, sep, value = line.partition('=')
        if not sep:
            raise LabError(f'{source}:{number}: expected key=value, got {line!r}')
        pin[key.strip()] = value.strip()
    for key in ('package', 'version', 'sha256'):
        if not pin.get(key):
            raise LabError(f'{source}: "{key}=" is missing; run `{spec.pin_command}`')
    if not re.fullmatch(r'[0-9a-f]{64}', pin['sha256']):
        raise LabError(f'{source}: sha256 must be 64 lowercase hex digits')
    if not spec.package_re.match(pin['package']):
        raise LabError(f'{source}: package {pin["package"]} is not a {spec.name} kernel '
                       f'(expected a name matching {spec.package_re.pattern}); run `{spec.pin_command}`')
    return pin


def read_pin(path: Path | None = None, kernel: str | KernelSpec | None = None) -> dict[str, str]:
    spec = kernel_spec(kernel)
    path = Path(path or spec.pin_file)
    if not path.is_file():
        raise LabError(f'{path} is missing: run `{spec.pin_command}` to pin the {spec.name} kernel')
    return parse_pin(path.read_text(), spec, str(path))


def pin_text(package: str, version: str, sha256: str, kernel: str | KernelSpec | None = None) -> str:
    spec = kernel_spec(kernel)
    return (f'# The Debian kernel the poison lab boots as its nested VM with --kernel {spec.name}: {spec.description}.\n'
            '# Downloaded with apt-get download into the lab cache, checked against this sha256, never\n'
            '# committed and never installed.\n'
            f'# Update to the current candidate of {spec.meta} with: {spec.pin_command}\n'
            f'package={package}\nversion={version}\nsha256={sha256}\n')


def write_pin(package: str, version: str, sha256: str, path: Path | None = None,
              kernel: str | KernelSpec | None = None) -> None:
    spec = kernel_spec(kernel)
    text = pin_text(package, version, sha256, spec)
    parse_pin(text, spec, str(path or spec.pin_file))  # never write a pin that cannot be read back
    Path(path or spec.pin_file).write_text(text)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open('rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def parse_apt_record(text: str) -> dict[str, str] | None:
    """The first record of `apt-cache show` output as a dict (None when there is none)."""
    record = {}
    for line in text.split('\n\n')[0].splitlines():
        key, sep, value = line.partition(': ')
        if sep and not line.startswith(' '):
            record[key] = value.strip()
    return record or None


def apt_record(package: str, version: str | None = None, apt: Apt | None = None) -> dict[str, str] | None:
    """The apt index record of package (=version), or None when the mirror does not have it."""
    apt = apt or Apt(KERNELS[DEFAULT_KERNEL], None)
    spec = f'{package}={version}' if version else package
    argv = apt.cache('show', spec) if version else apt.cache('show', '--no-all-versions', spec)
    proc = subprocess.run(argv, capture_output=True, text=True, env=_env(), check=False)
    if proc.returncode != 0 or not proc.stdout.strip():
        return None
    return parse_apt_record(proc.stdout)


def image_package_of(meta_record: dict[str, str], spec: KernelSpec) -> str:
    """The linux-image-* package a meta package record depends on."""
    match = re.search(r'(linux-image-[0-9][^ ,]*)', meta_record.get('Depends', ''))
    if not match:
        raise LabError(f'cannot find the image package in {spec.meta} Depends: {meta_record.get("Depends")!r}')
    return match.group(1)


def kernel_candidate(apt: Apt | None = None) -> tuple[str, str, str]:
    """(package, version, sha256) of the image package the spec's meta package depends on."""
    apt = apt or Apt(KERNELS[DEFAULT_KERNEL], None)
    spec = apt.spec
    where = 'the private apt lists' if apt.root else 'the system\'s apt sources'
    meta = apt_record(spec.meta, apt=apt)
    if meta is None:
        raise LabError(f'apt does not know {spec.meta} in {where}: run `apt-get update` '
                       f'(kernel {spec.name}: {spec.description})')
    package = image_package_of(meta, spec)
    record = apt_record(package, apt=apt)
    if record is None:
        raise LabError(f'apt does not know {package} in {where}: run `apt-get update`')
    return package, record['Version'], record['SHA256']


def _download(package: str, version: str, debs: Path, apt: Apt | None = None) -> Path:
    apt = apt or Apt(KERNELS[DEFAULT_KERNEL], None)
    debs.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(apt.get('download', f'{package}={version}'), cwd=debs, capture_output=True, text=True,
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


def ensure_kernel(cache: Path, pin_path: Path | None = None, kernel: str | KernelSpec | None = None) -> KernelPackage:
    """The kernel .deb, from the cache or the mirror, checked against the pin (see module doc)."""
    spec = kernel_spec(kernel)
    pin_path = Path(pin_path or spec.pin_file)
    pin = read_pin(pin_path, spec)
    debs = cache / 'debs'
    cached = debs / f'{pin["package"]}_{pin["version"]}_amd64.deb'
    if cached.exists() and sha256_file(cached) == pin['sha256']:
        return KernelPackage(pin['package'], pin['version'], pin['sha256'], cached, True, spec.name)
    apt = Apt(spec, cache)
    apt.prepare()
    if apt_record(pin['package'], pin['version'], apt) is None:
        apt.update()
    if apt_record(pin['package'], pin['version'], apt) is not None:
        deb = _download(pin['package'], pin['version'], debs, apt)
        actual = sha256_file(deb)
        if actual != pin['sha256']:
            deb.unlink()
            raise LabError(f'{deb.name}: sha256 {actual} does not match the pin {pin["sha256"]} in {pin_path}; '
                           'the mirror serves different bytes for the pinned version: do not use it')
        return KernelPackage(pin['package'], pin['version'], pin['sha256'], deb, True, spec.name)

    # the pinned version is gone from the mirror
    package, version, sha256 = kernel_candidate(apt)
    how = f'update the pin with `{spec.pin_command}` (writes {pin_path})'
    if os.environ.get('POISON_LAB_STRICT_PIN') == '1':
        raise LabError(f'pinned kernel {pin["package"]} {pin["version"]} is no longer on the mirror '
                       f'(current candidate: {package} {version} sha256 {sha256}); {how}')
    if not spec.package_re.match(package):
        raise LabError(f'pinned kernel {pin["package"]} {pin["version"]} is gone and the current candidate '
                       f'{package} is not a {spec.name} kernel; the lab is tested with {spec.name} there: '
                       f'pin a {spec.name} package by hand')
    deb = debs / f'{package}_{version}_amd64.deb'
    if not (deb.exists() and sha256_file(deb) == sha256):
        deb = _download(package, version, debs, apt)
        actual = sha256_file(deb)
        if actual != sha256:
            deb.unlink()
            raise LabError(f'{deb.name}: sha256 {actual} does not match the apt index ({sha256})')
    warn(f'pinned kernel {pin["package"]} {pin["version"]} is no longer on the mirror; using the current '
         f'candidate {package} {version} sha256 {sha256}; {how}')
    return KernelPackage(package, version, sha256, deb, False, spec.name)


def update_pin(pin_path: Path | None = None, kernel: str | KernelSpec | None = None,
               cache: Path | None = None) -> tuple[str, str, str]:
    """Pin the current candidate of the kernel's meta package (cache: for a private apt source)."""
    spec = kernel_spec(kernel)
    apt = Apt(spec, cache)
    proc = apt.update()
    if apt.root is not None and proc.returncode != 0:
        raise LabError(f'apt-get update of {spec.apt_source!r} failed (rc {proc.returncode}): '
                       f'{proc.stderr.strip()[-1500:]}')
    package, version, sha256 = kernel_candidate(apt)
    if not spec.package_re.match(package):
        raise LabError(f'the current candidate {package} is not a {spec.name} kernel; not pinning it')
    write_pin(package, version, sha256, pin_path or spec.pin_file, spec)
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
    release = configs[0].name[len('config-'):]
    if not release.startswith(kernel.lab_kernel + '.'):
        raise LabError(f'{kernel.deb.name} holds kernel {release}, not a {kernel.lab_kernel} kernel: '
                       f'fix {kernel_spec(kernel.lab_kernel).pin_file.name}')
    return root
