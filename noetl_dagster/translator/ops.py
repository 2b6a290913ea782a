"""The op bodies of a planned net: what each Dagster op computes (wired by :mod:`.emit`).

* a step node: guard, tool or pipeline, ``set``, routing (:func:`~noetl_dagster.runtime.step.run_step`);
  its ``result`` output, then one token per fired arc, each carrying the names the plan keeps
  (:attr:`~noetl_dagster.planner.ArcPlan.carry`);
* a parallel loop: ``<step>__fan_out`` -> ``<step>`` per item (or chunk) -> ``<step>__collect``;
* a region (cycle): the region interpreter;
* the entry node reads the run's workload overrides from its op config.

:class:`OpFactory` builds the ``OpDefinition`` s of one playbook; op definition names are
prefixed with the job name (unique in a code location), graph nodes keep the step names.
"""

from __future__ import annotations

import json
import time
from typing import Any, Callable, Iterator, Mapping

import dagster as dg

from noetl_dagster.contract import (COLLECT_SUFFIX, COMPLETED_WITH_ERRORS, ERROR_KEY, ERROR_STEPS_TAG,
                                    EXECUTION_ID_TAG, FAILED_STEP_KEY, FAN_OUT_SUFFIX, LOOP_CONTEXT_OUTPUT,
                                    LOOP_ITEMS_KEY, LOOP_ITEMS_OUTPUT, LOOP_STEP_TAG, OUTCOME_TAG, REGION_TAG,
                                    RESULT_OUTPUT, ROLE_TAG, STATUS_KEY, STEP_TAG, STEPS_KEY, TIMEOUT_TAG, TOOL_KEY)
from noetl_dagster.core.secrets import redact
from noetl_dagster.core.templates import TemplateFailure, condition, render_text, render_value
from noetl_dagster.errors import Issue, PlaybookError, StepFailed
from noetl_dagster.io.manager import ArrowRefIOManager
from noetl_dagster.planner import Net, Node
from noetl_dagster.playbook.loader import product_references
from noetl_dagster.playbook.models import Playbook, ProductCheck, Step
from noetl_dagster.runtime.cursor import MAX_FRAMES
from noetl_dagster.runtime.context import Context, trimmed
from noetl_dagster.runtime.deadline import StepTimedOut, deadline, enforceable
from noetl_dagster.runtime.keychain import Keychain
from noetl_dagster.runtime.products import as_table, evaluate_check
from noetl_dagster.runtime.region import MAX_REGION_STEPS, RegionFailed, run_region
from noetl_dagster.runtime.step import (ON_ERROR_MODES, Body, RunInfo, finish_step, loop_items,
                                        numeric_execution_id, run_iteration, run_step)
from noetl_dagster.translator import k8s, observe, subplaybooks
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


#: shared by every op: Dagster resolves an ``In``'s type once per object, not once per op
TOKENS_IN = dg.In(list, description="tokens of the inbound arcs that fired")
WORK_IN = dg.In(dict)
LOOP_CONTEXT_IN = dg.In(dict)
LOOP_RESULTS_IN = dg.In(list)


def _outcome(context, inputs):  # type: ignore[no-untyped-def]
    """The outcome asset's value: the final steps' results (steps can't be named ``outcome__``)."""
    yield dg.Output(list(inputs["results"]), RESULT_OUTPUT)


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


class OpFactory:
    """Builds the op definitions of one playbook's net: :attr:`ops` maps each node to its ops
    (one, or fan-out, body and collect for a parallel loop), named ``<job>__<node>``."""

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
        return dg.OpDefinition(
            compute_fn=fn, name=f"{self.name}__{local}",
            ins=dict(ins), outs=dict(outs), config_schema=config, required_resource_keys=keys, **kwargs)

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
            ins["tokens"] = TOKENS_IN
        if node.is_entry:
            ins.update({f"uses_{i}": dg.In(dg.Nothing, description=f"after product {p}")
                        for i, p in enumerate(self.uses)})
        return ins

    def _outs(self, node: Node, step: Step) -> dict[str, Any]:
        outs: dict[str, Any] = {RESULT_OUTPUT: dg.Out(  # `dg.Any` given: Dagster need not infer it
            dg.Any, is_required=False, description=f"result of {', '.join(node.steps)}",
            metadata=code_reference(self.playbook.file, step.line, f"step {step.step}"))}
        for arc in node.outbound:
            outs[arc.output] = dg.Out(dg.Any, is_required=False, description=f"token {arc.source} -> {arc.target}")
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
                       max_frames=self.playbook.metadata.dagster.max_iterations or MAX_FRAMES,
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
        names = {(a.source, a.index): (a.output, a.carry) for a in node.outbound}
        errors = {}
        if outcome.status == "error":  # name a misspelt template variable behind the error
            outcome.error = observe.with_undefined(step, outcome.error, outcome.context.scope(
                run.execution_id, run.globals))
            errors[step.step] = _error_result(context, step.step, outcome.error, retry)
        tokens = [(names[(step.step, i)][0], outcome.context.token(arc.step, arc_set, names[(step.step, i)][1]))
                  for i, arc, arc_set in outcome.fired]
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
        names = {(a.source, a.index): (a.output, a.carry) for a in node.outbound}
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
            fired = [(names[key][0], trimmed(token, names[key][1])) for key, token in outcome.exits.items()]
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
        body_op = self._op(node.name, body, ins={"work": WORK_IN}, outs={RESULT_OUTPUT: dg.Out(list)},
                           **{**common, "tags": {**common["tags"], LOOP_STEP_TAG: step.step}})
        collect_op = self._op(
            f"{node.name}{COLLECT_SUFFIX}", collect, ins={LOOP_CONTEXT_OUTPUT: LOOP_CONTEXT_IN, "results": LOOP_RESULTS_IN},
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
