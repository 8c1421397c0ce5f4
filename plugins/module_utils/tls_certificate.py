# -*- coding: utf-8 -*-
# Copyright (c) kvm_ras.poison_guard contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Inspect an X.509 certificate (PEM) with the ``openssl`` command line tool.

Used by the ``tls_certificate_info`` module on hypervisors and on the controller to decide
whether a libvirt TLS certificate can stay: it chains to the CA, carries the names the peers
connect to, matches its private key, is not a CA itself and does not expire soon. Hypervisors
need only python3 and the ``openssl`` package (no Python crypto library).

Pure Python: no Ansible imports. Commands run through a ``run(argv) -> (rc, stdout, stderr)``
callable handed in by the caller, always as argv lists (paths and names are data). Private
keys are only ever passed to ``openssl pkey -pubout``: their content is never read here.
"""

from __future__ import annotations

import ipaddress
import re

# `openssl x509 -ext subjectAltName` prints e.g.
#   X509v3 Subject Alternative Name:
#       DNS:hv1, DNS:hv1.example.org, IP Address:10.0.0.1, IP Address:FD00:0:0:0:0:0:0:1
_SAN_ITEM = re.compile(r"(DNS|IP Address):([^,\s]+)")
_FIELD = re.compile(r"^(subject|issuer|notAfter|serial)=(.*)$", re.M)


def parse_san(text):
    """DNS names and IP addresses of an ``openssl x509 -ext subjectAltName`` answer."""
    dns, ips = [], []
    for kind, value in _SAN_ITEM.findall(text or ""):
        if kind == "DNS":
            dns.append(value)
        else:
            try:
                ips.append(str(ipaddress.ip_address(value)))
            except ValueError:
                continue
    return dns, ips


def _is_ip(name):
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def name_matches(name, dns, ips):
    """Whether a peer that connects to ``name`` accepts a certificate with these SANs.

    IP addresses must equal an IP SAN (GnuTLS, which libvirt uses, checks IP SANs for IP
    addresses and never DNS SANs); host names match a DNS SAN case-insensitively, with a
    wildcard standing for exactly one leftmost label (RFC 6125).
    """
    if _is_ip(name):
        return str(ipaddress.ip_address(name)) in ips
    wanted = name.rstrip(".").lower()
    for entry in dns:
        entry = entry.rstrip(".").lower()
        if entry == wanted:
            return True
        if entry.startswith("*.") and "." in wanted:
            if wanted.split(".", 1)[1] == entry[2:] and wanted.split(".", 1)[0]:
                return True
    return False


def _fields(text):
    return {key: value.strip() for key, value in _FIELD.findall(text or "")}


def inspect(run, path, ca_path=None, private_key_path=None, names=(), valid_for_seconds=0,
            openssl="openssl"):
    """Facts and problems of the certificate at ``path``.

    ``problems`` lists, in words an operator can act on, every reason the certificate
    cannot serve as this host's libvirt TLS certificate (empty: usable).
    """
    result = {
        "path": path, "exists": False, "subject": None, "issuer": None, "serial": None,
        "not_after": None, "is_ca": None, "dns_names": [], "ip_addresses": [],
        "missing_names": [], "expires_within_window": None, "verified": None,
        "verify_error": None, "key_matches": None, "problems": [],
    }
    problems = result["problems"]
    rc, out, err = run([openssl, "x509", "-in", path, "-noout", "-subject", "-issuer",
                        "-serial", "-enddate", "-nameopt", "RFC2253"])
    if rc != 0:
        detail = (err or out or "").strip().splitlines()
        problems.append("%s is not a readable PEM certificate (%s)"
                        % (path, detail[-1] if detail else "openssl exit %d" % rc))
        return result
    result["exists"] = True
    fields = _fields(out)
    result.update(subject=fields.get("subject"), issuer=fields.get("issuer"),
                  serial=fields.get("serial"), not_after=fields.get("notAfter"))

    rc, out, _err = run([openssl, "x509", "-in", path, "-noout", "-ext",
                         "subjectAltName,basicConstraints"])
    dns, ips = parse_san(out if rc == 0 else "")
    result["dns_names"], result["ip_addresses"] = dns, ips
    result["is_ca"] = bool(rc == 0 and re.search(r"CA:TRUE", out))

    missing = [name for name in names if not name_matches(name, dns, ips)]
    result["missing_names"] = missing
    if missing:
        problems.append("%s does not carry the name(s) %s that the other hosts connect to "
                        "(subjectAltName: %s)" % (path, ", ".join(missing),
                                                  ", ".join(dns + ips) or "none"))

    rc, _out, _err = run([openssl, "x509", "-in", path, "-noout", "-checkend",
                          str(int(valid_for_seconds))])
    result["expires_within_window"] = rc != 0
    if rc != 0:
        problems.append("%s expires within %d seconds (notAfter %s)"
                        % (path, int(valid_for_seconds), result["not_after"]))

    if ca_path:
        rc, out, err = run([openssl, "verify", "-CAfile", ca_path, path])
        result["verified"] = rc == 0
        if rc != 0:
            lines = [line for line in (out + "\n" + err).splitlines() if line.strip()]
            result["verify_error"] = lines[-1] if lines else "openssl verify exit %d" % rc
            problems.append("%s is not signed by the CA in %s (%s)"
                            % (path, ca_path, result["verify_error"]))

    if private_key_path:
        rc_key, key_pub, _err = run([openssl, "pkey", "-in", private_key_path, "-pubout"])
        rc_crt, crt_pub, _err = run([openssl, "x509", "-in", path, "-noout", "-pubkey"])
        if rc_key != 0:
            result["key_matches"] = False
            problems.append("%s is not a readable private key" % private_key_path)
        else:
            result["key_matches"] = rc_crt == 0 and key_pub.strip() == crt_pub.strip()
            if not result["key_matches"]:
                problems.append("the private key %s does not belong to the certificate %s"
                                % (private_key_path, path))
    return result
