# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""plugins/module_utils/tls_certificate.py against certificates made here with the real
``openssl`` command (the same binary the module runs on hosts), and the role's static
consistency (defaults vs argument specs, templates)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.tls_certificate import (
    inspect, name_matches, parse_san)

REPO = Path(__file__).resolve().parents[3]
ROLE = REPO / "roles" / "migration_transport"
TYPES = {"str": str, "bool": bool, "int": int, "list": list}

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


def run(argv):
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, env={"LC_ALL": "C", "PATH": "/usr/bin:/bin"})
    return proc.returncode, proc.stdout, proc.stderr


def _ssl(*argv):
    rc, out, err = run(["openssl", *argv])
    assert rc == 0, err
    return out


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    root = tmp_path_factory.mktemp("pki")
    files = {}

    def key(name):
        path = root / (name + ".key")
        _ssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(path))
        return path

    def ca(name):
        path = root / (name + ".pem")
        _ssl("req", "-x509", "-new", "-key", str(key(name)), "-subj", "/CN=" + name, "-days", "10",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign",
             "-out", str(path))
        return path

    def issue(name, ca_name, sans, days="365"):
        csr, ext, pem = root / (name + ".csr"), root / (name + ".ext"), root / (name + ".pem")
        _ssl("req", "-new", "-key", str(key(name)), "-subj", "/CN=" + name, "-out", str(csr))
        ext.write_text("basicConstraints=CA:FALSE\nsubjectAltName=" + sans + "\n")
        _ssl("x509", "-req", "-in", str(csr), "-CA", str(root / (ca_name + ".pem")), "-CAkey",
             str(root / (ca_name + ".key")), "-extfile", str(ext), "-days", days, "-out", str(pem))
        return pem

    files["ca"], files["other_ca"] = ca("ca"), ca("other-ca")
    files["host"] = issue("hv1", "ca", "DNS:hv1,DNS:*.lab.example,IP:192.0.2.11,IP:2001:db8::11")
    files["short"] = issue("short", "ca", "DNS:short", days="1")
    files["foreign"] = issue("foreign", "other-ca", "DNS:hv1")
    files["root"] = root
    return files


def test_parse_san_reads_openssl_output():
    text = ("X509v3 Subject Alternative Name: \n    DNS:hv1, DNS:hv1.example.org, "
            "IP Address:10.0.0.1, IP Address:2001:DB8:0:0:0:0:0:11\n")
    assert parse_san(text) == (["hv1", "hv1.example.org"], ["10.0.0.1", "2001:db8::11"])


@pytest.mark.parametrize("name, expected", [
    ("hv1", True), ("HV1.", True), ("hv2", False), ("a.lab.example", True),
    ("a.b.lab.example", False),  # a wildcard covers one label only
    ("lab.example", False), ("192.0.2.11", True), ("2001:db8:0::11", True),
    ("192.0.2.12", False),
])
def test_name_matches(name, expected):
    assert name_matches(name, ["hv1", "*.lab.example"], ["192.0.2.11", "2001:db8::11"]) is expected


def test_ip_address_does_not_match_a_dns_entry_spelling_it():
    # GnuTLS compares IP addresses with IP SANs only
    assert not name_matches("192.0.2.11", ["192.0.2.11"], [])


@needs_openssl
def test_a_fitting_certificate_is_usable(pki):
    result = inspect(run, str(pki["host"]), ca_path=str(pki["ca"]),
                     private_key_path=str(pki["root"] / "hv1.key"),
                     names=["hv1", "192.0.2.11", "x.lab.example"], valid_for_seconds=86400)
    assert result["problems"] == []
    assert result["verified"] and result["key_matches"] and not result["is_ca"]
    assert result["dns_names"] == ["hv1", "*.lab.example"]
    assert result["ip_addresses"] == ["192.0.2.11", "2001:db8::11"]
    assert result["subject"] == "CN=hv1" and result["issuer"] == "CN=ca"


@needs_openssl
def test_every_problem_is_named(pki):
    result = inspect(run, str(pki["foreign"]), ca_path=str(pki["ca"]),
                     private_key_path=str(pki["root"] / "hv1.key"), names=["hv1", "hv2"])
    text = " | ".join(result["problems"])
    assert result["verified"] is False and "is not signed by the CA in" in text
    assert result["key_matches"] is False and "does not belong to the certificate" in text
    assert result["missing_names"] == ["hv2"] and "does not carry the name(s) hv2" in text


@needs_openssl
def test_expiry_window(pki):
    assert inspect(run, str(pki["short"]), valid_for_seconds=3600)["problems"] == []
    result = inspect(run, str(pki["short"]), valid_for_seconds=30 * 86400)
    assert result["expires_within_window"] and "expires within" in result["problems"][0]


@needs_openssl
def test_ca_certificate_and_missing_file(pki):
    assert inspect(run, str(pki["ca"]), ca_path=str(pki["ca"]),
                   private_key_path=str(pki["root"] / "ca.key"))["is_ca"] is True
    missing = inspect(run, str(pki["root"] / "nope.pem"))
    assert not missing["exists"] and "is not a readable PEM certificate" in missing["problems"][0]


# --------------------------------------------------------------------------------------------
# Static consistency of the role
# --------------------------------------------------------------------------------------------

def test_defaults_match_the_argument_specs():
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    specs = yaml.safe_load((ROLE / "meta" / "argument_specs.yml").read_text())["argument_specs"]
    assert set(specs) == {"main"}
    options = specs["main"]["options"]
    assert set(defaults) == set(options)
    for name, option in options.items():
        assert option["description"], name
        assert isinstance(defaults[name], TYPES[option["type"]]), name
        assert option["default"] == defaults[name], name
        if "choices" in option:
            assert defaults[name] in option["choices"]
    assert options["migration_transport_mode"]["choices"] == ["tls", "ssh"]


def test_no_shell_and_no_internal_names_in_the_specs():
    for path in (ROLE / "tasks").glob("*.yml"):
        text = path.read_text()
        assert "ansible.builtin.shell" not in text and "ansible.builtin.raw" not in text, path
    specs = yaml.safe_load((ROLE / "meta" / "argument_specs.yml").read_text())["argument_specs"]
    assert not [n for n in specs["main"]["options"] if n.startswith("migration_transport__")]


def test_key_material_tasks_are_no_log():
    """Every task that makes or copies a private key hides its arguments and results."""
    checked = []
    for path in (ROLE / "tasks").glob("*.yml"):
        for task in _tasks(yaml.safe_load(path.read_text()) or []):
            command = yaml.safe_dump(task.get("ansible.builtin.command") or {})
            copy = task.get("ansible.builtin.copy") or {}
            makes_key = "genpkey" in command or "ssh-keygen" in command
            copies_key = any(word in str(copy.get("src", "")) + str(copy.get("dest", "")) + str(task.get("loop", ""))
                             for word in ("server_key", "client_key", "migration_transport_host_key"))
            if makes_key or copies_key:
                checked.append(task["name"])
                assert task.get("no_log") is True, (path.name, task["name"])
    assert len(checked) >= 5, checked


def _tasks(items):
    for item in items:
        yield item
        for key in ("block", "rescue", "always"):
            yield from _tasks(item.get(key, []))
