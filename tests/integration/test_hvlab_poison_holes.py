# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""evacuate_host.yml moves a poisoned guest live, its hole carried (issue 19), on the hypervisor lab.

1. The patched_qemu role's package (QEMU 7.2 with the guard and the x-poison-holes series) comes
   from the CI cache exactly as the other integration tests obtain it
   (patched_qemu_package.obtain_package, a cache hit after the Molecule scenario), built for the QEMU source
   version of the lab image, and is installed on hv1 and hv2 with the role's deploy entry point
   (playbooks/deploy_patched_qemu.yml) and the lab inventory; at the end ``patched_qemu_state:
   absent`` restores the stock QEMU, so later tests see stock hosts.
2. A tick guest is started on hv1 under KVM (the x-poison-holes destination installs holes only
   with KVM), after the install, so it runs the patched binary.
3. lab/inject_poison.py gives it a poisoned page at GPA 0x1000000: the page becomes a userfaultfd
   poison marker and enters QEMU's poison list. The guest never touches it (it runs in its first
   64 KiB): on this machine's KVM backend (kvm_pvm) a vCPU access to a poison marker is
   BUS_ADRERR, which kills QEMU.
4. ansible-playbook playbooks/evacuate_host.yml -e evacuate_poisoned_vm_policy=migrate_with_holes.

Checked: the guest runs on hv2 only; the report shows the hole carried; hv2's QEMU lists the
page (x-query-hwpoison) and its pagemap at that HVA is a POISONED PTE marker (poison_info on hv2:
``pte_marker_poisoned``, every hole in QEMU's list). On a kernel without UFFD_FEATURE_POISON
(before Linux 6.6) the target does not qualify: the plan says so and the guest stays on hv1,
running.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))
# pylint: disable=wrong-import-position
from patched_qemu_package import CACHE, CHECKSUMS, obtain_package  # noqa: E402

from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.poison import uffd  # noqa: E402

HVLAB = REPO / "lab" / "hvlab"
INJECTOR = REPO / "lab" / "inject_poison.py"
BIN = Path(sys.executable).parent
ANSIBLE_PLAYBOOK = str(BIN / "ansible-playbook") if (BIN / "ansible-playbook").exists() \
    else shutil.which("ansible-playbook")
SOURCE, TARGET = "hv1", "hv2"
HOLE_GPA = 0x1000000

pytestmark = [
    pytest.mark.hvlab,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="the hypervisor lab runs docker and privileged "
                                                 "containers, and the injector ptrace: needs root"),
    pytest.mark.skipif(ANSIBLE_PLAYBOOK is None, reason="ansible-core is not installed (make venv)"),
    pytest.mark.skipif(not os.path.exists("/dev/kvm"),
                       reason="no /dev/kvm on this machine: a destination QEMU installs holes only "
                              "under KVM (docs/poison-holes.md)"),
]


def hvlab(*args, timeout=1800):
    out = subprocess.run([str(HVLAB), *args], capture_output=True, text=True, timeout=timeout, check=False)
    assert out.returncode == 0, "lab/hvlab %s failed: %s%s" % (" ".join(args), out.stdout, out.stderr)
    return out.stdout


def docker_exec(container, *argv, check=True, timeout=120):
    proc = subprocess.run(["docker", "exec", container, *argv], capture_output=True, text=True,
                          timeout=timeout, check=False)
    if check:
        assert proc.returncode == 0, "%s: %s%s" % (" ".join(argv), proc.stdout, proc.stderr)
    return proc


def virsh(host, *argv, check=True):
    return docker_exec(host, "virsh", "-c", "qemu:///system", *argv, check=check)


def qmp(host, domain, command):
    return json.loads(virsh(host, "qemu-monitor-command", domain, json.dumps({"execute": command})).stdout)


def state(host, domain):
    proc = virsh(host, "domstate", domain, check=False)
    return proc.stdout.strip() if proc.returncode == 0 else "absent"


def playbook(inventory, path, extra, cwd, timeout=3600):
    vars_file = Path(cwd) / ("vars-%s.json" % uuid.uuid4().hex)
    vars_file.write_text(json.dumps(extra))
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_HOST_KEY_CHECKING="0")
    argv = [ANSIBLE_PLAYBOOK]
    for item in inventory:
        argv += ["-i", str(item)]
    proc = subprocess.run(argv + [str(path), "-e", "@%s" % vars_file], capture_output=True, text=True,
                          cwd=str(cwd), env=env, timeout=timeout, check=False)
    vars_file.unlink()
    return proc


def deploy(inventory, builder, workdir, state_word):
    """The role's deploy entry point on hv1 and hv2 (the package from the controller cache)."""
    proc = playbook([inventory, builder], REPO / "playbooks" / "deploy_patched_qemu.yml", {
        "patched_qemu_state": state_word, "patched_qemu_become": False, "kvm_ras_become": False,
        "patched_qemu_hosts": "%s:%s" % (SOURCE, TARGET),
        "patched_qemu_controller_cache_dir": str(CACHE), "patched_qemu_checksum_file": str(CHECKSUMS)},
        workdir)
    assert proc.returncode == 0, proc.stdout[-8000:] + proc.stderr[-3000:]


def kvm_guest(name):
    """Restart the lab guest ``name`` on hv1 as a KVM guest (the lab's guests are TCG), with the
    host's CPU model (host-model: the lab hosts share one CPU, so the preflight's CPU check
    passes; the TCG guest's qemu64 asks KVM for features this host lacks)."""
    xml = virsh(SOURCE, "dumpxml", "--inactive", name).stdout
    assert "<domain type='qemu'" in xml, xml[:200]
    xml = xml.replace("<domain type='qemu'", "<domain type='kvm'", 1)
    xml = re.sub(r"<cpu\b.*?(?:/>|</cpu>)", "<cpu mode='host-model'/>", xml, count=1, flags=re.S)
    virsh(SOURCE, "destroy", name)
    path = "/tmp/%s.xml" % name
    subprocess.run(["docker", "exec", "-i", SOURCE, "sh", "-c", 'cat > "$1"', "sh", path],
                   input=xml, text=True, check=True, timeout=60)
    virsh(SOURCE, "define", path)
    virsh(SOURCE, "start", name)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    hvlab("up")
    inventory = hvlab("inventory").strip()
    workdir = tmp_path_factory.mktemp("poison-holes")
    source_version = docker_exec(SOURCE, "dpkg-query", "--show", "--showformat=${source:Version}",
                                 "qemu-system-x86").stdout.strip()
    package = obtain_package(workdir, source_version)
    builder = workdir / "builder.yml"
    builder.write_text(yaml.safe_dump({"all": {"children": {"patched_qemu_builder": {"hosts": {
        "patched-qemu-builder": {"ansible_connection": "local",
                                 "ansible_python_interpreter": "/usr/bin/python3"}}}}}}))
    deploy(inventory, builder, workdir, "present")
    names = []
    try:
        created = json.loads(hvlab("guests", "create", "--host", SOURCE, "--count", "1", "--prefix",
                                   "holes%s" % uuid.uuid4().hex[:6], "--json"))
        names = [g["name"] for g in created]
        kvm_guest(names[0])
        yield {"inventory": inventory, "workdir": workdir, "name": names[0], "package": package}
    finally:
        # every step runs, whatever an earlier one did; the stock QEMU comes back last
        for name in names:
            for host in (SOURCE, TARGET):
                virsh(host, "destroy", name, check=False)
                virsh(host, "undefine", "--nvram", name, check=False)
        uncordon = playbook([inventory], REPO / "playbooks" / "uncordon_host.yml",
                            {"uncordon_host": SOURCE, "kvm_ras_become": False}, workdir)
        deploy(inventory, builder, workdir, "absent")
        assert uncordon.returncode == 0, uncordon.stdout[-3000:]


@pytest.fixture(scope="module")
def evacuated(lab):
    name = lab["name"]
    pid = docker_exec(SOURCE, "cat", "/run/libvirt/qemu/%s.pid" % name).stdout.strip()
    exe = docker_exec(SOURCE, "readlink", "/proc/%s/exe" % pid).stdout.strip()
    assert "deleted" not in exe
    assert docker_exec(SOURCE, "grep", "-c", "x-poison-holes", exe, check=False).stdout.strip() not in ("", "0"), \
        "the guest does not run the patched binary"
    injected = subprocess.run([sys.executable, str(INJECTOR), SOURCE, name, "%#x" % HOLE_GPA],
                              capture_output=True, text=True, timeout=300, check=False)
    assert injected.returncode == 0, injected.stdout + injected.stderr
    injection = json.loads(injected.stdout)
    listed = qmp(SOURCE, name, "x-query-hwpoison")["return"]
    assert [e["gpa"] for e in listed] == [HOLE_GPA], listed
    proc = playbook([lab["inventory"]], REPO / "playbooks" / "evacuate_host.yml", {
        "evacuate_source": SOURCE, "evacuate_targets": [TARGET], "kvm_ras_become": False,
        "evacuate_poisoned_vm_policy": "migrate_with_holes", "evacuate_report_dir": "reports",
        "evacuate_max_parallel": 4}, lab["workdir"])
    reports = sorted((lab["workdir"] / "reports").glob("%s-*.json" % SOURCE))
    report = json.loads(reports[-1].read_text()) if reports else None
    return {"name": name, "proc": proc, "report": report, "injection": injection,
            "uffd": uffd.probe()}


def _entry(evacuated):
    assert evacuated["report"] is not None, evacuated["proc"].stdout[-6000:]
    return {vm["name"]: vm for vm in evacuated["report"]["vms"]}[evacuated["name"]]


def _moves(evacuated):
    """Can hv2 take the hole? This machine's kernel decides (UFFD_FEATURE_POISON, Linux 6.6+):
    each test checks the outcome for the kernel it runs on, none is skipped."""
    return evacuated["uffd"][0] is True


def test_the_poisoned_guest_ends_on_the_right_host_only(evacuated):
    output = evacuated["proc"].stdout
    name = evacuated["name"]
    if _moves(evacuated):
        assert evacuated["proc"].returncode == 0, output[-6000:] + evacuated["proc"].stderr[-2000:]
        assert "%s qualifies" % TARGET in output
        assert state(TARGET, name) == "running"
        assert state(SOURCE, name) == "absent"
    else:  # the plan says why the target does not qualify; the guest stays, running, and the run fails
        assert evacuated["proc"].returncode != 0
        assert state(SOURCE, name) == "running"
        assert state(TARGET, name) == "absent"


def test_the_report_records_the_hole_carried_and_verified_on_the_target(evacuated):
    entry = _entry(evacuated)
    if _moves(evacuated):
        assert entry["status"] == "migrated" and entry["running_on"] == [TARGET], entry
        assert entry["with_holes"] is True
        assert [(h["block"], h["gpa"]) for h in entry["holes_carried"]] == [("pc.ram", HOLE_GPA)], entry
        # the playbook's own check on the target: a POISONED PTE marker at that guest address
        assert entry["holes_verified"] is True, entry["steps"]
        assert evacuated["report"]["failed"] is False
    else:
        assert entry["status"] == "stayed" and entry["running_on"] == [SOURCE], entry
        assert "kernel has no UFFDIO_POISON" in entry["reason"]
        assert evacuated["report"]["failed"] is True


def test_the_target_qemu_lists_the_page_and_its_pagemap_holds_the_poison_marker(evacuated, lab):
    name = evacuated["name"]
    if not _moves(evacuated):
        assert state(TARGET, name) == "absent"
        return
    [hole] = qmp(TARGET, name, "x-query-hwpoison")["return"]
    assert (hole["block"], hole["gpa"], hole["page-size"]) == ("pc.ram", HOLE_GPA, 4096)
    # the destination's pagemap, read by the collection's own scanner on hv2
    result_file = lab["workdir"] / "poison-hv2.json"
    play = lab["workdir"] / "poison-hv2.yml"
    play.write_text(yaml.safe_dump([{
        "name": "poison_info on the target", "hosts": TARGET, "gather_facts": False,
        "tasks": [{"name": "Inspect", "kvm_ras.poison_guard.poison_info": {"vms": [name]}, "register": "found"},
                  {"name": "Hand over", "ansible.builtin.copy": {"content": "{{ found | to_json }}",
                                                                 "dest": str(result_file), "mode": "0600"},
                   "delegate_to": "localhost"}]}]))
    proc = playbook([lab["inventory"]], play, {}, lab["workdir"])
    assert proc.returncode == 0, proc.stdout[-4000:]
    [vm] = json.loads(result_file.read_text())["vms"]
    assert vm["status"] == "poisoned", vm
    pages = [(p["hva"], p["source"]) for p in vm["poisoned_pages"]]
    assert pages == [("%#x" % hole["hva"], "pte_marker_poisoned")], pages
    assert vm["binary_poison_holes"] is True and vm["holes_unknown_to_qemu"] == []
    # the guest keeps counting on the target (it never touches the hole)
    log = docker_exec(TARGET, "cat", "/var/log/libvirt/qemu/%s-serial.log" % name).stdout
    assert "tick" in log
