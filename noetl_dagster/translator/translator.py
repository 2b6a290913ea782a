"""``PlaybookTranslator``: every decision about how a playbook looks in Dagster, in one class.

Subclass it and override a ``get_*`` method to change names, descriptions, tags, retry
policies or the executor, then pass it to :func:`~noetl_dagster.load_playbook_definitions`.

Example::

    class MyTranslator(PlaybookTranslator):
        def get_retry_policy(self, playbook, step):
            return dg.RetryPolicy(max_retries=2) if step.tool[0].kind == "http" else None

    defs = load_playbook_definitions("playbooks/", translator=MyTranslator())
"""

from __future__ import annotations

import json
import os
import warnings
from typing import Any, Mapping

import dagster as dg

from ..playbook.models import Playbook, Step
from ..contract import DOMAIN_TAG, LOOP_STEP_TAG, LOOP_TAG, PLAYBOOK_TAG, STEP_TAG, TOOL_TAG
from .plan import op_safe

#: executors a playbook may choose with ``metadata.dagster.executor``
EXECUTORS = ("in_process", "multiprocess", "k8s")


class PlaybookTranslator:
    """Maps playbooks and steps to Dagster names, tags, metadata, retry policies, executors."""

    def get_job_name(self, playbook: Playbook) -> str:
        """``risk/score_application`` -> ``risk__score_application``."""
        return op_safe(playbook.metadata.catalog_path)

    def get_domain(self, playbook: Playbook) -> str:
        """The first segment of ``metadata.path`` (``risk`` for ``risk/score_application``)."""
        return playbook.metadata.catalog_path.strip("/").split("/")[0]

    def get_job_description(self, playbook: Playbook) -> str:
        return playbook.metadata.description or f"NoETL playbook {playbook.metadata.catalog_path}"

    def get_job_tags(self, playbook: Playbook) -> dict[str, str]:
        """Tags on the job and its runs: exported events join back to the playbook by them."""
        tags = {PLAYBOOK_TAG: playbook.metadata.catalog_path, DOMAIN_TAG: self.get_domain(playbook)}
        extra = playbook.metadata.dagster.get("tags")
        if isinstance(extra, Mapping):
            tags.update({str(k): str(v) for k, v in extra.items()})
        return tags

    def get_job_metadata(self, playbook: Playbook) -> dict[str, Any]:
        return {**code_reference(playbook.file, 1, "playbook"), "noetl/path": playbook.metadata.catalog_path}

    def get_op_description(self, playbook: Playbook, step: Step) -> str:
        kinds = "+".join(t.kind for t in step.tool)
        text = step.description or f"NoETL step `{step.step}` ({kinds})"
        return f"{text}\n\n{playbook.metadata.catalog_path} · {os.path.basename(playbook.file)}:{step.line}"

    def get_op_tags(self, playbook: Playbook, step: Step) -> dict[str, str]:
        """``noetl/*`` tags plus ``dagster/kind/*`` so the UI shows the tool kinds."""
        kinds = sorted({t.kind for t in step.tool})
        tags = {STEP_TAG: step.step, TOOL_TAG: "+".join(t.kind for t in step.tool),
                "dagster/kind/noetl": ""}
        tags.update({f"dagster/kind/{k}": "" for k in kinds})
        if step.loop is not None:
            tags[LOOP_TAG] = step.loop.mode
        k8s = self.get_k8s_config(playbook, step)
        if k8s:
            tags["dagster-k8s/config"] = json.dumps(k8s, sort_keys=True)
        return tags

    def get_k8s_config(self, playbook: Playbook, step: Step) -> dict[str, Any] | None:
        """``dagster-k8s/config`` for the step's pod under the Kubernetes executor.

        Built from the step's ``hardware:`` extension::

            hardware: {cpu: "2", memory: 4Gi, gpu: 1, cpu_limit: "4", memory_limit: 8Gi,
                       node_selector: {pool: gpu}, tolerations: [{key: gpu, operator: Exists}]}
        """
        hardware = (step.model_extra or {}).get("hardware")
        if not isinstance(hardware, Mapping) or not hardware:
            return None
        requests = {k: str(hardware[k]) for k in ("cpu", "memory") if hardware.get(k) is not None}
        limits = {k: str(hardware[f"{k}_limit"]) for k in ("cpu", "memory") if hardware.get(f"{k}_limit")}
        if hardware.get("gpu"):
            limits["nvidia.com/gpu"] = str(hardware["gpu"])
        config: dict[str, Any] = {}
        if requests or limits:
            resources: dict[str, Any] = {}
            if requests:
                resources["requests"] = requests
            if limits:
                resources["limits"] = limits
            config["container_config"] = {"resources": resources}
        pod_spec = {k: hardware[k] for k in ("node_selector", "tolerations") if hardware.get(k)}
        if pod_spec:
            config["pod_spec_config"] = pod_spec
        return config or None

    def get_retry_policy(self, playbook: Playbook, step: Step) -> dg.RetryPolicy | None:
        """NoETL has no step-level retry; pipelines retry inside the op. Override to add one."""
        return None

    def get_on_error(self, playbook: Playbook) -> str:
        """What an *error result* (a python exception, an HTTP non-2xx, a pipeline stopped in
        error) does: ``complete`` the step with status ``error`` and route on (NoETL, the default)
        or ``fail`` the op (strict). ``metadata.dagster.on_error`` chooses per playbook.

        Examples:
            Strict mode for every playbook of a team that wants Dagster's fail-fast ops::

                class StrictTranslator(PlaybookTranslator):
                    def get_on_error(self, playbook):
                        return "fail"
        """
        return str(playbook.metadata.dagster.get("on_error") or "complete")

    def get_loop_chunk_size(self, playbook: Playbook, step: Step) -> int:
        """How many consecutive items one body op of a parallel loop runs (default: the step's
        ``loop.chunk_size`` extension, 1 = one op per item). Results, ``ctx`` updates and NoETL
        semantics do not change; fewer, longer ops pay Dagster's per-op overhead less often.

        Example::

            class Chunked(PlaybookTranslator):
                def get_loop_chunk_size(self, playbook, step):
                    return 50 if step.step == "score_rows" else super().get_loop_chunk_size(playbook, step)
        """
        return step.loop.chunk_size if step.loop is not None else 1

    def get_loop_concurrency(self, playbook: Playbook, step: Step) -> int | None:
        """At most this many body ops of a parallel loop at once (None: only the executor's
        ``max_concurrent``); default: the step's ``loop.spec.max_in_flight``.

        Enforced by the multiprocess and k8s executors as ``tag_concurrency_limits`` on the body
        ops' ``noetl/loop_step`` tag (:meth:`get_executor`); the in-process executor runs one op
        at a time anyway.

        Example::

            class Gentle(PlaybookTranslator):
                def get_loop_concurrency(self, playbook, step):
                    return 2 if step.tool[0].kind == "http" else super().get_loop_concurrency(playbook, step)
        """
        return step.loop.max_in_flight if step.loop is not None else None

    def loop_concurrency_limits(self, playbook: Playbook) -> list[dict[str, Any]]:
        """``tag_concurrency_limits`` entries for the parallel loops with a concurrency limit."""
        limits = []
        for step in playbook.workflow:
            if step.loop is None or step.loop.mode != "parallel":
                continue
            limit = self.get_loop_concurrency(playbook, step)
            if limit:
                limits.append({"key": LOOP_STEP_TAG, "value": step.step, "limit": int(limit)})
        return limits

    def get_automation_condition(self, playbook: Playbook, step: Step) -> dg.AutomationCondition | None:
        """How a product refreshes by itself: ``metadata.dagster.automation: eager`` re-runs the
        playbook when an upstream product it reads changed; default None (schedules and manual runs).
        """
        if playbook.metadata.dagster.get("automation") == "eager":
            return dg.AutomationCondition.eager()
        return None

    def get_executor(self, playbook: Playbook) -> dg.ExecutorDefinition:
        """In-process by default (about 5-10 ms per step instead of 1.5-2 s per spawned step).

        ``metadata.dagster.executor: multiprocess`` (with ``max_concurrent``) selects a
        forkserver multiprocess executor with Dagster and this package preloaded.

        A parallel loop with a concurrency limit (:meth:`get_loop_concurrency`) becomes a
        ``tag_concurrency_limits`` entry ``{key: noetl/loop_step, value: <step>, limit: N}`` of the
        multiprocess and k8s executors (added to any the ``k8s`` block lists); a multiprocess
        playbook without ``max_concurrent`` gets the largest loop limit as ``max_concurrent`` when
        it exceeds the CPU count (Dagster's default), so an IO-bound loop can reach its limit.

        ``metadata.dagster.executor: k8s`` selects dagster-k8s's ``k8s_job_executor``: every step
        runs in its own Kubernetes Job, sized by its ``dagster-k8s/config`` tag (the step's
        ``hardware:`` extension). ``metadata.dagster.k8s`` optionally configures it with the
        executor's own keys (``job_namespace``, ``max_concurrent``, ``image_pull_policy``,
        ``env_vars``, ``step_k8s_config``, ``per_step_k8s_config`` keyed by step, ...); the
        block is checked here, so a typo is a load error naming the playbook. Without it the
        executor takes its defaults from the ``K8sRunLauncher`` and stays configurable per run
        (``execution: {config: {...}}``).
        """
        block = playbook.metadata.dagster
        choice = block.get("executor", "in_process")
        if choice in (None, "in_process"):
            return dg.in_process_executor
        loop_limits = self.loop_concurrency_limits(playbook)
        if choice == "multiprocess":
            config: dict[str, Any] = {
                "start_method": {"forkserver": {"preload_modules": ["dagster", "noetl_dagster"]}}
            }
            if block.get("max_concurrent"):
                config["max_concurrent"] = int(block["max_concurrent"])
            if loop_limits:
                config["tag_concurrency_limits"] = loop_limits
                top = max(limit["limit"] for limit in loop_limits)
                if "max_concurrent" not in config and top > (os.cpu_count() or 1):
                    config["max_concurrent"] = top  # an IO-bound loop may run more ops than cores
            return dg.multiprocess_executor.configured(config)

        from ..errors import Issue, PlaybookError

        def problem(message: str, field: str, hint: str | None = None) -> PlaybookError:
            return PlaybookError([Issue(playbook.file, playbook.metadata.line or 1, 1, message, field=field, hint=hint)])

        if choice not in ("k8s", "kubernetes"):
            raise problem(f"unknown executor {choice!r}", "metadata.dagster.executor",
                          "use in_process (default), multiprocess or k8s")
        from dagster._config import process_config
        from dagster_k8s import k8s_job_executor

        k8s = block.get("k8s") or {}
        if not isinstance(k8s, Mapping):
            raise problem("`k8s` must be a mapping of k8s_job_executor settings", "metadata.dagster.k8s",
                          "e.g. `k8s: {job_namespace: etl, max_concurrent: 4}`")
        k8s = dict(k8s)
        if block.get("max_concurrent") and "max_concurrent" not in k8s:
            k8s["max_concurrent"] = int(block["max_concurrent"])
        if loop_limits:
            given = k8s.get("tag_concurrency_limits") or []
            k8s["tag_concurrency_limits"] = [*given, *loop_limits] if isinstance(given, list) else given
        if not k8s:
            return k8s_job_executor
        checked = process_config(k8s_job_executor.config_schema.config_type, k8s)
        if not checked.success:
            raise problem("; ".join(e.message for e in checked.errors), "metadata.dagster.k8s",
                          "see dagster_k8s.k8s_job_executor's config")
        return k8s_job_executor.configured(k8s)


def code_reference(file: str, line: int, label: str) -> dict[str, Any]:
    """``dagster/code_references`` metadata pointing at a YAML line."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)
        reference = dg.LocalFileCodeReference(file_path=os.path.abspath(file), line_number=max(line, 1),
                                              label=label)
        return {"dagster/code_references": dg.CodeReferencesMetadataValue(code_references=[reference])}
