# -*- coding: utf-8 -*-
# Copyright (c) kvm_ras.poison_guard contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The request of ``evacuate_host.yml``: its inputs and each target's migration URI
(controller only, never shipped to a host; no Ansible imports).

- ``DEFAULTS`` / ``INT_BOUNDS`` / ``FLOAT_BOUNDS`` / ``BOOL_INPUTS`` / ``CHOICE_INPUTS``: the
  inputs, as documented (typed) in plugins/modules/evacuation_request.py, which tests compare
  with these tables.
- ``validate_request``: the operator's inputs (extra vars) against the inventory, before
  anything happens. Every problem is collected and reported at once, each with its fix.
- ``migration_uri`` / ``follow_transport``: each target's migration URI, strongest first: its
  ``kvm_ras_migration_uri``, the ``evacuate_migration_uri_template`` given, the transport the
  migration_transport role set up on the source; qemu+tcp only with evacuate_allow_plain_tcp.
- ``deprecated_inputs`` / ``misspelt_inputs``: inputs under their old names, and typos.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import urllib.parse


# --------------------------------------------------------------------------- vocabulary --

POISONED_VM_POLICIES = ("leave", "reboot_then_migrate", "cold_migrate", "migrate_with_holes")
UNKNOWN_VM_POLICIES = ("leave", "migrate")
REBOOT_MODES = ("restart", "reset")
COPY_STORAGE_MODES = ("none", "all", "inc")

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
    "evacuate_migration_uri_template": "",
    "evacuate_allow_plain_tcp": False,
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
BOOL_INPUTS = ("evacuate_cordon", "evacuate_cold_migrate_force_off", "evacuate_break_lock", "evacuate_allow_plain_tcp")
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
                                     "evacuate_break_lock", "evacuate_lock_stale_after",
                                     "evacuate_allow_plain_tcp")}
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
# libvirt's TCP transport: no authentication (with auth_tcp = "none") and no encryption of
# libvirt's connection; refused unless the operator spells it out (evacuate_allow_plain_tcp).
PLAIN_TCP_SCHEMES = ("qemu+tcp",)
# Where a target's migration URI comes from, strongest first (request["migration_uri_origins"]).
URI_FROM_HOST = "kvm_ras_migration_uri"
URI_FROM_TEMPLATE = "evacuate_migration_uri_template"
URI_FROM_TRANSPORT = "transport"
# The local fact the migration_transport role writes on every hypervisor it configures
# (roles/migration_transport/tasks/fact.yml): ansible_local.kvm_ras_migration_transport.
TRANSPORT_FACT = "kvm_ras_migration_transport"
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


def migration_address(target, hostvars):
    """What ``{address}`` stands for in a target's URI: its ``kvm_ras_migration_address``, else
    its ``ansible_host``, else its inventory name."""
    tvars = hostvars.get(target) or {}
    return str(tvars.get("kvm_ras_migration_address") or tvars.get("ansible_host") or target)


def fill_template(template, target, address):
    """A URI template with ``{host}`` (inventory name) and ``{address}`` filled in."""
    return template.replace("{host}", target).replace("{address}", str(address))


def migration_uri(target, hostvars, template):
    """The libvirt URI the source uses to reach ``target``, or None when only the source's
    transport can tell (``template`` empty).

    The inventory variable ``kvm_ras_migration_uri`` of the target wins; otherwise
    ``template`` with ``{host}`` and ``{address}`` (see migration_address).
    """
    tvars = hostvars.get(target) or {}
    explicit = tvars.get("kvm_ras_migration_uri")
    if not _is_blank(explicit):
        return explicit
    if _is_blank(template):
        return None
    return fill_template(template, target, migration_address(target, hostvars))


def uri_scheme(uri):
    """The scheme of a libvirt URI (``qemu+tls``), or None when it is not one."""
    match = URI_RE.match(uri) if isinstance(uri, str) else None
    return match.group("scheme") if match else None


def plain_tcp_problem(label, uri):
    """The refusal of a qemu+tcp URI the operator did not spell out."""
    return ("%s %r uses qemu+tcp, libvirt's TCP transport: the migration channel has no authentication and no "
            "encryption (anyone who reaches libvirtd's TCP port controls libvirt as root): set up TLS or ssh between "
            "the hypervisors with the kvm_ras.poison_guard.migration_transport role (docs/migration-transport.md), "
            "whose URI the evacuation follows when evacuate_migration_uri_template is empty, or spell out that plain "
            "TCP is wanted with -e evacuate_allow_plain_tcp=true" % (label, uri))


def no_transport_reason(source):
    """Why a target has no migration URI: nothing given and no transport on the source."""
    return ("no migration transport configured on %s: set it up with the kvm_ras.poison_guard.migration_transport "
            "role (docs/migration-transport.md), or set evacuate_migration_uri_template / kvm_ras_migration_uri"
            % (source or "the source"))


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
    ``migration_uris`` (target -> URI, None while only the source's transport can tell:
    follow_transport completes it in the plan), ``migration_uri_origins`` (target -> where its
    URI comes from: URI_FROM_HOST > URI_FROM_TEMPLATE > URI_FROM_TRANSPORT),
    ``migration_addresses`` (target -> what ``{address}`` stands for), ``targets_defaulted`` and
    ``inputs_given`` (the inputs given rather than defaulted). A qemu+tcp URI is refused unless
    evacuate_allow_plain_tcp is true.
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

    # Empty (the default): each target's URI follows the transport of the source (its local fact,
    # read in the plan: follow_transport).
    template = given("evacuate_migration_uri_template")
    template = DEFAULTS["evacuate_migration_uri_template"] if template is None else template
    if not isinstance(template, str) or (template and "{address}" not in template and "{host}" not in template):
        problems.append("evacuate_migration_uri_template must contain {address} or {host}, got %r "
                        "(example: qemu+tls://{address}/system; leave it empty to follow the transport the "
                        "kvm_ras.poison_guard.migration_transport role configured)" % (template,))
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

    allow_tcp = bool(request.get("evacuate_allow_plain_tcp"))
    if template and not allow_tcp and uri_scheme(fill_template(template, "host", "address")) in PLAIN_TCP_SCHEMES:
        problems.append(plain_tcp_problem("evacuate_migration_uri_template", template))
        template = None  # one problem for the template, not one per target
    uris, origins, addresses = {}, {}, {}
    for target in request["evacuate_targets"]:
        addresses[target] = migration_address(target, hostvars)
        explicit = not _is_blank((hostvars.get(target) or {}).get("kvm_ras_migration_uri"))
        uri = migration_uri(target, hostvars, template)
        origins[target] = URI_FROM_HOST if explicit else (URI_FROM_TEMPLATE if template else URI_FROM_TRANSPORT)
        uris[target] = None
        if uri is None:
            if request["evacuate_migration_uri_template"] is not None:
                continue  # the source's transport tells (follow_transport)
            origins[target] = None  # the template was refused
            continue
        label = ("kvm_ras_migration_uri of %r" if explicit else "migration URI of %r") % target
        if not check_uri(label, uri, problems):
            continue
        if not allow_tcp and uri_scheme(uri) in PLAIN_TCP_SCHEMES:
            problems.append(plain_tcp_problem(label, uri))
            continue
        uris[target] = uri
    request["migration_uris"] = uris
    request["migration_uri_origins"] = origins
    request["migration_addresses"] = addresses
    request["migration_transport"] = None

    if problems:
        raise EvacuationInputError(problems)
    return request


def follow_transport(request, transport, facts_path=None):
    """Complete the checked request with the URIs of the source's migration transport.

    ``request``: what validate_request returned; ``transport``: the source's local fact
    ``kvm_ras_migration_transport`` (a dict with ``mode`` and ``uri_template``, as the
    migration_transport role writes it), or None when the source has none; ``facts_path``:
    where it was read (for messages).

    Each target keeps a URI it already has (its ``kvm_ras_migration_uri``, or the
    ``evacuate_migration_uri_template`` the operator gave); the others get the transport's
    ``uri_template`` with their ``{address}``. A target that gets no URI is not usable, with the
    reason and fix in ``migration_uri_problems`` (the plan shows it; no VM goes there).
    ``migration_transport`` names the transport when a URI came from it. A transport fact
    that a target needs but that cannot be used (not a dict, a template that is no libvirt URI, qemu+tcp
    without evacuate_allow_plain_tcp) raises EvacuationInputError, before anything changes.
    Returns a new request; the given one is not changed.
    """
    request = dict(request)
    source = request.get("evacuate_source")
    targets = list(request.get("evacuate_targets") or [])
    uris = dict(request.get("migration_uris") or {})
    origins = dict(request.get("migration_uri_origins") or {})
    addresses = dict(request.get("migration_addresses") or {})
    where = "the local fact %s on %s%s" % (TRANSPORT_FACT, source, " (%s)" % facts_path if facts_path else "")
    fix = "run the kvm_ras.poison_guard.migration_transport role on the hypervisors again, or remove the file"
    pending = [t for t in targets if not uris.get(t) and origins.get(t, URI_FROM_TRANSPORT) == URI_FROM_TRANSPORT]
    problems, unusable = [], {}
    template, mode = None, None
    if not pending:
        transport = None  # every target has its URI: the fact is not needed
    if transport not in (None, "", {}) and not isinstance(transport, dict):
        problems.append("%s is not a JSON object (%r): %s" % (where, str(transport)[:200], fix))
    elif transport:
        template, mode = transport.get("uri_template"), transport.get("mode")
        if _is_blank(template):
            template = None
        elif not isinstance(template, str) or ("{address}" not in template and "{host}" not in template):
            problems.append("%s has uri_template %r, which holds neither {address} nor {host}: %s"
                            % (where, template, fix))
            template = None
    if template and pending:
        allow_tcp = bool(request.get("evacuate_allow_plain_tcp"))
        for target in pending:
            uri = fill_template(template, target, addresses.get(target) or target)
            if not check_uri("migration URI of %r (from %s)" % (target, where), uri, problems):
                continue
            if not allow_tcp and uri_scheme(uri) in PLAIN_TCP_SCHEMES:
                problems.append(plain_tcp_problem("uri_template of %s" % where, template))
                break
            uris[target], origins[target] = uri, URI_FROM_TRANSPORT
    if problems:
        raise EvacuationInputError(problems)
    for target in targets:
        uris.setdefault(target, None)
        if not uris[target]:
            unusable[target] = no_transport_reason(source)
    request["migration_uris"] = uris
    request["migration_uri_origins"] = origins
    request["migration_uri_problems"] = unusable
    request["migration_transport"] = ({"mode": mode, "uri_template": template, "source": source}
                                      if template and any(uris.get(t) for t in pending) else None)
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
