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
        return tags

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
