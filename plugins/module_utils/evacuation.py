# -*- coding: utf-8 -*-
# Copyright (c) kvm_ras.poison_guard contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The rules of ``evacuate_host.yml`` (pure Python, no Ansible imports).

One place for each rule of an evacuation:

- ``validate_request``: the operator's inputs (extra vars) against the inventory, before
  anything happens. Every problem is collected and reported at once, each with its fix.
- ``target_capacity`` / ``place``: which target has room (free memory, vCPUs) for which VM.
- ``decide_action``: what happens to one VM, from its poison status, the gate's decision and
  the two policies.
- ``build_plan`` / ``render_plan``: the plan (VM -> target, or why it stays) and its table.
- ``vm_outcome``: what really happened to one VM, from the registered task results.
- ``verify``: after the run, every VM of the source runs exactly once and its persistent
  definition is where it belongs.
- ``build_report`` / ``render_report`` / ``exit_decision``: the report (JSON + table) and the
  exit-status rule: fail when anything stayed behind that the operator did not ask to leave.

What a hypervisor decides on its own (the evacuation lock, the cordon marker, disks of a
domain, libvirt's state words) lives in ``host_markers.py`` and ``libvirt.py``: modules import
those, never this file.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import shlex
import urllib.parse

from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.libvirt import ACTIVE_STATE_WORDS
from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.messages import UPSTREAM_REFUSAL

# --------------------------------------------------------------------------- vocabulary --

POISONED_VM_POLICIES = ("leave", "reboot_then_migrate", "cold_migrate")
UNKNOWN_VM_POLICIES = ("leave", "migrate")
REBOOT_MODES = ("restart", "reset")
COPY_STORAGE_MODES = ("none", "all", "inc")

# What the plan does with a VM.
ACTION_LIVE = "live_migrate"
ACTION_REBOOT = "reboot_then_migrate"
ACTION_COLD = "cold_migrate"
ACTION_LEAVE = "leave"
ACTION_NONE = "none"  # not running: nothing to move
MOVING_ACTIONS = (ACTION_LIVE, ACTION_REBOOT, ACTION_COLD)

# Final status of a VM in the report.
ST_MIGRATED = "migrated"          # runs on a target, as planned
ST_LEFT = "left"                  # on the source because the operator asked (policy / leave list)
ST_STAYED = "stayed"              # on the source although it should have moved (failure, no room)
ST_NOT_RUNNING = "not_running"    # was not running when the evacuation began
ST_DOWN = "down"                  # was running, now runs nowhere (critical)
ST_DUPLICATE = "duplicate"        # runs on more than one host (critical)
ST_UNVERIFIED = "unverified"      # a host that could hold it could not be asked
ST_PLANNED = "planned"            # check mode: what would happen
FINAL_STATUSES = (ST_MIGRATED, ST_LEFT, ST_STAYED, ST_NOT_RUNNING, ST_DOWN, ST_DUPLICATE, ST_UNVERIFIED)
# Statuses that make the run fail (something stayed behind or is in danger, unasked).
FAILING_STATUSES = (ST_STAYED, ST_DOWN, ST_DUPLICATE, ST_UNVERIFIED)

DEFAULTS = {
    "evacuate_group": "hypervisors",
    "evacuate_max_parallel": 2,
    "evacuate_migration_timeout": 300,
    "evacuate_migration_timeout_per_gib": 60,
    "evacuate_bandwidth": 0,
    "evacuate_poisoned_vm_policy": "leave",
    "evacuate_unknown_vm_policy": "leave",
    "evacuate_reboot_mode": "restart",
    "evacuate_cordon": True,
    "evacuate_leave_vms": [],
    "evacuate_report_dir": "evacuation-reports",
    "evacuate_cpu_allocation_ratio": 4.0,
    "evacuate_memory_reserve_mib": 512,
    "evacuate_migration_copy_storage": "none",
    "evacuate_migration_uri_template": "qemu+tcp://{address}/system",
    "evacuate_cold_migrate_shutdown_timeout": 120,
    "evacuate_cold_migrate_force_off": False,
    "evacuate_break_lock": False,
    "evacuate_lock_stale_after": 0,
}

# Numbers: (minimum, maximum) accepted.
INT_BOUNDS = {
    "evacuate_max_parallel": (1, 64),
    "evacuate_migration_timeout": (10, 7 * 24 * 3600),
    "evacuate_migration_timeout_per_gib": (0, 24 * 3600),
    "evacuate_bandwidth": (0, 1024 * 1024),
    "evacuate_memory_reserve_mib": (0, 64 * 1024 * 1024),
    "evacuate_cold_migrate_shutdown_timeout": (1, 24 * 3600),
    "evacuate_lock_stale_after": (0, 365 * 24 * 3600),
}
FLOAT_BOUNDS = {"evacuate_cpu_allocation_ratio": (0.1, 64.0)}
BOOL_INPUTS = ("evacuate_cordon", "evacuate_cold_migrate_force_off", "evacuate_break_lock")
CHOICE_INPUTS = {
    "evacuate_poisoned_vm_policy": POISONED_VM_POLICIES,
    "evacuate_unknown_vm_policy": UNKNOWN_VM_POLICIES,
    "evacuate_reboot_mode": REBOOT_MODES,
    "evacuate_migration_copy_storage": COPY_STORAGE_MODES,
}
INPUT_NAMES = tuple(["evacuate_source", "evacuate_targets"] + sorted(DEFAULTS))
# Names of inputs before they took the evacuate_ prefix (a bare ``cordon`` or ``max_parallel`` was
# picked up from any group_vars that used the name). Accepted as extra vars until 1.0.0, with a
# deprecation warning: old name -> input.
DEPRECATED_INPUTS = {name[len("evacuate_"):]: name for name in DEFAULTS
                     if name not in ("evacuate_group", "evacuate_leave_vms", "evacuate_report_dir",
                                     "evacuate_break_lock", "evacuate_lock_stale_after")}
DEPRECATED_INPUTS_REMOVED_IN = "1.0.0"

# Inventory host names and addresses the playbook accepts: letters, digits, '.', '-', '_'.
# They only ever travel as data (argv items, libvirt URIs), but a name with shell
# metacharacters, spaces or slashes is a typo or an attack, and is refused up front.
HOST_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,252}$")
# libvirt transports that reach another host without running a local command ('ext' runs
# an arbitrary program and is refused; 'unix' cannot reach another host).
ALLOWED_URI_SCHEMES = ("qemu+tcp", "qemu+tls", "qemu+ssh", "qemu+libssh", "qemu+libssh2", "qemu")
URI_RE = re.compile(r"^(?P<scheme>[a-z0-9+]+)://(?:(?P<user>[A-Za-z0-9_.\-]+)@)?(?P<host>[A-Za-z0-9_.\-]+|\[[0-9A-Fa-f:.]+\])"
                    r"(?::(?P<port>[0-9]{1,5}))?/(?P<path>system|session)(?:\?(?P<query>[A-Za-z0-9_=&%./\-]*))?$")
URI_FORBIDDEN_PARAMS = ("command", "socket", "netcat", "proxy")
URI_PARAM_NAME_RE = re.compile(r"^[A-Za-z0-9_]+$")
VM_NAME_MAX = 255

TRUE_WORDS = ("true", "yes", "on", "1")
FALSE_WORDS = ("false", "no", "off", "0")


class EvacuationInputError(ValueError):
    """Inputs that must be fixed before an evacuation may start.

    ``problems`` is the list of every problem found, each naming the input and the fix.
    """

    def __init__(self, problems):
        self.problems = list(problems)
        super().__init__(format_problems(self.problems))


def format_problems(problems):
    if len(problems) == 1:
        return "evacuation refused before any change: " + problems[0]
    return "evacuation refused before any change (%d problems):\n%s" % (
        len(problems), "\n".join("- " + p for p in problems))


# --------------------------------------------------------------------------- validation --

def _is_blank(value):
    return value is None or (isinstance(value, str) and value.strip() == "")


def parse_bool(name, value, problems):
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in TRUE_WORDS:
        return True
    if isinstance(value, str) and value.strip().lower() in FALSE_WORDS:
        return False
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    problems.append("%s must be true or false, got %r: set -e %s=true or -e %s=false" % (name, value, name, name))
    return None


def parse_int(name, value, problems, bounds):
    low, high = bounds
    number = None
    if isinstance(value, bool):
        number = None
    elif isinstance(value, int):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and re.match(r"^\s*[+-]?[0-9]+\s*$", value):
        number = int(value)
    if number is None:
        problems.append("%s must be a whole number between %d and %d, got %r" % (name, low, high, value))
        return None
    if number < low or number > high:
        problems.append("%s must be between %d and %d, got %d" % (name, low, high, number))
        return None
    return number


def parse_float(name, value, problems, bounds):
    low, high = bounds
    number = None
    if isinstance(value, bool):
        number = None
    elif isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            number = None
    if number is None or math.isnan(number) or math.isinf(number):
        problems.append("%s must be a number between %s and %s, got %r" % (name, low, high, value))
        return None
    if number < low or number > high:
        problems.append("%s must be between %s and %s, got %s" % (name, low, high, number))
        return None
    return number


def parse_choice(name, value, problems, choices):
    word = value.strip() if isinstance(value, str) else value
    if word in choices:
        return word
    problems.append("%s must be one of %s, got %r" % (name, ", ".join(choices), value))
    return None


def parse_name_list(name, value, problems):
    """A list of names given as a YAML list or a comma-separated string."""
    if _is_blank(value):
        return []
    if isinstance(value, str):
        items = [item.strip() for item in value.split(",")]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        problems.append("%s must be a list of names or a comma-separated string, got %r" % (name, value))
        return None
    names = []
    for item in items:
        if not isinstance(item, str) or item.strip() == "":
            problems.append("%s holds an empty or non-text entry %r: list names only" % (name, item))
            return None
        if item not in names:
            names.append(item)
    return names


def check_host_name(label, name, problems):
    if not isinstance(name, str) or not HOST_NAME_RE.match(name):
        problems.append(
            "%s %r is not a valid inventory host name: use letters, digits, '.', '-' and '_' only "
            "(names with spaces, quotes, ';', '$', '|', '/' or other shell metacharacters are refused)"
            % (label, name))
        return False
    return True


def check_vm_name(label, name, problems):
    """VM names are data (argv items and libvirt API arguments): any text libvirt accepts."""
    if not isinstance(name, str) or not name or len(name) > VM_NAME_MAX or "\x00" in name or "/" in name:
        problems.append("%s %r is not a libvirt domain name (1-%d characters, no '/' or NUL)"
                        % (label, name, VM_NAME_MAX))
        return False
    return True


def migration_uri(target, hostvars, template):
    """The libvirt URI the source uses to reach ``target``.

    The inventory variable ``kvm_ras_migration_uri`` of the target wins; otherwise
    ``template`` with ``{host}`` (inventory name) and ``{address}`` (the target's
    ``kvm_ras_migration_address``, else ``ansible_host``, else its inventory name).
    """
    tvars = hostvars.get(target) or {}
    explicit = tvars.get("kvm_ras_migration_uri")
    if not _is_blank(explicit):
        return explicit
    address = tvars.get("kvm_ras_migration_address") or tvars.get("ansible_host") or target
    return template.replace("{host}", target).replace("{address}", str(address))


def check_uri(label, uri, problems):
    match = URI_RE.match(uri) if isinstance(uri, str) else None
    if not match:
        problems.append(
            "%s %r is not a libvirt URI of the form scheme://[user@]host[:port]/system[?params] "
            "(allowed schemes: %s)" % (label, uri, ", ".join(ALLOWED_URI_SCHEMES)))
        return False
    if match.group("scheme") not in ALLOWED_URI_SCHEMES:
        problems.append("%s %r uses transport %r: use one of %s ('ext' would run a local program)"
                        % (label, uri, match.group("scheme"), ", ".join(ALLOWED_URI_SCHEMES)))
        return False
    if match.group("scheme") == "qemu" and not match.group("host"):
        problems.append("%s %r names no host" % (label, uri))
        return False
    for key in uri_param_names(match.group("query") or ""):
        if not URI_PARAM_NAME_RE.match(key):
            problems.append("%s %r has the parameter name %r, which is not a plain libvirt URI parameter "
                            "name (letters, digits and '_' once %%-escapes are decoded): write it plainly"
                            % (label, uri, key))
            return False
        if key.lower() in URI_FORBIDDEN_PARAMS:
            problems.append("%s %r sets %r, which makes libvirt run a local command or socket: remove it"
                            % (label, uri, key.lower()))
            return False
    return True


def uri_param_names(query):
    """The parameter names of a URI query as libvirt sees them.

    libvirt's virURIParseParams splits the query at '&' and ';' and %-decodes each name
    (xmlURIUnescapeString) before the remote driver compares it, case-insensitively, with
    ``command``, ``socket``, ``netcat``, ``proxy``...; a decoded NUL ends the C string there.
    So ``comm%61nd`` and ``COMMAND`` are ``command`` to libvirt, and so they are here.
    """
    names = []
    for part in re.split(r"[&;]", query or ""):
        if part == "":
            continue
        raw = part.split("=", 1)[0]
        name = urllib.parse.unquote(raw, encoding="utf-8", errors="replace")
        names.append(name.split("\x00", 1)[0] if "\x00" in name else name)
    return names


def validate_request(raw, inventory_hosts, groups, hostvars=None, forks=None):
    """Validate and normalise the operator's inputs; raise EvacuationInputError with every problem.

    ``raw``: input name -> value as given (None or missing = not given, use the default).
    ``inventory_hosts``: every inventory host name; ``groups``: group name -> host names;
    ``hostvars``: host name -> its variables (only ``kvm_ras_migration_uri``,
    ``kvm_ras_migration_address`` and ``ansible_host`` are read); ``forks``: Ansible's forks
    (evacuate_max_parallel cannot be above it), or None when unknown.

    Returns the normalised request: every input name with a typed value, plus
    ``migration_uris`` (target -> URI), ``targets_defaulted`` and ``inputs_given`` (the
    inputs given rather than defaulted).
    """
    raw = dict(raw or {})
    hostvars = hostvars or {}
    problems = []
    request = {}

    def given(name):
        value = raw.get(name)
        return None if _is_blank(value) and not isinstance(value, (list, tuple)) else value

    unknown = sorted(set(raw) - set(INPUT_NAMES))
    if unknown:
        problems.append("unknown input(s) %s: known inputs are %s" % (", ".join(unknown), ", ".join(INPUT_NAMES)))
    # What the operator spelled out (the exit rule counts a VM left by a ``leave`` policy as
    # agreed only when that policy was given, not defaulted).
    request["inputs_given"] = sorted(name for name in raw if name in INPUT_NAMES and given(name) is not None)

    for name in INT_BOUNDS:
        value = given(name)
        request[name] = DEFAULTS[name] if value is None else parse_int(name, value, problems, INT_BOUNDS[name])
    for name in FLOAT_BOUNDS:
        value = given(name)
        request[name] = DEFAULTS[name] if value is None else parse_float(name, value, problems, FLOAT_BOUNDS[name])
    for name in BOOL_INPUTS:
        value = given(name)
        request[name] = DEFAULTS[name] if value is None else parse_bool(name, value, problems)
    for name, choices in CHOICE_INPUTS.items():
        value = given(name)
        request[name] = DEFAULTS[name] if value is None else parse_choice(name, value, problems, choices)

    group = given("evacuate_group")
    request["evacuate_group"] = DEFAULTS["evacuate_group"] if group is None else group
    if not isinstance(request["evacuate_group"], str):
        problems.append("evacuate_group must be a group name, got %r" % (request["evacuate_group"],))
        request["evacuate_group"] = DEFAULTS["evacuate_group"]

    report_dir = given("evacuate_report_dir")
    report_dir = DEFAULTS["evacuate_report_dir"] if report_dir is None else report_dir
    if not isinstance(report_dir, str) or "\x00" in report_dir or report_dir.strip() == "":
        problems.append("evacuate_report_dir must be a directory path on the controller, got %r" % (report_dir,))
    else:
        problem = report_dir_problem(report_dir)
        if problem:
            problems.append(problem)
    request["evacuate_report_dir"] = report_dir

    template = given("evacuate_migration_uri_template")
    template = DEFAULTS["evacuate_migration_uri_template"] if template is None else template
    if not isinstance(template, str) or ("{address}" not in template and "{host}" not in template):
        problems.append("evacuate_migration_uri_template must contain {address} or {host}, got %r "
                        "(example: qemu+ssh://root@{address}/system)" % (template,))
        template = None
    request["evacuate_migration_uri_template"] = template

    leave = parse_name_list("evacuate_leave_vms", raw.get("evacuate_leave_vms"), problems)
    if leave:
        leave = [name for name in leave if check_vm_name("evacuate_leave_vms entry", name, problems)]
    request["evacuate_leave_vms"] = leave or []

    if request.get("evacuate_max_parallel") and forks and request["evacuate_max_parallel"] > forks:
        problems.append(
            "evacuate_max_parallel %d is above Ansible's forks (%d), which caps how many migrations can run at "
            "once: run with --forks %d (or ANSIBLE_FORKS=%d), or lower evacuate_max_parallel"
            % (request["evacuate_max_parallel"], forks, request["evacuate_max_parallel"],
               request["evacuate_max_parallel"]))

    # --- hosts ---
    inventory = list(inventory_hosts or [])
    group_name = request["evacuate_group"]
    group_hosts = list((groups or {}).get(group_name) or [])
    source = given("evacuate_source")
    request["evacuate_source"] = None
    if source is None:
        problems.append("evacuate_source is not set: name the hypervisor to empty, e.g. -e evacuate_source=hv1")
    elif not isinstance(source, str):
        problems.append("evacuate_source must be one inventory host name, got %r" % (source,))
    elif check_host_name("evacuate_source", source, problems):
        if source not in inventory:
            problems.append("evacuate_source %r is not in the inventory (known hypervisors: %s)"
                            % (source, ", ".join(group_hosts) or "none in group %r" % group_name))
        else:
            request["evacuate_source"] = source

    raw_targets = raw.get("evacuate_targets")
    targets = parse_name_list("evacuate_targets", raw_targets, problems)
    request["evacuate_targets"] = []
    request["targets_defaulted"] = not targets and targets is not None
    if targets is not None:
        if not targets:
            if not group_hosts:
                problems.append(
                    "evacuate_targets is not set and the inventory has no group %r to take them from: "
                    "list targets with -e evacuate_targets=hv2,hv3 or set evacuate_group" % group_name)
            targets = [host for host in group_hosts if host != source]
            if group_hosts and not targets:
                problems.append(
                    "no targets: group %r holds only the source %r; add hypervisors to the group or "
                    "list targets with -e evacuate_targets=..." % (group_name, source))
        else:
            good = []
            for target in targets:
                if not check_host_name("evacuate_targets entry", target, problems):
                    continue
                if target == source:
                    problems.append(
                        "evacuate_targets includes the source %r itself: a host cannot receive its own "
                        "VMs; remove it from evacuate_targets" % target)
                    continue
                if target not in inventory:
                    problems.append("evacuate_targets entry %r is not in the inventory" % target)
                    continue
                good.append(target)
            targets = good
            if not good and not any("evacuate_targets" in p for p in problems):
                problems.append("no targets: evacuate_targets is empty")
        request["evacuate_targets"] = targets

    uris = {}
    if template:
        for target in request["evacuate_targets"]:
            uri = migration_uri(target, hostvars, template)
            if check_uri("migration URI of %r" % target, uri, problems):
                uris[target] = uri
    request["migration_uris"] = uris

    if problems:
        raise EvacuationInputError(problems)
    return request


def report_dir_problem(path):
    """Why ``path`` is refused as evacuate_report_dir, or None.

    A relative path is taken from the working directory and must stay inside it; no path may
    climb with '..' (``../../x`` or ``/srv/reports/../../etc``), so the report lands where the
    operator reads it and nowhere else.
    """
    parts = path.replace("\\", "/").split("/")
    if ".." in parts:
        return ("evacuate_report_dir %r climbs out of its directory with '..': give a path inside the "
                "working directory (e.g. evacuation-reports) or an absolute path without '..'" % path)
    if not os.path.isabs(os.path.expanduser(path)):
        normal = os.path.normpath(path)
        if normal.startswith(".." + os.sep) or normal == "..":
            return "evacuate_report_dir %r leaves the working directory: give a path inside it" % path
    return None


def misspelt_inputs(names):
    """Extra-var names that look like a misspelt input (``max_paralel``, ``poisoned_policy``).

    A misspelt input would silently fall back to its default (for example ``leave`` instead
    of the fallback the operator asked for), so it is refused. Returns problems.
    """
    problems = []
    known = set(INPUT_NAMES) | set(DEPRECATED_INPUTS)
    candidates = list(INPUT_NAMES) + sorted(DEPRECATED_INPUTS)
    for name in sorted(set(names or [])):
        if name in known or not isinstance(name, str):
            continue
        close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.8)
        if close:
            problems.append("extra var %r is not an input of evacuate_host: did you mean %r?"
                            % (name, DEPRECATED_INPUTS.get(close[0], close[0])))
    return problems


def _typed(name, value):
    """``value`` as input ``name`` reads it (None when it does not parse): to compare two spellings."""
    scratch = []
    if name in INT_BOUNDS:
        return parse_int(name, value, scratch, (-(2 ** 63), 2 ** 63))
    if name in FLOAT_BOUNDS:
        return parse_float(name, value, scratch, (float("-inf"), float("inf")))
    if name in BOOL_INPUTS:
        return parse_bool(name, value, scratch)
    return value.strip() if isinstance(value, str) else value


def deprecated_inputs(given, old_values):
    """Take the inputs given under their old, unprefixed names (extra vars only).

    ``given``: input name -> value given under the input's name; ``old_values``: old name ->
    value of the extra vars that use an old name (see DEPRECATED_INPUTS).
    Returns (inputs, used, problems): ``given`` completed with the old names' values, the old
    names used (each deserves a deprecation warning) and the conflicts: an old and a new name
    with different values, which is refused rather than guessed.
    """
    inputs = dict(given or {})
    used, problems = [], []
    for old in sorted(old_values or {}):
        new = DEPRECATED_INPUTS.get(old)
        if new is None:
            continue
        value = old_values[old]
        used.append(old)
        if new in inputs and inputs[new] is not None:
            first, second = _typed(new, inputs[new]), _typed(new, value)
            if first is None or second is None or first != second:
                problems.append(
                    "%s=%r and its deprecated old name %s=%r are both given with different values: "
                    "drop -e %s and keep -e %s" % (new, inputs[new], old, value, old, new))
            continue
        inputs[new] = value
    return inputs, used, problems


def deprecation_message(old):
    """The deprecation warning of an input given under its old, unprefixed name."""
    new = DEPRECATED_INPUTS[old]
    return ("the extra var %s of kvm_ras.poison_guard.evacuate_host is now %s: use -e %s=... (the old name "
            "is read only as an extra var, and only until %s)" % (old, new, new, DEPRECATED_INPUTS_REMOVED_IN))


def vm_timeout(request, memory_mib):
    """Seconds one VM's migration may take: base + per GiB of guest RAM (rounded up)."""
    gib = int(math.ceil(float(memory_mib or 0) / 1024.0))
    return request["evacuate_migration_timeout"] + gib * request["evacuate_migration_timeout_per_gib"]


# --------------------------------------------------------------------------- domains --

def is_active(domain):
    if "active" in domain:
        return bool(domain["active"])
    return domain.get("state") in ACTIVE_STATE_WORDS


# --------------------------------------------------------------------------- capacity --

def answered(facts):
    """True when a host_capacity result holds a libvirt answer (not failed, skipped, unreachable)."""
    return (isinstance(facts, dict) and not facts.get("failed") and not facts.get("unreachable")
            and not facts.get("skipped") and facts.get("libvirt_ok", True) is not False
            and isinstance(facts.get("domains"), list))


def target_capacity(name, facts, request, preflight=None):
    """What one target can take: usable, why not, free memory and vCPU headroom.

    ``facts`` is the target's host_capacity result (or a failed/unreachable result);
    ``preflight`` the migration_preflight result of the run (None: no preflight was run). A
    target the preflight did not find usable, or did not check, takes no VM.
    """
    entry = {"name": name, "usable": False, "reason": None, "memory_free_mib": None,
             "vcpu_free": None, "cpus": None, "running_vcpus": None, "running_count": None,
             "cordoned": None, "uri": request.get("migration_uris", {}).get(name)}
    if not isinstance(facts, dict) or facts.get("unreachable"):
        entry["reason"] = "unreachable: %s" % ((facts or {}).get("msg") or "no answer")
        return entry
    if not answered(facts):
        entry["reason"] = "libvirt not answering: %s" % (facts.get("msg") or "no details")
        return entry
    cordon = facts.get("cordon") or {}
    lock = facts.get("evacuation_lock") or {}
    entry["cordoned"] = bool(cordon.get("cordoned"))
    cpus = int(facts.get("cpus") or 0)
    running_vcpus = int(facts.get("running_vcpus") or 0)
    free = int(facts.get("memory_free_mib") or 0) - int(request["evacuate_memory_reserve_mib"])
    vcpu_capacity = int(math.floor(cpus * float(request["evacuate_cpu_allocation_ratio"])))
    entry.update({
        "cpus": cpus,
        "running_vcpus": running_vcpus,
        "running_count": facts.get("running_count"),
        "memory_free_mib": max(free, 0),
        "vcpu_free": max(vcpu_capacity - running_vcpus, 0),
        "vcpu_capacity": vcpu_capacity,
    })
    if entry["cordoned"]:
        entry["reason"] = "cordoned since %s (%s): uncordon it first to use it as a target" % (
            cordon.get("since") or "unknown time", cordon.get("reason") or "no reason given")
        return entry
    if lock.get("held"):
        entry["reason"] = "being evacuated itself (evacuation lock held by run %s)" % (lock.get("owner") or "?")
        return entry
    if not entry["uri"]:
        entry["reason"] = "no migration URI"
        return entry
    if preflight is not None:
        checked = (preflight.get("targets") or {}).get(name)
        if not checked or not checked.get("usable"):
            entry["reason"] = "preflight: %s" % (" | ".join((checked or {}).get("reasons") or [])
                                                 or "not checked by the preflight (fail closed)")
            return entry
    entry["usable"] = True
    return entry


def preflight_check(preflight, vm_name, target):
    """(ok, reason): may the VM move to the target by the preflight (None: no preflight run)."""
    if preflight is None:
        return True, None
    entry = ((preflight.get("vms") or {}).get(vm_name) or {}).get(target)
    if entry is None:
        return False, "the preflight did not check %s on it (fail closed)" % vm_name
    if not entry.get("usable"):
        return False, "preflight: %s" % (" | ".join(entry.get("reasons") or []) or "not usable")
    return True, None


def hugetlb_reset_keeps_poison(entry):
    """True when a reboot would not clear the VM's poison: its guest RAM is hugetlbfs-backed
    and its QEMU is older than 10.0, whose reset does not replace a poisoned huge page
    (QEMU 10.0: "handle hugetlb correctly in qemu_ram_remap"). None when it cannot be told."""
    scan = (entry or {}).get("scan") or {}
    hugetlb = scan.get("hugetlb_mappings")
    if not hugetlb:
        return False if hugetlb == 0 else None
    match = re.match(r"^\s*(\d+)\.", str((entry or {}).get("qemu_version") or ""))
    if not match:
        return None
    return int(match.group(1)) < 10


def disks_available(vm_disks, target_paths):
    """For a cold migration: every disk of the VM must exist on the target, same size.

    ``target_paths``: host_capacity's ``paths`` of the target (path -> {exists, size}).
    Returns (ok, reason).
    """
    missing, differing = [], []
    for disk in vm_disks or []:
        if disk.get("type") == "network" or not disk.get("path"):
            continue  # network storage (rbd, iscsi, nbd) and empty drives are not host files
        info = (target_paths or {}).get(disk["path"])
        if not info or not info.get("exists"):
            missing.append(disk["path"])
        elif disk.get("size") is not None and info.get("size") is not None and disk["size"] != info["size"]:
            differing.append("%s (%s bytes here, %s there)" % (disk["path"], disk["size"], info["size"]))
    if missing:
        return False, ("its disk(s) %s do not exist on the target: cold migration needs shared or "
                       "copied storage" % ", ".join(missing))
    if differing:
        return False, ("its disk(s) %s differ in size on the target: not the same (shared or copied) "
                       "storage" % ", ".join(differing))
    return True, None


def place(vms, capacities, cold_disk_check=None, target_check=None):
    """Assign each VM that should move to a usable target with room.

    ``vms``: dicts with name, memory_mib, vcpus, action (only MOVING_ACTIONS are placed) and,
    for cold migration, disks. ``capacities``: target_capacity entries (in target order).
    ``cold_disk_check(vm, target_name)`` -> (ok, reason) for cold migrations;
    ``target_check(vm, target_name)`` -> (ok, reason) for every move (the preflight).

    Largest memory first; each goes to the usable target that fits its memory and vCPUs and
    keeps the most headroom afterwards: the larger of the two is the smaller of the free
    shares of memory (of what the target had free) and of vCPUs (of its vCPU capacity), so
    the load spreads on whichever resource is scarce. Ties: more free memory, more free
    vCPUs, then the target order.
    Returns {vm name: (target or None, reason or None)} and updates the capacities'
    ``memory_free_mib``/``vcpu_free`` and ``assigned``.
    """
    for cap in capacities:
        cap.setdefault("assigned", [])
        if cap.get("usable"):
            cap.setdefault("memory_start_mib", cap["memory_free_mib"])
    result = {}
    order = sorted((vm for vm in vms if vm.get("action") in MOVING_ACTIONS),
                   key=lambda vm: (-(vm.get("memory_mib") or 0), -(vm.get("vcpus") or 0), vm["name"]))
    usable = [cap for cap in capacities if cap.get("usable")]
    for vm in order:
        need_mem = int(vm.get("memory_mib") or 0)
        need_cpu = int(vm.get("vcpus") or 0)
        best, refusals = None, []
        for index, cap in enumerate(usable):
            if cap["memory_free_mib"] < need_mem:
                refusals.append("%s has %d MiB free" % (cap["name"], cap["memory_free_mib"]))
                continue
            if cap["vcpu_free"] < need_cpu:
                refusals.append("%s has %d vCPU(s) free" % (cap["name"], cap["vcpu_free"]))
                continue
            if vm.get("action") == ACTION_COLD and cold_disk_check is not None:
                ok, why = cold_disk_check(vm, cap["name"])
                if not ok:
                    refusals.append("%s: %s" % (cap["name"], why))
                    continue
            if target_check is not None:
                ok, why = target_check(vm, cap["name"])
                if not ok:
                    refusals.append("%s: %s" % (cap["name"], why))
                    continue
            mem_left, cpu_left = cap["memory_free_mib"] - need_mem, cap["vcpu_free"] - need_cpu
            share = min(float(mem_left) / max(cap.setdefault("memory_start_mib", cap["memory_free_mib"]), 1),
                        float(cpu_left) / max(cap.get("vcpu_capacity") or cap["vcpu_free"], 1))
            key = (round(share, 6), mem_left, cpu_left, -index)
            if best is None or key > best[0]:
                best = (key, cap)
        if best is None:
            if not usable:
                reason = "no usable target"
            else:
                reason = "no target with room for %d MiB and %d vCPU(s): %s" % (
                    need_mem, need_cpu, "; ".join(refusals))
            result[vm["name"]] = (None, reason)
            continue
        cap = best[1]
        cap["memory_free_mib"] -= need_mem
        cap["vcpu_free"] -= need_cpu
        cap["assigned"].append(vm["name"])
        result[vm["name"]] = (cap["name"], None)
    return result


# --------------------------------------------------------------------------- decisions --

def decide_action(status, gate_allowed, poisoned_vm_policy, unknown_vm_policy, gate_reason=None,
                  leave_requested=False):
    """What the evacuation does with one running VM: (action, reason).

    ``status``: poison_info's verdict (poisoned/clean/unknown; anything else is unknown).
    ``gate_allowed``: the migration gate let it through for live migration.
    Fail closed: a VM moves live only when the gate allowed it and its status agrees.
    """
    if leave_requested:
        return ACTION_LEAVE, "left on the source as requested (evacuate_leave_vms)"
    if status == "poisoned":
        if poisoned_vm_policy == "reboot_then_migrate":
            return ACTION_REBOOT, ("poisoned: reboot it (QEMU drops its poison list and remaps the pages), "
                                   "check it again, then migrate it only if it is clean")
        if poisoned_vm_policy == "cold_migrate":
            return ACTION_COLD, "poisoned: shut it down and start it on a target; its RAM is never read"
        return ACTION_LEAVE, UPSTREAM_REFUSAL
    if status == "clean":
        if gate_allowed:
            return ACTION_LIVE, None
        return ACTION_LEAVE, "the migration gate blocked it: %s" % (gate_reason or "no reason given")
    # unknown (or anything not understood)
    if unknown_vm_policy == "migrate" and gate_allowed:
        return ACTION_LIVE, ("poison status unknown, migrated because evacuate_unknown_vm_policy=migrate: %s"
                             % (gate_reason or "not fully inspected"))
    return ACTION_LEAVE, "poison status unknown: %s (set evacuate_unknown_vm_policy=migrate to move it anyway)" % (
        gate_reason or "its guest memory could not be fully inspected")


def _gate_index(gate):
    allowed = set((gate or {}).get("allowed") or [])
    blocked = {}
    for item in (gate or {}).get("blocked") or []:
        if isinstance(item, dict) and item.get("name"):
            blocked[item["name"]] = item
    decisions = {}
    for item in (gate or {}).get("decisions") or []:
        if isinstance(item, dict) and item.get("name"):
            decisions[item["name"]] = item
    return allowed, blocked, decisions


def _poison_index(poison):
    entries = {}
    for item in (poison or {}).get("vms") or []:
        if isinstance(item, dict) and item.get("name"):
            entries[item["name"]] = item
    return entries


def build_plan(request, source_facts, targets_facts, poison, gate, preflight=None):
    """The evacuation plan, gathered before anything changes.

    ``source_facts``: host_capacity of the source (its ``domains``); ``targets_facts``: target
    name -> host_capacity result; ``poison``: poison_info of the source; ``gate``: the
    migration_gate result for the source's VMs; ``preflight``: migration_preflight from the
    source (None: none was run), whose unusable targets and VM/target pairs get no VM.

    Returns {source, targets: [capacity entries], vms: [...], counts, moves, leave_unknown}.
    Raises EvacuationInputError for requests that cannot be planned (VMs named in
    evacuate_leave_vms that the source does not have).
    """
    domains = list((source_facts or {}).get("domains") or [])
    names = [d["name"] for d in domains]
    uuids = {d.get("uuid"): d["name"] for d in domains if d.get("uuid")}
    problems = []
    leave = set()
    for wanted in request.get("evacuate_leave_vms") or []:
        if wanted in names:
            leave.add(wanted)
        elif wanted in uuids:
            leave.add(uuids[wanted])
        else:
            problems.append("evacuate_leave_vms names %r, which %s does not have (its VMs: %s)"
                            % (wanted, request["evacuate_source"], ", ".join(sorted(names)) or "none"))
    if problems:
        raise EvacuationInputError(problems)

    allowed, blocked, decisions = _gate_index(gate)
    poison_entries = _poison_index(poison)
    capacities = [target_capacity(t, (targets_facts or {}).get(t), request, preflight)
                  for t in request["evacuate_targets"]]

    vms = []
    for index, dom in enumerate(sorted(domains, key=lambda d: d["name"])):
        entry = poison_entries.get(dom["name"]) or {}
        active = is_active(dom)
        status = entry.get("status") if entry else None
        if status not in ("poisoned", "clean", "unknown"):
            status = "unknown" if active else None
        gate_item = blocked.get(dom["name"]) or decisions.get(dom["name"]) or {}
        vm = {
            "index": index,
            "name": dom["name"],
            "uuid": dom.get("uuid"),
            "state": dom.get("state"),
            "persistent": bool(dom.get("persistent")),
            "memory_mib": int(dom.get("memory_mib") or entry.get("memory_mib") or 0),
            "vcpus": int(dom.get("vcpus") or entry.get("vcpus") or 0),
            "disks": dom.get("disks") or [],
            "status": status if active else "not running",
            "evidence": entry.get("evidence") or gate_item.get("evidence") or [],
            "migration_guard": entry.get("migration_guard"),
            "target": None,
            "dest_uri": None,
            "timeout": None,
        }
        if not active:
            vm["action"], vm["reason"] = ACTION_NONE, "not running (state %s): its definition stays" % dom.get("state")
        else:
            gate_reason = gate_item.get("reason")
            if status == "unknown" and entry.get("reasons"):
                gate_reason = "; ".join(str(r) for r in entry["reasons"])
            vm["action"], vm["reason"] = decide_action(
                status, dom["name"] in allowed, request["evacuate_poisoned_vm_policy"],
                request["evacuate_unknown_vm_policy"],
                gate_reason=gate_reason, leave_requested=dom["name"] in leave)
            if vm["action"] == ACTION_REBOOT and hugetlb_reset_keeps_poison(entry):
                vm["action"], vm["reason"] = ACTION_LEAVE, (
                    "poisoned hugetlbfs-backed guest RAM on QEMU %s: a reboot does not repair a poisoned huge "
                    "page before QEMU 10.0, so reboot_then_migrate would leave it poisoned; choose "
                    "evacuate_poisoned_vm_policy=cold_migrate (a new QEMU process gets new memory) or restart it by hand"
                    % entry.get("qemu_version"))
            vm["gate"] = "allowed" if dom["name"] in allowed else "blocked"
        vms.append(vm)

    target_paths = {t: ((targets_facts or {}).get(t) or {}).get("paths") or {} for t in request["evacuate_targets"]}

    def cold_check(vm, target):
        return disks_available(vm.get("disks"), target_paths.get(target))

    def preflight_ok(vm, target):
        return preflight_check(preflight, vm["name"], target)

    placement = place(vms, capacities, cold_disk_check=cold_check, target_check=preflight_ok)
    for vm in vms:
        if vm["action"] not in MOVING_ACTIONS:
            continue
        target, why = placement.get(vm["name"], (None, "not placed"))
        if target is None:
            vm["planned_action"] = vm["action"]
            vm["action"] = ACTION_LEAVE
            vm["reason"] = why
            vm["no_room"] = True
            continue
        vm["target"] = target
        vm["dest_uri"] = request["migration_uris"].get(target)
        vm["timeout"] = vm_timeout(request, vm["memory_mib"])

    counts = {}
    for vm in vms:
        counts[vm["action"]] = counts.get(vm["action"], 0) + 1
    return {
        "source": request["evacuate_source"],
        "targets": capacities,
        "vms": vms,
        "counts": counts,
        "moves": sum(1 for vm in vms if vm["action"] in MOVING_ACTIONS),
        "running": sum(1 for vm in vms if vm["action"] != ACTION_NONE),
        "preflight": None if preflight is None else list((preflight.get("summary") or {}).get("lines") or []),
    }


def plan_problems(plan):
    """Reasons the plan cannot start at all (e.g. VMs to move but no usable target)."""
    problems = []
    wants_move = [vm for vm in plan["vms"] if vm["action"] in MOVING_ACTIONS or vm.get("no_room")]
    if wants_move and not any(t["usable"] for t in plan["targets"]):
        problems.append("no usable target for %d VM(s): %s" % (
            len(wants_move), "; ".join("%s %s" % (t["name"], t["reason"]) for t in plan["targets"])))
    return problems


# --------------------------------------------------------------------------- rendering --

def _table(headers, rows):
    rows = [["" if cell is None else str(cell) for cell in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    line = "  ".join("%-*s" % (widths[i], h) for i, h in enumerate(headers)).rstrip()
    out = [line, "  ".join("-" * w for w in widths)]
    for row in rows:
        out.append("  ".join("%-*s" % (widths[i], c) for i, c in enumerate(row)).rstrip())
    return out


def _shown(name):
    """A VM name for a table: printable, quoted when it holds spaces or odd characters."""
    if re.match(r"^[A-Za-z0-9_.:+@-]+$", name or ""):
        return name
    return repr(name)


def render_plan(plan, request, check_mode=False):
    """The plan as lines of text: one header, the targets, and the VM -> target table."""
    lines = ["Evacuation plan for %s%s" % (plan["source"], " (check mode: nothing will change)" if check_mode else ""),
             "policies: evacuate_poisoned_vm_policy=%s, evacuate_unknown_vm_policy=%s, evacuate_reboot_mode=%s; "
             "evacuate_max_parallel=%d; evacuate_cordon=%s"
             % (request["evacuate_poisoned_vm_policy"], request["evacuate_unknown_vm_policy"],
                request["evacuate_reboot_mode"], request["evacuate_max_parallel"],
                "yes" if request["evacuate_cordon"] else "no"),
             ""]
    trows = []
    for t in plan["targets"]:
        trows.append([t["name"], "yes" if t["usable"] else "no",
                      t["memory_free_mib"] if t["memory_free_mib"] is not None else "-",
                      t["vcpu_free"] if t["vcpu_free"] is not None else "-",
                      len(t.get("assigned") or []), t["reason"] or ""])
    lines += _table(["TARGET", "USABLE", "FREE MiB (after plan)", "FREE vCPUs (after plan)", "VMs IN", "WHY NOT"], trows)
    lines.append("")
    if plan.get("preflight") is not None:
        lines.append("preflight from %s (transport, CPU, machine type, QEMU, networks, disks):" % plan["source"])
        lines += ["  " + line for line in plan["preflight"]] or ["  no target to check"]
        lines.append("")
    vrows = []
    for vm in plan["vms"]:
        vrows.append([_shown(vm["name"]), vm["status"], vm["action"], vm["target"] or "-",
                      "%d MiB/%d vCPU" % (vm["memory_mib"], vm["vcpus"]),
                      vm["timeout"] or "-", vm["reason"] or ""])
    if vrows:
        lines += _table(["VM", "STATUS", "ACTION", "TARGET", "SIZE", "TIMEOUT s", "REASON"], vrows)
    else:
        lines.append("%s has no VMs: nothing to do." % plan["source"])
    lines.append("")
    summary = ", ".join("%s %d" % (k, v) for k, v in sorted(plan["counts"].items())) or "no VMs"
    lines.append("summary: %s; %d to move" % (summary, plan["moves"]))
    # What the exit rule will say of the VMs the plan leaves (the run itself decides at its end).
    staying = [{"name": vm["name"], "uuid": vm.get("uuid"), "poison_status": vm["status"], "reason": vm["reason"],
                "status": ST_STAYED if vm.get("no_room") else ST_LEFT}
               for vm in plan["vms"] if vm["action"] == ACTION_LEAVE]
    for item in left_without_consent(request, staying):
        lines.append("the run will end failed: %s stays on the source without being asked to (%s): %s"
                     % (_shown(item["name"]), item["why"], item["fix"]))
    return lines


# --------------------------------------------------------------------------- outcomes --

def _failed(result):
    return isinstance(result, dict) and bool(result.get("failed") or result.get("unreachable"))


def _ran(result):
    return isinstance(result, dict) and result and not result.get("skipped")


def _message(result):
    if not isinstance(result, dict):
        return None
    failure = result.get("failure")
    if isinstance(failure, dict) and failure.get("message"):
        return failure["message"]
    return result.get("msg")


def vm_outcome(vm, results):
    """What happened to one VM, from the results its tasks registered.

    ``vm``: its plan entry. ``results``: {reboot, recheck, gate, migrate, cold} registered
    task results (missing or skipped when the step did not run).
    Returns {name, action, target, result (moved/not_moved/not_started), failure_class,
    message, duration_s, started_at, steps: [..]}.
    """
    results = results or {}
    out = {"name": vm["name"], "action": vm["action"], "target": vm.get("target"), "result": "not_started",
           "failure_class": None, "message": None, "duration_s": None, "started_at": None, "steps": [],
           "recheck_status": None}
    entry = results.get("journal")
    if _ran(entry) and _failed(entry):
        out["steps"].append("journal entry on the source: failed")
        out.update(result="not_moved", failure_class="unreachable" if entry.get("unreachable") else "journal",
                   message="not moved: its journal entry could not be written on the source (%s)"
                   % (_message(entry) or "no answer"))
        return out
    reboot = results.get("reboot")
    if _ran(reboot):
        out["steps"].append("reboot (%s): %s" % (reboot.get("mode") or "?", "failed" if _failed(reboot) else "done"))
        if _failed(reboot):
            out.update(result="not_moved", failure_class="reboot", message=_message(reboot))
            return out
    recheck = results.get("recheck")
    if vm["action"] == ACTION_REBOOT and _ran(reboot):
        status = None
        if _ran(recheck) and not _failed(recheck):
            for entry in recheck.get("vms") or []:
                if entry.get("name") == vm["name"]:
                    status = entry.get("status")
        out["recheck_status"] = status or "unknown"
        out["steps"].append("re-check after reboot: %s" % out["recheck_status"])
        if status != "clean":
            gate = results.get("gate") or {}
            why = None
            for item in gate.get("blocked") or []:
                if item.get("name") == vm["name"]:
                    why = item.get("reason")
            if _failed(recheck):
                why = "the re-check failed: %s" % _message(recheck)
            out.update(result="not_moved", failure_class="still_poisoned" if status == "poisoned" else "recheck",
                       message="still %s after the reboot: %s" % (status or "unknown", why or UPSTREAM_REFUSAL))
            return out
    move = results.get("cold") if vm["action"] == ACTION_COLD else results.get("migrate")
    if not _ran(move):
        if vm["action"] in MOVING_ACTIONS:
            out["message"] = "the migration step did not run (the run stopped or this host failed earlier)"
        return out
    out["duration_s"] = move.get("duration_seconds")
    out["started_at"] = move.get("started_at")
    if out["duration_s"] is None and isinstance(move.get("job"), dict) and move["job"].get("duration_ms") is not None:
        out["duration_s"] = round(move["job"]["duration_ms"] / 1000.0, 3)
    out["running_on"] = move.get("running_on")
    out["steps"].append("%s: %s" % ("cold migration" if vm["action"] == ACTION_COLD else "live migration",
                                    "failed" if _failed(move) else "done"))
    if _failed(move):
        failure = move.get("failure") if isinstance(move.get("failure"), dict) else {}
        klass = failure.get("class") or ("unreachable" if move.get("unreachable") else "other")
        out.update(result="not_moved", failure_class=klass, message=_message(move))
        return out
    out["result"] = "moved"
    return out


# --------------------------------------------------------------------------- verification --

def _where(name, uuid, states):
    """Where a VM runs and is defined, from post-run host_capacity results.

    Returns (running, defined, unknown, undefined_unknown): hosts where it runs; hosts where
    it is persistently defined; hosts that could not be asked at all; hosts whose libvirt did
    not answer but whose QEMU processes were listed (running is known there, definitions not).
    """
    running, defined, unknown, no_definitions = [], [], [], []
    for host, facts in states.items():
        if not isinstance(facts, dict) or facts.get("skipped"):
            unknown.append(host)
            continue
        if not answered(facts):
            processes = facts.get("qemu_processes")
            if facts.get("unreachable") or not isinstance(processes, list):
                unknown.append(host)
                continue
            no_definitions.append(host)
            if any(p.get("name") == name or (uuid and p.get("uuid") == uuid) for p in processes):
                running.append(host)
            continue
        for dom in facts.get("domains") or []:
            if dom.get("name") == name or (uuid and dom.get("uuid") == uuid):
                if is_active(dom):
                    running.append(host)
                if dom.get("persistent"):
                    defined.append(host)
    return running, defined, unknown, no_definitions


def verify(plan, outcomes, states):
    """Check every VM of the source after the run. Returns one record per VM.

    ``states``: host -> host_capacity result taken after the run, for the source and every
    target (a failed result that lists ``qemu_processes`` still tells where QEMU runs).
    Each record: name, status (FINAL_STATUSES), running_on, defined_on, problems (each one
    fails the run) and notes.
    """
    source = plan["source"]
    records = []
    by_name = {o["name"]: o for o in outcomes or []}
    for vm in plan["vms"]:
        running, defined, unknown, no_defs = _where(vm["name"], vm.get("uuid"), states)
        problems, notes = [], []
        for host in no_defs:
            notes.append("libvirt on %s did not answer; its QEMU processes were listed instead" % host)
        if vm["action"] == ACTION_NONE:
            status = ST_NOT_RUNNING
            if len(running) > 1:
                status = ST_DUPLICATE
                problems.append("runs on %d hosts at once: %s" % (len(running), ", ".join(running)))
            elif running:
                notes.append("was not running when the evacuation began; now runs on %s" % running[0])
        elif len(running) > 1:
            status = ST_DUPLICATE
            problems.append("runs on %d hosts at once: %s" % (len(running), ", ".join(running)))
        elif running == [source]:
            status = ST_LEFT if vm["action"] == ACTION_LEAVE and not vm.get("no_room") else ST_STAYED
            if vm["persistent"] and source not in defined and source not in no_defs:
                problems.append("its persistent definition is missing on the source")
            if unknown:
                notes.append("could not ask %s" % ", ".join(unknown))
        elif len(running) == 1 and source in unknown:
            status = ST_UNVERIFIED
            problems.append("runs on %s, but the source %s could not be asked, so it is not verified that the "
                            "source no longer runs or defines it" % (running[0], source))
        elif len(running) == 1:
            host = running[0]
            status = ST_MIGRATED
            if vm.get("target") and host != vm["target"]:
                notes.append("runs on %s, planned for %s" % (host, vm["target"]))
            if source in defined:
                problems.append("still defined on the source %s: it could be started twice" % source)
            elif vm["persistent"] and source in no_defs:
                problems.append("libvirt on the source %s did not answer, so it is not verified that the source "
                                "no longer defines it" % source)
            if vm["persistent"] and host in no_defs:
                problems.append("its definition on %s could not be checked (libvirt not answering)" % host)
            elif vm["persistent"] and host not in defined:
                problems.append("not persistent on %s although it was persistent on the source" % host)
            if unknown:
                notes.append("could not ask %s" % ", ".join(unknown))
        elif unknown:
            status = ST_UNVERIFIED
            problems.append("not running on any host that answered; could not ask %s" % ", ".join(unknown))
        else:
            status = ST_DOWN
            problems.append("runs nowhere: it was running on %s when the evacuation began" % source)
        records.append({
            "name": vm["name"],
            "status": status,
            "running_on": running,
            "defined_on": defined,
            "unverified_hosts": unknown,
            "problems": problems,
            "notes": notes,
            "outcome": by_name.get(vm["name"]) or {},
        })
    return records


def restore_candidates(plan, states):
    """VMs that ran on the source at the start and now run nowhere although a reachable host
    still defines them: start them again (source first). Returns [{name, host}]."""
    todo = []
    for vm in plan["vms"]:
        if vm["action"] == ACTION_NONE:
            continue
        running, defined, unknown, no_defs = _where(vm["name"], vm.get("uuid"), states)
        if running or unknown or no_defs:
            continue
        host = plan["source"] if plan["source"] in defined else (defined[0] if defined else None)
        if host:
            todo.append({"name": vm["name"], "host": host})
    return todo


# --------------------------------------------------------------------------- report --

def resumed_items(resumed):
    """The journal entries an interrupted run left, as this run finished them (evacuation_journal's
    ``resumed``), trimmed to what the report shows."""
    keys = ("name", "uuid", "operation", "run_id", "target", "started_at", "found", "action", "ok", "message")
    return [{k: item.get(k) for k in keys} for item in resumed or [] if isinstance(item, dict)]


def build_report(request, plan, outcomes, records, run, restored=None, resumed=None):
    """The evacuation report: one dict, JSON-serialisable.

    ``run``: {run_id, started_at, finished_at, controller, check_mode}. ``resumed``: what this
    run finished of the operations an interrupted run had in flight (evacuation_journal).
    """
    by_name = {o["name"]: o for o in outcomes or []}
    plan_by_name = {vm["name"]: vm for vm in plan["vms"]}
    vms = []
    for record in records:
        vm = plan_by_name[record["name"]]
        outcome = by_name.get(record["name"]) or {}
        reason = vm.get("reason")
        if outcome.get("message"):
            reason = outcome["message"]
        if record["status"] == ST_MIGRATED and not record["problems"]:
            reason = None if vm["action"] == ACTION_LIVE else vm.get("reason")
        if record["problems"]:
            reason = "; ".join([r for r in [reason] if r] + record["problems"])
        vms.append({
            "name": record["name"],
            "uuid": vm.get("uuid"),
            "status": record["status"],
            "poison_status": vm["status"],
            "action": vm.get("planned_action") or vm["action"],
            "target": vm.get("target"),
            "running_on": record["running_on"],
            "defined_on": record["defined_on"],
            "duration_s": outcome.get("duration_s"),
            "started_at": outcome.get("started_at"),
            "failure_class": outcome.get("failure_class"),
            "reason": reason,
            "steps": outcome.get("steps") or [],
            "problems": record["problems"],
            "notes": record["notes"],
            "evidence": vm.get("evidence") or [],
        })
    counts = {}
    for item in vms:
        counts[item["status"]] = counts.get(item["status"], 0) + 1
    unconsented = left_without_consent(request, vms)
    decision = exit_decision(vms, unconsented, source=plan["source"])
    return {
        "source": plan["source"],
        "targets": [{k: t.get(k) for k in ("name", "usable", "reason", "assigned")} for t in plan["targets"]],
        "run": dict(run),
        "inputs": {k: request.get(k) for k in INPUT_NAMES},
        "vms": vms,
        "counts": counts,
        "restored": list(restored or []),
        "resumed": resumed_items(resumed),
        "left_on_source": [v["name"] for v in vms if v["status"] in (ST_LEFT, ST_STAYED)],
        "left_without_consent": [item["name"] for item in unconsented],
        "source_empty": not any(plan["source"] in v["running_on"] for v in vms),
        "failed": decision["failed"],
        "msg": decision["msg"],
    }


def left_without_consent(request, vms):
    """The VMs this run leaves running on the source although the operator did not spell out
    that they may stay: the one rule behind the run's exit status.

    ``request``: the checked request (``inputs_given`` says which inputs were given rather than
    defaulted); ``vms``: the report's VM entries. A VM may stay when it is named (or its UUID
    is) in ``evacuate_leave_vms``, or when it is poisoned and ``evacuate_poisoned_vm_policy=leave``
    was given, or its poison status is unknown and ``evacuate_unknown_vm_policy=leave`` was
    given. A ``leave`` that is only the default is no consent. VMs that were not running are
    not counted (only their definition stays). Returns [{name, status, why, fix}], in report
    order; ``fix`` names the input to set for that VM.
    """
    request = request or {}
    given = set(request.get("inputs_given") or [])
    leave = set(request.get("evacuate_leave_vms") or [])
    found = []
    for vm in vms or []:
        if vm.get("status") not in (ST_LEFT, ST_STAYED):
            continue
        name = vm.get("name")
        if name in leave or (vm.get("uuid") and vm["uuid"] in leave):
            continue
        poison = vm.get("poison_status")
        keep = "-e %s" % shlex.quote("evacuate_leave_vms=%s" % name)  # advice to copy, never run here
        if vm["status"] == ST_STAYED:
            why = "it should have moved but did not: %s" % (vm.get("reason") or "no reason given")
            fix = "fix the cause and re-run (the re-run moves what is left), or leave it on purpose with %s" % keep
        elif poison == "poisoned":
            if request.get("evacuate_poisoned_vm_policy") == ACTION_LEAVE and "evacuate_poisoned_vm_policy" in given:
                continue
            why = "poisoned, left by the default evacuate_poisoned_vm_policy=leave"
            fix = ("move it with -e evacuate_poisoned_vm_policy=reboot_then_migrate (reboots it) or "
                   "-e evacuate_poisoned_vm_policy=cold_migrate (shuts it down), or leave it on purpose with "
                   "-e evacuate_poisoned_vm_policy=leave or %s" % keep)
        elif poison == "unknown":
            if request.get("evacuate_unknown_vm_policy") == ACTION_LEAVE and "evacuate_unknown_vm_policy" in given:
                continue
            why = "poison status unknown, left by the default evacuate_unknown_vm_policy=leave"
            fix = ("fix what prevented the check and re-run, or move it anyway with "
                   "-e evacuate_unknown_vm_policy=migrate (it may hold poisoned pages), or leave it on purpose with "
                   "-e evacuate_unknown_vm_policy=leave or %s" % keep)
        else:
            why = vm.get("reason") or "left on the source"
            fix = "fix the cause and re-run, or leave it on purpose with %s" % keep
        found.append({"name": name, "status": vm["status"], "why": why, "fix": fix})
    return found


def exit_decision(vms, unconsented=(), source=None):
    """The exit-status rule. The run fails when a VM runs nowhere or twice, or could not be
    verified, or stays on the source without the operator's consent (``unconsented``: what
    left_without_consent returns). VMs left by a policy the operator gave, or by
    evacuate_leave_vms, and VMs that were not running, do not fail the run. The message names
    each VM and the way forward.
    """
    unconsented = list(unconsented or [])
    named = set(item["name"] for item in unconsented)
    failing = [v for v in vms if v["status"] in FAILING_STATUSES or v.get("problems")]
    failing += [v for v in vms if v["name"] in named and v not in failing]
    left = [v for v in vms if v["status"] == ST_LEFT and v["name"] not in named]
    moved = [v for v in vms if v["status"] == ST_MIGRATED]
    if failing:
        text = "evacuation incomplete: %d VM(s) need attention: %s" % (
            len(failing), "; ".join("%s %s (%s)" % (_shown(v["name"]), v["status"], v.get("reason") or "no reason")
                                    for v in failing))
        if unconsented:
            text += ". Left on the source without being asked to stay: %s. Then run again: ansible-playbook " \
                    "kvm_ras.poison_guard.evacuate_host -e evacuate_source=%s plus the input chosen for each VM" % (
                        "; ".join("%s (%s): %s" % (_shown(item["name"]), item["why"], item["fix"])
                                  for item in unconsented), source or "<source>")
        return {"failed": True, "msg": text}
    text = "evacuation done: %d VM(s) moved" % len(moved)
    if left:
        text += ", %d left on the source as asked: %s" % (len(left), ", ".join(_shown(v["name"]) for v in left))
    else:
        text += ", the source runs no VM"
    return {"failed": False, "msg": text}


def render_report(report):
    """The human-readable report: header, the VM table, the verdict."""
    run = report["run"]
    lines = ["Evacuation report: %s" % report["source"],
             "run %s, %s -> %s, controller %s" % (
                 run.get("run_id"), run.get("started_at"), run.get("finished_at"), run.get("controller")),
             ""]
    rows = []
    for vm in report["vms"]:
        duration = "-" if vm["duration_s"] is None else "%.1f s" % float(vm["duration_s"])
        rows.append([_shown(vm["name"]), vm["status"], vm["action"], vm["target"] or "-",
                     ",".join(vm["running_on"]) or "-", duration, vm["reason"] or ""])
    if rows:
        lines += _table(["VM", "STATUS", "ACTION", "TARGET", "RUNS ON", "DURATION", "REASON"], rows)
    else:
        lines.append("%s had no VMs: nothing to do." % report["source"])
    if report.get("resumed"):
        lines.append("")
        lines.append("resumed from an interrupted run (its journal on the source):")
        for item in report["resumed"]:
            found = item.get("found") or "?"
            lines.append("  %s (%s by run %s, target %s): found %s, %s%s" % (
                _shown(item["name"] or "?"), item.get("operation") or "?", item.get("run_id") or "?",
                item.get("target") or "-", found if found in ("nowhere", "?") else "on " + found,
                item.get("action") or "?",
                "" if item.get("ok") else " (NOT finished)") + (" - %s" % item["message"] if item.get("message") else ""))
    if report.get("restored"):
        lines.append("")
        lines.append("restarted after the run (they ran nowhere): %s" % ", ".join(
            "%s on %s" % (_shown(r["name"]), r["host"]) for r in report["restored"]))
    lines.append("")
    lines.append(("FAILED: " if report["failed"] else "OK: ") + report["msg"])
    return lines


def report_basename(source, started_compact):
    """File name (without extension) of a report: <source>-<UTC timestamp>."""
    return "%s-%s" % (source, started_compact)
