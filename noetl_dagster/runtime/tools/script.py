"""``kind: script``: run a Python script as a Kubernetes Job (NoETL's script runner).

NoETL's contract (rendered as templates)::

    tool:
      kind: script
      script:                               # where the script comes from (as kind: python reads it)
        uri: gs://bucket/scripts/job.py
        source: {type: gcs}                 # inline (source.code) | file | http | gcs | s3
      # NoETL's Rust form works too: script: {type: inline|local|http|gcs|s3, content, uri}
      input: {input_file: data.csv}         # alias args: -> JSON in sys.argv[1] of the script
      job:
        image: python:3.11-slim             # default python:3.11-slim
        namespace: noetl                    # default noetl
        install_dependencies: [requests]    # pip-installed in the pod before the script runs
        resources: {requests: {cpu: 500m, memory: 256Mi}, limits: {memory: 512Mi}}
        env: {GCS_BUCKET: out}
        timeout: 600                        # seconds (activeDeadline of the Job; default 600)
        backoffLimit: 3                     # (also backoff_limit; default 3)
        image_pull_policy: IfNotPresent

It runs through the ``container`` tool (dagster-k8s ``execute_k8s_job`` from inside the op, same
cluster access, labels, manifest validation and log capture). The script's text, the
dependency list and the arguments travel in the pod's environment and argv and are started by a
fixed bootstrap (``python -c``): no shell ever sees a rendered value (NoETL builds a
``sh -c "pip install ... && python script.py '<json>'"`` line). NoETL mounts the script from a
ConfigMap and ``env`` from a Secret; here both are plain env of the Job (the Job is deleted when
it ends, as dagster-k8s does) — use Kubernetes secrets (``env_secrets`` of the container tool)
for credentials.

Result (NoETL's shape): ``{status: completed, job_name, namespace, pod_name, execution_time,
output, succeeded, failed, exit_code, result}`` with ``output`` the pod log's tail and ``result``
(extension) its last line parsed as JSON. A Job that fails or times out is NoETL's *error result*
(``status: failed|timeout``, the step completes with status ``error``); a cluster that cannot
be reached fails the step.
"""

from __future__ import annotations

import json
import re
from typing import Any, Mapping

from noetl_dagster.playbook.kinds import BASE_DIR_KEY, normalize_script, script_job
from noetl_dagster.runtime.tools.base import ErrorResult, Tool, ToolContext, ToolError
from noetl_dagster.core.secrets import redact
from noetl_dagster.runtime.tools.container import ContainerTool
from noetl_dagster.runtime.tools.python_script import load_script_source

DEFAULT_IMAGE = "python:3.11-slim"
DEFAULT_NAMESPACE = "noetl"
DEFAULT_TIMEOUT = 600
DEFAULT_BACKOFF_LIMIT = 3

#: the pod's entry point: install the dependencies, write the script, run it with the args JSON
BOOTSTRAP = """\
import json, os, runpy, subprocess, sys, tempfile
deps = json.loads(os.environ.get("NOETL_SCRIPT_DEPENDENCIES") or "[]")
if deps:
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", *deps], check=True)
path = os.path.join(tempfile.mkdtemp(prefix="noetl-script-"), "script.py")
with open(path, "w", encoding="utf-8") as handle:
    handle.write(os.environ["NOETL_SCRIPT"])
sys.argv = [path] + sys.argv[1:]
runpy.run_path(path, run_name="__main__")
"""


def _pick(job: Mapping[str, Any], *names: str, default: Any = None) -> Any:
    return next((job[n] for n in names if job.get(n) not in (None, "")), default)


class ScriptTool(Tool):
    kind = "script"

    def run(self, config: dict[str, Any], ctx: ToolContext) -> Any:
        script = normalize_script(config.get("script"))
        source = load_script_source({"script": script}, config.get(BASE_DIR_KEY), ctx)
        job = ctx.render(dict(script_job(config)))
        args = ctx.render(config.get("input", config.get("args")) or {})
        deps = [str(d) for d in (job.get("install_dependencies") or [])]
        env = {str(k): "" if v is None else (v if isinstance(v, str) else json.dumps(v))
               for k, v in (job.get("env") or {}).items()}
        env.update({"NOETL_SCRIPT": source, "NOETL_SCRIPT_DEPENDENCIES": json.dumps(deps)})
        resources = job.get("resources") or {}
        container: dict[str, Any] = {
            "image": _pick(job, "image", default=DEFAULT_IMAGE),
            "namespace": _pick(job, "namespace", default=DEFAULT_NAMESPACE),
            "command": ["python", "-c", BOOTSTRAP],
            "args": [json.dumps(args, default=str)],
            "env": env,
            "timeout_seconds": int(_pick(job, "timeout", "timeout_seconds", default=DEFAULT_TIMEOUT)),
            "backoff_limit": int(_pick(job, "backoffLimit", "backoff_limit", default=DEFAULT_BACKOFF_LIMIT)),
            "image_pull_policy": _pick(job, "image_pull_policy", "imagePullPolicy", default="IfNotPresent"),
        }
        if resources:
            container["resources"] = resources
        for key in ("service_account", "node_selector", "tolerations", "labels", "env_secrets", "name",
                    "kubeconfig_file", "kube_context", "load_incluster_config"):
            if key in config:
                container[key] = ctx.render(config[key])
        try:
            out = ContainerTool().run_rendered(container, ctx)
        except ToolError as exc:
            message = str(exc)
            lowered = message.lower()
            status = "timeout" if "timed out" in lowered or "timeout" in lowered else (
                "failed" if "failed job pods" in lowered or "exited with errors" in lowered else None)
            if status is None:
                raise
            named = re.search(r"Kubernetes job (\S+) failed", message)
            data = {"status": status, "job_name": named.group(1) if named else None,
                    "namespace": container["namespace"], "succeeded": 0, "failed": 1,
                    "output": redact(message[-4000:]), "exit_code": None}
            return ErrorResult(data, f"Job {status}: {redact(message[:500])}")
        return {"status": "completed", "job_name": out["job_name"], "namespace": out["namespace"],
                "pod_name": out["pod"], "execution_time": out["duration_seconds"], "output": out["logs"],
                "succeeded": 1, "failed": 0, "exit_code": 0, "result": out["output"]}
