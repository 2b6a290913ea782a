"""Kubernetes Jobs for ``kind: container`` (and ``kind: script``'s jobs), through dagster-k8s.

The runtime's container tool (:mod:`noetl_dagster.runtime.tools.container`) turns a step's
config into :func:`dagster_k8s.execute_k8s_job` arguments and names the Job; it imports neither
Dagster nor dagster-k8s. The adapter gives each step a job runner (:func:`job_runner`, through
``ToolContext.run_k8s_job``) that runs the Job from inside the step's op, so it carries the run's
labels and, under a ``K8sRunLauncher``, the launcher's namespace, env and secrets (the step's own
values win); then it reads the tail of the pod's log.

:func:`manifest` is the Job a config would create outside any run launcher (for review and
schema validation), built by dagster-k8s's own functions.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Mapping

from noetl_dagster.core.secrets import redact
from noetl_dagster.errors import ToolError
from noetl_dagster.runtime.tools.container import LOG_TAIL_CHARS, execute_kwargs
from noetl_dagster.playbook.kinds import container_fields as flatten  # NoETL's nested `runtime:` form


def job_runner(context: Any) -> Callable[[dict[str, Any], Any], dict[str, Any]]:
    """The ``run_k8s_job`` of the steps of op ``context``: ``run(kwargs, log)`` runs one Job
    (``kwargs`` as :func:`execute_k8s_job` takes them, ``k8s_job_name`` included) and returns
    ``{job_name, namespace, pod, logs}``; a failed or timed-out Job raises :class:`ToolError` with
    dagster-k8s's diagnosis (exit code, log tail)."""

    def run(kwargs: dict[str, Any], log: Any) -> dict[str, Any]:
        from dagster_k8s import execute_k8s_job

        try:
            with warnings.catch_warnings():  # superseded by PipesK8sClient, which needs dagster-pipes in the image
                warnings.simplefilter("ignore")
                execute_k8s_job(context, **kwargs)
        except Exception as exc:  # noqa: BLE001 - dagster-k8s raises plain Exceptions too
            message = str(exc).strip() or type(exc).__name__
            raise ToolError(redact(f"container: Kubernetes job {kwargs['k8s_job_name']} failed: "
                                   f"{message[-4000:]}")) from None
        job = kwargs["k8s_job_name"] + (f"-{context.retry_number}" if context.retry_number else "")
        namespace = _namespace(context, kwargs.get("namespace"))
        pod, logs = _pod_logs(job, namespace, log)
        return {"job_name": job, "namespace": namespace, "pod": pod, "logs": logs}

    return run


def manifest(cfg: Mapping[str, Any], *, name: str = "noetl-step", run_id: str = "",
             job: str = "", op: str = "") -> dict[str, Any]:
    """The Job :func:`execute_k8s_job` would create for ``cfg`` outside any run launcher, as a dict
    (``kubectl``-shaped, for review and schema validation). Built by dagster-k8s's own functions."""
    import kubernetes
    from dagster_k8s.container_context import K8sContainerContext
    from dagster_k8s.job import DagsterK8sJobConfig, UserDefinedDagsterK8sConfig, construct_dagster_k8s_job

    kw = execute_kwargs(flatten(cfg))
    container_config = dict(kw.get("container_config") or {})
    if kw.get("command"):
        container_config["command"] = kw["command"]
    context = K8sContainerContext(
        image_pull_policy=kw.get("image_pull_policy"), image_pull_secrets=kw.get("image_pull_secrets"),
        service_account_name=kw.get("service_account_name"), env_config_maps=kw.get("env_config_maps"),
        env_secrets=kw.get("env_secrets"), volume_mounts=kw.get("volume_mounts"), volumes=kw.get("volumes"),
        labels=kw.get("labels"), namespace=kw.get("namespace"), resources=kw.get("resources"),
        run_k8s_config=UserDefinedDagsterK8sConfig.from_dict({
            "container_config": container_config, "pod_spec_config": kw.get("pod_spec_config") or {},
            "job_spec_config": kw.get("job_spec_config") or {}, "merge_behavior": "DEEP"}),
    )
    job_obj = construct_dagster_k8s_job(
        job_config=DagsterK8sJobConfig(job_image=kw["image"], dagster_home=None),
        args=kw.get("args"), job_name=name, pod_name=name, component="k8s_job_op",
        user_defined_k8s_config=context.run_k8s_config,
        labels={"dagster/job": job or "noetl", "dagster/op": op or "step", "dagster/run-id": run_id or "none"},
    )
    out = kubernetes.client.ApiClient().sanitize_for_serialization(job_obj)
    out.setdefault("apiVersion", "batch/v1")
    out.setdefault("kind", "Job")
    out["metadata"]["namespace"] = context.namespace or "default"
    return out


def _namespace(context: Any, explicit: str | None) -> str:
    if explicit:
        return explicit
    try:
        from dagster_k8s.launcher import K8sRunLauncher

        launcher = context.instance.run_launcher
        if isinstance(launcher, K8sRunLauncher) and launcher.job_namespace:
            return launcher.job_namespace
    except Exception:  # noqa: BLE001
        pass
    return "default"


def _pod_logs(job: str, namespace: str, log: Any) -> tuple[str | None, str]:
    """The first pod of ``job`` and the tail of its log (best effort: "" when unavailable)."""
    try:
        from dagster_k8s.client import DagsterKubernetesClient

        client = DagsterKubernetesClient.production_client()
        pods = client.get_pod_names_in_job(job, namespace)
        if not pods:
            return None, ""
        # raw bytes: the client's str deserialisation turns them into "b'...'" text
        response = client.core_api.read_namespaced_pod_log(pods[0], namespace, container="dagster",
                                                           _preload_content=False)
        text = response.data.decode("utf-8", "replace")
        return pods[0], text[-LOG_TAIL_CHARS:]
    except Exception as exc:  # noqa: BLE001
        log.warning(f"container: could not read the log of job {job}: {type(exc).__name__}")
        return None, ""
