# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Modules run on the hypervisors: they import on-host code only, and every module that
connects to libvirt does it through module_utils/libvirt.py with the one option name ``uri``
(doc fragment kvm_ras.poison_guard.libvirt)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

MODULES = Path(__file__).resolve().parents[4] / "plugins" / "modules"
ADAPTER = "ansible_collections.kvm_ras.poison_guard.plugins.module_utils.libvirt"


def imports(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names += ["%s.%s" % (node.module, alias.name) for alias in node.names]
    return names


def documentation(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "DOCUMENTATION":
            return yaml.safe_load(node.value.value)
    raise AssertionError("%s has no DOCUMENTATION" % path.name)


@pytest.mark.parametrize("path", sorted(MODULES.glob("*.py")), ids=lambda p: p.name)
def test_a_module_imports_no_controller_code_and_no_libvirt_of_its_own(path):
    names = imports(path)
    assert not [n for n in names if ".module_utils.evacuation" in n or "plugin_utils" in n], names
    assert "libvirt" not in names, "import libvirt through %s" % ADAPTER


def test_every_module_that_connects_to_libvirt_names_its_connection_uri():
    connecting = [p for p in sorted(MODULES.glob("*.py")) if "libvirt_adapter.binding()" in p.read_text(encoding="utf-8")]
    assert {p.stem for p in connecting} == {"host_capacity_info", "guest_power", "cold_migrate", "live_migrate",
                                            "evacuation_journal", "migration_preflight"}
    for path in connecting:
        doc = documentation(path)
        fragments = doc["extends_documentation_fragment"]
        assert len({"kvm_ras.poison_guard.libvirt", "kvm_ras.poison_guard.libvirt.SOURCE"} & set(fragments)) == 1, path
        assert not {"uri", "libvirt_uri", "source_uri"} & set(doc["options"]), path
        assert "libvirt_adapter.uri_argument(" in path.read_text(encoding="utf-8"), path


PLUGINS = MODULES.parent


@pytest.mark.parametrize("path", sorted((PLUGINS / "module_utils").rglob("*.py")), ids=lambda p: p.name)
def test_on_host_code_imports_no_controller_code(path):
    """module_utils is shipped to the hypervisors: it never reaches into plugin_utils or action."""
    names = imports(path)
    assert not [n for n in names if n.startswith("ansible_collections.")
                and (".plugin_utils" in n or ".plugins.action" in n)], names


def test_the_evacuation_rules_live_on_the_controller_only():
    assert not (PLUGINS / "module_utils" / "evacuation.py").exists()
    assert {"evacuation_request.py", "evacuation_plan.py", "evacuation_report.py"} <= {
        p.name for p in (PLUGINS / "plugin_utils").glob("*.py")}


@pytest.mark.parametrize("path", sorted((PLUGINS / "action").glob("*.py")), ids=lambda p: p.name)
def test_an_action_plugin_imports_no_other_action_plugin(path):
    names = imports(path)
    assert not [n for n in names if n.startswith("ansible_collections.") and ".plugins.action" in n], names


def test_the_old_host_capacity_name_still_runs_host_capacity_info_with_a_deprecation():
    """host_capacity is read-only, so it is host_capacity_info; meta/runtime.yml keeps the old
    name working (redirect) for one release, with a deprecation that says the new name."""
    assert not (MODULES / "host_capacity.py").exists()
    routing = yaml.safe_load((PLUGINS.parent / "meta" / "runtime.yml").read_text(encoding="utf-8"))
    old = routing["plugin_routing"]["modules"]["host_capacity"]
    assert old["redirect"] == "kvm_ras.poison_guard.host_capacity_info"
    assert old["deprecation"]["removal_version"] == "0.2.0"
    # Ansible's own plugin loader, in a process of its own (it installs a global import hook),
    # over the collections root tests/conftest.py put first (tools/collection-link).
    probe = (
        "import json, os, sys\n"
        "from ansible.plugins.loader import init_plugin_loader, module_loader\n"
        "init_plugin_loader(os.environ['ANSIBLE_COLLECTIONS_PATH'].split(os.pathsep)[:1])\n"
        "found = module_loader.find_plugin_with_context('kvm_ras.poison_guard.host_capacity')\n"
        "print(json.dumps([found.resolved, found.resolved_fqcn, found.plugin_resolved_path, found.deprecated,\n"
        "                  found.removal_version, found.deprecation_warnings]))\n")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=False, timeout=120)
    assert proc.returncode == 0, proc.stderr
    resolved, fqcn, path, deprecated, removal, warnings = json.loads(proc.stdout.splitlines()[-1])
    assert resolved and fqcn == "kvm_ras.poison_guard.host_capacity_info"
    assert Path(path).name == "host_capacity_info.py"
    assert deprecated and removal == "0.2.0"
    assert "kvm_ras.poison_guard.host_capacity_info" in " ".join(warnings)
