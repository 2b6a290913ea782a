"""The export's direct event-log reads (``export/fast_read.py``) map to exactly the rows Dagster's
own records map to: every conformance playbook, a retried op, an asset with a failing check, on
Dagster's SQLite storage, the kept-connection SQLite storage and Postgres."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from noetl_dagster import run_playbook
from noetl_dagster.export.sensors import ExportBatch, ExportCursor, Exporter, _summary
from noetl_dagster.export.fast_read import LightRecord, read_run, read_run_page, supports
from noetl_dagster.export.mapping import RunContext, map_records
from noetl_dagster.storage import instance_config
from pg import PgServer, pg_instance, pg_server  # noqa: F401  (tests/pg.py: a real PostgreSQL 15)

CASES = Path(__file__).resolve().parent / "conformance" / "cases"
SOME = ["01_linear_chain", "12_loop_parallel", "15_cycle_counter", "17_pipeline_retry", "19_pipeline_fail",
        "21_failure_skips_downstream", "22_parallel_branch_failure"]


@dg.op(retry_policy=dg.RetryPolicy(max_retries=2), tags={"noetl/tool": "python", "noetl/step": "flaky"})
def flaky(context) -> int:  # type: ignore[no-untyped-def]
    if context.retry_number < 2:
        raise RuntimeError(f"transient failure {context.retry_number}")
    return 1


@dg.job(tags={"noetl/playbook": "ops/flaky", "noetl/domain": "ops"})
def flaky_job() -> None:
    flaky()


@dg.asset(check_specs=[dg.AssetCheckSpec("positive", asset="scores")])
def scores():  # type: ignore[no-untyped-def]
    yield dg.Output([1, 2], metadata={"dagster/row_count": 2, "note": dg.MetadataValue.md("**two**")})
    yield dg.AssetCheckResult(passed=False, metadata={"offending_rows": 1})


def _record_runs(instance: dg.DagsterInstance, cases: list[str]) -> list[str]:
    ids = [run_playbook(CASES / c / "playbook.yaml", {}, instance=instance, log_level="CRITICAL").run_id
           for c in cases]
    ids.append(flaky_job.execute_in_process(instance=instance, raise_on_error=False).run_id)
    assets_job = dg.Definitions(assets=[scores]).resolve_implicit_global_asset_job_def()
    ids.append(assets_job.execute_in_process(instance=instance, raise_on_error=False).run_id)
    return ids


def _assert_same_rows(instance: dg.DagsterInstance, run_ids: list[str]) -> int:
    assert supports(instance)
    total = 0
    for run_id in run_ids:
        record = instance.get_run_record_by_id(run_id)
        ctx = RunContext.of(record.dagster_run, {}, record.start_time, record.end_time)
        theirs = instance.get_records_for_run(run_id).records
        ours = read_run(instance, run_id)
        assert all(isinstance(r, LightRecord) for r in ours)
        assert [r.storage_id for r in ours] == [r.storage_id for r in theirs]
        assert map_records(ours, ctx) == map_records(theirs, ctx), run_id
        total += len(ours)
    return total


@pytest.mark.parametrize("kind", ["dagster", "fast"])
def test_sqlite_direct_reads_map_to_the_same_rows(tmp_path: Path, kind: str) -> None:
    home = tmp_path / kind
    home.mkdir()
    (home / "dagster.yaml").write_text(instance_config(str(home)) if kind == "fast" else
                                       "telemetry:\n  enabled: false\n")
    instance = dg.DagsterInstance.from_config(str(home))
    cases = sorted(p.name for p in CASES.iterdir() if (p / "playbook.yaml").exists()) if kind == "fast" else SOME
    ids = _record_runs(instance, cases)
    assert _assert_same_rows(instance, ids) > 100
    # pages: ids strictly after the cursor, at most `limit`, and whether more remain
    records = read_run(instance, ids[1])
    page, more = read_run_page(instance, ids[1], records[2].storage_id, 3)
    assert [r.storage_id for r in page] == [r.storage_id for r in records[3:6]] and more
    page, more = read_run_page(instance, ids[1], records[-2].storage_id, 3)
    assert [r.storage_id for r in page] == [records[-1].storage_id] and not more
    instance.dispose()



def test_postgres_direct_reads_map_to_the_same_rows(pg_instance: dg.DagsterInstance) -> None:
    assert _assert_same_rows(pg_instance, _record_runs(pg_instance, SOME)) > 100


class _Recording:
    name, wants_events = "recording", True

    def __init__(self) -> None:
        self.events: list = []
        self.step_runs: list = []

    def write(self, batch: ExportBatch) -> None:
        self.events.extend(batch.events)
        self.step_runs.extend(batch.step_runs)


def test_the_exporter_writes_the_same_with_and_without_direct_reads(tmp_path: Path) -> None:
    (tmp_path / "dagster.yaml").write_text(instance_config(str(tmp_path)))
    instance = dg.DagsterInstance.from_config(str(tmp_path))
    _record_runs(instance, SOME[:3])
    out = {}
    for fast in (True, False):
        sink = _Recording()
        _, stats = Exporter(instance, sink, lag_seconds=0, page_size=7, fast_reads=fast).export(ExportCursor())
        assert stats.caught_up
        out[fast] = (sorted(sink.events, key=lambda r: (r.execution_id, r.event_id)),
                     sorted(sink.step_runs, key=repr))
    assert out[True] == out[False] and len(out[True][0]) > 50
    instance.dispose()


def test_stand_ins_are_read_through_their_own_methods() -> None:
    class StandIn:
        event_log_storage = None

    assert not supports(StandIn())
    assert read_run_page(StandIn(), "r", -1, 10) is None


# -- Dagster's default SQLite storage: run files read directly, read-only -------------------------

_PHASES = 3
_reached = [__import__("threading").Event() for _ in range(_PHASES)]
_go = [__import__("threading").Event() for _ in range(_PHASES)]


@dg.op(retry_policy=dg.RetryPolicy(max_retries=1), tags={"noetl/tool": "python", "noetl/step": "first"})
def first(context) -> int:  # type: ignore[no-untyped-def]
    if context.retry_number == 0:
        raise RuntimeError("first attempt fails")
    return 1


@dg.op(tags={"noetl/tool": "python", "noetl/step": "slow"})
def slow(context, n: int) -> int:  # type: ignore[no-untyped-def]
    for phase in range(_PHASES):  # writes events, then waits for the test to run a tick
        for i in range(25):
            context.log.info(f"phase {phase} line {i}")
        _reached[phase].set()
        assert _go[phase].wait(60)
    for i in range(200):  # written while the test's ticks read, without waiting
        context.log.info(f"free line {i}")
    return n


@dg.job(tags={"noetl/playbook": "ops/slow", "noetl/domain": "ops"})
def slow_job() -> None:
    slow(first())


def _default_instance(home: Path) -> dg.DagsterInstance:
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    return dg.DagsterInstance.from_config(str(home))


def test_default_sqlite_run_in_progress_is_exported_once_across_ticks(tmp_path: Path) -> None:
    import threading

    from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage

    for event in (*_reached, *_go):
        event.clear()
    writer_instance = _default_instance(tmp_path)
    instance = dg.DagsterInstance.from_config(str(tmp_path))  # the exporter's own, as a sensor process's
    assert type(instance.event_log_storage) is SqliteEventLogStorage
    result: dict = {}
    writer = threading.Thread(target=lambda: result.update(
        run=slow_job.execute_in_process(instance=writer_instance, raise_on_error=False)))
    writer.start()
    sink = _Recording()
    exporter = Exporter(instance, sink, lag_seconds=0, page_size=16)
    cursor = ExportCursor()
    seen_in_progress = []
    try:
        for phase in range(_PHASES):
            assert _reached[phase].wait(60)
            before = len(sink.events)
            cursor, stats = exporter.export(cursor)
            assert not stats.run_errors and stats.events == len(sink.events) - before > 0
            (run_id,) = cursor.active  # still running: stays active at its last exported event
            seen_in_progress.append(cursor.active[run_id])
            _go[phase].set()
        ticks = 0
        while writer.is_alive() or ticks == 0:  # ticks racing the writer
            cursor, stats = exporter.export(cursor)
            assert not stats.run_errors
            ticks += 1
    finally:
        for event in _go:
            event.set()
        writer.join(60)
    cursor, stats = exporter.export(cursor)
    cursor, again = exporter.export(cursor)
    assert stats.caught_up and again.caught_up and again.events == 0
    run_id = result["run"].run_id
    assert run_id in cursor.done and not cursor.active
    assert seen_in_progress == sorted(seen_in_progress) and seen_in_progress[0] > 0
    theirs = instance.get_records_for_run(run_id).records
    ids = [r.event_id for r in sink.events]
    assert len(ids) == len(set(ids)) == len(theirs) > 3 * 25 + 200  # no event lost, none written twice
    record = instance.get_run_record_by_id(run_id)
    ctx = RunContext.of(record.dagster_run, {}, record.start_time, record.end_time)
    key = lambda r: (r.event_id, r.event_type, r.dagster_event_type, r.step_name, r.attempt, r.status,  # noqa: E731
                     r.message, r.error_message, r.duration_ms)
    assert sorted(map(key, sink.events)) == sorted(map(key, map_records(theirs, ctx)))
    assert max(r.attempt for r in sink.events if r.step_name == "first") == 2  # the retry, read across ticks
    steps = {(s.step_key, s.attempt): s.status for s in sink.step_runs}
    assert steps == {("first", 1): "retried", ("first", 2): "success", ("slow", 1): "success"}
    instance.dispose()
    writer_instance.dispose()


def test_a_missing_or_corrupt_run_file_fails_that_run_only(tmp_path: Path) -> None:
    import shutil

    from noetl_dagster.export.fast_read import ShardReadError

    instance = _default_instance(tmp_path)
    ids = _record_runs(instance, SOME[:3])
    storage = instance.event_log_storage
    missing, corrupt = ids[0], ids[1]
    saved = tmp_path / "saved"
    saved.mkdir()
    for run_id in (missing, corrupt):
        shutil.move(storage.path_for_shard(run_id), saved / f"{run_id}.db")
        for side in ("-wal", "-shm"):
            Path(storage.path_for_shard(run_id) + side).unlink(missing_ok=True)
    Path(storage.path_for_shard(corrupt)).write_bytes(b"not an sqlite file " * 300)
    reader = dg.DagsterInstance.from_config(str(tmp_path))

    with pytest.raises(ShardReadError, match=f"run {missing} .*no such file"):
        read_run(reader, missing)
    with pytest.raises(ShardReadError, match=f"run {corrupt} .*not a database"):
        read_run_page(reader, corrupt, -1, 10)

    sink = _Recording()
    exporter = Exporter(reader, sink, lag_seconds=0, page_size=50, playbook_runs_only=False)
    cursor, stats = exporter.export(ExportCursor())
    assert set(stats.run_errors) == {missing, corrupt} and not stats.error and not stats.caught_up
    assert missing in stats.run_errors[missing] and "no such file" in stats.run_errors[missing]
    assert storage.path_for_shard(corrupt) in stats.run_errors[corrupt]
    assert "2 run(s) unreadable" in _summary(stats) and missing in _summary(stats)  # the sensor tick's log line
    assert cursor.active == {missing: -1, corrupt: -1}  # read again next tick
    others = [r for r in ids if r not in (missing, corrupt)]
    assert {r.execution_id for r in sink.events} == set(others)
    assert len(sink.events) == sum(len(reader.get_records_for_run(r).records) for r in others)
    assert not Path(storage.path_for_shard(missing)).exists()  # the reader created nothing

    for run_id in (missing, corrupt):  # the files are back: the next tick exports those runs
        shutil.copy(saved / f"{run_id}.db", storage.path_for_shard(run_id))
    cursor, stats = exporter.export(cursor)
    assert not stats.run_errors and stats.caught_up and not cursor.active
    assert {r.execution_id for r in sink.events} == set(ids)
    events = sorted((r.execution_id, r.event_id) for r in sink.events)
    assert len(events) == len(set(events)) == sum(len(reader.get_records_for_run(r).records) for r in ids)
    reader.dispose()
    instance.dispose()
