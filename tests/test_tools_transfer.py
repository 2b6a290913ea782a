"""``kind: transfer`` against a real PostgreSQL 15 (tests/pg.py), DuckDB files and a local HTTP server."""

from __future__ import annotations

import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import dagster as dg
import duckdb
import pyarrow as pa
import pytest

from noetl_dagster import run_playbook
from noetl_dagster.playbook.loader import parse_text
from noetl_dagster.resources.credentials import CredentialsResource
from noetl_dagster.playbook.kinds import check_tool_config
from noetl_dagster.runtime.tools import ToolContext, ToolError, get_tool
from noetl_dagster.runtime.tools.transfer import rechunk
from pg import PgServer, pg_server  # noqa: F401  (tests/pg.py; pg_server is a fixture)


def ctx_for(server: PgServer | None = None, scope: dict | None = None) -> ToolContext:
    credentials = {}
    if server is not None:
        credentials["pg"] = {"type": "postgres", **server.fields()}
    return ToolContext("move", "exec-1", scope or {},
                       resources={"credentials": CredentialsResource(credentials=credentials, use_env=False)})


def transfer(config: dict, ctx: ToolContext) -> dict:
    return get_tool("transfer").run(config, ctx)


def pg(ctx: ToolContext, query: str) -> dict:
    return get_tool("postgres").run({"auth": "pg", "query": query}, ctx)


@pytest.fixture
def table(pg_server: PgServer) -> Iterator[str]:
    name = f"tr_{uuid.uuid4().hex[:10]}"
    yield name
    pg(ctx_for(pg_server), f"DROP TABLE IF EXISTS {name}")


@pytest.fixture
def source_db(tmp_path: Path) -> str:
    path = str(tmp_path / "src.duckdb")
    with duckdb.connect(path) as con:
        con.execute("CREATE TABLE items AS SELECT i AS id, 'item ' || i AS name, i * 1.5 AS price "
                    "FROM range(1, 6) t(i)")
    return path


@pytest.fixture
def http_rows() -> Iterator[str]:
    payload = {"meta": {"count": 3}, "data": {"items": [
        {"id": 1, "name": "a", "tags": ["x"], "score": 1.5},
        {"id": 2, "name": "b", "tags": [], "score": None},
        {"id": 3, "name": "c", "tags": ["y", "z"], "score": 3.0},
    ]}}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            if self.path.startswith("/rows"):
                body = json.dumps(payload).encode()
                self.send_response(200)
            else:
                body = b'{"error": "nope"}'
                self.send_response(404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


# ----------------------------------------------------------------------------------- postgres -> duckdb
def test_postgres_to_duckdb(pg_server: PgServer, tmp_path: Path, table: str) -> None:
    ctx = ctx_for(pg_server)
    pg(ctx, f"CREATE TABLE {table} AS SELECT g AS id, 'n' || g AS name, g * 2.5::numeric AS amount, "
            f"now() AS ts FROM generate_series(1, 7) g")
    db = str(tmp_path / "out.duckdb")
    out = transfer({"chunk_size": 3,
                    "source": {"type": "postgres", "auth": "pg",
                               "query": f"SELECT id, name, amount, ts FROM {table} WHERE id > $1 ORDER BY id",
                               "params": [0]},
                    "target": {"type": "duckdb", "db_path": db, "table": "copied"}}, ctx)
    assert out == {"rows_transferred": 7, "batches": 3, "source_type": "postgres",
                   "target_type": "duckdb", "table": "copied", "mode": "append"}
    with duckdb.connect(db) as con:
        rows = con.execute("SELECT id, name, amount FROM copied ORDER BY id").fetchall()
    assert rows[0] == (1, "n1", "2.5") and rows[-1][0] == 7 and len(rows) == 7


def test_postgres_source_with_inet_falls_back(pg_server: PgServer, tmp_path: Path) -> None:
    db = str(tmp_path / "out.duckdb")
    out = transfer({"source": {"type": "postgres", "connection_string": pg_server.dsn(),
                               "query": "SELECT 1 AS id, '10.0.0.1'::inet AS ip"},
                    "target": {"type": "duckdb", "db_path": db, "table": "ips"}}, ctx_for())
    assert out["rows_transferred"] == 1
    with duckdb.connect(db) as con:
        assert con.execute("SELECT id, ip FROM ips").fetchall() == [(1, "10.0.0.1")]


# ----------------------------------------------------------------------------------- duckdb -> postgres
def test_duckdb_to_postgres_append_replace_upsert(pg_server: PgServer, source_db: str, table: str) -> None:
    ctx = ctx_for(pg_server, scope={"workload": {"db": source_db, "table": table}})
    source = {"type": "duckdb", "db_path": "{{ workload.db }}", "query": "SELECT * FROM items ORDER BY id"}

    def count() -> int:
        return pg(ctx, f"SELECT count(*) AS n FROM {table}")["rows"][0]["n"]

    out = transfer({"source": source, "target": {"type": "postgres", "auth": "pg", "table": "{{ workload.table }}"}},
                   ctx)
    assert out["rows_transferred"] == 5 and out["batches"] == 1 and out["table"] == table
    assert count() == 5
    transfer({"source": source, "target": {"type": "postgres", "auth": "pg", "table": table, "mode": "append"}}, ctx)
    assert count() == 10  # append into the existing table

    out = transfer({"source": source, "target": {"type": "postgres", "auth": "pg", "table": table, "mode": "replace"}},
                   ctx)
    assert out["mode"] == "replace" and count() == 5
    transfer({"source": source, "target": {"type": "postgres", "auth": "pg", "table": table, "mode": "replace"}}, ctx)
    assert count() == 5

    # upsert into a new table (the transfer gives it a primary key), run twice: no duplicates
    upsert_table = table + "_u"
    try:
        target = {"type": "postgres", "auth": "pg", "table": upsert_table, "mode": "upsert", "key": ["id"]}
        for _ in range(2):
            out = transfer({"source": source, "target": target, "chunk_size": 2}, ctx)
            assert out["rows_transferred"] == 5 and out["batches"] == 3
        rows = pg(ctx, f"SELECT id, name FROM {upsert_table} ORDER BY id")["rows"]
        assert [r["id"] for r in rows] == [1, 2, 3, 4, 5]
        # changed source rows update the existing ones
        changed = {**source, "query": "SELECT id, upper(name) AS name, price FROM items WHERE id <= 2"}
        transfer({"source": changed, "target": target}, ctx)
        rows = pg(ctx, f"SELECT id, name FROM {upsert_table} ORDER BY id")["rows"]
        assert rows[:3] == [{"id": 1, "name": "ITEM 1"}, {"id": 2, "name": "ITEM 2"}, {"id": 3, "name": "item 3"}]
        assert len(rows) == 5
    finally:
        pg(ctx, f"DROP TABLE IF EXISTS {upsert_table}")


def test_upsert_into_existing_table_casts_types(pg_server: PgServer, source_db: str, table: str) -> None:
    ctx = ctx_for(pg_server)
    pg(ctx, f"CREATE TABLE {table} (id int4 PRIMARY KEY, name varchar(20), price numeric(8, 2), extra text "
            "DEFAULT 'kept')")
    source = {"type": "duckdb", "db_path": source_db, "query": "SELECT id, name, price FROM items"}
    target = {"type": "postgres", "auth": "pg", "table": table, "mode": "upsert", "key": "id"}
    for _ in range(2):
        assert transfer({"source": source, "target": target}, ctx)["rows_transferred"] == 5
    rows = pg(ctx, f"SELECT id, price, extra FROM {table} ORDER BY id")["rows"]
    assert rows[0] == {"id": 1, "price": "1.50", "extra": "kept"} and len(rows) == 5


def test_duckdb_to_duckdb_upsert_and_replace(source_db: str, tmp_path: Path) -> None:
    db = str(tmp_path / "warehouse.duckdb")
    source = {"type": "duckdb", "db_path": source_db, "query": "SELECT * FROM items"}
    target = {"type": "duckdb", "db_path": db, "table": "mart.items", "mode": "upsert", "key": ["id"]}
    for _ in range(2):
        assert transfer({"source": source, "target": target, "chunk_size": 2}, ctx_for())["batches"] == 3
    with duckdb.connect(db) as con:
        assert con.execute("SELECT count(*), count(DISTINCT id) FROM mart.items").fetchone() == (5, 5)
        con.execute("CREATE TABLE plain (id BIGINT, name VARCHAR, price DECIMAL(10, 2))")  # no key
    target = {"type": "duckdb", "db_path": db, "table": "plain", "mode": "upsert", "key": "id"}
    for _ in range(2):
        transfer({"source": source, "target": target}, ctx_for())
    transfer({"source": {**source, "query": "SELECT 1 AS id, 'one' AS name"}, "target": target}, ctx_for())
    with duckdb.connect(db) as con:
        assert con.execute("SELECT count(*) FROM plain").fetchone() == (5,)
        assert con.execute("SELECT name, price FROM plain WHERE id = 1").fetchone() == ("one", None)
    target = {"type": "duckdb", "db_path": db, "table": "plain", "mode": "replace"}
    transfer({"source": {**source, "query": "SELECT 9 AS k"}, "target": target}, ctx_for())
    with duckdb.connect(db) as con:
        assert con.execute("SELECT * FROM plain").fetchall() == [(9,)]


# ----------------------------------------------------------------------------------- http -> postgres
def test_http_to_postgres(pg_server: PgServer, http_rows: str, table: str) -> None:
    ctx = ctx_for(pg_server, scope={"workload": {"base": http_rows}})
    config = {"source": {"type": "http", "url": "{{ workload.base }}/rows", "method": "GET",
                         "headers": {"Accept": "application/json"}, "params": {"page": 1},
                         "data_path": "data.items"},
              "target": {"type": "postgres", "auth": "pg", "table": table, "mode": "upsert", "key": ["id"]}}
    for _ in range(2):
        out = transfer(config, ctx)
        assert out == {"rows_transferred": 3, "batches": 1, "source_type": "http", "target_type": "postgres",
                       "table": table, "mode": "upsert"}
    rows = pg(ctx, f"SELECT id, name, tags, score FROM {table} ORDER BY id")["rows"]
    assert rows == [{"id": 1, "name": "a", "tags": '["x"]', "score": 1.5},
                    {"id": 2, "name": "b", "tags": "[]", "score": None},
                    {"id": 3, "name": "c", "tags": '["y", "z"]', "score": 3.0}]


def test_http_errors(http_rows: str, tmp_path: Path) -> None:
    target = {"type": "duckdb", "db_path": str(tmp_path / "x.duckdb"), "table": "t"}
    with pytest.raises(ToolError, match="answered 404"):
        transfer({"source": {"type": "http", "url": f"{http_rows}/missing"}, "target": target}, ctx_for())
    with pytest.raises(ToolError, match="data_path.*'nope'"):
        transfer({"source": {"type": "http", "url": f"{http_rows}/rows", "data_path": "data.nope"},
                  "target": target}, ctx_for())
    with pytest.raises(ToolError, match="list of objects"):
        transfer({"source": {"type": "http", "url": f"{http_rows}/rows", "data_path": "meta.count"},
                  "target": target}, ctx_for())


# ----------------------------------------------------------------------------------- chunking
def test_chunking_two_over_five_rows(source_db: str, tmp_path: Path) -> None:
    out = transfer({"chunk_size": 2, "source": {"type": "duckdb", "db_path": source_db, "query": "SELECT * FROM items"},
                    "target": {"type": "duckdb", "db_path": str(tmp_path / "c.duckdb"), "table": "c"}}, ctx_for())
    assert out["rows_transferred"] == 5 and out["batches"] == 3


def test_rechunk_across_input_batches() -> None:
    batches = [pa.record_batch({"a": list(range(n))}) for n in (1, 4, 0, 3)]
    sizes = [b.num_rows for b in rechunk(batches, 3)]
    assert sizes == [3, 3, 2]


def test_empty_source_creates_table(pg_server: PgServer, source_db: str, table: str) -> None:
    ctx = ctx_for(pg_server)
    out = transfer({"source": {"type": "duckdb", "db_path": source_db, "query": "SELECT * FROM items WHERE id < 0"},
                    "target": {"type": "postgres", "auth": "pg", "table": table}}, ctx)
    assert out["rows_transferred"] == 0 and out["batches"] == 0
    assert pg(ctx, f"SELECT count(*) AS n FROM {table}")["rows"] == [{"n": 0}]


# ----------------------------------------------------------------------------------- errors
def test_config_errors(tmp_path: Path) -> None:
    target = {"type": "duckdb", "db_path": str(tmp_path / "e.duckdb"), "table": "t"}
    source = {"type": "duckdb", "query": "SELECT 1 AS id"}
    with pytest.raises(ToolError, match="unknown source type 'oracle'"):
        transfer({"source": {"type": "oracle"}, "target": target}, ctx_for())
    with pytest.raises(ToolError, match="unknown target type 'mysql'"):
        transfer({"source": source, "target": {**target, "type": "mysql"}}, ctx_for())
    with pytest.raises(ToolError, match="target needs `table`"):
        transfer({"source": source, "target": {"type": "duckdb"}}, ctx_for())
    with pytest.raises(ToolError, match="upsert needs"):
        transfer({"source": source, "target": {**target, "mode": "upsert"}}, ctx_for())
    with pytest.raises(ToolError, match="unknown mode 'merge'"):
        transfer({"source": source, "target": {**target, "mode": "merge"}}, ctx_for())
    with pytest.raises(ToolError, match="source duckdb: .*SELEC"):
        transfer({"source": {**source, "query": "SELEC 1"}, "target": target}, ctx_for())
    problems = check_tool_config("transfer", {"source": {"type": "ftp"},
                                              "target": {"type": "duckdb", "mode": "upsert"}})
    assert {p[0] for p in problems} == {"source.type", "target.table", "target.key"}


def test_sql_errors_have_server_message_not_password(pg_server: PgServer, source_db: str, table: str) -> None:
    ctx = ctx_for(pg_server)
    with pytest.raises(ToolError) as info:
        transfer({"source": {"type": "postgres", "connection_string": pg_server.dsn(), "query": "SELEC 1"},
                  "target": {"type": "duckdb", "table": "t"}}, ctx)
    assert 'syntax error at or near "SELEC"' in str(info.value) and pg_server.password not in str(info.value)
    with pytest.raises(ToolError) as info:
        transfer({"source": {"type": "postgres", "connection_string": pg_server.dsn(), "query": "SELECT * FROM no_such"},
                  "target": {"type": "duckdb", "table": "t"}}, ctx)
    assert 'relation "no_such" does not exist' in str(info.value) and pg_server.password not in str(info.value)
    # upsert into an existing table without a unique key: the server's message, nothing written
    pg(ctx, f"CREATE TABLE {table} (id bigint, name text, price double precision)")
    with pytest.raises(ToolError, match="no unique or exclusion constraint") as info:
        transfer({"source": {"type": "duckdb", "db_path": source_db, "query": "SELECT * FROM items"},
                  "target": {"type": "postgres", "connection_string": pg_server.dsn(), "table": table,
                             "mode": "upsert", "key": ["id"]}}, ctx)
    assert pg_server.password not in str(info.value)
    assert pg(ctx, f"SELECT count(*) AS n FROM {table}")["rows"] == [{"n": 0}]
    with pytest.raises(ToolError) as info:
        transfer({"source": {"type": "duckdb", "db_path": source_db, "query": "SELECT * FROM items"},
                  "target": {"type": "postgres", "connection_string": pg_server.dsn(password="Wr0ng-pw-x"),
                             "table": table}}, ctx)
    assert "password authentication failed" in str(info.value) and "Wr0ng-pw-x" not in str(info.value)


# ----------------------------------------------------------------------------------- playbook
PLAYBOOK = """
apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: transfer_e2e, path: tests/transfer_e2e}
workload:
  table: ""
  db: ""
  base: ""
workflow:
  - step: start
    tool: {kind: noop}
    next: load
  - step: load
    tool:
      kind: transfer
      chunk_size: 2
      source:
        type: http
        url: "{{ workload.base }}/rows"
        data_path: data.items
      target:
        type: postgres
        auth: pg_main
        table: "{{ workload.table }}"
        mode: upsert
        key: [id]
    next: export
  - step: export
    tool:
      kind: transfer
      source:
        type: postgres
        auth: pg_main
        query: SELECT id, name FROM {{ workload.table | sql_identifier }} ORDER BY id
      target:
        type: duckdb
        db_path: "{{ workload.db }}"
        table: exported
        mode: replace
    next: check
  - step: check
    tool:
      kind: duckdb
      db_path: "{{ workload.db }}"
      query: SELECT count(*) AS n, max(name) AS last FROM exported
    next: end
  - step: end
    tool: {kind: noop}
"""


def test_playbook_end_to_end(pg_server: PgServer, http_rows: str, tmp_path: Path, table: str) -> None:
    creds = CredentialsResource(credentials={"pg_main": pg_server.fields()}, use_env=False)
    report = run_playbook(parse_text(PLAYBOOK), {"table": table, "db": str(tmp_path / "e2e.duckdb"),
                                                 "base": http_rows},
                          instance=dg.DagsterInstance.ephemeral(), resources={"noetl_credentials": creds})
    assert report.status == "success", report
    assert report.steps["load"].result == {"rows_transferred": 3, "batches": 2, "source_type": "http",
                                           "target_type": "postgres", "table": table, "mode": "upsert"}
    assert report.steps["export"].result["rows_transferred"] == 3
    assert report.steps["check"].result["rows"] == [{"n": 3, "last": "c"}]
