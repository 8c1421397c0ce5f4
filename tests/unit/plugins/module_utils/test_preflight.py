# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The rules of the migration preflight (plugins/module_utils/preflight.py).

Fixtures and what real libvirt behaviour each copies:

- ``DOMAIN_KVM``: the layout libvirt 9.0 prints for ``virsh dumpxml --migratable`` of a running
  KVM guest (Debian 12, QEMU 7.2): the machine type resolved to its versioned name
  (``pc-q35-7.2``), a host-model CPU expanded into ``mode='custom' check='full'`` with its model
  and features (what libvirt stores in the live XML once the domain runs), a backing chain as
  ``<backingStore>`` elements, an empty CD-ROM, ``<auth>`` inside ``<source>`` for an rbd disk.
  Names, paths and UUIDs are ours.
- ``DOMAIN_TEST_DRIVER``: verbatim ``XMLDesc(0)`` of the domain ``test`` of libvirt 9.0's own test
  driver (``test:///default``, python3-libvirt 9.0.0 on Debian 12).
- ``DOMCAPS_TCG``: the ``<cpu>`` part of libvirt's domain capabilities for QEMU 7.2 under TCG
  (libvirt's tests/domaincapsdata/qemu_7.2.0-tcg.x86_64.xml layout: host-passthrough not
  supported, host-model ``EPYC`` with ``fallback='forbid'``, vendor, require/disable features),
  shortened.
- ``CAPS``: the ``<guest>`` layout of ``virsh capabilities`` on x86_64 (a ``<machine>`` alias
  carries ``canonical=``, versioned machines are listed, ``<domain type='kvm'/>``), shortened.
- Error texts: libvirt 9.0's messages as its error-code prefixes build them
  (src/util/virerror.c): VIR_ERR_CPU_INCOMPATIBLE "the CPU is incompatible with host CPU: %s"
  with cpu_x86.c "Host CPU does not provide required features: svm" (recorded in the hypervisor
  lab, research/lab-feasibility.md); VIR_ERR_NO_NETWORK, VIR_ERR_NO_INTERFACE, VIR_ERR_NO_SUPPORT
  and VIR_ERR_NO_STORAGE_VOL as the test driver prints them (recorded with python3-libvirt 9.0.0).
"""

from __future__ import annotations

import threading

import pytest

from ansible_collections.kvm_ras.poison_guard.plugins.module_utils import preflight
from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.preflight import TargetError

DOMAIN_KVM = """<domain type='kvm' id='3'>
  <name>web01</name>
  <uuid>7d3c1a52-52f6-4b40-9c55-0c5a4c1e0f11</uuid>
  <memory unit='KiB'>4194304</memory>
  <vcpu placement='static'>2</vcpu>
  <os>
    <type arch='x86_64' machine='pc-q35-7.2'>hvm</type>
    <boot dev='hd'/>
  </os>
  <cpu mode='custom' match='exact' check='full'>
    <model fallback='forbid'>Skylake-Client-IBRS</model>
    <vendor>Intel</vendor>
    <feature policy='require' name='ss'/>
    <feature policy='require' name='avx512f'/>
    <feature policy='disable' name='hle'/>
  </cpu>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/var/lib/libvirt/images/web01.qcow2' index='2'/>
      <backingStore type='file' index='1'>
        <format type='qcow2'/>
        <source file='/var/lib/libvirt/images/base/debian12.qcow2'/>
        <backingStore/>
      </backingStore>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='block' device='disk'>
      <driver name='qemu' type='raw' cache='none'/>
      <source dev='/dev/vg0/web01-data' index='3'/>
      <backingStore/>
      <target dev='vdb' bus='virtio'/>
    </disk>
    <disk type='file' device='cdrom'>
      <driver name='qemu' type='raw'/>
      <target dev='sda' bus='sata'/>
      <readonly/>
    </disk>
    <disk type='network' device='disk'>
      <driver name='qemu' type='raw'/>
      <source protocol='rbd' name='vms/web01-logs' index='4'>
        <host name='ceph-mon1' port='6789'/>
        <auth username='libvirt'>
          <secret type='ceph' uuid='2a5b9c0e-8d1f-4e27-b3a6-5f0c1d2e3f40'/>
        </auth>
      </source>
      <target dev='vdc' bus='virtio'/>
    </disk>
    <interface type='network'>
      <mac address='52:54:00:6b:3c:01'/>
      <source network='prod' portgroup='web'/>
      <model type='virtio'/>
    </interface>
    <interface type='bridge'>
      <mac address='52:54:00:6b:3c:02'/>
      <source bridge='br-storage'/>
      <model type='virtio'/>
    </interface>
    <interface type='user'>
      <mac address='52:54:00:6b:3c:03'/>
      <model type='virtio'/>
    </interface>
  </devices>
</domain>
"""

DOMAIN_TEST_DRIVER = """<domain type='test' id='1'>
  <name>test</name>
  <uuid>6695eb01-f6a4-8304-79aa-97f2502e193f</uuid>
  <memory unit='KiB'>8388608</memory>
  <currentMemory unit='KiB'>2097152</currentMemory>
  <vcpu placement='static'>2</vcpu>
  <os>
    <type arch='i686'>hvm</type>
    <boot dev='hd'/>
  </os>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <disk type='file' device='disk'>
      <source file='/guest/diskimage1'/>
      <target dev='vda' bus='virtio'/>
      <address type='pci' domain='0x0000' bus='0x01' slot='0x00' function='0x0'/>
    </disk>
    <interface type='network'>
      <mac address='aa:bb:cc:dd:ee:ff'/>
      <source network='default'/>
      <target dev='testnet0'/>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x01' function='0x0'/>
    </interface>
    <memballoon model='virtio'>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x02' function='0x0'/>
    </memballoon>
  </devices>
</domain>
"""

DOMCAPS_TCG = """<domainCapabilities>
  <path>/usr/bin/qemu-system-x86_64</path>
  <domain>qemu</domain>
  <machine>pc-i440fx-7.2</machine>
  <arch>x86_64</arch>
  <vcpu max='255'/>
  <cpu>
    <mode name='host-passthrough' supported='no'/>
    <mode name='maximum' supported='yes'>
      <enum name='maximumMigratable'>
        <value>on</value>
        <value>off</value>
      </enum>
    </mode>
    <mode name='host-model' supported='yes'>
      <model fallback='forbid'>EPYC</model>
      <vendor>AMD</vendor>
      <feature policy='require' name='3dnow'/>
      <feature policy='disable' name='3dnowprefetch'/>
      <feature policy='require' name='la57'/>
    </mode>
    <mode name='custom' supported='yes'>
      <model usable='yes' vendor='unknown' canonical='486-v1'>486</model>
    </mode>
  </cpu>
</domainCapabilities>
"""

CAPS = """<capabilities>
  <host>
    <uuid>4c4c4544-0042-3310-8057-b7c04f4d3732</uuid>
    <cpu><arch>x86_64</arch><model>Skylake-Client-IBRS</model><vendor>Intel</vendor></cpu>
  </host>
  <guest>
    <os_type>hvm</os_type>
    <arch name='x86_64'>
      <wordsize>64</wordsize>
      <emulator>/usr/bin/qemu-system-x86_64</emulator>
      <machine maxCpus='255'>pc-i440fx-7.2</machine>
      <machine canonical='pc-i440fx-7.2' maxCpus='255'>pc</machine>
      <machine maxCpus='288'>pc-q35-7.2</machine>
      <machine canonical='pc-q35-7.2' maxCpus='288'>q35</machine>
      <domain type='qemu'/>
      <domain type='kvm'/>
    </arch>
  </guest>
</capabilities>
"""

CPU_INCOMPATIBLE = "the CPU is incompatible with host CPU: Host CPU does not provide required features: svm"
NO_SUPPORT_COMPARE = "this function is not supported by the connection driver: virConnectCompareHypervisorCPU"
NO_SUPPORT_DOMCAPS = "this function is not supported by the connection driver: virConnectGetDomainCapabilities"


class FakeTarget:
    """Answers the preflight's questions from dicts; an Exception value is raised."""

    def __init__(self, **answers):
        self.answers = {
            "capabilities": CAPS,
            "domain_capabilities": "<domainCapabilities/>",
            "compare_cpu": preflight.CPU_COMPARE_IDENTICAL,
            "networks": {"prod": {"active": True, "portgroups": ["web"]}, "default": {"active": True, "portgroups": []}},
            "interfaces": {"br-storage": {"type": "bridge"}},
            "volumes": {},
            "pools": {},
            "pool_volumes": {},
            "secrets": {"2a5b9c0e-8d1f-4e27-b3a6-5f0c1d2e3f40"},
        }
        self.answers.update(answers)
        self.calls = []

    def _answer(self, key):
        value = self.answers[key]
        if isinstance(value, Exception):
            raise value
        return value

    def capabilities(self):
        return self._answer("capabilities")

    def domain_capabilities(self, emulator, arch, machine, virttype):
        self.calls.append(("domain_capabilities", emulator, arch, machine, virttype))
        return self._answer("domain_capabilities")

    def compare_cpu(self, emulator, arch, machine, virttype, cpu_xml):
        self.calls.append(("compare_cpu", virttype, cpu_xml))
        return self._answer("compare_cpu")

    def network(self, name):
        if name not in self.answers["networks"]:
            raise TargetError("Network not found: no network with matching name '%s'" % name, preflight.ERR_NO_NETWORK)
        return self.answers["networks"][name]

    def interface(self, name):
        if name not in self.answers["interfaces"]:
            raise TargetError("Interface not found: no interface with matching name '%s'" % name,
                              preflight.ERR_NO_INTERFACE)
        return self.answers["interfaces"][name]

    def volume_by_path(self, path):
        self.calls.append(("volume_by_path", path))
        if path not in self.answers["volumes"]:
            raise TargetError("Storage volume not found: no storage vol with matching path '%s'" % path,
                              preflight.ERR_NO_STORAGE_VOL)
        return self.answers["volumes"][path]

    def pool_for_directory(self, directory):
        if directory not in self.answers["pools"]:
            raise TargetError("Storage pool not found: no storage pool with matching target path '%s'" % directory,
                              preflight.ERR_NO_STORAGE_POOL)
        return self.answers["pools"][directory]

    def pool_volume(self, pool, volume):
        if (pool, volume) not in self.answers["pool_volumes"]:
            raise TargetError("Storage pool not found: no storage pool with matching name '%s'" % pool,
                              preflight.ERR_NO_STORAGE_POOL)
        return volume

    def secret(self, uuid, usage_type=None, usage_id=None):
        if uuid not in self.answers["secrets"]:
            raise TargetError("Secret not found: no secret with matching uuid '%s'" % uuid, preflight.ERR_NO_SECRET)
        return uuid


def kvm_vm():
    return preflight.parse_domain(DOMAIN_KVM)


def all_paths(vm, exists=True):
    """host_capacity_info's ``paths`` of the target for every file/block path of the VM."""
    paths = {}
    for disk in vm["disks"]:
        for path in ([disk["path"]] if disk["path"] and disk["type"] in ("file", "block") else []) + disk["backing"]:
            paths[path] = {"exists": exists, "size": 1}
    return paths


def context(vm, **extra):
    ctx = {"source_qemu_version": 7002000, "target_qemu_version": 7002000, "copy_storage": "none",
           "allow_older_qemu": False, "target_paths": all_paths(vm), "source_host_model": None}
    ctx.update(extra)
    return ctx


# --- parsing ----------------------------------------------------------------------------

def test_parse_domain_reads_what_decides_where_a_vm_runs():
    vm = kvm_vm()
    assert (vm["name"], vm["virttype"], vm["arch"], vm["machine"], vm["emulator"]) == (
        "web01", "kvm", "x86_64", "pc-q35-7.2", "/usr/bin/qemu-system-x86_64")
    assert vm["cpu"]["mode"] == "custom" and vm["cpu"]["model"] == "Skylake-Client-IBRS"
    assert "avx512f" in vm["cpu"]["xml"] and vm["cpu"]["xml"].startswith("<cpu")
    disks = {d["target"]: d for d in vm["disks"]}
    assert disks["vda"]["path"] == "/var/lib/libvirt/images/web01.qcow2"
    assert disks["vda"]["backing"] == ["/var/lib/libvirt/images/base/debian12.qcow2"]
    assert disks["vdb"]["type"] == "block" and disks["vdb"]["path"] == "/dev/vg0/web01-data"
    assert disks["vdb"]["backing"] == []          # <backingStore/> ends the chain
    assert disks["sda"]["path"] is None and disks["sda"]["readonly"]
    assert disks["vdc"]["protocol"] == "rbd" and disks["vdc"]["secret_uuid"] == "2a5b9c0e-8d1f-4e27-b3a6-5f0c1d2e3f40"
    kinds = [(i["type"], i["network"], i["portgroup"], i["bridge"]) for i in vm["interfaces"]]
    assert kinds == [("network", "prod", "web", None), ("bridge", None, None, "br-storage"), ("user", None, None, None)]
    assert vm["hostdevs"] == 0


def test_parse_domain_of_the_test_driver_has_no_machine_and_no_cpu():
    vm = preflight.parse_domain(DOMAIN_TEST_DRIVER)
    assert vm["virttype"] == "test" and vm["arch"] == "i686" and vm["machine"] is None
    assert vm["cpu"]["mode"] is None and vm["emulator"] is None
    reasons, _notes = preflight.check_machine(vm, FakeTarget(), "hv2")
    assert reasons and "no machine type" in reasons[0]["problem"]


def test_host_model_cpu_turns_domcaps_into_a_custom_cpu():
    cpu = preflight.host_model_cpu(DOMCAPS_TCG)
    assert cpu.startswith("<cpu mode=\"custom\" match=\"exact\">")
    assert "<model fallback=\"forbid\">EPYC</model>" in cpu and "<vendor>AMD</vendor>" in cpu
    assert "<feature policy=\"disable\" name=\"3dnowprefetch\" />" in cpu
    assert "486" not in cpu                              # the custom-mode model list is not copied
    unsupported = DOMCAPS_TCG.replace("<mode name='host-model' supported='yes'>", "<mode name='host-model' supported='no'>")
    assert preflight.host_model_cpu(unsupported) is None


def test_parse_capabilities_knows_aliases_and_versioned_machines():
    caps = preflight.parse_capabilities(CAPS)
    assert caps["host_uuid"] == "4c4c4544-0042-3310-8057-b7c04f4d3732"
    kvm = caps["guests"][("x86_64", "kvm")]
    assert {"pc", "q35", "pc-q35-7.2", "pc-i440fx-7.2"} <= kvm["machines"]
    assert kvm["emulators"] == {"/usr/bin/qemu-system-x86_64"}


# --- target -------------------------------------------------------------------------------

def test_a_target_that_cannot_be_opened_is_unusable_with_libvirts_text_and_the_transport_fix():
    text = "unable to connect to server at 'hv3:16509': Connection refused"
    entry = preflight.check_target("hv3", "qemu+tcp://hv3/system", False, error=text)
    assert entry["usable"] is False
    assert text in entry["reasons"][0] and "qemu+tcp://hv3/system" in entry["reasons"][0]
    assert "kvm_ras.poison_guard.migration_transport" in entry["fix"] and "docs/migration-transport.md" in entry["fix"]


def test_a_target_without_uri_and_one_that_is_the_source_are_unusable():
    assert not preflight.check_target("hv4", None, False)["usable"]
    same = preflight.check_target("hv2", "qemu+tls://hv2/system", True, source_host_uuid="abc",
                                  info={"host_uuid": "abc", "qemu_version": 7002000})
    assert not same["usable"] and "reaches the source hypervisor itself" in same["reasons"][0]
    good = preflight.check_target("hv2", "qemu+tls://hv2/system", True, source_host_uuid="abc",
                                  info={"host_uuid": "def", "qemu_version": 7002000, "libvirt_version": 9000000})
    assert good["usable"] and good["qemu_version"] == "7.2.0" and good["libvirt_version"] == "9.0.0"


def test_a_target_that_hides_its_qemu_version_is_unusable():
    entry = preflight.check_target("hv2", "qemu+tls://hv2/system", True,
                                   info={"host_uuid": "def", "qemu_version": None, "qemu_version_error": "boom"})
    assert not entry["usable"] and "boom" in entry["reasons"][0]


# --- VM on target -----------------------------------------------------------------------

def test_a_vm_that_fits_is_usable():
    vm = kvm_vm()
    target = FakeTarget()
    entry = preflight.check_vm(vm, target, "hv2", context(vm))
    assert entry == {"usable": True, "reasons": [], "fix": None, "notes": entry["notes"]}
    assert ("domain_capabilities", "/usr/bin/qemu-system-x86_64", "x86_64", "pc-q35-7.2", "kvm") in target.calls
    compared = [c for c in target.calls if c[0] == "compare_cpu"]
    assert compared and "Skylake-Client-IBRS" in compared[0][2]      # the VM's own <cpu>
    assert any("rbd" in note for note in entry["notes"])              # what was not checked is said


def test_cpu_the_target_lacks_is_a_reason_with_libvirts_feature_list():
    vm = kvm_vm()
    target = FakeTarget(compare_cpu=TargetError(CPU_INCOMPATIBLE, preflight.ERR_CPU_INCOMPATIBLE))
    entry = preflight.check_vm(vm, target, "hv2", context(vm))
    assert not entry["usable"]
    assert any("required features: svm" in r and "Fix:" in r for r in entry["reasons"])


def test_cpu_comparison_libvirt_cannot_do_fails_closed_for_kvm_but_not_for_tcg():
    vm = kvm_vm()
    target = FakeTarget(compare_cpu=TargetError(NO_SUPPORT_COMPARE, preflight.ERR_NO_SUPPORT))
    reasons, _notes = preflight.check_cpu(vm, target, "hv2")
    assert reasons and NO_SUPPORT_COMPARE in reasons[0]["problem"]
    vm["virttype"] = "qemu"
    reasons, notes = preflight.check_cpu(vm, target, "hv2")
    assert reasons == [] and "TCG" in notes[0]


def test_host_passthrough_compares_the_source_hosts_cpu_model():
    vm = kvm_vm()
    vm["cpu"] = {"mode": "host-passthrough", "model": None, "migratable": None, "xml": "<cpu mode='host-passthrough'/>"}
    source_model = preflight.host_model_cpu(DOMCAPS_TCG)
    target = FakeTarget(compare_cpu=preflight.CPU_COMPARE_SUPERSET)
    reasons, notes = preflight.check_cpu(vm, target, "hv2", source_host_model=source_model)
    assert reasons == []
    assert target.calls[-1][2] == source_model                 # never the modeless <cpu> itself
    assert any("source host's CPU model" in n for n in notes) and any("more features" in n for n in notes)
    # without the source's model there is nothing to compare: not usable
    reasons, _notes = preflight.check_cpu(vm, FakeTarget(), "hv2", source_host_model=None)
    assert reasons and "host-passthrough" in reasons[0]["problem"]
    vm["cpu"]["migratable"] = "off"
    reasons, _notes = preflight.check_cpu(vm, FakeTarget(), "hv2", source_host_model=source_model)
    assert reasons and "migratable='off'" in reasons[0]["problem"]


def test_unexpanded_host_model_uses_the_source_model_and_no_model_is_qemus_default():
    vm = kvm_vm()
    vm["cpu"] = {"mode": "host-model", "model": None, "migratable": None, "xml": "<cpu mode='host-model'/>"}
    target = FakeTarget()
    reasons, _notes = preflight.check_cpu(vm, target, "hv2", source_host_model="<cpu mode='custom'><model>EPYC</model></cpu>")
    assert reasons == [] and "EPYC" in target.calls[-1][2]
    vm["cpu"] = {"mode": None, "model": None, "migratable": None, "xml": None}
    reasons, notes = preflight.check_cpu(vm, FakeTarget(), "hv2")
    assert reasons == [] and "default model" in notes[0]


def test_machine_type_the_target_lacks_is_a_reason():
    vm = kvm_vm()
    vm["machine"] = "pc-q35-8.2"
    text = "invalid argument: the machine 'pc-q35-8.2' is not supported by emulator '/usr/bin/qemu-system-x86_64'"
    refusing = FakeTarget(domain_capabilities=TargetError(text, preflight.ERR_INVALID_ARG))
    reasons, _notes = preflight.check_machine(vm, refusing, "hv2")
    assert reasons and text in reasons[0]["problem"] and "pc-q35-8.2" in reasons[0]["fix"]


def test_machine_type_falls_back_to_capabilities_when_domain_capabilities_are_missing():
    vm = kvm_vm()
    no_domcaps = TargetError(NO_SUPPORT_DOMCAPS, preflight.ERR_NO_SUPPORT)
    reasons, note = preflight.check_machine(vm, FakeTarget(domain_capabilities=no_domcaps), "hv2")
    assert reasons == [] and "capabilities" in note
    vm["machine"] = "pc-q35-8.2"
    reasons, _notes = preflight.check_machine(vm, FakeTarget(domain_capabilities=no_domcaps), "hv2")
    assert reasons and "no machine type pc-q35-8.2" in reasons[0]["problem"]
    vm["machine"], vm["emulator"] = "q35", "/opt/qemu/bin/qemu-system-x86_64"
    reasons, _notes = preflight.check_machine(vm, FakeTarget(domain_capabilities=no_domcaps), "hv2")
    assert reasons and "no emulator /opt/qemu" in reasons[0]["problem"]


def test_older_qemu_on_the_target_is_flagged_unless_allowed():
    reasons, _notes = preflight.check_qemu_version(8002000, 7002000, "hv2")
    assert reasons and "QEMU 7.2.0, older than the source's 8.2.0" in reasons[0]["problem"]
    reasons, notes = preflight.check_qemu_version(8002000, 7002000, "hv2", allow_older=True)
    assert reasons == [] and "allow_older_qemu" in notes[0]
    assert preflight.check_qemu_version(7002000, 8002000, "hv2") == ([], [])
    reasons, _notes = preflight.check_qemu_version(None, 8002000, "hv2")
    assert reasons and "unknown" in reasons[0]["problem"]


def test_networks_and_bridges_must_exist_on_the_target():
    vm = kvm_vm()
    reasons, _notes = preflight.check_interfaces(vm, FakeTarget(networks={}, interfaces={}), "hv2")
    problems = " | ".join(r["problem"] for r in reasons)
    assert "no libvirt network 'prod'" in problems and "no host interface 'br-storage'" in problems
    assert len(reasons) == 2                                         # type='user' needs nothing
    inactive = FakeTarget(networks={"prod": {"active": False, "portgroups": ["web"]}})
    reasons, _notes = preflight.check_interfaces(vm, inactive, "hv2")
    assert reasons and "not active" in reasons[0]["problem"] and "net-start" in reasons[0]["fix"]
    no_portgroup = FakeTarget(networks={"prod": {"active": True, "portgroups": []}})
    reasons, _notes = preflight.check_interfaces(vm, no_portgroup, "hv2")
    assert reasons and "portgroup 'web'" in reasons[0]["problem"]


def test_a_bridge_that_is_not_a_bridge_is_a_reason_but_an_ovs_bridge_is_not():
    vm = kvm_vm()
    target = FakeTarget(interfaces={"br-storage": {"type": "ethernet"}})
    reasons, _notes = preflight.check_interfaces(vm, target, "hv2")
    assert reasons and "not a bridge" in reasons[0]["problem"]
    vm["interfaces"][1]["virtualport"] = "openvswitch"
    assert preflight.check_interfaces(vm, target, "hv2")[0] == []


def test_interface_types_the_preflight_cannot_check_fail_closed():
    vm = kvm_vm()
    vm["interfaces"] = [{"type": "vhostuser", "mac": "52:54:00:00:00:09", "network": None, "portgroup": None,
                         "bridge": None, "dev": None, "virtualport": None}]
    reasons, _notes = preflight.check_interfaces(vm, FakeTarget(), "hv2")
    assert reasons and "vhostuser" in reasons[0]["problem"]


def test_host_devices_make_a_vm_unusable_everywhere():
    xml = DOMAIN_KVM.replace("</devices>", "<hostdev mode='subsystem' type='pci' managed='yes'><source>"
                             "<address domain='0x0000' bus='0x3b' slot='0x00' function='0x1'/></source></hostdev>"
                             "</devices>")
    vm = preflight.parse_domain(xml)
    entry = preflight.check_vm(vm, FakeTarget(), "hv2", context(vm))
    assert not entry["usable"] and "host device" in entry["reasons"][0]


def test_shared_storage_disks_and_backing_files_must_exist_on_the_target():
    vm = kvm_vm()
    paths = all_paths(vm)
    paths["/var/lib/libvirt/images/base/debian12.qcow2"] = {"exists": False, "size": None}
    reasons, _notes = preflight.check_disks(vm, FakeTarget(), "hv2", "none", paths)
    assert len(reasons) == 1
    assert "/var/lib/libvirt/images/base/debian12.qcow2 (disk vda) does not exist on hv2" in reasons[0]["problem"]


def test_without_target_facts_libvirt_volumes_decide_and_unknown_paths_fail_closed():
    vm = kvm_vm()
    target = FakeTarget(volumes={"/var/lib/libvirt/images/web01.qcow2": "web01.qcow2",
                                 "/var/lib/libvirt/images/base/debian12.qcow2": "debian12.qcow2"})
    reasons, _notes = preflight.check_disks(vm, target, "hv2", "none", None)
    assert len(reasons) == 1
    assert "/dev/vg0/web01-data (disk vdb) could not be found on hv2" in reasons[0]["problem"]
    assert "only volumes of active storage pools" in reasons[0]["problem"] and "target_facts" in reasons[0]["fix"]


def test_copied_disks_need_a_pool_for_their_directory_and_inc_needs_the_backing_files():
    vm = kvm_vm()
    no_files = {p: {"exists": False, "size": None} for p in all_paths(vm)}
    no_files["/dev/vg0/web01-data"] = {"exists": True, "size": 1}   # block devices are never pre-created
    reasons, _notes = preflight.check_disks(vm, FakeTarget(), "hv2", "all", no_files)
    assert len(reasons) == 1 and "storage pool for /var/lib/libvirt/images" in reasons[0]["problem"]
    assert "pool-define-as" in reasons[0]["fix"]
    with_pool = FakeTarget(pools={"/var/lib/libvirt/images": "default"})
    assert preflight.check_disks(vm, with_pool, "hv2", "all", no_files)[0] == []
    reasons, _notes = preflight.check_disks(vm, with_pool, "hv2", "inc", no_files)
    assert len(reasons) == 1 and "debian12.qcow2" in reasons[0]["problem"]
    no_files["/dev/vg0/web01-data"] = {"exists": False, "size": None}
    reasons, _notes = preflight.check_disks(vm, with_pool, "hv2", "all", no_files)
    assert len(reasons) == 1 and "/dev/vg0/web01-data" in reasons[0]["problem"]


def test_a_read_only_disk_is_not_copied_and_must_exist():
    vm = preflight.parse_domain(DOMAIN_KVM.replace("<target dev='vda' bus='virtio'/>",
                                                   "<target dev='vda' bus='virtio'/><readonly/>"))
    no_files = {p: {"exists": False, "size": None} for p in all_paths(vm)}
    with_pool = FakeTarget(pools={"/var/lib/libvirt/images": "default"})
    reasons, _notes = preflight.check_disks(vm, with_pool, "hv2", "all", no_files)
    problems = " | ".join(r["problem"] for r in reasons)
    assert "web01.qcow2 (disk vda) does not exist" in problems


def test_network_disks_need_their_secret_and_pool_volumes_their_pool():
    vm = kvm_vm()
    reasons, _notes = preflight.check_disks(vm, FakeTarget(secrets=set()), "hv2", "none", all_paths(vm))
    assert len(reasons) == 1 and "secret 2a5b9c0e" in reasons[0]["problem"] and "secret-define" in reasons[0]["fix"]
    vm["disks"] = [{"target": "vde", "type": "volume", "device": "disk", "path": None, "pool": "ssd", "volume": "v1",
                    "protocol": None, "name": None, "readonly": False, "shareable": False, "secret_uuid": None,
                    "secret_usage": None, "secret_type": None, "backing": []}]
    reasons, _notes = preflight.check_disks(vm, FakeTarget(), "hv2")
    assert reasons and "pool 'ssd'" in reasons[0]["problem"]
    assert preflight.check_disks(vm, FakeTarget(pool_volumes={("ssd", "v1"): True}), "hv2")[0] == []


def test_every_reason_text_names_the_problem_and_the_fix():
    vm = kvm_vm()
    target = FakeTarget(networks={}, compare_cpu=TargetError(CPU_INCOMPATIBLE, preflight.ERR_CPU_INCOMPATIBLE))
    entry = preflight.check_vm(vm, target, "hv2", context(vm, target_qemu_version=6002000))
    assert len(entry["reasons"]) == 3
    assert all(". Fix: " in text for text in entry["reasons"])
    assert entry["fix"].count(";") == 2


# --- summary and inputs -------------------------------------------------------------------

def test_summary_lists_usable_targets_vm_targets_and_vms_with_nowhere_to_go():
    ok = preflight.shape([])
    bad = preflight.shape([{"problem": "no network 'prod'", "fix": "define it"}])
    targets = {"hv2": dict(ok, uri="u2"), "hv3": dict(preflight.shape([{"problem": "refused", "fix": "tls"}]), uri="u3")}
    vms = {"web01": {"hv2": ok, "hv3": preflight.unusable_target_vm("hv3")},
           "db01": {"hv2": bad, "hv3": preflight.unusable_target_vm("hv3")}}
    summary = preflight.summarize(targets, vms)
    assert summary["usable_targets"] == ["hv2"] and summary["unusable_targets"] == ["hv3"]
    assert summary["vm_targets"] == {"web01": ["hv2"], "db01": []}
    assert summary["vms_without_target"] == ["db01"] and summary["ok"] is False
    assert "target hv3 (u3): usable: no, why: refused. Fix: tls" in summary["lines"]
    assert "VM db01 on hv2: usable: no, why: no network 'prod'. Fix: define it" in summary["lines"]
    assert not any(line.startswith("VM web01 on hv3") for line in summary["lines"])


def test_targets_input_is_checked():
    assert preflight.normalize_targets({"hv2": "qemu+tls://hv2/system"}) == [("hv2", "qemu+tls://hv2/system")]
    assert preflight.normalize_targets([{"name": "hv3", "uri": None}]) == [("hv3", None)]
    for bad, words in (({}, "empty"), ("hv2", "must be a dict"), ([{"uri": "x"}], "needs a name"),
                       ([{"name": "a", "uri": "x"}, {"name": "a", "uri": "y"}], "twice"), ({"a": 5}, "string")):
        with pytest.raises(preflight.PreflightInputError, match=words):
            preflight.normalize_targets(bad)


def test_paths_by_target_reads_host_capacity_loop_results():
    results = [{"item": "hv2", "paths": {"/a": {"exists": True, "size": 1}}},
               {"item": "hv3", "failed": True, "msg": "libvirt down"},
               {"item": "hv4", "unreachable": True}]
    assert preflight.paths_by_target(results) == {"hv2": {"/a": {"exists": True, "size": 1}}}
    assert preflight.paths_by_target({"hv2": {"paths": {}}}) == {"hv2": {}}
    assert preflight.paths_by_target(None) == {}


def test_run_with_timeout_gives_up_on_a_call_that_hangs():
    release = threading.Event()
    finished, value, error = preflight.run_with_timeout(lambda: release.wait(5), 0.2)
    assert (finished, value, error) == (False, None, None)
    release.set()
    assert preflight.run_with_timeout(lambda: 42, 5) == (True, 42, None)
    finished, _value, error = preflight.run_with_timeout(lambda: 1 / 0, 5)
    assert finished and isinstance(error, ZeroDivisionError)


def test_version_format():
    assert preflight.format_version(9000000) == "9.0.0" and preflight.format_version(7002005) == "7.2.5"
    assert preflight.format_version(None) is None


def test_planned_moves_are_checked_again_before_the_cordon():
    ok = preflight.shape([])
    bad = preflight.shape([{"problem": "hv2 has no libvirt network 'prod'", "fix": "define it"}])
    targets = {"hv2": dict(ok, uri="u2"), "hv3": dict(preflight.shape([{"problem": "refused", "fix": "tls"}]), uri="u3")}
    vms = {"web01": {"hv2": ok, "hv3": preflight.unusable_target_vm("hv3")},
           "db01": {"hv2": bad, "hv3": preflight.unusable_target_vm("hv3")},
           "app01": {"hv2": ok, "hv3": preflight.unusable_target_vm("hv3")}}
    assert preflight.check_planned({"web01": "hv2"}, targets, vms) == {"ok": True, "problems": [], "notes": []}
    result = preflight.check_planned({"web01": "hv2", "db01": "hv2", "app01": "hv3", "gone01": "hv2",
                                      "left01": None, "x01": "hv9"}, targets, vms)
    assert result["ok"] is False
    assert result["problems"] == [
        "app01 -> hv3 no longer passes the preflight: refused. Fix: tls",
        "db01 -> hv2 no longer passes the preflight: hv2 has no libvirt network 'prod'. Fix: define it",
    ]
    assert result["notes"] == ["gone01 no longer runs on the source: nothing to move",
                               "x01 no longer runs on the source: nothing to move"]
    assert preflight.check_planned({"x01": "hv9"}, targets, dict(vms, x01={}))["problems"] == [
        "x01 is planned for hv9, which the preflight was not given"]


class _LvError(Exception):
    def __init__(self, msg, code):
        super().__init__(msg)
        self.code = code

    def get_error_code(self):
        return self.code


class _FakeLibvirt:
    """The parts of libvirt-python read_source uses; the domain's XMLDesc raises ``xml_error``."""

    libvirtError = _LvError

    def __init__(self, xml_error=None):
        self.xml_error = xml_error

    def open(self, uri):
        lv = self

        class Dom:
            def XMLDesc(self, flags):  # noqa: N802  (libvirt's name)
                assert flags == preflight.DOMAIN_XML_MIGRATABLE
                if lv.xml_error:
                    raise lv.xml_error
                return DOMAIN_KVM

            def UUIDString(self):  # noqa: N802
                return "7d3c1a52-52f6-4b40-9c55-0c5a4c1e0f11"

        class Conn:
            def getCapabilities(self):  # noqa: N802
                return CAPS

            def listAllDomains(self, flags):  # noqa: N802
                return [Dom()]

            def getHostname(self):  # noqa: N802
                return "hv1"

            def getVersion(self):  # noqa: N802
                return 7002000

            def getLibVersion(self):  # noqa: N802
                return 9000000

            def close(self):
                return 0

        return Conn()


def test_read_source_drops_only_vms_that_are_gone_and_fails_on_other_errors():
    source = preflight.read_source(_FakeLibvirt(), "qemu:///system")
    assert [vm["name"] for vm in source["vms"]] == ["web01"] and source["qemu_version"] == 7002000
    # libvirt 9.0 on a read-only connection (recorded with the test driver): never a silent skip
    forbidden = _LvError("operation forbidden: virDomainGetXMLDesc with secure flag", 29)
    with pytest.raises(preflight.PreflightSourceError, match="secure flag"):
        preflight.read_source(_FakeLibvirt(forbidden), "qemu:///system")
    gone = _LvError("Domain not found: no domain with matching uuid '7d3c1a52-52f6-4b40-9c55-0c5a4c1e0f11'", 42)
    source = preflight.read_source(_FakeLibvirt(gone), "qemu:///system")
    assert source["vms"] == [] and source["gone"] == ["7d3c1a52-52f6-4b40-9c55-0c5a4c1e0f11"]
    with pytest.raises(preflight.PreflightInputError, match="'db01'.*its running VMs: web01"):
        preflight.read_source(_FakeLibvirt(), "qemu:///system", ["db01"])
