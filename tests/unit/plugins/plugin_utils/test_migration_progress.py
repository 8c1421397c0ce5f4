# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The progress line live_migrate prints while a VM migrates (plugin_utils/migration_progress).

The samples are shaped like libvirt's virDomainGetJobStats() keys as live_migrate records them
(data_total/data_remaining/memory_bps/memory_iteration), e.g. what libvirt 9.0 reported in the
migrate scenario for a 256 MiB guest throttled to 1 MiB/s."""

from __future__ import annotations

from ansible_collections.kvm_ras.poison_guard.plugins.plugin_utils.migration_progress import (
    format_progress,
    human_bytes,
    human_seconds,
    progress_numbers,
)

MIB = 1 << 20


def test_a_running_migration_says_percent_rate_and_time_left():
    sample = {"data_total": 256 * MIB, "data_remaining": 64 * MIB, "memory_bps": 1 * MIB,
              "memory_iteration": 1, "elapsed_s": 192.4}
    assert progress_numbers(sample) == (75.0, 1 * MIB, 64.0)
    assert format_progress("web01", "hv2", sample) == (
        "web01 -> hv2: 75% of 256.0 MiB, 1.0 MiB/s, about 64 s left (pass 1, 3 min 12 s so far)")


def test_before_libvirt_knows_anything_the_line_says_so():
    assert format_progress("db 1", "hv3", None, elapsed=4.2) == "db 1 -> hv3: starting (4 s so far)"
    line = format_progress("db 1", "hv3", {"elapsed_s": 5})
    assert line == "db 1 -> hv3: size not known yet, rate not known yet, time left not known yet (5 s so far)"


def test_remaining_may_exceed_total_when_pages_are_dirtied_again():
    percent, _rate, _left = progress_numbers({"data_total": 100, "data_remaining": 150, "memory_bps": 10})
    assert percent == 0.0


def test_units():
    assert human_bytes(None) == "?" and human_bytes(512) == "512 B" and human_bytes(3 << 30) == "3.0 GiB"
    assert human_seconds(59.6) == "60 s" and human_seconds(3600) == "60 min 00 s"
    assert human_seconds(7300) == "2 h 01 min"
