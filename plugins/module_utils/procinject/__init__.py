# -*- coding: utf-8 -*-
# Copyright (c) kvm_ras.poison_guard contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Act inside a running process without a debugger: ELF symbols, ptrace with general-purpose
registers only, and the QEMU poison steps built on them (see tracee.py for why no extended
register state is ever read or written)."""
