# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""cold_migrate when the destination fails after create(), against the libvirt stand-in
(libvirt_standin.py): the lab cannot make a destination fail at exactly that moment.

The rule (issue 13, item 5): the VM is started again on the source only when a fresh
connection to the destination confirms that the destination does not run it; otherwise it is
left shut off and reported as needing the operator, never run twice on the same disks.
"""

from __future__ import annotations

import os
import stat

import pytest

from ansible.module_utils.testing import patch_module_args

import libvirt_standin as lv
from ansible_collections.kvm_ras.poison_guard.plugins.module_utils import journal
from ansible_collections.kvm_ras.poison_guard.plugins.modules import cold_migrate

SRC, DST = "qemu:///system", "qemu+tcp://hv2/system"
NAME = "db01"
UUID = "3f0c1a8e-2b1e-4c55-9d1e-0a1b2c3d4e5f"


@pytest.fixture(name="world")
def fixture_world(monkeypatch, tmp_path):
    world = lv.World()
    world.add(SRC)
    world.add(DST)
    monkeypatch.setattr(cold_migrate, "libvirt", lv.FakeLibvirt(world))
    monkeypatch.setattr(journal, "DEFAULT_VM_LOCK_DIR", str(tmp_path / "vm-locks"), raising=False)
    lv.capture_exit(monkeypatch)
    world.tmp = tmp_path
    return world


def run(world, transient=False, **args):
    args = {"name": NAME, "dest_uri": DST, "wait_timeout": 0, "shutdown_timeout": 1, **args}
    if transient:
        args["restore_dir"] = str(world.tmp / "restore")
    with patch_module_args(args):
        with pytest.raises(lv.Exit) as exc:
            cold_migrate.main()
    return exc.value


def starts_then_destination_dies(world):
    """create() on the destination starts QEMU, then its libvirtd dies before answering."""
    dst = world.hosts[DST]

    def die(name):
        dst.domains[name]["active"] = True
        dst.reachable = False  # this connection and every new one fail from now on
        raise lv.FakeLibvirtError("Cannot recv data: Connection reset by peer")
    return die


def test_moves_the_vm_and_removes_its_source_definition(world):
    world.hosts[SRC].add(NAME, UUID)
    out = run(world)
    assert out.failed is False, out.result["msg"]
    assert out.result["running_on"] == "destination" and out.result["migrated"] is True
    assert world.hosts[DST].running(NAME) and NAME not in world.hosts[SRC].domains
    assert out.result["needs_operator"] is False


def test_unconfirmed_destination_leaves_the_vm_stopped_for_the_operator(world):
    world.hosts[SRC].add(NAME, UUID)
    world.hosts[DST].fail["create"] = starts_then_destination_dies(world)
    out = run(world)
    assert out.failed is True
    r = out.result
    # before the fix the VM was started again on the source while it ran on the destination
    assert not world.hosts[SRC].running(NAME), "started on the source although the destination may run it"
    assert world.hosts[DST].domains[NAME]["active"] is True  # what really happened there
    assert r["needs_operator"] is True and r["restored"] is False
    assert r["running_on"] == "unknown"
    assert r["failure"]["class"] == "destination"
    assert r["destination_check"]["answered"] is False and "Connection refused" in r["destination_check"]["error"]
    assert "CRITICAL" in r["msg"] and "left shut off on the source" in r["msg"]
    assert "virsh -c %s domstate %s" % (DST, NAME) in r["msg"]
    assert world.opened.count(DST) == 2, "the destination was not asked again on a fresh connection"


def test_destination_that_runs_it_after_all_keeps_it_off_the_source(world):
    world.hosts[SRC].add(NAME, UUID)
    dst = world.hosts[DST]

    def starts_but_reports_failure(name):
        dst.domains[name]["active"] = True
        raise lv.FakeLibvirtError("internal error: process exited while connecting to monitor")
    dst.fail["create"] = starts_but_reports_failure
    dst.fail["destroy"] = "Cannot write data: Broken pipe"  # the clean-up cannot stop it
    out = run(world)
    assert out.failed is True
    assert out.result["needs_operator"] is True
    assert out.result["running_on"] == "destination"
    assert out.result["destination_check"] == {"answered": True, "running": True, "defined": True, "error": None}
    assert not world.hosts[SRC].running(NAME)
    assert "the destination runs it after all" in out.result["msg"]


def test_confirmed_destination_gets_the_vm_back_on_the_source(world):
    world.hosts[SRC].add(NAME, UUID)
    world.hosts[DST].fail["create"] = "Cannot access storage file '/var/lib/libvirt/images/db01.qcow2'"
    out = run(world)
    assert out.failed is True
    r = out.result
    assert r["restored"] is True and r["running_on"] == "source" and r["needs_operator"] is False
    assert r["destination_check"] == {"answered": True, "running": False, "defined": False, "error": None}
    assert world.hosts[SRC].running(NAME)
    assert NAME not in world.hosts[DST].domains, "the stray definition stayed on the destination"


def test_transient_vm_xml_is_kept_safely_until_it_runs_again(world):
    world.hosts[SRC].add(NAME, UUID, persistent=False)
    world.hosts[DST].fail["createXML"] = starts_then_destination_dies(world)
    # createXML of the stand-in adds the domain after the callable; make it exist first
    world.hosts[DST].add(NAME, UUID, active=False, persistent=False)
    out = run(world, transient=True)
    assert out.failed is True and out.result["needs_operator"] is True
    kept = out.result["restore_xml"]
    assert kept == journal.restore_path(str(world.tmp / "restore"), NAME, UUID)
    info = os.lstat(kept)
    assert stat.S_ISREG(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o600
    assert "<name>db01</name>" in open(kept).read()
    assert "virsh create %s" % kept in out.result["msg"]


def test_transient_vm_xml_is_removed_after_a_successful_move(world):
    world.hosts[SRC].add(NAME, UUID, persistent=False)
    out = run(world, transient=True)
    assert out.failed is False, out.result["msg"]
    assert world.hosts[DST].running(NAME)
    assert not os.path.exists(journal.restore_path(str(world.tmp / "restore"), NAME, UUID))


def test_a_vm_another_operation_holds_is_not_touched(world):
    world.hosts[SRC].add(NAME, UUID)
    held = journal.OperationLock(journal.DEFAULT_VM_LOCK_DIR, NAME, UUID)
    assert held.acquire()
    try:
        out = run(world)
    finally:
        held.release()
    assert out.failed is True and out.result["failure"]["class"] == "busy"
    assert out.result["changed"] is False
    assert world.hosts[SRC].running(NAME) and ("shutdown", NAME) not in world.hosts[SRC].calls
