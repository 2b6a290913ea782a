"""Zero-copy handoff of op-output tables: in process the next op gets the table object itself while
its Arrow IPC file is written in the background (complete when the run ends: re-execution from
failure reads it); across processes (multiprocess executor, ``shared_memory``) files in /dev/shm."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pytest

from noetl_dagster.io.manager import ArrowRefIOManager
from noetl_dagster.io.arrow_ref import (ArrowRef, live_table, wait_all_written, wait_written,
                                               write_arrow_later)

SEEN: dict[str, object] = {}


def _table(n: int = 1000) -> pa.Table:
    return pa.table({"id": list(range(n)), "name": [f"n{i}" for i in range(n)]})


def _instance(tmp_path: Path) -> dg.DagsterInstance:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    return dg.DagsterInstance.from_config(str(home))


# ------------------------------------------------------------- jobs (module level: reconstructable)

def handoff_job() -> dg.JobDefinition:
    """produce -> consume(t: pa.Table); consume fails while the file NOETL_TEST_FAIL exists."""
    base, executor = os.environ["NOETL_TEST_BASE"], os.environ.get("NOETL_TEST_EXECUTOR", "in_process")

    @dg.op
    def produce() -> pa.Table:
        table = _table()
        SEEN["produced"] = table
        return table

    @dg.op
    def consume(t: pa.Table) -> int:
        SEEN["consumed"] = t
        release = SEEN.get("release")
        if release is not None:  # let a held-back background write go on (slow_writer)
            release.set()
        flag = os.environ.get("NOETL_TEST_FAIL")
        if flag and os.path.exists(flag):
            raise RuntimeError("consume failed on purpose")
        return t.num_rows + sum(t.column("id").to_pylist())

    io = ArrowRefIOManager(base_uri=base, shared_memory=os.environ.get("NOETL_TEST_SHM") == "1",
                           handoff=os.environ.get("NOETL_TEST_HANDOFF", "auto"))
    # spawn: a forkserver started earlier in this process would hand its children a stale environment
    executor_def = (dg.multiprocess_executor.configured({"start_method": {"spawn": {}}})
                    if executor == "multiprocess" else dg.in_process_executor)

    @dg.job(resource_defs={"io_manager": io}, executor_def=executor_def)
    def handoff():
        consume(produce())

    return handoff


@pytest.fixture(autouse=True)
def _fresh_seen() -> None:
    SEEN.clear()


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("NOETL_TEST_BASE", str(tmp_path / "data"))
    SEEN.pop("produced", None)
    SEEN.pop("consumed", None)
    return tmp_path


def _refs(instance: dg.DagsterInstance, run_id: str, io: ArrowRefIOManager) -> ArrowRef:
    value = io.load(io.run_uri(run_id, "produce", "result"))
    assert isinstance(value, ArrowRef)
    return value


@pytest.fixture
def slow_writer(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """The background writer waits until the event is set (or 10 s): a write still under way."""
    import noetl_dagster.io.arrow_ref as arrow_ref

    release = threading.Event()
    real = arrow_ref._write_later

    def write(table: pa.Table, path: str) -> None:
        release.wait(10)
        real(table, path)

    monkeypatch.setattr(arrow_ref, "_write_later", write)
    SEEN["release"] = release
    return release


def test_in_process_consumer_gets_the_table_object_and_the_file_is_complete_after_the_run(
        env: Path, slow_writer: threading.Event) -> None:
    instance = _instance(env)
    with dg.execute_job(dg.reconstructable(handoff_job), instance=instance) as result:
        assert result.success
        assert result.output_for_node("consume") == 1000 + sum(range(1000))
        run_id = result.run_id
    assert SEEN["consumed"] is SEEN["produced"]  # zero copy: the same object
    io = ArrowRefIOManager(base_uri=str(env / "data"))
    ref = _refs(instance, run_id, io)
    assert live_table(ref.uri) is None  # written: no longer held
    assert os.path.getsize(ref.path) == ref.num_bytes
    assert ref.to_table().equals(_table())
    metadata = {e.step_key: e.dagster_event.event_specific_data.metadata for e in instance.all_logs(run_id)
                if e.dagster_event and e.dagster_event.event_type_value == "HANDLED_OUTPUT"}
    assert metadata["produce"]["noetl/bytes"].value == ref.num_bytes


def test_reexecution_from_failure_reads_the_background_written_file(env: Path, monkeypatch: pytest.MonkeyPatch
                                                                    ) -> None:
    flag = env / "fail"
    flag.write_text("1")
    monkeypatch.setenv("NOETL_TEST_FAIL", str(flag))
    instance = _instance(env)
    with dg.execute_job(dg.reconstructable(handoff_job), instance=instance, raise_on_error=False) as first:
        assert not first.success
        parent = first.run_id
    flag.unlink()
    SEEN.pop("produced", None)
    options = dg.ReexecutionOptions.from_failure(parent, instance)
    with dg.execute_job(dg.reconstructable(handoff_job), instance=instance, reexecution_options=options) as again:
        assert again.success
        assert again.output_for_node("consume") == 1000 + sum(range(1000))
    assert "produced" not in SEEN  # produce was not run again: its table came from the parent's file
    assert SEEN["consumed"].equals(_table())


def test_handoff_write_writes_before_the_output_is_reported(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOETL_TEST_HANDOFF", "write")
    instance = _instance(env)
    with dg.execute_job(dg.reconstructable(handoff_job), instance=instance) as result:
        assert result.success
    assert SEEN["consumed"] is not SEEN["produced"]  # memory-mapped from the file
    assert SEEN["consumed"].equals(SEEN["produced"])


def test_bad_handoff_value_is_a_config_error(env: Path) -> None:
    io = ArrowRefIOManager(base_uri=str(env / "data"), handoff="sometimes")
    with pytest.raises(dg.DagsterInvalidConfigError, match="handoff must be 'auto' or 'write'"):
        io.setup_for_execution(dg.build_init_resource_context())


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="needs /dev/shm")
def test_multiprocess_shared_memory_tables_live_in_dev_shm_and_clean_run_removes_them(
        env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOETL_TEST_EXECUTOR", "multiprocess")
    monkeypatch.setenv("NOETL_TEST_SHM", "1")
    instance = _instance(env)
    job = dg.build_reconstructable_job("test_arrow_handoff", "handoff_job",  # step processes rebuild it
                                       reconstructor_working_directory=str(Path(__file__).parent))
    with dg.execute_job(job, instance=instance) as result:
        assert result.success
        assert result.output_for_node("consume") == 1000 + sum(range(1000))
        run_id = result.run_id
    io = ArrowRefIOManager(base_uri=str(env / "data"), shared_memory=True)
    ref = _refs(instance, run_id, io)
    assert ref.uri.startswith(io.shm_root + "/runs/" + run_id + "/produce/result/")
    assert ref.to_table().equals(_table())
    assert os.path.getsize(ref.path) == ref.num_bytes
    assert io.clean_run(run_id)
    assert not os.path.exists(ref.path) and not os.path.exists(io.run_uri(run_id))


def test_write_later_serves_the_table_until_written_then_the_file(tmp_path: Path, slow_writer: threading.Event
                                                                  ) -> None:
    table = _table(5000)
    uri = str(tmp_path / "out" / "t.arrow")
    ref = write_arrow_later(table, uri)
    assert ref.format == "arrow" and ref.num_rows == 5000
    assert ref.to_table() is table and live_table(uri) is table and ref.exists()
    assert ref.to_table(["id"]).column_names == ["id"]
    assert pa.table(ref).equals(table)  # the PyCapsule stream reads the live table too
    assert not os.path.exists(uri)
    threading.Timer(0.2, slow_writer.set).start()
    path = ref.path  # waits for the file
    assert os.path.getsize(path) == ref.num_bytes
    assert live_table(uri) is None
    loaded = ref.to_table()
    assert loaded is not table and loaded.equals(table)
    assert ref.read_schema() == table.schema
    assert wait_all_written(str(tmp_path)) == []


def test_failed_background_write_keeps_the_table_and_reports_the_uri(tmp_path: Path) -> None:
    (tmp_path / "blocked").write_text("a file where the folder should be")
    uri = str(tmp_path / "blocked" / "t.arrow")
    table = _table(10)
    ref = write_arrow_later(table, uri)
    assert wait_all_written(str(tmp_path)) == [uri]
    with pytest.raises(OSError):
        wait_written(uri)
    assert ref.to_table() is table  # this process can still hand it over
