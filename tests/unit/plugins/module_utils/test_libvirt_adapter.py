# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""module_utils/libvirt.py: the one adapter every module uses to reach libvirt.

The stand-in (tests/unit/plugins/modules/libvirt_standin.py) copies what libvirt-python does
where the adapter depends on it: lookups of a domain the host does not have raise
VIR_ERR_NO_DOMAIN (42), a connection whose daemon died raises on every call, and
``undefineFlags(VIR_DOMAIN_UNDEFINE_KEEP_NVRAM)`` is refused by drivers without NVRAM support.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

from ansible_collections.kvm_ras.poison_guard.plugins.module_utils import libvirt as libvirt_adapter

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "modules"))
import libvirt_standin as lv  # noqa: E402  pylint: disable=wrong-import-position

# ------------------------------------------------------------------------------ state words --


def test_one_definition_of_active_by_code_and_by_word():
    """virDomainState 1-4 and 7 have a QEMU process; 0 (no state), 5 (shut off) and 6 (crashed)
    do not. virsh prints VIR_DOMAIN_BLOCKED (2) as "idle"; "blocked" is accepted as well."""
    assert [libvirt_adapter.state_word(code) for code in libvirt_adapter.ACTIVE_STATES] == [
        "running", "idle", "paused", "in shutdown", "pmsuspended"]
    assert set(libvirt_adapter.ACTIVE_STATE_WORDS) == {"running", "paused", "idle", "in shutdown",
                                                       "pmsuspended", "blocked"}
    for code in (0, 5, 6):
        assert not libvirt_adapter.is_active_word(libvirt_adapter.state_word(code))
    assert libvirt_adapter.state_word(99) == "99"


# ------------------------------------------------------------------------------ domain XML --

DOMAIN_XML = """<domain type='qemu'><name>g1</name><devices>
  <disk type='file' device='disk'><driver name='qemu' type='raw'/>
    <source file='/var/lib/libvirt/images/shared/tick.img'/><target dev='vda' bus='virtio'/><readonly/></disk>
  <disk type='block' device='disk'><source dev='/dev/vg/data'/><target dev='vdb' bus='virtio'/><shareable/></disk>
  <disk type='network' device='disk'><source protocol='rbd' name='pool/img'/><target dev='vdc' bus='virtio'/></disk>
  <disk type='file' device='cdrom'><target dev='hdc' bus='ide'/><readonly/></disk>
</devices></domain>"""


def test_domain_disks():
    """Moved here from test_evacuation.py with domain_disks."""
    disks = libvirt_adapter.domain_disks(DOMAIN_XML)
    assert [(d["target"], d["type"], d["path"], d["readonly"], d["shareable"]) for d in disks] == [
        ("vda", "file", "/var/lib/libvirt/images/shared/tick.img", True, False),
        ("vdb", "block", "/dev/vg/data", False, True),
        ("vdc", "network", "pool/img", False, False),
        ("hdc", "file", None, True, False),
    ]


# ------------------------------------------------------------------------------ pid files --

def test_qemu_pid_from_the_pid_file_then_the_status_xml(tmp_path):
    """libvirt's QEMU driver writes <name>.pid and <name>.xml (<domstatus ... pid='N'>) under
    /run/libvirt/qemu while a domain runs; a garbled pid file falls back to the status XML."""
    (tmp_path / "a.pid").write_text("4242\n")
    (tmp_path / "b.pid").write_text("not a pid\n")
    (tmp_path / "b.xml").write_text("<domstatus state='running' reason='booted' pid='777'>\n")
    assert libvirt_adapter.qemu_pid(str(tmp_path), "a") == 4242
    assert libvirt_adapter.qemu_pid(str(tmp_path), "b") == 777
    assert libvirt_adapter.qemu_pid(str(tmp_path), "c") is None
    assert libvirt_adapter.QEMU_RUN_DIR == "/run/libvirt/qemu"


# ------------------------------------------------------------------------------ import guard --

def test_load_reports_a_missing_binding_with_its_traceback(monkeypatch):
    monkeypatch.setitem(sys.modules, "libvirt", None)  # import libvirt -> ImportError
    binding, error = libvirt_adapter.load()
    assert binding is None and "import of libvirt halted" in error
    with pytest.raises(ImportError, match="python3-libvirt"):
        libvirt_adapter.require()


def test_load_returns_the_binding_the_interpreter_has(monkeypatch):
    fake = lv.FakeLibvirt(lv.World())
    monkeypatch.setitem(sys.modules, "libvirt", fake)
    assert libvirt_adapter.load() == (fake, None)
    assert libvirt_adapter.require() is fake


# ------------------------------------------------------------------------------ connections --

@pytest.fixture(name="world")
def fixture_world():
    world = lv.World()
    host = world.add("qemu:///system")
    host.add("web01", "11111111-1111-1111-1111-111111111111")
    world.add("qemu+tcp://hv2/system").reachable = False
    return world


def test_connect_returns_the_error_text_instead_of_raising(world):
    binding = lv.FakeLibvirt(world)
    conn, error = libvirt_adapter.connect(binding, "qemu:///system")
    assert conn is not None and error is None
    conn2, error2 = libvirt_adapter.connect(binding, "qemu+tcp://hv2/system")
    assert conn2 is None and "Connection refused" in error2
    libvirt_adapter.close_quietly(binding, conn)
    libvirt_adapter.close_quietly(binding, None)


def test_find_domain_tells_absent_from_unanswered(world):
    binding = lv.FakeLibvirt(world)
    conn, _error = libvirt_adapter.connect(binding, "qemu:///system")
    uuid = "11111111-1111-1111-1111-111111111111"
    assert libvirt_adapter.find_domain(binding, conn, "web01").UUIDString() == uuid
    assert libvirt_adapter.find_domain(binding, conn, "other", uuid).name() == "web01"
    assert libvirt_adapter.find_domain(binding, conn, "ghost") is None
    assert libvirt_adapter.find_domain(binding, conn) is None
    conn.broken = True
    with pytest.raises(lv.FakeLibvirtError, match="Broken pipe"):
        libvirt_adapter.find_domain(binding, conn, "web01")


def test_wait_until_polls_until_true_or_the_deadline():
    answers = iter([False, False, True])
    assert libvirt_adapter.wait_until(lambda: next(answers), 5, 0) is True
    assert libvirt_adapter.wait_until(lambda: False, 0, 0) is False


# ------------------------------------------------------------------------------ the uri option --

@pytest.mark.parametrize("old_name", ["libvirt_uri", "source_uri"])
def test_the_former_option_name_still_works_and_says_it_is_deprecated(old_name):
    spec = {"uri": libvirt_adapter.uri_argument(old_name)}
    result = ArgumentSpecValidator(spec).validate({old_name: "qemu+tcp://hv2/system"})
    assert result.error_messages == []
    assert result.validated_parameters["uri"] == "qemu+tcp://hv2/system"
    assert [(d["version"], d["collection_name"]) for d in result._deprecations] == [("0.2.0", "kvm_ras.poison_guard")]
    assert old_name in result._deprecations[0]["msg"]
    default = ArgumentSpecValidator(spec).validate({})
    assert default.validated_parameters["uri"] == "qemu:///system" and not default._deprecations
