# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The execution environment (EE) definition and the collection's EE metadata.

What runs here is real: ``ansible-galaxy collection build`` makes the artifact,
``ansible-builder create`` (v3) turns execution-environment.yml into a build context, and the
two build stages that need no container are replayed from that context exactly as its
Containerfile runs them: the galaxy stage's ``ansible-galaxy collection install -r
requirements.yml`` and the builder stage's ``introspect.py introspect`` (the script
ansible-builder copies into the context). Building the image itself needs the EE base image
from a container registry, which this machine cannot reach (docs/awx.md says how to build it).
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

REPO_ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
COLLECTION_PREFIX = "ansible_collections.kvm_ras.poison_guard."
ARTIFACT_NAME = "kvm_ras-poison_guard.tar.gz"

# Packages that must never be collection requirements (certification rules) and the
# development tools ansible-builder would drop silently: listing them is a mistake.
FORBIDDEN_REQUIREMENTS = {
    "ansible", "ansible-core", "ansible-base", "ansible-lint", "molecule", "pytest", "tox",
    "ansible-builder", "ansible-runner", "pytest-testinfra", "antsibull-changelog",
}


def _tool(name):
    path = VENV_BIN / name
    return str(path) if path.exists() else shutil.which(name)


def _load_yaml(path):
    return yaml.safe_load(Path(path).read_text(encoding="utf-8"))


def _requirement_lines(path):
    lines = []
    for raw in Path(path).read_text(encoding="utf-8").splitlines():
        line = re.sub(r"(^|\s)#.*$", "", raw).strip()
        if line:
            lines.append(line)
    return lines


@pytest.fixture(scope="module")
def collection_meta():
    return _load_yaml(REPO_ROOT / "meta" / "execution-environment.yml")


@pytest.fixture(scope="module")
def ee_definition():
    return _load_yaml(REPO_ROOT / "execution-environment.yml")


# --------------------------------------------------------------------------------------------
# meta/execution-environment.yml and the requirement files
# --------------------------------------------------------------------------------------------

def test_collection_metadata_names_its_own_files(collection_meta):
    assert collection_meta["version"] == 1
    deps = collection_meta["dependencies"]
    assert set(deps) == {"python", "system"}, "declare both files so builder never falls back to root files"
    for kind in ("python", "system"):
        rel = deps[kind]
        assert not os.path.isabs(rel), f"{kind}: collections must use paths relative to their root"
        assert (REPO_ROOT / rel).is_file(), f"{kind}: {rel} does not exist"


def test_python_requirements_follow_certification_rules(collection_meta):
    for line in _requirement_lines(REPO_ROOT / collection_meta["dependencies"]["python"]):
        assert not line.startswith(("-", "git+", "http:", "https:")), f"{line!r}: plain requirements only"
        req = Requirement(line)
        name = canonicalize_name(req.name)
        assert name not in FORBIDDEN_REQUIREMENTS, f"{line!r}: not allowed in EE requirements"
        for spec in req.specifier:
            assert spec.operator in (">=", ">", "!="), (
                f"{line!r}: {spec} pins or caps the version; certification allows lower bounds only")


def test_system_requirements_resolve_with_bindep(collection_meta):
    """bindep parses the file and resolves it for this Debian host (platform:dpkg)."""
    bindep_file = REPO_ROOT / collection_meta["dependencies"]["system"]
    assert _requirement_lines(bindep_file), "the SSH client at least is needed"
    out = subprocess.run([_tool("bindep"), "-f", str(bindep_file), "-l", "newline"],
                         capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert "openssh-client" in out.stdout.split(), out.stdout


def _imports_of(path):
    """(module name, guarded) for every import in a Python file.

    ``guarded`` is true for an import inside ``try: ... except ImportError`` (an optional
    dependency the plugin reports itself when missing).
    """
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    guarded_nodes = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try):
            names = []
            for handler in node.handlers:
                htype = handler.type
                if htype is None:
                    names.append("")
                elif isinstance(htype, ast.Tuple):
                    names.extend(getattr(e, "id", "") for e in htype.elts)
                else:
                    names.append(getattr(htype, "id", ""))
            if any(n in ("ImportError", "ModuleNotFoundError", "Exception", "") for n in names):
                for stmt in node.body:
                    for sub in ast.walk(stmt):
                        guarded_nodes.add(id(sub))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((alias.name, id(node) in guarded_nodes) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.startswith(COLLECTION_PREFIX):
                # "from ...plugins.module_utils import gate" imports the submodule gate
                found.extend((f"{node.module}.{alias.name}", id(node) in guarded_nodes)
                             for alias in node.names)
            found.append((node.module, id(node) in guarded_nodes))
    return found


def _collection_file(root, module):
    rel = module[len(COLLECTION_PREFIX):].split(".")
    base = root.joinpath(*rel)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def controller_side_third_party_imports(root=REPO_ROOT):
    """Top-level third-party imports reachable from the collection's controller-side code.

    Controller side: every plugin type except modules (action, filter, lookup, callback,
    inventory, ...), followed transitively through the collection's own imports (an action
    plugin importing module_utils or a module's DOCUMENTATION runs that code in the EE).
    """
    plugin_root = root / "plugins"
    queue = [p for p in plugin_root.rglob("*.py")
             if p.relative_to(plugin_root).parts[0] not in ("modules", "module_utils")]
    seen, third_party = set(), {}
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    while queue:
        path = queue.pop()
        if path in seen:
            continue
        seen.add(path)
        for module, guarded in _imports_of(path):
            top = module.split(".")[0]
            if module.startswith(COLLECTION_PREFIX):
                target = _collection_file(root, module)
                if target is not None:
                    queue.append(target)
            elif top in stdlib or top in ("ansible", "ansible_collections") or guarded:
                continue
            else:
                third_party.setdefault(top, set()).add(str(path.relative_to(root)))
    return third_party


def test_controller_side_imports_are_declared(collection_meta):
    declared = {canonicalize_name(Requirement(line).name)
                for line in _requirement_lines(REPO_ROOT / collection_meta["dependencies"]["python"])}
    # ansible-core's own dependencies are in every EE that runs ansible-core.
    core_deps = {canonicalize_name(Requirement(r).name)
                 for r in importlib.metadata.requires("ansible-core") or []}
    dist_of = importlib.metadata.packages_distributions()
    missing = {}
    for top, users in controller_side_third_party_imports().items():
        dists = {canonicalize_name(d) for d in dist_of.get(top, [top])}
        if not dists & (declared | core_deps):
            missing[top] = sorted(users)
    assert not missing, (
        f"controller-side imports not in meta/ee-requirements.txt: {missing}; add their "
        "distributions there (lower bounds only)")


def test_import_scan_follows_controller_code(tmp_path):
    """The scan on a small tree: action plugin -> module_utils -> a third-party import."""
    files = {
        "plugins/action/act.py": f"import json\nfrom {COLLECTION_PREFIX}plugins.module_utils import helper\n",
        "plugins/module_utils/helper.py": (
            "import requests\ntry:\n    import libvirt\nexcept ImportError:\n    libvirt = None\n"),
        "plugins/module_utils/hv_only.py": "import lxml\n",
        "plugins/modules/mod.py": f"import paramiko\nfrom {COLLECTION_PREFIX}plugins.module_utils import hv_only\n",
        "plugins/filter/flt.py": "from jmespath import search\n",
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text, encoding="utf-8")
    found = controller_side_third_party_imports(tmp_path)
    # requests via the action plugin, jmespath from the filter; libvirt is optional (guarded);
    # paramiko and lxml are only reached from a module (hypervisor side)
    assert found == {"requests": {"plugins/module_utils/helper.py"},
                     "jmespath": {"plugins/filter/flt.py"}}


# --------------------------------------------------------------------------------------------
# execution-environment.yml (ansible-builder v3)
# --------------------------------------------------------------------------------------------

def test_definition_is_v3_with_the_collection_artifact(ee_definition):
    assert ee_definition["version"] == 3
    assert ee_definition["images"]["base_image"]["name"]
    collections = ee_definition["dependencies"]["galaxy"]["collections"]
    assert collections == [{"name": f"collections/{ARTIFACT_NAME}", "type": "file"}]
    files = ee_definition["additional_build_files"]
    assert {"src": f".cache/ee/{ARTIFACT_NAME}", "dest": "collections"} in files
    # python/system dependencies come from the collection metadata, not from here
    assert "python" not in ee_definition["dependencies"]
    assert "system" not in ee_definition["dependencies"]


def test_definition_ansible_core_matches_requires_ansible(ee_definition):
    runtime = _load_yaml(REPO_ROOT / "meta" / "runtime.yml")
    required = SpecifierSet(runtime["requires_ansible"])
    pip_req = Requirement(ee_definition["dependencies"]["ansible_core"]["package_pip"])
    assert canonicalize_name(pip_req.name) == "ansible-core"
    lower = [s.version for s in pip_req.specifier if s.operator == ">="]
    assert lower, "give ansible-core a lower bound"
    assert required.contains(lower[0] + ".0" if lower[0].count(".") == 1 else lower[0]), (
        f"EE installs ansible-core {pip_req.specifier}, meta/runtime.yml requires {required}")
    assert not [s for s in pip_req.specifier if s.operator in ("<", "<=", "==", "~=")]


@pytest.fixture(scope="module")
def build_context(tmp_path_factory, collection_artifact):
    """ansible-builder create, from a copy of the definition and a freshly built artifact
    (``collection_artifact`` of tests/unit/conftest.py)."""
    work = tmp_path_factory.mktemp("ee")
    ee_dir = work / ".cache" / "ee"
    ee_dir.mkdir(parents=True)
    shutil.copy(REPO_ROOT / "execution-environment.yml", work / "execution-environment.yml")
    shutil.copy(collection_artifact, ee_dir / ARTIFACT_NAME)
    create = subprocess.run(
        [_tool("ansible-builder"), "create", "-f", "execution-environment.yml", "-c", "context",
         "--output-filename", "Containerfile", "-v3"],
        cwd=work, capture_output=True, text=True, check=False)
    assert create.returncode == 0, create.stdout + create.stderr
    assert "No matches for" not in create.stdout + create.stderr, create.stdout + create.stderr
    return work / "context"


def _run_lines(containerfile):
    return [line[4:] for line in containerfile.splitlines() if line.startswith("RUN ")]


def test_build_context_layout(build_context):
    containerfile = (build_context / "Containerfile").read_text(encoding="utf-8")
    assert containerfile.startswith('ARG EE_BASE_IMAGE="')
    assert "FROM $EE_BASE_IMAGE AS base" in containerfile
    assert "FROM base AS galaxy" in containerfile and "FROM base AS final" in containerfile
    assert 'ARG ANSIBLE_INSTALL_REFS="ansible-core>=2.16 ansible-runner"' in containerfile
    assert "COPY _build /build" in containerfile
    build_dir = build_context / "_build"
    for script in ("introspect.py", "assemble", "install-from-bindep", "check_ansible"):
        assert (build_dir / "scripts" / script).is_file(), script
    requirements = _load_yaml(build_dir / "requirements.yml")
    (entry,) = requirements["collections"]
    assert entry["type"] == "file"
    # the galaxy stage runs in WORKDIR /build, a copy of _build: the path resolves there
    assert (build_dir / entry["name"]).is_file()


def test_artifact_carries_the_ee_metadata(build_context):
    galaxy = _load_yaml(REPO_ROOT / "galaxy.yml")
    with tarfile.open(build_context / "_build" / "collections" / ARTIFACT_NAME) as tar:
        names = set(tar.getnames())
        manifest = json.load(tar.extractfile("MANIFEST.json"))
    info = manifest["collection_info"]
    assert (info["namespace"], info["name"], info["version"]) == (
        galaxy["namespace"], galaxy["name"], galaxy["version"])
    for required in ("meta/execution-environment.yml", "meta/ee-requirements.txt",
                     "meta/ee-bindep.txt", "meta/runtime.yml"):
        assert required in names, f"{required} is missing from the artifact (build_ignore?)"
    assert any(n.startswith("plugins/modules/") for n in names)
    assert not any(n.startswith((".venv/", ".cache/")) for n in names)


@pytest.fixture(scope="module")
def galaxy_stage(build_context, tmp_path_factory):
    """The galaxy stage's collection install, run as the Containerfile runs it."""
    containerfile = (build_context / "Containerfile").read_text(encoding="utf-8")
    (install,) = [r for r in _run_lines(containerfile) if "ansible-galaxy collection install" in r]
    argv = shlex.split(install)
    target = tmp_path_factory.mktemp("ee-collections")
    # A clean environment like the image's: no checkout on the collections path (the test
    # session puts one there), the install target is on it as /usr/share/ansible/collections
    # is in the image.
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update(HOME=str(target), ANSIBLE_COLLECTIONS_PATH=str(target))
    while "=" in argv[0]:
        key, value = argv.pop(0).split("=", 1)
        env[key] = value
    # $ANSIBLE_GALAXY_CLI_COLLECTION_OPTS is empty by default; the image path is replaced by
    # a temporary one.
    argv = [a for a in argv if a != "$ANSIBLE_GALAXY_CLI_COLLECTION_OPTS"]
    assert argv[:3] == ["ansible-galaxy", "collection", "install"], argv
    argv[0] = _tool("ansible-galaxy")
    argv[argv.index("--collections-path") + 1] = str(target)
    run = subprocess.run(argv, cwd=build_context / "_build", env=env, capture_output=True,
                         text=True, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    return target


def test_galaxy_stage_installs_a_usable_collection(galaxy_stage):
    installed = galaxy_stage / "ansible_collections" / "kvm_ras" / "poison_guard"
    assert (installed / "MANIFEST.json").is_file()
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(galaxy_stage))
    doc = subprocess.run([_tool("ansible-doc"), "--json", "-t", "module",
                          "kvm_ras.poison_guard.migration_gate"],
                         env=env, capture_output=True, text=True, check=False)
    assert doc.returncode == 0, doc.stderr
    (entry,) = json.loads(doc.stdout).values()
    assert entry["doc"]["collection"] == "kvm_ras.poison_guard"
    assert str(installed) in entry["doc"]["filename"], "resolved from the installed artifact"


def test_builder_stage_introspection(build_context, galaxy_stage, collection_meta, tmp_path):
    """introspect.py (the builder stage) finds exactly the collection's declared dependencies."""
    containerfile = (build_context / "Containerfile").read_text(encoding="utf-8")
    assert any("/output/scripts/introspect.py introspect" in r for r in _run_lines(containerfile))
    pip_out, bindep_out = tmp_path / "requirements.txt", tmp_path / "bindep.txt"
    run = subprocess.run(
        [sys.executable, str(build_context / "_build" / "scripts" / "introspect.py"), "introspect",
         str(galaxy_stage), "--write-pip", str(pip_out), "--write-bindep", str(bindep_out)],
        capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    data = yaml.safe_load(run.stdout.split("---", 1)[1])
    suffix = "  # from collection kvm_ras.poison_guard"
    expected_py = [line + suffix for line in
                   _requirement_lines(REPO_ROOT / collection_meta["dependencies"]["python"])]
    expected_sys = [line + suffix for line in
                    _requirement_lines(REPO_ROOT / collection_meta["dependencies"]["system"])]
    assert data["python"] == expected_py
    assert data["system"] == expected_sys
    # what the final stage's install-from-bindep would resolve for this platform family
    resolved = subprocess.run([_tool("bindep"), "-f", str(bindep_out), "-l", "newline"],
                              capture_output=True, text=True, check=False)
    assert resolved.returncode == 0, resolved.stderr
    assert "openssh-client" in resolved.stdout.split()
