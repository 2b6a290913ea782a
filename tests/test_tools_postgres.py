"""``kind: postgres`` against a real PostgreSQL 15 started by the tests (tests/pg.py)."""

from __future__ import annotations

import json
import traceback
import uuid

import dagster as dg
import pyarrow as pa
import pytest

from noetl_dagster import run_playbook
from noetl_dagster.playbook.loader import parse_text
from noetl_dagster.errors import CredentialNotFound
from noetl_dagster.resources.credentials import CredentialsResource
from noetl_dagster.playbook.kinds import check_tool_config
from noetl_dagster.runtime.tools import ToolContext, ToolError, get_tool
from noetl_dagster.runtime.tools.postgres import (
    PgConnection,
    connection_from_config,
    query_arrow,
)
from noetl_dagster.core.binding import split_statements
from pg import PgServer, free_port, pg_server  # noqa: F401  (tests/pg.py; pg_server is a fixture)

WRONG_PASSWORD = "Wr0ng-Pa55word!x"


def ctx_for(server: PgServer | None = None, scope: dict | None = None, **extra: dict) -> ToolContext:
    credentials = dict(extra)
    if server is not None:
        credentials.setdefault("pg", {"type": "postgres", **server.fields()})
    return ToolContext("sql", "exec-1", scope or {},
                       resources={"credentials": CredentialsResource(credentials=credentials, use_env=False)})


def run(config: dict, ctx: ToolContext) -> dict:
    return get_tool("postgres").run(config, ctx)


@pytest.fixture
def table(pg_server: PgServer) -> str:
    """A fresh table name, dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:10]}"
    yield name
    run({"auth": "pg", "query": f"DROP TABLE IF EXISTS {name}"}, ctx_for(pg_server))


# ----------------------------------------------------------------------------------- queries
def test_select_with_dollar_params(pg_server: PgServer) -> None:
    out = run({"auth": "pg", "query": "SELECT $1::int + 1 AS n, $2::text AS s", "params": [41, "hi"]},
              ctx_for(pg_server))
    assert out == {"columns": ["n", "s"], "rows": [{"n": 42, "s": "hi"}], "row_count": 1}


def test_rows_as_lists(pg_server: PgServer) -> None:
    out = run({"auth": "pg", "command": "SELECT 1 AS a, 'x' AS b UNION ALL SELECT 2, 'y' ORDER BY a",
               "as_objects": False}, ctx_for(pg_server))
    assert out["rows"] == [[1, "x"], [2, "y"]] and out["columns"] == ["a", "b"]


def test_percent_and_named_params(pg_server: PgServer) -> None:
    ctx = ctx_for(pg_server)
    assert run({"auth": "pg", "query": "SELECT %s::int * 2 AS v", "params": [21]}, ctx)["rows"] == [{"v": 42}]
    out = run({"auth": "pg", "query": "SELECT %(a)s::text || %(b)s::text AS v", "params": {"a": "x", "b": "y"}}, ctx)
    assert out["rows"] == [{"v": "xy"}]


def test_params_from_templates_are_bound_not_formatted(pg_server: PgServer, table: str) -> None:
    evil = "x'); DROP TABLE " + table + "; --"
    ctx = ctx_for(pg_server, scope={"workload": {"name": evil, "n": 7}, "tbl": table})
    run({"auth": "pg", "query": "CREATE TABLE {{ tbl | sql_identifier }} (id int, name text)"}, ctx)
    out = run({"auth": "pg", "query": "INSERT INTO {{ tbl | sql_identifier }} VALUES ($1, $2)",
               "params": ["{{ workload.n }}", "{{ workload.name }}"]}, ctx)
    assert out == {"affected_rows": 1}
    rows = run({"auth": "pg", "query": "SELECT id, name FROM {{ tbl | sql_identifier }}"}, ctx)["rows"]
    assert rows == [{"id": 7, "name": evil}]  # stored literally; the table is still there


def test_script_returns_last_statement_rows(pg_server: PgServer, table: str) -> None:
    out = run({"auth": "pg", "query": f"""
        CREATE TABLE {table} (id int primary key, note text);  -- a comment; with a semicolon
        INSERT INTO {table} VALUES (1, 'a;b'), (2, $$it's; fine$$);
        SELECT id, note FROM {table} ORDER BY id;
    """}, ctx_for(pg_server))
    assert out["rows"] == [{"id": 1, "note": "a;b"}, {"id": 2, "note": "it's; fine"}]
    assert out["row_count"] == 2


def test_statements_without_rows_give_affected_rows(pg_server: PgServer, table: str) -> None:
    ctx = ctx_for(pg_server)
    assert run({"auth": "pg", "query": f"CREATE TABLE {table} (id int)"}, ctx) == {"affected_rows": 0}
    assert run({"auth": "pg", "query": f"INSERT INTO {table} SELECT generate_series(1, 5)"}, ctx) == {"affected_rows": 5}
    assert run({"auth": "pg", "query": f"UPDATE {table} SET id = id + 10 WHERE id > $1", "params": [2]}, ctx) == {"affected_rows": 3}
    out = run({"auth": "pg", "query": f"DELETE FROM {table} WHERE id > 10 RETURNING id"}, ctx)
    assert sorted(r["id"] for r in out["rows"]) == [13, 14, 15]


def test_failing_script_is_rolled_back(pg_server: PgServer, table: str) -> None:
    ctx = ctx_for(pg_server)
    run({"auth": "pg", "query": f"CREATE TABLE {table} (id int)"}, ctx)
    with pytest.raises(ToolError, match='syntax error at or near "SELEC"'):
        run({"auth": "pg", "query": f"INSERT INTO {table} VALUES (1); SELEC 1"}, ctx)
    assert run({"auth": "pg", "query": f"SELECT count(*) AS n FROM {table}"}, ctx)["rows"] == [{"n": 0}]


def test_schema_sets_search_path(pg_server: PgServer) -> None:
    ctx = ctx_for(pg_server)
    run({"auth": "pg", "query": 'CREATE SCHEMA IF NOT EXISTS "Mart"; '
         'CREATE TABLE IF NOT EXISTS "Mart".facts (v int); TRUNCATE "Mart".facts; '
         'INSERT INTO "Mart".facts VALUES (5)'}, ctx)
    out = run({"auth": "pg", "schema": "Mart", "query": "SELECT v, current_schema() AS s FROM facts"}, ctx)
    assert out["rows"] == [{"v": 5, "s": "Mart"}]


def test_values_are_json_compatible(pg_server: PgServer) -> None:
    out = run({"auth": "pg", "query": """
        SELECT 1.50::numeric AS num, '2024-01-02 03:04:05+02'::timestamptz AS tstz,
               '2024-01-02 03:04:05.5'::timestamp AS ts, '2024-01-02'::date AS d, '12:30'::time AS t,
               'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid AS u, '{"k": [1, 2]}'::jsonb AS j,
               '\\x6162'::bytea AS b, ARRAY[1, 2] AS arr, '1 day 02:00'::interval AS i,
               int4range(1, 3) AS r, NULL::int AS z, true AS flag, 2.5::float8 AS f,
               9223372036854775807::bigint AS big
    """}, ctx_for(pg_server))
    assert out["rows"] == [{
        "num": "1.50", "tstz": "2024-01-02T01:04:05+00:00", "ts": "2024-01-02T03:04:05.500000",
        "d": "2024-01-02", "t": "12:30:00", "u": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        "j": {"k": [1, 2]}, "b": "YWI=", "arr": [1, 2], "i": "1 day 02:00:00", "r": "[1,3)",
        "z": None, "flag": True, "f": 2.5, "big": 9223372036854775807,
    }]


def test_json_and_array_params(pg_server: PgServer) -> None:
    out = run({"auth": "pg", "query": "SELECT ($1::jsonb)->>'a' AS a, 3 = ANY($2::int[]) AS has3",
               "params": [{"a": "x"}, [1, 2, 3]]}, ctx_for(pg_server))
    assert out["rows"] == [{"a": "x", "has3": True}]


# ------------------------------------------------------------------------------- connections
def test_connection_string_and_fields(pg_server: PgServer) -> None:
    ctx = ctx_for()
    assert run({"connection_string": pg_server.dsn(), "query": "SELECT current_user AS u"}, ctx)["rows"] == [{"u": "noetl"}]
    assert run({"dsn": pg_server.dsn(), "query": "SELECT 1 AS one"}, ctx)["rows"] == [{"one": 1}]
    out = run({"host": pg_server.host, "port": pg_server.port, "dbname": pg_server.database,
               "user": pg_server.user, "password": pg_server.password,
               "query": "SELECT current_database() AS db"}, ctx)
    assert out["rows"] == [{"db": "noetl_test"}]


def test_credential_with_connection_string_and_env(pg_server: PgServer, monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = ctx_for(pg_dsn={"connection_string": pg_server.dsn()})
    assert run({"auth": "pg_dsn", "query": "SELECT 2 AS two"}, ctx)["rows"] == [{"two": 2}]
    monkeypatch.setenv("NOETL_CREDENTIAL_PG_ENV__DB_PASSWORD", pg_server.password)
    for key, value in pg_server.fields().items():
        if key != "db_password":
            monkeypatch.setenv(f"NOETL_CREDENTIAL_PG_ENV__{key.upper()}", value)
    env_ctx = ToolContext("s", "e", {}, resources={"credentials": CredentialsResource()})
    assert run({"auth": "pg_env", "query": "SELECT 3 AS three"}, env_ctx)["rows"] == [{"three": 3}]


def test_tool_fields_override_credential(pg_server: PgServer) -> None:
    ctx = ctx_for(pg_server)
    out = run({"auth": "pg", "database": "postgres", "query": "SELECT current_database() AS db"}, ctx)
    assert out["rows"] == [{"db": "postgres"}]


# ---------------------------------------------------------------------------------- failures
def _no_secret(exc: BaseException, *secrets: str) -> str:
    """The message; no secret in it, its repr, nor any chained exception (even a suppressed one)."""
    assert exc.__cause__ is None and exc.__context__ is None
    text = "".join(traceback.format_exception_only(exc)) + repr(exc)
    for secret in secrets:
        assert secret not in text
    return str(exc)


def test_sql_syntax_error_has_server_message(pg_server: PgServer) -> None:
    with pytest.raises(ToolError) as info:
        run({"auth": "pg", "query": "SELEC 1"}, ctx_for(pg_server))
    message = _no_secret(info.value, pg_server.password)
    assert 'syntax error at or near "SELEC"' in message and "SQLSTATE 42601" in message


def test_missing_table_error(pg_server: PgServer) -> None:
    with pytest.raises(ToolError, match=r'relation "no_such_table" does not exist.*SQLSTATE 42P01'):
        run({"auth": "pg", "query": "SELECT * FROM no_such_table"}, ctx_for(pg_server))


def test_wrong_password_names_host_and_alias_not_password(pg_server: PgServer) -> None:
    ctx = ctx_for(pg_bad={**pg_server.fields(), "db_password": WRONG_PASSWORD})
    with pytest.raises(ToolError) as info:
        run({"auth": "pg_bad", "query": "SELECT 1"}, ctx)
    message = _no_secret(info.value, WRONG_PASSWORD, pg_server.password)
    assert f"{pg_server.host}:{pg_server.port}" in message
    assert "credential 'pg_bad'" in message
    assert 'password authentication failed for user "noetl"' in message
    assert "check the password of credential 'pg_bad'" in message


def test_wrong_password_in_connection_string_is_not_shown(pg_server: PgServer) -> None:
    with pytest.raises(ToolError) as info:
        run({"connection_string": pg_server.dsn(password=WRONG_PASSWORD), "query": "SELECT 1"}, ctx_for())
    message = _no_secret(info.value, WRONG_PASSWORD)
    assert "password authentication failed" in message and str(pg_server.port) in message


def test_unreachable_server_names_host_port_and_alias() -> None:
    port = free_port()  # nothing listens there
    ctx = ctx_for(pg_down={"db_host": "127.0.0.1", "db_port": str(port), "db_user": "u",
                           "db_password": "Unreach-Pa55word", "db_name": "d"})
    with pytest.raises(ToolError) as info:
        run({"auth": "pg_down", "query": "SELECT 1"}, ctx)
    message = _no_secret(info.value, "Unreach-Pa55word")
    assert f"cannot connect to 127.0.0.1:{port}" in message
    assert "credential 'pg_down'" in message and "Connection refused" in message


def test_unknown_credential_alias() -> None:
    with pytest.raises(CredentialNotFound, match=r"credential 'nope' is not defined.*NOETL_CREDENTIAL_NOPE"):
        run({"auth": "nope", "query": "SELECT 1"}, ctx_for())


def test_list_params_with_a_script_bind_per_statement(pg_server: PgServer) -> None:
    out = run({"auth": "pg", "query": "SELECT $1::int; SELECT $2::int + $1::int AS v", "params": [1, 5]},
              ctx_for(pg_server))
    assert out["rows"] == [{"v": 6}]
    with pytest.raises(ToolError, match="named params bind to one statement only"):
        run({"auth": "pg", "query": "SELECT %(a)s::int; SELECT 2", "params": {"a": 1}}, ctx_for(pg_server))


def test_malformed_connection_string_hides_password() -> None:
    with pytest.raises(ToolError) as info:
        run({"connection_string": "host=127.0.0.1 password=Malformed-Pw99 bogus", "query": "SELECT 1"}, ctx_for())
    message = _no_secret(info.value, "Malformed-Pw99")
    assert "invalid connection settings" in message


def test_validate() -> None:
    assert {p[0] for p in check_tool_config("postgres", {"auth": 5})} == {"query", "auth"}
    assert check_tool_config("postgres", {"auth": "pg", "query": "SELECT 1"}) == []


def test_split_statements() -> None:
    assert split_statements("SELECT 1;") == ["SELECT 1"]
    assert len(split_statements("INSERT INTO t VALUES ('a;b'); SELECT 1")) == 2
    assert len(split_statements("CREATE FUNCTION f() RETURNS int AS $f$ BEGIN; RETURN 1; END $f$ LANGUAGE plpgsql; SELECT f()")) == 2
    assert len(split_statements("-- it's; a comment\nSELECT 1; /* x; y */ SELECT $1")) == 2


# --------------------------------------------------------------------------------------- Arrow
def test_query_arrow_with_adbc(pg_server: PgServer) -> None:
    conn = connection_from_config({"auth": "pg"}, ctx_for(pg_server))
    assert isinstance(conn, PgConnection) and pg_server.password not in repr(conn)
    table = query_arrow(conn, "SELECT g AS id, g * 1.5::numeric AS x, 'n' || g AS name "
                              "FROM generate_series(1, $1::int) g", [3], engine="adbc")
    assert isinstance(table, pa.Table) and table.num_rows == 3
    assert table.column_names == ["id", "x", "name"]
    assert table.schema.field("id").type == pa.int32()
    assert table.column("name").to_pylist() == ["n1", "n2", "n3"]
    assert table.column("x").to_pylist() == ["1.5", "3.0", "4.5"]  # numeric stays exact text


def test_query_arrow_fallbacks(pg_server: PgServer) -> None:
    ctx = ctx_for(pg_server)
    # a script: psycopg runs it, last rows as Arrow
    table = query_arrow({"auth": "pg"}, "CREATE TEMP TABLE tmp_a (v int); INSERT INTO tmp_a VALUES (1), (2); "
                                        "SELECT v FROM tmp_a ORDER BY v", ctx=ctx)
    assert table.column("v").to_pylist() == [1, 2]
    # a composite type ADBC cannot decode and an inet: read through psycopg
    table = query_arrow({"auth": "pg"}, "SELECT ROW(1, 'a') AS rec, '10.0.0.1'::inet AS ip", ctx=ctx)
    assert table.to_pylist() == [{"rec": "(1,a)", "ip": "10.0.0.1"}]
    # named params: psycopg
    assert query_arrow(pg_server.dsn(), "SELECT %(a)s::int AS a", {"a": 5}).to_pylist() == [{"a": 5}]
    # an empty result keeps its columns and types
    empty = query_arrow(pg_server.dsn(), "SELECT 1::int AS a, 'x'::text AS b WHERE false", engine="psycopg")
    assert empty.num_rows == 0 and empty.schema.field("a").type == pa.int32()


def test_query_arrow_errors(pg_server: PgServer) -> None:
    with pytest.raises(ToolError, match='syntax error at or near "SELEC"'):
        query_arrow(pg_server.dsn(), "SELEC 1", engine="adbc")
    with pytest.raises(ToolError) as info:
        query_arrow(pg_server.dsn(password=WRONG_PASSWORD), "SELECT 1", engine="adbc")
    assert "password authentication failed" in _no_secret(info.value, WRONG_PASSWORD)


# ----------------------------------------------------------------------------------- playbooks
PLAYBOOK = """
apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: pg_e2e, path: tests/pg_e2e}
workload:
  dsn: ""
  table: ""
  threshold: 2
workflow:
  - step: start
    tool: {kind: noop}
    next: setup
  - step: setup
    tool:
      kind: postgres
      CONNECTION
      query: |
        CREATE TABLE {{ workload.table | sql_identifier }} (id int, amount numeric(10, 2));
        INSERT INTO {{ workload.table | sql_identifier }} SELECT g, g * 10.5 FROM generate_series(1, 4) g;
        SELECT count(*) AS n FROM {{ workload.table | sql_identifier }};
    next: pick
  - step: pick
    tool:
      kind: postgres
      CONNECTION
      query: SELECT id, amount FROM {{ workload.table | sql_identifier }} WHERE id > $1 ORDER BY id
      params: ["{{ workload.threshold }}"]
    next: summarise
  - step: summarise
    tool:
      kind: python
      input:
        rows: "{{ pick.rows }}"
        created: "{{ setup.rows[0].n }}"
      code: |
        result = {"ids": [r["id"] for r in rows], "total": sum(float(r["amount"]) for r in rows),
                  "created": created}
    next: end
  - step: end
    tool: {kind: noop}
"""


def test_playbook_end_to_end_with_connection_string(pg_server: PgServer, table: str) -> None:
    playbook = parse_text(PLAYBOOK.replace("CONNECTION", 'connection_string: "{{ workload.dsn }}"'))
    report = run_playbook(playbook, {"dsn": pg_server.dsn(), "table": table},
                          instance=dg.DagsterInstance.ephemeral())
    assert report.status == "success", report
    assert report.steps["summarise"].result == {"ids": [3, 4], "total": 73.5, "created": 4}


def test_playbook_sql_error_fails_the_step(pg_server: PgServer) -> None:
    text = PLAYBOOK.replace("CONNECTION", 'connection_string: "{{ workload.dsn }}"').replace(
        "CREATE TABLE", "CREATE TABEL")
    report = run_playbook(parse_text(text), {"dsn": pg_server.dsn(), "table": "t_never"},
                          instance=dg.DagsterInstance.ephemeral())
    assert report.status == "failure"
    assert report.steps["setup"].status == "failed"
    assert 'syntax error at or near "TABEL"' in report.steps["setup"].error
    assert pg_server.password not in report.steps["setup"].error
    assert report.steps["pick"].status == "skipped"


def test_playbook_end_to_end_with_auth_alias(pg_server: PgServer, table: str) -> None:
    playbook = parse_text(PLAYBOOK.replace("CONNECTION", "auth: pg_main"))
    creds = CredentialsResource(credentials={"pg_main": pg_server.fields()}, use_env=False)
    report = run_playbook(playbook, {"table": table}, instance=dg.DagsterInstance.ephemeral(),
                          resources={"noetl_credentials": creds})
    assert report.status == "success", report
    assert report.steps["summarise"].result["ids"] == [3, 4]


def test_playbook_auth_from_environment(pg_server: PgServer, table: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without resources, ops get an env-backed CredentialsResource (NOETL_CREDENTIAL_<ALIAS>__<FIELD>)."""
    for key, value in pg_server.fields().items():
        monkeypatch.setenv(f"NOETL_CREDENTIAL_PG_E2E__{key.upper()}", value)
    report = run_playbook(parse_text(PLAYBOOK.replace("CONNECTION", "auth: pg_e2e")), {"table": table},
                          instance=dg.DagsterInstance.ephemeral())
    assert report.status == "success", report
    assert report.steps["summarise"].result["created"] == 4


def test_playbook_wrong_password_message(pg_server: PgServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOETL_CREDENTIAL_PG_WRONG", json.dumps({**pg_server.fields(), "db_password": WRONG_PASSWORD}))
    report = run_playbook(parse_text(PLAYBOOK.replace("CONNECTION", "auth: pg_wrong")), {"table": "t_never"},
                          instance=dg.DagsterInstance.ephemeral())
    assert report.status == "failure"
    error = report.steps["setup"].error
    assert "credential 'pg_wrong'" in error and f"{pg_server.host}:{pg_server.port}" in error
    assert "password authentication failed" in error and WRONG_PASSWORD not in error


# ------------------------------------------------------------------------------- format: arrow
ARROW_PRODUCT = """apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: ledger, path: finance/ledger}
workflow:
  - step: start
    tool:
      kind: postgres
      auth: pg
      command: |
        CREATE TABLE IF NOT EXISTS LEDGER (id bigint PRIMARY KEY, booked timestamptz, amount float8, memo text);
        INSERT INTO LEDGER SELECT g, '2026-01-01'::timestamptz + g * interval '1 hour', g * 1.5, 'entry ' || g
        FROM generate_series(1, 500) g ON CONFLICT DO NOTHING
    next: entries
  - step: entries
    product: {name: ledger_entries, checks: [{row_count: {min: 500, max: 500}}, {unique: id}]}
    tool:
      kind: postgres
      auth: pg
      format: arrow
      query: SELECT id, booked, amount, memo FROM LEDGER WHERE amount > $1 ORDER BY id
      params: [0]
    next: totals
  - step: totals
    tool:
      kind: duckdb
      format: arrow
      query: SELECT count(*) AS n, sum(amount) AS total FROM entries
"""


def test_format_arrow_publishes_the_drivers_table(pg_server: PgServer, table: str, monkeypatch: pytest.MonkeyPatch,
                                                   instance: dg.DagsterInstance) -> None:
    import noetl_dagster.runtime.tools.postgres as postgres

    def no_row_conversion(*args: object, **kwargs: object) -> None:
        raise AssertionError("format: arrow fell back to converting rows in Python")

    monkeypatch.setattr(postgres, "_psycopg_arrow", no_row_conversion)  # ADBC must build the table
    creds = CredentialsResource(use_env=False, credentials={"pg": pg_server.fields()})
    report = run_playbook(parse_text(ARROW_PRODUCT.replace("LEDGER", table)), instance=instance,
                          resources={"noetl_credentials": creds}, log_level="WARNING")
    assert report.status == "success", {k: s.error for k, s in report.steps.items() if s.error}
    mat = instance.get_latest_materialization_event(dg.AssetKey(["finance", "ledger_entries"]))
    meta = mat.asset_materialization.metadata
    assert meta["dagster/row_count"].value == 500
    types = {c.name: c.type for c in meta["dagster/column_schema"].schema.columns}
    assert types == {"id": "int64", "booked": "timestamp[us, tz=UTC]", "amount": "double", "memo": "string"}
    # DuckDB queried the product's Arrow table by step name (the report shows tables as rows)
    assert report.steps["totals"].result == [{"n": 500, "total": 1.5 * 500 * 501 / 2}]


def test_unknown_format_is_a_validation_error() -> None:
    from noetl_dagster import PlaybookError

    text = ARROW_PRODUCT.replace("LEDGER", "t").replace("format: arrow\n      query: SELECT id", "format: parquet\n      query: SELECT id")
    with pytest.raises(PlaybookError, match=r"format 'parquet' is not one of rows, arrow"):
        parse_text(text, "ledger.yaml")
