# -*- coding: utf-8 -*-
# Copyright (c) kvm_ras.poison_guard contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Migration preflight: can each target be reached, and can each VM run there?

Pure Python with no Ansible imports. The checks ask a *target* object (``LibvirtTarget``
wraps a libvirt connection; tests pass their own) and turn every answer into either nothing
(fine), a note (fine, but worth saying) or a reason (not usable: the problem and the fix).
Anything that cannot be determined is a reason too: the preflight fails closed.

- ``parse_domain(xml)``: what of a domain's (migratable) XML decides where it can run.
- ``parse_capabilities(xml)`` / ``host_model_cpu(domcaps_xml)``: the parts of libvirt's
  capabilities and domain capabilities the checks use.
- ``check_target(...)``: one target as a whole (reached, not the source itself, versions).
- ``check_vm(vm, target, context)``: one VM on one target (CPU, machine type and emulator,
  QEMU version, networks and bridges, disks).
- ``summarize(targets, vms)``: the flat summary and the lines the plan shows.
"""

from __future__ import annotations

import os
import threading
import xml.etree.ElementTree as ET

TRANSPORT_FIX = ("configure the migration transport between the hypervisors with the "
                 "kvm_ras.poison_guard.migration_transport role (docs/migration-transport.md), or give "
                 "the URI the transport uses (evacuate_migration_uri_template or the host's kvm_ras_migration_uri)")

# Stable values of libvirt's public API (include/libvirt/virterror.h, libvirt-host.h,
# libvirt-domain.h), used so the rules can be tested without libvirt installed.
ERR_NO_SUPPORT = 3
ERR_INVALID_ARG = 8
ERR_NO_DOMAIN = 42
ERR_NO_NETWORK = 43
ERR_NO_STORAGE_POOL = 49
ERR_NO_STORAGE_VOL = 50
ERR_NO_NODE_DEVICE = 53
ERR_NO_INTERFACE = 57
ERR_NO_SECRET = 66
ERR_CONFIG_UNSUPPORTED = 67
ERR_OPERATION_UNSUPPORTED = 84
ERR_CPU_INCOMPATIBLE = 91
UNSUPPORTED_CODES = (ERR_NO_SUPPORT, ERR_OPERATION_UNSUPPORTED)

CPU_COMPARE_INCOMPATIBLE = 0
CPU_COMPARE_IDENTICAL = 1
CPU_COMPARE_SUPERSET = 2
COMPARE_CPU_FAIL_INCOMPATIBLE = 1
DOMAIN_XML_MIGRATABLE = 8
LIST_DOMAINS_ACTIVE = 1
LIST_NODE_DEVICES_CAP_NET = 1 << 4

COPY_STORAGE_MODES = ("none", "all", "inc")

# Interface types that need nothing of the target host (QEMU's own user networking, and
# sockets to an address given in the XML).
HOSTLESS_INTERFACES = ("user", "mcast", "udp", "server", "client", "null")


class TargetError(Exception):
    """A target (or the source) did not answer a question: libvirt's text and error code."""

    def __init__(self, message, code=None):
        super().__init__(message)
        self.code = code


class PreflightInputError(ValueError):
    """Inputs the preflight cannot work with."""


def _text(node, path):
    found = node.find(path) if node is not None else None
    return found.text.strip() if found is not None and found.text else None


def format_version(number):
    """libvirt's version integer (major * 1,000,000 + minor * 1,000 + micro) -> "7.2.0"."""
    if number is None:
        return None
    number = int(number)
    return "%d.%d.%d" % (number // 1000000, number // 1000 % 1000, number % 1000)


# --------------------------------------------------------------------------- parsing --

def parse_domain(xml_text):
    """What of a domain XML decides where the VM can run.

    Returns {name, uuid, virttype, arch, machine, emulator, cpu, interfaces, disks, hostdevs}.
    ``cpu`` is {mode, model, migratable, xml} (``xml`` is the <cpu> element as text, or None).
    """
    root = ET.fromstring(xml_text)
    os_type = root.find("./os/type")
    cpu = root.find("./cpu")
    cpu_info = {"mode": None, "model": None, "migratable": None, "xml": None}
    if cpu is not None:
        cpu_info = {
            "mode": cpu.get("mode") or "custom",
            "model": _text(cpu, "model"),
            "migratable": cpu.get("migratable"),
            "xml": ET.tostring(cpu, encoding="unicode"),
        }
    interfaces = []
    for iface in root.findall("./devices/interface"):
        source = iface.find("source")
        virtualport = iface.find("virtualport")
        interfaces.append({
            "type": iface.get("type"),
            "mac": (iface.find("mac").get("address") if iface.find("mac") is not None else None),
            "network": source.get("network") if source is not None else None,
            "portgroup": source.get("portgroup") if source is not None else None,
            "bridge": source.get("bridge") if source is not None else None,
            "dev": source.get("dev") if source is not None else None,
            "virtualport": virtualport.get("type") if virtualport is not None else None,
        })
    disks = []
    for disk in root.findall("./devices/disk"):
        disks.append(_parse_disk(disk))
    return {
        "name": _text(root, "name"),
        "uuid": _text(root, "uuid"),
        "virttype": root.get("type"),
        "arch": os_type.get("arch") if os_type is not None else None,
        "machine": os_type.get("machine") if os_type is not None else None,
        "emulator": _text(root, "./devices/emulator"),
        "cpu": cpu_info,
        "interfaces": interfaces,
        "disks": disks,
        "hostdevs": len(root.findall("./devices/hostdev")) + sum(
            1 for i in interfaces if i["type"] == "hostdev"),
    }


def _source_path(source):
    if source is None:
        return None
    return source.get("file") or source.get("dev") or source.get("dir")


def _parse_disk(disk):
    source = disk.find("source")
    target = disk.find("target")
    auth_secret = disk.find("./auth/secret")
    if auth_secret is None and source is not None:
        auth_secret = source.find("./auth/secret")  # libvirt 3.9+ formats <auth> inside <source>
    chain = []
    store = disk.find("backingStore")
    while store is not None and store.get("type"):
        path = _source_path(store.find("source"))
        if store.get("type") in ("file", "block") and path:
            chain.append(path)
        store = store.find("backingStore")
    return {
        "target": target.get("dev") if target is not None else None,
        "type": disk.get("type"),
        "device": disk.get("device") or "disk",
        "path": _source_path(source),
        "pool": source.get("pool") if source is not None else None,
        "volume": source.get("volume") if source is not None else None,
        "protocol": source.get("protocol") if source is not None else None,
        "name": source.get("name") if source is not None else None,
        "readonly": disk.find("readonly") is not None,
        "shareable": disk.find("shareable") is not None,
        "secret_uuid": auth_secret.get("uuid") if auth_secret is not None else None,
        "secret_usage": auth_secret.get("usage") if auth_secret is not None else None,
        "secret_type": auth_secret.get("type") if auth_secret is not None else None,
        "backing": chain,
    }


def parse_capabilities(xml_text):
    """{host_uuid, arch, guests: {(arch, virttype): {machines: set, emulators: set}}}."""
    root = ET.fromstring(xml_text)
    guests = {}
    for guest in root.findall("./guest"):
        arch = guest.find("arch")
        if arch is None:
            continue
        names = set()
        for machine in arch.findall("machine"):
            if machine.text:
                names.add(machine.text.strip())
            if machine.get("canonical"):
                names.add(machine.get("canonical"))
        for dom in arch.findall("domain"):
            key = (arch.get("name"), dom.get("type"))
            entry = guests.setdefault(key, {"machines": set(), "emulators": set()})
            entry["machines"].update(names)
            for machine in dom.findall("machine"):
                if machine.text:
                    entry["machines"].add(machine.text.strip())
            emulator = _text(dom, "emulator") or _text(arch, "emulator")
            if emulator:
                entry["emulators"].add(emulator)
    return {"host_uuid": (_text(root, "./host/uuid") or "").lower() or None,
            "arch": _text(root, "./host/cpu/arch"), "guests": guests}


def host_model_cpu(domcaps_xml):
    """The host-model CPU of a domain capabilities XML as a guest <cpu mode='custom'> element
    (text), or None when the hypervisor reports none. This is the CPU libvirt gives a
    ``host-model`` guest on that host, and the migratable part of what ``host-passthrough``
    shows the guest."""
    root = ET.fromstring(domcaps_xml)
    for mode in root.findall("./cpu/mode"):
        if mode.get("name") != "host-model" or mode.get("supported") != "yes":
            continue
        model = mode.find("model")
        if model is None or not (model.text or "").strip():
            return None
        cpu = ET.Element("cpu", {"mode": "custom", "match": "exact"})
        ET.SubElement(cpu, "model", {"fallback": "forbid"}).text = model.text.strip()
        vendor = _text(mode, "vendor")
        if vendor:
            ET.SubElement(cpu, "vendor").text = vendor
        for feature in mode.findall("feature"):
            ET.SubElement(cpu, "feature", {"policy": feature.get("policy") or "require",
                                           "name": feature.get("name")})
        return ET.tostring(cpu, encoding="unicode")
    return None


# --------------------------------------------------------------------------- results --

def _reason(problem, fix):
    return {"problem": problem, "fix": fix}


def shape(reasons, notes=None, **extra):
    """{usable, reasons: [text], fix, notes, ...} from [{problem, fix}] (texts name both)."""
    texts, fixes = [], []
    for item in reasons:
        texts.append("%s. Fix: %s" % (item["problem"].rstrip("."), item["fix"]))
        if item["fix"] not in fixes:
            fixes.append(item["fix"])
    result = {"usable": not reasons, "reasons": texts, "fix": "; ".join(fixes) or None,
              "notes": list(notes or [])}
    result.update(extra)
    return result


# --------------------------------------------------------------------------- target --

def check_target(name, uri, opened, error=None, source_host_uuid=None, info=None):
    """One target as a whole. ``opened``: the connection opened; ``error``: libvirt's text
    when it did not; ``info``: {host_uuid, hostname, libvirt_version, qemu_version} read from it.
    """
    info = dict(info or {})
    extra = {"uri": uri, "hostname": info.get("hostname"),
             "libvirt_version": format_version(info.get("libvirt_version")),
             "qemu_version": format_version(info.get("qemu_version"))}
    if not uri:
        return shape([_reason("%s has no migration URI" % name, TRANSPORT_FIX)], **extra)
    if not opened:
        return shape([_reason("the source could not open %s's migration URI %s: %s" % (name, uri, error or "no answer"),
                              TRANSPORT_FIX)], **extra)
    reasons = []
    if source_host_uuid and info.get("host_uuid") and info["host_uuid"] == source_host_uuid:
        reasons.append(_reason("%s's migration URI %s reaches the source hypervisor itself (host UUID %s)"
                               % (name, uri, source_host_uuid),
                               "point %s's kvm_ras_migration_address (or kvm_ras_migration_uri) at %s itself, and give "
                               "every hypervisor its own host UUID (libvirtd.conf host_uuid)" % (name, name)))
    if info.get("qemu_version") is None:
        reasons.append(_reason("%s did not tell its QEMU version (%s)" % (name, info.get("qemu_version_error") or "no answer"),
                               "check that libvirtd on %s runs the QEMU driver (virsh -c %s version)" % (name, uri)))
    return shape(reasons, **extra)


# --------------------------------------------------------------------------- VM on target --

def _unsupported(exc):
    return isinstance(exc, TargetError) and exc.code in UNSUPPORTED_CODES


def check_machine(vm, target, tname):
    """Emulator, arch, machine type and virt type through the target's domain capabilities
    (libvirt refuses a machine type the emulator does not have), else its capabilities."""
    spec = "%s/%s machine %s (emulator %s)" % (vm["virttype"], vm["arch"], vm["machine"], vm["emulator"] or "default")
    fix = ("choose a target whose QEMU provides machine type %s (same or newer QEMU), or change the VM's "
           "machine type to one every hypervisor has (takes effect when the VM is restarted)" % vm["machine"])
    if not vm.get("machine") or not vm.get("arch"):
        return [_reason("the VM's XML names no machine type or architecture", "check the VM's <os><type> element")], None
    try:
        target.domain_capabilities(vm["emulator"], vm["arch"], vm["machine"], vm["virttype"])
        return [], None
    except TargetError as exc:
        if not _unsupported(exc):
            return [_reason("%s cannot run %s: %s" % (tname, spec, exc), fix)], None
        first = str(exc)
    try:
        caps = parse_capabilities(target.capabilities())
    except (TargetError, ET.ParseError) as exc:
        return [_reason("%s answered neither domain capabilities (%s) nor capabilities (%s)" % (tname, first, exc),
                        "check libvirtd on %s" % tname)], None
    guest = caps["guests"].get((vm["arch"], vm["virttype"]))
    if guest is None:
        return [_reason("%s offers no %s guests of arch %s" % (tname, vm["virttype"], vm["arch"]), fix)], None
    if vm["machine"] not in guest["machines"]:
        return [_reason("%s's QEMU has no machine type %s" % (tname, vm["machine"]), fix)], None
    if vm["emulator"] and guest["emulators"] and vm["emulator"] not in guest["emulators"]:
        return [_reason("%s has no emulator %s (it has %s)" % (tname, vm["emulator"], ", ".join(sorted(guest["emulators"]))),
                        "install the same QEMU package on %s" % tname)], None
    return [], "machine type checked in %s's capabilities (its libvirt has no domain capabilities)" % tname


def check_cpu(vm, target, tname, source_host_model=None):
    """The domain's CPU against what the target's hypervisor can provide
    (virConnectCompareHypervisorCPU). Returns (reasons, notes)."""
    cpu = vm.get("cpu") or {}
    mode = cpu.get("mode")
    notes = []
    fix = ("choose a target with a CPU that has these features, or give the VM a CPU model every "
           "hypervisor provides (a named model, e.g. the baseline of the group: virsh hypervisor-cpu-baseline), "
           "which takes effect when the VM is restarted")
    if mode in ("host-passthrough", "maximum"):
        if cpu.get("migratable") == "off":
            return [_reason("the VM uses <cpu mode='%s' migratable='off'>, which libvirt does not migrate" % mode,
                            "leave it on the source (evacuate_leave_vms) or shut it down; set migratable='on' "
                            "for the future (takes effect at restart)")], notes
        cpu_xml = source_host_model
        if not cpu_xml:
            return [_reason("the VM uses <cpu mode='%s'> and the source did not report its host CPU model, so "
                            "the target cannot be compared" % mode,
                            "check virsh domcapabilities on the source")], notes
        notes.append("CPU mode %s: compared the source host's CPU model; the guest sees the target's CPU "
                     "after the move" % mode)
    elif mode == "host-model" and not cpu.get("model"):
        cpu_xml = source_host_model
        if not cpu_xml:
            return [_reason("the VM uses <cpu mode='host-model'> and neither its XML nor the source gave the "
                            "expanded CPU model", "check virsh domcapabilities on the source")], notes
        notes.append("CPU mode host-model: compared the source host's CPU model")
    elif mode is None or not cpu.get("model"):
        notes.append("no CPU model in the VM's XML: QEMU's default model for %s" % vm.get("arch"))
        return [], notes
    else:
        cpu_xml = cpu["xml"]
    try:
        result = target.compare_cpu(vm["emulator"], vm["arch"], vm["machine"], vm["virttype"], cpu_xml)
    except TargetError as exc:
        if exc.code == ERR_CPU_INCOMPATIBLE:
            return [_reason("%s cannot run the VM's CPU: %s" % (tname, exc), fix)], notes
        if _unsupported(exc) and vm.get("virttype") == "qemu":
            notes.append("TCG guest: QEMU emulates its CPU and %s's libvirt cannot compare it (%s)" % (tname, exc))
            return [], notes
        return [_reason("%s could not compare the VM's CPU: %s" % (tname, exc),
                        "check libvirtd and QEMU on %s (virsh hypervisor-cpu-compare)" % tname)], notes
    if result in (CPU_COMPARE_IDENTICAL, CPU_COMPARE_SUPERSET):
        if mode in ("host-passthrough", "maximum") and result == CPU_COMPARE_SUPERSET:
            notes.append("%s's CPU has more features than the source's: the guest keeps the ones it saw at boot"
                         % tname)
        return [], notes
    if result == CPU_COMPARE_INCOMPATIBLE:
        return [_reason("%s cannot run the VM's CPU" % tname, fix)], notes
    return [_reason("%s gave no CPU comparison result (%r)" % (tname, result),
                    "check libvirtd on %s (virsh hypervisor-cpu-compare)" % tname)], notes


def check_qemu_version(source_version, target_version, tname, allow_older=False):
    if source_version is None or target_version is None:
        return [_reason("the QEMU version of %s is unknown" % ("the source" if source_version is None else tname),
                        "check libvirtd (virsh version)")], []
    if int(target_version) < int(source_version):
        text = ("%s runs QEMU %s, older than the source's %s (QEMU supports migration to the same or a newer "
                "version; an older one may lack the VM's machine type or device state)"
                % (tname, format_version(target_version), format_version(source_version)))
        if allow_older:
            return [], [text + "; allowed by allow_older_qemu"]
        return [_reason(text, "upgrade QEMU on %s first, or set allow_older_qemu=true after testing that "
                              "this pair of versions migrates" % tname)], []
    return [], []


def _look_up(lookup, name, missing_code, what, tname, label, fix, reasons):
    """``lookup(name)`` on the target; None (and a reason) when it lacks it or cannot tell."""
    try:
        return lookup(name)
    except TargetError as exc:
        if exc.code == missing_code:
            reasons.append(_reason("%s has no %s %r (%s)" % (tname, what, name, label), fix))
        else:
            reasons.append(_reason("%s did not say whether it has %s %r: %s" % (tname, what, name, exc), fix))
        return None


def check_interfaces(vm, target, tname):
    reasons, notes = [], []
    for iface in vm.get("interfaces") or []:
        kind = iface["type"]
        label = "interface %s (%s)" % (iface.get("mac") or "?", kind)
        if kind == "network":
            net = iface.get("network")
            fix_net = "define and start libvirt network %r on %s (virsh net-define, net-start, net-autostart)" % (net, tname)
            info = _look_up(target.network, net, ERR_NO_NETWORK, "libvirt network", tname, label, fix_net, reasons)
            if info is None:
                continue
            if not info.get("active"):
                reasons.append(_reason("libvirt network %r on %s is not active" % (net, tname),
                                       "virsh net-start %s on %s (and net-autostart)" % (net, tname)))
            elif iface.get("portgroup") and iface["portgroup"] not in (info.get("portgroups") or []):
                reasons.append(_reason("network %r on %s has no portgroup %r" % (net, tname, iface["portgroup"]),
                                       "add the portgroup to the network on %s" % tname))
        elif kind in ("bridge", "direct"):
            dev = iface.get("bridge") if kind == "bridge" else iface.get("dev")
            fix_dev = "create %s %r on %s with the same name as on the source" % (
                "bridge" if kind == "bridge" else "host interface", dev, tname)
            info = _look_up(target.interface, dev, ERR_NO_INTERFACE, "host interface", tname, label, fix_dev, reasons)
            if info is None:
                continue
            if (kind == "bridge" and iface.get("virtualport") != "openvswitch" and info.get("type")
                    and info["type"] != "bridge"):
                reasons.append(_reason("%r on %s is a %s interface, not a bridge" % (dev, tname, info["type"]), fix_dev))
        elif kind == "hostdev":
            continue  # reported once per VM as a host device
        elif kind in HOSTLESS_INTERFACES:
            continue
        else:
            reasons.append(_reason("the preflight cannot check %s on %s" % (label, tname),
                                   "check by hand that %s provides what this interface needs, then leave the VM "
                                   "out of the preflight (vms) or migrate it by hand" % tname))
    return reasons, notes


def _copied(disk, copy_storage):
    """Whether a storage-copying migration copies this disk (libvirt copies writable,
    non-shareable local disks; read-only and shareable ones must exist on the target)."""
    return (copy_storage in ("all", "inc") and not disk["readonly"] and not disk["shareable"]
            and disk["device"] in ("disk", "lun"))


def _path_known(path, target, target_paths):
    """(True/False/None, how): does the target have this path? None: cannot tell."""
    info = (target_paths or {}).get(path) if target_paths is not None else None
    if info is not None:
        return bool(info.get("exists")), "the target's file system"
    try:
        target.volume_by_path(path)
        return True, "a storage volume of the target's libvirt"
    except TargetError as exc:
        if exc.code == ERR_NO_STORAGE_VOL:
            return None, "libvirt on the target knows no storage volume at that path"
        return None, "libvirt on the target could not look it up: %s" % exc


def check_disks(vm, target, tname, copy_storage="none", target_paths=None):
    reasons, notes = [], []
    for disk in vm.get("disks") or []:
        label = "disk %s" % (disk.get("target") or "?")
        kind = disk.get("type")
        if kind in ("file", "block"):
            if not disk.get("path"):
                continue  # an empty CD-ROM or floppy drive
            wanted = []
            if _copied(disk, copy_storage):
                if kind == "block":
                    wanted.append(disk["path"])  # libvirt pre-creates files only, never block devices
                elif copy_storage == "inc":
                    wanted.extend(disk["backing"])
                    notes.extend(_precreate_notes(disk, target, tname, target_paths, reasons))
                else:
                    notes.extend(_precreate_notes(disk, target, tname, target_paths, reasons))
            else:
                wanted.append(disk["path"])
                wanted.extend(disk["backing"])
            for path in wanted:
                found, how = _path_known(path, target, target_paths)
                if found:
                    continue
                if found is False:
                    problem = "%s (%s) does not exist on %s (%s)" % (path, label, tname, how)
                else:
                    problem = ("%s (%s) could not be found on %s: %s; libvirt sees only volumes of active "
                               "storage pools, as of their last refresh" % (path, label, tname, how))
                reasons.append(_reason(problem, "put the disk on storage %s shares with the source, or copy it "
                                                "with migration_copy_storage=all, or pass the target's host_capacity_info "
                                                "result listing this path (target_facts) so its file system is asked"
                                                % tname))
        elif kind == "volume":
            try:
                target.pool_volume(disk.get("pool"), disk.get("volume"))
            except TargetError as exc:
                reasons.append(_reason("%s: storage volume %r of pool %r is not usable on %s: %s" % (
                    label, disk.get("volume"), disk.get("pool"), tname, exc),
                    "define and start pool %r with that volume on %s" % (disk.get("pool"), tname)))
        elif kind == "network":
            if disk.get("secret_uuid") or disk.get("secret_usage"):
                key = disk.get("secret_uuid") or disk.get("secret_usage")
                try:
                    target.secret(disk.get("secret_uuid"), disk.get("secret_type"), disk.get("secret_usage"))
                except TargetError as exc:
                    reasons.append(_reason("%s (%s %s) needs libvirt secret %s, which %s does not have: %s" % (
                        label, disk.get("protocol"), disk.get("name"), key, tname, exc),
                        "define the same secret on %s (virsh secret-define, secret-set-value)" % tname))
                    continue
            notes.append("%s is network storage (%s %s): whether %s reaches it is not checked" % (
                label, disk.get("protocol"), disk.get("name"), tname))
        else:
            reasons.append(_reason("the preflight cannot check %s of type %s on %s" % (label, kind, tname),
                                   "check it by hand, then migrate the VM by hand or leave it"))
    return reasons, notes


def _precreate_notes(disk, target, tname, target_paths, reasons):
    """A copied file disk: libvirt on the target uses the file if it exists, else creates it
    in the storage pool whose target path is the disk's directory."""
    found, _how = _path_known(disk["path"], target, target_paths)
    if found:
        return ["%s exists on %s already: the copy overwrites it" % (disk["path"], tname)]
    directory = os.path.dirname(disk["path"])
    try:
        target.pool_for_directory(directory)
        return []
    except TargetError as exc:
        reasons.append(_reason("the copy of %s needs a storage pool for %s on %s, where libvirt creates the disk: %s"
                               % (disk["path"], directory, tname, exc),
                               "define, start and autostart a dir pool with target %s on %s "
                               "(virsh pool-define-as NAME dir --target %s)" % (directory, tname, directory)))
        return []


def check_vm(vm, target, tname, context):
    """Every check of one VM on one (opened) target. ``context``: source_qemu_version,
    target_qemu_version, copy_storage, allow_older_qemu, target_paths, source_host_model."""
    reasons, notes = [], []
    if vm.get("hostdevs"):
        reasons.append(_reason("the VM has %d host device(s) (<hostdev>), which libvirt does not live-migrate"
                               % vm["hostdevs"], "detach them first, or leave the VM on the source"))
    for found, said in (
            check_machine(vm, target, tname),
            check_cpu(vm, target, tname, context.get("source_host_model")),
            check_qemu_version(context.get("source_qemu_version"), context.get("target_qemu_version"), tname,
                               context.get("allow_older_qemu", False)),
            check_interfaces(vm, target, tname),
            check_disks(vm, target, tname, context.get("copy_storage", "none"), context.get("target_paths"))):
        reasons.extend(found)
        if isinstance(said, str):
            notes.append(said)
        elif said:
            notes.extend(said)
    return shape(reasons, notes)


def unusable_target_vm(tname):
    return shape([_reason("target %s failed its own preflight" % tname, "see the target's reasons")])


# --------------------------------------------------------------------------- summary --

def summarize(targets, vms):
    """The flat summary: usable targets, per-VM usable targets, VMs with none, and lines."""
    usable_targets = sorted(name for name, entry in targets.items() if entry["usable"])
    vm_targets = {vm: sorted(t for t, entry in per.items() if entry["usable"]) for vm, per in vms.items()}
    nowhere = sorted(vm for vm, names in vm_targets.items() if not names)
    lines = []
    for name in sorted(targets):
        entry = targets[name]
        lines.append("target %s (%s): usable: %s%s" % (
            name, entry.get("uri"), "yes" if entry["usable"] else "no",
            "" if entry["usable"] else ", why: " + " | ".join(entry["reasons"])))
    for vm in sorted(vms):
        for name in sorted(vms[vm]):
            entry = vms[vm][name]
            if not targets.get(name, {}).get("usable"):
                continue
            lines.append("VM %s on %s: usable: %s%s" % (
                vm, name, "yes" if entry["usable"] else "no",
                "" if entry["usable"] else ", why: " + " | ".join(entry["reasons"])))
    return {
        "usable_targets": usable_targets,
        "unusable_targets": sorted(set(targets) - set(usable_targets)),
        "vm_targets": vm_targets,
        "vms_without_target": nowhere,
        "ok": bool(usable_targets) and not nowhere,
        "lines": lines,
    }


def check_planned(planned, targets, vms):
    """Do planned moves {vm: target} still pass? -> {ok, problems: [text], notes: [text]}.

    A VM that no longer runs on the source is a note (nothing to move); a target or VM that
    fails the preflight now is a problem naming the reasons.
    """
    problems, notes = [], []
    for vm, target in sorted((planned or {}).items()):
        if not target:
            continue
        if vm not in vms:
            notes.append("%s no longer runs on the source: nothing to move" % vm)
            continue
        if target not in targets:
            problems.append("%s is planned for %s, which the preflight was not given" % (vm, target))
            continue
        entry = targets[target] if not targets[target]["usable"] else vms[vm].get(target)
        if entry is None or not entry["usable"]:
            problems.append("%s -> %s no longer passes the preflight: %s" % (
                vm, target, " | ".join((entry or {}).get("reasons") or ["not checked"])))
    return {"ok": not problems, "problems": problems, "notes": notes}


def normalize_targets(raw):
    """``targets`` input -> ordered [(name, uri)]: a dict name -> URI (evacuation_request's
    ``migration_uris``) or a list of {name, uri}."""
    pairs = []
    if isinstance(raw, dict):
        pairs = [(str(k), v) for k, v in raw.items()]
    elif isinstance(raw, list):
        for item in raw:
            if not isinstance(item, dict) or not item.get("name"):
                raise PreflightInputError("each item of targets needs a name and a uri, got %r" % (item,))
            pairs.append((str(item["name"]), item.get("uri")))
    else:
        raise PreflightInputError("targets must be a dict target -> migration URI (evacuation_request's "
                                  "migration_uris) or a list of {name, uri}, got %s" % type(raw).__name__)
    if not pairs:
        raise PreflightInputError("targets is empty: give at least one target hypervisor and its migration URI")
    seen = set()
    for name, uri in pairs:
        if name in seen:
            raise PreflightInputError("target %s is given twice" % name)
        seen.add(name)
        if uri is not None and not isinstance(uri, str):
            raise PreflightInputError("the URI of target %s must be a string, got %r" % (name, uri))
    return pairs


def paths_by_target(facts):
    """host_capacity_info results (a loop's ``results`` with ``item``, or a dict target -> result)
    -> {target: {path: {exists, size}}}; targets whose result has no ``paths`` are left out."""
    out = {}
    items = facts.items() if isinstance(facts, dict) else [
        (r.get("item"), r) for r in (facts or []) if isinstance(r, dict)]
    for name, result in items:
        if name and isinstance(result, dict) and isinstance(result.get("paths"), dict) and not result.get("failed"):
            out[str(name)] = result["paths"]
    return out


def run_with_timeout(func, seconds):
    """(finished, value, exception) of ``func()`` run in a daemon thread for at most ``seconds``
    (a libvirt call to an unreachable host can block for minutes)."""
    box = {}

    def work():
        try:
            box["value"] = func()
        except Exception as exc:  # pylint: disable=broad-exception-caught  # reported to the caller
            box["error"] = exc

    worker = threading.Thread(target=work, name="kvm-ras-preflight")
    worker.daemon = True
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        return False, None, None
    return True, box.get("value"), box.get("error")


# --------------------------------------------------------------------------- libvirt --

class LibvirtTarget:
    """The questions the checks ask, over one libvirt connection. Every libvirt error becomes
    a TargetError with libvirt's text and code. Only read calls are made."""

    def __init__(self, conn, libvirt_module):
        self.conn = conn
        self.lv = libvirt_module

    def ask(self, func, *args):
        try:
            return func(*args)
        except self.lv.libvirtError as exc:
            raise TargetError(str(exc), exc.get_error_code()) from None

    def capabilities(self):
        return self.ask(self.conn.getCapabilities)

    def domain_capabilities(self, emulator, arch, machine, virttype):
        return self.ask(self.conn.getDomainCapabilities, emulator, arch, machine, virttype, 0)

    def compare_cpu(self, emulator, arch, machine, virttype, cpu_xml):
        flag = getattr(self.lv, "VIR_CONNECT_COMPARE_CPU_FAIL_INCOMPATIBLE", COMPARE_CPU_FAIL_INCOMPATIBLE)
        return self.ask(self.conn.compareHypervisorCPU, emulator, arch, machine, virttype, cpu_xml, flag)

    def network(self, name):
        net = self.ask(self.conn.networkLookupByName, name)
        root = ET.fromstring(self.ask(net.XMLDesc, 0))
        return {"active": bool(self.ask(net.isActive)),
                "portgroups": [pg.get("name") for pg in root.findall("portgroup")]}

    def interface(self, name):
        try:
            iface = self.ask(self.conn.interfaceLookupByName, name)
        except TargetError as exc:
            if exc.code not in UNSUPPORTED_CODES:
                raise
            return self._net_device(name)
        return {"type": ET.fromstring(self.ask(iface.XMLDesc, 0)).get("type")}

    def _net_device(self, name):
        """Fallback when the target's libvirt has no interface driver: its node devices."""
        flag = getattr(self.lv, "VIR_CONNECT_LIST_NODE_DEVICES_CAP_NET", LIST_NODE_DEVICES_CAP_NET)
        for dev in self.ask(self.conn.listAllDevices, flag):
            root = ET.fromstring(self.ask(dev.XMLDesc, 0))
            if _text(root, "./capability/interface") == name:
                return {"type": None}
        raise TargetError("no network device named %r among the target's node devices" % name, ERR_NO_INTERFACE)

    def volume_by_path(self, path):
        return self.ask(self.conn.storageVolLookupByPath, path).name()

    def pool_for_directory(self, directory):
        return self.ask(self.conn.storagePoolLookupByTargetPath, directory).name()

    def pool_volume(self, pool_name, volume):
        pool = self.ask(self.conn.storagePoolLookupByName, pool_name)
        if not self.ask(pool.isActive):
            raise TargetError("storage pool %r is not active" % pool_name, ERR_NO_STORAGE_POOL)
        return self.ask(pool.storageVolLookupByName, volume).name()

    def secret(self, uuid, usage_type=None, usage_id=None):
        if uuid:
            return self.ask(self.conn.secretLookupByUUIDString, uuid).UUIDString()
        # VIR_SECRET_USAGE_TYPE_* (include/libvirt/libvirt-secret.h)
        kinds = {"volume": 1, "ceph": 2, "iscsi": 3, "tls": 4, "vtpm": 5}
        kind = kinds.get(usage_type or "ceph")
        if kind is None:
            raise TargetError("secret usage type %r is not one the preflight knows" % usage_type, ERR_NO_SECRET)
        return self.ask(self.conn.secretLookupByUsage, kind, usage_id).UUIDString()


# --------------------------------------------------------------------------- the run --

class PreflightSourceError(RuntimeError):
    """The source could not be read: nothing can be checked."""


def _target_info(target, conn):
    info = {}
    try:
        caps = parse_capabilities(target.capabilities())
        info["host_uuid"] = caps["host_uuid"]
    except (TargetError, ET.ParseError):
        info["host_uuid"] = None
    for key, call in (("hostname", conn.getHostname), ("libvirt_version", conn.getLibVersion),
                      ("qemu_version", conn.getVersion)):
        try:
            info[key] = target.ask(call)
        except TargetError as exc:
            info[key] = None
            info[key + "_error"] = str(exc)
    return info


def _check_one_target(lv, name, uri, vms, source, options):
    try:
        conn = lv.open(uri)
    except lv.libvirtError as exc:
        return check_target(name, uri, False, error=str(exc)), {}
    try:
        target = LibvirtTarget(conn, lv)
        info = _target_info(target, conn)
        entry = check_target(name, uri, True, source_host_uuid=source["host_uuid"], info=info)
        per_vm = {}
        if not entry["usable"]:
            return entry, {vm["name"]: unusable_target_vm(name) for vm in vms}
        context = {
            "source_qemu_version": source["qemu_version"],
            "target_qemu_version": info.get("qemu_version"),
            "copy_storage": options.get("copy_storage", "none"),
            "allow_older_qemu": options.get("allow_older_qemu", False),
            "target_paths": (options.get("target_paths") or {}).get(name),
        }
        for vm in vms:
            context["source_host_model"] = source["host_models"].get(_host_model_key(vm))
            per_vm[vm["name"]] = check_vm(vm, target, name, context)
        return entry, per_vm
    finally:
        try:
            conn.close()
        except lv.libvirtError:
            pass


def _host_model_key(vm):
    return (vm.get("emulator"), vm.get("arch"), vm.get("machine"), vm.get("virttype"))


def _needs_host_model(vm):
    cpu = vm.get("cpu") or {}
    return cpu.get("mode") in ("host-passthrough", "maximum") or (cpu.get("mode") == "host-model" and not cpu.get("model"))


def read_source(lv, source_uri, wanted=None):
    """The source's active VMs (migratable XML, parsed) and what the checks need of the source."""
    try:
        # Read-write although only read: libvirt refuses the migratable XML (what the target would
        # receive) on a read-only connection ("operation forbidden: virDomainGetXMLDesc with secure flag").
        conn = lv.open(source_uri)
    except lv.libvirtError as exc:
        raise PreflightSourceError("cannot open the source libvirt %s: %s (is libvirtd running, and does the task "
                                   "run with become on the source hypervisor?)" % (source_uri, exc)) from None
    try:
        source = LibvirtTarget(conn, lv)
        caps = parse_capabilities(source.capabilities())
        flag = getattr(lv, "VIR_DOMAIN_XML_MIGRATABLE", DOMAIN_XML_MIGRATABLE)
        domains, gone = [], []
        for dom in source.ask(conn.listAllDomains, getattr(lv, "VIR_CONNECT_LIST_DOMAINS_ACTIVE", LIST_DOMAINS_ACTIVE)):
            try:
                domains.append(parse_domain(dom.XMLDesc(flag)))
            except lv.libvirtError as exc:
                if exc.get_error_code() != ERR_NO_DOMAIN:
                    raise TargetError("reading the XML of a VM (%s): %s" % (dom.UUIDString(), exc),
                                      exc.get_error_code()) from None
                gone.append(dom.UUIDString())  # stopped or migrated away between listing and reading
        if wanted:
            by_key = {}
            for vm in domains:
                by_key[vm["name"]] = vm
                if vm.get("uuid"):
                    by_key[vm["uuid"].lower()] = vm
            missing = [w for w in wanted if w not in by_key and str(w).lower() not in by_key]
            if missing:
                raise PreflightInputError("vms names %s, which %s does not run (its running VMs: %s)" % (
                    ", ".join(repr(m) for m in missing), source_uri,
                    ", ".join(sorted(vm["name"] for vm in domains)) or "none"))
            chosen = []
            for w in wanted:
                vm = by_key.get(w) or by_key.get(str(w).lower())
                if vm not in chosen:
                    chosen.append(vm)
            domains = chosen
        host_models = {}
        for vm in domains:
            key = _host_model_key(vm)
            if _needs_host_model(vm) and key not in host_models:
                try:
                    host_models[key] = host_model_cpu(source.domain_capabilities(*key))
                except (TargetError, ET.ParseError):
                    host_models[key] = None
        return {
            "uri": source_uri,
            "host_uuid": caps["host_uuid"],
            "hostname": source.ask(conn.getHostname),
            "qemu_version": source.ask(conn.getVersion),
            "libvirt_version": source.ask(conn.getLibVersion),
            "vms": domains,
            "gone": gone,
            "host_models": host_models,
        }
    except TargetError as exc:
        raise PreflightSourceError("the source libvirt %s stopped answering: %s" % (source_uri, exc)) from None
    finally:
        try:
            conn.close()
        except lv.libvirtError:
            pass


def run(lv, source_uri, targets, vms=None, copy_storage="none", allow_older_qemu=False, target_paths=None,
        timeout=60.0, planned=None):
    """The whole preflight: {source, targets, vms, summary}. ``lv`` is the libvirt module."""
    pairs = normalize_targets(targets)
    if copy_storage not in COPY_STORAGE_MODES:
        raise PreflightInputError("copy_storage must be one of %s, got %r" % (", ".join(COPY_STORAGE_MODES), copy_storage))
    if timeout is None or timeout <= 0:
        raise PreflightInputError("timeout must be a positive number of seconds, got %r" % (timeout,))
    source = read_source(lv, source_uri, vms)
    options = {"copy_storage": copy_storage, "allow_older_qemu": allow_older_qemu,
               "target_paths": target_paths or {}}
    target_results, vm_results = {}, {vm["name"]: {} for vm in source["vms"]}
    for name, uri in pairs:
        if not uri:
            entry, per_vm = check_target(name, uri, False), {}
        else:
            finished, value, error = run_with_timeout(
                lambda n=name, u=uri: _check_one_target(lv, n, u, source["vms"], source, options), timeout)
            if not finished:
                entry, per_vm = shape([_reason("%s did not answer within %s s (opening %s or checking the VMs)"
                                               % (name, timeout, uri), TRANSPORT_FIX)], uri=uri), {}
            elif error is not None:
                entry, per_vm = shape([_reason("checking %s failed: %s" % (name, error),
                                               "check libvirtd on %s" % name)], uri=uri), {}
            else:
                entry, per_vm = value
        target_results[name] = entry
        for vm in source["vms"]:
            vm_results[vm["name"]][name] = per_vm.get(vm["name"]) or unusable_target_vm(name)
    summary = summarize(target_results, vm_results)
    if planned is not None:
        summary["planned"] = check_planned(planned, target_results, vm_results)
    return {
        "source": {"uri": source_uri, "hostname": source["hostname"],
                   "qemu_version": format_version(source["qemu_version"]),
                   "libvirt_version": format_version(source["libvirt_version"]),
                   "vms": [vm["name"] for vm in source["vms"]], "gone": source["gone"]},
        "targets": target_results,
        "vms": vm_results,
        "summary": summary,
    }
