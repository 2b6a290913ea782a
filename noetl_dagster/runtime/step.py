"""Run one step inside an op: guard, loop, tool or pipeline, ``set``, then routing.

This is NoETL's step contract, free of Dagster: ``run_step`` takes the merged input
:class:`Context` and returns a :class:`StepOutcome` with the result, the context after the
step, and the arcs that fired. Ops, the region interpreter and loops all call it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from noetl_dagster.errors import StepFailed
from noetl_dagster.playbook.models import Arc, Step, Task, strip_scope
from noetl_dagster.runtime.context import Context
from noetl_dagster.core.limits import too_many_items
from noetl_dagster.core.templates import TemplateFailure, condition, freeze, render_value
from noetl_dagster.runtime.cursor import MAX_FRAMES, claim_rows, frame_size, too_many_frames
from noetl_dagster.runtime.tools import ErrorResult, ToolContext, ToolError, get_tool
from noetl_dagster.runtime.tools.artifact import externalize
from noetl_dagster.core.secrets import redact_value as _mask  # registered secrets never leave a step

#: a pipeline jump loop stops after this many task executions (NoETL's cap is 1e6)
MAX_PIPELINE_ITERATIONS = 100_000


#: what an error result does: ``complete`` the step with status ``error`` (NoETL) or ``fail`` it
ON_ERROR_MODES = ("complete", "fail")


@dataclass
class RunInfo:
    """What every step of one run shares."""

    execution_id: Any  # NoETL's numeric execution id (see :func:`numeric_execution_id`)
    log: Any = field(default_factory=lambda: logging.getLogger("noetl_dagster"))
    resources: Mapping[str, Any] = field(default_factory=dict)
    sleep: Callable[[float], None] = time.sleep
    #: names every template of the run sees (``partition_key``, ``product``)
    globals: Mapping[str, Any] = field(default_factory=dict)
    #: process CPU time when the op started (for the op's ``noetl/cpu_seconds``)
    cpu_start: float = field(default_factory=time.process_time)
    #: ``complete`` (NoETL: an error result completes the step) or ``fail`` (strict mode)
    on_error: str = "complete"
    #: the Dagster run id (sub-playbook runs are tagged with it)
    run_id: str = ""
    #: the host's sub-playbook runner and Kubernetes job runner, passed to every tool (see
    #: :class:`~noetl_dagster.runtime.tools.base.ToolContext`); ``None`` without a host
    run_playbook: Callable[..., Any] | None = None
    run_k8s_job: Callable[[dict[str, Any], Any], dict[str, Any]] | None = None


def numeric_execution_id(run_id: str) -> int:
    """NoETL's ``execution_id`` is a positive 63-bit integer: a stable one per Dagster run id.

    Examples:
        >>> numeric_execution_id("3f2a...") == numeric_execution_id("3f2a...")
        True
    """
    digest = hashlib.blake2b(run_id.encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "big") & (2**63 - 1)) or 1


@dataclass
class Body:
    """One execution of a step's tool: its result, the ctx values its policy rules set, and
    the message of an error result (``None`` when the tool succeeded)."""

    value: Any
    ctx_updates: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


@dataclass
class StepOutcome:
    step: str
    status: str  # "success" | "error" | "skipped"
    result: Any
    runs: int
    context: Context  # after the step: its result and ctx updates included
    fired: list[tuple[int, Arc, dict[str, Any]]]  # (arc index, arc, rendered arc set)
    error: str | None = None  # the error result's message when ``status == "error"``


def _fail(step: Step, message: str, kind: str | None = None) -> StepFailed:
    return StepFailed(step.step, message, kind=kind)


def run_step(step: Step, context: Context, run: RunInfo, *, items: list[Any] | None = None) -> StepOutcome:
    """Run ``step`` once (all its iterations when it loops) and choose its arcs."""
    scope = context.scope(run.execution_id, run.globals)
    if step.when is not None and not _guard(step, scope):
        after = context.without_arc()
        return StepOutcome(step.step, "skipped", None, 0, after, _route(step, after, None, run, first_only=True))
    if step.loop is not None and step.loop.mode == "cursor":
        return run_cursor_loop(step, context, run)
    if step.loop is not None:
        if items is None:
            items = loop_items(step, scope)
        bodies = [run_iteration(step, context, run, item, i, len(items)) for i, item in enumerate(items)]
        return finish_step(step, context, run, bodies)
    return finish_step(step, context, run, [run_body(step, context, run, scope)], looped=False)


def finish_step(step: Step, context: Context, run: RunInfo, bodies: list["Body"],
                looped: bool = True) -> StepOutcome:
    """Record the result, apply step-level ``set`` (with ``output``), then evaluate the arcs.

    ``bodies`` are the executions of the step's tool: one, or one per loop iteration (then the
    result is their list, in item order). An error result completes the step with status
    ``error`` (its ``set`` and arcs still apply), or fails it when ``run.on_error == "fail"``.
    """
    errors = [(i, b.error) for i, b in enumerate(bodies) if b.error is not None]
    error = None
    if errors:
        index, message = errors[0]
        error = f"iteration {index}: {message}" if looped else message
        if len(errors) > 1:
            error += f" (and {len(errors) - 1} more iterations)"
        if run.on_error == "fail":
            raise _fail(step, error, step.tool[0].kind if not step.pipeline else None)
    result = [b.value for b in bodies] if looped else bodies[0].value
    spec = (step.model_extra or {}).get("output")
    if isinstance(spec, Mapping) and error is None:  # NoETL's result externalisation (artifact.py)
        try:
            result = externalize(spec, result, run.execution_id, step.step)
        except ToolError as exc:
            raise _fail(step, f"output: {exc}") from None
    after = context.with_result(step.step, result)
    for body in bodies:
        after = after.with_ctx(body.ctx_updates)
    output = freeze(result, data_alias=True)
    if step.set:
        scope = after.scope(run.execution_id, {**run.globals, "output": output})
        try:
            updates = _mask({k: render_value(v, scope) for k, v in step.set.items()})
        except TemplateFailure as exc:
            raise _fail(step, f"set: {exc}") from None
        after = after.with_ctx(updates)
    status = "success" if error is None else "error"
    return StepOutcome(step.step, status, result, len(bodies), after, _route(step, after, output, run), error)


def _guard(step: Step, scope: Mapping[str, Any]) -> bool:
    try:
        return condition(step.when, scope)
    except TemplateFailure as exc:
        raise _fail(step, f"when: {exc}") from None


def _route(step: Step, after: Context, output: Any, run: RunInfo, first_only: bool = False
           ) -> list[tuple[int, Arc, dict[str, Any]]]:
    if step.next is None:
        return []
    rendered = any(arc.when is not None or arc.set for arc in step.next.arcs)
    scope = after.scope(run.execution_id, {**run.globals, "output": output}) if rendered else {}
    exclusive = first_only or step.next.mode == "exclusive"
    fired = []
    for index, arc in enumerate(step.next.arcs):
        try:
            matched = condition(arc.when, scope)
            arc_set = _mask({k: render_value(v, scope) for k, v in arc.set.items()}) if matched else {}
        except TemplateFailure as exc:
            raise _fail(step, f"next.arcs[{index}] (to {arc.step}): {exc}") from None
        if matched:
            if arc.args:
                arc_set = {**arc.args, **arc_set}
            fired.append((index, arc, arc_set))
            if exclusive:
                break
    return fired


def loop_items(step: Step, scope: Mapping[str, Any]) -> list[Any]:
    """Evaluate ``loop.in`` and coerce it the way NoETL does (at most ``MAX_LOOP_ITEMS`` items)."""
    items = _loop_items(step, scope)
    problem = too_many_items(len(items))
    if problem:
        raise _fail(step, problem)
    return items


def _loop_items(step: Step, scope: Mapping[str, Any]) -> list[Any]:
    assert step.loop is not None
    try:
        value = _mask(render_value(step.loop.in_, scope))
    except TemplateFailure as exc:
        raise _fail(step, f"loop.in: {exc}") from None
    if isinstance(value, list):
        return value
    if isinstance(value, dict):
        return [{"key": k, "value": v} for k, v in value.items()]
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                parsed = json.loads(text)
                if isinstance(parsed, list):
                    return parsed
            except ValueError:
                pass
        if not text:
            return []
        return [part.strip() for part in text.replace("\n", ",").split(",") if part.strip()]
    if isinstance(value, int) and not isinstance(value, bool):
        problem = too_many_items(value)
        if problem:
            raise _fail(step, problem)
        return list(range(value))
    kind = "null (undefined)" if value is None else type(value).__name__
    raise _fail(step, f"loop.in did not evaluate to a list (got {kind})",
                ) from None


def iteration_vars(step: Step, item: Any, index: int, total: int) -> dict[str, Any]:
    assert step.loop is not None
    name = step.loop.iterator
    return {name: item, "_index": index, "_total": total}


def run_iteration(step: Step, context: Context, run: RunInfo, item: Any, index: int, total: int) -> Body:
    """One loop iteration: the body with ``<iterator>``, ``_index``, ``_total`` and ``iter.*``."""
    variables = iteration_vars(step, item, index, total)
    scope = context.scope(run.execution_id, {**run.globals, **variables, "iter": variables})
    return run_body(step, context, run, scope, variables)


def run_body(step: Step, context: Context, run: RunInfo, scope: Mapping[str, Any],
             iteration: Mapping[str, Any] | None = None) -> Body:
    """The step's tool, or its pipeline of tasks under their policy rules.

    A tool that raises fails the step (NoETL ``command.failed``); one that returns an
    :class:`ErrorResult` gives a body carrying the error (the step completes with it).
    """
    tool_ctx = ToolContext(step.step, run.execution_id, scope, run.log, run.resources,
                           step_args=step.args, iteration=iteration or {}, run_id=run.run_id,
                           run_playbook=run.run_playbook, run_k8s_job=run.run_k8s_job)
    if not step.pipeline and not step.tool[0].rules:
        value, error = _call_tool(step, step.tool[0], tool_ctx)
        return Body(flatten_result(_mask(value)), error=None if error is None else _mask(error))
    body = run_pipeline(step, tool_ctx, run)
    return Body(flatten_result(_mask(body.value)), _mask(body.ctx_updates),
                None if body.error is None else _mask(body.error))


def run_cursor_loop(step: Step, context: Context, run: RunInfo, max_frames: int = MAX_FRAMES) -> StepOutcome:
    """Run a ``mode: cursor`` loop step to its drain, then route it (see :mod:`~noetl_dagster.runtime.cursor`):
    claim a frame, run the body once per row, repeat until a claim returns no rows. The result is
    ``{cursor: drained, frames: N}``; ``runs`` counts the rows."""
    assert step.loop is not None and step.loop.mode == "cursor"
    max_rows = frame_size(step)
    scope = context.scope(run.execution_id, {**run.globals, "__frame_max_rows": max_rows})
    claim_ctx = ToolContext(step.step, run.execution_id, scope, run.log, run.resources, run_id=run.run_id,
                            run_playbook=run.run_playbook, run_k8s_job=run.run_k8s_job)
    bodies: list[Body] = []
    frames = 0
    while True:
        rows = claim_rows(step, claim_ctx)
        if not rows:
            break
        if frames >= max_frames:
            raise too_many_frames(step, max_frames)
        frames += 1
        bodies.extend(run_iteration(step, context, run, row, i, len(rows)) for i, row in enumerate(rows))
    updates: dict[str, Any] = {}
    for body in bodies:
        updates.update(body.ctx_updates)
    errors = [f"row {i}: {b.error}" for i, b in enumerate(bodies) if b.error is not None]
    error = (errors[0] + (f" (and {len(errors) - 1} more rows)" if len(errors) > 1 else "")) if errors else None
    outcome = finish_step(step, context, run, [Body({"cursor": "drained", "frames": frames}, updates, error)],
                          looped=False)
    outcome.runs = len(bodies)
    return outcome


def flatten_result(value: Any) -> Any:
    """NoETL's ``flatten_task_sequence_data``: a non-empty mapping whose values are all mappings
    (a pipeline's ``{task: result}``) also carries every task's fields at top level, so
    ``{{ step.field }}`` works beside ``{{ step.task.field }}``. On a key collision the task whose
    name sorts last wins (the engine merges in map key order). Anything else is unchanged."""
    if not isinstance(value, Mapping) or not value or not all(isinstance(v, Mapping) for v in value.values()):
        return value
    merged = dict(value)
    for name in sorted(value):
        merged.update(value[name])
    return merged


def set_nested(variables: dict[str, Any], key: str, value: Any) -> None:
    """NoETL's ``set_nested_var`` inside a pipeline: ``ctx.x`` writes ``variables["ctx"]["x"]``
    (later tasks read ``{{ ctx.x }}``), a bare key writes itself."""
    parts = key.split(".")
    if len(parts) == 1:
        variables[key] = value
        return
    root = variables.get(parts[0])
    node = dict(root.items()) if isinstance(root, Mapping) else {}
    variables[parts[0]] = current = node
    for part in parts[1:-1]:
        child = current.get(part)
        current[part] = dict(child.items()) if isinstance(child, Mapping) else {}
        current = current[part]
    current[parts[-1]] = value


def _frozen_scope(variables: dict[str, Any]) -> dict[str, Any]:
    return {k: freeze(v) for k, v in variables.items()}


def run_pipeline(step: Step, tool_ctx: ToolContext, run: RunInfo) -> Body:
    """Run tasks in order with ``spec.policy.rules`` (continue, retry, jump, break, fail).

    As NoETL's ``task_sequence``: every task's result (an error result's data too) is kept under
    its name and visible to later tasks; rules see ``output = {status, data, error}`` and
    ``_attempt``; with no matching rule an errored task stops the pipeline. A stop in error
    (``fail``, an unhandled error, a spent ``retry``) is an error result whose data is
    ``{labeled_results, failed_task}``; a task whose tool *raises* fails the whole step.
    """
    tasks = step.tool
    labels = [t.name for t in tasks]
    running: dict[str, Any] = dict(tool_ctx.scope)
    results: dict[str, Any] = {}
    ctx_updates: dict[str, Any] = {}
    attempts: dict[str, int] = {}
    position, executed = 0, 0

    def stopped(index: int, message: str) -> Body:
        data = {"labeled_results": results, "failed_task": index}
        if not step.pipeline:
            data = results.get(tasks[index].name)
        return Body(data, ctx_updates, error=_task_label(step, tasks[index]) + message)

    while position < len(tasks):
        executed += 1
        if executed > MAX_PIPELINE_ITERATIONS:
            raise _fail(step, f"pipeline ran {MAX_PIPELINE_ITERATIONS} tasks without finishing "
                        "(a jump loop?)")
        task = tasks[position]
        attempt = attempts[task.name] = attempts.get(task.name, 0) + 1
        data, error = _run_task(step, task, tool_ctx, running)
        results[task.name] = data
        running[task.name] = freeze(data, data_alias=True)
        if task.set:
            scope = {**running, "output": freeze(data)}
            try:
                values = {k: render_value(v, scope) for k, v in task.set.items()}
            except TemplateFailure as exc:
                raise _fail(step, f"task {task.name!r} set: {exc}") from None
            for key, value in values.items():
                set_nested(running, key, value)
            running = _frozen_scope(running)
        envelope = {"status": "success" if error is None else "error", "data": data,
                    "error": {"retryable": False} if error is None else {"message": error, "retryable": False}}
        rule_scope = {**running, "output": freeze(envelope), "_attempt": attempt}
        rule = _match_rule(task, rule_scope)
        if rule is None:
            if error is not None:
                return stopped(position, error)
            position += 1
            continue
        then = rule.then
        if then.set:
            try:
                values = {k: render_value(v, rule_scope) for k, v in then.set.items()}
            except TemplateFailure as exc:
                raise _fail(step, f"task {task.name!r} policy set: {exc}") from None
            for key, value in values.items():
                set_nested(running, key, value)
                ctx_updates[strip_scope(key)] = value
            running = _frozen_scope(running)
        if then.do == "continue":
            position += 1
        elif then.do == "retry":
            if attempt >= then.attempts:
                return stopped(position, error or f"exceeded retry attempts ({then.attempts})")
            run.sleep(_delay(then.backoff, then.delay, attempt))
        elif then.do == "jump":
            target = then.to or ""
            position = position - 1 if target in ("previous", "prev", "_previous", "@previous") else labels.index(target)
            position = max(position, 0)
            attempts[tasks[position].name] = 0
        elif then.do == "break":
            break
        else:  # fail
            return stopped(position, error or "policy rule triggered fail")
    value = results if step.pipeline else results.get(step.tool[0].name)
    return Body(value, ctx_updates)


def _run_task(step: Step, task: Task, tool_ctx: ToolContext, running: Mapping[str, Any]) -> tuple[Any, str | None]:
    """One task: ``(data, None)``, or ``(data, message)`` for an error result. A raised tool error
    fails the step (NoETL: policy rules never see it)."""
    config = task.config
    scope: dict[str, Any] = dict(running)
    try:
        if task.kind != "python" and isinstance(config.get("input"), dict):
            scope.update({k: freeze(v) for k, v in render_value(config["input"], scope).items()})
    except TemplateFailure as exc:
        raise _fail(step, f"{_task_label(step, task)}{exc}", task.kind) from None
    except Exception as exc:  # noqa: BLE001 - an input that cannot be rendered fails the step with its message
        raise _fail(step, f"{_task_label(step, task)}{type(exc).__name__}: {exc}", task.kind) from None
    ctx = dataclasses.replace(tool_ctx, scope=scope)
    return _call_tool(step, task, ctx)


def _call_tool(step: Step, task: Task, ctx: ToolContext) -> tuple[Any, str | None]:
    """Run one tool: ``(data, None)``, or ``(data, message)`` for an :class:`ErrorResult`. A raised
    error fails the step (NoETL's ``command.failed``), named by its task inside a pipeline."""
    try:
        value = get_tool(task.kind).run(task.config, ctx)
    except StepFailed:
        raise
    except (ToolError, TemplateFailure) as exc:
        raise _fail(step, f"{_task_label(step, task)}{exc}", task.kind) from None
    except Exception as exc:  # noqa: BLE001 - any tool crash fails the step with its message
        raise _fail(step, f"{_task_label(step, task)}{type(exc).__name__}: {exc}", task.kind) from None
    if isinstance(value, ErrorResult):
        return value.data, value.message
    return value, None


def _task_label(step: Step, task: Task) -> str:
    """``task 'x': `` inside a pipeline; nothing for a single tool with policy rules."""
    return f"task {task.name!r}: " if step.pipeline and task.name else ""


def _match_rule(task: Task, scope: Mapping[str, Any]):  # type: ignore[no-untyped-def]
    """The first rule whose ``when`` holds (a ``when`` that fails to render is false, as in NoETL)."""
    for rule in task.rules:
        try:
            if rule.when is None or condition(rule.when, scope):
                return rule
        except TemplateFailure:
            continue
    return None


def _delay(backoff: str, delay: float, attempt: int) -> float:
    if backoff == "linear":
        return delay * attempt
    if backoff == "exponential":
        return delay * (2 ** (attempt - 1))
    return delay  # "none": a constant delay
