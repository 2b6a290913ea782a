"""Cursor loops (``loop.spec.mode: cursor``): claim a frame of rows, run the body per row, repeat.

What NoETL's orchestrate-core does (``orchestrator.rs``, noetl/ai-meta#100), in one op::

    - step: drain
      loop:
        iterator: job
        cursor:
          kind: postgres                      # the claim's tool (default postgres)
          auth: pg_main
          claim: |
            UPDATE work SET status = 'claimed'
            WHERE id IN (SELECT id FROM work WHERE status = 'pending'
                         ORDER BY id FOR UPDATE SKIP LOCKED LIMIT {{ __frame_max_rows }})
            RETURNING id, payload
        spec: {mode: cursor, frame: {max_rows: 50}}
      tool: {kind: python, input: {job: "{{ iter.job }}"}, code: ...}

1. The claim runs with ``{{ __frame_max_rows }}`` = ``frame.max_rows`` (default 1).
2. Each returned row is one iteration: ``<iterator>``/``iter.<iterator>`` is the row (a mapping
   of the ``RETURNING`` columns), ``_index``/``_total`` its place in the frame.
3. When every row of the frame ran, the next frame is claimed; a claim that returns no rows
   drains the loop. The step's result is NoETL's ``{cursor: drained, frames: N}``, its arcs are
   then evaluated and its ``set:`` applied, as for any step.

Rows run in order inside the op (NoETL's ``frame.row_concurrency`` is a parallelism hint; the
lease/heartbeat fields are advisory there too: the claim SQL itself reclaims stale rows). A
frame bound (``metadata.dagster.max_iterations``, default :data:`MAX_FRAMES`) stops a claim that
never drains. The loop's body must consume what it claims (mark rows done, or the claim must
skip claimed rows), or the loop would claim the same rows forever.

This module claims frames; :func:`noetl_dagster.runtime.step.run_cursor_loop` runs the loop
(its rows through the step's body, then the step's ``set:`` and arcs).
"""

from __future__ import annotations

from typing import Any

from noetl_dagster.core.templates import TemplateFailure
from noetl_dagster.errors import StepFailed
from noetl_dagster.playbook.models import Step
from noetl_dagster.runtime.tools import ToolContext, ToolError, get_tool

#: default bound on the frames one cursor loop claims
MAX_FRAMES = 10_000


def frame_size(step: Step) -> int:
    """Rows one claim asks for: ``loop.spec.frame.max_rows``, default 1."""
    assert step.loop is not None
    frame = step.loop.frame
    return max(1, frame.max_rows) if frame is not None and frame.max_rows else 1


def claim_rows(step: Step, ctx: ToolContext) -> list[Any]:
    """Run the step's ``loop.cursor.claim`` once with ``ctx`` (whose scope has
    ``__frame_max_rows``); the rows it returned (possibly none), each a mapping of its columns."""
    assert step.loop is not None and step.loop.cursor is not None
    cursor = step.loop.cursor
    config: dict[str, Any] = {"query": cursor.claim}
    if cursor.auth is not None:
        config["auth"] = cursor.auth
    try:
        result = get_tool(cursor.kind).run(config, ctx)
    except (ToolError, TemplateFailure) as exc:
        raise StepFailed(step.step, f"loop.cursor.claim: {exc}", kind=cursor.kind) from None
    rows = result.get("rows") if isinstance(result, dict) else None
    if not isinstance(rows, list):
        raise StepFailed(step.step, "loop.cursor.claim must return rows (end it with `RETURNING ...` or a "
                         "SELECT); it returned no result set", kind=cursor.kind)
    columns = result.get("columns") or []
    return [row if isinstance(row, dict) else dict(zip(columns, row)) for row in rows]


def too_many_frames(step: Step, max_frames: int) -> StepFailed:
    """The failure of a cursor loop that claimed more than ``max_frames`` frames."""
    return StepFailed(step.step, f"cursor loop claimed more than {max_frames} frames without draining "
                      "(the body must consume the rows it claims); raise metadata.dagster.max_iterations "
                      "if that many frames are expected")
