"""``kind: duckdb``: bound params, Arrow tables from earlier steps, files."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pyarrow as pa
import pytest

from noetl_dagster import run_playbook
from noetl_dagster.playbook.loader import parse_text
from noetl_dagster.playbook.kinds import check_tool_config
from noetl_dagster.runtime.tools import ToolContext, ToolError, get_tool


def run(config: dict, scope: dict | None = None) -> dict:
    return get_tool("duckdb").run(config, ToolContext("q", "exec-1", scope or {}))


def test_list_and_named_params_are_bound() -> None:
    out = run({"query": "SELECT ?::INT + 1 AS n, ? AS s", "params": [41, "hi"]})
    assert out == {"columns": ["n", "s"], "rows": [{"n": 42, "s": "hi"}], "row_count": 1}
    out = run({"query": "SELECT $a * 2 AS v, $b AS w", "params": {"a": 21, "b": "{{ workload.w }}"}},
              {"workload": {"w": "x"}})
    assert out["rows"] == [{"v": 42, "w": "x"}]


def test_param_values_are_not_sql() -> None:
    evil = "'); DROP TABLE t; --"
    out = run({"query": "SELECT ? AS s", "params": [evil]})
    assert out["rows"] == [{"s": evil}]


def test_dml_gives_affected_rows(tmp_path: Path) -> None:
    db = str(tmp_path / "w.duckdb")
    assert run({"db_path": db, "query": "CREATE TABLE t (i INT)"}) == {"affected_rows": 0}
    assert run({"db_path": db, "query": "INSERT INTO t SELECT * FROM range(5)"}) == {"affected_rows": 5}
    assert run({"db_path": db, "query": "SELECT count(*) AS n FROM t", "as_objects": False})["rows"] == [[5]]


def test_query_an_arrow_table_from_scope() -> None:
    table = pa.table({"region": ["eu", "us", "eu"], "amount": [10, 20, 5]})
    # named directly (a step whose result is a table) ...
    out = run({"query": "SELECT region, sum(amount) AS total FROM load GROUP BY region ORDER BY region"},
              {"load": table})
    assert out["rows"] == [{"region": "eu", "total": 15}, {"region": "us", "total": 20}]
    # ... or registered through `tables:` from a nested value, with params
    out = run({"tables": {"o": "{{ load.orders }}"}, "query": "SELECT count(*) AS n FROM o WHERE amount > $min",
               "params": {"min": 6}}, {"load": {"orders": table}})
    assert out["rows"] == [{"n": 2}]


def test_tables_from_rows_and_sql_results() -> None:
    pg_like = {"columns": ["id", "v"], "rows": [{"id": 1, "v": "a"}, {"id": 2, "v": "b"}], "row_count": 2}
    lists = {"columns": ["id", "v"], "rows": [[3, "c"]], "row_count": 1}
    out = run({"tables": {"a": "{{ pg }}", "b": "{{ lst }}", "c": "{{ plain }}"},
               "query": "SELECT id, v FROM a UNION ALL SELECT id, v FROM b UNION ALL SELECT id, v FROM c ORDER BY id"},
              {"pg": pg_like, "lst": lists, "plain": [{"id": 4, "v": "d"}]})
    assert [r["id"] for r in out["rows"]] == [1, 2, 3, 4]


def test_bad_table_and_sql_errors() -> None:
    with pytest.raises(ToolError, match="table 'x' must be a pyarrow Table"):
        run({"tables": {"x": "{{ n }}"}, "query": "SELECT 1"}, {"n": 5})
    with pytest.raises(ToolError, match="DuckDB: .*syntax error"):
        run({"query": "SELEC 1"})
    assert check_tool_config("duckdb", {"query": "SELECT 1", "tables": {"bad name": 1}})[0][0] == "tables"


def test_playbook_python_arrow_table_into_duckdb() -> None:
    playbook = parse_text("""
apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: duck_arrow, path: tests/duck_arrow}
workload: {min_amount: 6}
workflow:
  - step: start
    tool: {kind: noop}
    next: load
  - step: load
    tool:
      kind: python
      code: |
        import pyarrow as pa
        result = pa.table({"region": ["eu", "us", "eu", "us"], "amount": [10, 20, 5, 1]})
    next: totals
  - step: totals
    tool:
      kind: duckdb
      query: >
        SELECT region, sum(amount)::INT AS total FROM load
        WHERE amount >= $1 GROUP BY region ORDER BY region
      params: ["{{ workload.min_amount }}"]
    next: end
  - step: end
    tool: {kind: python, input: {rows: "{{ totals.rows }}"}, code: "result = {r['region']: r['total'] for r in rows}"}
""")
    report = run_playbook(playbook, instance=dg.DagsterInstance.ephemeral())
    assert report.status == "success", report
    assert report.steps["end"].result == {"eu": 10, "us": 20}


def test_an_arrow_ref_is_queried_by_reference(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from noetl_dagster.io.arrow_ref import ArrowRef
    from noetl_dagster.runtime.tools import ToolContext
    from noetl_dagster.runtime.tools.duckdb import DuckDBTool

    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"x": [1, 2, 3]}), path)
    ref = ArrowRef(uri=str(path), format="parquet", schema=(("x", "int64"),), num_rows=3,
                   num_bytes=path.stat().st_size)
    ctx = ToolContext("s", "r", {"t": ref})
    assert DuckDBTool().run({"query": "SELECT sum(x) AS s FROM t"}, ctx)["rows"] == [{"s": 6}]
    assert DuckDBTool().run({"query": "SELECT max(x) AS m FROM {{ t }}"}, ctx)["rows"] == [{"m": 3}]
