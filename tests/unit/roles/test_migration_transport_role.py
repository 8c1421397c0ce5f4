# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The migration_transport role, run for real with ansible-playbook against localhost.

Two inventory hosts (hv-a, hv-b) both use ``ansible_connection=local`` and the venv's Python;
each has its own temporary tree for libvirt's PKI files, libvirtd.conf, root's ssh directory
and the local facts (the role's path options), and ``migration_transport_libvirtd_manager=none``
so no libvirtd is touched. Everything else is the real role: openssl makes the CA, the host
keys and requests and signs them, ssh-keygen makes the migration keys, blockinfile edits the
files. What libvirtd and ssh then do with them is checked in molecule/transport.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
ROLE = REPO / "roles" / "migration_transport"
PLAYBOOK = REPO / "playbooks" / "migration_transport.yml"
PYTHON = str(Path(sys.executable))
# The packaged libvirtd.conf has every setting commented out; the lab image appends
# `listen_tls = 0` (lab/hvlab.d/image/libvirtd-lab.conf). The role's block must come first.
LIBVIRTD_CONF = "# packaged libvirtd.conf\n#listen_tls = 0\nlisten_tls = 0\nlisten_tcp = 1\n"
HOSTS = {"hv-a": "127.0.0.1", "hv-b": "127.0.0.2"}

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None or shutil.which("ssh-keygen") is None,
                                reason="needs the openssl and ssh-keygen commands")


def _tree(root: Path, hosts=None):
    for name in hosts or HOSTS:
        (root / name / "etc").mkdir(parents=True)
        (root / name / "etc" / "libvirtd.conf").write_text(LIBVIRTD_CONF)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                        str(root / name / "etc" / "ssh_host_ed25519_key")], check=True)


def _inventory(root: Path, hosts=None, host_vars=None, group_vars=None) -> Path:
    hosts = hosts or HOSTS
    base = {
        "ansible_connection": "local",
        "ansible_python_interpreter": PYTHON,
        "migration_transport_become": False,
        "migration_transport_libvirtd_manager": "none",
        "migration_transport_key_bits": 2048,
        "migration_transport_ca_dir": str(root / "ca"),
        "migration_transport_pki_dir": str(root) + "/{{ inventory_hostname }}/pki",
        "migration_transport_libvirtd_conf": str(root) + "/{{ inventory_hostname }}/etc/libvirtd.conf",
        "migration_transport_facts_dir": str(root) + "/{{ inventory_hostname }}/facts",
        "migration_transport_ssh_dir": str(root) + "/{{ inventory_hostname }}/ssh",
        "migration_transport_ssh_host_key": str(root) + "/{{ inventory_hostname }}/etc/ssh_host_ed25519_key.pub",
    }
    base.update(group_vars or {})
    inventory = {"all": {"children": {"hypervisors": {
        "hosts": {name: dict({"kvm_ras_migration_address": address}, **(host_vars or {}).get(name, {}))
                  for name, address in hosts.items()},
        "vars": base}}}}
    path = root / "inventory.yml"
    path.write_text(yaml.safe_dump(inventory))
    return path


def _play(root: Path, *args, inventory=None):
    env = dict(os.environ, ANSIBLE_FORCE_COLOR="0", ANSIBLE_NOCOLOR="1",
               ANSIBLE_LOCAL_TEMP=str(root / ".ansible-tmp"))
    run = subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), "-i",
                          str(inventory or _inventory(root)), str(PLAYBOOK), *args],
                         cwd=REPO, env=env, capture_output=True, text=True, check=False, timeout=900)
    return run, run.stdout + run.stderr


def _recap(out: str) -> dict:
    return {host: {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", rest)}
            for host, rest in re.findall(r"^(\S+)\s+: (ok=.*)$", out, re.M)}


def _snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and ".ansible-tmp" not in p.parts and p.name != "inventory.yml"}


def _openssl(*argv) -> subprocess.CompletedProcess:
    return subprocess.run(["openssl", *argv], capture_output=True, text=True, check=False)


# --------------------------------------------------------------------------------------------
# Bad inputs: refused before anything is written
# --------------------------------------------------------------------------------------------

def _refused(root, out, run, *expected):
    assert run.returncode != 0, out[-3000:]
    for text in expected:
        assert text in " ".join(out.split()), (text, out[-3000:])


@pytest.fixture(name="fresh")
def fixture_fresh(tmp_path):
    _tree(tmp_path)
    return tmp_path


def test_unknown_transport_word_is_refused_naming_the_choices(fresh):
    before = _snapshot(fresh)
    run, out = _play(fresh, "-e", "migration_transport_mode=tcp")
    _refused(fresh, out, run, "migration_transport_mode", "tls, ssh", "tcp")
    assert _snapshot(fresh) == before and not (fresh / "ca").exists()


def test_ca_path_that_does_not_exist_is_refused(fresh):
    before = _snapshot(fresh)
    missing = fresh / "no-such" / "ca.pem"
    run, out = _play(fresh, "-e", f"migration_transport_ca_cert={missing}",
                     "-e", f"migration_transport_ca_key={fresh / 'no-such' / 'ca.key'}")
    _refused(fresh, out, run, f"migration_transport_ca_cert is {missing}, which does not exist on the controller",
             "Nothing was changed")
    assert _snapshot(fresh) == before and not (fresh / "ca").exists()


def test_ca_key_without_its_certificate_is_refused(fresh):
    key = fresh / "byo-ca.key"
    _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(key))
    before = _snapshot(fresh)
    run, out = _play(fresh, "-e", f"migration_transport_ca_key={key}")
    _refused(fresh, out, run, f"migration_transport_ca_key ({key}) is given without its certificate",
             "set migration_transport_ca_cert")
    assert _snapshot(fresh) == before and not (fresh / "ca").exists()


def _byo_ca(root: Path, host_names: dict):
    """An operator's CA and, per host, a certificate issued for the given names."""
    ca_key, ca_pem = root / "byo" / "ca.key", root / "byo" / "ca.pem"
    ca_key.parent.mkdir()
    _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(ca_key))
    assert _openssl("req", "-x509", "-new", "-key", str(ca_key), "-subj", "/CN=Operator CA", "-days", "30",
                    "-addext", "basicConstraints=critical,CA:TRUE", "-addext",
                    "keyUsage=critical,keyCertSign", "-out", str(ca_pem)).returncode == 0
    host_vars = {}
    for host, names in host_names.items():
        key, csr, pem, ext = (root / "byo" / f"{host}.{suffix}" for suffix in ("key", "csr", "pem", "ext"))
        _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(key))
        _openssl("req", "-new", "-key", str(key), "-subj", f"/CN={host}", "-out", str(csr))
        ext.write_text("extendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=" + ",".join(names) + "\n")
        assert _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca_pem), "-CAkey", str(ca_key),
                        "-extfile", str(ext), "-days", "365", "-out", str(pem)).returncode == 0
        host_vars[host] = {"migration_transport_host_cert": str(pem), "migration_transport_host_key": str(key)}
    return ca_pem, host_vars


def test_hostname_not_in_the_operators_certificate_is_refused(fresh):
    # hv-b's certificate names hv-b but not 127.0.0.2, the address the other hosts connect to
    ca_pem, host_vars = _byo_ca(fresh, {"hv-a": ["DNS:hv-a", "IP:127.0.0.1"], "hv-b": ["DNS:hv-b"]})
    before = _snapshot(fresh)
    inventory = _inventory(fresh, host_vars=host_vars,
                           group_vars={"migration_transport_ca_cert": str(ca_pem), "migration_transport_ca_dir": ""})
    run, out = _play(fresh, inventory=inventory)
    _refused(fresh, out, run, "does not carry the name(s) 127.0.0.2 that the other hosts connect to",
             "The other hosts connect to '127.0.0.2'", "The checks failed on hv-b",
             "Nothing was changed on any host")
    # hv-a passed its own checks but was stopped too: nothing written anywhere
    assert _snapshot(fresh) == before
    assert _recap(out)["hv-a"]["changed"] == 0


def test_operators_certificates_are_installed_when_they_fit(fresh):
    ca_pem, host_vars = _byo_ca(fresh, {"hv-a": ["DNS:hv-a", "IP:127.0.0.1"],
                                        "hv-b": ["DNS:hv-b", "IP:127.0.0.2"]})
    inventory = _inventory(fresh, host_vars=host_vars,
                           group_vars={"migration_transport_ca_cert": str(ca_pem), "migration_transport_ca_dir": ""})
    run, out = _play(fresh, inventory=inventory)
    assert run.returncode == 0, out[-3000:]
    for host in HOSTS:
        pki = fresh / host / "pki"
        assert (pki / "CA" / "cacert.pem").read_bytes() == ca_pem.read_bytes()
        assert (pki / "libvirt" / "servercert.pem").read_bytes() == Path(host_vars[host]["migration_transport_host_cert"]).read_bytes()
        assert oct((pki / "libvirt" / "private" / "clientkey.pem").stat().st_mode & 0o777) == "0o600"
    # key material never printed
    assert "PRIVATE KEY" not in out


def test_operators_ca_signs_the_hosts_requests(fresh):
    """Bring your own CA with its key: the role signs each host's request with it (and makes
    no CA of its own); the CA key is not copied anywhere."""
    ca_pem, _host_vars = _byo_ca(fresh, {})
    ca_key = ca_pem.with_suffix(".key")
    work = fresh / "work"
    run, out = _play(fresh, "-e", f"migration_transport_ca_cert={ca_pem}", "-e", f"migration_transport_ca_key={ca_key}",
                     "-e", f"migration_transport_ca_dir={work}")
    assert run.returncode == 0, out[-3000:]
    assert not (work / "ca.pem").exists() and not (work / "ca.key").exists()
    for host, address in HOSTS.items():
        cert = fresh / host / "pki" / "libvirt" / "servercert.pem"
        assert _openssl("verify", "-CAfile", str(ca_pem), str(cert)).returncode == 0
        assert {host, address} <= _sans(cert)
        assert (fresh / host / "pki" / "CA" / "cacert.pem").read_bytes() == ca_pem.read_bytes()
    key = ca_key.read_bytes()
    assert not [p for p in fresh.rglob("*") if p.is_file() and p != ca_key and p.read_bytes() == key]


# --------------------------------------------------------------------------------------------
# TLS with the role's own CA: issue, verify, idempotence, check mode, rollback
# --------------------------------------------------------------------------------------------

def _sans(cert: Path) -> set:
    text = _openssl("x509", "-in", str(cert), "-noout", "-ext", "subjectAltName").stdout
    return set(re.findall(r"(?:DNS|IP Address):([^,\s]+)", text))


@pytest.mark.slow
def test_tls_present_check_mode_idempotence_and_absent(fresh):
    before = _snapshot(fresh)

    # check mode on hosts that have nothing yet: a preview, nothing written
    run, out = _play(fresh, "--check")
    assert run.returncode == 0, out[-3000:]
    assert "would issue a certificate for hv-a with the names hv-a, 127.0.0.1" in " ".join(out.split())
    assert _snapshot(fresh) == before and not (fresh / "ca").exists()

    run, out = _play(fresh)
    assert run.returncode == 0, out[-3000:]
    assert "PRIVATE KEY" not in out
    assert "[DEPRECATION WARNING]" not in out, out[-3000:]
    ca = fresh / "ca"
    assert oct(ca.stat().st_mode & 0o777) == "0o700"
    assert oct((ca / "ca.key").stat().st_mode & 0o777) == "0o600"
    for host, address in HOSTS.items():
        pki = fresh / host / "pki"
        # the CA key was never copied to a host
        assert not [p for p in (fresh / host).rglob("*") if p.is_file() and p.read_bytes() == (ca / "ca.key").read_bytes()]
        assert (pki / "CA" / "cacert.pem").read_bytes() == (ca / "ca.pem").read_bytes()
        for cert in ("servercert.pem", "clientcert.pem"):
            verify = _openssl("verify", "-CAfile", str(ca / "ca.pem"), "-purpose",
                              "sslserver" if cert.startswith("server") else "sslclient",
                              str(pki / "libvirt" / cert))
            assert verify.returncode == 0 and verify.stdout.strip().endswith(": OK"), verify
            assert {host, address} <= _sans(pki / "libvirt" / cert)
        # the certificate belongs to the key made on the host
        pub_key = _openssl("pkey", "-in", str(pki / "libvirt" / "private" / "serverkey.pem"), "-pubout").stdout
        pub_crt = _openssl("x509", "-in", str(pki / "libvirt" / "servercert.pem"), "-noout", "-pubkey").stdout
        assert pub_key and pub_key == pub_crt
        assert oct((pki / "libvirt" / "private" / "serverkey.pem").stat().st_mode & 0o777) == "0o600"
        conf = (fresh / host / "etc" / "libvirtd.conf").read_text()
        assert conf.startswith("# BEGIN kvm_ras.poison_guard.migration_transport")
        # first setting wins in libvirtd.conf: ours comes before the lab's listen_tls = 0
        assert re.findall(r"^listen_tls = (\d)", conf, re.M)[0] == "1"
        fact = json.loads((fresh / host / "facts" / "kvm_ras_migration_transport.fact").read_text())
        assert fact["uri_template"] == "qemu+tls://{address}/system" and fact["mode"] == "tls"
        assert fact["address"] == address
    # the two hosts have different keys
    assert (fresh / "hv-a/pki/libvirt/private/serverkey.pem").read_bytes() != \
        (fresh / "hv-b/pki/libvirt/private/serverkey.pem").read_bytes()

    issued = _snapshot(fresh)
    run, out = _play(fresh)
    assert run.returncode == 0, out[-3000:]
    assert all(counts["changed"] == 0 for counts in _recap(out).values()), out[-3000:]
    assert _snapshot(fresh) == issued

    # a new name for hv-b: its certificate is issued again (same key), hv-a's stays
    inventory = _inventory(fresh, group_vars={"migration_transport_extra_names": ["migration.example.org"]},
                           host_vars={})
    run, out = _play(fresh, "--check", inventory=inventory)
    assert run.returncode == 0 and "does not carry the name(s) migration.example.org" in " ".join(out.split())
    assert _snapshot(fresh) == issued

    run, out = _play(fresh, "-e", "migration_transport_state=absent")
    assert run.returncode == 0, out[-3000:]
    for host in HOSTS:
        assert (fresh / host / "etc" / "libvirtd.conf").read_text() == LIBVIRTD_CONF
        assert not list((fresh / host / "pki").rglob("*.pem"))
        assert not (fresh / host / "facts" / "kvm_ras_migration_transport.fact").exists()
        assert not list((fresh / "ca" / "hosts").glob(host + ".*"))
    assert (fresh / "ca" / "ca.key").exists(), "the CA stays with the operator"
    run, out = _play(fresh, "-e", "migration_transport_state=absent")
    assert run.returncode == 0 and all(c["changed"] == 0 for c in _recap(out).values()), out[-3000:]


# --------------------------------------------------------------------------------------------
# ssh: keys made per host, authorised on the other host from its addresses, host keys pinned
# --------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_ssh_present_idempotence_and_absent(fresh):
    sources = {"hv-a": ["192.0.2.11"], "hv-b": ["192.0.2.12", "2001:db8::12"]}
    inventory = _inventory(fresh, group_vars={"migration_transport_mode": "ssh"},
                           host_vars={h: {"migration_transport_ssh_source_addresses": s} for h, s in sources.items()})
    run, out = _play(fresh, inventory=inventory)
    assert run.returncode == 0, out[-3000:]
    assert "PRIVATE KEY" not in out
    for host, other in (("hv-a", "hv-b"), ("hv-b", "hv-a")):
        ssh = fresh / host / "ssh"
        other_pub = (fresh / other / "ssh" / "kvm_ras_migration_ed25519.pub").read_text().split()[:2]
        lines = [line for line in (ssh / "authorized_keys").read_text().splitlines() if not line.startswith("#")]
        assert lines == ['from="%s",no-pty,no-port-forwarding,no-agent-forwarding,no-X11-forwarding %s '
                         'kvm_ras-migration@%s' % (",".join(sources[other]), " ".join(other_pub), other)]
        own_pub = (ssh / "kvm_ras_migration_ed25519.pub").read_text().split()[1]
        assert own_pub not in (ssh / "authorized_keys").read_text(), "a host authorises only the others"
        assert oct((ssh / "kvm_ras_migration_ed25519").stat().st_mode & 0o777) == "0o600"
        # the other host's host key is pinned under its names; ssh-keygen -F finds it
        host_key = (fresh / other / "etc" / "ssh_host_ed25519_key.pub").read_text().split()[:2]
        for name in (other, HOSTS[other]):
            found = subprocess.run(["ssh-keygen", "-F", name, "-f", str(ssh / "known_hosts")],
                                   capture_output=True, text=True, check=False).stdout
            assert " ".join(host_key) in found, (name, found)
        fact = json.loads((fresh / host / "facts" / "kvm_ras_migration_transport.fact").read_text())
        assert fact["uri_template"] == "qemu+ssh://root@{address}/system?keyfile=%s/kvm_ras_migration_ed25519" % ssh

    done = _snapshot(fresh)
    run, out = _play(fresh, inventory=inventory)
    assert run.returncode == 0 and all(c["changed"] == 0 for c in _recap(out).values()), out[-3000:]
    assert _snapshot(fresh) == done

    run, out = _play(fresh, "-e", "migration_transport_state=absent", inventory=inventory)
    assert run.returncode == 0, out[-3000:]
    for host in HOSTS:
        ssh = fresh / host / "ssh"
        assert (ssh / "authorized_keys").read_text() == "" and (ssh / "known_hosts").read_text() == ""
        assert not (ssh / "kvm_ras_migration_ed25519").exists()


def test_ssh_needs_every_host_of_the_group(fresh):
    before = _snapshot(fresh)
    run, out = _play(fresh, "-e", "migration_transport_mode=ssh", "--limit", "hv-a")
    _refused(fresh, out, run, "all of them must be in the run; missing: hv-b")
    assert _snapshot(fresh) == before
