# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The distro_backport strategy of the patched_qemu role: its apt helper
(roles/patched_qemu/files/qemu_backport.py, run on the hypervisor) and how the role's files
wire it up (option, pin, source entry, per-host checks).

The apt fixtures are verbatim output of apt 2.6.1 on Debian 12 with the release, its security
suite and bookworm-backports configured (``apt-cache madison``, ``apt-get indextargets``,
fields cut to the ones the helper reads),
and of ``dpkg-query`` on a host with Debian 12's QEMU 7.2 installed."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
ROLE = REPO / "roles" / "patched_qemu"
FILES = ROLE / "files"

BPO = "1:10.0.2+ds-2+deb13u1~bpo12+1"
STABLE = "1:7.2+dfsg-7+deb12u18+b3"  # binNMU of the arch:any packages
STABLE_ALL = "1:7.2+dfsg-7+deb12u18"  # arch:all packages (qemu-system-data) have no +b3

MADISON = f"""\
qemu-system-x86 | {BPO} | http://deb.debian.org/debian bookworm-backports/main amd64 Packages
qemu-system-x86 | {STABLE} | http://deb.debian.org/debian bookworm/main amd64 Packages
qemu-system-x86 | 1:7.2+dfsg-7+deb12u15 | http://deb.debian.org/debian-security bookworm-security/main amd64 Packages
qemu-system-common | {BPO} | http://deb.debian.org/debian bookworm-backports/main amd64 Packages
qemu-system-common | {STABLE} | http://deb.debian.org/debian bookworm/main amd64 Packages
qemu-system-common | 1:7.2+dfsg-7+deb12u15 | http://deb.debian.org/debian-security bookworm-security/main amd64 Packages
qemu-system-data | {BPO} | http://deb.debian.org/debian bookworm-backports/main amd64 Packages
qemu-system-data | {STABLE_ALL} | http://deb.debian.org/debian bookworm/main amd64 Packages
qemu-system-data | 1:7.2+dfsg-7+deb12u15 | http://deb.debian.org/debian-security bookworm-security/main amd64 Packages
   seabios | 1.16.3-2~bpo12+1 | http://deb.debian.org/debian bookworm-backports/main amd64 Packages
   seabios |   1.16.2-1 | http://deb.debian.org/debian bookworm/main amd64 Packages
qemu-system-modules-spice | {BPO} | http://deb.debian.org/debian bookworm-backports/main amd64 Packages
"""

DPKG_QUERY_7_2 = (f"qemu-system-common\tqemu\t{STABLE}\tii \n"
                  f"qemu-system-data\tqemu\t{STABLE_ALL}\tii \n"
                  f"qemu-system-x86\tqemu\t{STABLE}\tii \n"
                  "seabios\tseabios\t1.16.2-1\tii \n"
                  "libvirt-daemon\tlibvirt\t9.0.0-4+deb12u2\tii \n"
                  "qemu-block-extra\tqemu\t1:7.2+dfsg-7+deb12u15\trc \n")  # removed, config left

INDEXTARGETS = """\
MetaKey: main/binary-amd64/Packages
ShortDesc: Packages
Description: http://deb.debian.org/debian bookworm/main amd64 Packages
URI: http://deb.debian.org/debian/dists/bookworm/main/binary-amd64/Packages
Filename: /var/lib/apt/lists/deb.debian.org_debian_dists_bookworm_main_binary-amd64_Packages.lz4
Codename: bookworm
Component: main
Identifier: Packages
Release: bookworm
Repo-URI: http://deb.debian.org/debian/
Sourcesentry: /etc/apt/sources.list.d/debian.sources:1
Target-Of: deb

MetaKey: main/binary-amd64/Packages
ShortDesc: Packages
Description: http://deb.debian.org/debian bookworm-backports/main amd64 Packages
URI: http://deb.debian.org/debian/dists/bookworm-backports/main/binary-amd64/Packages
Filename: /var/lib/apt/lists/deb.debian.org_debian_dists_bookworm-backports_main_binary-amd64_Packages.lz4
Component: main
Identifier: Packages
Release: bookworm-backports
Repo-URI: http://deb.debian.org/debian/
Sourcesentry: /etc/apt/sources.list.d/kvm-ras-qemu-backports.sources:1
Target-Of: deb

MetaKey: main/source/Sources
ShortDesc: Sources
Description: http://deb.debian.org/debian bookworm/main Sources
Component: main
Identifier: Sources
Release: bookworm
Repo-URI: http://deb.debian.org/debian/
Sourcesentry: /etc/apt/sources.list.d/kvm-ras-patched-qemu-src.sources:1
Target-Of: deb-src
"""
OWN = "/etc/apt/sources.list.d/kvm-ras-qemu-backports.sources"


@pytest.fixture(scope="module")
def helper():
    sys.path.insert(0, str(FILES))  # the helper imports apt_source_entries from its own directory
    try:
        spec = importlib.util.spec_from_file_location("pq_qemu_backport", FILES / "qemu_backport.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(FILES))


def _targets(helper, monkeypatch):
    monkeypatch.setattr(helper, "index_targets", lambda: helper.parse_indextargets(INDEXTARGETS))
    return helper.parse_indextargets(INDEXTARGETS)


def test_madison_versions_per_package_newest_first(helper):
    versions = helper.parse_madison(MADISON)
    assert [v["version"] for v in versions["qemu-system-x86"]] == [BPO, STABLE, "1:7.2+dfsg-7+deb12u15"]
    assert versions["qemu-system-x86"][0]["suites"] == ["bookworm-backports"]
    # indented package names and padded versions (apt aligns the columns)
    assert versions["seabios"] == [{"version": "1.16.3-2~bpo12+1", "suites": ["bookworm-backports"]},
                                   {"version": "1.16.2-1", "suites": ["bookworm"]}]
    # Sources lines (deb-src configured) are not binary versions
    assert helper.parse_madison("      qemu | 1:7.2+dfsg-7+deb12u18 | http://m/debian bookworm/main Sources\n") == {}


def test_newest_in_the_suite_and_outside_it(helper):
    versions = helper.parse_madison(MADISON)["qemu-system-x86"]
    assert helper.newest_in(versions, "bookworm-backports") == BPO
    assert helper.newest_outside(versions, "bookworm-backports", "bookworm") == STABLE
    # a security-only newer version counts as the release's; another release's suite does not
    extra = [{"version": "1:7.2+dfsg-7+deb12u20", "suites": ["bookworm-security"]},
             {"version": "1:9.2+ds-1", "suites": ["trixie"]}]
    assert helper.newest_outside(extra + versions, "bookworm-backports", "bookworm") == "1:7.2+dfsg-7+deb12u20"
    assert helper.newest_outside([{"version": BPO, "suites": ["bookworm-backports-sloppy"]}],
                                 "bookworm-backports", "bookworm") is None


def test_installed_family_of_the_sources(helper):
    installed = helper.parse_installed(DPKG_QUERY_7_2, ["qemu", "seabios"])
    # other sources and packages removed with their configuration left ("rc") are not installed
    assert installed == {"qemu-system-common": STABLE, "qemu-system-data": STABLE_ALL,
                         "qemu-system-x86": STABLE, "seabios": "1.16.2-1"}


def test_each_package_moves_to_its_own_indexed_version(helper):
    by_package = helper.parse_madison(MADISON)
    installed = helper.parse_installed(DPKG_QUERY_7_2, ["qemu", "seabios"])
    family = sorted(set(installed) | {"qemu-system-x86", "qemu-system-modules-spice"})
    moves = helper.family_targets(by_package, family, "bookworm-backports", "bookworm")
    assert moves["backport_packages"] == {"qemu-system-common": BPO, "qemu-system-data": BPO,
                                          "qemu-system-modules-spice": BPO, "qemu-system-x86": BPO,
                                          "seabios": "1.16.3-2~bpo12+1"}
    # back: arch:all qemu-system-data without the +b3 of the arch:any packages
    assert moves["stable_packages"] == {"qemu-system-common": STABLE, "qemu-system-data": STABLE_ALL,
                                        "qemu-system-x86": STABLE, "seabios": "1.16.2-1"}


def test_apt_arguments_to_the_suite_and_back(helper):
    on_bpo = {"qemu-system-common": BPO, "qemu-system-data": BPO, "qemu-system-x86": BPO,
              "qemu-system-modules-spice": BPO, "qemu-system-modules-opengl": BPO, "seabios": "1.16.3-2~bpo12+1"}
    stable = {"qemu-system-common": STABLE, "qemu-system-data": STABLE_ALL, "qemu-system-x86": STABLE,
              "seabios": "1.16.2-1", "qemu-utils": STABLE}
    assert helper.apt_arguments({"qemu-system-x86": BPO, "qemu-system-modules-spice": BPO}, {}, False) == [
        f"qemu-system-modules-spice={BPO}", f"qemu-system-x86={BPO}"]
    back = helper.apt_arguments(stable, on_bpo, only_installed=True)
    # only installed packages are installed again (qemu-utils is not installed here); the
    # modules split off after 7.2 (7.2 has them in qemu-system-common) are removed
    assert back == [f"qemu-system-common={STABLE}", f"qemu-system-data={STABLE_ALL}", f"qemu-system-x86={STABLE}",
                    "seabios=1.16.2-1", "qemu-system-modules-opengl-", "qemu-system-modules-spice-"]


def test_stale_packages_are_drift(helper):
    newer = "1:10.0.2+ds-2+deb13u2~bpo12+1"
    targets = {"qemu-system-x86": newer, "qemu-system-common": newer, "qemu-system-modules-spice": newer}
    installed = {"qemu-system-x86": BPO, "qemu-system-common": newer}
    # not installed (the spice modules): not drift, the install adds them
    assert helper.stale(targets, installed) == ["qemu-system-x86"]
    assert helper.stale(targets, dict(targets)) == []


def test_installed_from_the_suite(helper):
    versions = helper.parse_madison(MADISON)["qemu-system-x86"]
    assert helper.installed_from(versions, BPO, "bookworm-backports")
    assert not helper.installed_from(versions, STABLE, "bookworm-backports")
    assert not helper.installed_from(versions, None, "bookworm-backports")
    # the backports archive keeps only the newest version: an older installed backport is no
    # longer listed, its ~bpo version says where it came from
    assert helper.installed_from(versions[1:], "1:10.0.2+ds-2~bpo12+1", "bookworm-backports")
    assert not helper.installed_from(versions, "1:9.2+ds-1", "bookworm-backports")


def test_mirror_is_the_hosts_own_release_entry(helper):
    targets = helper.parse_indextargets(INDEXTARGETS)
    mirror = helper.mirror_entry(targets, "bookworm")
    assert mirror == {"uris": ["http://deb.debian.org/debian"], "components": ["main"],
                      "entry": "/etc/apt/sources.list.d/debian.sources:1"}
    assert helper.mirror_entry(targets, "trixie") is None
    # the role's own entry is not "another entry of the suite" (else the role would remove it)
    assert helper.suite_entries(targets, "bookworm-backports", OWN) == []
    assert helper.suite_entries(targets, "bookworm-backports", "") == [f"{OWN}:1"]
    present = {t["Filename"] for t in targets if t.get("Release") == "bookworm" and "Filename" in t}
    assert not helper.suite_indexed(targets, "bookworm-backports", exists=present.__contains__)
    assert helper.suite_indexed(targets, "bookworm", exists=present.__contains__)


def test_index_present_finds_compressed_lists(helper, tmp_path):
    """indextargets --no-release-info names the plain file; apt 2.6 stores it as .lz4."""
    plain = tmp_path / "deb.debian.org_debian_dists_bookworm-backports_main_binary-amd64_Packages"
    assert not helper.index_present(str(plain))
    plain.with_name(plain.name + ".lz4").write_bytes(b"")
    assert helper.index_present(str(plain))


def test_plan_with_the_hosts_apt(helper, monkeypatch):
    """plan() end to end on the fixtures, with apt and dpkg answered from them."""
    _targets(helper, monkeypatch)
    monkeypatch.setattr(helper, "signed_by_of", lambda entry: ["/usr/share/keyrings/debian-archive-keyring.gpg"])
    installed_bpo = DPKG_QUERY_7_2.replace(STABLE, BPO).replace(STABLE_ALL, BPO).replace(
        "1.16.2-1", "1.16.3-2~bpo12+1")
    answers = {"dpkg-query": installed_bpo, "apt-cache": MADISON}
    monkeypatch.setattr(helper, "_run", lambda argv: answers[argv[0]])
    plan = helper.plan("bookworm", "bookworm-backports", ["qemu", "seabios"], "qemu-system-x86", OWN,
                       ["qemu-system-modules-spice"])
    assert plan["mirror"]["signed_by"] == ["/usr/share/keyrings/debian-archive-keyring.gpg"]
    assert plan["backport_version"] == BPO and plan["stable_version"] == STABLE
    assert plan["installed_from_suite"] and plan["backport_stale"] == []
    assert f"qemu-system-x86={STABLE}" in plan["stable_install"]
    assert f"qemu-system-modules-spice={BPO}" in plan["backport_install"]


# ----------------------------------------------------------------- role wiring ---

def _yaml(path: Path):
    return yaml.safe_load(path.read_text())


def test_strategy_option_matches_the_role_vars():
    specs = _yaml(ROLE / "meta" / "argument_specs.yml")["argument_specs"]
    role_vars = _yaml(ROLE / "vars" / "main.yml")
    for entry in ("main", "build", "deploy", "verify"):
        option = specs[entry]["options"]["patched_qemu_strategy"]
        assert option["choices"] == role_vars["patched_qemu_strategies"] == ["patch", "distro_backport"], entry
        assert option["default"] == "patch"
    assert _yaml(ROLE / "defaults" / "main.yml")["patched_qemu_strategy"] == "patch"


def test_validate_names_the_fix_for_a_bad_strategy():
    tasks = _yaml(ROLE / "tasks" / "validate.yml")
    check = next(t for t in tasks if t["name"] == "Check the strategy")
    assert "run_once" not in check  # a host or group variable: every host is checked
    assert check["ansible.builtin.assert"]["that"] == "patched_qemu_strategy in patched_qemu_strategies"
    assert '"patch"' in check["ansible.builtin.assert"]["fail_msg"]
    assert '"distro_backport"' in check["ansible.builtin.assert"]["fail_msg"]


def test_non_bookworm_host_stops_in_detect_before_any_change():
    tasks = _yaml(ROLE / "tasks" / "detect.yml")
    names = [t["name"] for t in tasks]
    check = names.index("Require Debian 12 (bookworm) for the distro_backport strategy")
    # before the helper runs and long before install_backport.yml changes anything
    assert check < names.index("Read what the release and its backports suite offer (distro_backport)")
    assert "distribution_release" in str(tasks[check]["ansible.builtin.assert"]["that"])


def test_pin_follows_the_suite_and_holds_nothing():
    role_vars = _yaml(ROLE / "vars" / "main.yml")
    pref = (ROLE / "templates" / "backports.pref.j2").read_text()
    assert "Pin: release n={{ patched_qemu_backport_suite }}" in pref
    assert role_vars["patched_qemu_backport_pin_priority"] == 500  # the release's: newest wins, no downgrade
    assert role_vars["patched_qemu_backport_sources"] == ["qemu", "seabios"]
    install = (ROLE / "tasks" / "install_backport.yml").read_text()
    assert "selection: hold" not in install
    # the mirror comes from the host; no mirror host name in the role
    for path in [ROLE / "templates" / "backports.sources.j2", ROLE / "tasks" / "install_backport.yml",
                 ROLE / "vars" / "main.yml", FILES / "qemu_backport.py"]:
        assert "deb.debian.org" not in path.read_text(), path
