"""Emit a planned net as Dagster ops, wired into a job or a graph-backed multi-asset.

* one op per step node, with an optional output per outbound arc (only fired arcs yield) and a
  ``result`` output (the step's result; metadata ``noetl/steps``: status and runs, plus CPU and
  peak memory);
* every node takes a fan-in list ``tokens`` of its inbound arcs, so an unfired branch is
  skipped without blocking a join, and the join runs once (skipped when no arc fired);
* a parallel loop is ``<step>__fan_out`` -> ``<step>`` mapped per item (or per chunk of
  ``loop.chunk_size`` items) -> ``<step>__collect``;
* a region (cycle) is one op running the region interpreter;
* the node holding ``start`` reads the run's workload overrides from its op config;
* a playbook with ``product:`` steps becomes a graph-backed multi-asset keyed ``[domain, name]``
  (other steps stay ops inside it), with its checks as asset checks and an asset job.
"""

from __future__ import annotations

import inspect
import json
import time
from typing import Any, Callable, Iterator, Mapping

import dagster as dg

from noetl_dagster.errors import Issue, PlaybookError, StepFailed
from noetl_dagster.playbook.catalog import PlaybookCatalog
from noetl_dagster.playbook.loader import product_references
from noetl_dagster.playbook.models import Playbook, ProductCheck, Step
from noetl_dagster.io.manager import ArrowRefIOManager
from noetl_dagster.resources.credentials import CredentialsResource
from noetl_dagster.core.secrets import redact
from noetl_dagster.runtime.context import Context
from noetl_dagster.runtime.deadline import StepTimedOut, deadline, enforceable
from noetl_dagster.runtime.keychain import Keychain
from noetl_dagster.runtime.products import as_table, evaluate_check
from noetl_dagster.runtime.region import MAX_REGION_STEPS, RegionFailed, run_region
from noetl_dagster.runtime.step import (ON_ERROR_MODES, Body, RunInfo, finish_step, loop_items, numeric_execution_id,
                            run_iteration, run_step)
from noetl_dagster.core.templates import TemplateFailure, condition, render_text, render_value
from noetl_dagster.translator import k8s, observe, subplaybooks
from noetl_dagster.planner import Net, Node, plan
from noetl_dagster.contract import (COLLECT_SUFFIX, COMPLETED_WITH_ERRORS, CPU_SECONDS_KEY, ERROR_KEY, ERROR_STEPS_TAG,
                        EXECUTION_ID_TAG, FAILED_STEP_KEY, FAN_OUT_SUFFIX, LOOP_CONTEXT_OUTPUT, LOOP_ITEMS_KEY,
                        LOOP_ITEMS_OUTPUT, LOOP_STEP_TAG, OUTCOME_TAG, PEAK_RSS_KEY, PLAYBOOK_TAG, REGION_TAG,
                        RESULT_OUTPUT, ROLE_TAG, RUN_OUTCOME, STATUS_KEY, STEP_TAG, STEPS_KEY, TIMEOUT_TAG,
                        TOOL_KEY, asset_graph_name)
from noetl_dagster.translator.translator import PlaybookTranslator, code_reference, reference_key

CREDENTIALS = "noetl_credentials"
CATALOG = "noetl_catalog"
RESOURCE_KEYS = frozenset({CREDENTIALS, CATALOG})
WORKLOAD_CONFIG = {
    "workload": dg.Field(
        dg.Permissive(), is_required=False, default_value={},
        description="Workload overrides, merged key by key over the playbook's `workload:`.",
    )
}


def default_resources(resources: Mapping[str, Any] | None = None,
                      catalog: PlaybookCatalog | None = None, *, io_manager: bool = False) -> dict[str, Any]:
    """The resources playbook ops use: ``noetl_credentials`` (env-backed by default),
    ``noetl_catalog`` (the playbooks a step may call as sub-playbooks) and, with ``io_manager``,
    an :class:`ArrowRefIOManager` (Arrow tables stored once as Parquet, passed by reference)."""
    defaults: dict[str, Any] = {
        CREDENTIALS: CredentialsResource(),
        CATALOG: dg.ResourceDefinition.hardcoded_resource(catalog or PlaybookCatalog(), "sub-playbooks")}
    if io_manager:
        defaults["io_manager"] = ArrowRefIOManager()
    return {**defaults, **(resources or {})}


def build_job(playbook: Playbook, translator: PlaybookTranslator | None = None,
              net: Net | None = None, resources: Mapping[str, Any] | None = None,
              catalog: PlaybookCatalog | None = None, on_error: str | None = None) -> dg.JobDefinition:
    """Compile a validated playbook into a standalone Dagster job (products are not assets here).

    ``resources`` replace the defaults of :func:`default_resources`, e.g.
    ``{"noetl_credentials": CredentialsResource(credentials={...})}``. ``on_error`` (``complete`` or
    ``fail``) overrides :meth:`PlaybookTranslator.get_on_error`.
    """
    emitter = _Emitter(playbook, translator or PlaybookTranslator(), net or plan(playbook), on_error)
    return emitter.job(default_resources(resources, catalog or PlaybookCatalog.of([playbook])))


def has_products(playbook: Playbook) -> bool:
    return any(step.product is not None for step in playbook.workflow)


def build_definitions(playbook: Playbook, translator: PlaybookTranslator | None = None,
                      net: Net | None = None, on_error: str | None = None,
                      product_keys: Mapping[str, dg.AssetKey] | None = None) -> dg.Definitions:
    """One playbook as definitions: a job, or (with products) assets, checks and an asset job,
    plus a schedule for ``metadata.schedule``. Resources are the caller's (see
    :func:`default_resources`). ``product_keys`` resolves the products it reads (``uses:``,
    ``product('domain/name')``) to their producers' asset keys
    (:func:`~noetl_dagster.translator.translator.product_asset_keys`); unknown ones are
    ``[domain, name]``."""
    translator = translator or PlaybookTranslator()
    emitter = _Emitter(playbook, translator, net or plan(playbook), on_error, product_keys)
    if not has_products(playbook):
        job: Any = emitter.job()
        return dg.Definitions(jobs=[job], schedules=_schedules(playbook, translator, job))
    assets = emitter.asset_graph()
    checks = [c for step in playbook.workflow if step.product for c in _checks(playbook, step, translator)]
    job = dg.define_asset_job(
        name=emitter.name,
        selection=dg.AssetSelection.assets(assets) | dg.AssetSelection.checks(*checks),
        description=translator.get_job_description(playbook),
        tags=translator.get_job_tags(playbook),
        metadata=translator.get_job_metadata(playbook),
        executor_def=translator.get_executor(playbook),
    )  # partitioned like its assets
    return dg.Definitions(assets=[assets], asset_checks=checks, jobs=[job],
                          schedules=_schedules(playbook, translator, job))


def workload_run_config(playbook: Playbook, net: Net, translator: PlaybookTranslator | None,
                        workload: Mapping[str, Any]) -> dict[str, Any]:
    """Run config that passes ``workload`` overrides to the entry op of the playbook's job."""
    entry = next(n for n in net.nodes if n.is_entry)
    op_name = f"{entry.name}{FAN_OUT_SUFFIX}" if entry.kind == "loop" else entry.name
    config: dict[str, Any] = {op_name: {"config": {"workload": dict(workload)}}}
    if has_products(playbook):
        config = {asset_graph_name((translator or PlaybookTranslator()).get_job_name(playbook)): {"ops": config}}
    return {"ops": config}


def _outcome(context, inputs):  # type: ignore[no-untyped-def]
    """The outcome asset's value: the final steps' results (steps can't be named ``outcome__``)."""
    yield dg.Output(list(inputs["results"]), RESULT_OUTPUT)


def _schedules(playbook: Playbook, translator: PlaybookTranslator, job: Any) -> list[dg.ScheduleDefinition]:
    cron = playbook.metadata.schedule
    if not cron:
        return []
    name = f"{translator.get_job_name(playbook)}__schedule"
    partitions = translator.get_partitions_def(playbook)
    stopped = dg.DefaultScheduleStatus.STOPPED
    if isinstance(partitions, dg.TimeWindowPartitionsDefinition):
        if playbook.metadata.partitions:  # daily: the loader checked the cron is `M H * * *`
            minute, hour = (int(field) for field in cron.split()[:2])
            return [dg.build_schedule_from_partitioned_job(job, name=name, minute_of_hour=minute, hour_of_day=hour,
                                                           default_status=stopped)]
        # a translator's time partitions: one run per new partition, at the partitions' cadence
        return [dg.build_schedule_from_partitioned_job(job, name=name, default_status=stopped)]
    if partitions is not None:  # a translator's static partitions: every partition at each cron tick
        keys = partitions

        def every_partition(context):  # type: ignore[no-untyped-def]
            return [dg.RunRequest(run_key=f"{context.scheduled_execution_time}:{key}", partition_key=key)
                    for key in keys.get_partition_keys(
                dynamic_partitions_store=context.instance)]

        return [dg.schedule(job=job, cron_schedule=cron, name=name, default_status=stopped)(every_partition)]
    return [dg.ScheduleDefinition(name=name, job=job, cron_schedule=cron,
                                  default_status=dg.DefaultScheduleStatus.STOPPED)]


def product_key(playbook: Playbook, step: Step, translator: PlaybookTranslator | None = None) -> dg.AssetKey:
    """The asset key of a product step (:meth:`PlaybookTranslator.get_asset_key`)."""
    return (translator or PlaybookTranslator()).get_asset_key(playbook, step)


def _checks(playbook: Playbook, step: Step, translator: PlaybookTranslator) -> list[dg.AssetChecksDefinition]:
    """The product's checks, each from :meth:`PlaybookTranslator.get_asset_check_spec`."""
    return [_check_definition(translator.get_asset_check_spec(playbook, step, check), check)
            for check in step.product.checks]  # type: ignore[union-attr]


def _check_definition(spec: dg.AssetCheckSpec, check: ProductCheck) -> dg.AssetChecksDefinition:
    """An asset check evaluating ``check`` on the product, as ``spec`` names and describes it
    (a blocking spec fails with severity ERROR, others WARN)."""
    severity = dg.AssetCheckSeverity.ERROR if spec.blocking else dg.AssetCheckSeverity.WARN
    partitions = spec.partitions_def

    def run_check(context, product):  # type: ignore[no-untyped-def]
        current = check
        if check.sql and partitions is not None:  # `{{ partition_key }}` in the SQL of a partitioned product
            current = check.model_copy(update={"sql": render_text(check.sql, {"partition_key": context.partition_key})})
        passed, metadata = evaluate_check(current, product)
        return dg.AssetCheckResult(passed=passed, metadata=metadata, severity=severity)

    return dg.asset_check(asset=spec.asset_key, name=spec.name, blocking=spec.blocking,
                          description=spec.description, metadata=spec.metadata or None,
                          additional_deps=spec.additional_deps or None,
                          partitions_def=partitions)(run_check)  # a partitioned product: per partition


def _product_function(io_manager: Any, keys: Mapping[str, dg.AssetKey] | None = None) -> Callable[[str], Any]:
    """``product('domain/name')`` in templates: the latest stored product, as an ArrowRef
    (renders as ``read_parquet('...')`` inside SQL text; a lone expression passes the ref).
    ``keys`` resolves a reference to its producer's asset key (a translator may change it)."""

    def product(path: str) -> Any:
        if not isinstance(io_manager, ArrowRefIOManager):
            raise StepFailed("product()", f"reading product {path!r} needs the ArrowRefIOManager as io_manager")
        try:
            return io_manager.load_asset_ref(reference_key(path, keys))
        except (FileNotFoundError, ValueError) as exc:
            raise StepFailed("product()", f"product {path!r} has no stored data yet ({exc}); "
                                          "materialize its playbook first") from None

    return product


def usage_metadata(run: RunInfo) -> dict[str, Any]:
    """CPU seconds the op used and its memory, measured per step (:mod:`.observe`)."""
    return observe.usage_metadata(run.cpu_start)


def _with_deadline(fn: Callable[..., Any], step: str, seconds: float) -> Callable[..., Any]:
    """``fn`` (an op's compute generator) failing ``step`` once its own code has run ``seconds``.

    The timer runs only while the generator computes, never while Dagster stores a yielded
    output, so the alarm always surfaces here as a ``dg.Failure`` (and the retry policy applies).
    """

    def compute(context, inputs):  # type: ignore[no-untyped-def]
        if not enforceable():
            context.log.warning(f"{TIMEOUT_TAG}={seconds:g} is not enforced outside the main thread")
        outputs, left = fn(context, inputs), seconds
        while True:
            started = time.monotonic()
            try:
                with deadline(max(left, 0.001)):
                    output = next(outputs)
            except StopIteration:
                return
            except StepTimedOut:
                outputs.close()
                raise _failure(StepFailed(step, str(StepTimedOut(seconds)))) from None
            left -= time.monotonic() - started
            yield output

    return compute


def _failure(exc: StepFailed, steps: Mapping[str, Mapping[str, Any]] | None = None) -> dg.Failure:
    metadata: dict[str, Any] = {FAILED_STEP_KEY: exc.step}
    if exc.kind:
        metadata[TOOL_KEY] = exc.kind
    if steps is not None:
        metadata[STEPS_KEY] = dg.MetadataValue.json(dict(steps))
    return dg.Failure(description=redact(str(exc)), metadata=metadata, allow_retries=True)


def _step_meta(status: str, runs: int, error: str | None) -> dict[str, Any]:
    meta: dict[str, Any] = {"status": status, "runs": runs}
    if error is not None:
        meta["error"] = redact(error)
    return meta


def _retry_wait(policy: dg.RetryPolicy, retry_number: int) -> float:
    delay = float(policy.delay or 0)
    if policy.backoff == dg.Backoff.EXPONENTIAL:
        return delay * (2 ** retry_number)
    if policy.backoff == dg.Backoff.LINEAR:
        return delay * (retry_number + 1)
    return delay


def _retry_error_result(context, step: str, error: str | None,  # type: ignore[no-untyped-def]
                        retry: dg.RetryPolicy | None) -> None:
    """An error result retries the op while its retry policy has attempts left (Dagster shows
    STEP_UP_FOR_RETRY); once they are spent the step completes with the last error result."""
    if retry is not None and context.retry_number < retry.max_retries:
        message = redact(error or "error result")
        context.log.warning(f"step '{step}' returned an error result (attempt {context.retry_number + 1} of "
                            f"{retry.max_retries + 1}), retrying: {message}")
        raise dg.RetryRequested(max_retries=retry.max_retries,
                                seconds_to_wait=_retry_wait(retry, context.retry_number))


def _error_result(context, step: str, error: str | None,  # type: ignore[no-untyped-def]
                  retry: dg.RetryPolicy | None) -> str:
    """A step completed with an error result: retry it while the policy allows, else log it at
    ERROR and tag the run ``noetl/outcome: completed_with_errors`` and ``noetl/error_steps``."""
    _retry_error_result(context, step, error, retry)
    message = redact(error or "error result")
    context.log.error(f"step '{step}' completed with an error result: {message}")
    run = context.instance.get_run_by_id(context.run_id)
    seen = (run.tags.get(ERROR_STEPS_TAG) or "").split(",") if run is not None else []
    steps = ",".join(dict.fromkeys([s for s in seen if s] + [step]))
    context.instance.add_run_tags(context.run_id, {OUTCOME_TAG: COMPLETED_WITH_ERRORS, ERROR_STEPS_TAG: steps})
    return message


def _with_params(fn: Callable[..., Any], names: list[str]) -> Callable[..., Any]:
    """Give ``fn(**kwargs)`` an explicit signature: Dagster reads graph inputs from it."""
    fn.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in names])
    return fn


class _Emitter:
    """Builds the ops of one playbook and wires them; op definition names are prefixed with the
    job name (unique in a code location) while graph nodes keep the step names."""

    def __init__(self, playbook: Playbook, translator: PlaybookTranslator, net: Net,
                 on_error: str | None = None, product_keys: Mapping[str, dg.AssetKey] | None = None) -> None:
        self.playbook = playbook
        self.translator = translator
        self.net = net
        self.on_error = on_error or translator.get_on_error(playbook)
        if self.on_error not in ON_ERROR_MODES:
            raise PlaybookError([Issue(playbook.file, playbook.metadata.line or 1, 1,
                                       f"on_error {self.on_error!r} is not one of {', '.join(ON_ERROR_MODES)}",
                                       field="metadata.dagster.on_error", hint="complete (NoETL) or fail (strict)")])
        self.name = translator.get_job_name(playbook)
        self.uses = product_references(playbook)
        self.product_keys = dict(product_keys or {})
        self.ops = {node.name: self._node_ops(node) for node in net.nodes}

    # -- wiring ---------------------------------------------------------------------------
    def job(self, resource_defs: Mapping[str, Any] | None = None) -> dg.JobDefinition:
        description = self.translator.get_job_description(self.playbook)
        def compose() -> None:
            self._wire({})

        graph = dg.graph(name=self.name, description=description)(compose)
        return graph.to_job(name=self.name, description=description,
                            tags=self.translator.get_job_tags(self.playbook),
                            metadata=self.translator.get_job_metadata(self.playbook),
                            executor_def=self.translator.get_executor(self.playbook),
                            partitions_def=self.translator.get_partitions_def(self.playbook),
                            resource_defs=dict(resource_defs or {}))

    def asset_graph(self) -> dg.AssetsDefinition:
        products = [s for s in self.playbook.workflow if s.product is not None]
        domain = self.translator.get_domain(self.playbook)
        partitions = self.translator.get_partitions_def(self.playbook)
        outs, groups = {}, {}
        for step in products:
            assert step.product is not None
            spec = self.translator.get_asset_spec(self.playbook, step)
            # the graph's inputs carry the products it reads, and its partitions are the playbook's
            outs[step.product.name] = dg.AssetOut.from_spec(spec.replace_attributes(deps=[], partitions_def=None),
                                                            is_required=False)
            groups[spec.key] = spec.group_name
        ins = {f"uses_{i}": dg.AssetIn(key=reference_key(path, self.product_keys), dagster_type=dg.Nothing)
               for i, path in enumerate(self.uses)}

        product_nodes = {self.net.node_of_step[s.step] for s in products}
        leaves = [n.name for n in self.net.nodes if not n.outbound and n.name not in product_nodes]
        if leaves:  # Dagster wants every leaf of an asset graph to produce an asset: the run outcome
            outs[RUN_OUTCOME] = dg.AssetOut(
                key=dg.AssetKey([domain, f"{self.playbook.metadata.name}__outcome"]),
                description=f"What the final steps of {self.playbook.metadata.catalog_path} "
                            f"({', '.join(leaves)}) returned in the latest run.",
                kinds={"noetl"}, is_required=False,
                metadata={**code_reference(self.playbook.file, 1, "playbook"),
                          PLAYBOOK_TAG: self.playbook.metadata.catalog_path})
            groups[outs[RUN_OUTCOME].key] = domain
            outcome = self._op(RUN_OUTCOME, _outcome, ins={"results": dg.In(list)},
                               outs={RESULT_OUTPUT: dg.Out(is_required=False)},
                               description="Collects the results of the playbook's final steps.",
                               tags={ROLE_TAG: "outcome"})

        def compose(**uses: Any) -> dict[str, Any]:
            handles = self._wire(uses)
            assets = {s.product.name: handles[self.net.node_of_step[s.step]][RESULT_OUTPUT]  # type: ignore[union-attr]
                      for s in products}
            if leaves:
                assets[RUN_OUTCOME] = outcome(results=[handles[name][RESULT_OUTPUT] for name in leaves])
            return assets

        shared = set(groups.values())
        assets = dg.graph_multi_asset(name=asset_graph_name(self.name), outs=outs, ins=ins,
                                      group_name=shared.pop() if len(shared) == 1 else None,
                                      partitions_def=partitions)(_with_params(compose, list(ins)))
        if len(set(groups.values())) > 1:  # a graph-backed multi-asset takes one group: set each spec's
            assets = assets.map_asset_specs(lambda spec: spec.replace_attributes(group_name=groups[spec.key]))
        return assets

    def _wire(self, uses: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        handles: dict[str, dict[str, Any]] = {}
        for node in self.net.nodes:
            kwargs: dict[str, Any] = {}
            inputs = [handles[self.net.node_of_step[a.source]][a.output] for a in node.inbound]
            if inputs:
                kwargs["tokens"] = inputs
            if node.is_entry:
                kwargs.update(uses)
            ops = self.ops[node.name]
            if node.kind == "loop":
                fan_out, body, collect = ops
                context, items = fan_out(**kwargs)
                outs = collect(loop_context=context, results=items.map(body).collect())
            else:
                outs = ops[0](**kwargs)
            handles[node.name] = outs._asdict() if hasattr(outs, "_asdict") else {RESULT_OUTPUT: outs}
        return handles

    # -- ops ------------------------------------------------------------------------------
    def _op(self, local: str, fn: Callable[..., Any], *, ins: Mapping[str, dg.In], outs: Mapping[str, Any],
            config: Any = None, **kwargs: Any) -> Any:
        keys = set(RESOURCE_KEYS) | ({"io_manager"} if self.uses else set())
        tags = kwargs.get("tags") or {}
        timeout = kwargs.pop("timeout", None) or 0
        step = self.playbook.steps.get(tags.get(STEP_TAG, "")) if REGION_TAG not in tags else None
        fn = observe.measured(fn, observe.diagnoser(step, self._start) if step is not None else None)
        if timeout > 0:
            fn = _with_deadline(fn, tags.get(STEP_TAG, local), timeout)
        definition = dg.OpDefinition(
            compute_fn=fn, name=f"{self.name}__{local}",
            ins=dict(ins), outs=dict(outs), config_schema=config, required_resource_keys=keys, **kwargs)
        return definition.alias(local)

    def _common(self, step: Step, extra_description: str = "") -> dict[str, Any]:
        tags = self.translator.get_op_tags(self.playbook, step)
        timeout = self._timeout(step, tags)
        if timeout:
            tags = {**tags, TIMEOUT_TAG: f"{timeout:g}"}  # information: the op enforces it itself
        return {"description": self.translator.get_op_description(self.playbook, step) + extra_description,
                "tags": tags, "retry_policy": self.translator.get_retry_policy(self.playbook, step),
                "timeout": timeout}

    def _timeout(self, step: Step, tags: Mapping[str, str]) -> float | None:
        """:meth:`PlaybookTranslator.get_op_timeout`, checked (a number of seconds > 0, or None)."""
        def problem(message: str, hint: str) -> PlaybookError:
            return PlaybookError([Issue(self.playbook.file, step.line, 1, message, step.step, "timeout", hint)])

        if TIMEOUT_TAG in tags:  # the old side channel: say so rather than ignore it
            raise problem(f"the translator's get_op_tags sets {TIMEOUT_TAG}; the op timeout now comes from "
                          "get_op_timeout", "override get_op_timeout(playbook, step) to return the seconds")
        value = self.translator.get_op_timeout(self.playbook, step)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise problem(f"the translator's get_op_timeout returned {value!r}",
                          "return a number of seconds > 0, or None for no limit")
        return float(value)

    def _ins(self, node: Node) -> dict[str, dg.In]:
        ins: dict[str, dg.In] = {}
        if node.inbound:
            ins["tokens"] = dg.In(list, description="tokens of the inbound arcs that fired")
        if node.is_entry:
            ins.update({f"uses_{i}": dg.In(dg.Nothing, description=f"after product {p}")
                        for i, p in enumerate(self.uses)})
        return ins

    def _outs(self, node: Node, step: Step) -> dict[str, Any]:
        outs: dict[str, Any] = {RESULT_OUTPUT: dg.Out(
            is_required=False, description=f"result of {', '.join(node.steps)}",
            metadata=code_reference(self.playbook.file, step.line, f"step {step.step}"))}
        for arc in node.outbound:
            outs[arc.output] = dg.Out(is_required=False, description=f"token {arc.source} -> {arc.target}")
        return outs

    def _start(self, context, inputs: Mapping[str, Any]) -> Context:  # type: ignore[no-untyped-def]
        tokens = inputs.get("tokens")
        if tokens is not None:
            return Context.merge(tokens)
        overrides = (context.op_config or {}).get("workload") or {}
        context.instance.add_run_tags(context.run_id, {EXECUTION_ID_TAG: str(numeric_execution_id(context.run_id))})
        return Context.initial({**self.playbook.workload, **overrides})

    def _run_info(self, context, workload: Mapping[str, Any]) -> RunInfo:  # type: ignore[no-untyped-def]
        credentials = getattr(context.resources, CREDENTIALS)
        globals_: dict[str, Any] = {"keychain": Keychain(self.playbook.keychain, credentials, workload)}
        if context.has_partition_key:
            globals_["partition_key"] = context.partition_key
        if self.uses:
            globals_["product"] = _product_function(context.resources.io_manager, self.product_keys)
        return RunInfo(execution_id=numeric_execution_id(context.run_id), run_id=context.run_id,
                       run_playbook=subplaybooks.runner(), run_k8s_job=k8s.job_runner(context),
                       on_error=self.on_error, log=context.log, globals=globals_, resources={
            "credentials": credentials, "catalog": getattr(context.resources, CATALOG),
            "instance": context.instance, "dagster_resources": {CREDENTIALS: credentials}})

    def _emit(self, context, node: Node, run: RunInfo, result: Any,  # type: ignore[no-untyped-def]
              steps_meta: dict[str, dict[str, Any]], tokens: list[tuple[str, dict[str, Any]]],
              publish: bool = True, errors: Mapping[str, str] | None = None) -> Iterator[dg.Output]:
        """The ``result`` output, then the fired tokens. Inside an asset graph a non-product
        step's ``result`` is not selected (nothing consumes it), so its status metadata rides on
        the first token instead (the run report reads it from there). A step that completed with
        an error result adds ``noetl/status: error`` and ``noetl/error`` to that metadata."""
        metadata = {STEPS_KEY: dg.MetadataValue.json(steps_meta), **usage_metadata(run)}
        if errors:
            metadata[STATUS_KEY] = "error"
            metadata[ERROR_KEY] = dg.MetadataValue.md("\n\n".join(
                f"**{name}**: {message}" for name, message in errors.items()))
        if publish and RESULT_OUTPUT in context.selected_output_names:
            yield dg.Output(result, RESULT_OUTPUT, metadata=metadata)
            metadata = {}
        for output, token in tokens:
            yield dg.Output(token, output, metadata=metadata)
            metadata = {}

    def _step_outputs(self, context, node: Node, step: Step, run: RunInfo,  # type: ignore[no-untyped-def]
                      outcome: Any, retry: dg.RetryPolicy | None = None) -> Iterator[dg.Output]:
        names = {(a.source, a.index): a.output for a in node.outbound}
        errors = {}
        if outcome.status == "error":  # name a misspelt template variable behind the error
            outcome.error = observe.with_undefined(step, outcome.error, outcome.context.scope(
                run.execution_id, run.globals))
            errors[step.step] = _error_result(context, step.step, outcome.error, retry)
        tokens = [(names[(step.step, i)], outcome.context.token(arc.step, arc_set)) for i, arc, arc_set in outcome.fired]
        value = outcome.result
        if step.product is not None and step.product.kind != "file" and outcome.status == "success":
            table = as_table(value)  # once: a record batch reader can be read only once
            value = value if table is None else table
        meta = {step.step: _step_meta(outcome.status, outcome.runs, outcome.error)}
        publish = outcome.status == "success" or (outcome.status == "error" and step.product is None)
        context.log.info(observe.step_line(step, outcome.status, outcome.result, outcome.fired, runs=outcome.runs,
                                           render=lambda v: render_value(v, outcome.context.scope(
                                               run.execution_id, run.globals))))
        yield from self._emit(context, node, run, value, meta, tokens, publish=publish, errors=errors)

    def _node_ops(self, node: Node) -> tuple[Any, ...]:
        first = self.playbook.steps[node.steps[0]]
        config = observe.workload_config(self.playbook.workload, WORKLOAD_CONFIG) if node.is_entry else None
        if node.kind == "region":
            return (self._region_op(node, config),)
        if node.kind == "loop":
            return self._loop_ops(node, first, config)
        step = first
        common = self._common(step)
        retry = common["retry_policy"]

        def compute(context, inputs):  # type: ignore[no-untyped-def]
            start = self._start(context, inputs)
            run = self._run_info(context, start.workload)
            try:
                outcome = run_step(step, start, run)
            except StepFailed as exc:
                raise _failure(exc) from None
            yield from self._step_outputs(context, node, step, run, outcome, retry)

        return (self._op(node.name, compute, ins=self._ins(node), outs=self._outs(node, step), config=config,
                         **common),)

    def _region_op(self, node: Node, config: Any) -> Any:
        members = {name: self.playbook.steps[name] for name in node.steps}
        entry_step = members.get(node.name) or members[node.steps[0]]
        limit = self.playbook.metadata.dagster.max_iterations or MAX_REGION_STEPS
        names = {(a.source, a.index): a.output for a in node.outbound}
        common = self._common(entry_step, f"\n\nCycle over steps: {', '.join(node.steps)}")
        common["tags"] = {**common["tags"], REGION_TAG: ",".join(node.steps)}

        def compute(context, inputs):  # type: ignore[no-untyped-def]
            tokens = inputs.get("tokens")
            if tokens is None:
                entries = [("start", self._start(context, inputs))]
            else:
                by_target: dict[str, list] = {}
                for token in tokens:
                    by_target.setdefault(token["to"], []).append(token)
                entries = [(target, Context.merge(group)) for target, group in by_target.items()]
            run = self._run_info(context, entries[0][1].workload)
            try:
                outcome = run_region(members, entries, run, limit)
            except RegionFailed as exc:
                raise _failure(exc, {k: {"status": r.status, "runs": r.runs} for k, r in exc.records.items()}) from None
            meta = {k: _step_meta(r.status, r.runs, r.error) for k, r in outcome.records.items()}
            results = {k: r.result for k, r in outcome.records.items() if r.status in ("success", "error")}
            errors = {k: _error_result(context, k, r.error, None) for k, r in outcome.records.items()
                      if r.status == "error"}
            fired = [(names[key], token) for key, token in outcome.exits.items()]
            for line in observe.region_lines(members, outcome.records, [key for key in outcome.exits]):
                context.log.info(line)
            yield from self._emit(context, node, run, results, meta, fired, errors=errors)

        return self._op(node.name, compute, ins=self._ins(node), outs=self._outs(node, entry_step), config=config,
                        **common)

    def _loop_ops(self, node: Node, step: Step, config: Any) -> tuple[Any, ...]:
        """``<step>__fan_out`` (one mapped output per chunk of ``get_loop_chunk_size`` consecutive
        items; mapping key ``i00003`` for one item, ``i00000_i00007`` for a chunk) -> ``<step>`` (the
        chunk's iterations in order) -> ``<step>__collect`` (every iteration in item order)."""
        common = self._common(step)
        chunk_size = self.translator.get_loop_chunk_size(self.playbook, step)
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise PlaybookError([Issue(self.playbook.file, step.line, 1, f"the translator's get_loop_chunk_size "
                                       f"returned {chunk_size!r}", step.step, "loop.chunk_size",
                                       "return a whole number >= 1")])

        def fan_out(context, inputs):  # type: ignore[no-untyped-def]
            start = self._start(context, inputs)
            run = self._run_info(context, start.workload)
            scope = start.scope(run.execution_id, run.globals)
            try:
                guarded = step.when is not None and not condition(step.when, scope)
                items = [] if guarded else loop_items(step, scope)
            except TemplateFailure as exc:
                raise _failure(StepFailed(step.step, f"when: {exc}")) from None
            except StepFailed as exc:
                raise _failure(exc) from None
            token = start.token(step.step, start.arc)
            yield dg.Output({"token": token, "skipped": guarded, "total": len(items)}, LOOP_CONTEXT_OUTPUT)
            for first in range(0, len(items), chunk_size):
                chunk = items[first:first + chunk_size]
                key = f"i{first:05d}" if chunk_size == 1 else f"i{first:05d}_i{first + len(chunk) - 1:05d}"
                yield dg.DynamicOutput({"token": token, "items": chunk, "first": first, "total": len(items)},
                                       mapping_key=key, output_name=LOOP_ITEMS_OUTPUT)

        retry = common["retry_policy"]

        def body(context, inputs):  # type: ignore[no-untyped-def]
            work = inputs["work"]
            run = self._run_info(context, work["token"]["workload"])
            start = Context.merge([work["token"]])
            results = []
            try:
                for offset, item in enumerate(work["items"]):
                    result = run_iteration(step, start, run, item, work["first"] + offset, work["total"])
                    if result.error is not None and self.on_error == "fail":
                        raise StepFailed(step.step, f"iteration {work['first'] + offset}: {result.error}")
                    results.append({"value": result.value, "ctx_updates": result.ctx_updates, "error": result.error})
            except StepFailed as exc:
                raise _failure(exc) from None
            failed = [r["error"] for r in results if r["error"] is not None]
            if failed:
                _retry_error_result(context, step.step, failed[0], retry)
            yield dg.Output(results, RESULT_OUTPUT, metadata={LOOP_ITEMS_KEY: len(results), **usage_metadata(run)})

        def collect(context, inputs):  # type: ignore[no-untyped-def]
            loop_context, chunks = inputs[LOOP_CONTEXT_OUTPUT], inputs["results"]
            start = Context.merge([loop_context["token"]])
            run = self._run_info(context, start.workload)
            try:
                if loop_context["skipped"]:
                    outcome = run_step(step, start, run)  # the guard is false again: skip-through
                else:
                    bodies = [Body(r["value"], r["ctx_updates"], r.get("error")) for chunk in chunks for r in chunk]
                    outcome = finish_step(step, start, run, bodies)
            except StepFailed as exc:
                raise _failure(exc) from None
            yield from self._step_outputs(context, node, step, run, outcome)

        per = "item" if chunk_size == 1 else f"chunk of {chunk_size} consecutive items"
        fan_op = self._op(
            f"{node.name}{FAN_OUT_SUFFIX}", fan_out, ins=self._ins(node), config=config,
            outs={LOOP_CONTEXT_OUTPUT: dg.Out(description="the loop's input context"),
                  LOOP_ITEMS_OUTPUT: dg.DynamicOut(description=f"one output per loop {per}")},
            description=f"Evaluate `loop.in` of `{step.step}` and fan out its items (one op per {per}).",
            tags={**common["tags"], ROLE_TAG: "loop-fan-out"}, timeout=common["timeout"])
        body_op = self._op(node.name, body, ins={"work": dg.In(dict)}, outs={RESULT_OUTPUT: dg.Out(list)},
                           **{**common, "tags": {**common["tags"], LOOP_STEP_TAG: step.step}})
        collect_op = self._op(
            f"{node.name}{COLLECT_SUFFIX}", collect, ins={LOOP_CONTEXT_OUTPUT: dg.In(dict), "results": dg.In(list)},
            outs=self._outs(node, step),
            description=f"Aggregate `{step.step}` iterations in item order, apply `set`, route.",
            tags={**common["tags"], ROLE_TAG: "loop-collect"}, timeout=common["timeout"])
        return fan_op, body_op, collect_op


def steps_metadata(event_metadata: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Read ``noetl/steps`` back from an output or failure event's metadata."""
    value = event_metadata.get(STEPS_KEY)
    if value is None:
        return {}
    data = getattr(value, "value", value)
    return json.loads(data) if isinstance(data, str) else dict(data)
