# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""guest_power state=restarted on a transient VM, against the libvirt stand-in
(libvirt_standin.py): a createXML that fails after the power-off cannot be forced in the lab.

The rule (issue 13, item 6): a transient VM exists only while it runs, so its XML is written
to a file on the host (atomically, mode 0600) before it is powered off, removed once it runs
again, and named in the failure when it does not.
"""

from __future__ import annotations

import os
import stat

import pytest

from ansible.module_utils.testing import patch_module_args

import libvirt_standin as lv
from ansible_collections.kvm_ras.poison_guard.plugins.module_utils import journal
from ansible_collections.kvm_ras.poison_guard.plugins.modules import guest_power

URI = "qemu:///system"
NAME = "web 01 $(touch .pwned)"
UUID = "0b7e7c1e-5a5a-4c1e-9a0f-111111111111"


@pytest.fixture(name="world")
def fixture_world(monkeypatch, tmp_path):
    world = lv.World()
    world.add(URI)
    monkeypatch.setattr(guest_power, "libvirt", lv.FakeLibvirt(world))
    monkeypatch.setattr(journal, "DEFAULT_VM_LOCK_DIR", str(tmp_path / "vm-locks"), raising=False)
    monkeypatch.setattr(guest_power, "PID_DIR", str(tmp_path / "pids"))
    lv.capture_exit(monkeypatch)
    world.restore_dir = str(tmp_path / "restore")
    return world


def run(world, **args):
    args = {"name": NAME, "state": "restarted", "wait_timeout": 0, "restore_dir": world.restore_dir, **args}
    with patch_module_args(args):
        with pytest.raises(lv.Exit) as exc:
            guest_power.main()
    return exc.value


def test_failed_restart_of_a_transient_vm_keeps_its_xml_on_the_host(world):
    host = world.hosts[URI]
    host.add(NAME, UUID, persistent=False, xml="<domain><name>%s</name><uuid>%s</uuid><secret/></domain>" % (NAME, UUID))
    seen_before_power_off = {}

    def destroy_and_look(name):
        # the XML must be on disk before the VM is gone
        seen_before_power_off["exists"] = os.path.exists(journal.restore_path(world.restore_dir, NAME, UUID))
        del host.domains[name]
    host.fail["destroy"] = destroy_and_look
    host.fail["createXML"] = "internal error: qemu unexpectedly closed the monitor"
    out = run(world)
    assert out.failed is True
    assert NAME not in host.domains  # it runs nowhere: only the kept XML can bring it back
    kept = out.result["restore_xml"]
    assert kept == journal.restore_path(world.restore_dir, NAME, UUID)
    assert seen_before_power_off == {"exists": True}
    info = os.lstat(kept)
    assert stat.S_ISREG(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o600
    assert stat.S_IMODE(os.stat(world.restore_dir).st_mode) == 0o700
    assert open(kept).read() == "<domain><name>%s</name><uuid>%s</uuid><secret/></domain>" % (NAME, UUID)
    assert kept in out.result["msg"] and "virsh -c %s create %s" % (URI, kept) in out.result["msg"]
    assert os.listdir(world.restore_dir) == [os.path.basename(kept)], "a temporary file stayed"


def test_successful_restart_of_a_transient_vm_removes_the_kept_xml(world):
    host = world.hosts[URI]
    host.add(NAME, UUID, persistent=False)
    out = run(world)
    assert out.failed is False, out.result["msg"]
    assert host.running(NAME) and out.result["restore_xml"] is None
    assert os.listdir(world.restore_dir) == []


def test_xml_that_cannot_be_kept_leaves_the_vm_untouched(world):
    host = world.hosts[URI]
    host.add(NAME, UUID, persistent=False)
    os.makedirs(world.restore_dir, mode=0o777)
    os.chmod(world.restore_dir, 0o777)  # writable by anyone: not a safe place for a VM's XML
    out = run(world)
    assert out.failed is True and out.result["changed"] is False
    assert "writable by group or others" in out.result["msg"]
    assert host.running(NAME) and ("destroy", NAME) not in host.calls


def test_persistent_vm_restart_writes_nothing(world):
    host = world.hosts[URI]
    host.add(NAME, UUID, persistent=True)
    out = run(world)
    assert out.failed is False and host.running(NAME)
    assert not os.path.exists(world.restore_dir)


def test_the_old_option_name_wait_still_works_and_is_deprecated(world, monkeypatch, capsys):
    """wait is seconds here but a boolean in other collections (openstack.cloud): the option is
    wait_timeout, and wait stays as a deprecated alias until 0.2.0."""
    from ansible.module_utils.common import warnings as ansible_warnings

    monkeypatch.setattr(ansible_warnings, "_global_deprecations", {})
    host = world.hosts[URI]
    host.add(NAME, UUID, persistent=False)
    args = {"name": NAME, "state": "restarted", "wait": 0, "restore_dir": world.restore_dir}
    with patch_module_args(args):
        with pytest.raises(lv.Exit) as exc:
            guest_power.main()
    assert exc.value.failed is False, exc.value.result["msg"]
    assert host.running(NAME)
    # AnsibleModule records the deprecation, or (once a test before set up Ansible's display in
    # this process) prints it at once.
    recorded = [d for d in ansible_warnings.get_deprecation_messages() if "'wait'" in d["msg"]
                and d.get("version") == "0.2.0" and d.get("collection_name") == "kvm_ras.poison_guard"]
    printed = capsys.readouterr().err
    assert recorded or ("Alias 'wait' is deprecated" in printed
                        and "collection 'kvm_ras.poison_guard' version 0.2.0" in printed), printed
