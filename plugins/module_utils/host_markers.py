# -*- coding: utf-8 -*-
# Copyright (c) kvm_ras.poison_guard contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Small state files on a hypervisor: the evacuation lock, the cordon marker, the evacuation
journal and the saved XML of a VM being restarted (pure Python, no Ansible imports).

What they mean lives here too: ``lock_decision`` (acquire, re-enter, break or refuse the
per-host evacuation lock) and ``cordon_record`` (the cordon marker's content), with the
default paths the modules use.

The rules, one place for all of them:

- A file is read only when it is a regular file reached without following a symlink
  (``O_NOFOLLOW``); anything else is reported by its kind, never by its content, so a
  symlink to ``/etc/shadow`` is not echoed back in a task result.
- A file is written into a private temporary file created with ``O_CREAT|O_EXCL|O_NOFOLLOW``
  and mode 0600 (or the mode asked for) in the same directory, flushed to disk, then renamed
  over the target (``rename`` replaces a symlink, it never writes through it).
- ``create_exclusive`` publishes a complete file only if none exists (``link(2)`` of the
  finished temporary file): no reader ever sees a half-written lock.
- The directory holding them must be a real directory (not a symlink), owned by the user
  that writes (root on a hypervisor) and not writable by group or others; it is created
  with the mode asked for when missing.
"""

from __future__ import annotations

import errno
import json
import os
import stat

MAX_MARKER_BYTES = 1024 * 1024

# Where the markers live on a hypervisor (module defaults).
DEFAULT_LOCK_PATH = "/run/kvm_ras/evacuation.lock"
DEFAULT_CORDON_PATH = "/var/lib/kvm_ras/cordon.json"

# What evacuation_lock does with the lock it finds (lock_decision).
LOCK_ACQUIRE = "acquire"
LOCK_REENTER = "reenter"
LOCK_BREAK = "break"
LOCK_REFUSE = "refuse"


class MarkerError(Exception):
    """A marker file or its directory cannot be used; the message names the path and the fix."""


def _kind(mode):
    if stat.S_ISLNK(mode):
        return "a symlink"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def read_bytes(path, limit=MAX_MARKER_BYTES):
    """The bytes of a regular file, or None when it does not exist.

    Raises MarkerError (naming the path, the kind of thing found and the fix) for a symlink,
    a directory, a FIFO or device, a file larger than ``limit``, or an OS error.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise MarkerError("%s is a symlink, not a file this collection wrote: refused (remove it, "
                              "then run again)" % path) from None
        if exc.errno == errno.EISDIR:
            raise MarkerError("%s is a directory, not a file: remove or rename it, then run again" % path) from None
        raise MarkerError("cannot read %s: %s" % (path, exc.strerror or exc)) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise MarkerError("%s is %s, not a file this collection wrote: refused (remove it, then run "
                              "again)" % (path, _kind(info.st_mode)))
        if info.st_size > limit:
            raise MarkerError("%s holds %d bytes, more than a marker of this collection (%d at most): "
                              "refused (inspect and remove it, then run again)" % (path, info.st_size, limit))
        chunks, size = [], 0
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                raise MarkerError("%s grew beyond %d bytes while it was read: refused" % (path, limit))
        return b"".join(chunks)
    except OSError as exc:
        raise MarkerError("cannot read %s: %s" % (path, exc.strerror or exc)) from None
    finally:
        os.close(fd)


def read_json_marker(path, limit=MAX_MARKER_BYTES):
    """(record, problem) of a JSON marker file.

    ``record`` is None when the file does not exist, the JSON object it holds, or
    ``{"unreadable": why}`` when it exists but is not a JSON object (the reason names its
    size and kind, never its content). ``problem`` is a sentence when the file could not be
    read at all (symlink, directory, OS error); then ``record`` is ``{"unreadable": problem}``.
    """
    try:
        data = read_bytes(path, limit)
    except MarkerError as exc:
        return {"unreadable": str(exc)}, str(exc)
    if data is None:
        return None, None
    try:
        record = json.loads(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        return {"unreadable": "%s is not JSON (%d bytes; its content is not shown)" % (path, len(data))}, None
    if not isinstance(record, dict):
        return {"unreadable": "%s holds JSON that is not an object" % path}, None
    return record, None


def ensure_directory(path, mode=0o700):
    """Create ``path`` (and missing parents) when needed and check that it is safe to write in.

    Safe: a real directory (not a symlink to one), owned by this user, not writable by group
    or others. Raises MarkerError naming the path and the fix.
    """
    if not path:
        raise MarkerError("no directory given")
    try:
        os.makedirs(path, mode=mode, exist_ok=True)
    except OSError as exc:
        raise MarkerError("cannot create the directory %s: %s" % (path, exc.strerror or exc)) from None
    try:
        info = os.lstat(path)
    except OSError as exc:
        raise MarkerError("cannot inspect the directory %s: %s" % (path, exc.strerror or exc)) from None
    if stat.S_ISLNK(info.st_mode):
        raise MarkerError("%s is a symlink: the collection's state directory must be a real directory "
                          "(remove the link, then run again)" % path)
    if not stat.S_ISDIR(info.st_mode):
        raise MarkerError("%s is %s, not a directory: remove or rename it, then run again" % (path, _kind(info.st_mode)))
    if info.st_uid != os.geteuid():
        raise MarkerError("%s belongs to uid %d, not to uid %d that writes in it: fix its owner "
                          "(chown), then run again" % (path, info.st_uid, os.geteuid()))
    if info.st_mode & 0o022:
        raise MarkerError("%s is writable by group or others (mode %04o): make it private "
                          "(chmod go-w), then run again" % (path, stat.S_IMODE(info.st_mode)))
    return path


def _write_temp(path, data, mode):
    directory = os.path.dirname(path) or "."
    base = os.path.basename(path)
    for _attempt in range(100):
        tmp = os.path.join(directory, ".%s.%s.tmp" % (base, os.urandom(6).hex()))
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), mode)
        except FileExistsError:
            continue
        try:
            os.fchmod(fd, mode)  # the umask may have narrowed it
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            _unlink_quietly(tmp)
            raise
        os.close(fd)
        return tmp
    raise MarkerError("cannot create a temporary file next to %s" % path)


def _unlink_quietly(path):
    try:
        os.unlink(path)
    except OSError:
        pass


def _fsync_directory(directory):
    try:
        fd = os.open(directory or ".", os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def encode(record):
    return (json.dumps(record, sort_keys=True, default=str) + "\n").encode("utf-8")


def replace_file(path, data, mode=0o600):
    """Replace ``path`` with ``data`` (bytes) atomically in a directory the caller chose.

    The one atomic write of the collection: a private temporary file next to ``path``, flushed,
    then renamed over it (a symlink at ``path`` is replaced, never written through). The
    directory is not checked (``write_atomic`` does that for the collection's state
    directories); an OSError is raised as it is.
    """
    tmp = _write_temp(path, data, mode)
    try:
        os.rename(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    _fsync_directory(os.path.dirname(path))
    return path


def write_atomic(path, data, mode=0o600, dir_mode=0o700):
    """Replace ``path`` with ``data`` (bytes) atomically in a checked state directory; never
    writes through a symlink. Raises MarkerError."""
    ensure_directory(os.path.dirname(path) or ".", dir_mode)
    try:
        return replace_file(path, data, mode)
    except OSError as exc:
        raise MarkerError("cannot write %s: %s" % (path, exc.strerror or exc)) from None


def write_json_atomic(path, record, mode=0o600, dir_mode=0o700):
    return write_atomic(path, encode(record), mode, dir_mode)


def create_exclusive(path, record, mode=0o600, dir_mode=0o700):
    """Publish ``record`` at ``path`` only if nothing (file, symlink, anything) is there.

    Returns True when created, False when ``path`` already exists. The file appears complete
    (``link(2)`` of a finished temporary file), so a reader never sees it half written.
    """
    directory = ensure_directory(os.path.dirname(path) or ".", dir_mode)
    try:
        tmp = _write_temp(path, encode(record), mode)
    except OSError as exc:
        raise MarkerError("cannot write %s: %s" % (path, exc.strerror or exc)) from None
    try:
        os.link(tmp, path, follow_symlinks=False)
    except FileExistsError:
        return False
    except OSError as exc:
        raise MarkerError("cannot create %s: %s" % (path, exc.strerror or exc)) from None
    finally:
        _unlink_quietly(tmp)
    _fsync_directory(directory)
    return True


def remove(path):
    """Remove a marker (a symlink is removed, never followed). True when something was removed."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise MarkerError("cannot remove %s: %s" % (path, exc.strerror or exc)) from None
    _fsync_directory(os.path.dirname(path))
    return True


def lock_decision(existing, owner, now, stale_after=0, break_lock=False):
    """Decide on the per-host evacuation lock.

    ``existing``: the lock file's record ({owner, since (epoch seconds), ...}), None when no
    lock exists, or {"unreadable": text} when the file exists but cannot be parsed (such a
    lock is held: it is refused unless broken on purpose).
    Returns (decision, message): acquire (free), reenter (ours), break (stale or forced),
    refuse (another run holds it).
    """
    if existing is None:
        return LOCK_ACQUIRE, "lock free"
    if existing.get("owner") == owner and owner:
        return LOCK_REENTER, "lock already held by this run"
    holder = "run %s from %s since %s" % (existing.get("owner") or "?", existing.get("controller") or "?",
                                          existing.get("since_iso") or existing.get("since") or "?")
    if existing.get("unreadable") is not None:
        holder = "an unreadable lock file (%s)" % existing["unreadable"]
    if break_lock:
        return LOCK_BREAK, "breaking the lock held by %s (evacuate_break_lock=true)" % holder
    since = existing.get("since")
    if stale_after and isinstance(since, (int, float)) and now - since > stale_after:
        return LOCK_BREAK, "breaking the stale lock held by %s (older than %d s)" % (holder, stale_after)
    return LOCK_REFUSE, ("another evacuation of this host is running (lock held by %s). Wait for it to "
                         "finish. If that run is dead (its controller crashed or was killed), re-run with "
                         "-e evacuate_break_lock=true" % holder)


def cordon_record(reason, by, now_iso):
    """The content of the cordon marker (readable by external schedulers)."""
    return {"cordoned": True, "reason": reason, "by": by, "since": now_iso}
