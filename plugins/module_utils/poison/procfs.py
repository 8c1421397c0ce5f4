# -*- coding: utf-8 -*-
# Copyright (c) kvm_ras.poison_guard contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""QEMU processes seen through procfs: discovery, command line, mappings, privileges.

Every function takes ``proc_root`` (``/proc`` on a host; a fixture tree in tests) and raises
``OSError`` for what it cannot read; callers turn those into ``unknown`` reasons.
"""

from __future__ import annotations

import errno
import os
import re

from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.poison.encoding import PAGE_SIZE

CAP_SYS_ADMIN = 21
CAP_SYS_PTRACE = 19

# qemu-system-x86_64, qemu-system-aarch64, qemu-kvm (RHEL), also with a path or "(deleted)".
_QEMU_BINARY_RE = re.compile(r"^(qemu-system-[A-Za-z0-9_.-]+|qemu-kvm)$")
_DELETED_SUFFIX = " (deleted)"

_SHARED_LIBRARY_RE = re.compile(r"\.so(\.\d+)*$")
_SIZE_SUFFIX = {"": 1 << 20, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_SIZE_RE = re.compile(r"^(\d+(?:\.\d+)?)([bkmgtBKMGT]?)$")


class ProcessGone(OSError):
    """The process exited (or its PID was reused) while it was being inspected."""


def _path(proc_root, *parts):
    return os.path.join(proc_root, *[str(p) for p in parts])


def read_text(path):
    with open(path, "r", encoding="utf-8", errors="replace") as handle:
        return handle.read()


def read_bytes(path):
    with open(path, "rb") as handle:
        return handle.read()


def list_pids(proc_root):
    """Numeric entries of ``proc_root`` (raises OSError when it cannot be listed)."""
    return sorted(int(name) for name in os.listdir(proc_root) if name.isdigit())


def read_cmdline(proc_root, pid):
    args = read_bytes(_path(proc_root, pid, "cmdline")).split(b"\0")
    if args and args[-1] == b"":
        args.pop()
    return [arg.decode("utf-8", "replace") for arg in args]


def read_comm(proc_root, pid):
    return read_text(_path(proc_root, pid, "comm")).strip()


def read_exe(proc_root, pid):
    """Target of ``/proc/PID/exe`` (ends with `` (deleted)`` after an upgrade), or None."""
    try:
        return os.readlink(_path(proc_root, pid, "exe"))
    except OSError:
        return None


def strip_deleted(path):
    if path and path.endswith(_DELETED_SUFFIX):
        return path[:-len(_DELETED_SUFFIX)]
    return path


def is_qemu_binary_name(path):
    if not path:
        return False
    return bool(_QEMU_BINARY_RE.match(os.path.basename(strip_deleted(path))))


def is_qemu_process(argv, exe):
    """A QEMU system emulator: by argv[0] or by the executable (comm may be renamed)."""
    return bool(argv) and is_qemu_binary_name(argv[0]) or is_qemu_binary_name(exe)


def qemu_processes(proc_root):
    """Every QEMU system emulator of the process table, in PID order:
    ``[{pid, argv, exe, name, uuid, ...}]`` (the keys of ``parse_qemu_cmdline`` plus the three).

    Raises OSError when ``proc_root`` cannot be listed; a process that ends (or whose cmdline
    cannot be read, as for a kernel thread) while the table is walked is skipped.
    """
    found = []
    for pid in list_pids(proc_root):
        try:
            argv = read_cmdline(proc_root, pid)
        except OSError:
            continue  # gone, or a kernel thread we may not read
        exe = read_exe(proc_root, pid)
        if not is_qemu_process(argv, exe):
            continue
        info = parse_qemu_cmdline(argv)
        info.update({"pid": pid, "argv": argv, "exe": exe})
        found.append(info)
    return found


def split_qemu_options(value):
    """QEMU option string -> list of ``(key or None, value)``; ``,,`` is an escaped comma."""
    parts = []
    current = []
    i = 0
    while i < len(value):
        char = value[i]
        if char == ",":
            if value[i + 1:i + 2] == ",":
                current.append(",")
                i += 2
                continue
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
        i += 1
    parts.append("".join(current))
    result = []
    for part in parts:
        if "=" in part:
            key, val = part.split("=", 1)
            result.append((key, val))
        else:
            result.append((None, part))
    return result


def _option_values(argv, names):
    """Values following any of ``names`` (``-name`` and ``--name`` forms, also ``-x=v``)."""
    values = []
    i = 1
    while i < len(argv):
        arg = argv[i]
        bare = arg[1:] if arg.startswith("--") else arg
        if bare in names and i + 1 < len(argv):
            values.append(argv[i + 1])
            i += 2
            continue
        for name in names:
            if bare.startswith(name + "="):
                values.append(bare[len(name) + 1:])
        i += 1
    return values


def _implied(options, implied_key):
    """dict of a split option list; the first key-less part gets ``implied_key``."""
    result = {}
    for key, value in options:
        if key is None:
            if implied_key not in result:
                result[implied_key] = value
        else:
            result[key] = value
    return result


def parse_size_mib(text):
    """QEMU ``-m`` size (default unit MiB) -> MiB (int) or None."""
    match = _SIZE_RE.match(text.strip())
    if not match:
        return None
    number, suffix = match.groups()
    size = float(number) * _SIZE_SUFFIX[suffix.lower()]
    return int(size // (1 << 20))


def parse_qemu_cmdline(argv):
    """Name, UUID, memory, vCPUs and accelerator from a QEMU command line.

    Handles ``-name guest=web01,debug-threads=on``, ``-name web01``, ``-name web01,process=x``,
    escaped commas (``a,,b``), ``-uuid``, ``-m 64`` / ``-m size=65536k`` / ``-m 4G,maxmem=..``,
    ``-smp 2`` / ``-smp cpus=2,..``, ``-accel kvm``, ``-machine ...,accel=kvm``, ``-enable-kvm``.
    """
    info = {"name": None, "uuid": None, "memory_mib": None, "vcpus": None, "accel": None}
    for value in _option_values(argv, ("-name",)):
        opts = _implied(split_qemu_options(value), "guest")
        if opts.get("guest"):
            info["name"] = opts["guest"]
    for value in _option_values(argv, ("-uuid",)):
        info["uuid"] = value.strip().lower() or None
    for value in _option_values(argv, ("-m",)):
        opts = _implied(split_qemu_options(value), "size")
        if "size" in opts:
            info["memory_mib"] = parse_size_mib(opts["size"])
    for value in _option_values(argv, ("-smp",)):
        opts = _implied(split_qemu_options(value), "cpus")
        try:
            info["vcpus"] = int(opts["cpus"]) if "cpus" in opts else None
        except ValueError:
            info["vcpus"] = None
        if info["vcpus"] is None:
            try:
                product = 1
                for key in ("sockets", "dies", "clusters", "cores", "threads"):
                    product *= int(opts.get(key, 1))
                info["vcpus"] = product
            except ValueError:
                pass
    if info["vcpus"] is None and "-smp" not in argv and "--smp" not in argv:
        info["vcpus"] = 1
    accels = []
    for value in _option_values(argv, ("-accel",)):
        opts = _implied(split_qemu_options(value), "accel")
        if opts.get("accel"):
            accels.append(opts["accel"])
    for value in _option_values(argv, ("-machine", "-M")):
        opts = _implied(split_qemu_options(value), "type")
        if opts.get("accel"):
            accels.extend(opts["accel"].split(":")[:1])
    if "-enable-kvm" in argv or "--enable-kvm" in argv:
        accels.insert(0, "kvm")
    if accels:
        info["accel"] = accels[0]
    return info


class Mapping:
    """One line of ``/proc/PID/maps``."""

    __slots__ = ("start", "end", "perms", "offset", "dev", "inode", "path")

    def __init__(self, start, end, perms, offset, dev, inode, path):
        self.start = start
        self.end = end
        self.perms = perms
        self.offset = offset
        self.dev = dev
        self.inode = inode
        self.path = path

    @property
    def size(self):
        return self.end - self.start

    @property
    def readable(self):
        return self.perms[0] == "r"

    @property
    def writable(self):
        return self.perms[1] == "w"

    @property
    def shared(self):
        return self.perms[3] == "s"

    @property
    def anonymous(self):
        return not self.path

    @property
    def label(self):
        return self.path or "[anon]"

    def __repr__(self):
        return "Mapping(%#x-%#x %s %s)" % (self.start, self.end, self.perms, self.label)


def parse_maps(text):
    mappings = []
    for line in text.splitlines():
        fields = line.split(None, 5)
        if len(fields) < 5:
            continue
        start, end = (int(x, 16) for x in fields[0].split("-"))
        path = fields[5].strip() if len(fields) > 5 else ""
        mappings.append(Mapping(start, end, fields[1], int(fields[2], 16), fields[3],
                                int(fields[4]), path))
    return mappings


def read_maps(proc_root, pid):
    return parse_maps(read_text(_path(proc_root, pid, "maps")))


# Kernel pseudo-mappings that hold no process memory worth scanning.
_PSEUDO = ("[vsyscall]", "[vvar]", "[vvar_vclock]", "[vdso]", "[uprobes]")


def scannable(mapping):
    """Mappings whose pages a hole could sit in: readable or writable, not kernel pseudo."""
    if mapping.path in _PSEUDO:
        return False
    return mapping.readable or mapping.writable


def hugetlbfs_mounts(proc_root, pid):
    """Mount points of hugetlbfs in the process's mount namespace."""
    mounts = []
    try:
        text = read_text(_path(proc_root, pid, "mountinfo"))
    except OSError:
        return mounts
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fstype = right.split(" ", 1)[0]
        fields = left.split(" ")
        if fstype == "hugetlbfs" and len(fields) > 4:
            mounts.append(fields[4].replace("\\040", " "))
    return mounts


def is_hugetlb_mapping(mapping, hugetlb_mount_points, map_files_dir=None):
    """hugetlbfs-backed: anonymous MAP_HUGETLB, a file under a hugetlbfs mount, or (when
    ``/proc/PID/map_files`` can be statted) a backing file with a huge block size (memfd
    ``hugetlb=on`` included). An undecidable mapping counts as not hugetlbfs here; use
    ``hugetlb_state`` to tell the two apart."""
    return hugetlb_state(mapping, hugetlb_mount_points, map_files_dir)[0] is True


def hugetlb_state(mapping, hugetlb_mount_points, map_files_dir=None):
    """``(True | False | None, why)``: whether a mapping is hugetlbfs-backed; None when it
    could not be decided (a file mapping whose ``map_files`` entry cannot be statted: the
    kernel lets only CAP_SYS_ADMIN follow those links, and a memfd's name does not say whether
    it was created with MFD_HUGETLB)."""
    path = strip_deleted(mapping.path)
    if path.startswith("/anon_hugepage"):
        return True, "anonymous MAP_HUGETLB mapping"
    for mount in hugetlb_mount_points:
        if path == mount or path.startswith(mount.rstrip("/") + "/"):
            return True, "file under the hugetlbfs mount %s" % mount
    if map_files_dir and mapping.path and not mapping.path.startswith("["):
        link = os.path.join(map_files_dir, "%x-%x" % (mapping.start, mapping.end))
        try:
            st = os.stat(link)
        except OSError as exc:
            return None, "%s cannot be statted (%s)" % (link, exc.strerror or exc)
        if _is_hugetlbfs_blksize(st.st_blksize):
            return True, "backing file block size %d" % st.st_blksize
        return False, "backing file block size %d" % st.st_blksize
    return False, "anonymous or pseudo mapping"


def smaps_hugetlb(proc_root, pid):
    """``{(start, end): True/False}`` from ``/proc/PID/smaps``: True for hugetlbfs VMAs
    (``VmFlags`` holds ``ht``, or ``KernelPageSize`` is above the base page size). Readable with
    ptrace read access, no CAP_SYS_ADMIN needed; raises OSError when it is not readable.
    (Costs a page-table walk per VMA: read only when ``map_files`` cannot decide.)"""
    result = {}
    current = None
    for line in read_text(_path(proc_root, pid, "smaps")).splitlines():
        head = line.split(None, 1)[0] if line.strip() else ""
        if "-" in head and not head.endswith(":"):
            try:
                start, end = (int(x, 16) for x in head.split("-"))
            except ValueError:
                continue
            current = (start, end)
            result[current] = False
        elif current is not None and head == "KernelPageSize:":
            try:
                if int(line.split()[1]) * 1024 > PAGE_SIZE:
                    result[current] = True
            except (IndexError, ValueError):
                pass
        elif current is not None and head == "VmFlags:":
            if "ht" in line.split()[1:]:
                result[current] = True
    return result


def _is_hugetlbfs_blksize(blksize):
    # hugetlbfs reports the huge page size (2 MiB, 1 GiB, 16 MiB, 64 KiB ...) as st_blksize;
    # tmpfs/memfd and local filesystems report PAGE_SIZE.
    return blksize > PAGE_SIZE and blksize & (blksize - 1) == 0


def guest_ram_mappings(mappings):
    """The mappings that hold QEMU guest RAM.

    QEMU's ``qemu_ram_mmap()`` leaves one PROT_NONE page right after each RAM block, so a RAM
    block is a run of contiguous writable mappings of one backing (split VMAs included):
    anonymous memory, memfd (``/memfd:...``), hugetlbfs or a backing file, ending in a ``---p``
    guard mapping. A library's data segment just below an anonymous block is not part of it.
    Runs smaller than 1 MiB (thread stacks have their guard *below*) are not RAM.
    """
    ram = []
    run = []
    for index, mapping in enumerate(mappings):
        if mapping.writable and run and _same_block(run[-1], mapping):
            run.append(mapping)
        elif mapping.writable:
            run = [mapping]
        else:
            run = []
            continue
        nxt = mappings[index + 1] if index + 1 < len(mappings) else None
        guarded = (nxt is not None and nxt.start == mapping.end and nxt.perms.startswith("---"))
        if guarded:
            total = sum(m.size for m in run)
            if total >= (1 << 20) and all(_ram_like(m) for m in run):
                ram.extend(run)
            run = []
    return ram


def _same_block(previous, mapping):
    # One RAM block is one mmap(): the VMAs it splits into are contiguous and share the
    # backing. A library's data segment right below an anonymous RAM block is another object.
    return (previous.end == mapping.start and previous.inode == mapping.inode
            and strip_deleted(previous.path) == strip_deleted(mapping.path))


def _ram_like(mapping):
    path = strip_deleted(mapping.path)
    if not path:
        return True
    if path.startswith("["):
        return False
    if path.startswith(("/memfd:", "memfd:", "/anon_hugepage")):
        return True
    # file-backed RAM (hugetlbfs, memory_backing_dir, tmpfs), but not a shared library
    return not _SHARED_LIBRARY_RE.search(path)


def read_status(proc_root, pid):
    """``/proc/PID/status`` as a dict of strings."""
    status = {}
    for line in read_text(_path(proc_root, pid, "status")).splitlines():
        key, sep, value = line.partition(":")
        if sep:
            status[key.strip()] = value.strip()
    return status


def capabilities(proc_root):
    """Effective capabilities of the inspecting process (``<proc_root>/self/status``).

    Returns ``(capeff int or None, problem or None)``.
    """
    try:
        status = read_status(proc_root, "self")
    except OSError as exc:
        return None, "cannot read %s: %s" % (_path(proc_root, "self", "status"), exc.strerror)
    try:
        return int(status.get("CapEff", ""), 16), None
    except ValueError:
        return None, "no CapEff line in %s" % _path(proc_root, "self", "status")


def has_capability(capeff, cap):
    return capeff is not None and bool(capeff >> cap & 1)


def initial_user_namespace(proc_root):
    """True when ``<proc_root>/self/uid_map`` is the identity map of the initial user
    namespace (PFNs are shown only to CAP_SYS_ADMIN there); None when unknown."""
    try:
        text = read_text(_path(proc_root, "self", "uid_map")).split()
    except OSError:
        return None
    return text[:3] == ["0", "0", "4294967295"]


def boot_time(proc_root):
    """``btime`` from ``<proc_root>/stat`` (epoch seconds) or None."""
    try:
        for line in read_text(_path(proc_root, "stat")).splitlines():
            if line.startswith("btime "):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def boot_id(proc_root):
    """The kernel's boot id (``<proc_root>/sys/kernel/random/boot_id``, a random UUID drawn at
    every boot, the same in every container of the host) or None."""
    try:
        value = read_text(_path(proc_root, "sys", "kernel", "random", "boot_id")).strip()
    except OSError:
        return None
    return value.lower() or None


def uptime(proc_root):
    """Seconds since boot (first field of ``<proc_root>/uptime``) or None."""
    try:
        return float(read_text(_path(proc_root, "uptime")).split()[0])
    except (OSError, IndexError, ValueError):
        return None


def hostname(proc_root):
    """The host name (``<proc_root>/sys/kernel/hostname``, the UTS name of the reader) or None."""
    try:
        value = read_text(_path(proc_root, "sys", "kernel", "hostname")).strip()
    except OSError:
        return None
    return value or None


def clock_ticks():
    try:
        return os.sysconf("SC_CLK_TCK")
    except (ValueError, OSError, AttributeError):
        return 100


def start_ticks(proc_root, pid):
    """Start time of the process in clock ticks since boot (field 22 of ``stat``)."""
    text = read_text(_path(proc_root, pid, "stat"))
    after_comm = text.rsplit(")", 1)[1].split()
    return int(after_comm[19])


def start_time(proc_root, pid):
    """``(seconds since boot, epoch seconds or None)`` of the process start."""
    since_boot = start_ticks(proc_root, pid) / float(clock_ticks())
    btime = boot_time(proc_root)
    return since_boot, (btime + since_boot if btime is not None else None)


def fd_targets(proc_root, pid):
    """``{fd: link target}`` of the process's open files (raises OSError if unlistable)."""
    base = _path(proc_root, pid, "fd")
    targets = {}
    for name in os.listdir(base):
        try:
            targets[int(name)] = os.readlink(os.path.join(base, name))
        except (OSError, ValueError):
            continue
    return targets


def uses_kvm(targets):
    """KVM-accelerated: QEMU holds an ``anon_inode:kvm-vm`` file descriptor."""
    return any(t == "anon_inode:kvm-vm" for t in targets.values())


def thread_ids(proc_root, pid):
    try:
        return {int(t) for t in os.listdir(_path(proc_root, pid, "task")) if t.isdigit()}
    except OSError:
        return set()


def swap_area_count(proc_root):
    """Number of active swap areas (lines of ``<proc_root>/swaps`` after the header)."""
    lines = [line for line in read_text(_path(proc_root, "swaps")).splitlines() if line.strip()]
    return max(0, len(lines) - 1)


def is_gone(exc):
    return isinstance(exc, ProcessGone) or getattr(exc, "errno", None) in (
        errno.ESRCH, errno.ENOENT)
