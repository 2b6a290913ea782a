"""``kind: snowflake`` and ``transfer`` snowflake ends: the real snowflake-connector-python talking
over HTTP to fakesnow's server (Snowflake's REST protocol on 127.0.0.1, DuckDB underneath)."""

from __future__ import annotations

import base64
import json
import logging
import traceback
import uuid

import dagster as dg
import pyarrow as pa
import pytest

from noetl_dagster import PlaybookError, run_playbook
from noetl_dagster.playbook.loader import parse_text
from noetl_dagster.resources.credentials import CredentialsResource
from noetl_dagster.runtime.tools import ToolContext, ToolError, get_tool
from noetl_dagster.runtime.tools.base import ErrorResult
from pg import PgServer, pg_server  # noqa: F401  (tests/pg.py; pg_server is a fixture)

SF_PASSWORD = "Sf-Secr3t-" + uuid.uuid4().hex[:10]


@pytest.fixture(scope="module")
def fakesnow_server() -> dict:
    fakesnow = pytest.importorskip("fakesnow")
    logging.getLogger("uvicorn").setLevel(logging.WARNING)
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    with fakesnow.server() as kwargs:
        yield kwargs


def sf_credential(server: dict, **extra: str) -> dict:
    """NoETL's `snowflake` credential type (sf_* fields), pointed at the local server."""
    return {"type": "snowflake", "sf_account": server["account"], "sf_user": server["user"],
            "sf_password": SF_PASSWORD, "sf_database": "TEST_DB", "sf_schema": "PUBLIC",
            "sf_warehouse": "COMPUTE_WH", "sf_role": "SYSADMIN", "host": server["host"],
            "port": str(server["port"]), "protocol": server["protocol"], **extra}


def creds(server: dict, **more: dict) -> CredentialsResource:
    return CredentialsResource(use_env=False, credentials={"sf_test": sf_credential(server), **more})


def run(server: dict, config: dict, scope: dict | None = None) -> object:
    ctx = ToolContext("sf", "exec-1", scope or {}, resources={"credentials": creds(server)})
    return get_tool("snowflake").run({"auth": "sf_test", **config}, ctx)


def no_secret(value: object, *secrets: str) -> str:
    if isinstance(value, BaseException):
        assert value.__cause__ is None and value.__context__ is None
        text = "".join(traceback.format_exception_only(value)) + repr(value)
    else:
        text = json.dumps(value, default=str)
    for secret in secrets:
        assert secret not in text
    return text


def test_statements_results_and_bound_params(fakesnow_server: dict) -> None:
    run(fakesnow_server, {"command": "CREATE DATABASE IF NOT EXISTS TEST_DB"})
    evil = "x'); DROP TABLE PEOPLE; --"
    out = run(fakesnow_server, {"command": """
        CREATE OR REPLACE TABLE PEOPLE (id INTEGER, name STRING, score NUMERIC(10,2), meta VARIANT);
        -- a comment-only part is no statement
        INSERT INTO PEOPLE SELECT 1, 'Ada', 100.50, PARSE_JSON('{"team": "a"}');
        INSERT INTO PEOPLE (id, name, score) VALUES (?, ?, ?);
        SELECT id, name, score FROM PEOPLE ORDER BY id;
    """, "params": [2, evil, 7.25]})
    assert list(out) == ["statement_0", "statement_1", "statement_2", "statement_3"]
    assert out["statement_2"] == {"status": "success", "row_count": 1, "columns": ["number of rows inserted"],
                                  "result": [{"number of rows inserted": 1}]}  # as Snowflake answers DML
    assert out["statement_3"] == {"status": "success", "row_count": 2, "columns": ["ID", "NAME", "SCORE"],
                                  "result": [{"ID": 1, "NAME": "Ada", "SCORE": "100.50"},
                                             {"ID": 2, "NAME": evil, "SCORE": "7.25"}]}
    # commands: a list; command_b64: NoETL's base64 form
    sql = "SELECT count(*) AS n FROM PEOPLE; SELECT max(id) AS m FROM PEOPLE"
    b64 = run(fakesnow_server, {"command_b64": base64.b64encode(sql.encode()).decode()})
    assert b64["statement_0"]["result"] == [{"N": 2}] and b64["statement_1"]["result"] == [{"M": 2}]
    listed = run(fakesnow_server, {"commands": ["SELECT name FROM PEOPLE WHERE id = ?"], "params": [1]})
    assert listed["statement_0"]["result"] == [{"NAME": "Ada"}]


def test_templated_values_are_bound_not_spliced(fakesnow_server: dict) -> None:
    evil = "x' OR 1=1 --"
    scope = {"workload": {"name": evil, "table": "PEOPLE2", "id": 5}}
    run(fakesnow_server, {"command": "CREATE DATABASE IF NOT EXISTS TEST_DB; "
                                     "CREATE OR REPLACE TABLE {{ workload.table | sql_identifier }} (id INTEGER, name STRING); "
                                     "INSERT INTO {{ workload.table | sql_identifier }} VALUES ({{ workload.id }}, '{{ workload.name }}')"},
        scope)
    out = run(fakesnow_server, {"commands": ["SELECT id, name FROM PEOPLE2 WHERE name = '{{ workload.name }}'",
                                             "SELECT count(*) AS n FROM PEOPLE2 WHERE name = 'nobody' OR id = {{ workload.id }}"]},
              scope)
    assert out["statement_0"]["result"] == [{"ID": 5, "NAME": evil}]  # stored and matched literally
    assert out["statement_1"]["result"] == [{"N": 1}]
    with pytest.raises(ToolError, match="one placeholder style per statement"):
        run(fakesnow_server, {"command": "SELECT ? AS a, {{ workload.id }} AS b", "params": [1]}, scope)


def test_format_arrow(fakesnow_server: dict) -> None:
    run(fakesnow_server, {"command": "CREATE DATABASE IF NOT EXISTS TEST_DB; "
                                     "CREATE OR REPLACE TABLE NUMS AS SELECT 1 AS n UNION ALL SELECT 2"})
    table = run(fakesnow_server, {"command": "SELECT n FROM NUMS ORDER BY n", "format": "arrow"})
    assert isinstance(table, pa.Table) and table.column("N").to_pylist() == [1, 2]
    assert not table.schema.field("N").metadata  # the connector's field metadata is dropped


def test_failing_statement_is_an_error_result_like_noetl(fakesnow_server: dict) -> None:
    out = run(fakesnow_server, {"command": "SELECT 1 AS a; SELECT * FROM NO_SUCH_TABLE_X; SELECT 2 AS b"})
    assert isinstance(out, ErrorResult) and out.message.startswith("Some statements failed (statement_1: ")
    assert out.data["statement_0"]["result"] == [{"A": 1}] and out.data["statement_2"]["result"] == [{"B": 2}]
    assert out.data["statement_1"]["status"] == "error" and "NO_SUCH_TABLE_X" in out.data["statement_1"]["error"].upper()
    no_secret(out.data, SF_PASSWORD)
    no_secret(out.message, SF_PASSWORD)


def test_unreachable_server_error_hides_the_password() -> None:
    from pg import free_port

    ctx = ToolContext("sf", "exec-1", {}, resources={"credentials": CredentialsResource(use_env=False, credentials={
        "sf_down": {"sf_account": "acct", "sf_user": "u", "sf_password": SF_PASSWORD, "host": "127.0.0.1",
                    "port": str(free_port()), "protocol": "http"}})})
    with pytest.raises(ToolError) as info:
        get_tool("snowflake").run({"auth": "sf_down", "command": "SELECT 1", "login_timeout": 5}, ctx)
    text = no_secret(info.value, SF_PASSWORD)
    assert "cannot connect to account acct as u (credential 'sf_down')" in text


def test_missing_credentials_are_clear() -> None:
    ctx = ToolContext("sf", "exec-1", {}, resources={"credentials": CredentialsResource(
        use_env=False, credentials={"sf_half": {"sf_account": "acct"}})})
    with pytest.raises(ToolError, match="credential 'sf_half' has no user"):
        get_tool("snowflake").run({"auth": "sf_half", "command": "SELECT 1"}, ctx)


# --------------------------------------------------------------------------------- transfer
def test_transfer_snowflake_to_postgres_and_back(fakesnow_server: dict, pg_server: PgServer) -> None:
    resources = {"credentials": CredentialsResource(use_env=False, credentials={
        "sf_test": sf_credential(fakesnow_server), "pg": pg_server.fields()})}
    ctx = ToolContext("t", "exec-1", {}, resources=resources)
    sf = get_tool("snowflake")
    sf.run({"auth": "sf_test", "command": """
        CREATE DATABASE IF NOT EXISTS TEST_DB;
        CREATE OR REPLACE TABLE TEST_DATA (id INTEGER, name STRING, value NUMERIC(10,2));
        INSERT INTO TEST_DATA SELECT 1, 'Record 1', 100.50 UNION ALL SELECT 2, 'Record 2', 200.75
          UNION ALL SELECT 3, 'Record 3', 300.25"""}, ctx)
    table = f"sf_{uuid.uuid4().hex[:8]}"
    out = get_tool("transfer").run({
        "mode": "replace", "chunk_size": 2,
        "source": {"type": "snowflake", "auth": "sf_test", "query": "SELECT * FROM TEST_DATA ORDER BY id"},
        "target": {"type": "postgres", "auth": "pg", "table": table}}, ctx)
    assert out["rows_transferred"] == 3 and out["batches"] == 2
    rows = get_tool("postgres").run({"auth": "pg", "query": f"SELECT id, name, value FROM {table} ORDER BY 1"},
                                    ctx)["rows"]
    assert [(r["id"], r["name"], float(r["value"])) for r in rows] == [
        (1, "Record 1", 100.5), (2, "Record 2", 200.75), (3, "Record 3", 300.25)]
    # Postgres -> Snowflake: a new table created from the Arrow schema, then an upsert on id
    get_tool("postgres").run({"auth": "pg", "command": f"""
        CREATE TABLE {table}_src (id int, description text, amount numeric(10,2));
        INSERT INTO {table}_src VALUES (101, 'PG 1', 1000.00), (102, 'PG 2', 2000.50)"""}, ctx)
    src = {"type": "postgres", "auth": "pg", "query": f"SELECT * FROM {table}_src ORDER BY id"}
    out = get_tool("transfer").run({"source": src, "target": {"type": "snowflake", "auth": "sf_test",
                                                              "table": "PG_IMPORTED_DATA"}}, ctx)
    assert out["rows_transferred"] == 2
    get_tool("postgres").run({"auth": "pg", "command": f"UPDATE {table}_src SET amount = 1.5 WHERE id = 101"}, ctx)
    get_tool("transfer").run({"source": src, "target": {"type": "snowflake", "auth": "sf_test", "mode": "upsert",
                                                        "key": ["id"], "table": "PG_IMPORTED_DATA"}}, ctx)
    got = sf.run({"auth": "sf_test", "command": "SELECT id, amount FROM PG_IMPORTED_DATA ORDER BY id"}, ctx)
    assert got["statement_0"]["result"] == [{"ID": 101, "AMOUNT": "1.50"}, {"ID": 102, "AMOUNT": "2000.50"}]
    get_tool("postgres").run({"auth": "pg", "command": f"DROP TABLE {table}; DROP TABLE {table}_src"}, ctx)


# -------------------------------------------------------------------------------- playbook
PLAYBOOK = """
apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: snowflake_e2e, path: tests/snowflake_e2e}
workload:
  sf_auth: sf_test
  min_id: 1
workflow:
  - step: start
    tool:
      kind: snowflake
      auth: "{{ sf_auth }}"
      command: |
        CREATE DATABASE IF NOT EXISTS TEST_DB;
        CREATE OR REPLACE TABLE ORDERS (id INTEGER, amount NUMERIC(10,2));
        INSERT INTO ORDERS SELECT 1, 10.5 UNION ALL SELECT 2, 20.25 UNION ALL SELECT 3, 1.0;
    next: pick
  - step: pick
    tool:
      kind: snowflake
      auth: "{{ sf_auth }}"
      command: SELECT id FROM ORDERS WHERE id > ? ORDER BY id
      params: ["{{ workload.min_id }}"]
    next: end
  - step: end
    tool:
      kind: python
      input: {rows: "{{ pick.statement_0.result }}"}
      code: 'result = {"ids": [r["ID"] for r in rows]}'
"""


def test_playbook_with_credential_never_leaks_the_password(fakesnow_server: dict,
                                                           instance: dg.DagsterInstance) -> None:
    report = run_playbook(parse_text(PLAYBOOK), instance=instance,
                          resources={"noetl_credentials": creds(fakesnow_server)})
    assert report.status == "success", {k: s.error for k, s in report.steps.items() if s.error}
    assert report.steps["end"].result == {"ids": [2, 3]}
    events = [repr(e) for e in instance.all_logs(report.run_id)]
    assert events and not any(SF_PASSWORD in e for e in events)
    no_secret({k: s.result for k, s in report.steps.items()}, SF_PASSWORD)


def test_validation() -> None:
    text = """apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: bad_sf}
workflow:
  - step: start
    tool:
      kind: snowflake
      auth: sf_test
      params: {id: 1}
"""
    with pytest.raises(PlaybookError) as info:
        parse_text(text, "bad.yaml")
    found = {i.field for i in info.value.issues}
    assert found == {"tool.command", "tool.params"}
