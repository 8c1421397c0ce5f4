# -*- coding: utf-8 -*-
# Copyright (c) kvm_ras.poison_guard contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin of kvm_ras.poison_guard.live_migrate: live progress while the module runs.

Without ``async`` the module runs as any module does. With ``async: N`` and ``poll: 0`` on the
task, this plugin starts the module as an async job on the host (the module then writes its
progress file there), and waits for it itself: every ``progress_interval`` seconds it reads the
job's status and the progress file and prints one line (VM, target, percent of memory
transferred, rate, time left), which ansible-playbook and AWX show while the task runs. The
task returns the module's own result when the job ends, as without async. Because the task
occupies its worker until the migration ends, ``throttle`` still bounds how many migrations run
at once (Ansible's own async polling with ``poll: 0`` would start them all at once).
"""

from __future__ import annotations

import json
import secrets
import time
from base64 import b64decode

from ansible.errors import AnsibleError
from ansible.plugins.action import ActionBase
from ansible.utils.display import Display

from ansible_collections.kvm_ras.poison_guard.plugins.plugin_utils.migration_progress import format_progress

display = Display()
MODULE = "kvm_ras.poison_guard.live_migrate"
DEFAULT_INTERVAL = 5
# Extra time for the job beyond the migration's own timeout (the module aborts at its timeout
# and waits up to 60 s for the abort, then checks both sides).
JOB_GRACE = 180


class ActionModule(ActionBase):
    """Run live_migrate; with async, wait for it here and show its progress."""

    _supports_async = True
    _supports_check_mode = True

    def _run_plain(self, task_vars):
        return self._execute_module(module_name=MODULE, module_args=self._task.args, task_vars=task_vars)

    def _status(self, jid, async_dir, task_vars):
        return self._execute_module(module_name="ansible.legacy.async_status", task_vars=task_vars,
                                    module_args={"jid": jid, "_async_dir": async_dir})

    def _progress(self, path, task_vars):
        try:
            read = self._execute_module(module_name="ansible.legacy.slurp", task_vars=task_vars,
                                        module_args={"src": path})
        except AnsibleError:
            return None
        if read.get("failed") or "content" not in read:
            return None
        try:
            return json.loads(b64decode(read["content"]).decode("utf-8"))
        except ValueError:
            return None

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        del tmp
        args = dict(self._task.args)
        interval = args.pop("progress_interval", DEFAULT_INTERVAL)
        try:
            interval = max(1, int(interval))
        except (TypeError, ValueError):
            result.update(failed=True, msg="progress_interval must be a whole number of seconds (got %r)" % (interval,))
            return result
        if not self._task.async_val or self._task.check_mode:
            self._task.args = args
            result.update(self._run_plain(task_vars))
            return result

        async_dir = self._remote_expand_user(self.get_shell_option("async_dir", default="~/.ansible_async"))
        progress_file = self._connection._shell.join_path(  # pylint: disable=protected-access
            async_dir, "kvm_ras_migration_%s.json" % secrets.token_hex(8))
        args["progress_file"] = progress_file
        vm, target = args.get("name") or args.get("uuid") or "VM", args.get("dest_uri") or "target"
        target = (task_vars or {}).get("evacuation_vm", {}).get("target") or target
        started = self._execute_module(module_name=MODULE, module_args=args, task_vars=task_vars, wrap_async=True)
        jid = started.get("ansible_job_id")
        if started.get("failed") or not jid:
            result.update(started)
            return result

        begin = time.monotonic()
        deadline = begin + self._task.async_val + JOB_GRACE
        lines = []
        status = {}
        while time.monotonic() < deadline:
            time.sleep(interval)
            try:
                status = self._status(jid, async_dir, task_vars)
            except AnsibleError as exc:            # a network blip: try again next time
                display.vvvv("live_migrate: status of job %s: %s" % (jid, exc))
                continue
            if status.get("finished") or (status.get("failed") and status.get("_ansible_parsed", True)
                                          and not status.get("started")):
                break
            line = format_progress(vm, target, self._progress(progress_file, task_vars), time.monotonic() - begin)
            lines.append(line)
            display.display("  [%s] %s" % (self._task.delegate_to or task_vars.get("inventory_hostname"), line))
        else:
            result.update(failed=True, ansible_job_id=jid, progress_lines=lines,
                          msg="the migration job %s of %s did not end within %d s; it may still run on the "
                              "source: check with virsh domjobinfo %s" % (jid, vm, self._task.async_val + JOB_GRACE, vm))
            return result

        for cleanup in ({"jid": jid, "mode": "cleanup", "_async_dir": async_dir},):
            try:
                self._execute_module(module_name="ansible.legacy.async_status", module_args=cleanup, task_vars=task_vars)
            except AnsibleError:
                pass
        try:
            self._execute_module(module_name="ansible.legacy.file", module_args={"path": progress_file, "state": "absent"},
                                 task_vars=task_vars)
        except AnsibleError:
            pass
        for key in ("ansible_job_id", "started", "finished", "results_file", "stdout", "stderr", "stdout_lines",
                    "stderr_lines"):
            status.pop(key, None)
        result.update(status)
        result["progress_lines"] = lines
        return result
