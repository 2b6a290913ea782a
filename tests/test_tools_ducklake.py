"""``kind: ducklake``: DuckLake catalogs on a local data path, with a DuckDB file catalog and with
the tests' real PostgreSQL 15 as the metadata catalog (the extension is loaded from its PyPI wheel)."""

from __future__ import annotations

import json
import traceback
import uuid
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pytest

from noetl_dagster import PlaybookError, run_playbook
from noetl_dagster.playbook.loader import parse_text
from noetl_dagster.resources.credentials import CredentialsResource
from noetl_dagster.runtime.tools import ToolContext, ToolError, get_tool
from pg import PgServer, pg_server  # noqa: F401  (tests/pg.py; pg_server is a fixture)

WRONG_PASSWORD = "Lake-Wr0ng-Pw-77"


def ctx_for(scope: dict | None = None, credentials: dict | None = None) -> ToolContext:
    return ToolContext("lake", "exec-1", scope or {}, resources={
        "credentials": CredentialsResource(use_env=False, credentials=credentials or {})})


def run(config: dict, ctx: ToolContext | None = None) -> object:
    return get_tool("ducklake").run(config, ctx or ctx_for())


@pytest.fixture
def catalog_db(pg_server: PgServer) -> str:
    """A fresh Postgres schema for one DuckLake catalog (``metadata_schema``); its name."""
    import psycopg

    name = f"lake_{uuid.uuid4().hex[:10]}"
    yield name
    with psycopg.connect(pg_server.dsn(), autocommit=True) as con:
        con.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")


def test_duckdb_file_catalog_on_a_local_data_path(tmp_path: Path) -> None:
    lake = {"catalog_path": str(tmp_path / "meta.ducklake"), "catalog_name": "sales",
            "data_path": str(tmp_path / "files")}
    assert run({**lake, "command": "CREATE TABLE orders (id INTEGER, region VARCHAR, amount DOUBLE)"}) == \
        {"affected_rows": 0}
    evil = "eu'); DROP TABLE orders; --"
    out = run({**lake, "command": "INSERT INTO orders VALUES ($1, $2, $3), (2, 'us', 5.5)",
               "params": [1, evil, 10.0]})
    assert out == {"affected_rows": 2}
    # a second connection (a later step) sees the committed snapshot
    rows = run({**lake, "query": "SELECT id, region, amount FROM orders WHERE amount > $min ORDER BY id",
                "params": {"min": 1}})
    assert rows == {"columns": ["id", "region", "amount"],
                    "rows": [{"id": 1, "region": evil, "amount": 10.0}, {"id": 2, "region": "us", "amount": 5.5}],
                    "row_count": 2}
    snaps = run({**lake, "commands": ["SELECT 1;", "SELECT count(*) AS n FROM ducklake_snapshots('sales')"]})
    assert snaps["rows"][0]["n"] >= 3  # created schema, table, insert
    # a bulk insert lands as Parquet on the local data path (small ones may be inlined in the catalog)
    run({**lake, "command": "INSERT INTO orders SELECT i, 'bulk', i FROM range(10, 5010) t(i)"})
    assert list((tmp_path / "files").rglob("*.parquet"))
    assert run({**lake, "query": "SELECT count(*) AS n FROM orders"})["rows"] == [{"n": 5002}]
    table = run({**lake, "format": "arrow", "query": "SELECT * FROM orders ORDER BY id"})
    assert isinstance(table, pa.Table) and table.num_rows == 5002


def test_postgres_catalog_by_url_and_by_credential(pg_server: PgServer, catalog_db: str, tmp_path: Path) -> None:
    import psycopg

    data = str(tmp_path / "data")
    by_url = {"catalog_connection": pg_server.dsn(), "metadata_schema": catalog_db, "catalog_name": "lake",
              "data_path": data}
    run({**by_url, "command": "CREATE TABLE users (id INTEGER, name VARCHAR); "
                              "INSERT INTO users VALUES (1, 'Alice'), (2, 'Bob'); "
                              "CREATE TABLE bulk AS SELECT range AS i FROM range(5000)"})
    ctx = ctx_for(credentials={"lake_catalog": pg_server.fields()})
    out = run({"auth": "lake_catalog", "metadata_schema": catalog_db, "catalog_name": "lake",
               "data_path": data,
               "query": "SELECT name FROM users ORDER BY id"}, ctx)
    assert out["rows"] == [{"name": "Alice"}, {"name": "Bob"}]
    # the metadata really lives in Postgres: DuckLake's own tables in that database
    with psycopg.connect(pg_server.dsn()) as con:
        names = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables "
                                           "WHERE table_schema = %s", [catalog_db])}
    assert {"ducklake_snapshot", "ducklake_table"} <= names
    assert list(Path(data).rglob("*.parquet"))  # Parquet files on the local data path


def test_wrong_catalog_password_is_not_shown(pg_server: PgServer, catalog_db: str, tmp_path: Path) -> None:
    with pytest.raises(ToolError) as info:
        run({"catalog_connection": pg_server.dsn(password=WRONG_PASSWORD), "metadata_schema": catalog_db,
             "data_path": str(tmp_path), "query": "SELECT 1"})
    text = "".join(traceback.format_exception_only(info.value)) + repr(info.value)
    assert info.value.__cause__ is None and info.value.__context__ is None
    assert WRONG_PASSWORD not in text and pg_server.password not in text
    assert "cannot attach the catalog (catalog_connection)" in text and "password authentication failed" in text
    ctx = ctx_for(credentials={"lake_catalog": {**pg_server.fields(), "db_password": WRONG_PASSWORD}})
    with pytest.raises(ToolError) as info:
        run({"catalog_auth": "lake_catalog", "data_path": str(tmp_path), "query": "SELECT 1"}, ctx)
    assert WRONG_PASSWORD not in str(info.value) and "credential 'lake_catalog'" in str(info.value)


def test_catalog_name_must_be_an_identifier(tmp_path: Path) -> None:
    with pytest.raises(ToolError, match="is not an identifier"):
        run({"catalog_path": str(tmp_path / "m.ducklake"), "catalog_name": "{{ n }}", "query": "SELECT 1"},
            ctx_for({"n": "x; DROP"}))


#: NoETL's e2e ducklake_test, shortened: Postgres metastore, a parallel loop of inserts
PLAYBOOK = """
apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: ducklake_test, path: tests/ducklake_test}
workload:
  catalog_auth: lake_catalog
  catalog_name: test_catalog
  schema: ""
  data_path: ""
  user_ids: [1, 2, 3, 4, 5]
workflow:
  - step: start
    tool: {kind: python, code: 'result = {"status": "initialized"}'}
    next: create_users_table
  - step: create_users_table
    tool:
      kind: ducklake
      catalog_auth: "{{ catalog_auth }}"
      metadata_schema: "{{ schema }}"
      catalog_name: "{{ catalog_name }}"
      data_path: "{{ data_path }}"
      command: |
        CREATE TABLE IF NOT EXISTS users (id INTEGER, name VARCHAR, email VARCHAR, created_at TIMESTAMP);
        INSERT INTO users VALUES (1, 'Alice', 'alice@example.com', NOW()), (2, 'Bob', 'bob@example.com', NOW());
    next: loop_insert_events
  - step: loop_insert_events
    loop: {in: "{{ user_ids }}", iterator: user_id, spec: {mode: parallel}}
    tool:
      kind: ducklake
      catalog_auth: "{{ catalog_auth }}"
      metadata_schema: "{{ schema }}"
      catalog_name: "{{ catalog_name }}"
      data_path: "{{ data_path }}"
      commands:
        - CREATE TABLE IF NOT EXISTS user_events (user_id INTEGER, event_type VARCHAR, event_time TIMESTAMP);
        - INSERT INTO user_events VALUES ($uid, 'test_event', NOW());
      params: {uid: "{{ user_id }}"}
    next: count_events
  - step: count_events
    tool:
      kind: ducklake
      catalog_auth: "{{ catalog_auth }}"
      metadata_schema: "{{ schema }}"
      catalog_name: "{{ catalog_name }}"
      data_path: "{{ data_path }}"
      command: SELECT COUNT(*) AS event_count FROM user_events
    next: end
  - step: end
    tool:
      kind: python
      input: {n: "{{ count_events.rows[0].event_count }}"}
      code: 'result = {"status": "completed", "events": n}'
"""


def test_upstream_style_playbook(pg_server: PgServer, catalog_db: str, tmp_path: Path,
                                 instance: dg.DagsterInstance) -> None:
    creds = CredentialsResource(use_env=False, credentials={
        "lake_catalog": pg_server.fields()})
    report = run_playbook(parse_text(PLAYBOOK), {"data_path": str(tmp_path / "lake"), "schema": catalog_db},
                          instance=instance,
                          resources={"noetl_credentials": creds})
    assert report.status == "success", {k: s.error for k, s in report.steps.items() if s.error}
    assert report.steps["end"].result == {"status": "completed", "events": 5}
    events = [repr(e) for e in instance.all_logs(report.run_id)]
    assert events and not any(pg_server.password in e for e in events)
    assert pg_server.password not in json.dumps({k: s.result for k, s in report.steps.items()}, default=str)


def test_validation() -> None:
    text = """apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: bad_lake}
workflow:
  - step: start
    tool:
      kind: ducklake
      catalog_name: "my-lake"
      command: SELECT 1
"""
    with pytest.raises(PlaybookError) as info:
        parse_text(text, "bad.yaml")
    found = {(i.field, i.message.split(":")[0]) for i in info.value.issues}
    assert ("tool.catalog_connection", "a ducklake tool needs its metadata catalog") in found
    assert any(f == "tool.catalog_name" for f, _ in found)
