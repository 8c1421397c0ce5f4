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


GUARD_PATCHES = [p for p in _patch_files() if p.name.startswith("0001-")]
SERIES_72 = ["0002-linux-headers-add-UFFDIO_POISON-and-UFFD_FEATURE_POISON.patch",
             "0003-util-userfaultfd-add-uffd_poison_page.patch",
             "0004-kvm-query-the-hardware-poison-list-x-query-hwpoison.patch",
             "0005-migration-add-x-poison-holes.patch"]


def _added(text: str) -> list[str]:
    return [line[1:] for line in text.splitlines() if line.startswith("+") and not line.startswith("+++")]


@pytest.mark.parametrize("patch", GUARD_PATCHES, ids=lambda p: p.parent.name)
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


def test_every_series_starts_with_the_guard(role_vars):
    assert GUARD_PATCHES and all(p.parent.name in role_vars["patched_qemu_patches"] for p in GUARD_PATCHES)
    for series, files in role_vars["patched_qemu_patches"].items():
        assert files[0]["file"].split("/")[-1].startswith("0001-migration-prevent-migration"), series


def test_72_carries_the_poison_holes_series_in_order(role_vars):
    """The x-poison-holes series comes after the guard, in the order its patches build on each
    other (the role applies them in list order), each a git format-patch mail with a sign-off."""
    names = [entry["file"].split("/")[-1] for entry in role_vars["patched_qemu_patches"]["7.2"]]
    assert names[1:] == SERIES_72
    for number, name in enumerate(SERIES_72, start=1):
        text = (ROLE / "files" / "patches" / "7.2" / name).read_text()
        assert re.search(rf"^Subject: \[PATCH {number}/4\] ", text, re.M), name
        assert re.search(r"^Signed-off-by: .+ <.+>$", text, re.M), name
    cover = (ROLE / "files" / "patches" / "7.2" / "x-poison-holes-cover-letter.txt").read_text()
    assert re.search(r"^Subject: \[PATCH 0/4\] migration: ", cover, re.M)
    for number, name in enumerate(SERIES_72, start=1):  # the cover letter's shortlog names every patch
        subject = re.search(r"^Subject: \[PATCH \d/4\] (.+)$", (ROLE / "files" / "patches" / "7.2" / name).read_text(),
                            re.M).group(1)
        assert subject.split(",")[0][:40] in " ".join(cover.split()), subject


def test_poison_holes_series_keeps_the_guard_and_adds_the_capability():
    """What the series promises, read from its added lines: the guard still refuses without the
    capability (its message untouched), the capability and its QMP command exist, a hole is
    never read, and the destination installs it with UFFDIO_POISON."""
    texts = {name: (ROLE / "files" / "patches" / "7.2" / name).read_text() for name in SERIES_72}
    migration = _added(texts[SERIES_72[3]])
    assert any(line.strip() == "if (kvm_hwpoisoned_mem() && !migrate_poison_holes()) {" for line in migration)
    assert not any(UPSTREAM_REFUSAL[:30] in line for line in texts[SERIES_72[3]].splitlines()
                   if line.startswith("-") and not line.startswith("---"))
    assert any("{ 'name': 'x-poison-holes', 'features': [ 'unstable' ] }" in line for line in migration)
    assert any("#define RAM_SAVE_FLAG_POISON" in line for line in migration)
    assert any("uffd_poison_page(" in line for line in migration)
    assert any("case MIGRATION_CAPABILITY_X_POISON_HOLES:" in line for line in migration)  # validated capability
    # the hole check comes before anything that reads the page
    hunk = texts[SERIES_72[3]]
    assert hunk.index("+    if (save_poison_hole(rs, block, offset, &res)) {") < hunk.index(" if (control_save_page(rs, block")
    kvm = _added(texts[SERIES_72[2]])
    assert any("{ 'command': 'x-query-hwpoison'," in line for line in kvm)
    assert any(line.strip() == "bool kvm_hwpoisoned_range(ram_addr_t start, ram_addr_t length)" for line in kvm)
    headers = _added(texts[SERIES_72[0]])
    assert any(line.startswith("#define UFFD_FEATURE_POISON") and "(1<<14)" in line for line in headers)


def test_known_sources_are_pinned_by_dsc_sha256(role_vars):
    series = set(role_vars["patched_qemu_patches"])
    for version, entry in role_vars["patched_qemu_known_sources"].items():
        assert re.fullmatch(r"[0-9a-f]{64}", entry["dsc_sha256"]), version
        # only versions of a series the role has a patch for
        assert re.match(r"^(?:\d+:)?(\d+\.\d+)", version).group(1) in series, version


@pytest.mark.skipif(shutil.which("dpkg") is None, reason="dpkg is not installed (not a Debian machine)")
def test_package_depends_on_exactly_the_stock_build_it_loads_modules_of():
    """The patched binary loads qemu-system-common's modules, which carry the stamp
    sha1(version, "Debian <binary version>", configure): the package depends on exactly the stock
    binary version it was built for (binNMU suffix included, e.g. Debian 12's +b3), and its own
    version sorts after that stock version and before the next upload of the source."""
    control = (ROLE / "templates" / "deb" / "control.j2").read_text()
    assert "{{ patched_qemu_stock_package }} (= {{ patched_qemu__build.stock_version }})" in control
    assert "{{ patched_qemu_common_package }} (= {{ patched_qemu__build.stock_version }})" in control
    stock = "1:7.2+dfsg-7+deb12u18+b3"

    def compare(a, op, b):
        return subprocess.run(["dpkg", "--compare-versions", a, op, b], check=False).returncode == 0

    ours = stock + "+poisonguard1"
    assert compare(ours, "gt", stock)
    assert compare(ours, "lt", "1:7.2+dfsg-7+deb12u18+b4")
    assert compare(ours, "lt", "1:7.2+dfsg-7+deb12u19")
    assert compare(stock + "+poisonguard2", "gt", ours)


def test_parity_cannot_be_switched_off(defaults):
    """Feature parity is required: no option turns it into a warning (validate.yml refuses the
    old variables when they are set to false)."""
    assert "patched_qemu_require_feature_parity" not in defaults
    assert "patched_qemu_verify_features" not in defaults
    validate = (ROLE / "tasks" / "validate.yml").read_text()
    assert "patched_qemu_require_feature_parity | default(true) | bool" in validate
    for tasks, what in (("compile.yml", "patched_qemu__build_parity.identical"),
                        ("install.yml", "patched_qemu__preflight.identical"),
                        ("checks.yml", "patched_qemu__parity.identical")):
        text = (ROLE / "tasks" / tasks).read_text()
        assert f"that: {what}" in text, tasks
        assert "ansible.builtin.assert" in text


def test_configure_comes_from_debian_rules(defaults, role_vars):
    """No hand-picked feature list: the configure arguments are debian/rules' own, extra ones
    are empty by default, and the arguments the role sets itself cannot be overridden."""
    assert defaults["patched_qemu_configure_args"] == []
    for reserved in ("--target-list", "--with-pkgversion", "--enable-modules", "--prefix", "--libdir"):
        assert reserved in role_vars["patched_qemu_reserved_configure_args"]
    compile_tasks = (ROLE / "tasks" / "compile.yml").read_text()
    assert "debian_build_config.py', 'configure'" in compile_tasks
    assert "argv: \"{{ ['../configure'] + patched_qemu__debian_config.args }}\"" in compile_tasks


def test_generated_headers_are_built_before_the_binary():
    """With --enable-modules, QEMU 7.2's qemu-system-x86_64 target compiles objects of module
    libraries (ui/dbus-chardev.c for the module info) without an order dependency on their
    generated headers: a build of that target alone failed on the builder with
    "ui/dbus-display1.h: No such file or directory" after 738 of 1714 steps. The role generates
    every *.h custom target first, in a separate ninja run."""
    compile_tasks = yaml.safe_load((ROLE / "tasks" / "compile.yml").read_text())
    names = [t["name"] for block in compile_tasks for t in block.get("block", [block])]
    assert names.index("Generate the headers") < names.index("Compile qemu-system-x86_64 (several minutes)")
    text = (ROLE / "tasks" / "compile.yml").read_text()
    assert "select('match', '^[^ ]+[.]h: CUSTOM_COMMAND$')" in text
