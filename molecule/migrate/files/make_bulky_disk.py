# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Write the raw disk of the "bulky" test guest for the migrate scenario's timeout test.

Its boot sector fills 40 MiB of guest RAM (16 MiB .. 56 MiB of the 64 MiB guest) with a
non-zero pattern, then halts with interrupts off (no CPU use afterwards). QEMU sends zero pages
almost for free but every non-zero page in full, so a live migration capped at 1 MiB/s needs
at least 40 s: a timeout of a few seconds must abort it, however fast or loaded the host is.
(A guest that keeps re-dirtying a small area is not enough under TCG here: such migrations were
seen to converge at 1 MiB/s.)

usage: make_bulky_disk.py PATH      (writes PATH: a 1 MiB raw image, read-only)

The 16-bit code reaches memory above 1 MiB through "unreal mode": it loads a flat 4 GiB data
segment into ES in protected mode and goes straight back to real mode, keeping that limit.
Assembled with GNU as (`as --32`, `ld -m elf_i386 -Ttext 0x7c00 --oformat binary`) from the
listing below; check with `objdump -D -b binary -mi8086 --adjust-vma=0x7c00 PATH`.
"""

import os
import sys

BOOT = bytes([
    0xFA,                                # 7c00 cli
    0x31, 0xC0,                          # 7c01 xor ax, ax
    0x8E, 0xD8,                          # 7c03 mov ds, ax
    0x66, 0x0F, 0x01, 0x16, 0x50, 0x7C,  # 7c05 lgdtl [0x7c50]          (gdtr below)
    0x0F, 0x20, 0xC0,                    # 7c0b mov eax, cr0
    0x0C, 0x01,                          # 7c0e or al, 1                  protected mode on
    0x0F, 0x22, 0xC0,                    # 7c10 mov cr0, eax
    0xBB, 0x08, 0x00,                    # 7c13 mov bx, 8                 flat data descriptor
    0x8E, 0xC3,                          # 7c16 mov es, bx                ES limit = 4 GiB
    0x24, 0xFE,                          # 7c18 and al, 0xfe
    0x0F, 0x22, 0xC0,                    # 7c1a mov cr0, eax              back to real mode
    0x31, 0xC0,                          # 7c1d xor ax, ax
    0xFC,                                # 7c1f cld
    0x66, 0xBF, 0x00, 0x00, 0x00, 0x01,  # 7c20 mov edi, 0x01000000       from 16 MiB
    0x66, 0xB9, 0x00, 0x00, 0xA0, 0x00,  # 7c26 mov ecx, 0x00a00000       40 MiB in dwords
    0x66, 0xB8, 0xA5, 0xA5, 0xA5, 0xA5,  # 7c2c mov eax, 0xa5a5a5a5
    0x67, 0x66, 0xF3, 0xAB,              # 7c32 rep stosd [es:edi]
    0xF4,                                # 7c36 halt: hlt
    0xEB, 0xFD,                          # 7c37 jmp halt
    0x8D, 0xB4, 0x00, 0x00,              # 7c39 (padding to 8 bytes)
    0x8D, 0x74, 0x00,                    # 7c3d (padding)
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  # 7c40 gdt[0]: null descriptor
    0xFF, 0xFF, 0x00, 0x00, 0x00, 0x92, 0xCF, 0x00,  # 7c48 gdt[1]: base 0, limit 4 GiB, data rw
    0x0F, 0x00, 0x40, 0x7C, 0x00, 0x00,  # 7c50 gdtr: limit 15, base 0x7c40
])
SECTOR = 512
DISK = 1024 * 1024


def image():
    boot = BOOT + bytes(SECTOR - 2 - len(BOOT)) + b"\x55\xaa"
    assert len(boot) == SECTOR
    return boot + bytes(DISK - SECTOR)


def main(argv):
    if len(argv) != 2:
        sys.stderr.write(__doc__)
        return 2
    tmp = argv[1] + ".tmp"
    with open(tmp, "wb") as handle:
        handle.write(image())
    os.chmod(tmp, 0o444)
    os.replace(tmp, argv[1])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
