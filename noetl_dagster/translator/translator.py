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
from typing import Any, Iterable, Mapping, Sequence

import dagster as dg
from dagster_shared.libraries import DagsterLibraryRegistry

from noetl_dagster.contract import DOMAIN_TAG, LOOP_STEP_TAG, LOOP_TAG, PLAYBOOK_TAG, STEP_TAG, TOOL_TAG
from noetl_dagster.core.version import __version__
from noetl_dagster.errors import Issue, PlaybookError
from noetl_dagster.planner import op_safe
from noetl_dagster.playbook.models import Playbook, ProductCheck, Step

# listed with Dagster's libraries (a code location's libraries, telemetry), as dagster-dbt is; every
# Dagster definition this package builds goes through this module
DagsterLibraryRegistry.register("noetl-dagster", __version__, is_dagster_package=False)

#: executors a playbook may choose with ``metadata.dagster.executor``
EXECUTORS = ("in_process", "multiprocess", "k8s")


class PlaybookTranslator:
    """Maps playbooks and steps to Dagster names, tags, metadata, retry policies, executors."""

    def get_job_name(self, playbook: Playbook) -> str:
        """``risk/score_application`` -> ``risk__score_application``.

        Examples:
            Prefix every job with the team::

                class Named(PlaybookTranslator):
                    def get_job_name(self, playbook):
                        return "etl__" + super().get_job_name(playbook)
        """
        return op_safe(playbook.metadata.catalog_path)

    def get_domain(self, playbook: Playbook) -> str:
        """The first segment of ``metadata.path`` (``risk`` for ``risk/score_application``).

        It drives the ``noetl/domain`` tag, the products' asset keys (:meth:`get_asset_key`) and
        groups (:meth:`get_group_name`); ``uses:`` and ``product('domain/name')`` references of
        other playbooks still name NoETL's domain and resolve to the key given here.

        Examples:
            Every product under one ``lake`` prefix, grouped by team::

                class Lake(PlaybookTranslator):
                    def get_domain(self, playbook):
                        return "lake_" + super().get_domain(playbook)
        """
        return playbook.metadata.catalog_path.strip("/").split("/")[0]

    def get_job_description(self, playbook: Playbook) -> str:
        """The job's description: ``metadata.description``, else ``NoETL playbook <path>``.

        Examples:
            Add the playbook's file::

                class Described(PlaybookTranslator):
                    def get_job_description(self, playbook):
                        return f"{super().get_job_description(playbook)} ({playbook.file})"
        """
        return playbook.metadata.description or f"NoETL playbook {playbook.metadata.catalog_path}"

    def get_job_tags(self, playbook: Playbook) -> dict[str, str]:
        """Tags on the job and its runs: exported events join back to the playbook by them
        (``noetl/playbook``, ``noetl/domain``), plus ``metadata.dagster.tags``.

        Examples:
            A cost centre on every run::

                class Costed(PlaybookTranslator):
                    def get_job_tags(self, playbook):
                        return {**super().get_job_tags(playbook), "cost_centre": "data"}
        """
        tags = {PLAYBOOK_TAG: playbook.metadata.catalog_path, DOMAIN_TAG: self.get_domain(playbook)}
        tags.update({str(k): str(v) for k, v in playbook.metadata.dagster.tags.items()})
        return tags

    def get_job_metadata(self, playbook: Playbook) -> dict[str, Any]:
        """The job's definition metadata: a code reference to the playbook file and its path.

        Examples:
            Link the playbook's repository::

                class Linked(PlaybookTranslator):
                    def get_job_metadata(self, playbook):
                        return {**super().get_job_metadata(playbook),
                                "repo": dg.MetadataValue.url("https://git/etl")}
        """
        return {**code_reference(playbook.file, 1, "playbook"), "noetl/path": playbook.metadata.catalog_path}

    def get_op_description(self, playbook: Playbook, step: Step) -> str:
        """The op's description: the step's ``desc`` (or its tool kinds), path and YAML line.

        Examples:
            Only the step's own text::

                class Short(PlaybookTranslator):
                    def get_op_description(self, playbook, step):
                        return step.description or step.step
        """
        kinds = "+".join(t.kind for t in step.tool)
        text = step.description or f"NoETL step `{step.step}` ({kinds})"
        return f"{text}\n\n{playbook.metadata.catalog_path} · {os.path.basename(playbook.file)}:{step.line}"

    def get_op_tags(self, playbook: Playbook, step: Step) -> dict[str, str]:
        """``noetl/*`` tags plus ``dagster/kind/*`` so the UI shows the tool kinds (and the
        ``dagster-k8s/config`` of :meth:`get_k8s_config`). The op timeout is not a tag to set
        here: see :meth:`get_op_timeout`.

        Examples:
            A team tag on every op::

                class Tagged(PlaybookTranslator):
                    def get_op_tags(self, playbook, step):
                        return {**super().get_op_tags(playbook, step), "team": "risk"}
        """
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

        Examples:
            A service account for every pod::

                class Pods(PlaybookTranslator):
                    def get_k8s_config(self, playbook, step):
                        config = super().get_k8s_config(playbook, step) or {}
                        return {**config, "pod_spec_config": {"service_account_name": "etl"}}
        """
        hardware = step.hardware
        if hardware is None:
            return None
        requests = {k: v for k, v in (("cpu", hardware.cpu), ("memory", hardware.memory)) if v is not None}
        limits = {k: v for k, v in (("cpu", hardware.cpu_limit), ("memory", hardware.memory_limit)) if v}
        if hardware.gpu:
            limits["nvidia.com/gpu"] = str(hardware.gpu)
        config: dict[str, Any] = {}
        if requests or limits:
            resources: dict[str, Any] = {}
            if requests:
                resources["requests"] = requests
            if limits:
                resources["limits"] = limits
            config["container_config"] = {"resources": resources}
        pod_spec = {k: v for k, v in (("node_selector", hardware.node_selector),
                                      ("tolerations", hardware.tolerations)) if v}
        if pod_spec:
            config["pod_spec_config"] = pod_spec
        return config or None

    def get_retry_policy(self, playbook: Playbook, step: Step) -> dg.RetryPolicy | None:
        """NoETL has no step-level retry; pipelines retry inside the op. Override to add one
        (it also retries error results, see README "Error results").

        Examples:
            Two retries for HTTP steps::

                class Retried(PlaybookTranslator):
                    def get_retry_policy(self, playbook, step):
                        return dg.RetryPolicy(max_retries=2) if step.tool[0].kind == "http" else None
        """
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
        return playbook.metadata.dagster.on_error or "complete"

    def get_loop_chunk_size(self, playbook: Playbook, step: Step) -> int:
        """How many consecutive items one body op of a parallel loop runs (default: the step's
        ``loop.chunk_size`` extension, 1 = one op per item). Results, ``ctx`` updates and NoETL
        semantics do not change; fewer, longer ops pay Dagster's per-op overhead less often.

        Examples:
            Fifty rows per op for one step::

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

        Examples:
            At most two HTTP calls of a loop at once::

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

        Examples:
            Refresh every product once a day after midnight, whatever the playbook says::

                class Daily(PlaybookTranslator):
                    def get_automation_condition(self, playbook, step):
                        return dg.AutomationCondition.on_cron("0 1 * * *")
        """
        if playbook.metadata.dagster.automation == "eager":
            return dg.AutomationCondition.eager()
        return None

    def get_op_timeout(self, playbook: Playbook, step: Step) -> float | None:
        """Seconds the step's op may compute before it fails (None: no limit, the default).

        The op enforces it itself (:mod:`noetl_dagster.runtime.deadline`; Dagster bounds whole
        runs only) and shows it as the op tag ``noetl/timeout_seconds``; a timed-out op fails
        with a clear message and its retry policy applies. Loop fan-out, body and collect ops
        and a cycle's op (its entry step) each get the limit.

        Examples:
            One minute for every HTTP step::

                class Bounded(PlaybookTranslator):
                    def get_op_timeout(self, playbook, step):
                        return 60 if step.tool[0].kind == "http" else None
        """
        return None

    # -- assets (playbooks with ``product:`` steps) -------------------------------------------
    def get_asset_key(self, playbook: Playbook, step: Step) -> dg.AssetKey:
        """The asset key of a product step: ``[get_domain(playbook), product.name]``.

        Examples:
            A common prefix before every product key::

                class Prefixed(PlaybookTranslator):
                    def get_asset_key(self, playbook, step):
                        return super().get_asset_key(playbook, step).with_prefix("noetl")
        """
        assert step.product is not None, f"step {step.step!r} publishes no product"
        return dg.AssetKey([self.get_domain(playbook), step.product.name])

    def get_group_name(self, playbook: Playbook, step: Step) -> str | None:
        """The product's asset group: the playbook's domain (:meth:`get_domain`).

        Examples:
            One group per playbook instead of per domain::

                class PerPlaybook(PlaybookTranslator):
                    def get_group_name(self, playbook, step):
                        return self.get_job_name(playbook)
        """
        return self.get_domain(playbook)

    def get_owners(self, playbook: Playbook, step: Step) -> Sequence[str] | None:
        """The product's owners: ``product.owners``, else ``metadata.owners`` (``team:x`` or e-mails).

        Examples:
            A default owner for products that name none::

                class Owned(PlaybookTranslator):
                    def get_owners(self, playbook, step):
                        return super().get_owners(playbook, step) or ["team:data-platform"]
        """
        assert step.product is not None
        return list(step.product.owners or playbook.metadata.owners) or None

    def get_kinds(self, playbook: Playbook, step: Step) -> set[str]:
        """Kinds shown on the product in the UI: ``noetl`` and the step's first tool kind.

        Examples:
            Show the product kind (``table``, ``features``, ...) too::

                class Kinds(PlaybookTranslator):
                    def get_kinds(self, playbook, step):
                        return super().get_kinds(playbook, step) | {step.product.kind}
        """
        return {"noetl", step.tool[0].kind}

    def get_description(self, playbook: Playbook, step: Step) -> str | None:
        """The product's description: ``product.description``, else the step's ``desc``.

        Examples:
            Name the playbook that publishes it::

                class Described(PlaybookTranslator):
                    def get_description(self, playbook, step):
                        text = super().get_description(playbook, step) or ""
                        return f"{text} (published by {playbook.metadata.catalog_path})"
        """
        assert step.product is not None
        return step.product.description or step.description

    def get_metadata(self, playbook: Playbook, step: Step) -> dict[str, Any]:
        """The product's definition metadata: a code reference to the step's YAML line and the
        ``noetl/playbook`` and ``noetl/step`` that publish it.

        Examples:
            Add a link to the team's documentation::

                class Documented(PlaybookTranslator):
                    def get_metadata(self, playbook, step):
                        return {**super().get_metadata(playbook, step),
                                "docs": dg.MetadataValue.url(f"https://wiki/{step.product.name}")}
        """
        assert step.product is not None
        return {**code_reference(playbook.file, step.line, f"product {step.product.name}"),
                PLAYBOOK_TAG: playbook.metadata.catalog_path, STEP_TAG: step.step}

    def get_partitions_def(self, playbook: Playbook) -> dg.PartitionsDefinition | None:
        """How the playbook's job, products and checks are partitioned: ``metadata.partitions``
        (``{daily: {start: 2026-01-01}}``) or None. One per playbook: its products come from one
        graph. Templates see the run's key as ``{{ partition_key }}``. With ``metadata.schedule``,
        time partitions run each new partition at their cadence (daily ones at the cron's hour and
        minute), static partitions all run at each cron tick.

        Examples:
            One partition per region instead of per day::

                class Regional(PlaybookTranslator):
                    def get_partitions_def(self, playbook):
                        if playbook.metadata.catalog_path == "risk/score_application":
                            return dg.StaticPartitionsDefinition(["eu", "us"])
                        return super().get_partitions_def(playbook)
        """
        spec = playbook.metadata.partitions
        if not spec:
            return None
        return dg.DailyPartitionsDefinition(start_date=str(spec["daily"]["start"]))

    def get_asset_spec(self, playbook: Playbook, step: Step) -> dg.AssetSpec:
        """The product of ``step`` as an :class:`~dagster.AssetSpec`, built from
        :meth:`get_asset_key`, :meth:`get_group_name`, :meth:`get_owners`, :meth:`get_kinds`,
        :meth:`get_description`, :meth:`get_metadata`, :meth:`get_automation_condition` and
        :meth:`get_partitions_def`. Its ``deps`` are left empty here: the emitter wires the
        products a playbook reads as inputs of its graph, and
        :func:`~noetl_dagster.playbook_asset_specs` fills them in for composition.

        Examples:
            Tag every product of the ``risk`` domain::

                class Tagged(PlaybookTranslator):
                    def get_asset_spec(self, playbook, step):
                        spec = super().get_asset_spec(playbook, step)
                        return spec.merge_attributes(tags={"tier": "gold"}) if spec.group_name == "risk" else spec
        """
        return dg.AssetSpec(
            key=self.get_asset_key(playbook, step),
            group_name=self.get_group_name(playbook, step),
            owners=self.get_owners(playbook, step),
            kinds=self.get_kinds(playbook, step),
            description=self.get_description(playbook, step),
            metadata=self.get_metadata(playbook, step),
            automation_condition=self.get_automation_condition(playbook, step),
            partitions_def=self.get_partitions_def(playbook),
        )

    def get_asset_check_spec(self, playbook: Playbook, step: Step, check: ProductCheck) -> dg.AssetCheckSpec:
        """One ``product.checks`` entry as an :class:`~dagster.AssetCheckSpec` on the product's key
        (name: the check's ``name``, else kind and columns, e.g. ``not_null_score``; ``blocking``
        stops downstream steps when it fails).

        Examples:
            Make every ``row_count`` check blocking::

                class Strict(PlaybookTranslator):
                    def get_asset_check_spec(self, playbook, step, check):
                        spec = super().get_asset_check_spec(playbook, step, check)
                        if check.kind != "row_count":
                            return spec
                        return dg.AssetCheckSpec(spec.name, asset=spec.asset_key, blocking=True,
                                                 description=spec.description,
                                                 partitions_def=spec.partitions_def)
        """
        key = self.get_asset_key(playbook, step)
        return dg.AssetCheckSpec(
            name=check.check_name, asset=key, blocking=check.blocking,
            description=check.description or f"{check.kind} check of {key.to_user_string()}",
            partitions_def=self.get_partitions_def(playbook))

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

        Examples:
            Every playbook in subprocesses, four at a time::

                class Parallel(PlaybookTranslator):
                    def get_executor(self, playbook):
                        return dg.multiprocess_executor.configured({"max_concurrent": 4})
        """
        block = playbook.metadata.dagster
        choice = block.executor
        if choice in (None, "in_process"):
            return dg.in_process_executor
        loop_limits = self.loop_concurrency_limits(playbook)
        if choice == "multiprocess":
            config: dict[str, Any] = {
                "start_method": {"forkserver": {"preload_modules": ["dagster", "noetl_dagster"]}}
            }
            if block.max_concurrent:
                config["max_concurrent"] = block.max_concurrent
            if loop_limits:
                config["tag_concurrency_limits"] = loop_limits
                top = max(limit["limit"] for limit in loop_limits)
                if "max_concurrent" not in config and top > (os.cpu_count() or 1):
                    config["max_concurrent"] = top  # an IO-bound loop may run more ops than cores
            return dg.multiprocess_executor.configured(config)

        from noetl_dagster.compat import process_config
        from dagster_k8s import k8s_job_executor

        k8s = dict(block.k8s or {})  # executor k8s (or kubernetes); the block's type is checked at load
        if block.max_concurrent and "max_concurrent" not in k8s:
            k8s["max_concurrent"] = block.max_concurrent
        if loop_limits:
            given = k8s.get("tag_concurrency_limits") or []
            k8s["tag_concurrency_limits"] = [*given, *loop_limits] if isinstance(given, list) else given
        if not k8s:
            return k8s_job_executor
        checked = process_config(k8s_job_executor.config_schema.config_type, k8s)
        if not checked.success:  # the settings' names and types are the executor's own: checked here
            raise PlaybookError([Issue(playbook.file, block.line or playbook.metadata.line or 1, 1,
                                       "; ".join(e.message for e in checked.errors or ()), field="metadata.dagster.k8s",
                                       hint="see dagster_k8s.k8s_job_executor's config")])
        return k8s_job_executor.configured(k8s)


def product_asset_keys(playbooks: Iterable[Playbook], translator: PlaybookTranslator | None = None
                       ) -> dict[str, dg.AssetKey]:
    """NoETL product references (``domain/name``, the domain being the first segment of the
    producer's ``metadata.path``, as ``uses:`` and ``product('...')`` write them) -> the asset key
    ``translator`` gives that product (:meth:`PlaybookTranslator.get_asset_key`)."""
    translator = translator or PlaybookTranslator()
    return {f"{p.metadata.domain}/{s.product.name}": translator.get_asset_key(p, s)
            for p in playbooks for s in p.workflow if s.product is not None}


def reference_key(reference: str, keys: Mapping[str, dg.AssetKey] | None = None) -> dg.AssetKey:
    """The asset key of a product reference ``domain/name``: the producer's key when it is among
    ``keys`` (:func:`product_asset_keys`), else ``[domain, name]``."""
    path = str(reference).strip("/")
    found = (keys or {}).get(path)
    return found if found is not None else dg.AssetKey(path.split("/"))


def code_reference(file: str, line: int, label: str) -> dict[str, Any]:
    """``dagster/code_references`` metadata pointing at a YAML line."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)
        reference = dg.LocalFileCodeReference(file_path=os.path.abspath(file), line_number=max(line, 1),
                                              label=label)
        return {"dagster/code_references": dg.CodeReferencesMetadataValue(code_references=[reference])}
