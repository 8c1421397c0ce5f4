# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The hypervisor lab's package lab/hvlab.d/hvlab, without docker: its layers, the command
line (options, error lines, exit codes) through main() and through the entry script lab/hvlab,
and the texts it renders (the static inventory, a test guest's definition).

Nothing here starts the lab: every command used fails its input check before it takes the
lab's lock or calls docker (tests/integration/test_hvlab.py runs the real lab).
"""

from __future__ import annotations

import ast
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE_DIR = REPO / "lab" / "hvlab.d"
if str(PACKAGE_DIR) not in sys.path:
    sys.path.insert(0, str(PACKAGE_DIR))

from hvlab import cli, config, errors, guests, hosts, inventory, network  # noqa: E402  pylint: disable=wrong-import-position

# Each module imports only the modules before it (hvlab/__init__.py describes the layers).
LAYERS = ["config", "errors", "system", "dockerd", "image", "network", "hosts", "inventory", "transport",
          "guests", "commands", "cli"]


def module_imports(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    local, absolute = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            local.add(node.module)
        elif isinstance(node, ast.ImportFrom):
            absolute.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            absolute.update(alias.name.split(".")[0] for alias in node.names)
    return local, absolute


def test_the_package_has_one_module_per_layer_and_no_single_script_left():
    assert not (PACKAGE_DIR / "hvlab.py").exists()
    assert {p.stem for p in (PACKAGE_DIR / "hvlab").glob("*.py")} == set(LAYERS) | {"__init__"}


@pytest.mark.parametrize("name", LAYERS)
def test_a_module_imports_only_the_layers_below_it_and_the_standard_library(name):
    local, absolute = module_imports(PACKAGE_DIR / "hvlab" / (name + ".py"))
    assert local <= set(LAYERS[:LAYERS.index(name)]), local
    assert absolute <= set(sys.stdlib_module_names) | {"__future__"}, absolute


@pytest.fixture(name="signals")
def fixture_signals():
    """main() installs its SIGTERM/SIGHUP handlers; give pytest its own back afterwards."""
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGHUP)}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


@pytest.mark.parametrize("argv, problem, fix", [
    (["up", "--hosts", "9"], "--hosts 9 is out of range: the lab has 1 to 4 hosts (hv1..hv4)",
     "pass --hosts with a number from 1 to 4 (default 2)"),
    (["guests", "create", "--host", "hv9"], "unknown host 'hv9': lab hosts are named hv1..hv4",
     "pass --host with the name of a running lab host (see `lab/hvlab status`)"),
    (["guests", "create", "--host", "hv1", "--count", "17"], "--count 17 is out of range",
     "pass --count from 1 to 16 (call again for more guests)"),
    (["guests", "create", "--host", "hv1", "--prefix", "$(x)"], "--prefix '$(x)' is not a usable guest name prefix",
     "use a letter followed by up to 31 letters, digits, '-' or '_'"),
])
def test_bad_input_is_refused_with_the_problem_the_fix_and_exit_code_2(argv, problem, fix, capsys, signals):
    assert cli.main(argv) == 2
    assert capsys.readouterr().err.splitlines() == ["hvlab: error: " + problem, "hvlab: fix: " + fix]


def test_an_interrupted_command_says_so_and_exits_130(monkeypatch, capsys, signals):
    def interrupted(_args):
        raise errors.Interrupted("interrupted by signal 15")

    monkeypatch.setattr(cli, "cmd_status", interrupted)
    assert cli.main(["status"]) == 130
    assert capsys.readouterr().err == ("hvlab: stopped: interrupted by signal 15; changes of this run were "
                                       "undone\n")


def test_the_entry_script_runs_the_package_cli():
    """lab/hvlab runs hvlab.cli on /usr/bin/python3 -I: same usage, errors and exit codes."""
    helped = subprocess.run([str(REPO / "lab" / "hvlab"), "--help"], capture_output=True, text=True,
                            timeout=60, check=False)
    assert helped.returncode == 0, helped.stderr
    assert helped.stdout.startswith("usage: lab/hvlab [-h] COMMAND ...")
    for command in ("up", "status", "down", "image", "inventory", "guests"):
        assert re.search(r"^    %s\b" % command, helped.stdout, re.M), helped.stdout
    refused = subprocess.run([str(REPO / "lab" / "hvlab"), "up", "--hosts", "0"], capture_output=True,
                             text=True, timeout=60, check=False)
    assert refused.returncode == 2
    assert refused.stderr.startswith("hvlab: error: --hosts 0 is out of range"), refused.stderr
    unknown = subprocess.run([str(REPO / "lab" / "hvlab"), "bogus"], capture_output=True, text=True,
                             timeout=60, check=False)
    assert unknown.returncode == 2 and "invalid choice: 'bogus'" in unknown.stderr


def test_the_static_inventory_is_what_the_lab_writes_for_its_default_hosts():
    """lab/hvlab up refuses to run when lab/inventory/hosts.yml differs from this text."""
    inventory.check_static_inventory()
    text = inventory.render_inventory(config.HOST_NAMES[:config.DEFAULT_HOSTS], "../state/ssh/id_ed25519")
    assert "        hv1:\n          ansible_host: 172.30.10.11\n" in text
    assert "        hv2:\n          ansible_host: 172.30.10.12\n" in text
    assert network.host_ip("hv4") == "172.30.10.14"


def test_host_uuids_are_stable_and_distinct():
    names = config.HOST_NAMES
    assert len({hosts.host_uuid(name) for name in names}) == len(names)
    assert hosts.host_uuid("hv1") == hosts.host_uuid("hv1")


def test_a_guest_definition_names_the_guest_and_the_shared_disk(tmp_path, monkeypatch):
    xml = guests.render_guest("tick-1")
    assert "<name>tick-1</name>" in xml and config.GUEST_DISK in xml and "{{" not in xml
    extra = tmp_path / "guest.xml.j2"
    extra.write_text(config.GUEST_TEMPLATE.read_text() + "<!-- {{ guest_memory }} -->\n")
    monkeypatch.setattr(guests, "GUEST_TEMPLATE", extra)
    with pytest.raises(errors.LabError) as refused:
        guests.render_guest("tick-1")
    assert "placeholders other than guest_name and guest_disk" in refused.value.problem
