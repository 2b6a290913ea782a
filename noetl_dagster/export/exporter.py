"""Incremental export of the Dagster event log to a sink: cursor, time budget, catch-up.

Delivery is at-least-once with idempotent writes: a tick reads and writes batches to the sink,
moving positions in its own copy of the cursor, and returns that copy only after every write
returned; the caller stores it after the tick. A thread-safe sink (``thread_safe = True``) writes
in a writer thread while the next batch is mapped. If the sink raises, :meth:`Exporter.export`
raises and the stored cursor stays where it was, so the next tick writes the same rows again and
the sink's dedup (ClickHouse ``ReplacingMergeTree`` keyed on the event identity, Qdrant
deterministic point ids) absorbs them.

Which runs: a *discovery* pass reads run status changes (``fetch_run_status_changes``,
``PIPELINE_START`` and the terminal types, merged in storage-id order) after a watermark.
Each discovered playbook run becomes *active*; its events are paged with
``get_records_for_run`` after a per-run position. When a finished run has been read to its
end, its step attempts and summary are computed from its whole log, and it moves to *done*.

Events appended to a finished run (a similar-failures hint, a worker's last events after a
cancel): a finished run stays in ``tail`` with its last exported storage id for ``tail_seconds``
(at most ``max_tail`` runs); each tick probes ``tail_probes`` of them in turn and reopens one with
newer events from that id, so only the new events are written (its step attempts and summary are
rewritten).

Out-of-order ids (Postgres with concurrent writers; SQLite's per-run ids are in order):
positions and the watermark only move past records older than ``lag_seconds``; younger
records are exported but re-read next tick (an overlap window), the dedup absorbs the repeats.

Example::

    exporter = Exporter(instance, ClickHouseResource().sink())
    cursor, stats = exporter.export(ExportCursor(), budget_seconds=30)
    stats.events, cursor.to_json()
"""

from __future__ import annotations

import gc
import json
import sys
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any, Callable, Protocol, Sequence

import dagster as dg

from noetl_dagster.contract import PLAYBOOK_TAG, TOOL_TAG
from noetl_dagster.export.fast_read import read_run_page, shared_connection
from noetl_dagster.export.mapping import (EventRow, RunContext, RunSummary, StepRun, build_run_summary, build_step_runs,
                      map_records, relevant_rows)

_RETRY = "STEP_UP_FOR_RETRY"
_DAGSTER_TYPE = attrgetter("dagster_event_type")
_TIMESTAMP = attrgetter("timestamp")
#: how long after its end a finished run is watched for appended events, and how many runs at most
DEFAULT_TAIL_SECONDS = 3600.0
DEFAULT_MAX_TAIL = 500
#: watched runs probed per tick (one event-log query each), in turn
DEFAULT_TAIL_PROBES = 100
_TAIL_OFFSET = "tail_offset"
TERMINAL_STATUSES = {"SUCCESS", "FAILURE", "CANCELED"}
_START = dg.DagsterEventType.RUN_START
_TERMINAL_TYPES = (dg.DagsterEventType.RUN_SUCCESS, dg.DagsterEventType.RUN_FAILURE,
                   dg.DagsterEventType.RUN_CANCELED)


def tools_by_node(snap: Any) -> dict[str, str]:
    """``{node path: tool kind}`` of a job snapshot, the ops inside graphs included: a product
    playbook's ops live in its graph-backed asset, keyed ``<job>__playbook.<step>`` like their
    step keys."""
    defs = snap.node_defs_snapshot
    by_def = {d.name: d.tags for d in defs.op_def_snaps}
    graphs = {g.name: g for g in defs.graph_def_snaps}
    tools: dict[str, str] = {}

    def walk(structure: Any, prefix: str, depth: int) -> None:
        for inv in structure.node_invocation_snaps:
            path = prefix + inv.node_name
            graph = graphs.get(inv.node_def_name)
            if graph is not None and depth < 8:
                walk(graph.dep_structure_snapshot, path + ".", depth + 1)
                continue
            tool = (inv.tags or {}).get(TOOL_TAG) or by_def.get(inv.node_def_name, {}).get(TOOL_TAG)
            if tool:
                tools[path] = tool

    walk(snap.dep_structure_snapshot, "", 0)
    return tools


@dataclass
class ExportBatch:
    """What one write carries: event rows, step attempts and finished-run summaries."""

    events: list[EventRow] = field(default_factory=list)
    step_runs: list[StepRun] = field(default_factory=list)
    runs: list[RunSummary] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.events) + len(self.step_runs) + len(self.runs)


class Sink(Protocol):
    """A destination: ``write`` must be idempotent for the same rows (replays happen)."""

    name: str
    wants_events: bool  # events and step attempts, live; False: only finished runs
    # optional ``wants_runs``: finished-run summaries (default: when it wants no events)
    # optional ``thread_safe = True``: ``write`` may run in the exporter's writer thread
    # optional ``prepare(batch)``: the CPU part of a write (run by the exporter), its result given to ``write``

    def write(self, batch: ExportBatch) -> None: ...


@dataclass
class ExportCursor:
    """The exporter's state, stored as the sensor cursor (JSON).

    ``watermark``: the storage id of run-status changes all handled; ``watermark_ts`` its time.
    ``active``: run id -> storage id of the last exported event (-1: none yet).
    ``done``: finished runs still inside the re-scan window -> their end time.
    ``tail``: finished runs watched for events appended later -> [end time, last exported storage id].
    ``destination``: where these positions were written (the sink's ``destination``: DSN and
    database, URL and prefix); a cursor of another destination starts over.
    """

    watermark: int = 0
    watermark_ts: float = 0.0
    active: dict[str, int] = field(default_factory=dict)
    done: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    tail: dict[str, list] = field(default_factory=dict)
    destination: str = ""

    def to_json(self) -> str:
        return json.dumps({"v": 1, "w": self.watermark, "wt": self.watermark_ts, "a": self.active,
                           "d": self.done, "x": self.extra, "t": self.tail, "dst": self.destination},
                          separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | None) -> "ExportCursor":
        if not text:
            return cls()
        data = json.loads(text)
        return cls(int(data.get("w", 0)), float(data.get("wt", 0.0)), dict(data.get("a", {})),
                   dict(data.get("d", {})), dict(data.get("x", {})), dict(data.get("t", {})),
                   str(data.get("dst", "")))

    def copy(self) -> "ExportCursor":
        return ExportCursor.from_json(self.to_json())


@dataclass
class ExportStats:
    events: int = 0
    step_runs: int = 0
    runs: int = 0  # finished runs
    failures: int = 0  # steps failed for good (summaries), or failed step attempts (an event sink)
    batches: int = 0
    discovered: int = 0
    reopened: int = 0
    seconds: float = 0.0
    caught_up: bool = False
    error: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def default_lag(instance: dg.DagsterInstance) -> float:
    """0 s on SQLite/in-memory storage (ids become visible in order), 5 s elsewhere (Postgres)."""
    name = type(instance.event_log_storage).__name__
    return 0.0 if ("Sqlite" in name or "InMemory" in name) else 5.0


@contextmanager
def _gc_paused(enabled: bool) -> Any:
    """Pause the cyclic GC for a tick: rows are acyclic (refcounting frees them), and full
    collections over a Dagster process's objects would otherwise cost more than the mapping."""
    if not enabled or not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@contextmanager
def _short_switches(enabled: bool, interval: float = 0.001) -> Any:
    """Let threads hand the interpreter over every ``interval`` s (Python's default is 5 ms) for a
    tick: ClickHouse (chdb) takes the interpreter back several times during an insert, and at 5 ms
    per hand-over the writer thread would wait on the mapping thread instead of working beside it."""
    previous = sys.getswitchinterval()
    if not enabled or previous <= interval:
        yield
        return
    sys.setswitchinterval(interval)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


def _done(fn: Callable[..., Any], *args: Any) -> Future:
    """``fn(*args)`` run now, as a finished future (the writes without a writer thread)."""
    future: Future = Future()
    try:
        future.set_result(fn(*args))
    except BaseException as exc:  # noqa: BLE001 - re-raised by future.result()
        future.set_exception(exc)
    return future


def _id_cursor(storage_id: int) -> str | None:
    from noetl_dagster.compat import EventLogCursor

    return None if storage_id < 0 else EventLogCursor.from_storage_id(storage_id).to_string()


class Exporter:
    """Moves a Dagster instance's playbook-run events into one sink, incrementally.

    Example::

        exporter = Exporter(instance, sink, lag_seconds=0)
        cursor, stats = exporter.export(ExportCursor())        # first pass: catch up
        cursor, stats = exporter.export(cursor)                # later: only what is new
    """

    def __init__(self, instance: dg.DagsterInstance, sink: Sink, *, lag_seconds: float | None = None,
                 batch_size: int = 20000, page_size: int = 1000, max_active: int = 256,
                 playbook_runs_only: bool = True, clock: Callable[[], float] = time.time,
                 max_cached_rows: int = 100_000, pause_gc: bool = True,
                 background_writes: bool | None = None, tail_seconds: float = DEFAULT_TAIL_SECONDS,
                 max_tail: int = DEFAULT_MAX_TAIL, tail_probes: int = DEFAULT_TAIL_PROBES,
                 queued_writes: int = 2, fast_reads: bool = True) -> None:
        self.instance = instance
        self.sink = sink
        self.live = bool(getattr(sink, "wants_events", True))
        self.summaries = bool(getattr(sink, "wants_runs", not self.live))
        self.lag = default_lag(instance) if lag_seconds is None else float(lag_seconds)
        self.batch_size = batch_size
        self.page_size = page_size
        self.max_active = max_active
        self.playbook_runs_only = playbook_runs_only
        self.clock = clock
        self.max_cached_rows = max_cached_rows
        self.pause_gc = pause_gc
        #: write a batch in a thread while the next is mapped (default: when the sink says it is thread-safe)
        self.background_writes = (bool(getattr(sink, "thread_safe", False)) if background_writes is None
                                  else background_writes)
        #: finished runs are watched for appended events this long after their end (at most max_tail runs)
        self.tail_seconds = tail_seconds
        self.max_tail = max_tail
        self.tail_probes = tail_probes
        #: batches handed to the writer thread and not yet written, at most (each holds batch_size rows)
        self.queued_writes = max(1, queued_writes)
        #: read an SQL event log's rows directly, parsing their JSON lazily (:mod:`.fast_read`)
        self.fast_reads = fast_reads
        self._tools: dict[str, dict[str, str]] = {}

    # -- the tick ------------------------------------------------------------------------
    def export(self, cursor: ExportCursor | None = None, budget_seconds: float | None = None
               ) -> tuple[ExportCursor, ExportStats]:
        """One pass: discover runs, export their new events, finish completed runs.

        Stops when caught up or when ``budget_seconds`` is spent (checked between pages).
        Returns the new cursor; raises whatever the sink raises (the old cursor stays valid).
        """
        started = time.monotonic()
        deadline = None if budget_seconds is None else started + budget_seconds
        cur = (cursor or ExportCursor()).copy()
        destination = str(getattr(self.sink, "destination", "") or "")
        if destination and cur.destination and cur.destination != destination:
            cur = ExportCursor()  # positions of another ClickHouse/Qdrant: this one has none of it yet
        cur.destination = destination or cur.destination
        stats = ExportStats()
        self._pending = ExportBatch()
        self._staged_pos: dict[str, int] = {}
        self._staged_done: dict[str, tuple[float, int]] = {}
        now = self.clock()
        safe_ts = now - self.lag

        def over() -> bool:
            return deadline is not None and time.monotonic() > deadline

        self._writing: deque[tuple[Future, ExportBatch]] = deque()
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="noetl-export") if self.background_writes else None
        try:
            with _gc_paused(self.pause_gc), _short_switches(self._writer is not None), \
                    (shared_connection(self.instance) if self.fast_reads else nullcontext()):
                self._reopen(cur, now, stats, over)
                self._loop(cur, safe_ts, stats, over)
                self._flush_pending(stats, final=True)
                self._wait(stats)  # every write returned: only now is the cursor handed back
        finally:
            if self._writer is not None:
                self._writer.shutdown(wait=True)
        self._prune(cur, now)
        stats.seconds = time.monotonic() - started
        return cur, stats

    def _loop(self, cur: ExportCursor, safe_ts: float, stats: ExportStats, over: Callable[[], bool]) -> None:
        while True:
            before = (stats.discovered, stats.runs)
            more = self._discover(cur, safe_ts, stats, over)
            finished_all = self._export_active(cur, safe_ts, stats, over)
            self._advance(cur, stats)
            progressed = (stats.discovered, stats.runs) != before
            if over() or not more or not progressed:
                stats.caught_up = finished_all and not more
                break

    # -- finished runs with appended events ------------------------------------------------
    def _reopen(self, cur: ExportCursor, now: float, stats: ExportStats, over: Callable[[], bool]) -> None:
        """Make finished runs with events after their last exported one active again (from that
        event on), e.g. a hint recorded on a failed run or a step's events after a cancel."""
        self._prune(cur, now)
        watched = list(cur.tail)
        if not watched:
            return
        start = int(cur.extra.get(_TAIL_OFFSET, 0)) % len(watched)  # a rotating slice: each run in turn
        probe = (watched[start:] + watched[:start])[: self.tail_probes]
        cur.extra[_TAIL_OFFSET] = start + len(probe)
        for run_id in probe:
            if over():
                return
            last = cur.tail[run_id][1]
            if run_id in cur.active:
                continue
            if self.instance.get_records_for_run(run_id, cursor=_id_cursor(last), limit=1).records:
                del cur.tail[run_id]
                cur.active[run_id] = last
                stats.reopened += 1

    # -- discovery -----------------------------------------------------------------------
    def _discover(self, cur: ExportCursor, safe_ts: float, stats: ExportStats, over: Callable[[], bool]) -> bool:
        """Add newly started/finished runs to ``active``; returns whether more remain."""
        from noetl_dagster.compat import RunStatusChangeRecordsFilter

        types = ((_START,) if self.live else ()) + _TERMINAL_TYPES
        scan_from = cur.watermark
        contiguous = True
        while not over():
            capacity = self.max_active - len(cur.active)
            if capacity <= 0:
                return True
            pages = {t: self.instance.fetch_run_status_changes(
                RunStatusChangeRecordsFilter(t, after_storage_id=scan_from), limit=self.page_size, ascending=True)
                for t in types}
            full = [p.records[-1].storage_id for p in pages.values() if p.has_more and p.records]
            bound = min(full) if full else None
            records = sorted((r for p in pages.values() for r in p.records
                              if bound is None or r.storage_id <= bound), key=lambda r: r.storage_id)
            if not records:
                if contiguous and bound is None:
                    cur.watermark_ts = max(cur.watermark_ts, safe_ts)
                return False
            self._prefetch_wanted([r.event_log_entry.run_id for r in records
                                   if r.event_log_entry.run_id not in cur.active
                                   and r.event_log_entry.run_id not in cur.done])
            for rec in records:
                run_id = rec.event_log_entry.run_id
                if run_id not in cur.active and run_id not in cur.done:
                    if capacity <= 0:
                        return True
                    if self._wanted(run_id):
                        cur.active[run_id] = -1
                        capacity -= 1
                        stats.discovered += 1
                    else:
                        cur.done[run_id] = rec.event_log_entry.timestamp
                if contiguous and rec.event_log_entry.timestamp <= safe_ts:
                    cur.watermark, cur.watermark_ts = rec.storage_id, rec.event_log_entry.timestamp
                else:
                    contiguous = False
                scan_from = rec.storage_id
            if bound is None:
                return False
        return True

    def _prefetch_wanted(self, run_ids: Sequence[str]) -> None:
        """Whether each of a page's new runs is a playbook run, in one run-storage query (one
        query per run costs a connection each on Postgres)."""
        self._wanted_runs: dict[str, bool] = {}
        if not self.playbook_runs_only or not run_ids:
            return
        unique = list(dict.fromkeys(run_ids))
        try:
            runs = self.instance.get_runs(dg.RunsFilter(run_ids=unique))
        except Exception:  # noqa: BLE001 - a stand-in instance: ask run by run
            return
        self._wanted_runs = {run.run_id: bool(run.tags.get(PLAYBOOK_TAG)) for run in runs}
        self._wanted_runs.update({r: False for r in unique if r not in self._wanted_runs})

    def _wanted(self, run_id: str) -> bool:
        if not self.playbook_runs_only:
            return True
        known = getattr(self, "_wanted_runs", {}).get(run_id)
        if known is not None:
            return known
        run = self.instance.get_run_by_id(run_id)
        return run is not None and bool(run.tags.get(PLAYBOOK_TAG))

    # -- per-run export ------------------------------------------------------------------
    def _context(self, record: Any) -> RunContext:
        run = record.dagster_run
        snapshot_id = run.job_snapshot_id
        if snapshot_id and snapshot_id not in self._tools:
            tools: dict[str, str] = {}
            try:
                snap = self.instance.get_job_snapshot(snapshot_id)
                tools = tools_by_node(snap)
            except Exception:  # noqa: BLE001 - a missing snapshot only loses the tool kind
                pass
            if len(self._tools) > 512:
                self._tools.clear()
            self._tools[snapshot_id] = tools
        return RunContext.of(run, self._tools.get(snapshot_id or "", {}), record.start_time, record.end_time)

    def _export_active(self, cur: ExportCursor, safe_ts: float, stats: ExportStats,
                       over: Callable[[], bool]) -> bool:
        """Export the new events of every active run; returns whether all were read to the end."""
        if not cur.active:
            return True
        records = {r.dagster_run.run_id: r for r in self.instance.get_run_records(
            dg.RunsFilter(run_ids=list(cur.active)))}
        all_read = True
        for run_id in list(cur.active):
            if over():
                return False
            record = records.get(run_id)
            if record is None:  # deleted run: nothing left to export
                cur.active.pop(run_id, None)
                continue
            ctx = self._context(record)
            terminal = ctx.status in TERMINAL_STATUSES
            read_all, safe, rows = True, True, None
            if self.live:
                read_all, safe, rows = self._export_events(run_id, ctx, cur.active[run_id], safe_ts, stats, over)
            else:
                ended = ctx.end_time or record.update_timestamp.timestamp()
                safe = ended <= safe_ts
            all_read = all_read and read_all
            if terminal and read_all and safe:
                self._finish(run_id, ctx, rows, self._staged_pos.get(run_id, cur.active[run_id]))
            self._flush_pending(stats)
        return all_read

    def _export_events(self, run_id: str, ctx: RunContext, position: int, safe_ts: float,
                       stats: ExportStats, over: Callable[[], bool]) -> tuple[bool, bool, list[EventRow] | None]:
        """Page through a run's new events.

        Returns (read to the end, every read event older than the lag, the run's whole rows when
        they were all read in this tick - so finishing the run needs no second read).
        """
        retries: list[tuple[int, str]] = []
        if position >= 0:  # earlier retry events decide the attempt numbers of what follows
            retries = [(r.storage_id, r.event_log_entry.step_key) for r in self.instance.get_records_for_run(
                run_id, of_type=dg.DagsterEventType.STEP_UP_FOR_RETRY).records]
        whole: list[EventRow] | None = [] if position < 0 else None
        read_to = position
        safe = True
        while True:
            records, has_more = self._page(run_id, read_to)
            if records:
                rows = map_records(records, ctx, retries)
                if _RETRY in map(_DAGSTER_TYPE, rows):
                    retries.extend((r.event_id, r.node_name) for r in rows if r.dagster_event_type == _RETRY)
                self._pending.events.extend(rows)
                if whole is not None:
                    whole.extend(relevant_rows(rows))
                    if len(whole) > self.max_cached_rows:
                        whole = None
                if safe and max(map(_TIMESTAMP, rows)) <= safe_ts:
                    self._staged_pos[run_id] = records[-1].storage_id
                else:
                    for r in records:
                        if safe and r.event_log_entry.timestamp <= safe_ts:
                            self._staged_pos[run_id] = r.storage_id
                        else:
                            safe = False
                read_to = records[-1].storage_id
            self._flush_pending(stats)
            if not has_more:
                return True, safe, whole
            if over():
                return False, safe, None

    def summarize(self, run_id: str, ctx: RunContext | None = None,
                  rows: Sequence[EventRow] | None = None) -> tuple[list[StepRun], RunSummary]:
        """A run's step attempts and summary, from its whole log (for a finished run).

        Example: ``steps, summary = Exporter(instance, sink).summarize(run_id)``
        """
        if ctx is None:
            record = self.instance.get_run_record_by_id(run_id)
            if record is None:
                raise ValueError(f"no run {run_id}")
            ctx = self._context(record)
        if rows is None:
            rows = map_records(self._whole(run_id), ctx)
        rows = relevant_rows(rows)
        return build_step_runs(rows), build_run_summary(rows, ctx)

    def _page(self, run_id: str, after: int) -> tuple[Sequence[Any], bool]:
        """The run's next ``page_size`` records after storage id ``after`` and whether more remain:
        read straight from an SQL event log (:mod:`.fast_read`), else through the instance."""
        page = read_run_page(self.instance, run_id, after, self.page_size) if self.fast_reads else None
        if page is not None:
            return page
        conn = self.instance.get_records_for_run(run_id, cursor=_id_cursor(after), limit=self.page_size)
        return conn.records, conn.has_more

    def _whole(self, run_id: str) -> Sequence[Any]:
        page = read_run_page(self.instance, run_id, -1, None) if self.fast_reads else None
        return page[0] if page is not None else self.instance.get_records_for_run(run_id).records

    def _finish(self, run_id: str, ctx: RunContext, rows: Sequence[EventRow] | None, last: int) -> None:
        """A finished run read to its end (``last``: its last storage id, -1 unknown): its step
        attempts (an event sink) and summary (a run sink), from its whole log."""
        if rows is None:
            records = self._whole(run_id)
            rows = map_records(records, ctx)
            if not self.live:  # an event sink watches from what it wrote, not from what it re-read
                last = records[-1].storage_id if records else last
        rows = relevant_rows(rows)
        if self.live:
            self._pending.step_runs.extend(build_step_runs(rows))
        if self.summaries:
            self._pending.runs.append(build_run_summary(rows, ctx))
        self._staged_done[run_id] = (ctx.end_time or (rows[-1].timestamp if rows else self.clock()), last)

    # -- commit --------------------------------------------------------------------------
    def _flush_pending(self, stats: ExportStats, final: bool = False) -> None:
        """Hand the pending events (and step attempts and summaries) to the writer once there are
        ``batch_size`` of them, or all of them when ``final``; up to ``queued_writes`` batches wait
        for the writer thread while the next one is mapped (a slow insert does not stall the mapping).
        Positions move in :meth:`_advance` (a tick that raises returns no cursor at all)."""
        pending = self._pending
        events = final or len(pending.events) >= self.batch_size
        rest = final or len(pending.step_runs) + len(pending.runs) >= self.batch_size
        if not (events or rest):
            return
        batch = ExportBatch(pending.events if events else [], pending.step_runs if rest else [],
                            pending.runs if rest else [])
        self._pending = ExportBatch([] if events else pending.events, [] if rest else pending.step_runs,
                                    [] if rest else pending.runs)
        if not len(batch):
            return
        prepare = getattr(self.sink, "prepare", None)  # encoding, here: the writer thread only does I/O
        payload = prepare(batch) if prepare is not None else batch
        self._wait(stats, keep=self.queued_writes - 1)
        self._writing.append((self._writer.submit(self.sink.write, payload) if self._writer is not None
                              else _done(self.sink.write, payload), batch))

    def _wait(self, stats: ExportStats, keep: int = 0) -> None:
        """Wait for the oldest writes until ``keep`` are in flight; count them, or raise what the
        sink raised."""
        while len(self._writing) > keep:
            self._count(self._writing.popleft(), stats)

    def _count(self, write: tuple[Future, ExportBatch], stats: ExportStats) -> None:
        future, batch = write
        future.result()
        stats.batches += 1
        stats.events += len(batch.events)
        stats.step_runs += len(batch.step_runs)
        stats.failures += (sum(len(r.failures) for r in batch.runs) if self.summaries
                           else sum(s.status in ("failed", "error") for s in batch.step_runs))

    def _advance(self, cur: ExportCursor, stats: ExportStats) -> None:
        """Move the positions in the tick's copy of the cursor (finished runs leave ``active``, so
        discovery can take more); :meth:`export` writes what is still pending and returns the
        cursor only after every write returned (a write that raises makes the tick raise: the
        caller keeps its cursor)."""
        for run_id, pos in self._staged_pos.items():
            if run_id in cur.active:
                cur.active[run_id] = max(cur.active[run_id], pos)
        for run_id, (end, last) in self._staged_done.items():
            cur.active.pop(run_id, None)
            cur.done[run_id] = end
            if last >= 0 and self.tail_seconds > 0:
                cur.tail[run_id] = [end, last]
        stats.runs += len(self._staged_done)
        self._staged_pos.clear()
        self._staged_done.clear()

    def _prune(self, cur: ExportCursor, now: float) -> None:
        """Forget done runs whose status changes are all behind the watermark, and stop watching
        runs that ended more than ``tail_seconds`` ago (beyond ``max_tail``: the oldest)."""
        horizon = cur.watermark_ts - self.lag - 1.0
        for run_id in [r for r, end in cur.done.items() if end < horizon]:
            del cur.done[run_id]
        oldest = now - self.tail_seconds
        kept = sorted(((v[0], r) for r, v in cur.tail.items() if v[0] >= oldest), reverse=True)[: self.max_tail]
        if len(kept) < len(cur.tail):
            keep = {r for _, r in kept}
            cur.tail = {r: v for r, v in cur.tail.items() if r in keep}


__all__ = ["ExportBatch", "ExportCursor", "ExportStats", "Exporter", "Sink", "default_lag"]
