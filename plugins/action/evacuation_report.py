# -*- coding: utf-8 -*-
# Copyright (c) kvm_ras.poison_guard contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin of kvm_ras.poison_guard.evacuation_report (documented in
plugins/modules/evacuation_report.py): verification, report files and exit rule of an
evacuation, on the controller, with the rules of plugins/plugin_utils/evacuation_report.py."""

from __future__ import annotations

import json
import os
import time

from ansible.errors import AnsibleActionFail
from ansible.utils.display import Display

from ansible_collections.kvm_ras.poison_guard.plugins.plugin_utils import action_support
from ansible_collections.kvm_ras.poison_guard.plugins.plugin_utils import evacuation_report as rules
from ansible_collections.kvm_ras.poison_guard.plugins.plugin_utils.evacuation_plan import MOVING_ACTIONS
from ansible_collections.kvm_ras.poison_guard.plugins.plugin_utils.evacuation_request import report_dir_problem
from ansible_collections.kvm_ras.poison_guard.plugins.modules.evacuation_report import DOCUMENTATION

display = Display()


def _create_new(path, text):
    """Create ``path`` with ``text``; False when anything (a file, a dangling symlink) is there.

    O_EXCL|O_NOFOLLOW: an existing name, a symlink included, is never opened or followed.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o640)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    return True


def write_files(directory, basename, report, lines):
    """Write <basename>.json and .txt (never overwriting an older report or anything else); return the paths."""
    problem = report_dir_problem(directory)
    if problem:
        raise OSError(problem)
    directory = os.path.abspath(os.path.expanduser(directory))
    os.makedirs(directory, mode=0o750, exist_ok=True)
    if not os.path.isdir(directory):
        raise OSError("%s is not a directory" % directory)
    if "/" in basename or basename in ("", ".", ".."):
        raise OSError("report name %r is not a file name" % basename)
    body = json.dumps(report, indent=2, sort_keys=True, default=str) + "\n"
    text = "\n".join(lines) + "\n"
    for suffix in range(10000):
        stem = os.path.join(directory, basename if suffix == 0 else "%s-%d" % (basename, suffix))
        if os.path.lexists(stem + ".json") or os.path.lexists(stem + ".txt"):
            continue
        if not _create_new(stem + ".json", body):
            continue
        if not _create_new(stem + ".txt", text):
            os.unlink(stem + ".json")
            continue
        return {"json": stem + ".json", "text": stem + ".txt"}
    raise OSError("no free report file name for %s in %s" % (basename, directory))


class ActionModule(action_support.ControllerAction):
    """Verify, report, decide the exit status; writes only the report files on the controller."""

    argument_spec = action_support.argument_spec_from_doc(DOCUMENTATION)

    @staticmethod
    def _from_hostvars(vm_hosts, task_vars):
        """The per-VM results as the deprecated option vm_hosts finds them in hostvars."""
        display.deprecated("the option vm_hosts of kvm_ras.poison_guard.evacuation_report is deprecated: pass "
                           "the per-VM results with vm_results (see playbooks/evacuate_host.yml)",
                           version="1.0.0", collection_name="kvm_ras.poison_guard")
        hostvars = task_vars.get("hostvars") or {}
        found = []
        for host in vm_hosts:
            if host not in hostvars:
                continue
            hvars = hostvars[host]
            entry = hvars.get("evacuation_vm")
            if isinstance(entry, dict) and entry.get("name"):
                found.append(dict(hvars.get("evacuation_vm_results") or {}, name=entry["name"]))
        return found

    @staticmethod
    def _outcomes(plan, vm_results):
        results_by_name = {}
        for entry in vm_results:
            if isinstance(entry, dict) and isinstance(entry.get("name"), str) and entry["name"]:
                results_by_name[entry["name"]] = entry
        outcomes = []
        for vm in plan["vms"]:
            if vm["action"] in MOVING_ACTIONS:
                outcomes.append(rules.vm_outcome(vm, results_by_name.get(vm["name"])))
        return outcomes

    def act(self, args, result, task_vars):
        request, plan, run = args["request"], args["plan"], dict(args["run"])
        states = action_support.by_host(args["states"])
        result["changed"] = False
        result["restore"] = rules.restore_candidates(plan, states)
        if not args["write"]:
            return result

        vm_results = args["vm_results"]
        if not vm_results and args["vm_hosts"]:
            vm_results = self._from_hostvars(args["vm_hosts"], task_vars)
        outcomes = self._outcomes(plan, vm_results)
        records = rules.verify(plan, outcomes, states)
        restored = []
        for item in args["restored"]:
            target = item.get("item") if isinstance(item.get("item"), dict) else {}
            restored.append({"name": target.get("name") or item.get("name"), "host": target.get("host"),
                             "ok": not item.get("failed") and not item.get("unreachable"),
                             "msg": item.get("msg")})
        run["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        report = rules.build_report(request, plan, outcomes, records, run, restored=restored,
                                    resumed=args["resumed"])
        lines = rules.render_report(report)
        try:
            files = write_files(request["evacuate_report_dir"],
                                rules.report_basename(plan["source"], run.get("started_compact") or "run"),
                                report, lines)
        except OSError as exc:
            raise AnsibleActionFail("cannot write the evacuation report to %s on the controller: %s (set "
                                    "evacuate_report_dir to a writable directory); the report follows:\n%s"
                                    % (request["evacuate_report_dir"], exc, "\n".join(lines)),
                                    result={"report": report, "lines": lines, "evacuation_failed": True}) from exc
        report["files"] = files
        result.update({"report": report, "lines": lines, "files": files,
                       "evacuation_failed": report["failed"], "msg": report["msg"]})
        return result
