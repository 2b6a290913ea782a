"""ArrowRef: serialisation, the ways to read a ref, DuckDB expressions, remote filesystems."""

from __future__ import annotations

import json
import pickle

import duckdb
import fsspec
import pyarrow as pa
import pyarrow.fs as pafs
import pytest

from noetl_dagster.io import arrow_ref
from noetl_dagster.io.arrow_ref import ArrowRef, json_default, register_filesystem, write_arrow
from noetl_dagster.core.templates import render_value

TABLE = pa.table({"id": pa.array([1, 2, 3], pa.int64()), "name": ["a", "b", "c"],
                  "score": [0.5, None, 1.5]})


@pytest.fixture(params=["parquet", "arrow"])
def ref(request, tmp_path) -> ArrowRef:
    ext = ".parquet" if request.param == "parquet" else ".arrow"
    return write_arrow(TABLE, str(tmp_path / f"t{ext}"), format=request.param)


def test_ref_describes_the_file(ref):
    assert ref.num_rows == 3
    assert ref.schema == (("id", "int64"), ("name", "string"), ("score", "double"))
    assert ref.columns == ["id", "name", "score"]
    assert ref.num_bytes > 0 and ref.exists() and ref.is_local
    assert ref.read_schema() == TABLE.schema
    assert "3 rows x 3 cols" in repr(ref)


def test_ref_is_frozen_hashable_picklable_and_json(ref):
    with pytest.raises(Exception):
        ref.uri = "x"  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(ref)) == ref
    assert ArrowRef.from_dict(json.loads(json.dumps(ref.to_dict()))) == ref
    assert ArrowRef.from_json(ref.to_json()) == ref
    assert {ref: 1}[ArrowRef.from_dict(ref.to_dict())] == 1
    assert json.loads(json.dumps({"t": ref}, default=json_default))["t"]["uri"] == ref.uri
    assert ArrowRef("/x.arrow", format="ipc").format == "arrow"
    with pytest.raises(ValueError, match="unknown Arrow storage format"):
        ArrowRef("/x", format="csv")


def test_ref_reads_in_every_form(ref):
    assert ref.to_table().equals(TABLE)
    assert ref.to_table(columns=["name"]).column_names == ["name"]
    reader = ref.to_reader(batch_size=2)
    assert isinstance(reader, pa.RecordBatchReader)
    assert reader.read_all().equals(TABLE)
    assert sum(b.num_rows for b in ref.to_batches(columns=["id"], batch_size=1)) == 3
    assert ref.to_dataset().to_table().equals(TABLE)
    assert pa.table(ref).equals(TABLE)  # Arrow PyCapsule stream
    assert ref.to_duckdb().aggregate("sum(id)").fetchall() == [(6,)]


def test_ref_to_pandas(ref):
    pytest.importorskip("pandas")
    assert ref.to_pandas()["id"].tolist() == [1, 2, 3]


def test_ref_to_polars(ref):
    pl = pytest.importorskip("polars")
    df = ref.to_polars()
    assert isinstance(df, pl.DataFrame) and df["id"].to_list() == [1, 2, 3]


def test_str_is_a_duckdb_table_expression_usable_in_templates(tmp_path):
    ref = write_arrow(TABLE, str(tmp_path / "it's here" / "t.parquet"))  # quote in the path
    assert str(ref) == ref.duckdb_sql() == "read_parquet('" + ref.uri.replace("'", "''") + "')"
    sql = render_value("SELECT sum(id) AS s FROM {{ load.table }} WHERE score IS NOT NULL",
                       {"load": {"table": ref}})
    assert duckdb.sql(sql).fetchall() == [(4,)]
    # a lone expression keeps the ref itself
    assert render_value("{{ load.table }}", {"load": {"table": ref}}) is ref
    assert render_value("{{ load.table.num_rows }}", {"load": {"table": ref}}) == 3


def test_ipc_ref_names_read_arrow(tmp_path):
    ref = write_arrow(TABLE, str(tmp_path / "t.arrow"), format="ipc")
    assert str(ref).startswith("read_arrow('")


def test_write_streams_a_reader_and_replaces_atomically(tmp_path, monkeypatch):
    monkeypatch.setattr(arrow_ref, "PARQUET_ROW_GROUP_ROWS", 1000)
    batches = [pa.record_batch({"x": pa.array(range(i * 500, (i + 1) * 500), pa.int64())}) for i in range(6)]
    target = str(tmp_path / "r.parquet")
    ref = write_arrow(pa.RecordBatchReader.from_batches(batches[0].schema, iter(batches)), target)
    import pyarrow.parquet as pq

    assert ref.num_rows == 3000 and pq.ParquetFile(target).num_row_groups == 3
    old = ref.to_table()
    ref2 = write_arrow(pa.table({"x": [1]}), target)
    assert ref2.num_rows == 1 and old.num_rows == 3000  # the old mapping still reads old data
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.parquet"]  # no temp files left


def test_registered_filesystem_round_trip():
    handler = pafs.PyFileSystem(pafs.FSSpecHandler(fsspec.filesystem("memory")))
    register_filesystem("memtest", handler)
    try:
        for fmt in ("parquet", "arrow"):
            ref = write_arrow(TABLE, f"memtest://bucket/x/t.{fmt}", format=fmt)
            assert ref.uri == f"memtest://bucket/x/t.{fmt}" and not ref.is_local and ref.path is None
            assert ref.to_table().equals(TABLE)
            assert ref.to_reader().read_all().equals(TABLE)
            assert ref.read_schema() == TABLE.schema
    finally:
        register_filesystem("memtest", None)

