"""Step statistics per (playbook, step), from the ``step_runs`` fact table, in one ClickHouse query.

``step_runs`` has one row per step attempt with status ``success | error | failed | retried |
skipped | incomplete`` (``retried``: the attempt failed and Dagster retried it; ``error``: it
completed with an error result, counted as a failure here). Per (run, step key) the
*final* status is the last attempt's. From that:

* **transient failures**: failed attempts of a (run, step key) that finally succeeded on retry;
* **deterministic failures**: (run, step key) groups that finally failed although they were
  retried (retries did not help), plus every final failure of a step that never succeeds;
* **intermittent failures**: final failures (no retry tried) of a step that succeeds in other
  runs - flaky, the kind a retry policy helps.

A mapped (parallel loop) step has one step key per item (``price[i00003]``) or per chunk of
consecutive items (``price[i00000_i00007]``, ``loop.chunk_size``): its per-run item count is
``loop_items_p50``/``loop_items_max``, its body ops per run ``loop_ops_p50``, and the per-item
duration (a chunk's duration divided by its items) and cores of those ops ``item_p50_ms``,
``item_p99_ms``, ``item_cores_p95``.

Example::

    from noetl_dagster.export.clickhouse import ClickHouseResource
    from noetl_dagster.ai.stats import step_stats

    for s in step_stats(ClickHouseResource().sink()):
        print(s.playbook, s.step, s.failure_rate, s.p99_ms)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from noetl_dagster.export.clickhouse import DEFAULT_DATABASE, STEP_RUNS_TABLE

#: how many run ids each evidence list keeps
MAX_RUN_IDS = 10

STATS_SQL = """
WITH attempts AS (
    SELECT ExecutionId, StepKey, Attempt, PlaybookPath, StepName, ToolKind, Status, DurationMs,
           CpuSeconds, PeakRssMb, Rows, Bytes, ErrorMessage, FinishedAt,
           if(DurationMs > 0 AND CpuSeconds IS NOT NULL, CpuSeconds / (DurationMs / 1000.0), NULL) AS Cores,
           splitByChar('_', replaceAll(splitByChar('[', StepKey)[2], ']', '')) AS KeyRange,
           if(position(StepKey, '[') = 0, 0, if(length(KeyRange) = 2,
              toUInt32OrZero(substring(KeyRange[2], 2)) - toUInt32OrZero(substring(KeyRange[1], 2)) + 1, 1)) AS KeyItems,
           if(KeyItems > 0, DurationMs / KeyItems, NULL) AS ItemMs
    FROM {db}.%(table)s FINAL
    WHERE Status IN ('success', 'error', 'failed', 'retried')
),
groups AS (
    SELECT PlaybookPath, StepName, ExecutionId, StepKey, any(KeyItems) AS key_items,
           argMax(Status, Attempt) AS final_status,
           countIf(Status IN ('error', 'failed', 'retried')) AS failed_attempts,
           count() AS n_attempts
    FROM attempts
    GROUP BY PlaybookPath, StepName, ExecutionId, StepKey
)
SELECT s.PlaybookPath, s.StepName, s.attempts, s.successes,
       g.runs, g.groups, g.failed_groups, g.transient, g.recovered, g.exhausted,
       g.transient_runs, g.failed_runs, g.max_recovery_attempt,
       s.p50, s.p95, s.p99, s.max_ms,
       s.cpu_p50, s.cpu_p95, s.cores_p95, s.cores_max,
       s.mem_p50, s.mem_p99, s.mem_max,
       s.rows_p50, s.rows_max, s.bytes_p50, s.bytes_max,
       l.items_p50, l.items_max, s.tool, s.last_error,
       l.ops_p50, l.loop_runs, s.chunk_max, s.item_p50, s.item_p99, s.item_cores_p95
FROM (
    SELECT PlaybookPath, StepName,
           count() AS attempts,
           countIf(Status = 'success') AS successes,
           quantileExactIf(0.5)(DurationMs, Status = 'success') AS p50,
           quantileExactIf(0.95)(DurationMs, Status = 'success') AS p95,
           quantileExactIf(0.99)(DurationMs, Status = 'success') AS p99,
           maxIf(DurationMs, Status = 'success') AS max_ms,
           quantileExact(0.5)(CpuSeconds) AS cpu_p50,
           quantileExact(0.95)(CpuSeconds) AS cpu_p95,
           quantileExact(0.95)(Cores) AS cores_p95,
           max(Cores) AS cores_max,
           quantileExact(0.5)(PeakRssMb) AS mem_p50,
           quantileExact(0.99)(PeakRssMb) AS mem_p99,
           max(PeakRssMb) AS mem_max,
           quantileExact(0.5)(Rows) AS rows_p50,
           max(Rows) AS rows_max,
           quantileExact(0.5)(Bytes) AS bytes_p50,
           max(Bytes) AS bytes_max,
           any(ToolKind) AS tool,
           max(KeyItems) AS chunk_max,
           quantileExactIf(0.5)(ItemMs, Status = 'success' AND KeyItems > 0) AS item_p50,
           quantileExactIf(0.99)(ItemMs, Status = 'success' AND KeyItems > 0) AS item_p99,
           quantileExactIf(0.95)(Cores, KeyItems > 0) AS item_cores_p95,
           argMaxIf(ErrorMessage, FinishedAt, Status IN ('error', 'failed', 'retried') AND ErrorMessage != '') AS last_error
    FROM attempts
    GROUP BY PlaybookPath, StepName
) AS s
INNER JOIN (
    SELECT PlaybookPath, StepName,
           uniqExact(ExecutionId) AS runs,
           count() AS groups,
           countIf(final_status != 'success') AS failed_groups,
           sumIf(failed_attempts, final_status = 'success') AS transient,
           countIf(final_status = 'success' AND failed_attempts > 0) AS recovered,
           countIf(final_status != 'success' AND n_attempts > 1) AS exhausted,
           groupUniqArrayIf(%(max_ids)d)(ExecutionId, final_status = 'success' AND failed_attempts > 0) AS transient_runs,
           groupUniqArrayIf(%(max_ids)d)(ExecutionId, final_status != 'success') AS failed_runs,
           maxIf(n_attempts, final_status = 'success' AND failed_attempts > 0) AS max_recovery_attempt
    FROM groups
    GROUP BY PlaybookPath, StepName
) AS g ON s.PlaybookPath = g.PlaybookPath AND s.StepName = g.StepName
INNER JOIN (
    SELECT PlaybookPath, StepName, quantileExact(0.5)(items) AS items_p50, max(items) AS items_max,
           quantileExact(0.5)(ops) AS ops_p50,
           groupUniqArrayIf(%(max_ids)d)(ExecutionId, items > 0) AS loop_runs
    FROM (
        SELECT PlaybookPath, StepName, ExecutionId, sum(key_items) AS items, countIf(key_items > 0) AS ops
        FROM groups
        GROUP BY PlaybookPath, StepName, ExecutionId
    )
    GROUP BY PlaybookPath, StepName
) AS l ON s.PlaybookPath = l.PlaybookPath AND s.StepName = l.StepName
ORDER BY s.PlaybookPath, s.StepName
""" % {"table": STEP_RUNS_TABLE, "max_ids": MAX_RUN_IDS}


@dataclass(frozen=True)
class StepStats:
    """What run history says about one step of one playbook (durations in ms, memory in MB)."""

    playbook: str
    step: str
    runs: int                      # distinct runs with a finished attempt
    attempts: int                  # finished attempts (success, failed, retried)
    successes: int
    executions: int                # (run, step key) groups: a mapped loop step counts each item
    failed_executions: int         # groups whose last attempt failed
    transient_failures: int        # failed attempts of groups that then succeeded on retry
    recovered_executions: int      # groups that failed at least once and then succeeded
    exhausted_executions: int      # groups that were retried and still failed
    deterministic_failures: int    # final failures that retries did not (or would not) fix
    intermittent_failures: int     # final failures, never retried, of a step that succeeds elsewhere
    max_recovery_attempt: int      # the latest attempt that recovered (2 = first retry)
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    cpu_seconds_p50: float | None
    cpu_seconds_p95: float | None
    cores_p95: float | None        # CPU seconds / wall seconds
    cores_max: float | None
    peak_mb_p50: float | None
    peak_mb_p99: float | None
    peak_mb_max: float | None
    rows_p50: float | None
    rows_max: float | None
    bytes_p50: float | None
    bytes_max: float | None
    transient_run_ids: tuple[str, ...] = field(default=())
    failed_run_ids: tuple[str, ...] = field(default=())
    loop_items_p50: float | None = None   # items per run of a mapped (parallel loop) step; None otherwise
    loop_items_max: int | None = None
    tool: str = ""
    last_error: str = ""                  # the latest failed attempt's message ("" if none)
    loop_ops_p50: float | None = None     # body ops per run of a mapped step (items / chunk size)
    loop_chunk_max: int | None = None     # most items one body op ran (the chunk size history used)
    item_p50_ms: float | None = None      # per-item duration of successful body ops (op duration / items)
    item_p99_ms: float | None = None
    item_cores_p95: float | None = None   # CPU seconds / wall seconds of the body ops
    loop_run_ids: tuple[str, ...] = field(default=())  # runs of a mapped step (up to 10)

    @property
    def failure_rate(self) -> float:
        """Share of executions that finally failed."""
        return self.failed_executions / self.executions if self.executions else 0.0

    @property
    def attempt_failure_rate(self) -> float:
        """Share of attempts that failed (what one more try risks)."""
        return (self.attempts - self.successes) / self.attempts if self.attempts else 0.0

    @property
    def tail_ratio(self) -> float | None:
        if self.p99_ms and self.p50_ms:
            return self.p99_ms / self.p50_ms
        return None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(failure_rate=round(self.failure_rate, 4), attempt_failure_rate=round(self.attempt_failure_rate, 4))
        return data


def _num(value: Any) -> float | None:
    if value is None:
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) or math.isinf(value) else value


def _query(client: Any, sql: str) -> list[tuple]:
    """Rows from a :class:`ClickHouseSink` (``query``) or a clickhouse-connect client."""
    if hasattr(client, "database") and hasattr(client, "client") and hasattr(client, "query"):
        return list(client.query(sql))
    return list(client.query(sql.replace("{db}", DEFAULT_DATABASE)).result_rows)


def step_stats(client: Any, database: str | None = None) -> list[StepStats]:
    """One :class:`StepStats` per (playbook, step) in ``step_runs``.

    ``client`` is a :class:`~noetl_dagster.export.clickhouse.ClickHouseSink` (its database) or a
    clickhouse-connect client (``database``, default ``observability``).
    """
    sql = STATS_SQL
    if database:
        sql = sql.replace("{db}", database)
    out: list[StepStats] = []
    for row in _query(client, sql):
        (playbook, step, attempts, successes, runs, groups, failed_groups, transient, recovered, exhausted,
         transient_runs, failed_runs, max_recovery, p50, p95, p99, max_ms, cpu_p50, cpu_p95, cores_p95,
         cores_max, mem_p50, mem_p99, mem_max, rows_p50, rows_max, bytes_p50, bytes_max, items_p50, items_max,
         tool, last_error, ops_p50, loop_runs, chunk_max, item_p50, item_p99, item_cores_p95) = row
        failed_groups, exhausted = int(failed_groups), int(exhausted)
        never_succeeds = int(successes) == 0
        deterministic = failed_groups if never_succeeds else exhausted
        out.append(StepStats(
            playbook=str(playbook), step=str(step), runs=int(runs), attempts=int(attempts),
            successes=int(successes), executions=int(groups), failed_executions=failed_groups,
            transient_failures=int(transient), recovered_executions=int(recovered),
            exhausted_executions=exhausted, deterministic_failures=deterministic,
            intermittent_failures=failed_groups - deterministic, max_recovery_attempt=int(max_recovery or 0),
            p50_ms=_num(p50) if successes else None, p95_ms=_num(p95) if successes else None,
            p99_ms=_num(p99) if successes else None, max_ms=_num(max_ms) if successes else None,
            cpu_seconds_p50=_num(cpu_p50), cpu_seconds_p95=_num(cpu_p95), cores_p95=_num(cores_p95),
            cores_max=_num(cores_max), peak_mb_p50=_num(mem_p50), peak_mb_p99=_num(mem_p99),
            peak_mb_max=_num(mem_max), rows_p50=_num(rows_p50), rows_max=_num(rows_max),
            bytes_p50=_num(bytes_p50), bytes_max=_num(bytes_max),
            transient_run_ids=tuple(sorted(transient_runs or ())), failed_run_ids=tuple(sorted(failed_runs or ())),
            loop_items_p50=_num(items_p50) if items_max else None, loop_items_max=int(items_max) if items_max else None,
            tool=str(tool or ""), last_error=str(last_error or ""),
            loop_ops_p50=_num(ops_p50) if items_max else None, loop_chunk_max=int(chunk_max) if items_max else None,
            item_p50_ms=_num(item_p50) if items_max else None, item_p99_ms=_num(item_p99) if items_max else None,
            item_cores_p95=_num(item_cores_p95) if items_max else None,
            loop_run_ids=tuple(sorted(loop_runs or ())),
        ))
    return out


__all__ = ["STATS_SQL", "StepStats", "step_stats"]
