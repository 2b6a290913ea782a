"""The export's direct event-log reads (``export/fast_read.py``) map to exactly the rows Dagster's
own records map to: every conformance playbook, a retried op, an asset with a failing check, on
Dagster's SQLite storage, the kept-connection SQLite storage and Postgres."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Iterator

import dagster as dg
import pytest

from noetl_dagster import run_playbook
from noetl_dagster.export.sensors import ExportBatch, ExportCursor, Exporter
from noetl_dagster.export.fast_read import LightRecord, read_run, read_run_page, supports
from noetl_dagster.export.mapping import RunContext, map_records
from noetl_dagster.storage import instance_config
from pg import PgServer, _run, pg_server  # noqa: F401  (tests/pg.py: a real PostgreSQL 15)

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


@pytest.fixture
def pg_instance(pg_server: PgServer) -> Iterator[dg.DagsterInstance]:  # noqa: F811
    name = f"dagster_{uuid.uuid4().hex[:8]}"
    _run([f"{pg_server.bindir}/psql", "-h", pg_server.datadir, "-p", str(pg_server.port), "-U", "postgres",
          "-d", "postgres", "-qc", f"CREATE DATABASE {name} OWNER {pg_server.user}"], timeout=60)
    url = pg_server.dsn(database=name).replace("postgresql://", "postgresql+psycopg2://")
    with dg.instance_for_test(overrides={"storage": {"postgres": {"postgres_url": url}}}) as instance:
        yield instance


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
