"""Emit a planned net as Dagster ops wired into a job.

* one op per step node, with an optional output per outbound arc (only fired arcs yield) and a
  required ``result`` output (the step's result, ``noetl/steps`` metadata: status and runs);
* every node takes a fan-in list ``tokens`` of its inbound arcs, so an unfired branch is
  skipped without blocking a join, and the join runs once (skipped when no arc fired);
* a parallel loop is ``<step>__fan_out`` -> ``<step>`` mapped per item -> ``<step>__collect``;
* a region (cycle) is one op running the region interpreter;
* the node holding ``start`` reads the run's workload overrides from its op config.
"""

from __future__ import annotations

import json
import resource
import time
from typing import Any, Iterator, Mapping

import dagster as dg

from ..errors import StepFailed
from ..playbook.catalog import PlaybookCatalog
from ..playbook.models import Playbook, Step
from ..resources.credentials import CredentialsResource, redact
from ..runtime.context import Context
from ..runtime.region import MAX_REGION_STEPS, RegionFailed, run_region
from ..runtime.step import Body, RunInfo, finish_step, loop_items, run_iteration, run_step
from ..runtime.templates import TemplateFailure, condition
from .plan import Net, Node, plan
from .translator import PlaybookTranslator, code_reference

RESULT = "result"
CREDENTIALS = "noetl_credentials"
CATALOG = "noetl_catalog"
RESOURCE_KEYS = frozenset({CREDENTIALS, CATALOG})
STEPS_KEY = "noetl/steps"
WORKLOAD_CONFIG = {
    "workload": dg.Field(
        dg.Permissive(), is_required=False, default_value={},
        description="Workload overrides, merged key by key over the playbook's `workload:`.",
    )
}


def default_resources(resources: Mapping[str, Any] | None = None,
                      catalog: PlaybookCatalog | None = None) -> dict[str, Any]:
    """The resources playbook ops use: ``noetl_credentials`` (env-backed by default) and
    ``noetl_catalog`` (the playbooks a step may call as sub-playbooks)."""
    return {CREDENTIALS: CredentialsResource(),
            CATALOG: dg.ResourceDefinition.hardcoded_resource(catalog or PlaybookCatalog(), "sub-playbooks"),
            **(resources or {})}


def build_job(playbook: Playbook, translator: PlaybookTranslator | None = None,
              net: Net | None = None, resources: Mapping[str, Any] | None = None,
              catalog: PlaybookCatalog | None = None) -> dg.JobDefinition:
    """Compile a validated playbook into a Dagster job.

    ``resources`` replace the defaults of :func:`default_resources`, e.g.
    ``{"noetl_credentials": CredentialsResource(credentials={...})}``.
    """
    translator = translator or PlaybookTranslator()
    net = net or plan(playbook)
    name = translator.get_job_name(playbook)
    # op definition names must be unique in a code location; graph nodes keep the step names
    ops = {node.name: tuple(op.alias(op.name.removeprefix(f"{name}__"))
                            for op in _node_ops(playbook, node, translator, name))
           for node in net.nodes}

    def compose() -> None:
        handles: dict[str, dict[str, Any]] = {}
        for node in net.nodes:
            inputs = [handles[net.node_of_step[a.source]][a.output] for a in node.inbound]
            kwargs = {"tokens": inputs} if inputs else {}
            if node.kind == "loop":
                fan_out, body, collect = ops[node.name]
                context, items = fan_out(**kwargs)
                outs = collect(loop_context=context, results=items.map(body).collect())
            else:
                (op,) = ops[node.name]
                outs = op(**kwargs)
            handles[node.name] = outs._asdict() if hasattr(outs, "_asdict") else {RESULT: outs}

    graph = dg.graph(name=name, description=translator.get_job_description(playbook))(compose)
    return graph.to_job(
        name=name,
        description=translator.get_job_description(playbook),
        tags=translator.get_job_tags(playbook),
        metadata=translator.get_job_metadata(playbook),
        executor_def=translator.get_executor(playbook),
        resource_defs=default_resources(resources, catalog or PlaybookCatalog.of([playbook])),
    )


def _outs(playbook: Playbook, node: Node, step: Step, translator: PlaybookTranslator) -> dict[str, dg.Out]:
    outs = {RESULT: dg.Out(description=f"result of {', '.join(node.steps)}",
                           metadata=code_reference(playbook.file, step.line, f"step {step.step}"))}
    for arc in node.outbound:
        outs[arc.output] = dg.Out(is_required=False, description=f"token {arc.source} -> {arc.target}")
    return outs


def _ins(node: Node) -> dict[str, dg.In]:
    if not node.inbound:
        return {}
    return {"tokens": dg.In(list, description="tokens of the inbound arcs that fired")}


def _run_info(context) -> RunInfo:
    credentials = getattr(context.resources, CREDENTIALS)
    return RunInfo(execution_id=context.run_id, log=context.log, resources={
        "credentials": credentials, "catalog": getattr(context.resources, CATALOG),
        "instance": context.instance, "dagster_resources": {CREDENTIALS: credentials}})


def _entry_context(playbook: Playbook, context: dg.OpExecutionContext) -> Context:
    overrides = (context.op_config or {}).get("workload") or {}
    return Context.initial({**playbook.workload, **overrides})


def _failure(exc: StepFailed, steps: Mapping[str, Mapping[str, Any]] | None = None) -> dg.Failure:
    metadata: dict[str, Any] = {"noetl/failed_step": exc.step}
    description = redact(str(exc))
    if exc.kind:
        metadata["noetl/tool"] = exc.kind
    if steps is not None:
        metadata[STEPS_KEY] = dg.MetadataValue.json(dict(steps))
    return dg.Failure(description=description, metadata=metadata, allow_retries=True)


def usage_metadata(run: RunInfo) -> dict[str, Any]:
    """CPU seconds the op used and the process's peak RSS (what tuning learns resources from)."""
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"noetl/cpu_seconds": round(time.process_time() - run.cpu_start, 4),
            "noetl/peak_rss_mb": round(peak_kb / 1024, 1)}


def _emit(node: Node, run: RunInfo, outcome_result: Any, steps_meta: dict[str, dict[str, Any]],
          tokens: list[tuple[str, dict[str, Any]]]) -> Iterator[dg.Output]:
    metadata = {STEPS_KEY: dg.MetadataValue.json(steps_meta), **usage_metadata(run)}
    yield dg.Output(outcome_result, RESULT, metadata=metadata)
    for output, token in tokens:
        yield dg.Output(token, output)


def _fired_tokens(node: Node, step: str, outcome: Any) -> list[tuple[str, dict[str, Any]]]:
    names = {(a.source, a.index): a.output for a in node.outbound}
    return [(names[(step, index)], outcome.context.token(arc.step, arc_set))
            for index, arc, arc_set in outcome.fired]


def _node_ops(playbook: Playbook, node: Node, translator: PlaybookTranslator, prefix: str
              ) -> tuple[dg.OpDefinition, ...]:
    steps = playbook.steps
    first = steps[node.steps[0]]
    common = {
        "required_resource_keys": set(RESOURCE_KEYS),
        "description": translator.get_op_description(playbook, first),
        "tags": translator.get_op_tags(playbook, first),
        "retry_policy": translator.get_retry_policy(playbook, first),
    }
    config = WORKLOAD_CONFIG if node.is_entry else None
    if node.kind == "region":
        return (_region_op(playbook, node, translator, common, config, prefix),)
    if node.kind == "loop":
        return _loop_ops(playbook, node, first, translator, common, prefix)
    step = first

    def compute(context, tokens: list | None = None):  # type: ignore[no-untyped-def]
        start = Context.merge(tokens) if tokens is not None else _entry_context(playbook, context)
        run = _run_info(context)
        try:
            outcome = run_step(step, start, run)
        except StepFailed as exc:
            raise _failure(exc) from None
        meta = {step.step: {"status": outcome.status, "runs": outcome.runs}}
        yield from _emit(node, run, outcome.result, meta, _fired_tokens(node, step.step, outcome))

    return (dg.op(name=f"{prefix}__{node.name}", ins=_ins(node), out=_outs(playbook, node, step, translator),
                  config_schema=config, **common)(_signature(compute, bool(node.inbound))),)


def _signature(fn: Any, has_tokens: bool) -> Any:
    """Dagster reads the op's inputs from the function signature: give it the right one."""
    if has_tokens:
        def with_tokens(context, tokens: list):  # type: ignore[no-untyped-def]
            yield from fn(context, tokens)
        return with_tokens

    def entry(context):  # type: ignore[no-untyped-def]
        yield from fn(context, None)
    return entry


def _region_op(playbook: Playbook, node: Node, translator: PlaybookTranslator, common: dict[str, Any],
               config: Any, prefix: str) -> dg.OpDefinition:
    members = {name: playbook.steps[name] for name in node.steps}
    entry_step = playbook.steps[node.name] if node.name in members else members[node.steps[0]]
    limit = int(playbook.metadata.dagster.get("max_iterations", MAX_REGION_STEPS))
    names = {(a.source, a.index): a.output for a in node.outbound}
    common = {**common, "description": translator.get_op_description(playbook, entry_step) +
              f"\n\nCycle over steps: {', '.join(node.steps)}",
              "tags": {**translator.get_op_tags(playbook, entry_step), "noetl/region": ",".join(node.steps)}}

    def compute(context, tokens: list | None = None):  # type: ignore[no-untyped-def]
        if tokens is None:
            entries = [("start", _entry_context(playbook, context))]
        else:
            by_target: dict[str, list] = {}
            for token in tokens:
                by_target.setdefault(token["to"], []).append(token)
            entries = [(target, Context.merge(group)) for target, group in by_target.items()]
        run = _run_info(context)
        try:
            outcome = run_region(members, entries, run, limit)
        except RegionFailed as exc:
            raise _failure(exc, {k: {"status": r.status, "runs": r.runs} for k, r in exc.records.items()}) from None
        meta = {k: {"status": r.status, "runs": r.runs} for k, r in outcome.records.items()}
        results = {k: r.result for k, r in outcome.records.items() if r.status == "success"}
        fired = [(names[key], token) for key, token in outcome.exits.items()]
        yield from _emit(node, run, results, meta, fired)

    return dg.op(name=f"{prefix}__{node.name}", ins=_ins(node), out=_outs(playbook, node, entry_step, translator),
                 config_schema=config, **common)(_signature(compute, bool(node.inbound)))


def _loop_ops(playbook: Playbook, node: Node, step: Step, translator: PlaybookTranslator,
              common: dict[str, Any], prefix: str) -> tuple[dg.OpDefinition, ...]:
    config = WORKLOAD_CONFIG if node.is_entry else None

    def fan_out(context, tokens: list | None = None):  # type: ignore[no-untyped-def]
        start = Context.merge(tokens) if tokens is not None else _entry_context(playbook, context)
        run = _run_info(context)
        try:
            guarded = step.when is not None and not condition(step.when, start.scope(run.execution_id))
            items = [] if guarded else loop_items(step, start.scope(run.execution_id))
        except TemplateFailure as exc:
            raise _failure(StepFailed(step.step, f"when: {exc}")) from None
        except StepFailed as exc:
            raise _failure(exc) from None
        token = start.token(step.step, start.arc)
        yield dg.Output({"token": token, "skipped": guarded, "total": len(items)}, "loop_context")
        for index, item in enumerate(items):
            yield dg.DynamicOutput({"token": token, "item": item, "index": index, "total": len(items)},
                                   mapping_key=f"i{index:05d}", output_name="items")

    def body(context, work: dict):  # type: ignore[no-untyped-def]
        start = Context.merge([work["token"]])
        run = _run_info(context)
        try:
            result = run_iteration(step, start, run, work["item"], work["index"], work["total"])
        except StepFailed as exc:
            raise _failure(exc) from None
        return dg.Output({"value": result.value, "ctx_updates": result.ctx_updates}, RESULT,
                         metadata=usage_metadata(run))

    def collect(context, loop_context: dict, results: list):  # type: ignore[no-untyped-def]
        start = Context.merge([loop_context["token"]])
        run = _run_info(context)
        try:
            if loop_context["skipped"]:
                outcome = run_step(step, start, run)  # the guard is false again: skip-through
            else:
                bodies = [Body(r["value"], r["ctx_updates"]) for r in results]
                outcome = finish_step(step, start, run, bodies)
        except StepFailed as exc:
            raise _failure(exc) from None
        meta = {step.step: {"status": outcome.status, "runs": outcome.runs}}
        yield from _emit(node, run, outcome.result, meta, _fired_tokens(node, step.step, outcome))

    fan_tags = {**common["tags"], "noetl/role": "loop-fan-out"}
    fan_op = dg.op(
        name=f"{prefix}__{node.name}__fan_out", ins=_ins(node),
        out={"loop_context": dg.Out(description="the loop's input context"),
             "items": dg.DynamicOut(description="one output per loop item")},
        config_schema=config, description=f"Evaluate `loop.in` of `{step.step}` and fan out its items.",
        tags=fan_tags, required_resource_keys=set(RESOURCE_KEYS),
    )(_signature(fan_out, bool(node.inbound)))
    body_op = dg.op(name=f"{prefix}__{node.name}", ins={"work": dg.In(dict)}, out={RESULT: dg.Out()},
                    **common)(body)

    collect_op = dg.op(
        name=f"{prefix}__{node.name}__collect",
        ins={"loop_context": dg.In(dict), "results": dg.In(list)},
        out=_outs(playbook, node, step, translator),
        description=f"Aggregate `{step.step}` iterations in item order, apply `set`, route.",
        tags={**common["tags"], "noetl/role": "loop-collect"}, required_resource_keys=set(RESOURCE_KEYS),
    )(collect)
    return fan_op, body_op, collect_op


def steps_metadata(event_metadata: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Read ``noetl/steps`` back from an output or failure event's metadata."""
    value = event_metadata.get(STEPS_KEY)
    if value is None:
        return {}
    data = getattr(value, "value", value)
    return json.loads(data) if isinstance(data, str) else dict(data)
