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

UPSTREAM_REFUSAL = "Can't migrate this vm with hardware poisoned memory, please reboot the vm and try again"
