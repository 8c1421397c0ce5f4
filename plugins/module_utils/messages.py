# -*- coding: utf-8 -*-
# Copyright (c) kvm_ras.poison_guard contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Messages shared by every part of the collection.

``UPSTREAM_REFUSAL`` is, word for word, the error upstream QEMU (9.0+, commit 06152b89,
``migration/migration.c:migrate_prepare()``) raises when ``migrate`` is asked of a VM whose
guest RAM holds hardware-poisoned pages. The collection reports it for every poisoned VM it
refuses to move, so operators see the same sentence whether QEMU or the collection said no.
"""

from __future__ import annotations

import errno

UPSTREAM_REFUSAL = "Can't migrate this vm with hardware poisoned memory, please reboot the vm and try again"


def describe_os_error(exc, doing):
    """One sentence for an OSError: what was being done, the path, what the error means and the
    fix, instead of a bare ``[Errno 21] Is a directory: '/x'``."""
    path = getattr(exc, "filename", None)
    code = getattr(exc, "errno", None)
    text = getattr(exc, "strerror", None) or str(exc)
    fixes = {
        errno.EISDIR: "it is a directory; give the path of a file",
        errno.ENOTDIR: "a part of it is not a directory; check the path",
        errno.ENOENT: "it does not exist; check the path (and that the task runs on the right host)",
        errno.EACCES: "permission denied; run the task as root (become: true)",
        errno.EPERM: "operation not permitted; run the task as root (become: true) on the host itself",
        errno.EROFS: "the file system is read-only; choose a writable location",
        errno.ENOSPC: "the file system is full; free space or choose another location",
    }
    fix = fixes.get(code, text)
    if path:
        return "%s: %s: %s" % (doing, path, fix if code in fixes else text)
    return "%s: %s" % (doing, fix)
