# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""After converge (migration_transport, TLS, role-made CA) on three hypervisor containers:

- from every host, ``virsh -c qemu+tls://<other>/system`` reaches every other host (libvirt
  checks the server certificate against /etc/pki/CA/cacert.pem and the name in the URI
  against its subjectAltName; libvirtd checks the client certificate);
- a client whose certificate comes from another CA is refused by libvirtd;
- the plain TCP listener is off (migration_transport_disable_tcp);
- the test guest live-migrates over TLS, once with libvirt's default (QEMU's data on its own
  connection) and once tunnelled through the TLS connection (--p2p --tunnelled), and keeps
  counting (its RAM moved; the destination did not boot it again).
"""

from __future__ import annotations

import json
import os
import re
import time

import pytest

HOSTS = ["transport-hv1", "transport-hv2", "transport-hv3"]
GUEST = "tick-t"
TICK = re.compile(r"^tick (\d+)\r?$", re.M)
QUERY = """
import json, libvirt
conn = libvirt.openReadOnly('qemu:///system')
print(json.dumps({d.name(): bool(d.isActive()) for d in conn.listAllDomains(0)}))
"""

testinfra_hosts = ["ansible://" + HOSTS[0]]


def _host(host, name):
    return host.get_host("ansible://" + name, ansible_inventory=os.environ["MOLECULE_INVENTORY_FILE"])


@pytest.fixture(name="hosts")
def fixture_hosts(host):
    return {name: _host(host, name) for name in HOSTS}


@pytest.mark.parametrize("source", HOSTS)
def test_every_host_reaches_the_others_over_tls(source, hosts):
    for target in HOSTS:
        if target == source:
            continue
        cmd = hosts[source].run("virsh -c %s hostname", "qemu+tls://%s/system" % target)
        assert cmd.rc == 0, (source, target, cmd.stderr)
        # the libvirtd that answered is the target's (libvirt may add the domain part)
        answered = cmd.stdout.strip().split(".")[0]
        assert answered == hosts[target].check_output("hostname").strip().split(".")[0], (source, target)


def test_plain_tcp_is_off(hosts):
    cmd = hosts[HOSTS[0]].run("virsh -c %s hostname", "qemu+tcp://%s/system" % HOSTS[1])
    assert cmd.rc != 0, "libvirtd still accepts unauthenticated TCP"


def test_a_client_certificate_from_another_ca_is_refused(hosts):
    """Two client directories (pkipath) that both trust the real CA for the server: one holds
    the host's own client certificate and key (control: it connects), the other a client
    certificate of a CA the hosts do not know. no_sanity=1 stops the client from refusing its
    own certificate, so the refusal has to come from the server's check."""
    client = hosts[HOSTS[0]]
    script = """
set -e
d=$(mktemp -d)
mkdir "$d/own" "$d/alien"
cp /etc/pki/CA/cacert.pem "$d/own/cacert.pem"
cp /etc/pki/CA/cacert.pem "$d/alien/cacert.pem"
cp /etc/pki/libvirt/clientcert.pem "$d/own/clientcert.pem"
cp /etc/pki/libvirt/private/clientkey.pem "$d/own/clientkey.pem"
cd "$d/alien"
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out ca.key 2>/dev/null
openssl req -x509 -new -key ca.key -subj /CN=alien -days 2 \
  -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign -out ca.pem
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out clientkey.pem 2>/dev/null
openssl req -new -key clientkey.pem -subj /CN=intruder -out client.csr
printf 'extendedKeyUsage=clientAuth\\nkeyUsage=digitalSignature,keyEncipherment\\n' > ext
openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -extfile ext -days 2 -out clientcert.pem 2>/dev/null
echo "$d"
"""
    tmp = client.run_expect([0], "sh -c %s", script).stdout.strip().splitlines()[-1]
    uri = "qemu+tls://%s/system?no_sanity=1&pkipath=%s/%s"
    try:
        own = client.run("virsh -c %s hostname", uri % (HOSTS[1], tmp, "own"))
        assert own.rc == 0, own.stderr
        alien = client.run("virsh -c %s hostname", uri % (HOSTS[1], tmp, "alien"))
        assert alien.rc != 0, "libvirtd accepted a client certificate of an unknown CA"
    finally:
        client.run("rm -rf %s", tmp)


def _where(hosts):
    running = [name for name in HOSTS if json.loads(hosts[name].run_expect([0], "python3 -c %s", QUERY).stdout).get(GUEST)]
    assert len(running) == 1, running
    return running[0]


def _ticks(host):
    log = host.file("/var/log/libvirt/qemu/%s-serial.log" % GUEST)
    return [int(n) for n in TICK.findall(log.content_string)] if log.exists else []


@pytest.mark.parametrize("flags", [["--live"], ["--live", "--p2p", "--tunnelled"]],
                         ids=["direct", "tunnelled"])
def test_live_migration_over_tls(flags, hosts):
    source = _where(hosts)
    target = HOSTS[(HOSTS.index(source) + 1) % len(HOSTS)]
    before = _ticks(hosts[source])
    assert before and before[-1] > 0, "the guest does not count on %s" % source
    cmd = hosts[source].run("virsh migrate " + " ".join(flags)
                            + " --persistent --undefinesource --verbose %s %s",
                            GUEST, "qemu+tls://%s/system" % target)
    assert cmd.rc == 0, (source, target, cmd.stderr)
    assert _where(hosts) == target
    time.sleep(1.5)
    after = _ticks(hosts[target])
    assert after, "no tick lines on %s" % target
    # the log continues from the source's counter: RAM moved, the guest did not restart
    assert after[-1] > before[-1], (before[-1], after[-1])
