# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Build the poison-lab VM's initramfs from this Debian host's own binaries.

Two newc cpio archives, concatenated at boot (the kernel unpacks them in order, later files
replace earlier ones):

* the base (about 100 MiB, cached): busybox, QEMU with its libraries and firmware,
  Debian's python3.11 with a trimmed stdlib, and the kernel modules the experiments load
  (hwpoison-inject, kvm, kvm-amd and their dependencies);
* the overlay (small, written for every run): /init, the experiment driver, the memhog and
  uffd-poison helpers, the CR4.MCE boot stub, the collection's pure-Python pagemap decoder
  (plugins/module_utils/poison, under /lab/collection), the run configuration, the hooks and an
  optional different inner QEMU binary.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import lzma
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

from .errors import LabError

HERE = Path(__file__).resolve().parent
LAB_DIR = HERE.parent
GUEST_DIR = LAB_DIR / 'guest'
SRC_DIR = LAB_DIR / 'src'
# where the overlay puts the collection's module_utils (an ansible_collections tree: the files
# import each other by their full names, as in a module's AnsiballZ payload)
COLLECTION_GUEST_ROOT = '/lab/collection'
HELPERS = {'memhog': 'memhog.c', 'uffd-poison': 'uffd_poison.c'}
# firmware images assembled from src/ (GNU as, 16-bit real mode) -> guest path
FIRMWARE = {'holes_bios.S': '/lab/holes-bios.bin'}
FIRMWARE_SIZE = 65536

BUSYBOX = Path('/bin/busybox')
HOST_QEMU = Path('/usr/bin/qemu-system-x86_64')
HOST_PYTHON = Path('/usr/bin/python3.11')
PYTHON_STDLIB = Path('/usr/lib/python3.11')
QEMU_MODULES = [Path('/usr/lib/x86_64-linux-gnu/qemu/accel-tcg-x86_64.so')]
FIRMWARE_DIRS = [Path('/usr/share/qemu'), Path('/usr/share/seabios'), Path('/usr/lib/ipxe/qemu')]
KERNEL_MODULES = ['hwpoison-inject', 'kvm-amd']
# stdlib parts nothing in the lab imports (and that make the image bigger and slower to unpack)
STDLIB_DROP_DIRS = {'test', 'tests', 'idlelib', 'tkinter', 'turtledemo', 'ensurepip', 'lib2to3',
                    'pydoc_data', 'site-packages', 'dist-packages', 'venv'}
STDLIB_DROP_PREFIXES = ('config-3.11',)
# the Python modules an AnsiballZ payload and ansible.module_utils.basic need at run time;
# checked in the built image so a trimmed stdlib fails the build, not a test in the VM
STDLIB_REQUIRED = ['json', 'zipfile', 'zipimport', 'base64', 'tempfile', 'shutil', 'runpy', 'importlib',
                   'shlex', 'subprocess', 'selectors', 'locale', 'pwd', 'grp', 'platform', 'syslog',
                   'datetime', 'hashlib', 'typing', 'dataclasses', 'collections', 'traceback', 'errno',
                   'signal', 'select', 'stat', 'struct', 'string', 'types', 'enum', 'functools',
                   'inspect', 'ast', 'copy', 'textwrap', 'abc', 'contextlib', 'decimal', 'fcntl', 'glob',
                   'socket', 'uuid', 'pickle', 'unicodedata', 'zlib', 'binascii', 'math', 'warnings',
                   'weakref', 'itertools', 'operator', 're', 'io', 'encodings']
# Bump when the base image layout changes (part of the base cache key).
BASE_FORMAT = 3

MCE_BIOS_CODE = bytes([
    0x0f, 0x20, 0xe0,        # mov eax, cr4
    0x66, 0x83, 0xc8, 0x40,  # or eax, 0x40   (CR4.MCE)
    0x0f, 0x22, 0xe0,        # mov cr4, eax
    0xfa,                    # cli
    0xf4,                    # hlt
    0xeb, 0xfd,              # jmp hlt
])


def mce_bios() -> bytes:
    """A 64 KiB BIOS image whose reset vector enables machine checks (CR4.MCE) and halts.

    A guest in this state gets QEMU to inject the memory error (QMP MEMORY_FAILURE action
    'inject') and keep the poisoned page mapped, instead of resetting the guest.
    """
    image = bytearray(b'\xf4' * 65536)
    image[0xfff0:0xfff0 + len(MCE_BIOS_CODE)] = MCE_BIOS_CODE
    return bytes(image)


# -------------------------------------------------------------------- cpio ---
@dataclasses.dataclass
class Entry:
    """One archive member: a directory, a symlink (target) or a file (source path or bytes)."""
    kind: str  # 'dir' | 'symlink' | 'file'
    mode: int = 0o755
    source: Path | None = None
    data: bytes | None = None
    target: str | None = None


class Tree:
    """An in-memory file tree keyed by absolute guest path; written out as one newc cpio."""

    def __init__(self) -> None:
        self.entries: dict[str, Entry] = {}

    def _parents(self, path: str) -> None:
        parent = os.path.dirname(path)
        if parent in ('/', '') or parent in self.entries:
            return
        self._parents(parent)
        self.entries[parent] = Entry('dir')

    def add_dir(self, path: str, mode: int = 0o755) -> None:
        self._parents(path)
        self.entries.setdefault(path, Entry('dir', mode))

    def add_symlink(self, path: str, target: str) -> None:
        self._parents(path)
        self.entries[path] = Entry('symlink', 0o777, target=target)

    def add_file(self, path: str, source: Path, mode: int | None = None) -> None:
        self._parents(path)
        if mode is None:
            mode = stat.S_IMODE(source.stat().st_mode)
        self.entries[path] = Entry('file', mode, source=source)

    def add_bytes(self, path: str, data: bytes, mode: int = 0o644) -> None:
        self._parents(path)
        self.entries[path] = Entry('file', mode, data=data)

    def __contains__(self, path: str) -> bool:
        return path in self.entries

    def write_cpio(self, out: Path) -> None:
        tmp = out.with_suffix(out.suffix + '.part')
        with tmp.open('wb') as f:
            for ino, path in enumerate(sorted(self.entries, key=_depth_first), start=1):
                entry = self.entries[path]
                if entry.kind == 'dir':
                    _cpio_member(f, ino, stat.S_IFDIR | entry.mode, path, b'', nlink=2)
                elif entry.kind == 'symlink':
                    _cpio_member(f, ino, stat.S_IFLNK | 0o777, path, entry.target.encode())
                else:
                    data = entry.data if entry.data is not None else entry.source.read_bytes()
                    _cpio_member(f, ino, stat.S_IFREG | entry.mode, path, data)
            _cpio_member(f, 0, 0, 'TRAILER!!!', b'', nlink=1)
        tmp.replace(out)


def _depth_first(path: str) -> tuple:
    # parents sort before their children (the kernel does not create missing directories)
    return tuple(path.split('/'))


def _cpio_member(f, ino: int, mode: int, path: str, data: bytes, nlink: int = 1) -> None:
    name = path.lstrip('/').encode() + b'\0'
    header = '070701' + ''.join(f'{value:08x}' for value in (
        ino, mode, 0, 0, nlink, 0, len(data), 0, 0, 0, 0, len(name), 0))
    f.write(header.encode() + name)
    f.write(b'\0' * (-(110 + len(name)) % 4))
    f.write(data)
    f.write(b'\0' * (-len(data) % 4))


# ---------------------------------------------------------------- ELF deps ---
def guest_path(host_path: str) -> str:
    """Map a host path onto the merged-/usr layout of the guest (/lib -> /usr/lib ...)."""
    for short in ('/lib64/', '/lib/', '/bin/', '/sbin/'):
        if host_path.startswith(short):
            return '/usr' + host_path
    return host_path


def shared_libraries(binary: Path) -> list[str]:
    """Host paths of the shared libraries (and the loader) an ELF file needs, from ldd."""
    proc = subprocess.run(['ldd', str(binary)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        if 'not a dynamic executable' in proc.stdout + proc.stderr:
            return []
        raise LabError(f'ldd {binary} failed: {proc.stderr.strip() or proc.stdout.strip()}')
    libraries = []
    for line in proc.stdout.splitlines():
        if 'not found' in line:
            raise LabError(f'{binary} needs a library that is not installed: {line.strip()}')
        match = re.search(r'=>\s+(/\S+)', line) or re.match(r'\s*(/\S+)\s+\(0x', line)
        if match:
            libraries.append(match.group(1))
    return libraries


def add_elf(tree: Tree, host: Path, at: str | None = None, skip: set[str] | frozenset[str] = frozenset()) -> None:
    """Add an ELF file and the libraries it needs (dereferenced, at the paths ldd names)."""
    tree.add_file(at or guest_path(str(host)), host.resolve(), mode=0o755)
    for library in shared_libraries(host):
        path = guest_path(library)
        if path not in tree and path not in skip:
            tree.add_file(path, Path(library).resolve(), mode=0o755)


def add_host_tree(tree: Tree, root: Path, drop=lambda rel: False) -> None:
    """Add a host directory tree at the same guest path, keeping symlinks as symlinks."""
    for dirpath, dirnames, filenames in os.walk(root):
        base = Path(dirpath)
        rel_dir = base.relative_to(root)
        dirnames[:] = [d for d in dirnames if not drop(rel_dir / d)]
        tree.add_dir(guest_path(str(base)))
        for name in filenames + [d for d in dirnames if (base / d).is_symlink()]:
            host = base / name
            if drop(rel_dir / name):
                continue
            if host.is_symlink():
                tree.add_symlink(guest_path(str(host)), os.readlink(host))
            elif host.is_file():
                tree.add_file(guest_path(str(host)), host)


# ------------------------------------------------------------ kernel modules ---
def module_dependencies(data: bytes) -> list[str]:
    match = re.search(rb'(?:^|\0)depends=([^\0]*)\0', data)
    return [d for d in match.group(1).decode().split(',') if d] if match else []


def add_kernel_modules(tree: Tree, kroot: Path, kver: str, wanted: list[str]) -> list[str]:
    """Add modules and their dependencies (decompressed); return guest paths in load order."""
    moddir = kroot / 'lib' / 'modules' / kver / 'kernel'
    index: dict[str, Path] = {}
    for path in moddir.rglob('*.ko*'):
        name = path.name.split('.ko')[0].replace('-', '_')
        index[name] = path
    order: list[str] = []
    seen: set[str] = set()

    def visit(module: str) -> None:
        key = module.replace('-', '_')
        if key in seen:
            return
        seen.add(key)
        if key not in index:
            raise LabError(f'kernel module {module} not found under {moddir}')
        source = index[key]
        data = lzma.decompress(source.read_bytes()) if source.name.endswith('.xz') else source.read_bytes()
        for dependency in module_dependencies(data):
            visit(dependency)
        rel = source.relative_to(kroot).as_posix()
        path = '/usr/' + (rel[:-3] if rel.endswith('.xz') else rel)
        tree.add_bytes(path, data)
        order.append(path)

    for module in wanted:
        visit(module)
    return order


# ------------------------------------------------------------------- base ---
def _stdlib_drop(rel: Path) -> bool:
    parts = rel.parts
    if not parts:
        return False
    if any(part in STDLIB_DROP_DIRS for part in parts) or parts[0].startswith(STDLIB_DROP_PREFIXES):
        return True
    name = parts[-1]
    if name.endswith(('.opt-1.pyc', '.opt-2.pyc')):
        return True
    return parts[0] == 'lib-dynload' and name.startswith(('_test', '_xxtest', 'xxlimited'))


def _file_fingerprint(path: Path) -> str:
    st = path.stat()
    return f'{path}:{st.st_size}:{int(st.st_mtime)}'


def base_key(kernel_sha256: str) -> str:
    """Cache key of the base image: kernel .deb, host binaries it copies, this builder."""
    parts = [f'format={BASE_FORMAT}', f'kernel={kernel_sha256}', Path(__file__).read_text()]
    for path in (BUSYBOX, HOST_QEMU, HOST_PYTHON, PYTHON_STDLIB / 'os.py', *QEMU_MODULES):
        parts.append(_file_fingerprint(path) if path.exists() else f'{path}:missing')
    return hashlib.sha256('\n'.join(parts).encode()).hexdigest()[:16]


def build_base(kroot: Path, out_dir: Path, kernel_sha256: str, lab_kernel: str = '6.1') -> Path:
    """Build (or reuse) the base image for this kernel; return its directory.

    The directory holds vmlinuz, base.cpio, manifest.json (guest paths in the image, the
    module load order, the kernel release, the lab kernel it was built for). Older images of
    the same lab kernel are removed; the image of the other lab kernel is kept.
    """
    key = base_key(kernel_sha256)
    target = out_dir / key
    if (target / 'manifest.json').exists():
        return target
    kvers = sorted(p.name for p in (kroot / 'lib' / 'modules').iterdir())
    if len(kvers) != 1:
        raise LabError(f'expected exactly one kernel under {kroot}/lib/modules, found {kvers}')
    kver = kvers[0]
    for path in (BUSYBOX, HOST_QEMU, HOST_PYTHON, PYTHON_STDLIB):
        if not path.exists():
            raise LabError(f'{path} is missing: install the lab packages first (lab/poison/poison-lab setup)')
    if shared_libraries(BUSYBOX):
        raise LabError(f'{BUSYBOX} is not statically linked: install busybox-static')

    tree = Tree()
    for path in ('/usr/bin', '/usr/sbin', '/usr/lib', '/usr/lib64', '/proc', '/sys', '/dev', '/tmp',
                 '/root', '/etc', '/lab', '/lab/hooks'):
        tree.add_dir(path)
    for short in ('bin', 'sbin', 'lib', 'lib64'):
        tree.add_symlink('/' + short, 'usr/' + short)
    tree.add_bytes('/etc/passwd', b'root:x:0:0:root:/root:/bin/sh\n')
    tree.add_bytes('/etc/group', b'root:x:0:\n')
    tree.add_file('/usr/bin/busybox', BUSYBOX, mode=0o755)
    applets = subprocess.run([str(BUSYBOX), '--list-full'], capture_output=True, text=True, check=True).stdout
    for applet in applets.split():
        path = guest_path('/' + applet)
        if path not in tree:
            tree.add_symlink(path, os.path.relpath('/usr/bin/busybox', os.path.dirname(path)))

    add_elf(tree, HOST_QEMU)
    for module in QEMU_MODULES:
        add_elf(tree, module)
    for firmware in FIRMWARE_DIRS:
        if firmware.is_dir():
            add_host_tree(tree, firmware)

    add_elf(tree, HOST_PYTHON)
    tree.add_symlink('/usr/bin/python3', 'python3.11')
    add_host_tree(tree, PYTHON_STDLIB, drop=_stdlib_drop)
    for extension in sorted((PYTHON_STDLIB / 'lib-dynload').glob('*.so')):
        if not _stdlib_drop(Path('lib-dynload') / extension.name):
            for library in shared_libraries(extension):
                path = guest_path(library)
                if path not in tree:
                    tree.add_file(path, Path(library).resolve(), mode=0o755)
    missing = [name for name in STDLIB_REQUIRED if not _stdlib_has(tree, name)]
    if missing:
        raise LabError(f'the trimmed python3.11 stdlib lacks modules the lab needs: {missing}')

    order = add_kernel_modules(tree, kroot, kver, KERNEL_MODULES)
    tree.add_bytes('/lab/modules.order', ''.join(path + '\n' for path in order).encode())

    tmp = out_dir / f'{key}.part'
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tree.write_cpio(tmp / 'base.cpio')
    shutil.copyfile(kroot / 'boot' / f'vmlinuz-{kver}', tmp / 'vmlinuz')
    manifest = {'key': key, 'kernel_release': kver, 'kernel_sha256': kernel_sha256, 'lab_kernel': lab_kernel,
                'modules': order, 'paths': sorted(tree.entries)}
    (tmp / 'manifest.json').write_text(json.dumps(manifest))
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    for old in out_dir.iterdir():  # keep the current base image of each lab kernel
        if old.name != key and _base_lab_kernel(old) in (lab_kernel, None):
            shutil.rmtree(old, ignore_errors=True)
    return target


def _base_lab_kernel(directory: Path) -> str | None:
    """The lab kernel a base image directory was built for (None: unknown, an old or partial one)."""
    try:
        return json.loads((directory / 'manifest.json').read_text()).get('lab_kernel')
    except (OSError, ValueError):
        return None


def _stdlib_has(tree: Tree, module: str) -> bool:
    base = '/usr/lib/python3.11/'
    return (module in _builtin_modules() or base + module + '.py' in tree
            or base + module + '/__init__.py' in tree
            or any(path.startswith(f'{base}lib-dynload/{module}.') for path in tree.entries))


_BUILTINS: set[str] = set()


def _builtin_modules() -> set[str]:
    if not _BUILTINS:
        out = subprocess.run([str(HOST_PYTHON), '-c', 'import sys; print(" ".join(sys.builtin_module_names))'],
                             capture_output=True, text=True, check=True).stdout
        _BUILTINS.update(out.split())
    return _BUILTINS


# ---------------------------------------------------------------- overlay ---
def collection_files(repo_root: Path) -> dict[str, Path]:
    """Guest path -> host file of the collection's pure-Python poison module_utils.

    The package __init__ files on the way are shipped where the collection has them; the
    other levels are namespace packages, as in an installed collection.
    """
    package = repo_root / 'plugins' / 'module_utils' / 'poison'
    sources = sorted(package.glob('*.py'))
    if not sources:
        raise LabError(f'{package} holds no python files: is {repo_root} the collection checkout?')
    guest_package = f'{COLLECTION_GUEST_ROOT}/ansible_collections/kvm_ras/poison_guard/plugins/module_utils/poison'
    files = {f'{guest_package}/{source.name}': source for source in sources}
    for parent in (repo_root / 'plugins' / 'module_utils', repo_root / 'plugins'):
        init = parent / '__init__.py'
        if init.is_file():
            rel = parent.relative_to(repo_root).as_posix()
            files[f'{COLLECTION_GUEST_ROOT}/ansible_collections/kvm_ras/poison_guard/{rel}/__init__.py'] = init
    return files


def build_overlay(out: Path, *, config: dict, hooks: dict[str, Path], memhog: Path,
                  base_paths: set[str], qemu_binary: Path | None,
                  helpers: dict[str, Path] | None = None, collection: dict[str, Path] | None = None,
                  firmware: dict[str, Path] | None = None) -> dict:
    """Write the per-run overlay cpio; return what went into it (for the run record).

    helpers: name -> static binary, installed as /usr/bin/<name> (memhog is one of them);
    collection: guest path -> host file (collection_files());
    firmware: guest path -> assembled image (assemble_firmware()).
    """
    tree = Tree()
    tree.add_file('/init', GUEST_DIR / 'init', mode=0o755)
    tree.add_file('/lab/lab.py', GUEST_DIR / 'lab.py', mode=0o644)
    tree.add_file('/usr/bin/memhog', memhog, mode=0o755)
    for name, binary in (helpers or {}).items():
        tree.add_file(f'/usr/bin/{name}', binary, mode=0o755)
    for path, source in (collection or {}).items():
        tree.add_file(path, source, mode=0o644)
    tree.add_bytes('/lab/mce-bios.bin', mce_bios())
    for path, image in (firmware or {}).items():
        tree.add_file(path, image, mode=0o644)
    added_libraries: list[str] = []
    if qemu_binary is not None:
        at = config['qemu']['binary']
        before = set(tree.entries)
        add_elf(tree, qemu_binary, at=at, skip=base_paths)
        added_libraries = sorted(set(tree.entries) - before - {at} - {p for p in tree.entries if tree.entries[p].kind == 'dir'})
    for name, source in hooks.items():
        hook_dir = f'/lab/hooks/{name}'
        tree.add_dir(hook_dir)
        if source.is_dir():
            if not (source / 'run').is_file() or not os.access(source / 'run', os.X_OK):
                raise LabError(f'hook {name}: directory {source} has no executable "run" file')
            for path in sorted(source.rglob('*')):
                rel = path.relative_to(source).as_posix()
                if path.is_symlink() or not (path.is_file() or path.is_dir()):
                    continue
                if path.is_dir():
                    tree.add_dir(f'{hook_dir}/{rel}')
                else:
                    tree.add_file(f'{hook_dir}/{rel}', path)
        else:
            if not os.access(source, os.X_OK):
                raise LabError(f'hook {name}: {source} is not executable (chmod +x it)')
            tree.add_file(f'{hook_dir}/run', source, mode=0o755)
    tree.add_bytes('/lab/config.json', json.dumps(config, indent=1, sort_keys=True).encode())
    tree.write_cpio(out)
    return {'qemu_libraries_added': added_libraries, 'entries': len(tree.entries),
            'helpers': sorted(helpers or {}), 'collection_files': len(collection or {})}


def compile_memhog(cache: Path) -> Path:
    """Static memhog from src/memhog.c, cached by source hash."""
    return compile_helper(cache, 'memhog')


def compile_helper(cache: Path, name: str) -> Path:
    """Static helper binary `name` (HELPERS) from its source in src/, cached by source hash."""
    if name not in HELPERS:
        raise LabError(f'unknown helper {name!r}; known: {sorted(HELPERS)}')
    source = SRC_DIR / HELPERS[name]
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:16]
    out = cache / f'{name}-{digest}'
    if not out.exists():
        cache.mkdir(parents=True, exist_ok=True)
        tmp = cache / f'{name}-{digest}.part'
        proc = subprocess.run(['gcc', '-O2', '-Wall', '-Werror', '-static', '-o', str(tmp), str(source)],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise LabError(f'compiling {source} failed:\n{proc.stderr}')
        tmp.rename(out)
    return out


def assemble_firmware(cache: Path) -> dict[str, Path]:
    """Every FIRMWARE image (guest path -> file), assembled from src/ with GNU as and ld,
    cached by source hash; each must come out as one FIRMWARE_SIZE BIOS image."""
    images = {}
    for source_name, guest_path in FIRMWARE.items():
        source = SRC_DIR / source_name
        digest = hashlib.sha256(source.read_bytes()).hexdigest()[:16]
        stem = source_name.rsplit('.', 1)[0]
        out = cache / f'{stem}-{digest}.bin'
        if not out.exists():
            cache.mkdir(parents=True, exist_ok=True)
            obj, tmp = cache / f'{stem}-{digest}.o', cache / f'{stem}-{digest}.part'
            for argv in (['as', '--32', '-o', str(obj), str(source)],
                         ['ld', '-m', 'elf_i386', '-Ttext', '0', '--oformat', 'binary', '-o', str(tmp), str(obj)]):
                proc = subprocess.run(argv, capture_output=True, text=True, check=False)
                if proc.returncode != 0:
                    raise LabError(f'{argv[0]} {source} failed:\n{proc.stderr}')
            obj.unlink()
            if tmp.stat().st_size != FIRMWARE_SIZE:
                raise LabError(f'{source} assembled to {tmp.stat().st_size} bytes, not a {FIRMWARE_SIZE}-byte BIOS '
                               'image: keep its final ".org" at the image size')
            tmp.rename(out)
        images[guest_path] = out
    return images
