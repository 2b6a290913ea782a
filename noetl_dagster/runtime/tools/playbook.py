"""``kind: playbook``: call another playbook (NoETL's sub-playbooks).

* awaited (``return_result: true``, or ``return_step``): the child runs as its own Dagster run,
  tagged ``noetl/parent_run_id``, in the calling step's process. With ``return_result`` the step
  returns the child's result (``result_step``, else ``end``, else the last step that ran) and a
  failed child fails the step; a child whose steps completed with error results completed, as
  in NoETL. With only ``return_step`` the step returns the child's status payload
  ``{status: COMPLETED|FAILED, execution_id, path, result, error}``: a failed child never fails
  the parent (NoETL's legacy status poll).
* fire-and-forget (the default): the child is launched as a separate process recording its run
  in the same instance; the step returns ``{status: started, execution_id, path, async: true}``.

``args`` (alias ``input``) or ``payload`` become the child's workload overrides.

Every child run carries ``noetl/call_depth`` and ``noetl/call_chain`` (the playbook paths from
the top run down, ``a>b>a``); a call deeper than ``NOETL_MAX_SUBPLAYBOOK_DEPTH`` (8) fails the
step naming the chain, so a playbook calling itself ends instead of nesting forever. A
detached child is recorded on the parent run as the tag ``noetl/detached/<child run id>`` = pid
(``noetl-dagster`` can cancel it by that pid while it runs).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from typing import Any

from noetl_dagster.core.limits import MAX_SUBPLAYBOOK_DEPTH
from noetl_dagster.runtime.tools.base import Tool, ToolContext, ToolError


class PlaybookTool(Tool):
    kind = "playbook"

    def run(self, config: dict[str, Any], ctx: ToolContext) -> Any:
        path = str(ctx.render(config.get("path")))
        catalog = ctx.resources.get("catalog")
        child = catalog.get(path) if catalog is not None else None
        if child is None:
            raise ToolError(f"sub-playbook {path!r} is not among the loaded playbooks")
        workload = ctx.render(config.get("payload") or config.get("args") or config.get("input") or {})
        if not isinstance(workload, dict):
            raise ToolError("sub-playbook `args`/`payload` must render to a mapping")
        instance = ctx.resources.get("instance")
        tags = {"noetl/parent_run_id": ctx.run_id, "noetl/parent_step": ctx.step,
                **_call_tags(instance, ctx.run_id, path)}
        if config.get("return_result") or config.get("return_step"):
            if ctx.run_playbook is None:
                raise ToolError(f"sub-playbook {path!r}: awaiting a child needs a host that runs playbooks "
                                "(the Dagster adapter gives its steps one; this ToolContext has no run_playbook)")
            report = ctx.run_playbook(child, workload, instance=instance, tags=tags, catalog=catalog,
                                      resources=ctx.resources.get("dagster_resources"), log_level="WARNING")
            failed = [f"{name}: {s.error}" for name, s in report.steps.items() if s.status == "failed"]
            if report.status != "success" and config.get("return_result"):
                raise ToolError(f"sub-playbook {path!r} failed (run {report.run_id}): {'; '.join(failed)}")
            chosen = config.get("result_step") or (config.get("return_step") if isinstance(config.get("return_step"), str) else None)
            data = _child_result(report, chosen)
            if config.get("return_result"):
                return data
            payload = {"status": "COMPLETED" if report.status == "success" else "FAILED",
                       "execution_id": report.run_id, "path": path, "result": data}
            if failed:
                payload["error"] = "; ".join(failed)
            return payload
        launched = _launch(child.file, path, workload, tags, instance)
        pid = launched.pop("_pid")
        try:  # the parent run lists its detached children (run id -> pid)
            instance.add_run_tags(  # type: ignore[union-attr]  # no instance raises: caught below
                ctx.run_id, {f"noetl/detached/{launched['execution_id']}": str(pid)})
        except Exception:  # noqa: BLE001 - no run record (an ephemeral parent): the child still runs
            pass
        return launched


def _child_result(report: Any, step: str | None) -> Any:
    if step:
        if step not in report.steps:
            raise ToolError(f"result_step {step!r} is not a step of the sub-playbook")
        return report.steps[step].result
    if "end" in report.steps and report.steps["end"].status == "success":
        return report.steps["end"].result
    ran = [s for s in report.steps.values() if s.status == "success"]
    return ran[-1].result if ran else None


def _launch(file: str, path: str, workload: dict[str, Any], tags: dict[str, str], instance: Any) -> dict[str, Any]:
    home = getattr(instance, "root_directory", None)
    if not home:
        raise ToolError("a fire-and-forget sub-playbook needs a persistent Dagster instance "
                        "(set DAGSTER_HOME), or set `return_result: true` to await it")
    run_id = str(uuid.uuid4())
    command = [sys.executable, "-m", "noetl_dagster.cli", "run", file, "--workload", json.dumps(workload),
               "--run-id", run_id, "--tags", json.dumps(tags)]
    process = subprocess.Popen(command, env={**os.environ, "DAGSTER_HOME": str(home)}, stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    return {"status": "started", "execution_id": run_id, "path": path, "async": True, "_pid": process.pid}


def _call_tags(instance: Any, run_id: str, path: str) -> dict[str, str]:
    """``noetl/call_depth`` and ``noetl/call_chain`` of a child of run ``run_id`` calling ``path``."""
    run = None
    try:
        run = instance.get_run_by_id(run_id) if instance is not None else None
    except Exception:  # noqa: BLE001 - no run storage: this is the top run
        run = None
    tags = run.tags if run is not None else {}
    try:
        depth = int(tags.get("noetl/call_depth", 0)) + 1
    except ValueError:
        depth = 1
    chain = tags.get("noetl/call_chain") or tags.get("noetl/playbook") or "?"
    chain = f"{chain}>{path.strip('/')}"
    if depth > MAX_SUBPLAYBOOK_DEPTH:
        raise ToolError(f"sub-playbook calls nest deeper than {MAX_SUBPLAYBOOK_DEPTH} "
                        f"(NOETL_MAX_SUBPLAYBOOK_DEPTH): {chain}")
    return {"noetl/call_depth": str(depth), "noetl/call_chain": chain[-2000:]}
