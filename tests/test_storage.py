"""``FastSqliteEventLogStorage`` behaves as Dagster's ``SqliteEventLogStorage``: every check runs
against both (same instance layout, configured through ``dagster.yaml``) and expects what Dagster's
own storage gives, plus what the kept connections must not break (forks, wipes, many runs)."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy.exc
from dagster._core.events import DagsterEventType
from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage

from noetl_dagster.storage import FastSqliteEventLogStorage, instance_config, write_instance_config

KINDS = ["dagster", "fast"]
START, SUCCESS = DagsterEventType.RUN_START.value, DagsterEventType.RUN_SUCCESS.value


def _instance(home: Path, kind: str, extra: str = "") -> dg.DagsterInstance:
    home.mkdir(parents=True, exist_ok=True)
    text = instance_config(str(home)) if kind == "fast" else "telemetry:\n  enabled: false\n"
    (home / "dagster.yaml").write_text(text + extra)
    return dg.DagsterInstance.from_config(str(home))


@pytest.fixture(params=KINDS)
def instance(request: pytest.FixtureRequest, tmp_path: Path) -> dg.DagsterInstance:
    inst = _instance(tmp_path / request.param, request.param)
    expected = FastSqliteEventLogStorage if request.param == "fast" else SqliteEventLogStorage
    assert type(inst.event_log_storage) is expected
    yield inst
    inst.dispose()


@dg.op
def ok() -> int:
    return 1


@dg.op
def materialize(x: int):  # type: ignore[no-untyped-def]
    yield dg.AssetMaterialization(asset_key=dg.AssetKey(["noetl", "table"]), metadata={"rows": x})
    yield dg.Output(x + 1)


@dg.op
def fail(x: int) -> int:
    raise ValueError(f"failing on {x}")


@dg.job
def mixed() -> None:
    fail(materialize(ok()))


@dg.job
def fine() -> None:
    materialize(ok())


def _types(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    return [e.dagster_event.event_type_value for e in instance.all_logs(run_id) if e.dagster_event]


def test_a_run_reads_back_as_dagster_stores_it(instance: dg.DagsterInstance) -> None:
    result = mixed.execute_in_process(instance=instance, raise_on_error=False)
    assert not result.success
    run_id = result.run_id
    types = _types(instance, run_id)
    assert types[0] == START and types[-1] == DagsterEventType.RUN_FAILURE.value
    assert types.count("STEP_SUCCESS") == 2 and types.count("STEP_FAILURE") == 1
    assert "ASSET_MATERIALIZATION" in types
    # paging with cursors returns exactly the whole log, in storage order
    records = instance.get_records_for_run(run_id).records
    paged, cursor = [], None
    while True:
        page = instance.get_records_for_run(run_id, cursor=cursor, limit=4)
        paged.extend(page.records)
        cursor = page.cursor
        if not page.has_more:
            break
    assert [r.storage_id for r in paged] == [r.storage_id for r in records]
    assert [r.storage_id for r in records] == sorted(r.storage_id for r in records)
    failures = instance.get_records_for_run(run_id, of_type=DagsterEventType.STEP_FAILURE).records
    assert [r.event_log_entry.step_key for r in failures] == ["fail"]
    # run status changes and asset events are mirrored into the index shard
    starts = instance.fetch_run_status_changes(DagsterEventType.RUN_START, limit=10).records
    assert run_id in {r.event_log_entry.run_id for r in starts}
    latest = instance.get_latest_materialization_event(dg.AssetKey(["noetl", "table"]))
    assert latest is not None and latest.run_id == run_id
    stats = instance.get_run_stats(run_id)
    assert (stats.steps_succeeded, stats.steps_failed, stats.materializations) == (2, 1, 1)
    steps = {s.step_key: s.status.value for s in instance.get_run_step_stats(run_id)}
    assert steps == {"ok": "SUCCESS", "materialize": "SUCCESS", "fail": "FAILURE"}


def test_both_storages_record_the_same_events(tmp_path: Path) -> None:
    seen = {}
    for kind in KINDS:
        inst = _instance(tmp_path / kind, kind)
        result = mixed.execute_in_process(instance=inst, raise_on_error=False)
        seen[kind] = [(e.step_key, e.dagster_event.event_type_value) for e in inst.all_logs(result.run_id)
                      if e.dagster_event and e.dagster_event.event_type_value != "LOGS_CAPTURED"]
        inst.dispose()
    assert seen["fast"] == seen["dagster"]


def test_store_event_batch_one_run_and_mirrored_events(instance: dg.DagsterInstance) -> None:
    source = fine.execute_in_process(instance=instance)
    entries = instance.all_logs(source.run_id)
    run_id = dg.make_new_run_id() if hasattr(dg, "make_new_run_id") else "batch-run"
    copies = [e._replace(run_id=run_id) for e in entries]
    plain = [e for e in copies if not (e.dagster_event and e.dagster_event.event_type_value in
                                       ("ASSET_MATERIALIZATION", START, SUCCESS,
                                        DagsterEventType.RUN_STARTING.value, DagsterEventType.RUN_ENQUEUED.value))]
    instance.event_log_storage.store_event_batch(plain)
    assert [e.message for e in instance.all_logs(run_id)] == [e.message for e in plain]
    other = "batch-run-2"
    instance.event_log_storage.store_event_batch([e._replace(run_id=other) for e in entries])
    assert len(instance.all_logs(other)) == len(entries)
    materialized = instance.fetch_materializations(dg.AssetKey(["noetl", "table"]), limit=10).records
    assert other in {r.run_id for r in materialized}


def test_delete_and_wipe_then_new_runs_work(instance: dg.DagsterInstance) -> None:
    first = fine.execute_in_process(instance=instance).run_id
    second = fine.execute_in_process(instance=instance).run_id
    instance.event_log_storage.delete_events(first)
    assert instance.all_logs(first) == [] and instance.all_logs(second)
    instance.event_log_storage.wipe()
    assert instance.all_logs(second) == []
    third = fine.execute_in_process(instance=instance).run_id
    assert _types(instance, third)[-1] == SUCCESS


def test_many_runs_with_few_open_files(tmp_path: Path) -> None:
    inst = _instance(tmp_path / "few", "fast")
    inst.dispose()
    (tmp_path / "few" / "dagster.yaml").write_text(
        instance_config(str(tmp_path / "few")).replace("    base_dir:", "    max_open_shards: 2\n    base_dir:"))
    inst = dg.DagsterInstance.from_config(str(tmp_path / "few"))
    runs = [fine.execute_in_process(instance=inst).run_id for _ in range(4)]
    assert len(inst.event_log_storage._engines) <= 2
    assert all(_types(inst, r)[-1] == SUCCESS for r in runs)
    inst.dispose()


def test_a_corrupted_run_file_is_a_database_error(instance: dg.DagsterInstance) -> None:
    storage = instance.event_log_storage
    Path(storage.path_for_shard("corrupt")).write_text("some nonsense")
    with pytest.raises(sqlalchemy.exc.DatabaseError):
        storage.get_logs_for_run("corrupt")


def _child_reads(base_dir: str, run_id: str, queue: "multiprocessing.Queue[object]") -> None:
    try:
        storage = FastSqliteEventLogStorage(base_dir)
        queue.put(len(storage.get_logs_for_run(run_id)))
    except Exception as exc:  # noqa: BLE001 - reported to the parent
        queue.put(repr(exc))


def test_forked_and_spawned_processes_use_their_own_connections(tmp_path: Path) -> None:
    inst = _instance(tmp_path / "fork", "fast")
    run_id = fine.execute_in_process(instance=inst).run_id
    storage = inst.event_log_storage
    expected = len(storage.get_logs_for_run(run_id))
    for method in ("fork", "spawn"):
        ctx = multiprocessing.get_context(method)
        queue = ctx.Queue()
        if method == "fork":  # the child inherits this storage with its kept engines
            proc = ctx.Process(target=lambda q: q.put(len(storage.get_logs_for_run(run_id))), args=(queue,))
        else:
            proc = ctx.Process(target=_child_reads, args=(storage._base_dir, run_id, queue))
        proc.start()
        proc.join(60)
        assert queue.get(timeout=5) == expected, method
    assert len(storage.get_logs_for_run(run_id)) == expected  # the parent's connections still work
    inst.dispose()


def test_multiprocess_executor_writes_from_step_processes(tmp_path: Path) -> None:
    home = tmp_path / "mp"
    write_instance_config(str(home))
    inst = dg.DagsterInstance.from_config(str(home))
    job = dg.build_reconstructable_job("test_storage", "mp_job", reconstructor_working_directory=str(Path(__file__).parent))
    with dg.execute_job(job, instance=inst) as result:
        assert result.success
        types = _types(inst, result.run_id)
    assert types.count("STEP_SUCCESS") == 2 and "STEP_WORKER_STARTED" in types
    inst.dispose()


def mp_job() -> dg.JobDefinition:
    return fine.with_executor_def(dg.multiprocess_executor.configured({"start_method": {"forkserver": {}}}))


def test_instance_config_points_at_the_default_event_log_folder(tmp_path: Path) -> None:
    write_instance_config(str(tmp_path / "h"))
    text = (tmp_path / "h" / "dagster.yaml").read_text()
    assert "class: FastSqliteEventLogStorage" in text
    assert os.path.join(str(tmp_path / "h"), "history", "runs") in text


def test_the_cli_default_home_uses_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from noetl_dagster.storage import LOCAL_DAGSTER_HOME, default_instance

    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    monkeypatch.chdir(tmp_path)
    inst = default_instance()
    assert type(inst.event_log_storage) is FastSqliteEventLogStorage
    assert (tmp_path / LOCAL_DAGSTER_HOME / "dagster.yaml").exists()
    assert _types(inst, fine.execute_in_process(instance=inst).run_id)[-1] == SUCCESS
    inst.dispose()
