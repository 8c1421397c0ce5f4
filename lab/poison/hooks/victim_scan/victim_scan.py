# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Example poison-lab hook (stdlib only): scan the live victim for hwpoison entries.

Reads every mapping of LAB_VICTIM_PID through /proc/PID/pagemap and reports each page whose
entry is a non-present swap-type entry whose offset is a PFN with KPF_HWPOISON (bit 19) in
/proc/kpageflags. Prints one JSON object. It shows what collection code can see from a
hook; the lab's tests use it to prove hooks run against the victim while it is alive.
"""
import json
import os
import struct

PAGE = 4096
pid = int(os.environ['LAB_VICTIM_PID'])
report = {'experiment': os.environ.get('LAB_EXPERIMENT'), 'point': os.environ.get('LAB_HOOK_POINT'),
          'pid': pid, 'pid_alive': os.path.exists(f'/proc/{pid}'), 'poisoned': [], 'pages_scanned': 0,
          'env': {k: v for k, v in os.environ.items() if k.startswith('LAB_')}}
with open('/proc/meminfo') as f:
    report['hardware_corrupted_kb'] = next((int(line.split()[1]) for line in f
                                            if line.startswith('HardwareCorrupted:')), None)
with open('/proc/swaps') as f:
    swap_areas = max(0, len(f.read().splitlines()) - 1)
try:
    with open(f'/proc/{pid}/maps') as maps, open(f'/proc/{pid}/pagemap', 'rb') as pagemap, \
            open('/proc/kpageflags', 'rb') as kpageflags:
        for line in maps:
            fields = line.split()
            start, end = (int(x, 16) for x in fields[0].split('-'))
            if start >= 1 << 47:  # [vsyscall]
                continue
            pagemap.seek(start // PAGE * 8)
            data = pagemap.read((end - start) // PAGE * 8)
            report['pages_scanned'] += len(data) // 8
            for index, (entry,) in enumerate(struct.iter_unpack('<Q', data)):
                if entry >> 63 & 1 or not entry >> 62 & 1:
                    continue
                swap_type, offset = entry & 0x1f, entry >> 5 & ((1 << 50) - 1)
                if swap_type < swap_areas:
                    continue
                kpageflags.seek(offset * 8)
                flags = kpageflags.read(8)
                if len(flags) == 8 and struct.unpack('<Q', flags)[0] >> 19 & 1:
                    report['poisoned'].append({'vaddr': hex(start + index * PAGE), 'pfn': hex(offset),
                                               'swap_type': swap_type, 'mapping': ' '.join(fields[5:]) or '[anon]'})
except OSError as exc:
    report['error'] = f'{exc.__class__.__name__}: {exc}'
print(json.dumps(report))
