# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Judge a poison-lab run from its serial console log (never from QEMU's exit status:
QEMU exits 0 after a guest panic too) and state what each experiment must show.

Pure functions over the log text and the RESULT dictionaries; the pytest tests and the
`poison-lab run` summary both use them.
"""
from __future__ import annotations

import dataclasses
import json
import re

BOOT_MARKER = '=== POISON-LAB BOOT'
DONE_RE = re.compile(r'=== POISON-LAB DONE rc=(\d+)')
RESULT_RE = re.compile(r'^RESULT (\{.*\})\s*$')
PANIC_RE = re.compile(r'Kernel panic - not syncing|Oops: |kernel BUG at|BUG: unable to handle|'
                      r'general protection fault|Call Trace:')
DRIVER_PREFIXES = ('[lab ', 'boot-dmesg| ')
REFUSAL = "Can't migrate this vm with hardware poisoned memory, please reboot the vm and try again"
SIGBUS, SIGABRT = 7, 6
BUS_MCEERR_AR, BUS_MCEERR_AO = 4, 5
DEFAULT_EXPERIMENTS = ['memhog-late', 'memhog-early', 'memhog-madvise', 'qemu-tcg', 'qemu-kvm-reset', 'qemu-kvm-mce',
                       'uffd-poison']
# Run only when asked for (they need an inner QEMU with the x-poison-holes series, see
# tests/integration/test_poison_lab_holes.py): migration of a really poisoned guest with its hole.
HOLES_EXPERIMENTS = ['qemu-holes', 'qemu-holes-stock']
KNOWN_EXPERIMENTS = DEFAULT_EXPERIMENTS + HOLES_EXPERIMENTS
# userfaultfd ABI (include/uapi/linux/userfaultfd.h, Linux 6.6+)
UFFD_FEATURE_POISON = 1 << 14
UFFDIO_POISON_IOCTL_BIT = 1 << 0x08  # _UFFDIO_POISON in the ioctls mask of UFFDIO_REGISTER
UFFD_POISON_SINCE = (6, 6)
PTE_MARKER_POISONED = 1 << 1
EINVAL = 22
PAGE_SIZE = 4096
PAGE_SHIFT = 12


@dataclasses.dataclass
class ParsedLog:
    results: dict[str, dict]
    booted: bool
    done_rc: int | None
    panic: str | None
    bad_result_lines: int


def parse_log(text: str) -> ParsedLog:
    results: dict[str, dict] = {}
    bad = 0
    panic = None
    for raw in text.splitlines():
        line = raw.rstrip('\r')
        match = RESULT_RE.match(line)
        if match:
            try:
                result = json.loads(match.group(1))
                results[result['experiment']] = result
            except (ValueError, KeyError):
                bad += 1
            continue
        # console lines only: the driver's own lines ("[lab ...]") quote dmesg and hook output
        if panic is None and not line.startswith(DRIVER_PREFIXES) and PANIC_RE.search(line):
            panic = line.strip()
    done = DONE_RE.search(text)
    return ParsedLog(results=results, booted=BOOT_MARKER in text, done_rc=int(done.group(1)) if done else None,
                     panic=panic, bad_result_lines=bad)


def judge(parsed: ParsedLog, timed_out: bool) -> tuple[str, str]:
    """(verdict, detail). Verdicts other than 'ok' make the harness retry the boot once."""
    if parsed.panic:
        return 'panic', parsed.panic
    if timed_out:
        return 'timeout', 'the VM did not power off in time'
    if not parsed.booted:
        return 'no-boot-marker', 'the kernel never reached /init'
    if parsed.done_rc is None:
        return 'no-end-marker', 'the log has no "=== POISON-LAB DONE" line'
    if parsed.done_rc != 0:
        return 'driver-failed', f'the experiment driver exited with rc {parsed.done_rc}'
    return 'ok', ''


RETRY_VERDICTS = {'panic', 'timeout', 'no-boot-marker', 'no-end-marker'}


# ------------------------------------------------------------------ decoding ---
def as_int(value) -> int | None:
    if isinstance(value, int):
        return value
    try:
        return int(str(value), 0)
    except (TypeError, ValueError):
        return None


def hwpoison_entry(pagemap: dict, kpageflags: dict, pfn: int, swap_areas: int) -> tuple[bool, str]:
    """Is this pagemap entry the kernel's hwpoison entry for pfn?

    Swap bit set, present clear, swap offset == PFN, a swap type no real swap area can have
    (>= the number of swap areas; the value itself is never hard-coded: 26 on Debian's 6.1,
    27 on 6.12) and KPF_HWPOISON (bit 19) set for that PFN in /proc/kpageflags.
    """
    if not isinstance(pagemap, dict) or 'error' in pagemap:
        return False, f'pagemap unreadable: {pagemap}'
    problems = []
    if pagemap.get('swap') != 1:
        problems.append('swap bit clear')
    if pagemap.get('present') != 0:
        problems.append('page present')
    offset = as_int(pagemap.get('swap_offset'))
    if offset != pfn:
        problems.append(f'swap offset {pagemap.get("swap_offset")} != pfn {pfn:#x}')
    swap_type = pagemap.get('swap_type')
    if not isinstance(swap_type, int) or swap_type < swap_areas:
        problems.append(f'swap type {swap_type} could be a real swap area (areas: {swap_areas})')
    if as_int(kpageflags.get('pfn')) != pfn or kpageflags.get('hwpoison') != 1:
        problems.append(f'KPF_HWPOISON not set for pfn {pfn:#x}: {kpageflags}')
    detail = f'pagemap {pagemap.get("raw")} type {swap_type} offset {pagemap.get("swap_offset")}'
    return not problems, '; '.join(problems) or detail


def sigbus_lines(lines: list[str], code: int) -> list[str]:
    return [line for line in lines if line.startswith('SIGBUS ') and f'code={code} ' in line]


def events(result: dict, name: str) -> list[dict]:
    return [e for e in result.get('events', []) if e.get('event') == name]


# --------------------------------------------------------------- expectations ---
@dataclasses.dataclass
class Check:
    experiment: str
    id: str
    ok: bool
    detail: str

    def __str__(self) -> str:
        return f'{"PASS" if self.ok else "FAIL"} {self.experiment}: {self.id}' + ('' if self.ok else f' ({self.detail})')


class _Checks:
    def __init__(self, experiment: str) -> None:
        self.experiment = experiment
        self.items: list[Check] = []

    def add(self, check_id: str, ok, detail='') -> None:
        self.items.append(Check(self.experiment, check_id, bool(ok), str(detail)[:2000]))


def _common(c: _Checks, r: dict, pfn: int) -> None:
    after = r.get('after_inject', {})
    c.add('inject-accepted', r.get('inject', {}).get('ok'), r.get('inject'))
    c.add('kpageflags-clean-before', r.get('kpageflags_before', {}).get('hwpoison') == 0, r.get('kpageflags_before'))
    c.add('kpageflags-hwpoison', after.get('kpageflags', {}).get('hwpoison') == 1
          and as_int(after.get('kpageflags', {}).get('pfn')) == pfn, after.get('kpageflags'))
    c.add('hardware-corrupted', (after.get('hardware_corrupted_kb') or 0) > 0, after.get('hardware_corrupted_kb'))
    c.add('dmesg-recovered', any(f'Memory failure: {pfn:#x}: recovery action' in line and 'Recovered' in line
                                 for line in after.get('dmesg', [])), after.get('dmesg'))


def _memhog(c: _Checks, r: dict, pfn: int) -> None:
    after = r.get('after_inject', {})
    ok, detail = hwpoison_entry(after.get('pagemap'), after.get('kpageflags', {}), pfn, r.get('swap_areas', 0))
    c.add('hwpoison-pagemap-entry', ok, detail)
    c.add('victim-alive-after-injection', after.get('victim', {}).get('alive'), after.get('victim'))
    inject_lines = r.get('inject', {}).get('victim_lines', []) + r.get('victim_lines_after_inject', [])
    touch = r.get('touch', {})
    if r.get('early_kill') == 1:
        c.add('sigbus-ao-at-injection', sigbus_lines(inject_lines, BUS_MCEERR_AO), inject_lines)
    else:
        c.add('no-sigbus-at-injection', not sigbus_lines(inject_lines, BUS_MCEERR_AO), inject_lines)
    c.add('touch-sigbus-ar', sigbus_lines(touch.get('poisoned_page', []), BUS_MCEERR_AR)
          and any(line.endswith('sigbus') for line in touch.get('poisoned_page', [])), touch.get('poisoned_page'))
    c.add('neighbour-page-readable', any(line.startswith('READ page=') and 'value=' in line
                                         for line in touch.get('neighbour_page', [])), touch.get('neighbour_page'))
    c.add('dmesg-mce-killing-memhog', any('MCE: Killing memhog:' in line for line in touch.get('dmesg', [])),
          touch.get('dmesg'))
    c.add('victim-exit-0', r.get('victim_exit', {}).get('exit_code') == 0, r.get('victim_exit'))
    if r.get('inject', {}).get('method') == 'madvise':
        c.add('dmesg-madvise-injection', any(f'Injecting memory failure for pfn {pfn:#x} at process virtual address'
                                             in line for line in after.get('dmesg', [])), after.get('dmesg'))


def _qemu(c: _Checks, r: dict, pfn: int, migration_guard: bool | None) -> None:
    after = r.get('after_inject', {})
    qemu_log = '\n'.join(r.get('qemu_log', []))
    if r.get('accel') == 'tcg':
        dmesg = after.get('dmesg', []) + r.get('dmesg_after_death', [])
        c.add('dmesg-sigbus-sent-to-qemu', any(f'Memory failure: {pfn:#x}: Sending SIGBUS to qemu-system-x86' in line
                                               for line in dmesg), dmesg)
        c.add('victim-died-at-injection', not after.get('victim', {}).get('alive', True), after.get('victim'))
        c.add('victim-killed-by-signal', r.get('victim_exit', {}).get('signal') is not None, r.get('victim_exit'))
        return
    c.add('victim-alive-after-injection', after.get('victim', {}).get('alive'), after.get('victim'))
    c.add('qemu-log-guest-mce', f'Guest MCE Memory Error at QEMU addr {r.get("hva")}' in qemu_log
          and f'GUEST addr {r.get("gpa")}' in qemu_log, qemu_log[-1500:])
    migrate = r.get('migrate', {})
    if not r.get('mce_guest'):
        failure = events(r, 'MEMORY_FAILURE')
        c.add('qmp-memory-failure-reset', failure and failure[0]['data'].get('action') == 'reset', r.get('events'))
        c.add('qmp-reset-event', events(r, 'RESET'), r.get('events'))
        pagemap = after.get('pagemap', {})
        c.add('page-remapped', pagemap.get('swap') == 0 and 'error' not in pagemap, pagemap)
        read = str(after.get('guest_read', ''))  # HMP xp: "0000000002000000: 0x0000000000000000"
        c.add('guest-page-readable-after-reset', ':' in read and as_int('0x' + read.split(':', maxsplit=1)[0]) == as_int(r.get('gpa'))
              and '0x' in read.split(':', 1)[1], read)
        c.add('migration-completed', migrate.get('states', [None])[-1] == 'completed', migrate)
        c.add('victim-alive-after-migration', migrate.get('victim', {}).get('alive'), migrate.get('victim'))
        return
    c.add('guest-cr4-mce-set', r.get('cr4_mce') == 1, r.get('cr4'))
    failure = events(r, 'MEMORY_FAILURE')
    c.add('qmp-memory-failure-inject', failure and failure[0]['data'].get('action') == 'inject', r.get('events'))
    ok, detail = hwpoison_entry(after.get('pagemap'), after.get('kpageflags', {}), pfn, r.get('swap_areas', 0))
    c.add('hwpoison-pagemap-entry', ok, detail)
    if migration_guard:
        error = migrate.get('reply', {}).get('error', {})
        c.add('migration-refused', error.get('class') == 'GenericError' and REFUSAL in error.get('desc', ''),
              migrate.get('reply'))
        c.add('victim-alive-after-refusal', migrate.get('victim', {}).get('alive'), migrate.get('victim'))
    elif migration_guard is False:
        c.add('migration-started', migrate.get('reply', {}).get('return') == {}, migrate.get('reply'))
        c.add('migration-crashed-qemu-sigbus', migrate.get('victim', {}).get('signal') == SIGBUS, migrate.get('victim'))
        c.add('dmesg-mce-killing-live-migration', any('MCE: Killing live_migration:' in line
                                                      for line in migrate.get('dmesg', [])), migrate.get('dmesg'))


def _holes_refused(c: _Checks, prefix: str, attempt: dict) -> None:
    error = attempt.get('reply', {}).get('error', {})
    c.add(f'{prefix}-refused-with-guard', error.get('class') == 'GenericError' and error.get('desc') == REFUSAL,
          attempt.get('reply'))
    c.add(f'{prefix}-source-keeps-running', attempt.get('source', {}).get('alive')
          and (attempt.get('source_status') or {}).get('status') == 'running', (attempt.get('source'),
                                                                                attempt.get('source_status')))


def _holes_failed(c: _Checks, prefix: str, attempt: dict, destination_says: str) -> None:
    """The source started, the destination refused the stream: it exited with the reason, the
    source's migration failed and its guest runs on."""
    c.add(f'{prefix}-migration-failed', attempt.get('reply', {}).get('return') == {}
          and attempt.get('states', [None])[-1] == 'failed', (attempt.get('reply'), attempt.get('states')))
    log = attempt.get('destination_log', [])
    c.add(f'{prefix}-destination-says-why', any(destination_says in line for line in log), log[-10:])
    c.add(f'{prefix}-destination-exited', attempt.get('destination', {}).get('exit_code') == 1,
          attempt.get('destination'))
    c.add(f'{prefix}-source-keeps-running', attempt.get('source', {}).get('alive')
          and (attempt.get('source_status') or {}).get('status') == 'running', (attempt.get('source'),
                                                                                attempt.get('source_status')))


def _listed(reply: dict | None, gpa: int | None) -> bool:
    """Does an x-query-hwpoison reply list exactly the page at guest address gpa?"""
    pages = (reply or {}).get('return')
    return (isinstance(pages, list) and len(pages) == 1 and pages[0].get('gpa') == gpa
            and pages[0].get('block') == 'pc.ram' and pages[0].get('offset') == gpa
            and pages[0].get('page-size') == PAGE_SIZE)


def _holes(c: _Checks, r: dict) -> None:
    """qemu-holes / qemu-holes-stock: migrating a really poisoned guest (see guest/lab.py)."""
    pfn, gpa, hva = as_int(r.get('pfn')), as_int(r.get('gpa')), r.get('hva')
    _common(c, r, pfn)
    after = r.get('after_inject', {})
    c.add('guest-ready', r.get('guest_ready'), r.get('guest_serial'))
    c.add('victim-alive-after-injection', after.get('victim', {}).get('alive'), after.get('victim'))
    ok, detail = hwpoison_entry(after.get('pagemap'), after.get('kpageflags', {}), pfn, r.get('swap_areas', 0))
    c.add('hwpoison-pagemap-entry', ok, detail)
    failure = events({'events': r.get('events', [])}, 'MEMORY_FAILURE')
    c.add('qmp-memory-failure-inject', failure and failure[0]['data'].get('action') == 'inject', r.get('events'))
    qemu_log = '\n'.join(after.get('qemu_log', []))
    c.add('qemu-log-guest-mce', f'Guest MCE Memory Error at QEMU addr {hva} and GUEST addr {r.get("gpa")}' in qemu_log,
          qemu_log[-1500:])
    serial = after.get('guest_serial', [])
    c.add('guest-handled-ao-machine-check', any(line.startswith('MCE ') and line.endswith(' AO') for line in serial),
          serial)
    attempts = r.get('attempts', {})
    if r.get('source') == 'stock':
        plain = attempts.get('plain', {})
        c.add('migration-started', plain.get('reply', {}).get('return') == {}, plain.get('reply'))
        c.add('migration-crashed-qemu-sigbus', plain.get('source', {}).get('signal') == SIGBUS, plain.get('source'))
        c.add('dmesg-mce-killing-live-migration', any('MCE: Killing live_migration:' in line
                                                      for line in plain.get('dmesg', [])), plain.get('dmesg'))
        return
    c.add('hwpoison-list-empty-before', (r.get('hwpoison_before') or {}).get('return') == [], r.get('hwpoison_before'))
    c.add('source-lists-the-poisoned-page', _listed(after.get('hwpoison'), gpa), after.get('hwpoison'))
    _holes_refused(c, 'guard', attempts.get('guard', {}))
    _holes_failed(c, 'source-only', attempts.get('source-only', {}),
                  'Capability x-poison-holes is off, but received capability is on')
    _holes_refused(c, 'destination-only', attempts.get('destination-only', {}))
    holes = attempts.get('holes', {})
    if not expects_uffd_poison(r.get('kernel_release')):
        _holes_failed(c, 'no-uffdio-poison', holes, "x-poison-holes: this host's kernel cannot poison a page")
        return
    c.add('holes-migration-completed', holes.get('states', [None])[-1] == 'completed', holes.get('states'))
    c.add('source-survives-without-sigbus', holes.get('source', {}).get('alive')
          and (holes.get('source_status') or {}).get('status') == 'postmigrate', (holes.get('source'),
                                                                                  holes.get('source_status')))
    dest = r.get('destination', {})
    c.add('destination-lists-the-hole', _listed(dest.get('hwpoison'), gpa), dest.get('hwpoison'))
    entry = decode_pagemap(dest.get('pagemap', {}).get('raw'))
    collection = dest.get('collection', {})
    marker_type = collection.get('facts', {}).get('pte_marker_swap_type')
    c.add('destination-pagemap-poisoned-marker', entry.get('swap_format')
          and entry['swap_offset'] == PTE_MARKER_POISONED and marker_type is not None
          and entry['swap_type'] == marker_type, f'{entry}; derived PTE marker type {marker_type}')
    scans = collection.get('scans', {})
    classified = [[h.get('hva') for h in s.get('holes', []) if h.get('source') == 'pte_marker_poisoned']
                  for s in scans.values()]
    c.add('collection-finds-the-hole-on-destination', 'error' not in collection and scans
          and all(found == [dest.get('hva')] for found in classified), collection.get('error') or scans)
    ram = dest.get('ram', {})
    source_ram, dest_ram = ram.get('source', []), ram.get('destination', [])
    c.add('guest-ram-identical-except-hole', len(source_ram) == 2 and len(dest_ram) == 2
          and all('sha256' in part for part in source_ram + dest_ram)
          and [p['sha256'] for p in source_ram] == [p['sha256'] for p in dest_ram], ram)
    c.add('guest-ram-holds-the-pattern', len(source_ram) == 2
          and all((part.get('nonzero_bytes') or 0) > 0 for part in source_ram), source_ram)
    read = dest.get('guest_read', [])
    c.add('destination-guest-read-machine-check', 'READ' in read
          and any(line.startswith('MCE ') and line.endswith(' AR') for line in read)
          and not any(line.startswith('VALUE') for line in read), read)
    dest_log = '\n'.join(dest.get('log', []))
    c.add('destination-qemu-log-guest-mce-ar', f'GUEST addr {r.get("gpa")} of type BUS_MCEERR_AR injected' in dest_log,
          dest_log[-1500:])
    c.add('destination-alive-after-read', dest.get('after_read', {}).get('alive'), dest.get('after_read'))


def kernel_version(release) -> tuple[int, int] | None:
    """'6.12.95+deb12-amd64' -> (6, 12); None when unparsable."""
    match = re.match(r'^(\d+)\.(\d+)', str(release or ''))
    return (int(match.group(1)), int(match.group(2))) if match else None


def expects_uffd_poison(release) -> bool:
    """Does a kernel of this release have UFFDIO_POISON / UFFD_FEATURE_POISON (6.6+)?"""
    version = kernel_version(release)
    return version is not None and version >= UFFD_POISON_SINCE


def decode_pagemap(raw) -> dict:
    """The fields of a pagemap value that tell a PTE marker (the same layout the collection
    decodes in plugins/module_utils/poison/encoding.py)."""
    value = as_int(raw)
    if value is None:
        return {'raw': raw, 'valid': False}
    swap_format = bool(value >> 62 & 1) and not value >> 63 & 1
    return {'raw': f'0x{value:016x}', 'valid': True, 'present': bool(value >> 63 & 1), 'swap_format': swap_format,
            'swap_type': value & 0x1f if swap_format else None,
            'swap_offset': (value & ((1 << 55) - 1)) >> 5 if swap_format else None}


def _ints(fields: dict, *keys) -> list[int | None]:
    return [as_int(fields.get(key)) for key in keys]


def _sigbus_fields(lines: list[str], prefix: str = '') -> list[dict]:
    out = []
    for line in lines:
        if line.startswith(prefix + 'SIGBUS '):
            out.append(dict(token.split('=', 1) for token in line[len(prefix):].split() if '=' in token))
    return out


def _uffd(c: _Checks, r: dict) -> None:
    """uffd-poison: what a migration destination needs to install a hole (see guest/lab.py)."""
    supported = expects_uffd_poison(r.get('kernel_release'))
    plain, asked, poison = r.get('api_plain', {}), r.get('api_poison', {}), r.get('poison', {})
    page, vaddr = r.get('page'), as_int(r.get('vaddr'))
    c.add('api-handshake', plain.get('ret') == '0', plain)
    advertised = bool((as_int(plain.get('features')) or 0) & UFFD_FEATURE_POISON)
    read_lines = r.get('read', [])
    neighbours = r.get('neighbours', [])
    intact = [n.get('good') == str(PAGE_SIZE) and n.get('bad') == '0' for n in neighbours]
    c.add('neighbours-keep-data', len(intact) == 2 and all(intact), neighbours)
    checkall = r.get('checkall', {})
    c.add('every-other-page-keeps-data', checkall.get('bad_pages') == '0' and as_int(checkall.get('good_pages')) ==
          (as_int(checkall.get('pages')) or 0) - 1, checkall)
    c.add('victim-exit-0', r.get('victim_exit', {}).get('exit_code') == 0, r.get('victim_exit'))
    collection = r.get('collection', {})
    scans = collection.get('scans', {})
    if not supported:
        c.add('api-does-not-advertise-poison', not advertised, plain)
        c.add('api-with-poison-einval', asked.get('ret') == '-1' and as_int(asked.get('errno')) == EINVAL, asked)
        c.add('uffdio-poison-refused', poison.get('api_poison') == '0' and poison.get('register') == '0'
              and poison.get('ret') == '-1' and as_int(poison.get('errno')) == EINVAL, poison)
        entry = decode_pagemap(r.get('pagemap', {}).get('raw'))
        c.add('no-marker-page-is-empty', entry.get('valid') and not entry['present'] and not entry['swap_format'], entry)
        c.add('unpoisoned-hole-reads-zeros', any(line == f'READ page={page} value=0' for line in read_lines), read_lines)
        c.add('collection-sees-no-hole', 'error' not in collection and scans
              and all(s.get('complete') and not s.get('holes') for s in scans.values()), collection)
        return
    c.add('api-advertises-poison', advertised, plain)
    c.add('api-accepts-poison', asked.get('ret') == '0'
          and bool((as_int(asked.get('features')) or 0) & UFFD_FEATURE_POISON), asked)
    c.add('register-offers-uffdio-poison', poison.get('register') == '0'
          and bool((as_int(poison.get('register_ioctls')) or 0) & UFFDIO_POISON_IOCTL_BIT), poison)
    c.add('uffdio-poison-one-page', poison.get('api_poison') == '1' and poison.get('ret') == '0'
          and as_int(poison.get('updated')) == PAGE_SIZE, poison)
    release = r.get('release', {})
    c.add('unregister-and-close', release.get('unregister') == '0' and release.get('close') == '0', release)
    entry = decode_pagemap(r.get('pagemap', {}).get('raw'))
    marker_type = collection.get('facts', {}).get('pte_marker_swap_type')
    c.add('pagemap-poisoned-pte-marker', entry.get('swap_format') and entry['swap_offset'] == PTE_MARKER_POISONED
          and marker_type is not None and entry['swap_type'] == marker_type,
          f'{entry}; derived PTE marker type {marker_type}')
    c.add('marker-seen-by-the-process-itself', r.get('pagemap_self', {}).get('raw') == entry.get('raw'),
          r.get('pagemap_self'))
    decoded = collection.get('entry', {})
    c.add('collection-decodes-poisoned-marker', decoded.get('pte_marker') is True and decoded.get('poisoned_bit') is True,
          decoded or collection)
    wanted = [hex(vaddr)] if vaddr is not None else []
    classified = {method: [h.get('hva') for h in s.get('holes', []) if h.get('source') == 'pte_marker_poisoned']
                  for method, s in scans.items()}
    c.add('collection-classifies-poisoned', 'error' not in collection and scans
          and all(s.get('complete') and len(s.get('holes', [])) == 1 for s in scans.values())
          and all(found == wanted for found in classified.values()), collection.get('error') or scans)
    c.add('collection-pagemap-scan-used', scans.get('pagemap_scan', {}).get('method') == 'pagemap_scan'
          and scans.get('pread', {}).get('method') == 'pread', {m: s.get('method') for m, s in scans.items()})
    own = _sigbus_fields(read_lines)
    c.add('read-sigbus-mceerr-ar-lsb-12', f'READ page={page} sigbus' in read_lines and own
          and own[0].get('code') == '4' and own[0].get('lsb') == '12' and as_int(own[0].get('addr')) == vaddr,
          read_lines)
    dmesg = r.get('dmesg_after_touch', [])
    c.add('dmesg-mce-killing-uffd-poison', any('MCE: Killing uffd-poison:' in line for line in dmesg), dmesg)
    fork = r.get('fork', [])
    child_pagemap = [line for line in fork if line.startswith('CHILD PAGEMAP ')]
    child_raw = child_pagemap[0].rsplit('raw=', 1)[-1] if child_pagemap else None
    child_bus = _sigbus_fields(fork, 'CHILD ')
    c.add('forked-child-inherits-marker', child_raw == entry.get('raw')
          and f'CHILD READ page={page} sigbus' in fork and child_bus and child_bus[0].get('code') == '4'
          and child_bus[0].get('lsb') == '12' and f'CHILD CHECK page={page + 1} good={PAGE_SIZE} bad=0' in fork
          and any(line.startswith('FORK ') and line.endswith('status=exit:0') for line in fork), fork)
    c.add('hardware-corrupted-unchanged', r.get('hardware_corrupted_kb_before') == r.get('hardware_corrupted_kb_after'),
          (r.get('hardware_corrupted_kb_before'), r.get('hardware_corrupted_kb_after')))


def evaluate(results: dict[str, dict], experiments: list[str] | None = None,
             migration_guard: bool | None = False) -> dict[str, list[Check]]:
    """Checks per experiment. migration_guard: False = the inner QEMU must crash on migrate
    (stock 7.2), True = it must refuse and stay alive (patched), None = do not judge migrate."""
    out: dict[str, list[Check]] = {}
    for name in experiments or list(results):
        c = _Checks(name)
        r = results.get(name)
        if r is None:
            c.add('result-present', False, 'no RESULT line for this experiment')
        elif r.get('error'):
            c.add('no-error', False, r['error'])
        elif r.get('victim') == 'uffd':
            _uffd(c, r)
        elif r.get('victim') == 'qemu-holes':
            _holes(c, r)
        else:
            pfn = as_int(r.get('pfn'))
            _common(c, r, pfn)
            if r.get('victim') == 'memhog':
                _memhog(c, r, pfn)
            else:
                _qemu(c, r, pfn, migration_guard)
        out[name] = c.items
    return out


def hwpoison_swap_types(results: dict[str, dict]) -> dict[str, int]:
    """Swap type of every hwpoison pagemap entry seen, per experiment."""
    types = {}
    for name, r in results.items():
        pagemap = r.get('after_inject', {}).get('pagemap') or {}
        if pagemap.get('swap') == 1 and r.get('after_inject', {}).get('kpageflags', {}).get('hwpoison') == 1:
            types[name] = pagemap.get('swap_type')
    return types
