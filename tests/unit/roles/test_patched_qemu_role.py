# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Static consistency of the patched_qemu role: defaults vs argument specs, pinned patch
checksums, the patch itself, the pinned source map, the package's version range."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from ansible_collections.kvm_ras.poison_guard.plugins.module_utils.messages import UPSTREAM_REFUSAL

REPO = Path(__file__).resolve().parents[3]
ROLE = REPO / "roles" / "patched_qemu"
TYPES = {"str": str, "path": str, "bool": bool, "int": int, "list": list, "dict": dict}
# Defaults that are templates evaluated at run time: the spec documents them in words.
TEMPLATED = {"patched_qemu_builder"}


def _yaml(path: Path):
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def defaults() -> dict:
    return _yaml(ROLE / "defaults" / "main.yml")


@pytest.fixture(scope="module")
def role_vars() -> dict:
    return _yaml(ROLE / "vars" / "main.yml")


@pytest.fixture(scope="module")
def specs() -> dict:
    return _yaml(ROLE / "meta" / "argument_specs.yml")["argument_specs"]


def test_every_entry_point_has_a_spec_and_a_task_file(specs):
    assert set(specs) == {"main", "build", "deploy", "verify"}
    for entry in specs:
        assert (ROLE / "tasks" / f"{entry}.yml").is_file(), entry
        assert specs[entry]["short_description"]


def test_every_default_is_documented_in_main(defaults, specs):
    assert set(defaults) == set(specs["main"]["options"])


def test_entry_point_options_are_role_defaults(defaults, specs):
    for entry, spec in specs.items():
        unknown = set(spec["options"]) - set(defaults)
        assert not unknown, f"{entry} documents options without a default: {unknown}"


def test_documented_defaults_and_types_match(defaults, specs):
    for entry, spec in specs.items():
        for name, option in spec["options"].items():
            value = defaults[name]
            assert isinstance(value, TYPES[option["type"]]), (entry, name, value)
            if name in TEMPLATED:
                assert "{{" in value
                continue
            assert option.get("default") == value, (entry, name, option.get("default"), value)
            if "choices" in option:
                assert value in option["choices"]
            if option["type"] == "list":
                assert option["elements"] == "str" and all(isinstance(v, str) for v in value)


def test_internal_variables_stay_out_of_the_specs(specs, role_vars):
    for spec in specs.values():
        assert not [n for n in spec["options"] if n.startswith("patched_qemu__")]
    # pinned facts live in vars/, not in the overridable options
    assert not set(role_vars) & set(specs["main"]["options"])


def _patch_files():
    return sorted((ROLE / "files" / "patches").rglob("*.patch"))


def test_every_shipped_patch_is_pinned_with_its_sha256(role_vars):
    pinned = {entry["file"]: entry["sha256"]
              for files in role_vars["patched_qemu_patches"].values() for entry in files}
    shipped = {str(p.relative_to(ROLE / "files")) for p in _patch_files()}
    assert shipped == set(pinned), "a patch file is unpinned, or a pin has no file"
    for rel, sha in pinned.items():
        assert re.fullmatch(r"[0-9a-f]{64}", sha)
        assert hashlib.sha256((ROLE / "files" / rel).read_bytes()).hexdigest() == sha, rel


def test_patch_series_match_their_directory(role_vars):
    for series, files in role_vars["patched_qemu_patches"].items():
        assert re.fullmatch(r"\d+\.\d+", series)
        for entry in files:
            assert entry["file"].startswith(f"patches/{series}/"), entry


@pytest.mark.parametrize("patch", _patch_files(), ids=lambda p: p.parent.name)
def test_patch_adds_the_upstream_guard(patch):
    """The patch adds the upstream check with, word for word, the collection's message."""
    text = patch.read_text()
    added = [line[1:] for line in text.splitlines() if line.startswith("+") and not line.startswith("+++")]
    literals = re.findall(r'"((?:[^"\\]|\\.)*)"', "\n".join(added))
    assert UPSTREAM_REFUSAL in "".join(literals)
    assert any("kvm_hwpoisoned_mem()" in line and line.strip().startswith("if (") for line in added)
    assert any(line.strip() == "bool kvm_hwpoisoned_mem(void)" for line in added)
    touched = set(re.findall(r"^\+\+\+ b/(\S+)", text, re.M))
    assert touched == {"accel/kvm/kvm-all.c", "accel/stubs/kvm-stub.c", "include/sysemu/kvm.h",
                       "migration/migration.c"}
    # only additions: the backport removes nothing from the distro source
    assert not [line for line in text.splitlines() if line.startswith("-") and not line.startswith("---")]
    assert re.search(r"^Origin: upstream, .*06152b89", text, re.M)


def test_known_sources_are_pinned_by_dsc_sha256(role_vars):
    series = set(role_vars["patched_qemu_patches"])
    for version, entry in role_vars["patched_qemu_known_sources"].items():
        assert re.fullmatch(r"[0-9a-f]{64}", entry["dsc_sha256"]), version
        # only versions of a series the role has a patch for
        assert re.match(r"^(?:\d+:)?(\d+\.\d+)", version).group(1) in series, version


@pytest.mark.skipif(shutil.which("dpkg") is None, reason="dpkg is not installed (not a Debian machine)")
def test_package_depends_range_covers_binnmus_only():
    """The package Depends on qemu-system-x86 (>= SRC), (<< SRC.1~) (templates/deb/control.j2):
    the same source's binNMU (+b3, what Debian 12 ships) is inside, the next upload is not."""
    control = (ROLE / "templates" / "deb" / "control.j2").read_text()
    assert "(>= {{ patched_qemu__build.source_version }})" in control
    assert "(<< {{ patched_qemu__build.source_version }}.1~)" in control
    src = "1:7.2+dfsg-7+deb12u18"

    def compare(a, op, b):
        return subprocess.run(["dpkg", "--compare-versions", a, op, b], check=False).returncode == 0

    for inside in (src, src + "+b3", src + "+b12"):
        assert compare(inside, "ge", src) and compare(inside, "lt", src + ".1~"), inside
    for outside in ("1:7.2+dfsg-7+deb12u19", "1:7.2+dfsg-7+deb12u18.1", "1:7.2+dfsg-8", "1:8.2+dfsg-1"):
        assert not compare(outside, "lt", src + ".1~"), outside
    assert compare("1:7.2+dfsg-7+deb12u17+b1", "lt", src)
    # and the patched package's own version sorts after the source it was built from
    assert compare(src + "+poisonguard1", "gt", src + "+b3")
