# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""OCI runtime in front of runc for hosts whose capability bounding set is incomplete.

`docker run --privileged` asks runc for every capability the kernel knows. On a host whose
own bounding set lacks one of them (seen: CAP_SYS_RESOURCE missing, CapBnd 0x1fffeffffff),
runc fails with "unable to apply caps: operation not permitted". This wrapper rewrites the
process spec before runc reads it:

* `create` / `run`: <bundle>/config.json, key "process";
* `exec`: the file given with --process (containerd-shim passes one per exec);

dropping from every capability set what the bounding set of this process lacks, and lowering
rlimits whose hard value exceeds this process's hard limit (raising one needs
CAP_SYS_RESOURCE too). Then it execs the real runc with the unchanged arguments.

lab/hvlab registers it as dockerd's default runtime only when the bounding set really lacks a
capability; on an ordinary host it is not used.
"""

from __future__ import annotations

import json
import os
import resource
import sys

# Capability numbers of linux/capability.h, index = bit number.
CAPABILITY_NAMES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
    "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW",
    "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
    "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ",
    "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
)
RUNC_CANDIDATES = ("/usr/sbin/runc", "/usr/bin/runc", "/usr/local/sbin/runc", "/usr/local/bin/runc")


def bounding_capabilities() -> set[str]:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("CapBnd:"):
                mask = int(line.split()[1], 16)
                return {name for bit, name in enumerate(CAPABILITY_NAMES) if mask >> bit & 1}
    raise RuntimeError("no CapBnd line in /proc/self/status")


def restrict_process(process: dict) -> None:
    allowed = bounding_capabilities()
    for set_name, names in (process.get("capabilities") or {}).items():
        if isinstance(names, list):
            process["capabilities"][set_name] = [n for n in names if n in allowed]
    for limit in process.get("rlimits") or []:
        resource_id = getattr(resource, str(limit.get("type", "")), None)
        if resource_id is None:
            continue
        own_hard = resource.getrlimit(resource_id)[1]
        if own_hard == resource.RLIM_INFINITY:
            continue
        limit["hard"] = min(int(limit.get("hard", own_hard)), own_hard)
        limit["soft"] = min(int(limit.get("soft", limit["hard"])), limit["hard"])


def rewrite_spec(path: str, key: str | None) -> None:
    try:
        with open(path, encoding="utf-8") as spec_file:
            spec = json.load(spec_file)
    except FileNotFoundError:
        return
    restrict_process(spec.setdefault(key, {}) if key else spec)
    temporary = f"{path}.hvlab-tmp"
    with open(temporary, "w", encoding="utf-8") as spec_file:
        json.dump(spec, spec_file)
    os.replace(temporary, path)


def option_value(args: list[str], names: tuple[str, ...]) -> str | None:
    for index, arg in enumerate(args):
        if arg in names and index + 1 < len(args):
            return args[index + 1]
        for name in names:
            if name.startswith("--") and arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    return None


def real_runc() -> str:
    own = os.path.realpath(__file__)
    path_dirs = os.environ.get("PATH", "").split(os.pathsep)
    for candidate in [os.path.join(d, "runc") for d in path_dirs if d] + list(RUNC_CANDIDATES):
        if os.access(candidate, os.X_OK) and os.path.realpath(candidate) != own:
            return candidate
    sys.exit("runc-bounded: the real runc was not found (install the runc package)")


def main() -> None:
    args = sys.argv[1:]
    command = next((a for a in args if a in ("create", "run", "exec")), None)
    try:
        if command == "exec":
            process_file = option_value(args, ("--process", "-p"))
            if process_file:
                rewrite_spec(process_file, None)
        elif command in ("create", "run"):
            bundle = option_value(args, ("--bundle", "-b")) or "."
            rewrite_spec(os.path.join(bundle, "config.json"), "process")
    except (OSError, ValueError, RuntimeError) as error:
        sys.exit(f"runc-bounded: cannot adapt the OCI spec to this host: {error}")
    runc = real_runc()
    os.execv(runc, [runc] + args)


if __name__ == "__main__":
    main()
