# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Entry decoding and special swap type derivation against values real kernels produced."""

from __future__ import annotations

import gzip

import pytest

from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.poison import encoding as enc
from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.poison import swaptype

import scenarios


@pytest.mark.parametrize("raw, swap_type, offset", [
    (scenarios.BRIEF_ENTRY, 26, 0xF545),      # Debian 6.1, the task's example
    (scenarios.KVMMCE_PAGEMAP, 26, 0xF945),   # Debian 6.1, kvmmce inner QEMU
    (0x408000000011A1BA, 26, 0x8D0D),         # Debian 6.1, memhog
    (scenarios.ENTRY_612, 27, 0x9C13),        # Debian 6.12, memhog
    (scenarios.POISON_MARKER, 31, 2),         # 6.18 UFFDIO_POISON marker
    (scenarios.GUARD_MARKER, 31, 4),          # 6.18 MADV_GUARD_INSTALL marker
])
def test_swap_entries_decode_to_type_and_offset(raw, swap_type, offset):
    entry = enc.PagemapEntry(raw)
    assert entry.swap_format and not entry.present
    assert entry.swap_type == swap_type
    assert entry.swap_offset == offset
    rebuilt = enc.encode_swap_entry(swap_type, offset, soft_dirty=bool(raw & enc.PM_SOFT_DIRTY))
    assert rebuilt | (raw & enc.PM_GUARD_REGION) == raw


def test_present_entry_and_remapped_entry():
    entry = enc.PagemapEntry(0x8180000000008D0D)  # 6.1 memhog page before poisoning
    assert entry.present and entry.pfn == 0x8D0D and entry.swap_type is None
    after_reset = enc.PagemapEntry(scenarios.KVM_RESET_PAGEMAP)
    assert not after_reset.present and not after_reset.swap_format
    assert enc.encode_present_entry(0x8D0D) == 0x8180000000008D0D


@pytest.mark.parametrize("flags, poisoned", [
    (scenarios.KPF_61_POISONED, True), (scenarios.KPF_612_POISONED, True),
    (scenarios.KPF_61_BEFORE, False), (scenarios.KPF_THP_TAIL, False),
    (0x000000040040D828, False),  # THP head before poisoning
])
def test_kpageflags_hwpoison_bit(flags, poisoned):
    assert enc.has_hwpoison(flags) is poisoned


@pytest.mark.parametrize("version, config, hwpoison, marker, swapin", [
    ((6, 1), scenarios.DEBIAN_61_CONFIG, 26, 30, 31),      # Debian 12 amd64
    ((6, 12), scenarios.DEBIAN_612_CONFIG, 27, 31, None),  # Debian 13 amd64
    ((6, 1), "CONFIG_MEMORY_FAILURE=y\nCONFIG_MIGRATION=y\n", 27, None, 31),  # no PTE_MARKER
    ((5, 10), "CONFIG_MEMORY_FAILURE=y\nCONFIG_MIGRATION=y\nCONFIG_DEVICE_PRIVATE=y\n", 27, None, None),
    ((5, 14), "CONFIG_MEMORY_FAILURE=y\nCONFIG_MIGRATION=y\nCONFIG_DEVICE_PRIVATE=y\n", 25, None, None),
    ((6, 8), "CONFIG_MEMORY_FAILURE=y\nCONFIG_MIGRATION=y\nCONFIG_DEVICE_PRIVATE=y\n", 23, 31, None),
    ((6, 15), "CONFIG_MEMORY_FAILURE=y\nCONFIG_MIGRATION=y\nCONFIG_DEVICE_PRIVATE=y\n", 24, 31, None),
    ((6, 12), "# CONFIG_MEMORY_FAILURE is not set\nCONFIG_MIGRATION=y\n", None, 31, None),
])
def test_special_types_follow_the_kernel_table(version, config, hwpoison, marker, swapin):
    types = swaptype.derive_special_types(version, swaptype.parse_config(config))
    assert types["hwpoison"] == hwpoison
    assert types["pte_marker"] == marker
    assert types["swapin_error"] == swapin


def test_without_config_only_the_marker_type_of_new_kernels_is_known():
    assert swaptype.derive_special_types((6, 12), None)["hwpoison"] is None
    assert swaptype.derive_special_types((6, 12), None)["pte_marker"] == 31
    assert swaptype.derive_special_types((6, 1), None)["pte_marker"] is None
    assert swaptype.derive_special_types(None, {})["hwpoison"] is None


def test_kernel_version_and_config_files(tmp_path):
    assert swaptype.parse_kernel_version("6.1.0-56-amd64") == (6, 1)
    assert swaptype.parse_kernel_version("6.12.95+deb12-amd64") == (6, 12)
    assert swaptype.parse_kernel_version("garbage") is None
    boot = tmp_path / "boot"
    proc = tmp_path / "proc"
    boot.mkdir()
    proc.mkdir()
    with gzip.open(proc / "config.gz", "wt") as handle:
        handle.write(scenarios.DEBIAN_612_CONFIG)
    config, path, problems = swaptype.read_kernel_config("6.12.95", str(boot), str(proc))
    assert path.endswith("config.gz") and config["CONFIG_MEMORY_FAILURE"] == "y"
    assert config["CONFIG_DEVICE_PRIVATE"] == "n" and problems == []
    (boot / "config-6.12.95").write_text("CONFIG_MEMORY_FAILURE=y\n")
    config, path, problems = swaptype.read_kernel_config("6.12.95", str(boot), str(proc))
    assert path == str(boot / "config-6.12.95") and problems == []
    (proc / "config.gz").write_bytes(b"not gzip")
    config, path, problems = swaptype.read_kernel_config("other", str(boot), str(proc))
    assert config is None and path is None and "config.gz" in problems[0]
