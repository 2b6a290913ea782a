"""Run one step inside an op: guard, loop, tool or pipeline, ``set``, then routing.

This is NoETL's step contract, free of Dagster: ``run_step`` takes the merged input
:class:`Context` and returns a :class:`StepOutcome` with the result, the context after the
step, and the arcs that fired. Ops, the region interpreter and loops all call it.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from ..errors import StepFailed
from ..playbook.models import Arc, Step, Task
from .context import Context
from .templates import TemplateFailure, condition, freeze, render_value
from .tools import ToolContext, ToolError, get_tool
from ..resources.credentials import redact_value as _mask  # registered secrets never leave a step

#: a pipeline jump loop stops after this many task executions (NoETL's cap is 1e6)
MAX_PIPELINE_ITERATIONS = 100_000


@dataclass
class RunInfo:
    """What every step of one run shares."""

    execution_id: str
    log: Any = field(default_factory=lambda: logging.getLogger("noetl_dagster"))
    resources: Mapping[str, Any] = field(default_factory=dict)
    sleep: Callable[[float], None] = time.sleep
    #: names every template of the run sees (``partition_key``, ``product``)
    globals: Mapping[str, Any] = field(default_factory=dict)
    #: process CPU time when the op started (for the op's ``noetl/cpu_seconds``)
    cpu_start: float = field(default_factory=time.process_time)


@dataclass
class Body:
    """One execution of a step's tool: its result and the ctx values its policy rules set."""

    value: Any
    ctx_updates: dict[str, Any] = field(default_factory=dict)


@dataclass
class StepOutcome:
    step: str
    status: str  # "success" | "skipped"
    result: Any
    runs: int
    context: Context  # after the step: its result and ctx updates included
    fired: list[tuple[int, Arc, dict[str, Any]]]  # (arc index, arc, rendered arc set)


def _fail(step: Step, message: str, kind: str | None = None) -> StepFailed:
    return StepFailed(step.step, message, kind=kind)


def run_step(step: Step, context: Context, run: RunInfo, *, items: list[Any] | None = None) -> StepOutcome:
    """Run ``step`` once (all its iterations when it loops) and choose its arcs."""
    scope = context.scope(run.execution_id, run.globals)
    if step.when is not None and not _guard(step, scope):
        after = context.without_arc()
        return StepOutcome(step.step, "skipped", None, 0, after, _route(step, after, None, run, first_only=True))
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
    result is their list, in item order).
    """
    result = [b.value for b in bodies] if looped else bodies[0].value
    after = context.with_result(step.step, result)
    for body in bodies:
        after = after.with_ctx(body.ctx_updates)
    if step.set:
        scope = after.scope(run.execution_id, {**run.globals, "output": result})
        try:
            updates = _mask({k: render_value(v, scope) for k, v in step.set.items()})
        except TemplateFailure as exc:
            raise _fail(step, f"set: {exc}") from None
        after = after.with_ctx(updates)
    return StepOutcome(step.step, "success", result, len(bodies), after, _route(step, after, result, run))


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
    """Evaluate ``loop.in`` and coerce it the way NoETL does."""
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
    """The step's tool, or its pipeline of tasks under their policy rules."""
    tool_ctx = ToolContext(step.step, run.execution_id, scope, run.log, run.resources,
                           step_args=step.args, iteration=iteration or {})
    if not step.pipeline and not step.tool[0].rules:
        task = step.tool[0]
        try:
            return Body(_mask(get_tool(task.kind).run(task.config, tool_ctx)))
        except (ToolError, TemplateFailure) as exc:
            raise _fail(step, str(exc), task.kind) from None
        except StepFailed:
            raise
        except Exception as exc:  # noqa: BLE001 - any tool crash fails the step with its message
            raise _fail(step, f"{type(exc).__name__}: {exc}", task.kind) from None
    body = run_pipeline(step, tool_ctx, run)
    return Body(_mask(body.value), _mask(body.ctx_updates))


def run_pipeline(step: Step, tool_ctx: ToolContext, run: RunInfo) -> Body:
    """Run tasks in order with ``spec.policy.rules`` (continue, retry, jump, break, fail)."""
    tasks = step.tool
    labels = [t.name for t in tasks]
    running: dict[str, Any] = dict(tool_ctx.scope)
    results: dict[str, Any] = {}
    ctx_updates: dict[str, Any] = {}
    attempts: dict[str, int] = {}
    position, executed = 0, 0
    while position < len(tasks):
        executed += 1
        if executed > MAX_PIPELINE_ITERATIONS:
            raise _fail(step, f"pipeline ran {MAX_PIPELINE_ITERATIONS} tasks without finishing "
                        "(a jump loop?)")
        task = tasks[position]
        attempt = attempts[task.name] = attempts.get(task.name, 0) + 1
        data, error = _run_task(step, task, tool_ctx, running)
        if error is None:
            results[task.name] = data
            running[task.name] = freeze(data, data_alias=True)
            if task.set:
                scope = {**running, "output": freeze(data)}
                try:
                    running.update({k: freeze(render_value(v, scope)) for k, v in task.set.items()})
                except TemplateFailure as exc:
                    raise _fail(step, f"task {task.name!r} set: {exc}") from None
        envelope = {"status": "success" if error is None else "error", "data": data,
                    "error": None if error is None else {"message": error, "retryable": False}}
        rule = _match_rule(step, task, {**running, "output": freeze(envelope), "_attempt": attempt})
        if rule is None:
            if error is not None:
                raise _fail(step, f"task {task.name!r} failed: {error}", task.kind)
            position += 1
            continue
        then = rule.then
        if then.set:
            scope = {**running, "output": freeze(envelope), "_attempt": attempt}
            try:
                values = {k: render_value(v, scope) for k, v in then.set.items()}
            except TemplateFailure as exc:
                raise _fail(step, f"task {task.name!r} policy set: {exc}") from None
            running.update({k: freeze(v) for k, v in values.items()})
            ctx_updates.update(values)
        if then.do == "continue":
            if error is not None:
                results[task.name] = {"status": "error", "error": error}
            position += 1
        elif then.do == "retry":
            if attempt >= then.attempts:
                reason = error or "the retry rule still matched"
                raise _fail(step, f"task {task.name!r} failed after {attempt} attempts: {reason}", task.kind)
            run.sleep(_delay(then.backoff, then.delay, attempt))
        elif then.do == "jump":
            target = then.to or ""
            position = position - 1 if target in ("previous", "prev", "_previous", "@previous") else labels.index(target)
            position = max(position, 0)
            attempts[tasks[position].name] = 0
        elif then.do == "break":
            break
        else:  # fail
            reason = f": {error}" if error else ""
            raise _fail(step, f"task {task.name!r}: policy chose fail{reason}", task.kind)
    value = results if step.pipeline else results.get(step.tool[0].name)
    return Body(value, ctx_updates)


def _run_task(step: Step, task: Task, tool_ctx: ToolContext, running: Mapping[str, Any]) -> tuple[Any, str | None]:
    config = task.config
    scope: dict[str, Any] = dict(running)
    try:
        if task.kind != "python" and isinstance(config.get("input"), dict):
            scope.update({k: freeze(v) for k, v in render_value(config["input"], scope).items()})
        ctx = ToolContext(tool_ctx.step, tool_ctx.execution_id, scope, tool_ctx.log,
                          tool_ctx.resources, tool_ctx.step_args, tool_ctx.iteration)
        return get_tool(task.kind).run(config, ctx), None
    except StepFailed as exc:
        return None, exc.reason
    except Exception as exc:  # noqa: BLE001 - a task error is data for the policy rules
        message = str(exc) if isinstance(exc, (ToolError, TemplateFailure)) else f"{type(exc).__name__}: {exc}"
        return None, message


def _match_rule(step: Step, task: Task, scope: Mapping[str, Any]):  # type: ignore[no-untyped-def]
    for index, rule in enumerate(task.rules):
        try:
            if rule.when is None or condition(rule.when, scope):
                return rule
        except TemplateFailure as exc:
            raise _fail(step, f"task {task.name!r} policy rule {index}: {exc}") from None
    return None


def _delay(backoff: str, delay: float, attempt: int) -> float:
    if backoff == "linear":
        return delay * attempt
    if backoff == "exponential":
        return delay * (2 ** (attempt - 1))
    return delay  # "none": a constant delay
