"""Similar-failure hints: when a playbook run fails, find the nearest past failures in Qdrant.

For each newly failed playbook run, every failed step's error (with its step and playbook) is
embedded and searched in the ``failures`` collection (other runs only). The best matches - run
id, step, message, score, and how they were resolved (the first later run where the same step
succeeded) - are recorded on the failed run:

* an engine event in the run's log ("Similar past failures: ..."), with the hits as JSON
  metadata, visible in the UI's run view;
* the run tag ``noetl/similar_failures`` (short run ids and steps, or ``none``), which also
  marks the run as handled so re-scans do not record twice.

Example::

    hints = find_similar(sink, failures, limit=3)
    record_hints(instance, run_id, hints)
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import dagster as dg

from noetl_dagster.contract import COMPLETED_WITH_ERRORS, OUTCOME_TAG, PLAYBOOK_TAG
from noetl_dagster.export.exporter import default_lag
from noetl_dagster.export.mapping import RunContext, StepFailure, build_run_summary, map_records

HINT_TAG = "noetl/similar_failures"
#: cosine below which a past failure is not called similar (MiniLM scale)
DEFAULT_MIN_SCORE = 0.45


@dataclass
class Hint:
    """A similar past failure: where it happened, what it said, and how it was resolved."""

    run_id: str
    playbook: str
    step: str
    error: str
    score: float
    for_step: str
    resolved_by_run: str | None = None
    resolved_at: float | None = None

    def line(self) -> str:
        text = (f"run {self.run_id[:8]} step {self.step or '?'} of {self.playbook or '?'} "
                f"(similarity {self.score:.2f}): {self.error[:300]}")
        if self.resolved_by_run:
            text += f" -> resolved: step succeeded in later run {self.resolved_by_run[:8]}"
        else:
            text += " -> not resolved yet"
        return text


def failures_of_run(instance: dg.DagsterInstance, run_id: str) -> tuple[Any, list[StepFailure]]:
    """The run and its failed steps (from its event log)."""
    run = instance.get_run_by_id(run_id)
    if run is None:
        return None, []
    records = instance.get_records_for_run(run_id).records
    ctx = RunContext.of(run)
    rows = map_records(records, ctx)
    return run, build_run_summary(rows, ctx).failures


def find_similar(sink: Any, failures: Sequence[StepFailure], limit: int = 3,
                 min_score: float = DEFAULT_MIN_SCORE) -> list[Hint]:
    """The ``limit`` most similar earlier failures to any of ``failures`` (other runs only), best first."""
    best: dict[tuple[str, str], Hint] = {}
    for failure in failures:
        for hit in sink.search("failures", failure.text(), limit=limit + 2, exclude_run=failure.run_id,
                               min_score=min_score, before=failure.timestamp):
            p = hit.payload
            key = (p.get("run_id", ""), p.get("step", ""))
            if key not in best or best[key].score < hit.score:
                best[key] = Hint(run_id=p.get("run_id", ""), playbook=p.get("playbook", ""), step=p.get("step", ""),
                                 error=p.get("error", ""), score=round(hit.score, 4), for_step=failure.step,
                                 resolved_by_run=p.get("resolved_by_run"), resolved_at=p.get("resolved_at"))
    return sorted(best.values(), key=lambda h: -h.score)[:limit]


def record_hints(instance: dg.DagsterInstance, run: Any, hints: Sequence[Hint]) -> None:
    """An engine event in the run's log (when there are hints), then the run tag."""
    if hints:
        lines = "\n".join(f"{i}. {h.line()}" for i, h in enumerate(hints, 1))
        metadata = {
            "similar_failures": dg.MetadataValue.json([asdict(h) for h in hints]),
            "summary": dg.MetadataValue.md("\n".join(f"{i}. {h.line()}" for i, h in enumerate(hints, 1))),
        }
        from noetl_dagster.compat import EngineEventData

        instance.report_engine_event(f"Similar past failures:\n{lines}", dagster_run=run,
                                     engine_event_data=EngineEventData(metadata=metadata))
    tag = ",".join(f"{h.run_id[:8]}:{h.step}" for h in hints) or "none"
    instance.add_run_tags(run.run_id, {HINT_TAG: tag[:250]})


def hint_pass(instance: dg.DagsterInstance, sink: Any, cursor: str | None, *, limit: int = 3,
              min_score: float = DEFAULT_MIN_SCORE, page_size: int = 100, lag_seconds: float | None = None,
              budget_seconds: float | None = None, clock: Callable[[], float] | None = None) -> tuple[str, int]:
    """Handle the playbook runs that failed, or completed with error results (run tag
    ``noetl/outcome: completed_with_errors``), since ``cursor``; returns (new cursor, runs hinted).

    The cursor keeps one watermark per run status (``w``: failures, ``e``: successes)."""
    import time

    clock = clock or time.time
    lag = default_lag(instance) if lag_seconds is None else lag_seconds
    safe_ts = clock() - lag
    deadline = None if budget_seconds is None else time.monotonic() + budget_seconds
    state = json.loads(cursor) if cursor else {}
    marks, handled = {}, 0
    for key, event_type in (("w", dg.DagsterEventType.RUN_FAILURE), ("e", dg.DagsterEventType.RUN_SUCCESS)):
        marks[key], count = _hint_stream(instance, sink, event_type, int(state.get(key, 0)), safe_ts, deadline,
                                         limit, min_score, page_size)
        handled += count
    return json.dumps(marks), handled


def _hint_stream(instance: dg.DagsterInstance, sink: Any, event_type: Any, watermark: int, safe_ts: float,
                 deadline: float | None, limit: int, min_score: float, page_size: int) -> tuple[int, int]:
    """One run status's changes after ``watermark``: hint the playbook runs with failures in them."""
    import time

    from noetl_dagster.compat import RunStatusChangeRecordsFilter

    scan_from, contiguous, handled = watermark, True, 0
    while deadline is None or time.monotonic() < deadline:
        page = instance.fetch_run_status_changes(
            RunStatusChangeRecordsFilter(event_type, after_storage_id=scan_from), limit=page_size, ascending=True)
        for rec in page.records:
            run = instance.get_run_by_id(rec.event_log_entry.run_id)
            wanted = (run is not None and run.tags.get(PLAYBOOK_TAG) and HINT_TAG not in run.tags
                      and (event_type == dg.DagsterEventType.RUN_FAILURE
                           or run.tags.get(OUTCOME_TAG) == COMPLETED_WITH_ERRORS))
            if wanted:
                run, failures = failures_of_run(instance, rec.event_log_entry.run_id)
                record_hints(instance, run, find_similar(sink, failures, limit, min_score) if failures else [])
                handled += 1
            if contiguous and rec.event_log_entry.timestamp <= safe_ts:
                watermark = rec.storage_id
            else:
                contiguous = False
            scan_from = rec.storage_id
        if not page.has_more:
            break
    return watermark, handled


__all__ = ["DEFAULT_MIN_SCORE", "HINT_TAG", "Hint", "failures_of_run", "find_similar", "hint_pass", "record_hints"]
