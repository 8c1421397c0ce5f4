# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The patched_qemu role's package for this machine, as the integration tests and benchmarks use it.

The package comes from the role's own build entry point, run with ansible-playbook on this
machine as the builder. In `make test` it is a cache hit: the Molecule scenario built it into the
same controller cache (/var/cache/kvm_ras/ci/patched_qemu outside the git clone, or
$KVM_RAS_PATCHED_QEMU_CACHE; the package checksums in /var/lib/kvm_ras/ci/patched_qemu.sha256, or
$KVM_RAS_PATCHED_QEMU_CHECKSUMS); run alone, it is built once (about 8 minutes on 2 quiet cores,
plus the build dependencies on a fresh machine). The session fixture ``patched_binary`` is in
tests/integration/conftest.py.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("KVM_RAS_PATCHED_QEMU_CACHE") or "/var/cache/kvm_ras/ci/patched_qemu")
CHECKSUMS = Path(os.environ.get("KVM_RAS_PATCHED_QEMU_CHECKSUMS") or "/var/lib/kvm_ras/ci/patched_qemu.sha256")


def host_source_version() -> str:
    proc = subprocess.run(["dpkg-query", "--show", "--showformat=${source:Version}", "qemu-system-x86"],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0 or not proc.stdout.strip():
        # the poison lab installs qemu-system-x86 on this machine; let it do so first
        sys.path.insert(0, str(REPO / "lab" / "poison"))
        from poisonlab import hostsetup  # pylint: disable=import-outside-toplevel

        hostsetup.ensure_packages(install=True)
        proc = subprocess.run(["dpkg-query", "--show", "--showformat=${source:Version}", "qemu-system-x86"],
                              capture_output=True, text=True, check=True)
    return proc.stdout.strip()


def obtain_package(workdir: Path, source_version: str) -> dict:
    """The role's build entry point on localhost; returns its patched_qemu_packages record."""
    playbook = workdir / "build.yml"
    out = workdir / "packages.json"
    playbook.write_text(textwrap.dedent(f"""\
        - name: Obtain the patched QEMU package for this machine
          hosts: localhost
          gather_facts: false
          tasks:
            - name: Build or reuse
              ansible.builtin.include_role:
                name: kvm_ras.poison_guard.patched_qemu
                tasks_from: build
              vars:
                patched_qemu_builder: localhost
                patched_qemu_build_source_versions: [{json.dumps(source_version)}]
                patched_qemu_controller_cache_dir: {json.dumps(str(CACHE))}
                patched_qemu_checksum_file: {json.dumps(str(CHECKSUMS))}
            - name: Write the package record
              ansible.builtin.copy:
                content: "{{{{ patched_qemu_packages | to_json }}}}"
                dest: {json.dumps(str(out))}
                mode: "0644"
        """))
    inventory = workdir / "inventory.ini"
    inventory.write_text("localhost ansible_connection=local ansible_python_interpreter=/usr/bin/python3\n")
    ansible_playbook = Path(sys.executable).with_name("ansible-playbook")
    proc = subprocess.run([str(ansible_playbook), "-i", str(inventory), str(playbook)],
                          capture_output=True, text=True, check=False, cwd=str(REPO), timeout=5400)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())[source_version]


def extract_binary(package: dict, workdir: Path) -> Path:
    """qemu-system-x86_64 of the package, unpacked under workdir."""
    root = workdir / "root"
    subprocess.run(["dpkg-deb", "--extract", package["path"], str(root)], check=True)
    return root / "usr" / "bin" / "qemu-system-x86_64"
