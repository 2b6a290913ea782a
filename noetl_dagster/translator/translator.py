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
from .plan import op_safe

#: executors a playbook may choose with ``metadata.dagster.executor``
EXECUTORS = ("in_process", "multiprocess")


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
        tags = {"noetl/playbook": playbook.metadata.catalog_path, "noetl/domain": self.get_domain(playbook)}
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
        tags = {"noetl/step": step.step, "noetl/tool": "+".join(t.kind for t in step.tool),
                "dagster/kind/noetl": ""}
        tags.update({f"dagster/kind/{k}": "" for k in kinds})
        if step.loop is not None:
            tags["noetl/loop"] = step.loop.mode
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

    def get_executor(self, playbook: Playbook) -> dg.ExecutorDefinition:
        """In-process by default (about 5-10 ms per step instead of 1.5-2 s per spawned step).

        ``metadata.dagster.executor: multiprocess`` (with ``max_concurrent``) selects a
        forkserver multiprocess executor with Dagster and this package preloaded.
        """
        choice = playbook.metadata.dagster.get("executor", "in_process")
        if choice == "multiprocess":
            config: dict[str, Any] = {
                "start_method": {"forkserver": {"preload_modules": ["dagster", "noetl_dagster"]}}
            }
            if playbook.metadata.dagster.get("max_concurrent"):
                config["max_concurrent"] = int(playbook.metadata.dagster["max_concurrent"])
            return dg.multiprocess_executor.configured(config)
        return dg.in_process_executor


def code_reference(file: str, line: int, label: str) -> dict[str, Any]:
    """``dagster/code_references`` metadata pointing at a YAML line."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)
        reference = dg.LocalFileCodeReference(file_path=os.path.abspath(file), line_number=max(line, 1),
                                              label=label)
        return {"dagster/code_references": dg.CodeReferencesMetadataValue(code_references=[reference])}
