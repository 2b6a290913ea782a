"""Interpret a cycle (a strongly connected set of steps) inside one op.

Tokens arriving from outside start the steps they target; each step's fired arcs either
re-enter the region (a back-edge re-runs the step, NoETL's pagination pattern) or leave it.
When an arc that leaves the region fires several times, its latest token is the one that
leaves (the outside target runs once, after the region). A bound on step executions turns a
runaway cycle into a clear failure.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Mapping

from noetl_dagster.errors import StepFailed
from noetl_dagster.playbook.models import Step
from noetl_dagster.runtime.context import Context
from noetl_dagster.runtime.step import RunInfo, run_step

#: default bound on step executions inside one region (``metadata.dagster.max_iterations``)
MAX_REGION_STEPS = 10_000


@dataclass
class StepRecord:
    status: str = "skipped"
    runs: int = 0
    result: Any = None
    error: str | None = None  # the latest run's error result message


@dataclass
class RegionOutcome:
    records: dict[str, StepRecord]
    exits: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)


class RegionFailed(StepFailed):
    """A step inside a region failed; ``records`` tells what ran before it."""

    def __init__(self, failure: StepFailed, records: dict[str, StepRecord]) -> None:
        super().__init__(failure.step, failure.reason, kind=failure.kind)
        self.records = records


def run_region(steps: Mapping[str, Step], entries: list[tuple[str, Context]], run: RunInfo,
               max_steps: int = MAX_REGION_STEPS) -> RegionOutcome:
    """Run the region from its entry tokens until no token is left inside it."""
    records = {name: StepRecord() for name in steps}
    outcome = RegionOutcome(records)
    queue: deque[tuple[str, Context]] = deque(entries)
    executed = 0
    while queue:
        name, context = queue.popleft()
        executed += 1
        if executed > max_steps:
            failure = StepFailed(name, f"the cycle through {', '.join(steps)} ran {max_steps} steps "
                                 "without leaving; check its `when` guard or raise "
                                 "metadata.dagster.max_iterations")
            raise RegionFailed(failure, records)
        try:
            result = run_step(steps[name], context, run)
        except StepFailed as exc:
            records[name].runs += 1
            records[name].status = "failed"
            raise RegionFailed(exc, records) from None
        record = records[name]
        record.runs += result.runs
        if result.status in ("success", "error"):
            record.status, record.result, record.error = result.status, result.result, result.error
        for index, arc, arc_set in result.fired:
            token = result.context.token(arc.step, arc_set)
            if arc.step in steps:
                queue.append((arc.step, Context.merge([token])))
            else:
                outcome.exits[(name, index)] = token
    return outcome
