#!/usr/bin/python3
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Write the raw disk of the "dirtier" test guest: a boot sector that keeps rewriting 512 KiB
of guest RAM, so that a live migration capped at 1 MiB/s can never converge (the scenario's
timeout test). Between two passes it halts until the next BIOS timer tick (18.2 Hz), so the
guest dirties ~9 MiB/s while leaving the host CPU mostly idle.

usage: make_dirtier_disk.py PATH      (writes PATH: 1 MiB raw image; exit 0)

The 30 bytes of 16-bit real-mode code, assembled by hand (check with
`objdump -D -b binary -mi8086 --start-address=0 --stop-address=30 PATH`):
"""

import os
import sys

CODE = bytes([
    0xFC,                    # 00 cld                 string stores go upwards
    0xFB,                    # 01 sti                 the timer interrupt ends each hlt
    0x42,                    # 02 pass: inc dx        new fill value on every pass
    0xBB, 0x00, 0x10,        # 03 mov bx, 0x1000      first segment: 0x10000
    0x8E, 0xC3,              # 06 seg: mov es, bx
    0x31, 0xFF,              # 08 xor di, di
    0xB9, 0x00, 0x80,        # 0a mov cx, 0x8000      32768 words = 64 KiB
    0x89, 0xD0,              # 0d mov ax, dx
    0xF3, 0xAB,              # 0f rep stosw           dirty 16 pages
    0x81, 0xC3, 0x00, 0x10,  # 11 add bx, 0x1000      next 64 KiB
    0x81, 0xFB, 0x00, 0x90,  # 15 cmp bx, 0x9000      stop below 0x90000 (EBDA untouched)
    0x72, 0xEB,              # 19 jb seg              (-21)
    0xF4,                    # 1b hlt
    0xEB, 0xE4,              # 1c jmp pass            (-28)
])
SECTOR = 512
DISK = 1024 * 1024


def image():
    boot = CODE + bytes(SECTOR - 2 - len(CODE)) + b"\x55\xaa"
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
