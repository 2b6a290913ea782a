"""``FastSqliteEventLogStorage`` behaves as Dagster's ``SqliteEventLogStorage`` and
``FastPostgresEventLogStorage`` as dagster-postgres's ``PostgresEventLogStorage``: every check runs
against all four (configured through ``dagster.yaml``; Postgres on the real PostgreSQL 15 of
``tests/pg.py``, a fresh database per instance) and expects what Dagster's own storages give, plus
what the kept connections must not break (forks, wipes, many runs, watchers)."""

from __future__ import annotations

import multiprocessing
import os
import threading
import uuid
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import sqlalchemy.exc
from dagster._core.events import DagsterEventType
from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage

from dagster_postgres.event_log.event_log import PostgresEventLogStorage
from pg import SUPERUSER, SUPERUSER_PASSWORD, PgServer, pg_server  # noqa: F401

from noetl_dagster.storage import (FastPostgresEventLogStorage, FastPostgresRunStorage, FastPostgresScheduleStorage,
                                   FastSqliteEventLogStorage, instance_config, write_instance_config)

#: Dagster's SQLite, ours; dagster-postgres's, ours
KINDS = ["dagster", "fast", "postgres", "fast postgres"]
STORAGE = {"dagster": SqliteEventLogStorage, "fast": FastSqliteEventLogStorage,
           "postgres": PostgresEventLogStorage, "fast postgres": FastPostgresEventLogStorage}
START, SUCCESS = DagsterEventType.RUN_START.value, DagsterEventType.RUN_SUCCESS.value


def _database(pg: PgServer) -> dict[str, Any]:
    """A fresh database on the test server: dagster-postgres's ``postgres_db`` fields."""
    name = pg.create_database(f"events_{uuid.uuid4().hex[:10]}")
    return {"hostname": pg.host, "port": pg.port, "username": pg.user, "password": pg.password,
            "db_name": name, "scheme": "postgresql+psycopg2"}


def _instance(home: Path, kind: str, extra: str = "", pg: PgServer | None = None) -> dg.DagsterInstance:
    home.mkdir(parents=True, exist_ok=True)
    if kind == "fast":
        text = instance_config(str(home))
    elif kind == "fast postgres":
        assert pg is not None
        text = instance_config(str(home), postgres=_database(pg))
    elif kind == "postgres":
        assert pg is not None
        import yaml

        text = yaml.safe_dump({"storage": {"postgres": {"postgres_db": _database(pg)}},
                               "telemetry": {"enabled": False}})
    else:
        text = "telemetry:\n  enabled: false\n"
    (home / "dagster.yaml").write_text(text + extra)
    inst = dg.DagsterInstance.from_config(str(home))
    assert type(inst.event_log_storage) is STORAGE[kind]
    if kind == "fast postgres":
        assert type(inst.run_storage) is FastPostgresRunStorage
        assert type(inst._schedule_storage) is FastPostgresScheduleStorage
    return inst


def _make(request: pytest.FixtureRequest, home: Path, kind: str) -> dg.DagsterInstance:
    pg = request.getfixturevalue("pg_server") if "postgres" in kind else None
    return _instance(home, kind, pg=pg)


@pytest.fixture(params=KINDS)
def instance(request: pytest.FixtureRequest, tmp_path: Path) -> dg.DagsterInstance:
    inst = _make(request, tmp_path / request.param.replace(" ", "_"), request.param)
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


def test_all_storages_record_the_same_events(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    seen = {}
    for kind in KINDS:
        inst = _make(request, tmp_path / kind.replace(" ", "_"), kind)
        result = mixed.execute_in_process(instance=inst, raise_on_error=False)
        seen[kind] = [(e.step_key, e.dagster_event.event_type_value) for e in inst.all_logs(result.run_id)
                      if e.dagster_event and e.dagster_event.event_type_value != "LOGS_CAPTURED"]
        inst.dispose()
    assert seen["fast"] == seen["dagster"] == seen["postgres"] == seen["fast postgres"]


def test_store_event_batch_one_run_and_mirrored_events(instance: dg.DagsterInstance) -> None:
    if type(instance.event_log_storage) is PostgresEventLogStorage:
        pytest.skip("dagster-postgres's store_event_batch takes asset events only (its invariant)")
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


def test_a_new_run_file_is_the_file_dagster_creates(tmp_path: Path) -> None:
    """The kept-connection storage copies an empty run file made by Dagster's ``_initdb``: same
    tables, indexes, alembic revision and WAL mode as Dagster's own storage creates per run; a run
    file another process made first is used as it is."""
    import sqlite3

    files = {}
    for kind in ("dagster", "fast"):
        inst = _instance(tmp_path / kind, kind)
        run_id = fine.execute_in_process(instance=inst).run_id
        path = inst.event_log_storage.path_for_shard(run_id)
        inst.dispose()
        conn = sqlite3.connect(path)
        try:
            files[kind] = (sorted(conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master")),
                           conn.execute("SELECT version_num FROM alembic_version").fetchall(),
                           conn.execute("PRAGMA journal_mode").fetchone(),
                           conn.execute("SELECT count(*) FROM event_logs").fetchone())
        finally:
            conn.close()
    assert files["fast"] == files["dagster"]
    assert files["fast"][2] == ("wal",) and files["fast"][1] and files["fast"][3][0] > 10
    assert not list((tmp_path / "fast").rglob("*.seed"))
    # a run file Dagster's storage made (another process, same folder): used as it is
    base = tmp_path / "shared"
    dagster_side = SqliteEventLogStorage(str(base))
    entries = _instance(tmp_path / "src", "dagster").all_logs(fine.execute_in_process(
        instance=_instance(tmp_path / "src", "dagster")).run_id)
    run_id = str(uuid.uuid4())
    copies = [e._replace(run_id=run_id) for e in entries]
    half = len(copies) // 2
    for event in copies[:half]:
        dagster_side.store_event(event)
    fast_side = FastSqliteEventLogStorage(str(base))
    for event in copies[half:]:
        fast_side.store_event(event)
    assert [e.message for e in fast_side.get_logs_for_run(run_id)] == [e.message for e in copies]
    fast_side.dispose()
    dagster_side.dispose()


@pytest.mark.parametrize("kind", ["dagster", "fast"])
def test_a_corrupted_run_file_is_a_database_error(kind: str, tmp_path: Path) -> None:
    storage = _instance(tmp_path / kind, kind).event_log_storage
    Path(storage.path_for_shard("corrupt")).write_text("some nonsense")
    with pytest.raises(sqlalchemy.exc.DatabaseError):
        storage.get_logs_for_run("corrupt")


def _open(kind: str, where: str) -> Any:
    return FastSqliteEventLogStorage(where) if kind == "fast" else FastPostgresEventLogStorage(where)


def _backend(storage: Any) -> int | None:
    """The server process behind the connection a Postgres storage's pool hands out (None: SQLite)."""
    if not isinstance(storage, FastPostgresEventLogStorage):
        return None
    with storage._connect() as conn:
        return conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()


def _child_reads(kind: str, where: str, run_id: str, queue: "multiprocessing.Queue[object]") -> None:
    try:
        storage = _open(kind, where)
        queue.put((len(storage.get_logs_for_run(run_id)), _backend(storage)))
    except Exception as exc:  # noqa: BLE001 - reported to the parent
        queue.put(repr(exc))


@pytest.mark.parametrize("kind", ["fast", "fast postgres"])
def test_forked_and_spawned_processes_use_their_own_connections(kind: str, request: pytest.FixtureRequest,
                                                                tmp_path: Path) -> None:
    inst = _make(request, tmp_path / "fork", kind)
    run_id = fine.execute_in_process(instance=inst).run_id
    storage = inst.event_log_storage
    expected = len(storage.get_logs_for_run(run_id))
    parent_backend = _backend(storage)  # the parent's pooled connection, kept across the fork
    where = storage._base_dir if kind == "fast" else storage.postgres_url
    for method in ("fork", "spawn"):
        ctx = multiprocessing.get_context(method)
        queue = ctx.Queue()
        if method == "fork":  # the child inherits this storage with its kept engines
            proc = ctx.Process(target=lambda q: q.put((len(storage.get_logs_for_run(run_id)), _backend(storage))),
                               args=(queue,))
        else:
            proc = ctx.Process(target=_child_reads, args=(kind, where, run_id, queue))
        proc.start()
        proc.join(60)
        count, backend = queue.get(timeout=5)
        assert count == expected, method
        assert backend is None or backend != parent_backend, method  # a connection of its own
    assert len(storage.get_logs_for_run(run_id)) == expected  # the parent's connections still work
    assert _backend(storage) == parent_backend
    inst.dispose()


@pytest.mark.parametrize("kind", ["fast", "fast postgres"])
def test_multiprocess_executor_writes_from_step_processes(kind: str, request: pytest.FixtureRequest,
                                                          tmp_path: Path) -> None:
    home = tmp_path / "mp"
    postgres = _database(request.getfixturevalue("pg_server")) if "postgres" in kind else None
    write_instance_config(str(home), postgres=postgres)
    inst = dg.DagsterInstance.from_config(str(home))
    assert type(inst.event_log_storage) is STORAGE[kind]
    job = dg.build_reconstructable_job("test_storage", "mp_job", reconstructor_working_directory=str(Path(__file__).parent))
    with dg.execute_job(job, instance=inst) as result:
        assert result.success
        types = _types(inst, result.run_id)
    assert types.count("STEP_SUCCESS") == 2 and "STEP_WORKER_STARTED" in types
    assert inst.get_run_by_id(result.run_id).status == dg.DagsterRunStatus.SUCCESS
    inst.dispose()


def mp_job() -> dg.JobDefinition:
    return fine.with_executor_def(dg.multiprocess_executor.configured({"start_method": {"forkserver": {}}}))


def test_a_watcher_sees_a_run_events_as_they_are_stored(instance: dg.DagsterInstance) -> None:
    """``instance.watch_event_logs`` (the webserver's live run view) delivers every event stored
    for a run, from the cursor on, whether stored one by one or in a batch."""
    entries = instance.all_logs(fine.execute_in_process(instance=instance).run_id)
    run_id = str(uuid.uuid4())
    copies = [e._replace(run_id=run_id) for e in entries]
    instance.store_event(copies[0])
    cursor = instance.get_records_for_run(run_id).cursor
    seen: list[Any] = []
    done = threading.Event()

    def callback(event: Any, cursor: str) -> None:
        seen.append(event)
        if len(seen) == len(copies) - 1:
            done.set()

    instance.watch_event_logs(run_id, cursor, callback)
    try:
        half = len(copies) // 2
        for event in copies[1:half]:
            instance.store_event(event)
        if type(instance.event_log_storage) is PostgresEventLogStorage:  # takes asset batches only
            for event in copies[half:]:
                instance.store_event(event)
        else:
            instance.event_log_storage.store_event_batch(copies[half:])
        assert done.wait(30), f"{len(seen)} of {len(copies) - 1} events seen"
    finally:
        instance.end_watch_event_logs(run_id, callback)
    assert [e.message for e in seen] == [e.message for e in copies[1:]]


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


# -- a step's events in one transaction ----------------------------------------------------------

@dg.op(config_schema={"kind": str, "where": str})
def observe_from_outside(context, x: int) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """What another process's storage (a second storage object on the same database) sees while
    this step runs: the previous step's events all, then this step's log line within seconds."""
    import time

    other = _open(context.op_config["kind"], context.op_config["where"])
    try:
        before = [(e.step_key, e.dagster_event.event_type_value if e.dagster_event else "log")
                  for e in other.get_logs_for_run(context.run_id)]
        context.log.info("a long step is running")
        deadline, seen = time.monotonic() + 20, False
        while not seen and time.monotonic() < deadline:
            time.sleep(0.05)
            seen = any(e.user_message == "a long step is running" for e in other.get_logs_for_run(context.run_id))
        return {"before": before, "own line seen": seen}
    finally:
        other.dispose()


@dg.job
def observed() -> None:
    observe_from_outside(materialize(ok()))


def _where(inst: dg.DagsterInstance) -> str:
    storage = inst.event_log_storage
    return storage._base_dir if isinstance(storage, FastSqliteEventLogStorage) else storage.postgres_url


@pytest.mark.parametrize("kind", ["fast", "fast postgres"])
def test_a_finished_step_is_stored_and_a_running_one_shows_its_events(kind: str, request: pytest.FixtureRequest,
                                                                     tmp_path: Path) -> None:
    inst = _make(request, tmp_path / "obs", kind)
    kind_name = "fast" if kind == "fast" else "pg"
    config = {"ops": {"observe_from_outside": {"config": {"kind": kind_name, "where": _where(inst)}}}}
    result = observed.execute_in_process(instance=inst, run_config=config)
    seen = result.output_for_node("observe_from_outside")
    before = seen["before"]
    for step in ("ok", "materialize"):  # finished steps: every event of theirs, end included
        assert (step, "STEP_START") in before and (step, "STEP_SUCCESS") in before, before
    assert ("materialize", "ASSET_MATERIALIZATION") in before
    assert seen["own line seen"]  # a running step's events reach other readers (flush_interval)
    # and in process, a read sees every event stored before it, in storage order
    types = _types(inst, result.run_id)
    assert types.index("STEP_SUCCESS") < types.index("ASSET_MATERIALIZATION") and types[-1] == SUCCESS
    inst.dispose()


_CRASH = """
import os, signal, sys
sys.path.insert(0, {tests!r})
import dagster as dg
from test_storage import ok, _open

@dg.op
def killed(context, x: int) -> int:
    context.log.info("dying now")
    os.kill(os.getpid(), signal.SIGKILL)
    return x

@dg.job
def crashing():
    killed(ok())

crashing.execute_in_process(instance=dg.DagsterInstance.from_config({home!r}))
"""


@pytest.mark.parametrize("kind", ["fast", "fast postgres"])
def test_a_killed_process_keeps_its_finished_steps(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    import subprocess
    import sys

    inst = _make(request, tmp_path / "crash", kind)
    script = tmp_path / "crash.py"
    script.write_text(_CRASH.format(tests=str(Path(__file__).parent), home=str(tmp_path / "crash")))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert proc.returncode == -9, proc.stderr[-2000:]
    run = inst.get_runs()[0]
    events = [(e.step_key, e.dagster_event.event_type_value) for e in inst.all_logs(run.run_id) if e.dagster_event]
    ok_events = [t for s, t in events if s == "ok"]
    assert ok_events[0] == "STEP_START" and ok_events[-1] == "STEP_SUCCESS", events
    assert "HANDLED_OUTPUT" in ok_events
    inst.dispose()


def test_the_readme_postgres_configuration_opens_an_instance(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    import re

    import yaml

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = next(b for b in re.findall(r"```yaml\n(.*?)```", readme, re.S) if "FastPostgresEventLogStorage" in b)
    config = yaml.safe_load(block)
    config["run_storage"]["config"]["postgres_db"].update(_database(request.getfixturevalue("pg_server")))
    home = tmp_path / "readme"
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    inst = dg.DagsterInstance.from_config(str(home))
    assert (type(inst.run_storage), type(inst.event_log_storage), type(inst._schedule_storage)) == (
        FastPostgresRunStorage, FastPostgresEventLogStorage, FastPostgresScheduleStorage)
    run_id = fine.execute_in_process(instance=inst).run_id
    assert inst.get_run_by_id(run_id).status == dg.DagsterRunStatus.SUCCESS and _types(inst, run_id)[-1] == SUCCESS
    inst.dispose()


def test_kept_postgres_connections_survive_a_server_side_disconnect(request: pytest.FixtureRequest,
                                                                    tmp_path: Path) -> None:
    """A pooled connection the server dropped (a restart, an idle timeout) is replaced, not failed on."""
    import psycopg

    pg = request.getfixturevalue("pg_server")
    inst = _instance(tmp_path / "home", "fast postgres", pg=pg)
    try:
        first = dg.materialize([materialize_asset], instance=inst)
        storage = inst.event_log_storage
        before = _backend(storage)
        with psycopg.connect(host=pg.host, port=pg.port, user=SUPERUSER, password=SUPERUSER_PASSWORD,
                             dbname="postgres", autocommit=True) as admin:
            killed = admin.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                   "WHERE usename = %s AND pid <> pg_backend_pid()", (pg.user,)).fetchone()
        assert killed and killed[0] >= 1
        again = dg.materialize([materialize_asset], instance=inst)
        assert again.success and _backend(storage) != before
        assert len(inst.get_records_for_run(first.run_id).records) > 0
    finally:
        inst.dispose()


@dg.asset
def materialize_asset() -> int:
    return 1
