"""Event export throughput: 1M synthetic Dagster events -> chdb, against a raw clickhouse-connect insert.

In one process, on one embedded ClickHouse (chdb through clickhouse-connect's ``chdb://`` DSN):

* **export**: the real :class:`~noetl_dagster.export.exporter.Exporter` over an in-memory stand-in
  for the Dagster instance (status changes, run records, ``get_records_for_run`` pages) holding
  ``--runs`` runs of ``--events-per-run`` synthetic ``EventLogRecord``s (a realistic mix: run
  start/end, step start/input/output with usage metadata/handled output/success, some failures
  and skips). Timed: discovery, paging, mapping to NoETL rows, step attempts and run summaries,
  Arrow conversion and the inserts into ``noetl_events`` and ``step_runs``. Not timed: reading
  Dagster's own database (JSON deserialisation), which depends on the storage.
* **raw**: the same ``noetl_events`` rows, already built, inserted with ``client.insert`` (row
  lists, clickhouse-connect's standard call) in batches of the same size: with default settings
  (the target's baseline) and with the sink's insert settings; and, for reference, with
  ``client.insert_arrow`` of prebuilt Arrow tables (the fastest raw path). Each raw table is
  checked to hold exactly the exported rows (count and hash of every column, after ``FINAL``).

The paths run in ``--repeat`` interleaved rounds (each into a fresh database), so that a slow
spell of a shared machine hits every path alike. Prints the best round's wall and CPU seconds and
events/s for each path, the ratio export/raw (best/best, and the median of the per-round ratios;
targets: >= 100k events/s, <= 1.5x raw), and embedding throughput (texts/s) of the MiniLM and
hashing embedders.
The export writes a batch in a writer thread while mapping the next (chdb releases the GIL), so
on a busy machine its wall time depends on a second core being free: compare CPU seconds too.

Run: ``.venv/bin/python benchmarks/export.py [--events 1000000] [--quick] [--repeat 3]``. Never asserts times.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import environment_line, profiled, quiet_warnings, table, timed  # noqa: E402

quiet_warnings()

import dagster as dg  # noqa: E402
from dagster._core.events.log import EventLogEntry  # noqa: E402
from dagster._core.storage.event_log.base import EventLogCursor, EventLogRecord  # noqa: E402

from noetl_dagster.export.clickhouse import (EVENT_COLUMNS, INSERT_SETTINGS, ClickHouseSink,  # noqa: E402
                                                get_client, rows_to_arrow)
from noetl_dagster.export.exporter import ExportCursor, Exporter  # noqa: E402
from noetl_dagster.export.mapping import RunContext, map_records  # noqa: E402


# -- synthetic event log ---------------------------------------------------------------------

def template_records() -> dict[str, list[EventLogRecord]]:
    """Real records of two real playbook runs (a success and a failure) to copy events from."""
    from noetl_dagster import run_playbook

    cases = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "conformance", "cases")
    out = {}
    with dg.instance_for_test() as instance:
        for name, case in (("ok", "12_loop_parallel"), ("failed", "21_failure_skips_downstream")):
            rid = run_playbook(os.path.join(cases, case, "playbook.yaml"), {}, instance=instance,
                               log_level="CRITICAL").run_id
            out[name] = instance.get_records_for_run(rid).records
    return out


def _renamed(record: EventLogRecord, step: str) -> EventLogEntry:
    entry = record.event_log_entry
    event = entry.dagster_event
    if event is not None:
        event = event._replace(step_key=step)
    return entry._replace(step_key=step, dagster_event=event)


def synthetic_run(templates: dict[str, list[EventLogRecord]], events: int, failing: bool) -> list[EventLogRecord]:
    """One run's records, ids 1..n (as on SQLite, where ids restart per run): the real run's
    header, then copies of a real step's events under new step names (every tenth a mapped
    loop item), then a real failure (failing runs) and the real run end."""
    ok, bad = templates["ok"], templates["failed"]
    head = [r for r in ok if r.event_log_entry.step_key is None][:5]
    step_block = [r for r in ok if r.event_log_entry.step_key == "total"]
    fail_block = [r for r in bad if r.event_log_entry.step_key in ("divide", "format", "end")]
    tail = [r for r in (bad if failing else ok) if r.event_log_entry.step_key is None][-2:]
    body_budget = events - len(head) - len(tail) - (len(fail_block) if failing else 0)
    entries = [r.event_log_entry for r in head]
    i = 0
    while len(entries) - len(head) + len(step_block) <= body_budget:
        step = f"step_{i:04d}" if i % 10 else f"loop_{i:04d}[i{i:05d}]"
        entries.extend(_renamed(r, step) for r in step_block)
        i += 1
    while len(entries) - len(head) < body_budget:
        entries.append(head[-1].event_log_entry)  # LOGS_CAPTURED-like filler
    if failing:
        entries.extend(r.event_log_entry for r in fail_block)
    entries.extend(r.event_log_entry for r in tail)
    t0 = 1_700_000_000.0
    return [EventLogRecord(storage_id=n, event_log_entry=e._replace(timestamp=t0 + n * 0.01))
            for n, e in enumerate(entries, start=1)]


@dataclass
class FakeInstance:
    """The instance calls the Exporter makes, over in-memory runs sharing one template log."""

    run_ids: list[str]
    logs: dict[bool, list[EventLogRecord]]

    def __post_init__(self) -> None:
        self.event_log_storage = SimpleNamespace()
        self.failing = {rid: i % 10 == 9 for i, rid in enumerate(self.run_ids)}
        status_records = []
        for i, rid in enumerate(self.run_ids):
            log = self.logs[self.failing[rid]]
            for etype, rec in (("PIPELINE_START", log[0]), (log[-1].event_log_entry.dagster_event.event_type_value, log[-1])):
                entry = rec.event_log_entry._replace(run_id=rid)
                status_records.append((etype, EventLogRecord(storage_id=len(status_records) + 1, event_log_entry=entry)))
        self.status = status_records
        self.runs = {rid: dg.DagsterRun(job_name="bench__job", run_id=rid,
                                        tags={"noetl/playbook": "bench/job", "noetl/domain": "bench"},
                                        status=dg.DagsterRunStatus.FAILURE if self.failing[rid] else dg.DagsterRunStatus.SUCCESS)
                     for rid in self.run_ids}

    def fetch_run_status_changes(self, records_filter: Any, limit: int, cursor: Any = None, ascending: bool = True) -> Any:
        etype = records_filter.event_type.value
        after = records_filter.after_storage_id or 0
        found = [r for t, r in self.status if t == etype and r.storage_id > after][: limit + 1]
        return SimpleNamespace(records=found[:limit], cursor="", has_more=len(found) > limit)

    def get_run_by_id(self, run_id: str) -> Any:
        return self.runs.get(run_id)

    def get_run_records(self, filters: Any) -> list[Any]:
        return [SimpleNamespace(dagster_run=self.runs[r], start_time=self.logs[self.failing[r]][0].event_log_entry.timestamp,
                                end_time=self.logs[self.failing[r]][-1].event_log_entry.timestamp, update_timestamp=None)
                for r in filters.run_ids if r in self.runs]

    def get_records_for_run(self, run_id: str, cursor: str | None = None, of_type: Any = None,
                            limit: int | None = None, ascending: bool = True) -> Any:
        log = self.logs[self.failing[run_id]]
        if of_type is not None:
            wanted = {t.value for t in ([of_type] if isinstance(of_type, dg.DagsterEventType) else of_type)}
            found = [r for r in log if r.event_log_entry.dagster_event.event_type_value in wanted]
            return SimpleNamespace(records=found, cursor="", has_more=False)
        start = EventLogCursor.parse(cursor).storage_id() if cursor else 0
        chunk = log[start: start + limit] if limit else log[start:]
        return SimpleNamespace(records=chunk, cursor="", has_more=bool(limit) and start + len(chunk) < len(log))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--events-per-run", type=int, default=500)
    parser.add_argument("--batch", type=int, default=Exporter.__init__.__kwdefaults__["batch_size"])
    parser.add_argument("--texts", type=int, default=256, help="texts for the embedding throughput")
    parser.add_argument("--quick", action="store_true", help="100k events, 64 texts")
    parser.add_argument("--repeat", type=int, default=3, help="interleaved rounds (best per path is reported)")
    parser.add_argument("--profile", action="store_true", help="cProfile the first export round")
    args = parser.parse_args(argv)
    if args.quick:
        args.events, args.texts = 100_000, 64
    runs = max(1, args.events // args.events_per_run)
    total = runs * args.events_per_run
    print(environment_line())
    print(f"{total:,} synthetic events in {runs:,} runs of {args.events_per_run}; batches of {args.batch:,}")

    templates = template_records()
    logs = {False: synthetic_run(templates, args.events_per_run, False),
            True: synthetic_run(templates, args.events_per_run, True)}
    instance = FakeInstance([f"run-{i:06d}" for i in range(runs)], logs)
    folder = tempfile.mkdtemp(prefix="bench_chdb.")
    client = get_client(f"chdb://{folder}")

    # warm up both insert paths once (first-use imports inside pyarrow / clickhouse-connect)
    warm = ClickHouseSink(client, "bench_warmup")
    sample = map_records(logs[False][:50], RunContext("warm"))
    warm.write_events(sample)
    client.insert_arrow("noetl_events", _arrow_table(sample), database="bench_warmup")
    client.insert("noetl_events", [[getattr(r, a) if c != "Timestamp" else _dt(r.timestamp)
                                    for c, a in EVENT_COLUMNS.items()] for r in sample],
                  database="bench_warmup", column_names=list(EVENT_COLUMNS))

    # the noetl_events rows the export writes, built untimed, for the raw paths (row lists; prebuilt Arrow)
    ctx_rows = []
    for i, rid in enumerate(instance.run_ids):
        record = instance.get_run_records(SimpleNamespace(run_ids=[rid]))[0]
        ctx = RunContext.of(record.dagster_run, {}, record.start_time, record.end_time)
        ctx_rows.extend(map_records(logs[instance.failing[rid]], ctx))
    names = list(EVENT_COLUMNS)
    batches = [ctx_rows[i: i + args.batch] for i in range(0, len(ctx_rows), args.batch)]
    as_lists = [[[getattr(r, EVENT_COLUMNS[c]) if c != "Timestamp" else _dt(r.timestamp) for c in names] for r in b]
                for b in batches]
    tables = [_arrow_table(b) for b in batches]
    del ctx_rows, batches
    raw_paths = (
        ("raw", "raw client.insert (row lists)", None, client.insert, as_lists),
        ("raw_same", "raw client.insert (row lists, the sink's insert settings)", INSERT_SETTINGS, client.insert,
         as_lists),
        ("arrow", "raw client.insert_arrow (prebuilt Arrow, the sink's insert settings)", INSERT_SETTINGS,
         client.insert_arrow, tables))

    # rounds: the export, then each raw path, each into a fresh database (interleaved, so that a slow
    # spell of this machine hits every path alike); per path the best round is reported
    times: dict[str, list[tuple[float, float]]] = {"export": []}
    for round_ in range(args.repeat):
        database = f"bench_export_{round_}"
        sink = ClickHouseSink(client, database)
        sink.migrate()
        exporter = Exporter(instance, sink, lag_seconds=0, batch_size=args.batch, page_size=1000, max_active=256)
        with profiled(args.profile and round_ == 0, "export"):
            export_s, export_cpu, (cursor, stats) = timed(lambda: exporter.export(ExportCursor()))
        assert stats.events == total and stats.caught_up, stats
        assert sink.count_events() == total
        times["export"].append((export_s, export_cpu))
        _settle(client, database)
        exported = _digest(client, database)
        for key, label, settings, insert, blocks in raw_paths:
            target = f"bench_{key}_{round_}"
            ClickHouseSink(client, target).migrate()
            kwargs = {"column_names": names} if insert == client.insert else {}

            def insert_all() -> None:
                for block in blocks:
                    insert("noetl_events", block, database=target, settings=settings, **kwargs)

            gc.disable()  # the same conditions as the exporter, which pauses the cyclic GC during a tick
            seconds, cpu, _ = timed(insert_all)
            gc.enable()
            times.setdefault(key, []).append((seconds, cpu))
            assert _digest(client, target) == exported, f"{key}: not the exported rows"
            client.command(f"DROP DATABASE {target}")
        client.command(f"DROP DATABASE {database}")
    del as_lists, tables

    best = {key: min(values) for key, values in times.items()}
    export_s, export_cpu = best["export"]
    rate = total / export_s
    ratio = export_s / best["raw"][0]
    per_round = sorted(e[0] / r[0] for e, r in zip(times["export"], times["raw"]))
    median_ratio = per_round[len(per_round) // 2]
    labels = {key: label for key, label, *_ in raw_paths}
    print()
    print(table(["path", "seconds", "CPU s", "events/s", "export / path"], [
        ["export (Exporter -> noetl_events + step_runs)", f"{export_s:.2f}", f"{export_cpu:.2f}", f"{rate:,.0f}",
         "1.00"],
        *([labels[key], f"{seconds:.2f}", f"{cpu:.2f}", f"{total / seconds:,.0f}", f"{export_s / seconds:.2f}"]
          for key, (seconds, cpu) in best.items() if key != "export"),
    ]))
    print(f"\nbest of {args.repeat} interleaved rounds per path; per round, export / raw client.insert: "
          + ", ".join(f"{e[0]:.2f} s / {r[0]:.2f} s = {e[0] / r[0]:.2f}" for e, r in zip(times["export"], times["raw"])))
    print(f"export: {stats.events:,} events, {stats.step_runs:,} step runs, {stats.runs:,} finished runs "
          f"in {stats.batches} batches; every raw table holds the exported noetl_events rows (same digest)")
    print(f"targets: >= 100,000 events/s -> {rate:,.0f} ({'met' if rate >= 100_000 else 'NOT met'}); "
          f"<= 1.5x raw client.insert -> {ratio:.2f}x best/best, {median_ratio:.2f}x median round "
          f"({'met' if max(ratio, median_ratio) <= 1.5 else 'NOT met'})")

    # embedding throughput
    from noetl_dagster.export.embedder import HashingEmbedder, MiniLMEmbedder

    texts = [f"step 'load_{i}' (python): ConnectionError: could not connect to server on port {5000 + i}: "
             f"connection refused | step load_{i} of playbook crm/load_{i % 13}" for i in range(args.texts)]
    rows = []
    for name, emb in (("MiniLM int8 ONNX (onnxruntime)", MiniLMEmbedder()), ("hashing (numpy)", HashingEmbedder())):
        emb.embed(texts[:2])  # load the model
        start = time.perf_counter()
        emb.embed(texts)
        seconds = time.perf_counter() - start
        rows.append([name, f"{len(texts)}", f"{seconds:.2f}", f"{len(texts) / seconds:,.0f}"])
    print()
    print(table(["embedder", "texts", "seconds", "texts/s"], rows))
    return 0


def _arrow_table(rows: list[Any]) -> Any:
    """``noetl_events`` rows as the Arrow table the sink builds (for the ``insert_arrow`` reference path)."""
    return rows_to_arrow(rows, EVENT_COLUMNS)


def _settle(client: Any, database: str) -> None:
    """Merge a database's tables now (untimed), so that no background merge of one path runs
    during the next path's timing (each path pays the merges of its own inserts while it runs)."""
    for name in ("noetl_events", "step_runs"):
        client.command(f"OPTIMIZE TABLE {database}.{name} FINAL")


def _digest(client: Any, database: str) -> tuple:
    """(rows, order-independent hash of every column) of a database's ``noetl_events``."""
    columns = ", ".join(EVENT_COLUMNS)
    return tuple(client.query(f"SELECT count(), groupBitXor(cityHash64({columns})) "
                              f"FROM {database}.noetl_events FINAL").result_rows[0])


def _dt(ts: float) -> Any:
    import datetime

    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc)


if __name__ == "__main__":
    sys.exit(main())
