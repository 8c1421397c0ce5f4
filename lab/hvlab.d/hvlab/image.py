# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The lab's images: the base image (mmdebstrap of the machine's own Debian sources, piped into
`docker import`) and the hypervisor image on top of it, named by the hash of their inputs."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from .config import (
    BASE_REPOSITORY,
    BUILD_DIR,
    BUILD_FORMAT,
    CONTEXT_DIR,
    IMAGE_CONTEXT_DIR,
    IMAGE_LATEST,
    IMAGE_REPOSITORY,
    INPUTS_LABEL,
    SUITE,
)
from .errors import LabError
from .system import ensure_packages, log, read_json, run, tail
from .dockerd import docker, docker_cli, docker_data_root


def image_known_offline(reference: str) -> bool:
    """Whether dockerd has this image tag, read from its on-disk tag store (no daemon needed)."""
    repository = reference.rsplit(":", 1)[0]
    for store in (docker_data_root() / "image").glob("*/repositories.json"):
        tags = (read_json(store) or {}).get("Repositories", {}).get(repository, {})
        if reference in tags:
            return True
    return False


def base_packages() -> list[str]:
    packages = []
    for line in (CONTEXT_DIR / "base-packages.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            packages.append(line)
    return packages


MMDEBSTRAP_OPTIONS = [
    "--variant=apt",
    "--format=tar",
    "--aptopt=Apt::Install-Recommends \"false\"",
    "--dpkgopt=path-exclude=/usr/share/man/*",
    "--dpkgopt=path-exclude=/usr/share/doc/*",
    "--dpkgopt=path-include=/usr/share/doc/*/copyright",
    "--dpkgopt=path-exclude=/usr/share/locale/*",
    "--customize-hook=rm -rf \"$1\"/var/lib/apt/lists/* \"$1\"/var/cache/apt/*.bin",
]


def image_hashes() -> tuple[str, str]:
    """(base hash, hypervisor hash): sha256 over every input of each image build."""
    base = hashlib.sha256()
    base.update(f"format {BUILD_FORMAT}\nsuite {SUITE}\n".encode())
    base.update("\n".join(MMDEBSTRAP_OPTIONS + base_packages()).encode())
    base_hash = base.hexdigest()
    image = hashlib.sha256(f"format {BUILD_FORMAT}\nbase {base_hash}\n".encode())
    for path in sorted(IMAGE_CONTEXT_DIR.iterdir()) + [CONTEXT_DIR / "tick.S"]:
        image.update(f"{path.name} {path.stat().st_mode & 0o777:o}\n".encode())
        image.update(path.read_bytes())
    return base_hash, image.hexdigest()


def image_names() -> tuple[str, str, str]:
    base_hash, image_hash = image_hashes()
    return f"{BASE_REPOSITORY}:{base_hash[:12]}", f"{IMAGE_REPOSITORY}:{image_hash[:12]}", image_hash


def parse_apt_sources(files: dict[str, str], suite: str) -> str:
    """deb822 text with the machine's own apt sources for suite (and suite-updates etc.).

    files: path -> content of sources.list / *.list (one-line format) and *.sources (deb822)."""
    stanzas = []
    for path, text in sorted(files.items()):
        if path.endswith(".sources"):
            for block in re.split(r"\n\s*\n", text):
                fields, key = {}, None
                for line in block.splitlines():
                    if not line.strip() or line.lstrip().startswith("#"):
                        continue
                    if line[0].isspace() and key:
                        fields[key] += "\n" + line
                        continue
                    key, _colon, value = line.partition(":")
                    key = key.strip()
                    fields[key] = value.strip()
                if fields.get("Enabled", "yes").lower() == "no":
                    continue
                if "deb" not in fields.get("Types", "").split():
                    continue
                suites = [s for s in fields.get("Suites", "").split() if s.split("-")[0] == suite]
                if not suites or not fields.get("URIs"):
                    continue
                fields["Types"] = "deb"
                fields["Suites"] = " ".join(suites)
                stanzas.append("\n".join(f"{k}: {v}" for k, v in fields.items()))
        else:
            for line in text.splitlines():
                line = line.split("#", 1)[0].strip()
                match = re.match(r"^deb\s+(?:\[([^\]]*)\]\s+)?(\S+)\s+(\S+)\s+(.*)$", line)
                if not match or match.group(3).split("-")[0] != suite:
                    continue
                fields = {"Types": "deb", "URIs": match.group(2), "Suites": match.group(3),
                          "Components": match.group(4).strip()}
                for option in (match.group(1) or "").split():
                    name, _equals, value = option.partition("=")
                    name = {"arch": "Architectures", "signed-by": "Signed-By", "trusted": "Trusted",
                            "lang": "Languages"}.get(name.lower(), name)
                    fields[name] = value.replace(",", " ")
                stanzas.append("\n".join(f"{k}: {v}" for k, v in fields.items()))
    return "\n\n".join(stanzas) + ("\n" if stanzas else "")


def machine_apt_sources() -> str:
    override = os.environ.get("HVLAB_APT_SOURCES")
    if override:
        return Path(override).read_text()
    files = {}
    candidates = [Path("/etc/apt/sources.list")] + sorted(Path("/etc/apt/sources.list.d").glob("*.list")) \
        + sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))
    for path in candidates:
        with contextlib.suppress(OSError):
            files[str(path)] = path.read_text()
    text = parse_apt_sources(files, SUITE)
    if not text:
        raise LabError(f"this machine's apt configuration has no source for Debian {SUITE}, "
                       "which the lab image is built from",
                       f"add a {SUITE} entry to /etc/apt/sources.list.d/, or point "
                       "HVLAB_APT_SOURCES at a deb822 .sources file for it")
    return text


def image_exists(reference: str, inputs_hash: str | None = None) -> bool:
    result = docker("image", "inspect", "--format", "{{json .Config.Labels}}", reference, check=False)
    if result.returncode != 0:
        return False
    if inputs_hash is None:
        return True
    labels = json.loads(result.stdout or "null") or {}
    return labels.get(INPUTS_LABEL) == inputs_hash


def build_base_image(base_ref: str) -> None:
    ensure_packages({"mmdebstrap": "mmdebstrap"})
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    sources = BUILD_DIR / "apt.sources"
    sources.write_text(machine_apt_sources())
    log_path = BUILD_DIR / f"base-{base_ref.rsplit(':', 1)[1]}.log"
    log(f"building {base_ref} with mmdebstrap ({len(base_packages())} packages; log {log_path})")
    started = time.monotonic()
    argv = ["mmdebstrap", *MMDEBSTRAP_OPTIONS, "--include=" + ",".join(base_packages()),
            SUITE, "-", str(sources)]
    with open(log_path, "wb") as log_file:
        builder = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log_file)
        importer = subprocess.Popen(
            [docker_cli(), "import", "--change", f"LABEL {INPUTS_LABEL}={base_ref.rsplit(':', 1)[1]}",
             "-", base_ref], stdin=builder.stdout, stdout=subprocess.PIPE, stderr=log_file)
        builder.stdout.close()
        importer.communicate()
        builder.wait()
    if builder.returncode != 0 or importer.returncode != 0:
        with contextlib.suppress(LabError):
            docker("image", "rm", base_ref, check=False)
        raise LabError(f"building the base image failed (mmdebstrap exit {builder.returncode}, "
                       f"docker import exit {importer.returncode}): {tail(log_path)}",
                       f"see {log_path}; check that this machine reaches its Debian mirror")
    log(f"built {base_ref} in {time.monotonic() - started:.1f} s")


def assemble_guest_disk(destination: Path) -> None:
    """tick.S -> 512-byte boot sector -> 1 MiB raw disk image."""
    with tempfile.TemporaryDirectory(dir=BUILD_DIR) as scratch:
        obj, binary = Path(scratch, "tick.o"), Path(scratch, "tick.bin")
        run(["as", "--32", "-o", obj, CONTEXT_DIR / "tick.S"], what="as (tick.S)")
        run(["ld", "-m", "elf_i386", "-Ttext", "0x7c00", "--oformat", "binary", "-o", binary, obj],
            what="ld (tick.S)")
        sector = binary.read_bytes()
    if len(sector) != 512 or sector[510:] != b"\x55\xaa":
        raise LabError(f"tick.S assembled to {len(sector)} bytes without a boot signature at the end",
                       "tick.S must assemble to exactly one 512-byte sector ending in 0xaa55")
    destination.write_bytes(sector + bytes(1024 * 1024 - len(sector)))


def build_hypervisor_image(base_ref: str, image_ref: str, image_hash: str) -> None:
    ensure_packages({"as": "binutils", "ld": "binutils"})
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    log_path = BUILD_DIR / f"image-{image_ref.rsplit(':', 1)[1]}.log"
    started = time.monotonic()
    with tempfile.TemporaryDirectory(dir=BUILD_DIR, prefix="context-") as context:
        for path in IMAGE_CONTEXT_DIR.iterdir():
            shutil.copy2(path, context)
        assemble_guest_disk(Path(context, "tick.img"))
        result = docker("build", "--build-arg", f"HVLAB_BASE={base_ref}",
                        "--label", f"{INPUTS_LABEL}={image_hash}", "-t", image_ref, context,
                        check=False, timeout=900, env=dict(os.environ, DOCKER_BUILDKIT="0"))
    log_path.write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        raise LabError(f"building {image_ref} failed: {tail(log_path)}", f"see {log_path}")
    log(f"built {image_ref} in {time.monotonic() - started:.1f} s")


def remove_old_images(keep: set[str]) -> None:
    """Drop earlier builds (other tags) that no container uses; ignore those still in use."""
    for repository in (IMAGE_REPOSITORY, BASE_REPOSITORY):
        result = docker("image", "ls", "--format", "{{.Repository}}:{{.Tag}}", repository, check=False)
        for reference in result.stdout.split():
            if reference not in keep and not reference.endswith(":latest"):
                docker("image", "rm", reference, check=False)


def ensure_image() -> str:
    """Build the images whose inputs changed, reuse the others; return the hypervisor image."""
    base_ref, image_ref, image_hash = image_names()
    if image_exists(image_ref, image_hash):
        log(f"reusing {image_ref}")
    else:
        if image_exists(base_ref):
            log(f"reusing {base_ref}")
        else:
            build_base_image(base_ref)
        build_hypervisor_image(base_ref, image_ref, image_hash)
        remove_old_images({base_ref, image_ref})
    docker("tag", image_ref, IMAGE_LATEST)
    return image_ref
