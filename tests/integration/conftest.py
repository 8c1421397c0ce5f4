# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Session fixtures shared by the integration tests."""
from __future__ import annotations

import os

import pytest

from patched_qemu_package import extract_binary, host_source_version, obtain_package


@pytest.fixture(scope="session")
def patched_binary(tmp_path_factory) -> dict:
    """The patched_qemu role's package for this machine (patched_qemu_package.py) and its binary."""
    if os.geteuid() != 0:
        pytest.skip("building and booting the poison lab needs root")
    workdir = tmp_path_factory.mktemp("patched-qemu")
    source_version = host_source_version()
    package = obtain_package(workdir, source_version)
    binary = extract_binary(package, workdir)
    assert binary.is_file()
    return {"binary": binary, "package": package, "source_version": source_version}
