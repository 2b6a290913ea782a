"""ArrowRefIOManager: round trips, typed loads, one write per step, memory maps, partitions,
root confinement, re-execution from failure, retention, remote filesystems."""

import datetime as dt
import math
import os
import time
import uuid
from pathlib import Path
from typing import Any

import dagster as dg
import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pytest

from noetl_dagster import load_playbook_definitions
from noetl_dagster.io.manager import (
    RETENTION_JOB,
    retention_definitions,
    ArrowRef,
    ArrowRefIOManager,
    ArrowRefPathError,
    check_segment,
    decode_value,
    encode_value,
    iter_refs,
    load_refs,
)
from noetl_dagster.io.arrow_ref import register_filesystem

TABLE = pa.table({"id": pa.array([1, 2, 3], pa.int64()), "name": ["a", "b", "c"]})
OTHER = pa.table({"x": pa.array([0.5, 1.5], pa.float64())})


def handled(result: Any) -> dict[tuple[str, str], dict[str, Any]]:
    """``{(step_key, output_name): IO-manager metadata (raw values)}`` of a run."""
    out = {}
    for event in result.all_events:
        if event.event_type_value == "HANDLED_OUTPUT":
            data = event.event_specific_data
            out[(event.step_key, data.output_name)] = {k: getattr(v, "value", v) for k, v in data.metadata.items()}
    return out


def files(root: Path, suffix: str = "") -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob(f"*{suffix}") if p.is_file())


def same(a: Any, b: Any) -> bool:
    """Structural equality where tables compare with ``equals`` (pandas/polars via Arrow)."""
    if isinstance(a, pa.Table) or isinstance(b, pa.Table):
        return isinstance(a, pa.Table) and isinstance(b, pa.Table) and a.equals(b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return a == b


# ----------------------------------------------------------------------- round trips

def _pandas():
    return pytest.importorskip("pandas")


def _reader():
    batches = [pa.record_batch({"v": pa.array(range(i * 10, i * 10 + 10), pa.int64())}) for i in range(5)]
    return pa.RecordBatchReader.from_batches(batches[0].schema, iter(batches))


def _reader_table():
    return pa.table({"v": pa.array(range(50), pa.int64())})


ROUND_TRIPS = {
    "table": (lambda: TABLE, lambda: TABLE),
    "record_batch": (lambda: TABLE.to_batches()[0], lambda: TABLE),
    "record_batch_reader": (_reader, _reader_table),
    "pandas": (lambda: _pandas().DataFrame({"a": [1, 2], "b": [0.5, 2.5]}),
               lambda: pa.Table.from_pandas(_pandas().DataFrame({"a": [1, 2], "b": [0.5, 2.5]}))),
    "dict_with_nested_tables": (
        lambda: {"t": TABLE, "meta": {"n": 1, "more": [OTHER, {"deep": TABLE}]}},
        lambda: {"t": TABLE, "meta": {"n": 1, "more": [OTHER, {"deep": TABLE}]}}),
    "list_of_tables": (lambda: [TABLE, OTHER, TABLE], lambda: [TABLE, OTHER, TABLE]),
    "token": (
        lambda: {"to": "b", "workload": {"k": [1, 2]}, "results": {"a": (12, {"rows": TABLE, "n": 3})},
                 "ctx": {"c": (13, "v")}, "arc": {}},
        lambda: {"to": "b", "workload": {"k": [1, 2]}, "results": {"a": (12, {"rows": TABLE, "n": 3})},
                 "ctx": {"c": (13, "v")}, "arc": {}}),
    "plain_json": (
        lambda: {"s": "é", "i": 1, "f": 2.5, "nan": float("nan"), "b": True, "n": None,
                 "l": [1, (2, 3)], "__noetl_tuple__": "user key", "nested": {"__noetl_arrow_ref__": 1}},
        lambda: {"s": "é", "i": 1, "f": 2.5, "nan": float("nan"), "b": True, "n": None,
                 "l": [1, (2, 3)], "__noetl_tuple__": "user key", "nested": {"__noetl_arrow_ref__": 1}}),
    "scalar": (lambda: 42, lambda: 42),
    "none": (lambda: None, lambda: None),
    "not_json_pickled": (
        lambda: {"when": dt.datetime(2025, 1, 2, 3, 4), 1: b"bytes", "t": TABLE},
        lambda: {"when": dt.datetime(2025, 1, 2, 3, 4), 1: b"bytes", "t": TABLE}),
}


@pytest.mark.parametrize("case", sorted(ROUND_TRIPS))
def test_round_trip_through_a_job(case, tmp_path):
    make, expected = ROUND_TRIPS[case]
    seen: dict[str, Any] = {}

    @dg.op
    def produce():
        return make()

    @dg.op
    def consume(value):
        seen["value"] = value

    @dg.job(resource_defs={"io_manager": ArrowRefIOManager(base_uri=str(tmp_path))})
    def job():
        consume(produce())

    assert job.execute_in_process().success
    stored = seen["value"]
    # the default load gives the structure with refs, never table data
    assert not any(isinstance(v, pa.Table) for v in _leaves(stored))
    assert same(load_refs(stored), expected())
    value_files = files(tmp_path, "value.json") + files(tmp_path, "value.pkl")
    if case == "not_json_pickled":
        assert any(f.endswith("produce/result/value.pkl") for f in value_files)
    else:
        assert any(f.endswith("produce/result/value.json") for f in value_files)


def _leaves(value: Any):
    if isinstance(value, dict):
        for v in value.values():
            yield from _leaves(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _leaves(v)
    else:
        yield value


def test_polars_round_trip(tmp_path):
    pl = pytest.importorskip("polars")
    df = pl.DataFrame({"a": [1, 2, 3], "s": ["x", "y", "z"]})
    seen: dict[str, Any] = {}

    @dg.op
    def produce():
        return {"df": df}

    @dg.op
    def consume(value: dict):
        seen["ref"] = value["df"]

    @dg.op
    def typed(value: pl.DataFrame):
        seen["df"] = value

    @dg.job(resource_defs={"io_manager": ArrowRefIOManager(base_uri=str(tmp_path))})
    def job():
        out = produce()
        consume(out)
        typed(out)

    assert job.execute_in_process().success
    assert isinstance(seen["ref"], ArrowRef)
    assert seen["df"].equals(df)


def test_json_codec_edge_cases():
    ref = ArrowRef("/x.parquet", schema=(("a", "int64"),), num_rows=1)
    value = {"r": ref, "t": (1, [ref, (2,)]), "__noetl_dict__": {"__noetl_tuple__": [1]}}
    assert decode_value(encode_value(value)) == value
    assert encode_value({1: "non-str key"}) is None
    assert encode_value({"d": dt.date(2025, 1, 1)}) is None
    assert encode_value(float("inf")) is not None


# ----------------------------------------------------------------------- typed loads

def test_load_input_follows_the_annotation(tmp_path):
    duckdb = pytest.importorskip("duckdb")
    seen: dict[str, Any] = {}

    @dg.op
    def produce():
        return TABLE

    @dg.op
    def as_table(t: pa.Table):
        seen["table"] = t

    @dg.op
    def as_ref(r: ArrowRef):
        seen["ref"] = r

    @dg.op
    def as_reader(r: pa.RecordBatchReader):
        seen["reader"] = r.read_all()

    @dg.op
    def as_dataset(d: pads.Dataset):
        seen["dataset"] = d.to_table(columns=["id"])

    @dg.op
    def as_duckdb(rel: duckdb.DuckDBPyRelation):
        seen["duckdb"] = rel.aggregate("sum(id)").fetchall()

    @dg.op
    def as_any(v):
        seen["any"] = v

    @dg.job(resource_defs={"io_manager": ArrowRefIOManager(base_uri=str(tmp_path))})
    def job():
        t = produce()
        for consumer in (as_table, as_ref, as_reader, as_dataset, as_duckdb, as_any):
            consumer(t)

    assert job.execute_in_process().success
    assert seen["table"].equals(TABLE)
    assert isinstance(seen["ref"], ArrowRef) and seen["ref"] == seen["any"]
    assert seen["ref"].num_rows == 3 and seen["ref"].uri.endswith("produce/result/data.arrow")
    assert seen["reader"].equals(TABLE)
    assert seen["dataset"].column_names == ["id"]
    assert seen["duckdb"] == [(6,)]


def test_load_input_as_pandas(tmp_path):
    pd = pytest.importorskip("pandas")
    seen: dict[str, Any] = {}

    @dg.op
    def produce():
        return {"t": TABLE}

    @dg.op
    def as_pandas(df: pd.DataFrame):
        seen["pandas"] = df

    @dg.job(resource_defs={"io_manager": ArrowRefIOManager(base_uri=str(tmp_path))})
    def job():
        as_pandas(produce())

    assert job.execute_in_process().success
    assert seen["pandas"]["name"].tolist() == ["a", "b", "c"]


def test_a_table_input_needs_exactly_one_table(tmp_path):
    @dg.op
    def produce():
        return {"a": TABLE, "b": OTHER}

    @dg.op
    def as_table(t: pa.Table):
        return t

    @dg.job(resource_defs={"io_manager": ArrowRefIOManager(base_uri=str(tmp_path))})
    def job():
        as_table(produce())

    result = job.execute_in_process(raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "holds 2 tables" in str(failure.event_specific_data.error)


def test_output_metadata(tmp_path):
    @dg.op(out={"one": dg.Out(), "two": dg.Out(), "none": dg.Out()})
    def produce():
        return TABLE, {"a": TABLE, "b": OTHER}, {"x": 1}

    @dg.job(resource_defs={"io_manager": ArrowRefIOManager(base_uri=str(tmp_path))})
    def job():
        produce()

    meta = handled(job.execute_in_process())
    one = meta[("produce", "one")]
    assert one["dagster/row_count"] == 3 and one["noetl/bytes"] > 0
    assert [(c.name, c.type) for c in one["dagster/column_schema"].columns] == [("id", "int64"), ("name", "string")]
    assert one["dagster/uri"].endswith("produce/one/data.arrow")
    two = meta[("produce", "two")]
    assert two["noetl/tables"] == 2 and "dagster/row_count" not in two and len(two["noetl/refs"]) == 2
    assert meta[("produce", "none")]["noetl/tables"] == 0


# ------------------------------------------------------------------- one write per step

def test_a_table_in_result_and_two_tokens_is_written_once(tmp_path):
    seen: dict[str, Any] = {}
    reader_batches = {"n": 0}

    def counted_reader():
        def gen():
            for batch in TABLE.to_batches():
                reader_batches["n"] += 1
                yield batch
        return pa.RecordBatchReader.from_batches(TABLE.schema, gen())

    @dg.op(out={"result": dg.Out(), "to_b": dg.Out(is_required=False), "to_c": dg.Out(is_required=False)})
    def a():
        table, stream = pa.table({"v": list(range(100))}), counted_reader()
        result = {"table": table, "stream": stream}
        yield dg.Output(result, "result")
        for target in ("b", "c"):
            yield dg.Output({"to": target, "workload": {}, "results": {"a": (1, result)}, "ctx": {}, "arc": {}},
                            f"to_{target}")

    @dg.op
    def b(tokens: list):
        seen["b"] = tokens[0]

    @dg.op
    def c(tokens: list):
        seen["c"] = tokens[0]

    @dg.job(resource_defs={"io_manager": ArrowRefIOManager(base_uri=str(tmp_path))})
    def job():
        result, to_b, to_c = a()
        b([to_b])
        c([to_c])

    run = job.execute_in_process()
    assert run.success
    assert len(files(tmp_path, ".arrow")) == 2  # one table + one stream, written once each
    meta = handled(run)
    assert meta[("a", "result")]["noetl/tables_written"] == 2
    assert meta[("a", "to_b")]["noetl/tables_written"] == 0
    assert meta[("a", "to_c")]["noetl/tables_written"] == 0
    assert reader_batches["n"] == 1  # the reader was streamed once
    ref_b = seen["b"]["results"]["a"][1]["table"]
    ref_c = seen["c"]["results"]["a"][1]["table"]
    assert ref_b == ref_c and ref_b.uri.endswith("a/result/table.arrow")
    assert seen["b"]["results"]["a"][1]["stream"].to_table().equals(TABLE)
    assert isinstance(seen["b"]["results"]["a"], tuple)  # stamped results stay tuples


def test_a_token_stored_before_the_asset_output_is_linked_not_rewritten(tmp_path):
    io = ArrowRefIOManager(base_uri=str(tmp_path), intermediate_format="parquet")  # one format for both
    run_id = str(uuid.uuid4())
    table = pa.table({"v": [1, 2]})
    token = dg.build_output_context(step_key="score", name="to_next", run_id=run_id)
    io.handle_output(token, {"results": {"score": (1, table)}})
    product = dg.build_output_context(step_key="score", name="result", run_id=run_id, asset_key=["p"])
    io.handle_output(product, table)
    token_file = tmp_path / "runs" / run_id / "score" / "to_next" / "results.score.1.parquet"
    asset_file = tmp_path / "p" / "data.parquet"
    assert os.stat(token_file).st_ino == os.stat(asset_file).st_ino  # a hard link: one write
    assert io.load_asset_ref("p").uri == str(asset_file)


def test_intermediates_are_arrow_ipc_and_products_parquet(tmp_path):
    io = ArrowRefIOManager(base_uri=str(tmp_path))
    run_id = str(uuid.uuid4())
    token = dg.build_output_context(step_key="score", name="to_next", run_id=run_id)
    io.handle_output(token, {"results": {"score": (1, TABLE)}})
    io.handle_output(dg.build_output_context(step_key="score", name="result", run_id=run_id, asset_key=["p"]),
                     TABLE)
    stored = io.load_input(dg.build_input_context(upstream_output=token, dagster_type=_dagster_type(dict)))
    token_ref = stored["results"]["score"][1]
    assert token_ref.format == "arrow" and token_ref.uri.endswith("to_next/results.score.1.arrow")
    assert files(tmp_path / "p") == ["data.parquet", "value.json"]  # its own Parquet file, not a link
    assert io.load_asset_ref("p").to_table().equals(TABLE)
    # a product that forwards an intermediate's ref gets a Parquet copy too
    io.handle_output(dg.build_output_context(asset_key=["q"]), {"t": token_ref})
    assert io.load_asset("q")["t"].uri == str(tmp_path / "q" / "t.parquet")
    assert io.load_asset("q")["t"].to_table().equals(TABLE)


@pytest.mark.parametrize("fmt", ["parquet", "arrow"])
def test_a_record_batch_reader_is_streamed_not_materialised(tmp_path, fmt):
    rows_per_batch, batches = 262_144, 40  # 2 MB each, 80 MB in all
    peak = {"allocated": 0}

    def gen():
        for i in range(batches):
            peak["allocated"] = max(peak["allocated"], pa.total_allocated_bytes())
            yield pa.record_batch({"v": pa.repeat(pa.scalar(i, pa.int64()), rows_per_batch)})

    schema = pa.schema([("v", pa.int64())])
    base = pa.total_allocated_bytes()
    io = ArrowRefIOManager(base_uri=str(tmp_path), format=fmt)
    io.handle_output(dg.build_output_context(asset_key=["stream"]),
                     pa.RecordBatchReader.from_batches(schema, gen()))
    ref = io.load_asset_ref("stream")
    assert ref.num_rows == rows_per_batch * batches
    assert peak["allocated"] - base < 32 << 20  # never more than a row group's worth in memory


def test_forwarded_refs_are_not_rewritten(tmp_path):
    seen: dict[str, Any] = {}

    @dg.op
    def a():
        return TABLE

    @dg.op
    def forward(value):  # receives the ref, passes it on without reading
        return {"again": value}

    @dg.op
    def last(value):
        seen["v"] = value

    @dg.job(resource_defs={"io_manager": ArrowRefIOManager(base_uri=str(tmp_path))})
    def job():
        last(forward(a()))

    run = job.execute_in_process()
    assert handled(run)[("forward", "result")]["noetl/tables_written"] == 0
    assert len(files(tmp_path, ".arrow")) == 1
    assert seen["v"]["again"].to_table().equals(TABLE)


# --------------------------------------------------------------------- memory mapping

def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_arrow_ipc_loads_are_memory_mapped(tmp_path):
    n = 8_000_000  # 2 x 64 MB
    ones = pa.repeat(pa.scalar(1, pa.int64()), n)
    big = pa.table({"a": ones, "b": pc.cumulative_sum(ones)})  # b = 1..n
    io = ArrowRefIOManager(base_uri=str(tmp_path), format="arrow")
    out = dg.build_output_context(asset_key=["bench", "big"])
    io.handle_output(out, big)
    size = big.nbytes
    del big
    ctx = dg.build_input_context(asset_key=["bench", "big"], upstream_output=out,
                                 dagster_type=_dagster_type(pa.Table))
    allocated, rss = pa.total_allocated_bytes(), _rss_bytes()
    loaded = io.load_input(ctx)
    assert isinstance(loaded, pa.Table) and loaded.num_rows == n
    assert pa.total_allocated_bytes() - allocated < 1 << 20  # no buffer was allocated: mmap
    assert _rss_bytes() - rss < size // 4                    # and nothing was paged in yet
    assert loaded.column("b")[n - 1].as_py() == n


def test_parquet_loads_use_a_memory_map(tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    calls = []
    real = pq.read_table
    monkeypatch.setattr(pq, "read_table", lambda *a, **k: calls.append(k) or real(*a, **k))
    io = ArrowRefIOManager(base_uri=str(tmp_path))
    out = dg.build_output_context(asset_key=["t"])
    io.handle_output(out, TABLE)
    loaded = io.load_input(dg.build_input_context(asset_key=["t"], upstream_output=out,
                                                  dagster_type=_dagster_type(pa.Table)))
    assert loaded.equals(TABLE) and calls and calls[0]["memory_map"] is True


def _dagster_type(python_type: Any) -> Any:
    from dagster._core.types.dagster_type import resolve_dagster_type

    return resolve_dagster_type(python_type)


# --------------------------------------------------------- assets, user assets, partitions

def test_user_asset_takes_a_product_as_a_table(tmp_path, instance):
    io = ArrowRefIOManager(base_uri=str(tmp_path))

    @dg.asset(key=["risk", "application_scores"])
    def application_scores() -> pa.Table:
        return TABLE

    first = dg.materialize([application_scores], resources={"io_manager": io}, instance=instance)
    assert first.success
    assert files(tmp_path) == ["risk/application_scores/data.parquet", "risk/application_scores/value.json"]
    mat = first.asset_materializations_for_node("risk__application_scores")[0]
    assert mat.metadata["dagster/row_count"].value == 3
    assert mat.metadata["dagster/uri"].value.endswith("risk/application_scores/data.parquet")

    seen: dict[str, Any] = {}

    @dg.asset(ins={"scores": dg.AssetIn(key=["risk", "application_scores"])})
    def report(scores: pa.Table) -> int:  # a plain user asset in an existing deployment
        seen["scores"] = scores
        return scores.num_rows

    second = dg.materialize([application_scores.to_source_asset(), report],
                            resources={"io_manager": io}, instance=instance)
    assert second.success
    assert seen["scores"].equals(TABLE)
    assert io.load_asset("report") == 3
    assert io.load_asset_ref("risk/application_scores").num_rows == 3


def test_asset_values_never_point_into_intermediates(tmp_path):
    io = ArrowRefIOManager(base_uri=str(tmp_path))

    @dg.op
    def load():
        return TABLE

    @dg.op
    def publish(value):  # forwards the intermediate ref as the product
        return {"table": value, "n": 3}

    @dg.graph_asset(name="product")
    def product():
        return publish(load())

    run = dg.materialize([product], resources={"io_manager": io})
    assert run.success
    ref = io.load_asset("product")["table"]
    assert ref.uri == str(tmp_path / "product" / "table.parquet")
    assert io.clean_intermediates(older_than_days=-1) == [run.run_id]
    assert io.load_asset("product")["table"].to_table().equals(TABLE)


def test_an_asset_forwarding_another_assets_table_owns_a_copy(tmp_path):
    io = ArrowRefIOManager(base_uri=str(tmp_path))
    io.handle_output(dg.build_output_context(asset_key=["a"]), TABLE)
    io.handle_output(dg.build_output_context(asset_key=["b"]), {"from_a": io.load_asset_ref("a")})
    external = ArrowRef(str(tmp_path.parent / "outside.parquet"))
    io.handle_output(dg.build_output_context(asset_key=["c"]), {"ext": external})
    assert io.load_asset("b")["from_a"].uri == str(tmp_path / "b" / "from_a.parquet")
    assert io.load_asset("c")["ext"] == external  # outside the root: kept as it is
    io.handle_output(dg.build_output_context(asset_key=["a"]), {"other": OTHER})  # a changes shape
    assert not (tmp_path / "a" / "data.parquet").exists()
    assert io.load_asset("b")["from_a"].to_table().equals(TABLE)


def test_rematerialization_replaces_stale_tables(tmp_path):
    io = ArrowRefIOManager(base_uri=str(tmp_path))
    io.handle_output(dg.build_output_context(asset_key=["p"]), {"a": TABLE, "b": OTHER})
    assert files(tmp_path) == ["p/a.parquet", "p/b.parquet", "p/value.json"]
    io.handle_output(dg.build_output_context(asset_key=["p"]), {"a": OTHER, "when": dt.date(2025, 1, 1)})
    assert files(tmp_path) == ["p/a.parquet", "p/value.pkl"]
    assert io.load_asset("p")["a"].to_table().equals(OTHER)


DAILY = dg.DailyPartitionsDefinition(start_date="2025-01-01", end_date="2025-01-04")


def test_daily_partitions_store_one_folder_per_key(tmp_path, instance):
    io = ArrowRefIOManager(base_uri=str(tmp_path))

    @dg.asset(partitions_def=DAILY, key=["sales", "daily"])
    def daily(context) -> pa.Table:
        return pa.table({"day": [context.partition_key], "v": [len(context.partition_key)]})

    for day in ("2025-01-01", "2025-01-02"):
        run = dg.materialize([daily], partition_key=day, resources={"io_manager": io}, instance=instance)
        mat = run.asset_materializations_for_node("sales__daily")[0]
        assert mat.metadata["dagster/partition_row_count"].value == 1
    assert files(tmp_path, ".parquet") == ["sales/daily/2025-01-01/data.parquet",
                                           "sales/daily/2025-01-02/data.parquet"]
    seen: dict[str, Any] = {}

    @dg.asset(partitions_def=DAILY, ins={"daily": dg.AssetIn(key=["sales", "daily"])})
    def same_day(daily: pa.Table) -> None:
        seen["one"] = daily

    @dg.asset(ins={"daily": dg.AssetIn(key=["sales", "daily"], partition_mapping=dg.AllPartitionMapping())})
    def all_days(daily: dict[str, pa.Table]) -> None:
        seen["all"] = daily

    @dg.asset(ins={"daily": dg.AssetIn(key=["sales", "daily"], partition_mapping=dg.AllPartitionMapping(),
                                       metadata={"allow_missing_partitions": True})})
    def all_refs(daily) -> None:
        seen["refs"] = daily

    source = daily.to_source_asset()
    assert dg.materialize([source, same_day], partition_key="2025-01-02", resources={"io_manager": io},
                          instance=instance).success
    assert seen["one"].column("day").to_pylist() == ["2025-01-02"]

    with pytest.raises(FileNotFoundError):  # AllPartitionMapping covers days never materialized
        dg.materialize([source, all_days], resources={"io_manager": io}, instance=instance)
    assert dg.materialize([source, all_refs], resources={"io_manager": io}, instance=instance).success
    assert set(seen["refs"]) == {"2025-01-01", "2025-01-02"}
    assert all(isinstance(v, ArrowRef) for v in seen["refs"].values())

    # a range of two partitions, typed as a dict of tables
    @dg.asset(partitions_def=DAILY, ins={"daily": dg.AssetIn(
        key=["sales", "daily"], partition_mapping=dg.TimeWindowPartitionMapping(start_offset=-1))})
    def two_days(daily: dict[str, pa.Table]) -> None:
        seen["two"] = daily

    assert dg.materialize([source, two_days], partition_key="2025-01-02", resources={"io_manager": io},
                          instance=instance).success
    assert sorted(seen["two"]) == ["2025-01-01", "2025-01-02"]
    assert all(isinstance(t, pa.Table) for t in seen["two"].values())


def test_multi_partitions_use_one_folder_per_dimension(tmp_path):
    io = ArrowRefIOManager(base_uri=str(tmp_path))
    parts = dg.MultiPartitionsDefinition({"region": dg.StaticPartitionsDefinition(["eu", "us"]),
                                          "date": dg.StaticPartitionsDefinition(["d1"])})

    @dg.asset(partitions_def=parts)
    def multi() -> pa.Table:
        return TABLE

    key = dg.MultiPartitionKey({"region": "eu", "date": "d1"})
    assert dg.materialize([multi], partition_key=key, resources={"io_manager": io}).success
    assert files(tmp_path, ".parquet") == ["multi/d1/eu/data.parquet"]


# --------------------------------------------------------------------- root confinement

@pytest.mark.parametrize("bad", ["..", ".", "", "a/../b", "../x", "/etc", "a\\b", "x\x00y", "tab\tname"])
def test_check_segment_rejects_escapes(bad):
    with pytest.raises(ArrowRefPathError, match="not a safe path segment"):
        check_segment(bad, "step key")


def test_names_cannot_escape_the_root(tmp_path):
    root = tmp_path / "root"
    io = ArrowRefIOManager(base_uri=str(root))
    for ctx in (
        dg.build_output_context(step_key="..", name="result", run_id="r1"),
        dg.build_output_context(step_key="s", name="../../x", run_id="r1"),
        dg.build_output_context(step_key="s", name="result", run_id="r1", mapping_key=".."),
        dg.build_output_context(step_key="s", name="result", run_id="../r1"),
        dg.build_output_context(asset_key=dg.AssetKey(["..", "etc"])),
        dg.build_output_context(asset_key=dg.AssetKey(["a", "/abs"])),
    ):
        with pytest.raises(ArrowRefPathError):
            io.handle_output(ctx, TABLE)
    with pytest.raises(ArrowRefPathError, match="reserved"):
        io.handle_output(dg.build_output_context(asset_key=["runs", "x"]), TABLE)
    with pytest.raises(ArrowRefPathError):
        io.asset_uri(["ok"], "../../evil")
    with pytest.raises(ArrowRefPathError):
        io.clean_run("../..")
    assert not any(p.is_file() for p in tmp_path.rglob("*"))  # nothing was written anywhere


def test_a_partition_key_cannot_escape(tmp_path):
    io = ArrowRefIOManager(base_uri=str(tmp_path / "root"))

    @dg.asset(partitions_def=dg.StaticPartitionsDefinition(["../../evil", "ok"]))
    def sneaky() -> pa.Table:
        return TABLE

    run = dg.materialize([sneaky], partition_key="../../evil", resources={"io_manager": io},
                         raise_on_error=False)
    assert not run.success
    failure = next(e for e in run.all_events if e.event_type_value == "STEP_FAILURE")
    assert "ArrowRefPathError: partition key '../../evil'" in failure.event_specific_data.error.to_string()
    assert not any(p.is_file() for p in tmp_path.rglob("*"))


def test_dynamic_outputs_are_stored_per_mapping_key(tmp_path):
    @dg.op(out=dg.DynamicOut())
    def fan():
        for i in range(2):
            yield dg.DynamicOutput(pa.table({"i": [i]}), mapping_key=f"i{i:05d}")

    @dg.op
    def body(t: pa.Table) -> int:
        return t.column("i")[0].as_py()

    @dg.op
    def total(values: list) -> int:
        return sum(values)

    @dg.job(resource_defs={"io_manager": ArrowRefIOManager(base_uri=str(tmp_path))})
    def job():
        total(fan().map(body).collect())

    run = job.execute_in_process()
    assert run.output_for_node("total") == 1
    assert [f.split("/", 2)[2] for f in files(tmp_path, ".arrow")] == [
        "fan/result/i00000/data.arrow", "fan/result/i00001/data.arrow"]


# ------------------------------------------------------------ re-execution from failure

def reexecution_job() -> dg.JobDefinition:
    """Module-level factory (``dg.reconstructable`` needs one): ``load`` writes a table and
    counts its runs in a file; ``score`` fails while the file ``FAIL`` exists."""
    base = Path(os.environ["NOETL_TEST_ARROW_BASE"])

    @dg.op(out={"result": dg.Out(), "to_score": dg.Out()})
    def load():
        with open(base / "load_runs", "a") as f:
            f.write("x")
        table = pa.table({"v": [1, 2, 3]})
        yield dg.Output(table, "result")
        yield dg.Output({"to": "score", "results": {"load": (1, table)}}, "to_score")

    @dg.op
    def score(table: pa.Table, token) -> int:
        if (base / "FAIL").exists():
            raise RuntimeError("score failed on purpose")
        assert isinstance(token["results"]["load"][1], ArrowRef)
        return int(sum(table.column("v").to_pylist()))

    @dg.job(executor_def=dg.in_process_executor,
            resource_defs={"io_manager": ArrowRefIOManager(base_uri=str(base / "data"))})
    def reexec():
        table, token = load()
        score(table, token)

    return reexec


def test_reexecution_from_failure_loads_the_upstream_output(tmp_path, monkeypatch):
    monkeypatch.setenv("NOETL_TEST_ARROW_BASE", str(tmp_path))
    (tmp_path / "FAIL").touch()
    with dg.instance_for_test() as instance:
        first = dg.execute_job(dg.reconstructable(reexecution_job), instance=instance, raise_on_error=False)
        assert not first.success
        (tmp_path / "FAIL").unlink()
        options = dg.ReexecutionOptions.from_failure(first.run_id, instance)
        with dg.execute_job(dg.reconstructable(reexecution_job), instance=instance,
                            reexecution_options=options) as second:
            assert second.success
            started = {e.step_key for e in second.all_events if e.event_type_value == "STEP_START"}
            assert started == {"score"}  # load did NOT run again
            loaded = [e for e in second.all_events if e.event_type_value == "LOADED_INPUT"]
            assert {e.event_specific_data.upstream_step_key for e in loaded} == {"load"}
            assert second.output_for_node("score") == 6
    assert (tmp_path / "load_runs").read_text() == "x"
    assert len(files(tmp_path / "data", ".arrow")) == 1  # written once, by the first run


# ------------------------------------------------------------------------------- retention

def test_clean_intermediates_and_clean_run(tmp_path, instance):
    io = ArrowRefIOManager(base_uri=str(tmp_path), intermediate_retention_days=2)
    old, new, kept = (str(uuid.UUID(int=i)) for i in (1, 2, 3))
    for run_id in (old, new, kept):
        io.handle_output(dg.build_output_context(step_key="s", name="result", run_id=run_id), TABLE)
    io.handle_output(dg.build_output_context(asset_key=["product"]), TABLE)
    week_ago = time.time() - 7 * 86400
    for run_id in (old, kept):
        for path in (tmp_path / "runs" / run_id).rglob("*"):
            os.utime(path, (week_ago, week_ago))
        os.utime(tmp_path / "runs" / run_id, (week_ago, week_ago))

    # `kept` is a run the instance reports as still running
    @dg.op
    def noop():
        pass

    @dg.job
    def some_job():
        noop()

    instance.create_run_for_job(some_job, run_id=kept, status=dg.DagsterRunStatus.STARTED)
    assert io.clean_intermediates(instance=instance) == [old]  # default: 2 days
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == sorted([kept, new])
    assert io.clean_intermediates(older_than_days=0.5) == [kept]  # without the instance
    assert io.clean_run(new) is True and io.clean_run(new) is False
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    assert io.load_asset_ref("product").to_table().equals(TABLE)  # assets are never cleaned


def test_the_retention_job_applies_the_setting_and_is_scheduled(tmp_path, instance):
    io = ArrowRefIOManager(base_uri=str(tmp_path), intermediate_retention_days=3)
    old, recent = str(uuid.UUID(int=11)), str(uuid.UUID(int=12))
    for run_id in (old, recent):
        io.handle_output(dg.build_output_context(step_key="s", name="result", run_id=run_id), TABLE)
    io.handle_output(dg.build_output_context(asset_key=["product"]), TABLE)
    four_days_ago = time.time() - 4 * 86400
    for path in [tmp_path / "runs" / old, *(tmp_path / "runs" / old).rglob("*")]:
        os.utime(path, (four_days_ago, four_days_ago))
    defs = dg.Definitions.merge(load_playbook_definitions([], resources={"io_manager": io}),
                                retention_definitions())
    schedule = defs.resolve_schedule_def(f"{RETENTION_JOB}_daily")
    assert schedule.job_name == RETENTION_JOB and schedule.cron_schedule == "0 3 * * *"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    result = defs.resolve_job_def(RETENTION_JOB).execute_in_process(instance=instance)
    assert result.success and result.output_for_node("clean_intermediates") == [old]
    left = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert old not in left and recent in left  # (plus the retention run's own output)
    assert io.load_asset_ref("product").to_table().equals(TABLE)


# ----------------------------------------------------------------------- remote storage

def test_remote_filesystem_round_trip():
    register_filesystem("memio", pafs.PyFileSystem(pafs.FSSpecHandler(fsspec.filesystem("memory"))))
    try:
        io = ArrowRefIOManager(base_uri="memio://lake/noetl")
        seen: dict[str, Any] = {}

        @dg.op
        def produce():
            return {"t": TABLE, "n": 1}

        @dg.op
        def consume(value):
            seen["v"] = value

        @dg.job(resource_defs={"io_manager": io})
        def job():
            consume(produce())

        run = job.execute_in_process()
        ref = seen["v"]["t"]
        assert ref.uri == f"memio://lake/noetl/runs/{run.run_id}/produce/result/t.arrow"
        assert ref.to_table().equals(TABLE)
        out = dg.build_output_context(asset_key=["remote", "product"])
        io.handle_output(out, {"copy": ref})  # an intermediate ref is copied into the asset
        assert io.load_asset("remote/product")["copy"].uri == "memio://lake/noetl/remote/product/copy.parquet"
        assert io.clean_run(run.run_id)
        assert io.load_asset("remote/product")["copy"].to_table().equals(TABLE)
    finally:
        register_filesystem("memio", None)


def test_default_root_is_under_dagster_home(tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    assert ArrowRefIOManager().root == str(tmp_path / "noetl_data")
    monkeypatch.delenv("DAGSTER_HOME")
    monkeypatch.chdir(tmp_path)
    assert ArrowRefIOManager().root == str(tmp_path / ".noetl_data")
    assert ArrowRefIOManager(base_uri="s3://bucket/x/").root == "s3://bucket/x"


def test_iter_refs_finds_each_ref_once():
    a, b = ArrowRef("/a.parquet"), ArrowRef("/b.parquet")
    assert list(iter_refs({"x": [a, (b, a)], "y": {"z": a}})) == [a, b]
