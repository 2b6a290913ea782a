"""Injection: a workload value in a shell command, a postgres/duckdb query or check SQL is data.

Each hostile value carries ``;``, quotes, ``$(...)``, backticks, ``UNION``, a stacked statement
or ``COPY ... TO``; wherever the template stands (unquoted, inside '...' or "...", a here-document,
``$(...)``, a LIKE pattern, an IN list, a dollar-quoted string, a DO body), the only effect is
the value itself: the echoed value comes back byte for byte, no file appears, no row changes.
"""

from __future__ import annotations

import textwrap
import uuid
from pathlib import Path

import dagster as dg
import pytest

from noetl_dagster import run_playbook
from noetl_dagster.playbook.bindings import binding_warnings
from noetl_dagster.core.templates import TemplateFailure
from noetl_dagster.runtime.tools import ToolContext, ToolError, get_tool
from pg import PgServer, pg_server  # noqa: F401  (tests/pg.py: a real PostgreSQL 15)


def hostile_values(sentinel: Path) -> list[str]:
    """Values that would run code, write ``sentinel`` or change rows if pasted into syntax."""
    s = str(sentinel)
    return [
        f"a; touch {s}",
        f"$(touch {s})",
        f"`touch {s}`",
        f"x' ; touch {s}; echo '",
        f'x" ; touch {s}; echo "',
        f"line1\ntouch {s}\nEOF\ntouch {s}",
        f"x' UNION SELECT 'pwned' --",
        f"x'); INSERT INTO victims VALUES ('pwned'); --",
        f"x'; COPY (SELECT 1) TO '{s}'; --",
        f"x$$; COPY (SELECT 1) TO '{s}'; --",
        "x\\'; SELECT 1; --",
        "%s %(x)s $1 ? {{ 7 * 7 }}",
    ]


def shell(command: str, scope: dict) -> dict:
    return get_tool("shell").run({"command": command}, ToolContext("sh", "e", scope))


# -------------------------------------------------------------------------------------- shell
SHELL_PLACES = [
    ("printf '%s' {{ v }}", "{}"),
    ("printf '%s' '{{ v }}'", "{}"),
    ('printf \'%s\' "{{ v }}"', "{}"),
    ("printf '%s' \"pre-{{ v }}-post\"", "pre-{}-post"),
    ("printf '%s' 'pre-{{ v }}-post'", "pre-{}-post"),
    ("printf '%s' \"$(printf '%s' {{ v }})\"", "{}"),
    ("cat <<EOF\n{{ v }}\nEOF", "{}\n"),
    ("cat <<'EOF'\n{{ v }}\nEOF", "{}\n"),
    ("X={{ v }}; printf '%s' \"$X\"", "{}"),
    ("printf '%s' {{ v }} # {{ v }}", "{}"),
    ("printf '%s' \\{{ v }}", "\\{}"),
    ("printf '%s' \"\\{{ v }}\"", "\\{}"),
]


@pytest.mark.parametrize("place, expect", SHELL_PLACES, ids=[p for p, _ in SHELL_PLACES])
def test_shell_values_are_arguments(place: str, expect: str, tmp_path: Path) -> None:
    sentinel = tmp_path / "pwned"
    for value in hostile_values(sentinel):
        try:
            out = shell(place, {"v": value})
        except (ToolError, TemplateFailure) as exc:
            # a quoted here-document refuses a value that would end it; nothing ran
            assert "EOF" in value and "here-document" in str(exc), (place, value, exc)
            continue
        if place.startswith("X=") or "$(printf" in place:
            expect_value = value.rstrip("\n") if "$(printf" in place else value
        else:
            expect_value = value
        assert out["stdout"] == expect.format(expect_value), (place, value)
        assert not sentinel.exists(), (place, value)


def test_shell_opt_out_and_arithmetic(tmp_path: Path) -> None:
    assert shell("{{ cmd | raw_shell }} {{ v }}", {"cmd": "printf '%s|'", "v": "a b"})["stdout"] == "a b|"
    assert shell("echo $(( {{ n }} * 2 ))", {"n": 21})["stdout"] == "42\n"
    assert shell("set -- a b c; echo ${#}", {})["stdout"] == "3\n"  # `{#` without templates is shell
    with pytest.raises(TemplateFailure, match="must render to a number"):
        shell("echo $(( {{ n }} ))", {"n": "a[$(touch x)]"})
    listed = get_tool("shell").run({"command": ["printf '%s' {{ v }}", "printf '%s' '{{ v }}'"]},
                                   ToolContext("sh", "e", {"v": "$(id)"}))
    assert listed["stdout"] == "$(id)$(id)"


def test_shell_playbook_end_to_end(tmp_path: Path) -> None:
    sentinel = tmp_path / "pwned"
    file = tmp_path / "inj" / "sh.yaml"
    file.parent.mkdir()
    file.write_text(textwrap.dedent("""
        apiVersion: noetl.io/v2
        kind: Playbook
        metadata: {name: sh, path: inj/sh}
        workload: {name: ""}
        workflow:
          - step: start
            tool: {kind: shell, command: "echo hello {{ workload.name }}; echo '{{ workload.name }}'"}
            next: again
          - step: again
            tool: {kind: shell, command: "echo \\"{{ start.stdout | trim }}\\""}
        """))
    value = f"x'; touch {sentinel}; echo '$(touch {sentinel})"
    with dg.instance_for_test() as instance:
        report = run_playbook(file, {"name": value}, instance=instance, log_level="CRITICAL")
    assert report.status == "success"
    assert report.steps["start"].result["stdout"] == f"hello {value}\n{value}\n"
    assert report.steps["again"].result["stdout"] == f"hello {value}\n{value}\n"  # a result is data too
    assert not sentinel.exists()


# ------------------------------------------------------------------------------------- duckdb
SQL_PLACES = [
    ("SELECT '{{ v }}' AS v", lambda v: v),
    ("SELECT 'pre-' || '{{ v }}' AS v", lambda v: "pre-" + v),
    ("SELECT 'pre-{{ v }}-post' AS v", lambda v: f"pre-{v}-post"),
    ("SELECT {{ v }} AS v", lambda v: v),
    ("SELECT $${{ v }}$$ AS v", lambda v: v),
    ("SELECT s AS v FROM (SELECT '{{ v }}' AS s) t WHERE s LIKE '%{{ v }}%' OR true", lambda v: v),
    ("SELECT s AS v FROM (SELECT '{{ v }}' AS s) t WHERE s IN ({{ vs }})", lambda v: v),
]


@pytest.mark.parametrize("query, expect", SQL_PLACES, ids=[q for q, _ in SQL_PLACES])
def test_duckdb_values_are_bound(query: str, expect, tmp_path: Path) -> None:
    sentinel = tmp_path / "pwned"
    db = tmp_path / "x.duckdb"
    tool = get_tool("duckdb")
    tool.run({"db_path": str(db), "query": "CREATE TABLE victims (v VARCHAR)"}, ToolContext("d", "e", {}))
    for value in hostile_values(sentinel):
        out = tool.run({"db_path": str(db), "query": query},
                       ToolContext("d", "e", {"v": value, "vs": [value, "other"]}))
        assert out["rows"] == [{"v": expect(value)}], (query, value)
        assert not sentinel.exists(), (query, value)
    rows = tool.run({"db_path": str(db), "query": "SELECT count(*) AS n FROM victims"}, ToolContext("d", "e", {}))
    assert rows["rows"] == [{"n": 0}]


def test_duckdb_identifiers_and_raw_sql(tmp_path: Path) -> None:
    tool = get_tool("duckdb")
    ctx = ToolContext("d", "e", {"t": 'odd "name"; DROP TABLE x', "cols": ["a", "b c"], "order": "a DESC"})
    out = tool.run({"query": """CREATE TABLE {{ t | sql_identifier }} (a INT, "b c" INT);
                                INSERT INTO {{ t | sql_identifier }} VALUES (1, 2), (3, 4);
                                SELECT {{ cols | sql_identifier }} FROM {{ t | sql_identifier }}
                                ORDER BY {{ order | raw_sql }}"""}, ctx)
    assert out["rows"] == [{"a": 3, "b c": 4}, {"a": 1, "b c": 2}]
    with pytest.raises(TemplateFailure, match="script: true"):
        tool.run({"query": "SELECT 1 ORDER BY {{ order | raw_sql }}"},
                 ToolContext("d", "e", {"order": "1; COPY (SELECT 1) TO 'x.csv'"}))


# ----------------------------------------------------------------------------------- postgres
def pg(server: PgServer, query: str, scope: dict, **extra) -> dict:
    return get_tool("postgres").run({"connection_string": server.dsn(), "query": query, **extra},
                                    ToolContext("p", "e", scope))


PG_PLACES = SQL_PLACES + [
    ("SELECT '{{ v }}'::text AS v", lambda v: v),
    ("SELECT $tag${{ v }}$tag$ AS v", lambda v: v),
    ("SELECT E'{{ v }}' AS v", lambda v: v),
]


def test_postgres_values_are_bound(pg_server: PgServer, tmp_path: Path) -> None:
    sentinel = tmp_path / "pwned"
    table = f"victims_{uuid.uuid4().hex[:8]}"
    pg(pg_server, f"CREATE TABLE {table} (v text); CREATE TABLE IF NOT EXISTS victims (v text)", {})
    before = pg(pg_server, "SELECT count(*) AS n FROM victims", {})["rows"]
    for query, expect in PG_PLACES:
        for value in hostile_values(sentinel):
            out = pg(pg_server, query, {"v": value, "vs": [value, "other"]})
            assert out["rows"] == [{"v": expect(value)}], (query, value)
    # a stacked statement inside a script, a DO body and an IN list
    for value in hostile_values(sentinel):
        out = pg(pg_server, f"INSERT INTO {table} VALUES ('{{{{ v }}}}'); "
                            f"DO $$ BEGIN IF (SELECT count(*) FROM {table} WHERE v = '{{{{ v }}}}') <> 1 "
                            "THEN RAISE EXCEPTION 'lost'; END IF; END $$; "
                            f"SELECT v FROM {table} WHERE v IN ({{{{ vs }}}}); DELETE FROM {table}",
                 {"v": value, "vs": [value]}) if "$$" not in value else None
        assert out is None or out == {"affected_rows": 1}, value
    assert pg(pg_server, "SELECT count(*) AS n FROM victims", {})["rows"] == before
    assert not sentinel.exists()


def test_postgres_do_body_refuses_what_it_cannot_inline(pg_server: PgServer) -> None:
    with pytest.raises((ToolError, TemplateFailure), match="must render to a number"):
        pg(pg_server, "DO $$ BEGIN PERFORM {{ n }}; END $$", {"n": "1; DROP TABLE victims"})
    with pytest.raises((ToolError, TemplateFailure), match="would end the dollar-quoted body"):
        pg(pg_server, "DO $$ BEGIN PERFORM '{{ s }}'; END $$", {"s": "$$; DROP TABLE victims; --"})
    assert pg(pg_server, "DO $$ BEGIN PERFORM {{ n }}; END $$", {"n": 3}) == {"affected_rows": 0}


def test_postgres_keeps_own_params_and_binds_templates_after_them(pg_server: PgServer) -> None:
    out = pg(pg_server, "SELECT $1::int + {{ n }} AS v, '{{ s }}' AS s", {"n": 2, "s": "it's"}, params=[40])
    assert out["rows"] == [{"v": 42, "s": "it's"}]
    with pytest.raises(ToolError, match="cannot be mixed with named"):
        pg(pg_server, "SELECT %(a)s::int + {{ n }}", {"n": 1}, params={"a": 1})


# ------------------------------------------------------------------------------------- checks
def test_check_sql_is_read_only(tmp_path: Path) -> None:
    import pyarrow as pa

    from noetl_dagster.playbook.models import ProductCheck
    from noetl_dagster.runtime.products import evaluate_check

    sentinel = tmp_path / "pwned.csv"
    table = pa.table({"x": [1, 2]})
    for sql in (f"COPY (SELECT 1) TO '{sentinel}'",
                f"SELECT 1; COPY (SELECT 1) TO '{sentinel}'",
                f"ATTACH '{tmp_path / 'x.db'}' AS x",
                f"SELECT count(*) FROM read_csv('/etc/passwd')",
                "SET enable_external_access = true"):
        ok, meta = evaluate_check(ProductCheck(sql=sql, expect=0), table)
        assert not ok and "error" in meta, sql
    assert not sentinel.exists() and not (tmp_path / "x.db").exists()
    assert evaluate_check(ProductCheck(sql="SELECT count(*) FROM product WHERE x > 1", expect=1), table)[0]


# ----------------------------------------------------------------------------------- validate
def test_validate_names_templates_that_cannot_be_bound(tmp_path: Path) -> None:
    file = tmp_path / "p.yaml"
    file.write_text(textwrap.dedent("""\
        apiVersion: noetl.io/v2
        kind: Playbook
        metadata: {name: p, path: x/p}
        workflow:
          - step: start
            tool:
              kind: postgres
              query: |
                SELECT id FROM {{ workload.table }}
                WHERE execution_id = {{ execution_id }} AND name = '{{ workload.name }}'
                ORDER BY {{ workload.col | sql_identifier }}
            next: sh
          - step: sh
            tool: {kind: shell, command: "{{ workload.cmd }} --flag {{ workload.arg }}"}
        """))
    warnings = [str(w) for w in binding_warnings(file)]
    assert len(warnings) == 3, warnings
    assert warnings[0].startswith(f"{file}:9:") and "step 'start': tool.query: " \
        "`{{ workload.table }}` sits where SQL needs a name" in warnings[0]
    assert warnings[1].startswith(f"{file}:11:") and "`| sql_identifier`" in warnings[1]
    assert warnings[2].startswith(f"{file}:14:") and "step 'sh': tool.command:" in warnings[2] \
        and "is a command name" in warnings[2]


def test_random_metacharacter_values_round_trip(tmp_path: Path) -> None:
    """60 random values made of shell and SQL metacharacters come back unchanged everywhere."""
    import random

    rng = random.Random(14)
    alphabet = list("abc ;'\"`$(){}[]|&<>\\*?!#%~-=,.\t") + ["$(", "${", "''", "$$", "--", "/*", "*/", "EOF"]
    values = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12))) for _ in range(60)]
    sentinel = tmp_path / "pwned"
    duck = get_tool("duckdb")
    for value in values:
        value = value + f"; touch {sentinel}"
        for place, expect in SHELL_PLACES[:6] + SHELL_PLACES[8:9]:
            assert shell(place, {"v": value})["stdout"] == expect.format(value), (place, value)
        for query, expect in SQL_PLACES:
            out = duck.run({"query": query}, ToolContext("d", "e", {"v": value, "vs": [value]}))
            assert out["rows"] == [{"v": expect(value)}], (query, value)
    assert not sentinel.exists()


def test_cli_validate_prints_warnings_and_still_passes(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from noetl_dagster.cli import main

    file = tmp_path / "w.yaml"
    file.write_text(textwrap.dedent("""\
        apiVersion: noetl.io/v2
        kind: Playbook
        metadata: {name: w, path: x/w}
        workflow:
          - step: start
            tool: {kind: duckdb, query: "SELECT * FROM {{ workload.t }} WHERE id IN ({{ workload.ids }})"}
        """))
    assert main(["validate", str(file)]) == 0
    captured = capsys.readouterr()
    assert "2 warning(s)" in captured.out
    err = captured.err.splitlines()
    assert len(err) == 2 and all(line.startswith(f"warning: {file}:6:") for line in err)
    assert "`{{ workload.t }}` sits where SQL needs a name" in err[0]
    assert "`{{ workload.ids }}` is an IN ( ) list" in err[1]
