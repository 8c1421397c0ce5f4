# -*- coding: utf-8 -*-
# Copyright (c) kvm_ras.poison_guard contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Symbols of an ELF64 x86-64 file and where a process mapped it (stdlib only).

Enough of the format to find a function or variable of a running program: the section headers,
``.symtab`` (static and global symbols, present in unstripped files and in separate debug files)
and ``.dynsym`` (what a stripped binary still exports), the GNU build id, and the load bias of a
position-independent executable or library as ``/proc/PID/maps`` shows it.
"""

from __future__ import annotations

import os
import struct

ELF_MAGIC = b"\x7fELF"
ELFCLASS64 = 2
ELFDATA2LSB = 1
EM_X86_64 = 62
SHT_SYMTAB = 2
SHT_NOTE = 7
SHT_DYNSYM = 11
PT_LOAD = 1
NT_GNU_BUILD_ID = 3
SHN_UNDEF = 0
STT_OBJECT = 1
STT_FUNC = 2
DEBUG_ROOT = "/usr/lib/debug/.build-id"


class ElfError(Exception):
    """The file is not an ELF64 x86-64 file, or a part of it cannot be read."""


class ElfFile:
    """Read-only view of one ELF64 little-endian x86-64 file."""

    def __init__(self, path):
        self.path = path
        try:
            with open(path, "rb") as handle:
                self.data = handle.read()
        except OSError as exc:
            raise ElfError("cannot read %s: %s" % (path, exc.strerror or exc)) from exc
        ident = self.data[:16]
        if ident[:4] != ELF_MAGIC or ident[4] != ELFCLASS64 or ident[5] != ELFDATA2LSB:
            raise ElfError("%s is not a 64-bit little-endian ELF file" % path)
        (self.e_type, machine, _version, _entry, self.phoff, self.shoff, _flags, _ehsize,
         self.phentsize, self.phnum, self.shentsize, self.shnum, self.shstrndx) = struct.unpack_from(
            "<HHIQQQIHHHHHH", self.data, 16)
        if machine != EM_X86_64:
            raise ElfError("%s is not an x86-64 ELF file (machine %d)" % (path, machine))
        self.sections = [self._section(i) for i in range(self.shnum)] if self.shoff else []

    def _section(self, index):
        (name, kind, _flags, addr, offset, size, link, _info, _align, entsize) = struct.unpack_from(
            "<IIQQQQIIQQ", self.data, self.shoff + index * self.shentsize)
        return {"name_off": name, "type": kind, "addr": addr, "offset": offset, "size": size,
                "link": link, "entsize": entsize}

    def _string(self, table_index, offset):
        table = self.sections[table_index]
        start = table["offset"] + offset
        end = self.data.find(b"\0", start)
        return self.data[start:end].decode("ascii", "replace")

    def segments(self):
        """Program headers as dicts (type, offset, vaddr, filesz, memsz)."""
        out = []
        for i in range(self.phnum):
            kind, _flags, offset, vaddr, _paddr, filesz, memsz, _align = struct.unpack_from(
                "<IIQQQQQQ", self.data, self.phoff + i * self.phentsize)
            out.append({"type": kind, "offset": offset, "vaddr": vaddr, "filesz": filesz, "memsz": memsz})
        return out

    def build_id(self):
        """The GNU build id as lower-case hex, or None."""
        for section in self.sections:
            if section["type"] != SHT_NOTE:
                continue
            pos, end = section["offset"], section["offset"] + section["size"]
            while pos + 12 <= end:
                namesz, descsz, kind = struct.unpack_from("<III", self.data, pos)
                name_start = pos + 12
                desc_start = name_start + ((namesz + 3) & ~3)
                if kind == NT_GNU_BUILD_ID and self.data[name_start:name_start + namesz] == b"GNU\0":
                    return self.data[desc_start:desc_start + descsz].hex()
                pos = desc_start + ((descsz + 3) & ~3)
        return None

    def symbols(self, wanted):
        """{name: (value, size)} for the defined function/object symbols named in ``wanted``.

        ``.symtab`` is read before ``.dynsym`` so that a static symbol (only in .symtab) is found
        as well as an exported one."""
        wanted = set(wanted)
        found = {}
        for section in sorted(self.sections, key=lambda s: s["type"] != SHT_SYMTAB):
            if section["type"] not in (SHT_SYMTAB, SHT_DYNSYM) or not section["entsize"]:
                continue
            count = section["size"] // section["entsize"]
            for i in range(count):
                name_off, info, _other, shndx, value, size = struct.unpack_from(
                    "<IBBHQQ", self.data, section["offset"] + i * section["entsize"])
                if shndx == SHN_UNDEF or (info & 0xF) not in (STT_FUNC, STT_OBJECT) or not value:
                    continue
                name = self._string(section["link"], name_off)
                if name in wanted and name not in found:
                    found[name] = (value, size)
            if len(found) == len(wanted):
                break
        return found

    def base_vaddr(self):
        """The link-time address of the lowest PT_LOAD segment, page aligned (0 for PIE)."""
        loads = [seg for seg in self.segments() if seg["type"] == PT_LOAD]
        if not loads:
            raise ElfError("%s has no loadable segment" % self.path)
        return min(seg["vaddr"] - seg["offset"] for seg in loads) & ~0xFFF


def debug_file_path(build_id, root="/"):
    """Where Debian (and most distributions) install the separate debug file of a build id."""
    return os.path.join(root, DEBUG_ROOT.lstrip("/"), build_id[:2], build_id[2:] + ".debug")


def mapping_start(pid, path, proc="/proc"):
    """Lowest start address of the mappings of the file ``path`` in process ``pid``.

    The file is matched by device and inode, not by name: a binary replaced on disk after the
    process started shows `` (deleted)`` in maps but keeps its inode."""
    info = os.stat(path)
    major, minor = os.major(info.st_dev), os.minor(info.st_dev)
    lowest = None
    with open(os.path.join(proc, str(pid), "maps"), encoding="ascii", errors="replace") as handle:
        for line in handle:
            fields = line.split(None, 5)
            if len(fields) < 5:
                continue
            dev_major, dev_minor = (int(part, 16) for part in fields[3].split(":"))
            if int(fields[4]) != info.st_ino or (dev_major, dev_minor) != (major, minor):
                continue
            start = int(fields[0].split("-")[0], 16) - int(fields[2], 16)
            if lowest is None or start < lowest:
                lowest = start
    if lowest is None:
        raise ElfError("%s is not mapped in process %s" % (path, pid))
    return lowest


class ProcessSymbols:
    """Run-time addresses of symbols of a process's main executable (or of any file it mapped).

    Looks in the file itself, then in its separate debug file found by build id under the
    process's own root (``/proc/PID/root``), so a container's debug files are found from the host."""

    def __init__(self, pid, path=None, proc="/proc"):
        self.pid = pid
        self.path = path or os.path.join(proc, str(pid), "exe")
        self.elf = ElfFile(self.path)
        self.bias = mapping_start(pid, self.path, proc) - self.elf.base_vaddr()
        self.debug_path = None
        self.found_in = {}
        build_id = self.elf.build_id()
        if build_id:
            candidate = debug_file_path(build_id, os.path.join(proc, str(pid), "root"))
            if os.path.exists(candidate):
                self.debug_path = candidate

    def lookup(self, names, required=True):
        """{name: run-time address}; ElfError naming what is missing when ``required``."""
        found = {name: value for name, (value, _size) in self.elf.symbols(names).items()}
        self.found_in.update((name, "binary") for name in found)
        missing = [name for name in names if name not in found]
        if missing and self.debug_path:
            debug = ElfFile(self.debug_path)
            for name, (value, _size) in debug.symbols(missing).items():
                found[name] = value
                self.found_in[name] = "debuginfo"
        missing = [name for name in names if name not in found]
        if missing and required:
            raise ElfError("symbol(s) %s not found in %s (nor in a debug file)" % (", ".join(missing), self.path))
        return {name: value + self.bias for name, value in found.items()}
