"""``kind: container``: run a container as a Kubernetes Job (through dagster-k8s, in the adapter).

NoETL's contract (rendered as templates)::

    tool:
      kind: container
      image: python:3.12-slim              # required
      command: [python, -c]                # list (a string is split like a shell would)
      args: ["print('{{ workload.msg }}')"]
      env: {MODE: fast}                    # or a list of k8s EnvVar ({name, value|valueFrom})
      resources: {requests: {cpu: 500m, memory: 1Gi}, limits: {memory: 2Gi}}
                                           # or short: {cpu: 500m, memory: 1Gi, cpu_limit: "1",
                                           #            memory_limit: 2Gi, gpu: 1}
      timeout_seconds: 600                 # the whole Job, from creation to completion
      namespace: etl                       # default: the run launcher's, else "default"
      service_account: etl-runner
      backoff_limit: 0                     # Job retries (default 0)
      restart_policy: Never                # Never (default, logs are streamed) | OnFailure
      node_selector: {pool: batch}
      tolerations: [{key: batch, operator: Exists}]
      volumes: [{name: data, emptyDir: {}}]
      volume_mounts: [{name: data, mountPath: /data}]
      image_pull_policy: IfNotPresent      # extras: labels, image_pull_secrets, env_secrets,
      name: my-job                         # env_config_maps, job name (default noetl-<step>-<hash>)

NoETL's nested form ``runtime: {provider: kubernetes, image, namespace, ...}`` is accepted too.

This module turns the config into :func:`dagster_k8s.execute_k8s_job` arguments and names the
Job; it imports neither Dagster nor dagster-k8s. The Job is run by the host's job runner,
``ToolContext.run_k8s_job``: the Dagster adapter's (:mod:`noetl_dagster.translator.k8s`) runs
:func:`dagster_k8s.execute_k8s_job` from inside the step's op, so the Job carries the run's labels
and, under a ``K8sRunLauncher``, the launcher's namespace, env and secrets (the step's own values
win). Without a runner (the runtime used on its own) the step fails with a :class:`ToolError`.
Where NoETL parks the step until a callback, this op simply waits for the Job. Result ``{status: succeeded, job_name, namespace, pod, logs, output}``: ``logs`` is the
tail of the pod's log, ``output`` the last log line parsed as JSON when it is JSON (else null).
A failed or timed-out Job fails the step with dagster-k8s's diagnosis (exit code, log tail).

Cluster access: in a pod (``KUBERNETES_SERVICE_HOST`` set) the in-cluster config; elsewhere
``$KUBECONFIG`` (or ``~/.kube/config``). ``kubeconfig_file``/``kube_context``/
``load_incluster_config`` in the tool config override that.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import shlex
import time
from typing import Any, Mapping

from noetl_dagster.playbook.kinds import container_fields
from noetl_dagster.runtime.tools.base import Tool, ToolContext, ToolError

#: how much of the pod log the result keeps
LOG_TAIL_CHARS = 20000
_COUNTER = itertools.count()
_DNS_LABEL = re.compile(r"[^a-z0-9-]+")


class ContainerTool(Tool):
    kind = "container"

    def run(self, config: dict[str, Any], ctx: ToolContext) -> Any:
        return self.run_rendered(container_fields(ctx.render(config)), ctx)

    def run_rendered(self, cfg: dict[str, Any], ctx: ToolContext) -> Any:
        """Run an already rendered (and flattened) config: ``kind: script`` passes its script's
        text this way, so a ``{{`` in it stays text."""
        if ctx.run_k8s_job is None:
            raise ToolError("container: a container step needs a Kubernetes job runner from its host "
                            "(steps run by the Dagster adapter have one; this ToolContext has none)")
        kwargs = execute_kwargs(cfg)
        kwargs["k8s_job_name"] = job_name(cfg, ctx, ctx.run_id)
        kwargs.update(_cluster_access(cfg))
        started = time.monotonic()
        ran = ctx.run_k8s_job(kwargs, ctx.log)
        logs = ran.get("logs") or ""
        return {"status": "succeeded", "job_name": ran["job_name"], "namespace": ran["namespace"],
                "pod": ran.get("pod"), "image": kwargs["image"], "logs": logs, "output": _last_json_line(logs),
                "duration_seconds": round(time.monotonic() - started, 3)}


def _listify(value: Any, key: str) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return shlex.split(value)
    if isinstance(value, list):
        return [v if isinstance(v, str) else json.dumps(v) if isinstance(v, (dict, list)) else str(v)
                for v in value]
    raise ToolError(f"container: `{key}` must render to a list of strings")


def _env(value: Any) -> list[dict[str, Any]]:
    if value is None:
        return []
    if isinstance(value, Mapping):
        out = []
        for name, item in value.items():
            if isinstance(item, Mapping):  # {NAME: {valueFrom: ...}}
                out.append({"name": str(name), **item})
            else:
                text = item if isinstance(item, str) else json.dumps(item) if isinstance(item, (dict, list)) \
                    else ("true" if item is True else "false" if item is False else "" if item is None else str(item))
                out.append({"name": str(name), "value": text})
        return out
    if isinstance(value, list) and all(isinstance(e, Mapping) and "name" in e for e in value):
        return [dict(e) for e in value]
    raise ToolError("container: `env` must render to a mapping of NAME: value or a list of {name, value}")


def resources_of(value: Any) -> dict[str, Any] | None:
    """k8s ``ResourceRequirements`` from NoETL's ``resources`` (full or short form)."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ToolError("container: `resources` must render to a mapping")
    if set(value) <= {"requests", "limits", "claims"}:
        return {k: {str(n): str(q) for n, q in v.items()} if isinstance(v, Mapping) else v
                for k, v in value.items() if v}
    requests = {k: str(value[k]) for k in ("cpu", "memory", "ephemeral-storage") if value.get(k) is not None}
    limits = {k: str(value[f"{k}_limit"]) for k in ("cpu", "memory") if value.get(f"{k}_limit") is not None}
    if value.get("gpu"):
        limits["nvidia.com/gpu"] = str(value["gpu"])
    unknown = set(value) - {"cpu", "memory", "ephemeral-storage", "cpu_limit", "memory_limit", "gpu"}
    if unknown:
        raise ToolError(f"container: unknown `resources` keys {sorted(unknown)}; use requests/limits, "
                        "or cpu, memory, cpu_limit, memory_limit, gpu")
    out: dict[str, Any] = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out or None


def execute_kwargs(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments of :func:`dagster_k8s.execute_k8s_job` for a rendered tool config."""
    image = cfg.get("image")
    if not image or not isinstance(image, str):
        raise ToolError("container: `image` must render to an image name")
    kwargs: dict[str, Any] = {"image": image}
    command = _listify(cfg.get("command"), "command")
    if command:
        kwargs["command"] = command
    args = _listify(cfg.get("args"), "args")
    if args:
        kwargs["args"] = args
    container_config: dict[str, Any] = {}
    env = _env(cfg.get("env"))
    if env:
        container_config["env"] = env
    if container_config:
        kwargs["container_config"] = container_config
    resources = resources_of(cfg.get("resources"))
    if resources:
        kwargs["resources"] = resources
    timeout = cfg.get("timeout_seconds", cfg.get("timeout"))
    if timeout not in (None, "", 0):
        try:
            kwargs["timeout"] = max(1, int(float(timeout)))
        except (TypeError, ValueError):
            raise ToolError(f"container: timeout_seconds {timeout!r} is not a number") from None
    for key, target in (("namespace", "namespace"), ("service_account", "service_account_name"),
                        ("service_account_name", "service_account_name"),
                        ("image_pull_policy", "image_pull_policy")):
        if cfg.get(key):
            kwargs[target] = str(cfg[key])
    for key in ("volumes", "volume_mounts", "image_pull_secrets", "env_secrets", "env_config_maps"):
        if cfg.get(key):
            kwargs[key] = list(cfg[key])
    if cfg.get("labels"):
        kwargs["labels"] = {str(k): str(v) for k, v in dict(cfg["labels"]).items()}
    pod_spec: dict[str, Any] = {}
    policy = cfg.get("restart_policy")
    if policy:
        if policy not in ("Never", "OnFailure"):
            raise ToolError(f"container: restart_policy {policy!r} is not allowed for a Job (Never | OnFailure)")
        pod_spec["restart_policy"] = policy
    if cfg.get("node_selector"):
        pod_spec["node_selector"] = {str(k): str(v) for k, v in dict(cfg["node_selector"]).items()}
    if cfg.get("tolerations"):
        pod_spec["tolerations"] = list(cfg["tolerations"])
    if pod_spec:
        kwargs["pod_spec_config"] = pod_spec
    backoff = cfg.get("backoff_limit")
    kwargs["job_spec_config"] = {"backoff_limit": int(backoff) if backoff not in (None, "") else 0}
    return kwargs


def job_name(cfg: Mapping[str, Any], ctx: ToolContext, run_id: str) -> str:
    """``name:`` or ``noetl-<step>-<hash>``: unique per run, step, iteration and call (≤ 57 chars,
    leaving room for dagster-k8s's ``-<retry>`` suffix)."""
    if cfg.get("name"):
        name = _DNS_LABEL.sub("-", str(cfg["name"]).lower()).strip("-")[:57].strip("-")
        if not name:
            raise ToolError(f"container: job name {cfg['name']!r} has no valid characters")
        return name
    seed = f"{run_id}/{ctx.step}/{dict(ctx.iteration).get('_index', '')}/{os.getpid()}/{next(_COUNTER)}"
    digest = hashlib.sha256(seed.encode()).hexdigest()[:10]
    step = _DNS_LABEL.sub("-", ctx.step.lower().replace("_", "-")).strip("-")[:38].strip("-") or "step"
    return f"noetl-{step}-{digest}"


def _cluster_access(cfg: Mapping[str, Any]) -> dict[str, Any]:
    if "load_incluster_config" in cfg:
        incluster = bool(cfg["load_incluster_config"])
    else:
        incluster = bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and not cfg.get("kubeconfig_file")
    if incluster:
        return {"load_incluster_config": True}
    out: dict[str, Any] = {"load_incluster_config": False,
                           "kubeconfig_file": cfg.get("kubeconfig_file") or _default_kubeconfig()}
    if cfg.get("kube_context"):
        out["_kubeconfig_file_context"] = str(cfg["kube_context"])
    return out


def _default_kubeconfig() -> str | None:
    value = os.environ.get("KUBECONFIG")
    if value:
        return value.split(os.pathsep)[0]
    return None


def _last_json_line(logs: str) -> Any:
    for line in reversed(logs.splitlines()):
        line = line.strip()
        if not line:
            continue
        try:
            return json.loads(line)
        except ValueError:
            return None
    return None


