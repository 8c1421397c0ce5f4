# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The patched_qemu role leaves a host alone whose distribution QEMU already has the guard.

Proof on a real Debian 13 (trixie): an image is built with mmdebstrap from this machine's own
Debian mirror (the apt sources of its bookworm entries, with the suite names changed to
trixie) holding trixie's ``qemu-system-x86`` (QEMU 10.0, which carries the upstream refusal
"Can't migrate this vm with hardware poisoned memory"), then imported with ``docker import``
into the hypervisor lab's dockerd. The role runs against a container of that image with
``patched_qemu_state: present``, in check mode and for real, and must:

- detect the guard in the stock binary and say "already carries the guard: left alone";
- build nothing (no builder is configured, and none is needed), install nothing, divert
  nothing, hold nothing: the binary, dpkg's diversions and apt's holds are byte-for-byte
  what they were;
- report ``changed=0``.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import re
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="builds an image and runs docker: needs root"),
]

REPO = Path(__file__).resolve().parents[2]
HVLAB = REPO / "lab" / "hvlab"
SUITE = "trixie"
PACKAGES = ["qemu-system-x86", "python3", "apt"]
IMAGE_REPOSITORY = "kvm-ras/trixie-qemu"
BINARY = "/usr/bin/qemu-system-x86_64"


def _hvlab_module():
    """The image module of the lab's package lab/hvlab.d/hvlab (apt sources, mmdebstrap options)."""
    package_dir = str(REPO / "lab" / "hvlab.d")
    if package_dir not in sys.path:
        sys.path.insert(0, package_dir)
    return importlib.import_module("hvlab.image")


def _docker(*args, timeout=300, check=True):
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, check=check)


def trixie_sources(bookworm_sources: str) -> str:
    """The machine's bookworm deb822 sources with each suite renamed to its trixie twin."""
    return re.sub(r"\bbookworm(?=(-updates|-security)?\b)", SUITE, bookworm_sources)


def test_trixie_sources_rename_every_suite():
    text = ("Types: deb\nURIs: http://mirror.invalid/debian\nSuites: bookworm bookworm-updates\n\n"
            "Types: deb\nURIs: http://mirror.invalid/debian-security\nSuites: bookworm-security\n")
    renamed = trixie_sources(text)
    assert "bookworm" not in renamed
    assert "Suites: trixie trixie-updates" in renamed
    assert "Suites: trixie-security" in renamed


@pytest.fixture(scope="module")
def trixie_image(tmp_path_factory):
    up = subprocess.run([str(HVLAB), "up"], capture_output=True, text=True, timeout=1800, check=False)
    assert up.returncode == 0, up.stdout + up.stderr  # the lab's dockerd, shared with the other tests
    hvlab = _hvlab_module()
    sources = trixie_sources(hvlab.machine_apt_sources())
    assert f"Suites: {SUITE}" in sources, sources
    options = list(hvlab.MMDEBSTRAP_OPTIONS)
    key = hashlib.sha256(json.dumps([SUITE, PACKAGES, options, sources]).encode()).hexdigest()[:12]
    reference = f"{IMAGE_REPOSITORY}:{key}"
    if _docker("image", "inspect", reference, check=False).returncode != 0:
        scratch = tmp_path_factory.mktemp("trixie")
        (scratch / "apt.sources").write_text(sources)
        log_path = scratch / "mmdebstrap.log"
        with open(log_path, "wb") as log:
            builder = subprocess.Popen(
                ["mmdebstrap", *options, "--include=" + ",".join(PACKAGES), SUITE, "-",
                 str(scratch / "apt.sources")], stdout=subprocess.PIPE, stderr=log)
            importer = subprocess.Popen(["docker", "import", "-", reference], stdin=builder.stdout,
                                        stdout=subprocess.DEVNULL, stderr=log)
            builder.stdout.close()
            importer.wait(timeout=1800)
            builder.wait(timeout=60)
        assert builder.returncode == 0 and importer.returncode == 0, log_path.read_text()[-3000:]
    return reference


@pytest.fixture()
def trixie_host(trixie_image):
    name = f"pq-trixie-{uuid.uuid4().hex[:8]}"
    _docker("run", "--detach", "--name", name, "--network", "none", trixie_image, "sleep", "infinity")
    try:
        yield name
    finally:
        _docker("rm", "--force", name, check=False)


def _state(host: str) -> dict:
    """What the role must not change: the binary, dpkg's diversions, apt's holds, the packages."""
    def sh(*argv):
        return _docker("exec", host, *argv).stdout
    return {
        "binary_sha256": sh("sha256sum", BINARY).split()[0],
        "diversions": sh("dpkg-divert", "--list"),
        "holds": sh("apt-mark", "showhold"),
        "packages": sh("dpkg-query", "--show", "--showformat=${Package} ${Version} ${Status}\\n"),
    }


def _run_role(workdir: Path, host: str, *extra: str) -> subprocess.CompletedProcess:
    inventory = workdir / "inventory.yml"
    inventory.write_text(textwrap.dedent(f"""\
        all:
          children:
            hypervisors:
              hosts:
                {host}:
                  ansible_connection: community.docker.docker
        """))
    playbook = workdir / "play.yml"
    playbook.write_text(textwrap.dedent("""\
        - name: Guard the QEMU of a host that already has it
          hosts: hypervisors
          gather_facts: false
          tasks:
            - name: Run the role
              ansible.builtin.include_role:
                name: kvm_ras.poison_guard.patched_qemu
              vars:
                patched_qemu_state: present
                patched_qemu_become: false
            - name: Keep the role's report on the controller
              ansible.builtin.copy:
                content: "{{ patched_qemu_report | to_json }}"
                dest: "{{ report_file }}"
                mode: "0600"
              delegate_to: localhost
              check_mode: false
              changed_when: false
        """))
    env = {**os.environ, "ANSIBLE_FORCE_COLOR": "0", "ANSIBLE_NOCOLOR": "1", "ANSIBLE_STDOUT_CALLBACK": "default",
           "ANSIBLE_CALLBACK_RESULT_FORMAT": "json"}
    return subprocess.run(["ansible-playbook", "-i", str(inventory), str(playbook),
                           "-e", json.dumps({"report_file": str(workdir / "report.json"),
                                             "ansible_python_interpreter": "/usr/bin/python3"}), *extra],
                          cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=1200, check=False)


def _recap(output: str, host: str) -> dict:
    match = re.search(re.escape(host) + r"\s*:\s*(.*)", output.split("PLAY RECAP", 1)[-1])
    assert match, output[-3000:]
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", match.group(1))}


def test_role_leaves_a_guarded_trixie_qemu_alone(trixie_host, tmp_path):
    version = _docker("exec", trixie_host, "dpkg-query", "--show", "--showformat=${Version}", "qemu-system-x86").stdout
    assert re.match(r"^(\d+:)?(\d+)\.", version) and int(re.match(r"^(?:\d+:)?(\d+)\.", version).group(1)) >= 9, version
    guard = _docker("exec", trixie_host, "grep", "-c", "-a", "-F", "hardware poisoned memory", BINARY, check=False)
    assert int(guard.stdout.strip() or 0) > 0, "trixie's QEMU carries the upstream refusal"
    before = _state(trixie_host)

    for extra in (["--check", "--diff"], []):
        run = _run_role(tmp_path, trixie_host, *extra)
        output = run.stdout + run.stderr
        assert run.returncode == 0, output[-4000:]
        recap = _recap(run.stdout, trixie_host)
        assert recap["failed"] == 0 and recap["changed"] == 0, (extra, recap, output[-4000:])
        assert "already carries the guard: left alone" in output, output[-4000:]
        report = json.loads((tmp_path / "report.json").read_text())
        assert report["action"] == "none", report
        assert report["guard_before"] is True, report
        assert report["package"] is None and report["changed"] is False, report
        assert "left alone" in report["reason"], report
        assert _state(trixie_host) == before, "the role changed a host it should have left alone"
