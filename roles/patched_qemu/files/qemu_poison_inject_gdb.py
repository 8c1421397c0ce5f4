# Copyright: (c) 2025, kvm_ras maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""gdb script: add one entry to a running QEMU's own hardware-poison list.

Run as ``gdb -q -nx -batch -p PID -x qemu_poison_inject_gdb.py``. It calls QEMU's own
``kvm_hwpoison_page_add(ram_addr)`` (a global function in accel/kvm/kvm-all.c that only
allocates an entry and inserts it at the head of the static ``hwpoison_page_list``), which
is exactly what QEMU's SIGBUS handler does for a poisoned guest page. The list head is
found from debug info when the binary has it (the patched package ships a build-id debug
file); for Debian's stripped stock binary, whose ``.dynsym`` still exports the function,
the head is decoded from the function's first instruction,
``mov hwpoison_page_list(%rip),%rax`` (48 8b 05 disp32). Prints one ``PG-INJECT {json}``
line with the list head before and after the call, then detaches (QEMU keeps running).
"""

import json

import gdb  # pylint: disable=import-error  # provided by gdb's embedded Python

RAM_ADDR = 0x1000
report = {"ok": False, "ram_addr": RAM_ADDR}


def _read_pointer(address):
    data = gdb.selected_inferior().read_memory(address, 8).tobytes()
    return int.from_bytes(data, "little")


def _list_head():
    try:
        symbol = gdb.lookup_static_symbol("hwpoison_page_list") or gdb.lookup_global_symbol(
            "hwpoison_page_list")
    except gdb.error:
        symbol = None
    if symbol is not None:
        return int(symbol.value().address), "debuginfo"
    function = int(gdb.parse_and_eval("(unsigned long)&kvm_hwpoison_page_add"))
    code = gdb.selected_inferior().read_memory(function, 7).tobytes()
    if code[:3] != b"\x48\x8b\x05":
        raise gdb.GdbError("no debug info and kvm_hwpoison_page_add does not start with "
                           "mov disp32(%%rip),%%rax (bytes %s)" % code.hex())
    displacement = int.from_bytes(code[3:7], "little", signed=True)
    return function + 7 + displacement, "decoded-first-instruction"


try:
    gdb.execute("set confirm off")
    head, method = _list_head()
    report.update(list_head="0x%x" % head, head_found_by=method)
    report["lh_first_before"] = "0x%x" % _read_pointer(head)
    gdb.parse_and_eval("((void (*)(unsigned long))kvm_hwpoison_page_add)(%d)" % RAM_ADDR)
    first = _read_pointer(head)
    report["lh_first_after"] = "0x%x" % first
    if first:
        report["entry_ram_addr"] = "0x%x" % _read_pointer(first)
    try:
        report["kvm_hwpoisoned_mem"] = int(gdb.parse_and_eval("((unsigned char (*)(void))kvm_hwpoisoned_mem)()"))
    except gdb.error:
        report["kvm_hwpoisoned_mem"] = None  # stock QEMU has no such function
    report["ok"] = bool(first) and report.get("entry_ram_addr") == "0x%x" % RAM_ADDR
    if not report["ok"]:
        report["error"] = "the poison list is still empty after kvm_hwpoison_page_add()"
except (gdb.error, gdb.MemoryError, gdb.GdbError) as exc:
    report["error"] = str(exc)
print("PG-INJECT " + json.dumps(report, sort_keys=True))
gdb.execute("detach")
