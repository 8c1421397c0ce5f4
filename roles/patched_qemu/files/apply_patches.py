# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Apply a patch series to an unpacked source tree, in order, each only if it applies cleanly.

usage: apply_patches.py SOURCE_DIR PATCH [PATCH ...]

A series builds on itself (a later patch's context contains what an earlier one added), so
each patch is tried (``patch --dry-run``) on the tree as the patches before it left it, and
applied only when patch reports no failed hunk, no fuzz, no offset and no reversed patch:
an exact fit. The first patch that does not fit stops the run; nothing after it is tried.

Prints JSON: {"applied": [names], "failed": null | {"patch", "rc", "output"}}; exit status 0
when every patch was applied, 1 otherwise. The tree is scratch: a failed run leaves the
patches before the failed one applied.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

NOT_EXACT = re.compile(r"(?i)fuzz|offset|hunk .* failed|reversed")


def _patch(source_dir: str, patch: str, dry_run: bool) -> subprocess.CompletedProcess:
    argv = ["patch", "-p1", "--forward", "--batch", f"--input={patch}"]
    if dry_run:
        argv.insert(3, "--dry-run")
    return subprocess.run(argv, cwd=source_dir, capture_output=True, text=True, check=False,
                          env={"LC_ALL": "C", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})


def apply_series(source_dir: str, patches: list[str]) -> dict:
    applied: list[str] = []
    for patch in patches:
        name = os.path.basename(patch)
        trial = _patch(source_dir, patch, dry_run=True)
        output = (trial.stdout + trial.stderr).strip()
        if trial.returncode != 0 or NOT_EXACT.search(output):
            return {"applied": applied, "failed": {"patch": name, "rc": trial.returncode, "output": output}}
        done = _patch(source_dir, patch, dry_run=False)
        if done.returncode != 0:
            return {"applied": applied, "failed": {"patch": name, "rc": done.returncode,
                                                   "output": (done.stdout + done.stderr).strip()}}
        applied.append(name)
    return {"applied": applied, "failed": None}


def main(argv: list[str]) -> int:
    if len(argv) < 3 or not os.path.isdir(argv[1]):
        sys.stderr.write(__doc__.split("\n\n")[1] + "\n")
        return 2
    result = apply_series(argv[1], argv[2:])
    print(json.dumps(result))
    return 0 if result["failed"] is None else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
