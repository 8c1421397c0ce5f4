#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) kvm_ras.poison_guard contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: tls_certificate_info
short_description: Check a PEM certificate against its CA, its private key and the names peers use
version_added: 0.1.0
description:
  - Read-only. Reads an X.509 certificate with the C(openssl) command line tool and reports its
    subject, issuer, expiry and subjectAltName entries.
  - Optionally verifies it against a CA certificate, checks that a private key belongs to it,
    that it carries given host names or IP addresses (the names other hosts put in the
    connection URI) and that it stays valid for a given time.
  - RV(problems) lists every reason the certificate cannot be used, in words an operator can
    act on; RV(usable) is true when there is none. The module does not fail for such problems,
    so callers decide (the C(kvm_ras.poison_guard.migration_transport) role re-issues or fails).
  - Needs only python3 and C(openssl) on the host (no Python crypto library).
author:
  - kvm_ras maintainers (@kvm-ras)
requirements:
  - The C(openssl) command (Debian/Ubuntu package C(openssl)).
extends_documentation_fragment:
  - kvm_ras.poison_guard.attributes
  - kvm_ras.poison_guard.attributes.INFO_MODULE
options:
  path:
    description:
      - The certificate (PEM).
    type: path
    required: true
  ca_path:
    description:
      - CA certificate (PEM) the certificate must chain to.
    type: path
  private_key_path:
    description:
      - Private key (PEM) that must belong to the certificate. Only its public half is compared;
        the key is never returned.
    type: path
  names:
    description:
      - Host names or IP addresses the certificate must carry as subjectAltName (IP addresses
        must be IP entries; host names match DNS entries, a wildcard covering one label).
    type: list
    elements: str
    default: []
  valid_for_seconds:
    description:
      - The certificate must stay valid for at least this long.
    type: int
    default: 0
  openssl:
    description:
      - The openssl command.
    type: path
    default: openssl
notes:
  - A missing certificate is not an error; RV(exists) is then false and RV(problems) says so.
  - The role C(kvm_ras.poison_guard.migration_transport) uses this module to decide whether a
    libvirt TLS certificate can stay or is issued again (docs/migration-transport.md).
"""

EXAMPLES = r"""
- name: Can libvirtd's server certificate stay?
  kvm_ras.poison_guard.tls_certificate_info:
    path: /etc/pki/libvirt/servercert.pem
    ca_path: /etc/pki/CA/cacert.pem
    private_key_path: /etc/pki/libvirt/private/serverkey.pem
    names: [hv1, hv1.example.org, 192.0.2.11]
    valid_for_seconds: 2592000
  register: hv1_cert

- name: Say why not
  ansible.builtin.debug:
    msg: "{{ hv1_cert.problems }}"
  when: not hv1_cert.usable
"""

RETURN = r"""
path:
  description: The certificate checked.
  returned: always
  type: str
exists:
  description: Whether a readable PEM certificate was found at O(path).
  returned: always
  type: bool
usable:
  description: True when RV(problems) is empty.
  returned: always
  type: bool
problems:
  description: Every reason the certificate cannot be used, with the file names involved.
  returned: always
  type: list
  elements: str
  sample: ["/etc/pki/libvirt/servercert.pem does not carry the name(s) hv2 that the other hosts connect to (subjectAltName: hv1, 192.0.2.11)"]
subject:
  description: Subject (RFC 2253).
  returned: always
  type: str
  sample: CN=hv1,O=kvm_ras.poison_guard
issuer:
  description: Issuer (RFC 2253).
  returned: always
  type: str
serial:
  description: Serial number (hex).
  returned: always
  type: str
not_after:
  description: End of validity as openssl prints it.
  returned: always
  type: str
  sample: Dec  6 02:20:45 2027 GMT
is_ca:
  description: Whether the certificate has C(CA:TRUE) basic constraints.
  returned: always
  type: bool
dns_names:
  description: DNS subjectAltName entries.
  returned: always
  type: list
  elements: str
ip_addresses:
  description: IP subjectAltName entries (normalised).
  returned: always
  type: list
  elements: str
missing_names:
  description: Entries of O(names) the certificate does not carry.
  returned: always
  type: list
  elements: str
expires_within_window:
  description: Whether the certificate expires within O(valid_for_seconds).
  returned: always
  type: bool
verified:
  description: Whether it chains to O(ca_path); null without O(ca_path).
  returned: always
  type: bool
verify_error:
  description: openssl's reason when RV(verified) is false.
  returned: always
  type: str
key_matches:
  description: Whether O(private_key_path) belongs to it; null without O(private_key_path).
  returned: always
  type: bool
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.tls_certificate import inspect


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
            ca_path=dict(type="path"),
            private_key_path=dict(type="path", no_log=False),
            names=dict(type="list", elements="str", default=[]),
            valid_for_seconds=dict(type="int", default=0),
            openssl=dict(type="path", default="openssl"),
        ),
        supports_check_mode=True,
    )
    params = module.params
    openssl = module.get_bin_path(params["openssl"], required=True)

    def run(argv):
        return module.run_command(argv, check_rc=False, environ_update={"LC_ALL": "C"})

    result = inspect(run, params["path"], ca_path=params["ca_path"],
                     private_key_path=params["private_key_path"], names=params["names"],
                     valid_for_seconds=params["valid_for_seconds"], openssl=openssl)
    module.exit_json(changed=False, usable=not result["problems"], **result)


if __name__ == "__main__":
    main()
