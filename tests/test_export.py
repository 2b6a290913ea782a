"""Event-log export to ClickHouse (real chdb through clickhouse-connect), on SQLite instance storage.

chdb allows one data folder per process: every test here shares one folder and gets its own
database.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import dagster as dg
import pytest

from noetl_dagster import run_playbook
from noetl_dagster.export.clickhouse import ClickHouseResource, ClickHouseSink, get_client
from noetl_dagster.export.sensors import (ExportCursor, Exporter, clickhouse_export_sensor, export_definitions,
                                   register_env_secrets)
from noetl_dagster.export.cli import load_cursor, run_export
from noetl_dagster.export.mapping import RunContext, map_record, map_records, step_name_of
from pg import PgServer, pg_instance, pg_server  # noqa: F401  (tests/pg.py: a real PostgreSQL 15)

CASES = Path(__file__).parent / "conformance" / "cases"


@pytest.fixture
def sink(chdb_dsn: str) -> ClickHouseSink:
    return ClickHouseSink(get_client(chdb_dsn), database=f"t_{uuid.uuid4().hex[:10]}")


def run_case(instance: dg.DagsterInstance, case: str, workload: dict | None = None) -> str:
    return run_playbook(CASES / case / "playbook.yaml", workload or {}, instance=instance, log_level="CRITICAL").run_id


def event_ids(instance: dg.DagsterInstance, run_ids: list[str]) -> set[tuple[str, int]]:
    return {(rid, r.storage_id) for rid in run_ids for r in instance.get_records_for_run(rid).records}


def exported_ids(sink: ClickHouseSink) -> list[tuple[str, int]]:
    return [tuple(r) for r in sink.query("SELECT ExecutionId, EventId FROM {db}.noetl_events FINAL")]


def raw_count(sink: ClickHouseSink, table: str = "noetl_events") -> int:
    return int(sink.query(f"SELECT count() FROM {{db}}.{table}")[0][0])


@pytest.fixture(scope="module")
def runs() -> Iterator[tuple[dg.DagsterInstance, list[str]]]:
    """One SQLite instance with a linear, a parallel-loop and a failing playbook run."""
    with dg.instance_for_test() as instance:
        ids = [run_case(instance, c) for c in ("01_linear_chain", "12_loop_parallel", "21_failure_skips_downstream")]
        yield instance, ids


def test_every_event_lands_exactly_once(runs, sink: ClickHouseSink) -> None:
    instance, ids = runs
    cursor, stats = Exporter(instance, sink).export(ExportCursor())
    expected = event_ids(instance, ids)
    got = exported_ids(sink)
    assert len(got) == len(set(got)) == len(expected)
    assert set(got) == expected
    assert stats.caught_up and stats.events == len(expected) and stats.runs == 3
    assert cursor.active == {}  # every run finished and left the active set
    # step attempts: one row per op attempt plus skipped steps
    rows = sink.query("SELECT ExecutionId, StepKey, Status FROM {db}.step_runs FINAL")
    by_run = {rid: {k: s for r, k, s in rows if r == rid} for rid in ids}
    assert by_run[ids[0]] and set(by_run[ids[0]].values()) == {"success"}
    assert {k for k in by_run[ids[1]] if k.startswith("price_lines[")} == {f"price_lines[i0000{i}]" for i in range(4)}
    assert by_run[ids[2]] == {"start": "success", "divide": "failed", "format": "skipped", "end": "skipped"}


def test_replaying_the_same_range_adds_nothing(runs, sink: ClickHouseSink) -> None:
    instance, ids = runs
    exporter = Exporter(instance, sink)
    cursor, _ = exporter.export(ExportCursor())
    events, steps = sink.count_events(), sink.count_step_runs()
    again, stats = exporter.export(cursor)  # from the stored cursor: nothing new
    assert stats.events == 0 and stats.runs == 0
    _, stats = exporter.export(ExportCursor())  # from scratch: everything rewritten...
    assert stats.events == events
    assert sink.count_events() == events and sink.count_step_runs() == steps  # ...and deduplicated
    assert raw_count(sink) == 2 * events  # the duplicates really were written
    assert set(exported_ids(sink)) == event_ids(instance, ids)


def test_event_mapping_follows_noetl(runs, sink: ClickHouseSink) -> None:
    instance, ids = runs
    Exporter(instance, sink).export(ExportCursor())
    rows = sink.query(
        "SELECT EventType, Status, StepName, NodeName, PlaybookPath, Domain, ErrorMessage, Metadata, Attempt "
        "FROM {db}.noetl_events FINAL WHERE ExecutionId = {rid:String} ORDER BY EventId", {"rid": ids[2]})
    types = [r[0] for r in rows]
    assert types[0] == "playbook_started" and types[-1] == "playbook.failed"
    for expected in ("step.enter", "call.done", "command.completed", "command.failed", "step.skipped"):
        assert expected in types
    failed = next(r for r in rows if r[0] == "command.failed")
    assert failed[1] == "FAILED" and failed[2] == "divide" and failed[4] == "conformance/failure_skips_downstream"
    assert failed[5] == "conformance" and "ZeroDivisionError" in failed[6] and failed[8] == 1
    assert failed[7]["tool"] == "python" and failed[7]["failed_step"] == "divide"
    assert {r[2] for r in rows if r[0] == "step.skipped"} == {"format", "end"}
    done = next(r for r in rows if r[0] == "call.done")
    assert float(done[7]["cpu_seconds"]) >= 0 and float(done[7]["peak_rss_mb"]) > 0
    assert rows[-1][3] == "playbook" and rows[-1][6]  # run-level: node "playbook", error kept
    # loop ops carry the step name and the mapping key
    loop = sink.query("SELECT DISTINCT StepName, NodeName, Metadata['mapping_key'] FROM {db}.noetl_events FINAL "
                      "WHERE ExecutionId = {rid:String} AND NodeName LIKE 'price_lines[%'", {"rid": ids[1]})
    assert {r[0] for r in loop} == {"price_lines"} and {r[2] for r in loop} == {f"i0000{i}" for i in range(4)}
    durations = sink.query("SELECT Duration FROM {db}.noetl_events FINAL WHERE EventType IN "
                           "('command.completed', 'playbook.completed')")
    assert all(d[0] > 0 for d in durations)


@pytest.mark.parametrize("threaded", [False, True], ids=["inline", "writer-thread"])
def test_a_sink_raising_mid_batch_loses_and_duplicates_nothing(runs, sink: ClickHouseSink, threaded: bool) -> None:
    instance, ids = runs

    class HalfThenDown:
        """Writes half of the first batch, then raises (a crash mid-batch); healthy afterwards."""

        name, wants_events, thread_safe = "clickhouse", True, threaded

        def __init__(self) -> None:
            self.fail = True
            self.threads: set[str] = set()

        def write(self, batch: Any) -> None:
            self.threads.add(threading.current_thread().name)
            if self.fail:
                self.fail = False
                sink.write_events(batch.events[: len(batch.events) // 2])
                raise ConnectionError("ClickHouse went away")
            sink.write(batch)

    flaky = HalfThenDown()
    cursor = ExportCursor()
    with pytest.raises(ConnectionError):
        Exporter(instance, flaky, batch_size=50).export(cursor)
    assert cursor.to_json() == ExportCursor().to_json()  # the caller's cursor did not move
    partial = raw_count(sink)
    assert 0 < partial < len(event_ids(instance, ids))
    cursor, stats = Exporter(instance, flaky, batch_size=50).export(cursor)  # the retry tick
    assert stats.caught_up
    got = exported_ids(sink)
    assert len(got) == len(set(got)) and set(got) == event_ids(instance, ids)
    assert raw_count(sink) > len(got)  # the half batch was written twice and collapsed
    assert all(name.startswith("noetl-export") == threaded for name in flaky.threads), flaky.threads


def test_prepared_writes_store_what_plain_writes_store(runs, sink: ClickHouseSink, chdb_dsn: str) -> None:
    """The exporter encodes a batch (``prepare``) and its writer thread only inserts: the tables hold the
    same rows, values and types as a plain ``write``; the tick restores Python's thread switch interval."""
    instance, _ = runs

    class Capture:
        name, wants_events, wants_runs, thread_safe = "clickhouse", True, False, True

        def __init__(self) -> None:
            self.batches: list[Any] = []

        def write(self, batch: Any) -> None:
            self.batches.append(batch)

    captured = Capture()
    Exporter(instance, captured, batch_size=40).export(ExportCursor())
    assert len(captured.batches) >= 2 and sum(len(b.step_runs) for b in captured.batches) > 0
    plain = ClickHouseSink(get_client(chdb_dsn), database=f"t_{uuid.uuid4().hex[:10]}")
    for batch in captured.batches:
        plain.write(batch)
        sink.write(sink.prepare(batch))
    for table in ("noetl_events", "step_runs"):
        digest = f"SELECT count(), groupBitXor(cityHash64(*)) FROM {{db}}.{table} FINAL"
        assert plain.query(digest) == sink.query(digest) and sink.query(digest)[0][0] > 0
        types = f"SELECT name, type FROM system.columns WHERE database = '{{db}}' AND table = '{table}'"
        assert plain.query(types) == sink.query(types)
    before = sys.getswitchinterval()
    Exporter(instance, ClickHouseSink(get_client(chdb_dsn), database=f"t_{uuid.uuid4().hex[:10]}")).export()
    assert sys.getswitchinterval() == before


def test_a_sink_down_keeps_the_cursor_and_catches_up(runs, sink: ClickHouseSink) -> None:
    instance, ids = runs
    sensor = clickhouse_export_sensor(budget_seconds=30)
    context = dg.build_sensor_context(instance=instance, cursor=None,
                                      resources={"noetl_clickhouse": _DownResource()})
    with pytest.raises(Exception, match="connection refused"):
        sensor.evaluate_tick(context)  # the tick fails (visible in the UI); no cursor is returned
    # the sink comes back: a tick from the untouched (empty) cursor exports everything once
    cursor, _ = Exporter(instance, sink).export(ExportCursor.from_json(None))
    assert set(exported_ids(sink)) == event_ids(instance, ids)


class _DownResource(ClickHouseResource):
    """A ClickHouse that refuses every write (the sensor opens a session per tick)."""

    @contextmanager
    def session(self) -> Iterator[Any]:  # type: ignore[override]
        class Down:
            name, wants_events = "clickhouse", True

            def write(self, batch: Any) -> None:
                raise ConnectionError("connection refused")

        yield Down()


def test_incremental_ticks_export_only_new_runs(sink: ClickHouseSink, instance: dg.DagsterInstance) -> None:
    first = run_case(instance, "01_linear_chain")
    exporter = Exporter(instance, sink, page_size=7, batch_size=13)  # small pages: many round trips
    cursor, stats = exporter.export(ExportCursor())
    assert stats.events == len(event_ids(instance, [first]))
    second = run_case(instance, "21_failure_skips_downstream")
    cursor, stats = exporter.export(cursor)
    assert stats.events == len(event_ids(instance, [second])) and stats.runs == 1
    assert set(exported_ids(sink)) == event_ids(instance, [first, second])
    assert raw_count(sink) == sink.count_events()  # nothing was written twice


def test_time_budget_stops_early_and_the_next_tick_resumes(runs, sink: ClickHouseSink) -> None:
    instance, ids = runs
    exporter = Exporter(instance, sink, page_size=5, batch_size=5)
    cursor, stats = exporter.export(ExportCursor(), budget_seconds=0)
    assert not stats.caught_up
    ticks = 1
    while not stats.caught_up:
        cursor, stats = exporter.export(cursor, budget_seconds=0.5)
        ticks += 1
        assert ticks < 200
    assert set(exported_ids(sink)) == event_ids(instance, ids)


def test_backlog_catch_up_is_bounded_by_max_active(runs, sink: ClickHouseSink) -> None:
    instance, ids = runs
    exporter = Exporter(instance, sink, max_active=1, page_size=1)
    cursor, stats = exporter.export(ExportCursor())
    assert stats.caught_up and stats.runs == 3
    assert set(exported_ids(sink)) == event_ids(instance, ids)


class _LateVisibility:
    """An instance whose event ``hidden`` (run, storage id) is invisible at first: what Postgres
    shows when a concurrent writer commits a smaller id after a larger one is visible."""

    def __init__(self, instance: dg.DagsterInstance, hidden: tuple[str, int]) -> None:
        self._instance = instance
        self.hidden: tuple[str, int] | None = hidden

    def __getattr__(self, name: str) -> Any:
        return getattr(self._instance, name)

    def get_records_for_run(self, run_id: str, *args: Any, **kwargs: Any) -> Any:
        conn = self._instance.get_records_for_run(run_id, *args, **kwargs)
        if self.hidden and self.hidden[0] == run_id:
            conn = conn._replace(records=[r for r in conn.records if r.storage_id != self.hidden[1]])
        return conn


def test_out_of_order_ids_are_caught_by_the_overlap_window(runs, sink: ClickHouseSink) -> None:
    instance, ids = runs
    run_id = ids[0]
    records = instance.get_records_for_run(run_id).records
    hidden = (run_id, records[len(records) // 2].storage_id)
    late = _LateVisibility(instance, hidden)
    now = records[-1].event_log_entry.timestamp + 1.0  # the whole run is younger than the 5 s lag
    exporter = Exporter(late, sink, lag_seconds=5.0, clock=lambda: now)
    cursor, _ = exporter.export(ExportCursor())
    assert (run_id, hidden[1]) not in set(exported_ids(sink))
    assert run_id in cursor.active  # not finished: its young events are re-read next tick
    late.hidden = None  # the slow writer commits
    now += 10.0
    cursor, _ = exporter.export(cursor)
    got = exported_ids(sink)
    assert len(got) == len(set(got)) and set(got) == event_ids(instance, ids)
    assert run_id not in cursor.active and sink.count_step_runs(run_id) > 0


def test_without_the_overlap_window_a_late_id_would_be_lost(runs, sink: ClickHouseSink) -> None:
    """The control for the test above: lag 0 moves the position past the hidden id."""
    instance, ids = runs
    records = instance.get_records_for_run(ids[0]).records
    hidden = (ids[0], records[len(records) // 2].storage_id)
    late = _LateVisibility(instance, hidden)
    cursor, _ = Exporter(late, sink, lag_seconds=0).export(ExportCursor())
    late.hidden = None
    Exporter(late, sink, lag_seconds=0).export(cursor)
    assert hidden not in set(exported_ids(sink))


def _late_events_are_exported_once(instance: dg.DagsterInstance, sink: ClickHouseSink, **kwargs: Any) -> None:
    """Events appended to a run after it was exported and finished (a hint on a failed run, a
    worker's last words after a cancel) are exported by the next tick, once."""
    run_id = run_case(instance, "21_failure_skips_downstream")
    exporter = Exporter(instance, sink, **kwargs)
    cursor, stats = exporter.export(ExportCursor())
    assert stats.runs == 1 and run_id not in cursor.active and run_id in cursor.tail
    before = raw_count(sink)
    run = instance.get_run_by_id(run_id)
    instance.report_engine_event("Similar past failures: none", dagster_run=run)
    instance.report_engine_event("late word from the worker", dagster_run=run)
    cursor, stats = exporter.export(cursor)
    assert stats.reopened == 1 and stats.events == 2 and stats.runs == 1
    assert raw_count(sink) == before + 2  # only the appended events were written
    got = exported_ids(sink)
    assert len(got) == len(set(got)) and set(got) == event_ids(instance, [run_id])
    late = sink.query("SELECT Message FROM {db}.noetl_events FINAL WHERE ExecutionId = {rid:String} "
                      "AND EventType = 'dagster.engine_event' ORDER BY EventId DESC LIMIT 1", {"rid": run_id})
    assert late[0][0] == "late word from the worker"
    assert run_id in cursor.tail and not cursor.active
    cursor, stats = exporter.export(cursor)  # nothing new: nothing written
    assert stats.events == 0 and stats.reopened == 0 and raw_count(sink) == before + 2
    assert sink.count_step_runs(run_id) == 4


def test_events_appended_to_a_finished_run_are_exported_once(sink: ClickHouseSink,
                                                             instance: dg.DagsterInstance) -> None:
    _late_events_are_exported_once(instance, sink)


def test_finished_runs_are_watched_for_tail_seconds(sink: ClickHouseSink, instance: dg.DagsterInstance) -> None:
    run_id = run_case(instance, "01_linear_chain")
    end = instance.get_run_record_by_id(run_id).end_time
    exporter = Exporter(instance, sink, tail_seconds=60.0)
    cursor, _ = exporter.export(ExportCursor())
    assert cursor.tail[run_id][1] == instance.get_records_for_run(run_id).records[-1].storage_id
    exporter.clock = lambda: end + 120.0  # the run ended longer ago than the watch
    cursor, _ = exporter.export(cursor)
    assert run_id not in cursor.tail
    instance.report_engine_event("too late", dagster_run=instance.get_run_by_id(run_id))
    _, stats = exporter.export(cursor)
    assert stats.events == 0  # the documented limit: after tail_seconds a run is no longer watched
    assert ExportCursor.from_json(cursor.to_json()) == cursor


def test_retries_become_attempts(sink: ClickHouseSink, instance: dg.DagsterInstance) -> None:
    calls = {"n": 0}

    @dg.op(retry_policy=dg.RetryPolicy(max_retries=2), tags={"noetl/tool": "python", "noetl/step": "flaky"})
    def flaky() -> int:
        calls["n"] += 1
        if calls["n"] < 3:
            raise RuntimeError(f"transient failure {calls['n']}")
        return 1

    @dg.job(tags={"noetl/playbook": "ops/flaky", "noetl/domain": "ops"})
    def flaky_job() -> None:
        flaky()

    result = flaky_job.execute_in_process(instance=instance)
    Exporter(instance, sink).export(ExportCursor())
    attempts = sink.query("SELECT Attempt, Status, Retries, ToolKind, ErrorMessage FROM {db}.step_runs FINAL "
                          "WHERE ExecutionId = {rid:String} ORDER BY Attempt", {"rid": result.run_id})
    assert [(a, s, r, t) for a, s, r, t, _ in attempts] == [
        (1, "retried", 0, "python"), (2, "retried", 1, "python"), (3, "success", 2, "python")]
    assert "transient failure 1" in attempts[0][4]
    kinds = sink.query("SELECT EventType, Attempt FROM {db}.noetl_events FINAL WHERE ExecutionId = {rid:String} "
                       "AND EventType IN ('command.retry', 'command.restarted', 'command.completed') ORDER BY EventId",
                       {"rid": result.run_id})
    assert kinds == [("command.retry", 1), ("command.restarted", 2), ("command.retry", 2),
                     ("command.restarted", 3), ("command.completed", 3)]


def test_runs_of_plain_jobs_are_not_exported(sink: ClickHouseSink, instance: dg.DagsterInstance) -> None:
    @dg.op
    def hello() -> int:
        return 1

    @dg.job
    def plain() -> None:
        hello()

    plain.execute_in_process(instance=instance)
    cursor, stats = Exporter(instance, sink).export(ExportCursor())
    assert stats.events == 0 and stats.discovered == 0 and not cursor.active


def test_secret_values_never_reach_the_rows(sink: ClickHouseSink, instance: dg.DagsterInstance,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "pw-" + uuid.uuid4().hex
    monkeypatch.setenv("NOETL_CREDENTIAL_WAREHOUSE__PASSWORD", secret)

    @dg.op
    def leaky(context):  # noqa: ANN001 - dagster reads the annotation
        context.log.info(f"connecting with password {secret}")
        raise ConnectionError(f"login failed for etl:{secret}@db")

    @dg.job(tags={"noetl/playbook": "sec/leaky"})
    def leaky_job() -> None:
        leaky()

    leaky_job.execute_in_process(instance=instance, raise_on_error=False)
    register_env_secrets()  # what every sensor tick does first
    Exporter(instance, sink).export(ExportCursor())
    rows = sink.query("SELECT * FROM {db}.noetl_events FINAL") + sink.query("SELECT * FROM {db}.step_runs FINAL")
    assert rows and secret not in repr(rows)
    assert any("login failed for etl:***@db" in repr(r) for r in rows)


def test_schema_is_created_and_migrated_once(sink: ClickHouseSink) -> None:
    assert sink.migrate() == [1, 2]
    assert sink.migrate() == []
    tables = {r[0]: r[1] for r in sink.query(
        "SELECT name, engine FROM system.tables WHERE database = {db:String}", {"db": sink.database})}
    assert tables["noetl_events"] == tables["step_runs"] == "ReplacingMergeTree"
    columns = {r[0] for r in sink.query(
        "SELECT name FROM system.columns WHERE database = {db:String} AND table = 'noetl_events'",
        {"db": sink.database})}
    noetl = {"Timestamp", "EventId", "ExecutionId", "EventType", "Status", "StepName", "NodeName", "PlaybookPath",
             "Duration", "ErrorMessage", "Metadata"}
    assert noetl <= columns and {"Domain", "Attempt", "JobName"} <= columns


def test_sensor_tick_and_cursor(runs, chdb_dsn: str) -> None:
    instance, ids = runs
    database = f"t_{uuid.uuid4().hex[:10]}"
    defs = export_definitions(clickhouse=ClickHouseResource(dsn=chdb_dsn, database=database), hints=False)
    sensor = defs.resolve_sensor_def("noetl_export_clickhouse")
    resources = {"noetl_clickhouse": ClickHouseResource(dsn=chdb_dsn, database=database)}
    data = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, cursor=None, resources=resources))
    cursor = ExportCursor.from_json(data.cursor)
    assert cursor.watermark > 0 and not cursor.active
    # the runs it finished exporting: reported back to (the tick is "Success", not "Skipped")
    assert not data.skip_message and not data.run_requests
    assert sorted(r.dagster_run.run_id for r in data.dagster_run_reactions) == sorted(ids)
    sink = ClickHouseSink(get_client(chdb_dsn), database)
    assert set(exported_ids(sink)) == event_ids(instance, ids)
    data = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, cursor=data.cursor, resources=resources))
    assert "exported 0 events" in (data.skip_message or "")


def test_cli_export_pass_keeps_its_cursor(runs, sink: ClickHouseSink, tmp_path: Path) -> None:
    instance, ids = runs
    stats = run_export(instance, [sink], folder=tmp_path)
    assert stats["clickhouse"].events == len(event_ids(instance, ids)) and not stats["clickhouse"].error
    assert load_cursor("clickhouse", tmp_path).watermark > 0
    again = run_export(instance, [sink], folder=tmp_path)
    assert again["clickhouse"].events == 0
    full = run_export(instance, [sink], folder=tmp_path, full=True)
    assert full["clickhouse"].events == len(event_ids(instance, ids))
    assert sink.count_events() == len(event_ids(instance, ids))


def test_paged_mapping_equals_the_whole_run(instance: dg.DagsterInstance) -> None:
    """Rows mapped page by page (with the run's retries fetched first, as the exporter does) are
    the rows of the whole run; attempts count the retries before each event."""
    calls = {"n": 0}

    @dg.op(retry_policy=dg.RetryPolicy(max_retries=2), tags={"noetl/tool": "python"})
    def flaky(context) -> int:  # noqa: ANN001 - dagster reads the annotation
        calls["n"] += 1
        context.log.info(f"attempt {calls['n']}")
        if calls["n"] < 3:
            raise RuntimeError("transient")
        return 1

    @dg.job(tags={"noetl/playbook": "ops/flaky"})
    def flaky_job() -> None:
        flaky()

    run_id = flaky_job.execute_in_process(instance=instance).run_id
    records = instance.get_records_for_run(run_id).records
    ctx = RunContext.of(instance.get_run_by_id(run_id), {"flaky": "python"})
    whole = map_records(records, ctx)
    retries = [(r.storage_id, r.event_log_entry.step_key) for r in records
               if r.event_log_entry.dagster_event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY]
    for size in (1, 3, 7):
        paged = [row for i in range(0, len(records), size) for row in map_records(records[i:i + size], ctx, retries)]
        assert paged == whole
    assert [map_record(r, ctx, row.attempt or 1) for r, row in zip(records, whole)] == whole
    flaky_rows = [r for r in whole if r.node_name == "flaky"]
    assert {r.attempt for r in flaky_rows} == {1, 2, 3}
    assert [r.attempt for r in flaky_rows if r.event_type == "log"] == [1, 2, 3]  # plain log lines too
    assert all(r.metadata["tool"] == "python" for r in flaky_rows)


def test_mapping_helpers() -> None:
    assert step_name_of("price[i00003]") == "price"
    assert step_name_of("price__fan_out") == "price" and step_name_of("price__collect") == "price"
    assert step_name_of(None) == ""


# --- Postgres instance storage (global, possibly out-of-order storage ids) ---------------------



def test_postgres_storage_every_event_once_and_replays_add_nothing(pg_instance: dg.DagsterInstance,
                                                                   sink: ClickHouseSink) -> None:
    ids = [run_case(pg_instance, "12_loop_parallel"), run_case(pg_instance, "21_failure_skips_downstream")]
    all_ids = [r.storage_id for rid in ids for r in pg_instance.get_records_for_run(rid).records]
    assert len(all_ids) == len(set(all_ids))  # global ids on Postgres
    exporter = Exporter(pg_instance, sink, lag_seconds=0)
    cursor, stats = exporter.export(ExportCursor())
    assert stats.runs == 2 and set(exported_ids(sink)) == event_ids(pg_instance, ids)
    third = run_case(pg_instance, "01_linear_chain")
    cursor, stats = exporter.export(cursor)
    assert stats.runs == 1 and stats.events == len(event_ids(pg_instance, [third]))
    Exporter(pg_instance, sink, lag_seconds=0).export(ExportCursor())  # replay everything
    got = exported_ids(sink)
    assert len(got) == len(set(got)) and set(got) == event_ids(pg_instance, ids + [third])
    assert sink.count_step_runs(ids[1]) == 4


def test_postgres_default_lag_holds_young_runs_open(pg_instance: dg.DagsterInstance, sink: ClickHouseSink) -> None:
    run_id = run_case(pg_instance, "01_linear_chain")
    exporter = Exporter(pg_instance, sink)  # default lag on Postgres: 5 s
    assert exporter.lag == 5.0
    end = pg_instance.get_run_record_by_id(run_id).end_time
    exporter.clock = lambda: end + 1.0
    cursor, stats = exporter.export(ExportCursor())
    assert run_id in cursor.active and stats.events > 0 and stats.runs == 0
    exporter.clock = lambda: end + 10.0
    cursor, stats = exporter.export(cursor)
    assert run_id not in cursor.active and stats.runs == 1
    got = exported_ids(sink)
    assert len(got) == len(set(got)) == len(event_ids(pg_instance, [run_id]))


def test_postgres_storage_events_appended_to_a_finished_run_are_exported_once(
        pg_instance: dg.DagsterInstance, sink: ClickHouseSink) -> None:
    _late_events_are_exported_once(pg_instance, sink, lag_seconds=0)


def test_cli_commands_end_to_end(chdb_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    """`noetl-dagster export` and `search` as the lead wires them: argparse + the sinks from env."""
    import argparse

    from noetl_dagster.storage import default_instance
    from noetl_dagster.export.cli import add_commands

    database = f"t_{uuid.uuid4().hex[:10]}"
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    monkeypatch.setenv("NOETL_CLICKHOUSE_DSN", chdb_dsn)
    monkeypatch.setenv("NOETL_CLICKHOUSE_DATABASE", database)
    monkeypatch.setenv("NOETL_QDRANT_PATH", str(tmp_path / "qdrant"))
    monkeypatch.setenv("NOETL_EMBEDDER", "hashing")
    monkeypatch.chdir(tmp_path)
    instance = default_instance()
    run_id = run_case(instance, "21_failure_skips_downstream")

    parser = argparse.ArgumentParser(prog="noetl-dagster")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["export", "--json"])
    assert args.func(args) == 0
    counts = json.loads(capsys.readouterr().out)
    assert counts["clickhouse"]["events"] == len(event_ids(instance, [run_id])) and counts["qdrant"]["runs"] == 1
    assert len(list((tmp_path / "home" / "noetl_export").glob("clickhouse-*.cursor.json"))) == 1  # per destination
    args = parser.parse_args(["export"])
    assert args.func(args) == 0
    assert "clickhouse: 0 events" in capsys.readouterr().out
    assert ClickHouseSink(get_client(chdb_dsn), database).count_events(run_id) == len(event_ids(instance, [run_id]))

    args = parser.parse_args(["search", "ZeroDivisionError integer division", "--collection", "failures", "--json"])
    assert args.func(args) == 0
    hits = json.loads(capsys.readouterr().out)
    assert hits[0]["run_id"] == run_id and hits[0]["step"] == "divide"
    args = parser.parse_args(["search", "division", "--collection", "runs"])
    assert args.func(args) == 0
    assert run_id[:8] in capsys.readouterr().out


def test_importing_the_sensors_loads_no_sink_library() -> None:
    import subprocess
    import sys

    code = ("import sys, noetl_dagster.export.sensors, noetl_dagster.export.cli; "
            "print([m for m in ('clickhouse_connect', 'chdb', 'qdrant_client', 'onnxruntime', 'tokenizers') "
            "if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


CHDB_SESSIONS = r"""
import subprocess, sys
import clickhouse_connect
from noetl_dagster.export.clickhouse import ClickHouseResource
from noetl_dagster.export.sensors import clickhouse_session

dsn = sys.argv[1]
other = '''
import sys, clickhouse_connect
c = clickhouse_connect.get_client(dsn=sys.argv[1])
print(c.query("SELECT count() FROM observability.step_runs").result_rows[0][0], flush=True)
sys.stdin.readline()
c.close()
'''
resource = ClickHouseResource(dsn=dsn)
with clickhouse_session(resource) as sink:      # a sensor tick: migrates, then lets go of the folder
    sink.migrate()
holder = subprocess.Popen([sys.executable, "-c", other, dsn], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          text=True)
print("other process opened it:", holder.stdout.readline().strip(), flush=True)
with clickhouse_session(resource) as sink:      # held elsewhere: the tick skips
    print("busy:", "the chdb folder is open in another process" in sink.skip_message, flush=True)
holder.communicate("go\n", timeout=120)
with clickhouse_session(resource) as sink:      # free again
    print("reopened:", sink.client.query("SELECT count() FROM observability.step_runs").result_rows[0][0])
"""


def test_the_sensor_releases_the_chdb_folder_between_ticks(tmp_path) -> None:
    """chdb locks its folder per process: the export sensor opens it for a tick only, so a tuning
    run or `noetl-dagster export` can use it between ticks (in a subprocess: this test process
    already holds the session's chdb folder, and chdb allows one per process)."""
    proc = subprocess.run([sys.executable, "-c", CHDB_SESSIONS, f"chdb://{tmp_path / 'ch'}"], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines() == ["other process opened it: 0", "busy: True", "reopened: 0"]


def test_watched_runs_are_probed_in_turn(sink: ClickHouseSink, instance: dg.DagsterInstance) -> None:
    """Each tick probes `tail_probes` watched runs (one query each), the next ones the next tick,
    so a long watch list costs the same per tick and every run is probed in turn."""
    ids = [run_case(instance, "01_linear_chain") for _ in range(3)]
    exporter = Exporter(instance, sink, tail_probes=2)
    cursor, _ = exporter.export(ExportCursor())
    assert set(cursor.tail) == set(ids)
    late = ids[2]
    instance.report_engine_event("a late event", dagster_run=instance.get_run_by_id(late))
    offsets, reopened = [], []
    for _ in range(2):  # the late run is among the first two probed, or the next tick's
        cursor, stats = exporter.export(cursor)
        offsets.append(cursor.extra["tail_offset"])
        reopened.append(stats.reopened)
    assert offsets == [2, 4] and sum(reopened) == 1  # the offset moves by tail_probes per tick
    got = exported_ids(sink)
    assert len(got) == len(set(got)) and set(got) == event_ids(instance, ids)


def test_cli_export_sinks_are_independent_and_cursors_belong_to_a_destination(
        chdb_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Qdrant down: ClickHouse still exports and Qdrant's failure is one line; a new database
    (a new destination) gets every event although the sink name is the same."""
    import argparse
    import socket

    from noetl_dagster.storage import default_instance
    from noetl_dagster.export.cli import add_commands

    with socket.socket() as probe:  # a loopback port nothing listens on
        probe.bind(("127.0.0.1", 0))
        dead = probe.getsockname()[1]
    first, second = (f"t_{uuid.uuid4().hex[:10]}" for _ in range(2))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    monkeypatch.setenv("NOETL_CLICKHOUSE_DSN", chdb_dsn)
    monkeypatch.setenv("NOETL_CLICKHOUSE_DATABASE", first)
    monkeypatch.setenv("NOETL_QDRANT_URL", f"http://127.0.0.1:{dead}")
    monkeypatch.setenv("NOETL_EMBEDDER", "hashing")
    monkeypatch.chdir(tmp_path)
    instance = default_instance()
    run_id = run_case(instance, "01_linear_chain")
    expected = len(event_ids(instance, [run_id]))

    parser = argparse.ArgumentParser(prog="noetl-dagster")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["export"])
    assert args.func(args) == 1
    out = capsys.readouterr()
    assert f"clickhouse: {expected} events" in out.out
    (line,) = [text for text in out.err.splitlines() if text.startswith("qdrant: FAILED: ")]
    assert len(out.err.strip().splitlines()) == 1 and "Traceback" not in out.err
    assert ClickHouseSink(get_client(chdb_dsn), first).count_events(run_id) == expected

    monkeypatch.setenv("NOETL_CLICKHOUSE_DATABASE", second)  # another destination, same sink name
    args = parser.parse_args(["export", "--sink", "clickhouse"])
    assert args.func(args) == 0
    assert f"clickhouse: {expected} events" in capsys.readouterr().out
    assert ClickHouseSink(get_client(chdb_dsn), second).count_events(run_id) == expected
    monkeypatch.setenv("NOETL_CLICKHOUSE_DATABASE", first)  # back: its own cursor, nothing new
    args = parser.parse_args(["export", "--sink", "clickhouse"])
    assert args.func(args) == 0
    assert "clickhouse: 0 events" in capsys.readouterr().out


def test_product_playbook_steps_export_with_their_names_and_tools(tmp_path: Path) -> None:
    """A product playbook runs as an asset job whose ops sit in a graph (`<job>__playbook.<step>`):
    its rows and step attempts carry the plain step name and the step's tool kind, so tuning
    applies to them."""
    from noetl_dagster.export.exporter import tools_by_node
    from noetl_dagster.export.mapping import build_step_runs

    playbook = tmp_path / "prod.yaml"
    playbook.write_text("""apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: prod, path: shop/prod}
workflow:
  - step: start
    tool: {kind: python, code: "result = {'n': 3}"}
    next: rows
  - step: rows
    tool: {kind: duckdb, query: "SELECT range AS id FROM range(3)", format: arrow}
    product: {name: ids, kind: table}
""")
    with dg.instance_for_test() as instance:
        report = run_playbook(playbook, instance=instance)
        assert report.status == "success", report.to_dict()
        run = instance.get_run_by_id(report.run_id)
        tools = tools_by_node(instance.get_job_snapshot(run.job_snapshot_id))
        assert tools == {"shop__prod__playbook.start": "python", "shop__prod__playbook.rows": "duckdb"}
        rows = map_records(instance.get_records_for_run(report.run_id).records, RunContext.of(run, tools))
    steps = {(r.step_name, r.metadata.get("tool")) for r in rows if r.node_name.startswith("shop__prod__playbook.")}
    assert steps == {("start", "python"), ("rows", "duckdb")}
    attempts = {(s.step_name, s.tool_kind, s.status) for s in build_step_runs(rows)}
    assert {("start", "python", "success"), ("rows", "duckdb", "success")} <= attempts
