# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Experiment driver of the poison lab. Runs as root INSIDE the nested VM (python3.11, stdlib).

Every hwpoison experiment starts a victim (the memhog helper or an inner QEMU), finds the
physical page behind one of its virtual pages through /proc/PID/pagemap, poisons that page for
real (debugfs hwpoison corrupt-pfn or madvise(MADV_HWPOISON)), records what the kernel and the
victim show, runs the registered hooks against the live victim, then touches (memhog) or
migrates (QEMU) the page and records the outcome.

The qemu-holes experiment migrates a really poisoned guest with the x-poison-holes capability
(the patched_qemu role's QEMU series): the holes BIOS guest (src/holes_bios.S) fills RAM around
guest address 0x80000 with a TSC-seeded sequence, the page behind 0x80000 is poisoned with
corrupt-pfn, and the same source QEMU then meets every case: the guard without the capability,
the capability on the source only and on the destination only (both refused, the source keeps
running), then on both sides into a destination QEMU in the same lab VM. It records the
destination's poison list, its pagemap at the hole, the guest RAM of both sides except the hole
(sha256 of QEMU's pmemsave), and what the guest's own COM1 log says when it reads the hole on the
destination. qemu-holes-stock is the control: the same guest on Debian's stock QEMU, migrated.

The uffd-poison experiment does what a migration destination does with a hole it received:
UFFDIO_POISON (Linux 6.6+) on one page of a userfaultfd-registered anonymous mapping of the
uffd-poison helper, then records the PTE marker left behind (decoded and classified by the
collection's own pagemap code, shipped under /lab/collection), the SIGBUS a read raises, the
neighbouring pages and a forked child. On a kernel without UFFD_FEATURE_POISON it records the
refusals and what the page reads as instead.

Output: progress lines, and one line per experiment:  RESULT {json}
Usage:  python3 -u /lab/lab.py /lab/config.json
"""
from __future__ import annotations

import hashlib
import json
import os
import select
import socket
import struct
import subprocess
import sys
import time

PAGE = 4096
CORRUPT_PFN = '/sys/kernel/debug/hwpoison/corrupt-pfn'
EARLY_KILL = '/proc/sys/vm/memory_failure_early_kill'
MCE_BIOS = '/lab/mce-bios.bin'
HOLES_BIOS = '/lab/holes-bios.bin'  # src/holes_bios.S: fills RAM, reads the hole on a COM1 byte
STOCK_QEMU = '/usr/bin/qemu-system-x86_64'  # Debian's QEMU 7.2 in the lab image
GUEST_RAM = 64 << 20
HOOKS_DIR = '/lab/hooks'
COLLECTION_PATH = '/lab/collection'  # replaced by the run configuration's collection_path
MIGRATE_URI = 'exec:cat > /dev/null'
HOOK_STDOUT_MAX = 256 * 1024
HOOK_STDERR_MAX = 32 * 1024
KPF_HWPOISON = 19
KPF_NAMES = {
    0: 'LOCKED', 1: 'ERROR', 2: 'REFERENCED', 3: 'UPTODATE', 4: 'DIRTY', 5: 'LRU', 6: 'ACTIVE',
    7: 'SLAB', 8: 'WRITEBACK', 9: 'RECLAIM', 10: 'BUDDY', 11: 'MMAP', 12: 'ANON',
    13: 'SWAPCACHE', 14: 'SWAPBACKED', 15: 'COMPOUND_HEAD', 16: 'COMPOUND_TAIL', 17: 'HUGE',
    18: 'UNEVICTABLE', 19: 'HWPOISON', 20: 'NOPAGE', 21: 'KSM', 22: 'THP', 23: 'OFFLINE',
    24: 'ZERO_PAGE', 25: 'IDLE', 26: 'PGTABLE',
}
SIGNAL_NAMES = {6: 'SIGABRT', 7: 'SIGBUS', 9: 'SIGKILL', 11: 'SIGSEGV', 15: 'SIGTERM'}

# name -> (victim, parameters); the order here is the default order of a run
EXPERIMENTS = {
    'memhog-late': ('memhog', {'early_kill': 0, 'method': 'corrupt-pfn'}),
    'memhog-early': ('memhog', {'early_kill': 1, 'method': 'corrupt-pfn'}),
    'memhog-madvise': ('memhog', {'early_kill': 0, 'method': 'madvise'}),
    'qemu-tcg': ('qemu', {'accel': 'tcg', 'mce_guest': False, 'gpa': 0x2000000}),
    'qemu-kvm-reset': ('qemu', {'accel': 'kvm', 'mce_guest': False, 'gpa': 0x2000000}),
    'qemu-kvm-mce': ('qemu', {'accel': 'kvm', 'mce_guest': True, 'gpa': 0x2345000}),
    'uffd-poison': ('uffd', {'page': 10, 'pages': 64}),
    # asked for by name only (an inner QEMU with the x-poison-holes series): see holes_experiment
    'qemu-holes': ('holes', {'source': 'patched', 'gpa': 0x80000}),
    'qemu-holes-stock': ('holes', {'source': 'stock', 'gpa': 0x80000}),
}
UFFD_FEATURE_POISON = 1 << 14


def uptime():
    with open('/proc/uptime') as f:
        return float(f.read().split()[0])


def log(message):
    sys.stdout.write(f'[lab {uptime():8.2f}] {message}\n')
    sys.stdout.flush()


def emit_result(result):
    # one write per line: nothing else can end up in the middle of it
    os.write(1, ('RESULT ' + json.dumps(result, sort_keys=True) + '\n').encode())


def write_file(path, value):
    with open(path, 'w') as f:
        f.write(str(value))


def read_text(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError as exc:
        return f'<{exc.strerror}>'


def dmesg_take(label):
    """Return (and clear) the kernel log lines written since the previous call."""
    out = subprocess.run(['dmesg', '-c'], capture_output=True, text=True, check=False).stdout
    lines = [line for line in out.splitlines() if line.strip()]
    for line in lines:
        log(f'dmesg[{label}] {line}')
    return lines


def hardware_corrupted_kb():
    with open('/proc/meminfo') as f:
        for line in f:
            if line.startswith('HardwareCorrupted:'):
                return int(line.split()[1])
    return None


def swap_areas():
    with open('/proc/swaps') as f:
        return max(0, len(f.read().splitlines()) - 1)


def memory_failure_stats():
    base = '/sys/devices/system/node/node0/memory_failure'
    if not os.path.isdir(base):
        return None
    return {name: read_text(os.path.join(base, name)) for name in sorted(os.listdir(base))}


def pagemap_entry(pid, vaddr):
    with open(f'/proc/{pid}/pagemap', 'rb') as f:
        f.seek(vaddr // PAGE * 8)
        value, = struct.unpack('<Q', f.read(8))
    entry = {'vaddr': hex(vaddr), 'raw': f'0x{value:016x}', 'present': value >> 63 & 1,
             'swap': value >> 62 & 1, 'file_or_shared': value >> 61 & 1,
             'exclusive': value >> 56 & 1, 'soft_dirty': value >> 55 & 1}
    if entry['present']:
        entry['pfn'] = hex(value & ((1 << 55) - 1))
    if entry['swap']:
        entry['swap_type'] = value & 0x1f
        entry['swap_offset'] = hex(value >> 5 & ((1 << 50) - 1))
    return entry


def pagemap_or_error(pid, vaddr):
    try:
        return pagemap_entry(pid, vaddr)
    except (OSError, struct.error) as exc:
        return {'error': f'{exc.__class__.__name__}: {exc}'}


def kpageflags(pfn):
    with open('/proc/kpageflags', 'rb') as f:
        f.seek(pfn * 8)
        flags, = struct.unpack('<Q', f.read(8))
    with open('/proc/kpagecount', 'rb') as f:
        f.seek(pfn * 8)
        count, = struct.unpack('<Q', f.read(8))
    return {'pfn': hex(pfn), 'raw': f'0x{flags:016x}', 'hwpoison': flags >> KPF_HWPOISON & 1,
            'names': [name for bit, name in sorted(KPF_NAMES.items()) if flags >> bit & 1],
            'mapcount': count}


def process_state(returncode):
    """Describe a Popen returncode: None = still running, <0 = killed by a signal."""
    if returncode is None:
        return {'alive': True, 'signal': None, 'exit_code': None, 'text': 'alive'}
    if returncode < 0:
        sig = -returncode
        return {'alive': False, 'signal': sig, 'exit_code': None,
                'text': f'killed by signal {sig} ({SIGNAL_NAMES.get(sig, "?")})'}
    return {'alive': False, 'signal': None, 'exit_code': returncode, 'text': f'exit {returncode}'}


def inject_corrupt_pfn(pfn):
    started = time.monotonic()
    try:
        write_file(CORRUPT_PFN, hex(pfn))
        outcome = {'method': 'corrupt-pfn', 'ok': True, 'error': None}
    except OSError as exc:
        outcome = {'method': 'corrupt-pfn', 'ok': False, 'error': f'errno {exc.errno} ({exc.strerror})'}
    outcome['duration_s'] = round(time.monotonic() - started, 3)
    return outcome


def kernel_view(label, pid, vaddr, pfn):
    view = {'dmesg': dmesg_take(label), 'hardware_corrupted_kb': hardware_corrupted_kb(),
            'memory_failure_sysfs': memory_failure_stats(), 'kpageflags': kpageflags(pfn),
            'pagemap': pagemap_or_error(pid, vaddr)}
    log(f'{label}: HardwareCorrupted {view["hardware_corrupted_kb"]} kB; '
        f'pagemap {view["pagemap"]}; kpageflags {view["kpageflags"]["raw"]}')
    return view


# ------------------------------------------------------------------ hooks ----
class Hooks:
    """Runs the hooks registered in the run configuration (see poisonlab.harness.Hook)."""

    def __init__(self, specs):
        self.specs = specs

    def run(self, experiment, point, env_extra):
        reports = {}
        for spec in self.specs:
            if point not in spec['points']:
                continue
            if spec['experiments'] is not None and experiment not in spec['experiments']:
                continue
            reports[spec['name']] = self._run_one(spec, experiment, point, env_extra)
        return reports

    @staticmethod
    def _run_one(spec, experiment, point, env_extra):
        hook_dir = os.path.join(HOOKS_DIR, spec['name'])
        env = dict(os.environ, LAB_EXPERIMENT=experiment, LAB_HOOK_POINT=point,
                   LAB_HOOK_NAME=spec['name'], LAB_HOOK_DIR=hook_dir)
        env.update({key: str(value) for key, value in env_extra.items() if value is not None})
        started = time.monotonic()
        timed_out = False
        try:
            proc = subprocess.run([os.path.join(hook_dir, 'run')], env=env, cwd=hook_dir,
                                  capture_output=True, timeout=spec['timeout_s'], check=False)
            rc, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
        except subprocess.TimeoutExpired as exc:
            timed_out, rc = True, None
            stdout, stderr = exc.stdout or b'', exc.stderr or b''
        except OSError as exc:
            rc, stdout, stderr = None, b'', f'cannot start hook: {exc}'.encode()
        stdout_text = stdout.decode(errors='replace')
        stderr_text = stderr.decode(errors='replace')
        report = {'rc': rc, 'timed_out': timed_out, 'duration_s': round(time.monotonic() - started, 3),
                  'stdout': stdout_text[:HOOK_STDOUT_MAX], 'stderr': stderr_text[-HOOK_STDERR_MAX:],
                  'stdout_truncated': len(stdout_text) > HOOK_STDOUT_MAX, 'json': parse_json_output(stdout_text)}
        log(f'hook {spec["name"]} [{experiment} {point}] rc={rc} timed_out={timed_out} '
            f'{report["duration_s"]} s json={"yes" if report["json"] is not None else "no"}')
        for line in stderr_text.splitlines()[-20:]:
            log(f'hook {spec["name"]} stderr| {line}')
        return report


def parse_json_output(text):
    """The whole output as JSON, else the last line that is a JSON object."""
    try:
        return json.loads(text)
    except ValueError:
        pass
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith('{'):
            try:
                return json.loads(line)
            except ValueError:
                continue
    return None


# ----------------------------------------------------------------- memhog ----
class Memhog:
    """A line-protocol helper process (memhog; uffd-poison with argv and label)."""

    def __init__(self, mib=16, argv=None, label='memhog'):
        self.label = label
        self.proc = subprocess.Popen(argv or ['/usr/bin/memhog', str(mib)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        self.ready = self.until('READY')

    def until(self, prefix):
        """Lines up to and including the first one starting with prefix (or until EOF)."""
        lines = []
        while True:
            line = self.proc.stdout.readline()
            if not line:
                break
            line = line.rstrip('\n')
            lines.append(line)
            log(f'{self.label}| {line}')
            if line.startswith(prefix):
                break
        return lines

    def command(self, text, answer):
        try:
            self.proc.stdin.write(text + '\n')
            self.proc.stdin.flush()
        except OSError:
            pass  # the process is gone: still drain what it printed
        return self.until(answer)

    def finish(self):
        self.command('quit', 'BYE')
        try:
            return self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def memhog_experiment(name, hooks, early_kill, method, page=100):
    result = {'experiment': name, 'victim': 'memhog', 'early_kill': early_kill, 'swap_areas': swap_areas()}
    write_file(EARLY_KILL, early_kill)
    dmesg_take('pre')
    hog = Memhog()
    pid = hog.proc.pid
    vaddr = int(hog.command(f'addr {page}', 'ADDR')[-1].split('vaddr=')[1], 16)
    before = pagemap_entry(pid, vaddr)
    pfn = int(before['pfn'], 16)
    result.update(pid=pid, vaddr=hex(vaddr), pfn=hex(pfn), pagemap_before=before,
                  kpageflags_before=kpageflags(pfn))
    log(f'{name}: pid {pid} page {page} vaddr {vaddr:#x} pfn {pfn:#x}, poisoning with {method}')
    if method == 'corrupt-pfn':
        result['inject'] = inject_corrupt_pfn(pfn)
    else:
        started = time.monotonic()
        lines = hog.command(f'madv {page}', 'MADV')
        last = lines[-1] if lines else ''
        result['inject'] = {'method': 'madvise', 'ok': 'ret=0' in last or last.endswith('sigbus'),
                            'error': None if 'ret=0' in last or last.endswith('sigbus') else last,
                            'victim_lines': lines, 'duration_s': round(time.monotonic() - started, 3)}
    time.sleep(1)
    result['victim_lines_after_inject'] = hog.command('ping', 'PONG')
    after = kernel_view(f'{name} after-inject', pid, vaddr, pfn)
    after['victim'] = process_state(hog.proc.poll())
    result['after_inject'] = after
    result['hooks'] = {'after-inject': hooks.run(name, 'after-inject', {
        'LAB_VICTIM_PID': pid, 'LAB_VICTIM_COMM': 'memhog', 'LAB_VICTIM_IS_QEMU': 0,
        'LAB_VICTIM_ALIVE': int(after['victim']['alive']), 'LAB_VADDR': hex(vaddr), 'LAB_PFN': hex(pfn)})}
    result['touch'] = {'poisoned_page': hog.command(f'read {page}', 'READ'),
                       'neighbour_page': hog.command(f'read {page + 1}', 'READ'),
                       'dmesg': dmesg_take(f'{name} after-touch')}
    result['victim_exit'] = process_state(hog.finish())
    log(f'{name}: memhog {result["victim_exit"]["text"]}')
    return result


# ------------------------------------------------------------------- QEMU ----
class QMP:
    """Minimal QMP client; keeps the asynchronous events it reads on the way."""

    def __init__(self, path, proc, timeout=120):
        deadline = time.monotonic() + timeout
        while True:
            sock = socket.socket(socket.AF_UNIX)
            try:
                sock.connect(path)
                break
            except OSError:
                sock.close()
                if proc.poll() is not None:
                    raise RuntimeError(f'QEMU exited before its QMP socket came up ({process_state(proc.poll())["text"]})')
                if time.monotonic() > deadline:
                    raise RuntimeError(f'QMP socket {path} did not come up in {timeout} s')
                time.sleep(0.2)
        self.sock, self.buffer, self.events, self.closed = sock, b'', [], False
        self.greeting = self._read(timeout)
        self.command('qmp_capabilities')

    def _read(self, timeout):
        deadline = time.monotonic() + timeout
        while b'\n' not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            readable = select.select([self.sock], [], [], left)[0]
            if not readable:
                return None
            try:
                chunk = self.sock.recv(65536)
            except OSError:
                chunk = b''
            if not chunk:
                self.closed = True
                return None
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b'\n', 1)
        return json.loads(line)

    def _message(self, timeout):
        message = self._read(timeout)
        if message is not None and 'event' in message:
            self.events.append(message)
            log(f'qmp event {json.dumps(message)}')
        return message

    def command(self, name, arguments=None, timeout=60):
        if self.closed:
            return {'eof': 'QMP connection closed'}
        request = {'execute': name}
        if arguments:
            request['arguments'] = arguments
        try:
            self.sock.sendall(json.dumps(request).encode() + b'\n')
        except OSError as exc:
            self.closed = True
            return {'eof': f'QMP send failed: {exc}'}
        deadline = time.monotonic() + timeout
        while True:
            message = self._message(max(0.0, deadline - time.monotonic()))
            if message is None:
                return {'eof': 'QMP connection closed'} if self.closed else {'timeout': f'no reply in {timeout} s'}
            if 'event' not in message:
                return message

    def hmp(self, command_line):
        reply = self.command('human-monitor-command', {'command-line': command_line})
        return reply.get('return', json.dumps(reply)).strip()

    def wait_event(self, name, timeout):
        deadline = time.monotonic() + timeout
        while not any(event['event'] == name for event in self.events):
            left = deadline - time.monotonic()
            if left <= 0 or self.closed:
                return False
            self._message(left)
        return True


def qemu_log_lines(path):
    try:
        with open(path, errors='replace') as f:
            return f.read().splitlines()
    except OSError:
        return []


def parse_cr4(registers):
    for token in registers.split():
        if token.startswith('CR4='):
            return int(token[4:], 16)
    return None


def qemu_experiment(name, hooks, qemu, accel, mce_guest, gpa):
    result = {'experiment': name, 'victim': 'qemu', 'accel': accel, 'gpa': hex(gpa),
              'mce_guest': mce_guest, 'qemu_binary': qemu['binary'], 'swap_areas': swap_areas(),
              'early_kill': 0}
    if accel == 'kvm' and not os.path.exists('/dev/kvm'):
        result['error'] = 'no /dev/kvm in the lab VM (kvm_amd did not load)'
        return result
    write_file(EARLY_KILL, 0)
    dmesg_take('pre')
    control, hook_socket = f'/tmp/qmp-{name}.sock', f'/tmp/qmp-{name}-hooks.sock'
    stderr_path = f'/tmp/qemu-{name}.log'
    vm_name = f'lab-{name}'
    argv = [qemu['binary'], *qemu['extra_args'], '-accel', accel, '-m', '64', '-S', '-display', 'none',
            '-nodefaults', '-mem-prealloc', '-name', f'{vm_name},debug-threads=on',
            '-qmp', f'unix:{control},server=on,wait=off', '-qmp', f'unix:{hook_socket},server=on,wait=off']
    if mce_guest:  # the tiny BIOS sets CR4.MCE, then halts
        argv += ['-bios', MCE_BIOS]
    result['argv'] = argv
    started = time.monotonic()
    with open(stderr_path, 'w') as stderr_file:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=stderr_file, stderr=subprocess.STDOUT)
    try:
        qmp = QMP(control, proc)
    except RuntimeError as exc:
        result['error'] = str(exc)
        result['victim_exit'] = process_state(proc.poll())
        result['qemu_log'] = qemu_log_lines(stderr_path)
        return result
    result['qemu_version'] = qmp.greeting.get('QMP', {}).get('version', {}).get('qemu') if qmp.greeting else None
    result['qmp_ready_s'] = round(time.monotonic() - started, 3)
    result['pid'] = proc.pid
    result['comm'] = read_text(f'/proc/{proc.pid}/comm')
    if mce_guest:  # let the BIOS stub run until CR4.MCE is set (slow under a loaded host), then stop
        result['cont'] = qmp.command('cont')
        deadline = time.monotonic() + 60
        cr4 = None
        while time.monotonic() < deadline:
            time.sleep(0.5)
            cr4 = parse_cr4(qmp.hmp('info registers'))
            if cr4 is not None and cr4 >> 6 & 1:
                break
        result['stop'] = qmp.command('stop')
        cr4 = parse_cr4(qmp.hmp('info registers'))
        result['cr4'] = None if cr4 is None else hex(cr4)
        result['cr4_mce'] = None if cr4 is None else cr4 >> 6 & 1
    result['status_before'] = qmp.command('query-status').get('return')
    gpa2hva = qmp.hmp(f'gpa2hva {gpa:#x}')
    result['gpa2hva'] = gpa2hva
    hva = int(gpa2hva.split()[-1], 16)
    before = pagemap_entry(proc.pid, hva)
    pfn = int(before['pfn'], 16)
    result.update(hva=hex(hva), vaddr=hex(hva), pfn=hex(pfn), pagemap_before=before,
                  kpageflags_before=kpageflags(pfn))
    log(f'{name}: QEMU pid {proc.pid} gpa {gpa:#x} hva {hva:#x} pfn {pfn:#x}, poisoning')
    result['inject'] = inject_corrupt_pfn(pfn)
    # settle: TCG QEMU dies within a few seconds; KVM QEMU reports MEMORY_FAILURE (and RESET)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and proc.poll() is None:
        if qmp.wait_event('MEMORY_FAILURE', 0.5):
            if not mce_guest:
                qmp.wait_event('RESET', 3)
            time.sleep(0.5)
            break
    if accel == 'tcg' and proc.poll() is None:
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
    after = kernel_view(f'{name} after-inject', proc.pid, hva, pfn)
    after['victim'] = process_state(proc.poll())
    alive = after['victim']['alive']
    if alive:
        after['status'] = qmp.command('query-status').get('return')
        # Only read guest RAM through QEMU when the page is no longer a poison entry: reading a
        # poisoned page here (xp, gpa2hpa) would consume the poison in QEMU's main thread.
        if after['pagemap'].get('swap') == 0:
            after['guest_read'] = qmp.hmp(f'xp /1xg {gpa:#x}')
    after['qemu_log'] = qemu_log_lines(stderr_path)
    result['after_inject'] = after
    log(f'{name}: after injection QEMU {after["victim"]["text"]}')
    hook_env = {'LAB_VICTIM_PID': proc.pid, 'LAB_VICTIM_COMM': result['comm'], 'LAB_VICTIM_IS_QEMU': 1,
                'LAB_VADDR': hex(hva), 'LAB_HVA': hex(hva), 'LAB_PFN': hex(pfn), 'LAB_GPA': hex(gpa),
                'LAB_QMP_SOCK': hook_socket, 'LAB_QEMU_NAME': vm_name, 'LAB_QEMU_LOG': stderr_path,
                'LAB_QEMU_BINARY': qemu['binary'], 'LAB_QEMU_ACCEL': accel}
    result['hooks'] = {'after-inject': hooks.run(name, 'after-inject', dict(hook_env, LAB_VICTIM_ALIVE=int(alive)))}
    if alive:
        result['migrate'] = migrate(name, qmp, proc)
        result['hooks']['after-migrate'] = hooks.run(
            name, 'after-migrate', dict(hook_env, LAB_VICTIM_ALIVE=int(proc.poll() is None)))
        if proc.poll() is None:
            result['quit'] = qmp.command('quit')
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    else:
        result['dmesg_after_death'] = dmesg_take(f'{name} after-death')
    result['victim_exit'] = process_state(proc.wait())
    result['events'] = qmp.events
    result['qemu_log'] = qemu_log_lines(stderr_path)
    log(f'{name}: QEMU {result["victim_exit"]["text"]}')
    return result


def migrate(name, qmp, proc):
    """Migrate to a pipe that discards the stream; record the reply, states and QEMU's fate."""
    log(f'{name}: migrate to {MIGRATE_URI}')
    outcome = {'uri': MIGRATE_URI}
    started = time.monotonic()
    outcome['reply'] = qmp.command('migrate', {'uri': MIGRATE_URI})
    outcome['refused'] = 'error' in outcome['reply']
    states = []
    if outcome['refused']:
        log(f'{name}: migrate refused: {outcome["reply"]["error"]}')
        time.sleep(2)  # a refusing QEMU must still be alive a moment later
    else:
        while time.monotonic() - started < 180 and proc.poll() is None:
            reply = qmp.command('query-migrate', timeout=10)
            status = reply.get('return', {}).get('status')
            if status and (not states or states[-1] != status):
                states.append(status)
                log(f'{name}: query-migrate status={status}')
            if status in ('completed', 'failed', 'cancelled') or 'eof' in reply:
                break
            time.sleep(0.3)
        if proc.poll() is None and states and states[-1] not in ('completed', 'failed', 'cancelled'):
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
    outcome['states'] = states
    outcome['duration_s'] = round(time.monotonic() - started, 3)
    outcome['victim'] = process_state(proc.poll())
    if outcome['victim']['alive']:
        outcome['status'] = qmp.command('query-status').get('return')
        outcome['query_migrate'] = qmp.command('query-migrate').get('return')
    outcome['dmesg'] = dmesg_take(f'{name} after-migrate')
    log(f'{name}: after migrate QEMU {outcome["victim"]["text"]}')
    return outcome


# ------------------------------------------------------------ uffd-poison ----
def fields(line):
    """key=value tokens of a helper's answer line."""
    return dict(token.split('=', 1) for token in (line or '').split() if '=' in token)


def last_line(lines, prefix):
    found = [line for line in lines if line.startswith(prefix)]
    return found[-1] if found else ''


def collection_view(collection_path, pid, base, length, vaddr, raw):
    """What the collection's own code (plugins/module_utils/poison) makes of the process:
    host facts (kernel, derived special swap types), the decoded entry of the page, and a
    ProcessScanner scan of the mapping with every scan method this kernel has."""
    if collection_path not in sys.path:
        sys.path.insert(0, collection_path)
    # pylint: disable=import-outside-toplevel
    from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.poison import encoding as enc
    from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.poison import host
    from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.poison import pagemap as pm
    from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.poison import procfs

    facts, version, problems = host.collect('/proc', '/sys', '/boot')
    entry = enc.PagemapEntry(raw)
    offset = entry.swap_offset
    marker_type = facts['pte_marker_swap_type']
    view = {'facts': {key: facts[key] for key in ('kernel_release', 'hardware_corrupted_kb', 'hwpoison_swap_type',
                                                  'pte_marker_swap_type', 'swapin_error_swap_type',
                                                  'swap_types_basis', 'swap_areas')},
            'version': list(version) if version else None, 'problems': problems,
            'entry': {'raw': entry.hex(), 'present': entry.present, 'swap_format': entry.swap_format,
                      'swap_type': entry.swap_type, 'swap_offset': offset,
                      'pte_marker': entry.swap_format and marker_type is not None and entry.swap_type == marker_type
                      and offset is not None and offset < enc.PTE_MARKER_OFFSET_LIMIT,
                      'poisoned_bit': bool(offset is not None and offset & enc.PTE_MARKER_POISONED)}}
    mappings = [m for m in procfs.read_maps('/proc', pid) if m.start < base + length and base < m.end]
    view['mappings'] = [repr(m) for m in mappings]
    kpageflags = pm.Kpageflags('/proc/kpageflags')
    try:
        poisoned_pfns = () if not facts['hardware_corrupted_kb'] else kpageflags.sweep_hwpoison()
        methods = {'pread': None}
        if pm.probe_pagemap_scan('/proc/self/pagemap'):
            methods['pagemap_scan'] = pm.pagemap_scan_swapped
        view['scans'] = {}
        for method, scan_fn in methods.items():
            ctx = pm.ScanContext(real_swap_types=facts['swap_areas'] or 0, hwpoison_type=facts['hwpoison_swap_type'],
                                 pte_marker_type=marker_type, swapin_error_type=facts['swapin_error_swap_type'],
                                 kpageflags=kpageflags, poisoned_pfns=poisoned_pfns, pagemap_scan=scan_fn,
                                 method=method,
                                 # stay on the ioctl also when earlier experiments left poisoned PFNs (a
                                 # fully resident process would otherwise be read with pread)
                                 populated_first=True if scan_fn else None)
            scanned = pm.ProcessScanner(f'/proc/{pid}/pagemap', ctx).scan(
                [pm.Target(m, guest_ram=True) for m in mappings])
            holes = [dict(h, hva=hex(h['hva']), pfn=None if h['pfn'] is None else hex(h['pfn']))
                     for h in scanned.holes]
            view['scans'][method] = {'method': scanned.method, 'complete': scanned.complete,
                                     'reasons': scanned.reasons, 'holes': holes, 'stats': scanned.stats}
            log(f'collection scan ({scanned.method}): complete={scanned.complete} holes={holes}')
    finally:
        kpageflags.close()
    return view


def uffd_poison_experiment(name, hooks, page, pages):
    result = {'experiment': name, 'victim': 'uffd', 'page': page, 'pages': pages, 'swap_areas': swap_areas(),
              'hardware_corrupted_kb_before': hardware_corrupted_kb()}
    dmesg_take('pre')
    helper = Memhog(argv=['/usr/bin/uffd-poison', str(pages)], label='uffd-poison')
    ready = fields(last_line(helper.ready, 'READY'))
    pid, base = helper.proc.pid, int(ready['base'], 16)
    vaddr = base + page * PAGE
    result.update(pid=pid, base=hex(base), vaddr=hex(vaddr))
    log(f'{name}: pid {pid} page {page} vaddr {vaddr:#x}')
    result['api_plain'] = fields(last_line(helper.command('api 0', 'API'), 'API'))
    result['api_poison'] = fields(last_line(helper.command(f'api {UFFD_FEATURE_POISON:#x}', 'API'), 'API'))
    result['pagemap_before'] = pagemap_or_error(pid, vaddr)
    result['poison'] = fields(last_line(helper.command(f'poison {page}', 'POISON'), 'POISON'))
    result['pagemap_registered'] = pagemap_or_error(pid, vaddr)
    result['release'] = fields(last_line(helper.command('release', 'RELEASE'), 'RELEASE'))
    result['pagemap'] = pagemap_or_error(pid, vaddr)
    result['pagemap_self'] = fields(last_line(helper.command(f'pagemap {page}', 'PAGEMAP'), 'PAGEMAP'))
    result['pagemap_neighbours'] = [pagemap_or_error(pid, vaddr - PAGE), pagemap_or_error(pid, vaddr + PAGE)]
    try:
        raw = int(result['pagemap']['raw'], 16)
        result['collection'] = collection_view(COLLECTION_PATH, pid, base, pages * PAGE, vaddr, raw)
    except Exception as exc:  # recorded: the checks fail on it with this message
        result['collection'] = {'error': f'{exc.__class__.__name__}: {exc}'}
        log(f'{name}: collection view failed: {result["collection"]["error"]}')
    result['hooks'] = {'after-inject': hooks.run(name, 'after-inject', {
        'LAB_VICTIM_PID': pid, 'LAB_VICTIM_COMM': 'uffd-poison', 'LAB_VICTIM_IS_QEMU': 0,
        'LAB_VICTIM_ALIVE': int(helper.proc.poll() is None), 'LAB_VADDR': hex(vaddr)})}
    result['checkall'] = fields(last_line(helper.command(f'checkall {page}', 'CHECKALL'), 'CHECKALL'))
    result['neighbours'] = [fields(last_line(helper.command(f'check {n}', 'CHECK'), 'CHECK'))
                            for n in (page - 1, page + 1)]
    result['fork'] = helper.command(f'fork {page}', 'FORK')
    result['read'] = helper.command(f'read {page}', 'READ')
    result['dmesg_after_touch'] = dmesg_take(f'{name} after-touch')
    result['hardware_corrupted_kb_after'] = hardware_corrupted_kb()
    result['victim_exit'] = process_state(helper.finish())
    log(f'{name}: uffd-poison {result["victim_exit"]["text"]}')
    return result


# ----------------------------------------------------------------- holes ----
class InnerQemu:
    """An inner QEMU of the hole experiments: KVM, 64 MiB, the holes BIOS, COM1 on a socket
    (everything the guest prints also logged to a file), QMP on a socket."""

    def __init__(self, name, binary, extra_args, incoming=False):
        self.name, self.binary = name, binary
        self.qmp_path, self.com1_path = f'/tmp/{name}-qmp.sock', f'/tmp/{name}-com1.sock'
        self.serial_path, self.log_path = f'/tmp/{name}-serial.log', f'/tmp/{name}-qemu.log'
        self.argv = [binary, *extra_args, '-accel', 'kvm', '-m', str(GUEST_RAM >> 20), '-display', 'none',
                     '-nodefaults', '-name', f'{name},debug-threads=on', '-bios', HOLES_BIOS,
                     '-chardev', f'socket,id=com1,path={self.com1_path},server=on,wait=off,logfile={self.serial_path}',
                     '-serial', 'chardev:com1', '-qmp', f'unix:{self.qmp_path},server=on,wait=off']
        if incoming:  # stays paused after the migration (-S): the hole is checked before the guest runs
            self.argv += ['-S', '-incoming', 'defer']
        with open(self.log_path, 'w') as log_file:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=log_file,
                                         stderr=subprocess.STDOUT)
        self.qmp = QMP(self.qmp_path, self.proc)

    @property
    def pid(self):
        return self.proc.pid

    def state(self):
        return process_state(self.proc.poll())

    def alive(self):
        return self.proc.poll() is None

    def serial(self):
        return [line.rstrip('\r') for line in qemu_log_lines(self.serial_path)]

    def log(self):
        return qemu_log_lines(self.log_path)

    def wait_serial(self, predicate, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(predicate(line) for line in self.serial()):
                return True
            if not self.alive():
                return False
            time.sleep(0.5)
        return False

    def send(self, data):
        """Bytes to the guest's COM1 (the BIOS reads the hole on each byte)."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(self.com1_path)
            sock.sendall(data)
            time.sleep(0.5)

    def set_holes(self, state):
        return self.qmp.command('migrate-set-capabilities',
                                {'capabilities': [{'capability': 'x-poison-holes', 'state': state}]})

    def hva(self, gpa):
        answer = self.qmp.hmp(f'gpa2hva {gpa:#x}')
        return answer, int(answer.split()[-1], 16)

    def status(self):
        return self.qmp.command('query-status').get('return') if self.alive() else None

    def dump_sha256(self, start, length):
        """sha256 of guest RAM [start, start + length) as QEMU's pmemsave writes it."""
        path = f'/tmp/{self.name}-dump.bin'
        reply = self.qmp.command('pmemsave', {'val': start, 'size': length, 'filename': path}, timeout=300)
        if 'error' in reply or not os.path.exists(path):
            return {'error': json.dumps(reply)}
        digest, nonzero = hashlib.sha256(), 0
        with open(path, 'rb') as f:
            for chunk in iter(lambda: f.read(1 << 20), b''):
                digest.update(chunk)
                nonzero += len(chunk) - chunk.count(0)
        os.unlink(path)
        return {'start': hex(start), 'length': length, 'sha256': digest.hexdigest(), 'nonzero_bytes': nonzero}

    def stop(self):
        if self.alive():
            self.qmp.command('quit', timeout=20)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        try:
            return process_state(self.proc.wait(10))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return process_state(self.proc.wait())


def migrate_attempt(label, src, uri, holes, dest=None, timeout=180):
    """One migration of the poisoned source: its capability (None: left as it is), the reply,
    the states it went through, and how both sides ended."""
    log(f'{label}: migrate to {uri} with x-poison-holes={holes}')
    outcome = {'uri': uri, 'holes': holes}
    if holes is not None:
        outcome['set_capability'] = src.set_holes(holes)
    started = time.monotonic()
    outcome['reply'] = src.qmp.command('migrate', {'uri': uri})
    outcome['refused'] = 'error' in outcome['reply']
    states = []
    while not outcome['refused'] and time.monotonic() - started < timeout and src.alive():
        reply = src.qmp.command('query-migrate', timeout=10)
        info = reply.get('return', {})
        status = info.get('status')
        if status and (not states or states[-1] != status):
            states.append(status)
        if status in ('completed', 'failed', 'cancelled') or 'eof' in reply:
            outcome['query_migrate'] = info
            break
        time.sleep(0.3)
    if dest is not None and dest.alive():  # a failing destination exits right after the source sees it
        try:
            dest.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
    outcome['states'] = states
    outcome['duration_s'] = round(time.monotonic() - started, 3)
    outcome['source'] = src.state()
    outcome['source_status'] = src.status()
    outcome['source_log'] = src.log()
    if dest is not None:
        outcome['destination'] = dest.state()
        outcome['destination_status'] = dest.status()
        outcome['destination_migrate'] = dest.qmp.command('query-migrate').get('return') if dest.alive() else None
        outcome['destination_log'] = dest.log()
    outcome['dmesg'] = dmesg_take(f'{label} after-migrate')
    log(f'{label}: refused={outcome["refused"]} states={states} source {outcome["source"]["text"]}'
        + (f', destination {outcome["destination"]["text"]}' if dest is not None else ''))
    return outcome


def incoming(name, qemu, holes, uri):
    dest = InnerQemu(name, qemu['binary'], qemu['extra_args'], incoming=True)
    dest.set_holes(holes)
    dest.qmp.command('migrate-incoming', {'uri': uri})
    return dest


def destination_view(dest, gpa, src):
    """The destination after a completed migration, before its guest runs: QEMU's poison list,
    the kernel's pagemap at the hole (and the collection's reading of it), guest RAM except the
    hole compared with the source's; then the guest reads the hole."""
    view = {'status': dest.status(), 'hwpoison': dest.qmp.command('x-query-hwpoison')}
    view['gpa2hva'], hva = dest.hva(gpa)
    view['hva'] = hex(hva)
    view['pagemap'] = pagemap_or_error(dest.pid, hva)
    view['pagemap_neighbours'] = [pagemap_or_error(dest.pid, hva - PAGE), pagemap_or_error(dest.pid, hva + PAGE)]
    try:
        view['collection'] = collection_view(COLLECTION_PATH, dest.pid, hva, PAGE, hva, int(view['pagemap']['raw'], 16))
    except Exception as exc:  # recorded: the checks fail on it with this message
        view['collection'] = {'error': f'{exc.__class__.__name__}: {exc}'}
    ranges = [(0, gpa), (gpa + PAGE, GUEST_RAM - gpa - PAGE)]
    view['ram'] = {'source': [src.dump_sha256(*r) for r in ranges], 'destination': [dest.dump_sha256(*r) for r in ranges]}
    log(f'destination: hwpoison {view["hwpoison"]}, pagemap {view["pagemap"]}')
    view['cont'] = dest.qmp.command('cont')
    time.sleep(1)
    serial_before = len(dest.serial())
    dest.send(b'r')
    dest.wait_serial(lambda line: line.endswith(' AR') or (line.startswith('VALUE ') and len(line) == 14), 60)
    time.sleep(1)
    view['guest_read'] = dest.serial()[serial_before:]
    view['after_read'] = dest.state()
    view['status_after_read'] = dest.status()
    view['hwpoison_after_read'] = dest.qmp.command('x-query-hwpoison') if dest.alive() else None
    view['log'] = dest.log()
    view['events'] = dest.qmp.events
    view['dmesg'] = dmesg_take('destination after-read')
    log(f'destination guest read of the hole: {view["guest_read"]}; QEMU {view["after_read"]["text"]}')
    return view


def holes_experiment(name, hooks, qemu, source, gpa):
    patched = (qemu['binary'], qemu['extra_args'])
    binary, extra_args = patched if source == 'patched' else (STOCK_QEMU, [])
    result = {'experiment': name, 'victim': 'qemu-holes', 'source': source, 'qemu_binary': binary, 'gpa': hex(gpa),
              'early_kill': 0, 'swap_areas': swap_areas()}
    if not os.path.exists('/dev/kvm'):
        result['error'] = 'no /dev/kvm in the lab VM (kvm_amd did not load)'
        return result
    write_file(EARLY_KILL, 0)
    dmesg_take('pre')
    started = time.monotonic()
    qemus = []
    try:
        src = InnerQemu(f'{name}-src', binary, extra_args)
        qemus.append(src)
        result['argv'] = src.argv
        greeting = src.qmp.greeting or {}
        result['qemu_version'] = greeting.get('QMP', {}).get('version', {}).get('package')
        result['qmp_ready_s'] = round(time.monotonic() - started, 3)
        result['pid'] = src.pid
        result['cont'] = src.qmp.command('cont')
        result['guest_ready'] = src.wait_serial(lambda line: line == 'READY', 300)
        result['ready_s'] = round(time.monotonic() - started, 3)
        result['gpa2hva'], hva = src.hva(gpa)
        before = pagemap_entry(src.pid, hva)
        pfn = int(before['pfn'], 16)
        result.update(hva=hex(hva), vaddr=hex(hva), pfn=hex(pfn), pagemap_before=before,
                      kpageflags_before=kpageflags(pfn))
        if source == 'patched':
            result['hwpoison_before'] = src.qmp.command('x-query-hwpoison')
        log(f'{name}: QEMU pid {src.pid} gpa {gpa:#x} hva {hva:#x} pfn {pfn:#x}, poisoning')
        result['inject'] = inject_corrupt_pfn(pfn)
        src.qmp.wait_event('MEMORY_FAILURE', 30)
        # the guest's handler of QEMU's action-optional report (a complete line)
        src.wait_serial(lambda line: line.startswith('MCE ') and line.endswith((' AO', ' AR')), 30)
        after = kernel_view(f'{name} after-inject', src.pid, hva, pfn)
        after['victim'] = src.state()
        after['status'] = src.status()
        after['guest_serial'] = src.serial()
        if source == 'patched' and src.alive():
            after['hwpoison'] = src.qmp.command('x-query-hwpoison')
        after['qemu_log'] = src.log()
        result['after_inject'] = after
        result['hooks'] = {'after-inject': hooks.run(name, 'after-inject', {
            'LAB_VICTIM_PID': src.pid, 'LAB_VICTIM_COMM': read_text(f'/proc/{src.pid}/comm'), 'LAB_VICTIM_IS_QEMU': 1,
            'LAB_VICTIM_ALIVE': int(src.alive()), 'LAB_VADDR': hex(hva), 'LAB_HVA': hex(hva), 'LAB_PFN': hex(pfn),
            'LAB_GPA': hex(gpa), 'LAB_QEMU_NAME': src.name, 'LAB_QEMU_LOG': src.log_path,
            'LAB_QEMU_BINARY': binary, 'LAB_QEMU_ACCEL': 'kvm'})}
        attempts = result['attempts'] = {}
        if not src.alive():
            return result
        if source == 'stock':
            attempts['plain'] = migrate_attempt(f'{name} plain', src, MIGRATE_URI, None)
            return result
        attempts['guard'] = migrate_attempt(f'{name} guard', src, MIGRATE_URI, False)
        uri_other = f'unix:/tmp/{name}-other-mig.sock'
        other = incoming(f'{name}-other', qemu, False, uri_other)
        qemus.append(other)
        attempts['source-only'] = migrate_attempt(f'{name} source-only', src, uri_other, True, other)
        uri_dest = f'unix:/tmp/{name}-dest-mig.sock'
        dest = incoming(f'{name}-dest', qemu, True, uri_dest)
        qemus.append(dest)
        attempts['destination-only'] = migrate_attempt(f'{name} destination-only', src, uri_dest, False, dest)
        attempts['holes'] = migrate_attempt(f'{name} holes', src, uri_dest, True, dest)
        if attempts['holes'].get('states', [None])[-1:] == ['completed'] and dest.alive():
            result['destination'] = destination_view(dest, gpa, src)
        return result
    finally:
        result['duration_inner_s'] = round(time.monotonic() - started, 3)
        if qemus:
            result['events'] = qemus[0].qmp.events
        result['exits'] = {q.name: q.stop() for q in qemus}
        if qemus:
            result['victim_exit'] = result['exits'][qemus[0].name]
            result['guest_serial'] = qemus[0].serial()
        log(f'{name}: QEMU exits {json.dumps({k: v["text"] for k, v in result["exits"].items()})}')


def run_experiment(name, hooks, qemu):
    victim, params = EXPERIMENTS[name]
    if victim == 'memhog':
        return memhog_experiment(name, hooks, **params)
    if victim == 'uffd':
        return uffd_poison_experiment(name, hooks, **params)
    if victim == 'holes':
        return holes_experiment(name, hooks, qemu, **params)
    return qemu_experiment(name, hooks, qemu, **params)


def main(config_path):
    with open(config_path) as f:
        config = json.load(f)
    global COLLECTION_PATH  # pylint: disable=global-statement
    COLLECTION_PATH = config.get('collection_path', COLLECTION_PATH)
    hooks = Hooks(config.get('hooks', []))
    qemu = config['qemu']
    names = config.get('experiments') or [name for name, (victim, dummy) in EXPERIMENTS.items() if victim != 'holes']
    log(f'kernel {os.uname().release}; HardwareCorrupted {hardware_corrupted_kb()} kB; '
        f'/dev/kvm {"present" if os.path.exists("/dev/kvm") else "absent"}; '
        f'hwpoison injector {"present" if os.path.exists(CORRUPT_PFN) else "absent"}; experiments {names}')
    for name in names:
        log(f'=== {name}')
        started = time.monotonic()
        try:
            result = run_experiment(name, hooks, qemu)
        except Exception as exc:  # one broken experiment must not hide the others
            log(f'{name}: {exc.__class__.__name__}: {exc}')
            result = {'experiment': name, 'error': f'{exc.__class__.__name__}: {exc}'}
        result['duration_s'] = round(time.monotonic() - started, 3)
        result['kernel_release'] = os.uname().release
        emit_result(result)
    log(f'final HardwareCorrupted {hardware_corrupted_kb()} kB')
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else '/lab/config.json'))
