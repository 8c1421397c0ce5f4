# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The machine the lab runs on: commands, processes, state files, free disk space, packages,
the lab's lock, and the rollback that undoes what a failed run started."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from .config import APT_OPTIONS, LOCK_FILE, LOCK_TIMEOUT, STATE_DIR, SYSTEM_PATH
from .errors import LabError


def log(message: str) -> None:
    print(f"hvlab: {message}", file=sys.stderr, flush=True)


def run(argv, *, check=True, input_text=None, timeout=600, env=None, what=None):
    """Run argv (a list, never a shell string) and return the CompletedProcess."""
    try:
        result = subprocess.run(
            [str(a) for a in argv], input=input_text, capture_output=True, text=True,
            timeout=timeout, env=env, check=False,
        )
    except FileNotFoundError as error:
        raise LabError(f"{argv[0]} is not installed ({error})") from error
    except subprocess.TimeoutExpired as error:
        raise LabError(f"{what or ' '.join(map(str, argv[:3]))} did not finish within {timeout} s") from error
    if check and result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()[-5:]
        raise LabError(f"{what or ' '.join(map(str, argv[:3]))} failed (exit {result.returncode}): "
                       + " | ".join(detail))
    return result


def which(command: str) -> str | None:
    return shutil.which(command, path=os.environ.get("PATH", "") + os.pathsep + SYSTEM_PATH)


def process_alive(pid: int, name: str | None = None) -> bool:
    """True if pid runs (zombies count as gone) and, if given, its command name is name."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    comm = stat[stat.index("(") + 1:stat.rindex(")")]
    state = stat[stat.rindex(")") + 2:].split()[0]
    if state in ("Z", "X"):
        return False
    return name is None or comm == name


def processes_named(name: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and process_alive(int(entry.name), name):
            pids.append(int(entry.name))
    return sorted(pids)


def child_pids(parent: int) -> list[int]:
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat[stat.rindex(")") + 2:].split()[1]) == parent:
            children.append(int(entry.name))
    return children


def wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        if not process_alive(pid):
            return True
        time.sleep(0.2)
    return not process_alive(pid)


def read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(temporary, path)


def check_root() -> None:
    if os.geteuid() != 0:
        raise LabError("lab/hvlab must run as root: it installs packages, starts dockerd and "
                       "runs privileged containers",
                       "run it as root, e.g. `sudo lab/hvlab ...`")


def free_mib(path: Path) -> tuple[int, int]:
    """(free MiB for root, st_dev) of the filesystem holding path or its nearest parent."""
    probe = path
    while not probe.exists():
        probe = probe.parent
    stats = os.statvfs(probe)
    return stats.f_bavail * stats.f_frsize // (1024 * 1024), os.stat(probe).st_dev


def check_disk(needs: list[tuple[Path, int, str]]) -> None:
    """needs: (path, MiB, what for). Needs on one filesystem add up."""
    override = os.environ.get("HVLAB_MIN_FREE_MIB")
    by_device: dict[int, dict] = {}
    for path, mib, purpose in needs:
        if override:
            mib = int(override)
        available, device = free_mib(path)
        entry = by_device.setdefault(device, {"free": available, "need": 0, "what": [], "path": path})
        entry["need"] = max(entry["need"], mib) if override else entry["need"] + mib
        entry["what"].append(f"{purpose} ({path})")
    for entry in by_device.values():
        if entry["free"] < entry["need"]:
            raise LabError(
                f"not enough free disk space: {entry['free']} MiB free on the filesystem of "
                f"{entry['path']}, the lab needs {entry['need']} MiB there for "
                + ", ".join(entry["what"]),
                "free some space there (e.g. `docker image prune`, remove old files) and run the "
                "command again; docs/lab.md lists the thresholds")


def read_sysctl(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def link_exists(name: str) -> bool:
    return Path(f"/sys/class/net/{name}").exists()


def tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return "(no log)"


def ensure_packages(tools: dict[str, str]) -> None:
    """tools: command -> Debian package providing it; installs the packages of missing ones."""
    packages = sorted({package for command, package in tools.items() if not which(command)})
    if not packages:
        return
    if not which("apt-get"):
        raise LabError(f"missing {', '.join(packages)} and apt-get is not available",
                       "install them by hand, then run the command again")
    log(f"installing {' '.join(packages)} (apt-get)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    run(["apt-get", *APT_OPTIONS, "update"], env=env, timeout=900, what="apt-get update")
    run(["apt-get", *APT_OPTIONS, "install", "-y", "--no-install-recommends", *packages],
        env=env, timeout=1800, what=f"apt-get install {' '.join(packages)}")


class Rollback:
    """Undo steps of a run, applied in reverse order if the run fails."""

    def __init__(self):
        self.steps = []

    def add(self, what, action, *args):
        self.steps.append((what, action, args))

    def undo(self):
        for what, action, args in reversed(self.steps):
            log(f"rolling back: {what}")
            try:
                action(*args)
            except Exception as error:  # keep undoing the rest
                log(f"  could not {what}: {error}")
        self.steps.clear()


def tcp_open(address: str, port: int, timeout: float = 2.0) -> bool:
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def lab_lock():
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    with open(LOCK_FILE, "a+") as handle:
        deadline = time.monotonic() + LOCK_TIMEOUT
        announced = False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not announced:
                    handle.seek(0)
                    log(f"waiting for another lab/hvlab run ({handle.read().strip() or 'unknown'})")
                    announced = True
                if time.monotonic() > deadline:
                    raise LabError(f"another lab/hvlab run held {LOCK_FILE} for {LOCK_TIMEOUT} s",
                                   "wait for it to finish or stop it") from None
                time.sleep(1)
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}: {' '.join(sys.argv[1:])}\n")
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            fcntl.flock(handle, fcntl.LOCK_UN)
