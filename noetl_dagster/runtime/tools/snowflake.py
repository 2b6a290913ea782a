"""``kind: snowflake``: SQL statements on Snowflake (snowflake-connector-python).

NoETL's contract (rendered as templates)::

    tool:
      kind: snowflake
      auth: sf_test                  # a credential alias (NoETL's `snowflake` type: sf_account,
                                     # sf_user, sf_password or sf_private_key [+ _passphrase],
                                     # sf_warehouse, sf_database, sf_schema, sf_role; the
                                     # unprefixed names work too)
      # or the same fields in the tool: account, user, password, private_key, warehouse...
      command: |                     # split on `;` into statements (comment-only parts dropped),
        CREATE TABLE IF NOT EXISTS T (id INTEGER, name STRING);   # or commands: [...],
        SELECT * FROM T WHERE id > ?                               # or command_b64
      params: [1]                    # extension: bound by Snowflake (qmark) in every statement
                                     # that has `?` placeholders, never formatted into the SQL;
                                     # a {{ }} value in the SQL is bound the same way (a `?`),
                                     # unlike NoETL, which writes it into the text
      format: rows                   # or arrow: the last statement's result as a pyarrow.Table

Defaults as in NoETL: warehouse ``COMPUTE_WH``, schema ``PUBLIC``. Result (NoETL's shape): one
entry per statement, ``{statement_0: {status: success, row_count, result: [{COL: value}],
columns}, ...}`` (``result``/``columns`` absent for statements without rows). Values are
JSON-compatible like the postgres tool's (NUMBER with a scale as a string, timestamps ISO).
As in NoETL, a failing statement does not stop the others: it is ``{status: error, row_count: 0,
error}`` and the step completes with an *error result* ("Some statements failed", status
``error``; strict mode fails it). A connection or login failure fails the step. The session is
one connection, so ``USE`` and temporary tables carry over between statements.

The password, private key and passphrase are registered for redaction and never logged; the
connector's own logging stays at WARNING. ``host``/``port``/``protocol`` in the credential (or
the tool) point the connector somewhere else than ``<account>.snowflakecomputing.com`` (a
private link, or a local test server).

``transfer`` uses :func:`source_batches` (Arrow batches fetched by the connector; upper-case
unquoted column names become lower-case, as an unquoted name means the same in both) and
:class:`SnowflakeTarget` (``executemany`` with bound rows; the table is created from the
source's Arrow schema when missing; ``replace`` truncates it, ``upsert`` deletes the batch's
keys first; one transaction).
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
from typing import TYPE_CHECKING, Any, Iterator, Mapping

from noetl_dagster.runtime.tools.base import ErrorResult, Tool, ToolContext, ToolError, result_format
from noetl_dagster.runtime.tools.postgres import json_value
from noetl_dagster.core.binding import render_sql
from noetl_dagster.core.templates import TemplateFailure
from noetl_dagster.core.secrets import redact, register_secret, secret_safe

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa

DEFAULT_WAREHOUSE = "COMPUTE_WH"
DEFAULT_SCHEMA = "PUBLIC"
LOGIN_TIMEOUT_SECONDS = 60
_FIELDS = ("account", "user", "password", "private_key", "private_key_passphrase", "warehouse",
           "database", "schema", "role", "host", "port", "protocol", "authenticator", "login_timeout")
_SECRETS = ("password", "private_key", "private_key_passphrase")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*$")
_UPPER_IDENT = re.compile(r"^[A-Z_][A-Z0-9_$]*$")


def split_statements(sql: str) -> list[str]:
    """NoETL's ``split_sql_statements``: split on ``;``, drop empty and comment-only parts."""
    out = []
    for part in sql.split(";"):
        part = part.strip()
        if part and any(line.strip() and not line.strip().startswith("--") for line in part.splitlines()):
            out.append(part)
    return out


def statements_of(cfg: Mapping[str, Any]) -> list[str]:
    """The statements of a rendered config: ``command_b64``, ``command`` or ``commands``."""
    b64 = cfg.get("command_b64") or cfg.get("commands_b64")
    if b64:
        try:
            return split_statements(base64.b64decode(str(b64), validate=True).decode("utf-8"))
        except (binascii.Error, ValueError) as exc:
            raise ToolError(f"snowflake: `command_b64` is not base64-encoded UTF-8: {exc}") from None
    command = cfg.get("command") if cfg.get("command") is not None else cfg.get("query")
    if isinstance(command, str):
        return split_statements(command)
    commands = cfg.get("commands") if command is None else command
    if isinstance(commands, (list, tuple)):
        return [str(c).strip().rstrip(";") for c in commands if str(c).strip()]
    raise ToolError("snowflake: no SQL given (use command, commands or command_b64)")


_SQL_KEYS = ("command", "commands", "query")
_TEMPLATE = re.compile(r"\{\{.*?\}\}|\{%.*?%\}", re.DOTALL)
_DOLLAR_N = re.compile(r"\$(\d+)")


def bound_statements(config: Mapping[str, Any], ctx: ToolContext, params: Any) -> list[tuple[str, Any]]:
    """``(statement, its bound values)`` pairs: every ``{{ }}`` value in ``command``/``commands``
    becomes a ``?`` bound by Snowflake (:mod:`noetl_dagster.core.binding`), never SQL text.

    ``params`` (the tool's own list) go to the statements with ``?`` placeholders of their own;
    a statement cannot use both. ``command_b64`` is decoded after rendering and not templated.
    """
    b64 = config.get("command_b64") or config.get("commands_b64")
    if b64:
        return [(st, params if "?" in st else None) for st in statements_of({"command_b64": ctx.render(b64)})]
    source = next((config[k] for k in _SQL_KEYS if config.get(k) is not None), None)
    if source is None:
        raise ToolError("snowflake: no SQL given (use command, commands or command_b64)")
    pieces = [source] if isinstance(source, str) else list(source) if isinstance(source, (list, tuple)) else None
    if pieces is None:
        raise ToolError("snowflake: `commands` must be a list of SQL statements")
    out: list[tuple[str, Any]] = []
    for piece in pieces:
        try:
            text, values = render_sql(str(piece), ctx.scope, first=1, text_type="VARCHAR", script=True)
        except TemplateFailure as exc:
            raise ToolError(f"snowflake: {exc}") from None
        if values and _DOLLAR_N.search(_TEMPLATE.sub("", str(piece))):
            raise ToolError("snowflake: the SQL has its own $n references and templated values (bound as "
                            "placeholders): pass those values through `params` with ? placeholders instead")
        parts = split_statements(text) if isinstance(source, str) else [text.strip().rstrip(";")]
        for statement in parts:
            marks = [int(n) for n in _DOLLAR_N.findall(statement)] if values else []
            if not marks:
                out.append((statement, params if params is not None and "?" in statement else None))
                continue
            if params and "?" in statement:
                raise ToolError("snowflake: a statement binds templated values; give its other values as "
                                "templates too, not through `params` (one placeholder style per statement)")
            out.append((_DOLLAR_N.sub("?", statement), [values[n - 1] for n in marks]))
    return [(st, vals) for st, vals in out if st.strip()]


# ---------------------------------------------------------------------------------- connection
def connection_fields(cfg: Mapping[str, Any], ctx: ToolContext) -> dict[str, Any]:
    """Connection fields from ``auth:`` (``sf_``-prefixed or plain) overlaid by the tool's own."""
    fields: dict[str, Any] = {}
    alias = cfg.get("auth") or cfg.get("credential")
    who = "the tool's fields"
    if alias:
        if not isinstance(alias, str):
            raise ToolError("snowflake: `auth` must be a credential alias (a string)")
        cred = ctx.credential(alias)
        for name in _FIELDS:
            value = cred.get("sf_" + name, cred.get(name))
            if value not in (None, ""):
                fields[name] = value
        who = f"credential {alias!r}"
    for name in _FIELDS:
        if cfg.get(name) not in (None, ""):
            fields[name] = cfg[name]
    for name in _SECRETS:
        register_secret(fields.get(name))
    missing = [n for n in ("account", "user") if not fields.get(n)]
    if missing:
        raise ToolError(f"snowflake: {who} has no {' and no '.join(missing)}")
    if not (fields.get("password") or fields.get("private_key") or fields.get("authenticator")):
        raise ToolError(f"snowflake: {who} needs a password or a private_key")
    fields["who"] = who
    return fields


def _private_key(pem: str, passphrase: Any) -> Any:
    from cryptography.hazmat.primitives import serialization

    text = str(pem).replace("\\n", "\n").strip()
    try:
        return serialization.load_pem_private_key(
            text.encode(), password=str(passphrase).encode() if passphrase else None)
    except (ValueError, TypeError) as exc:
        raise ToolError(f"snowflake: the private key is not a PKCS8 PEM key: {type(exc).__name__}") from None


def connect(fields: Mapping[str, Any]) -> Any:
    """A snowflake-connector-python connection (qmark binding: parameters go to the server)."""
    import snowflake.connector

    logging.getLogger("snowflake.connector").setLevel(logging.WARNING)
    kwargs: dict[str, Any] = {
        "account": str(fields["account"]), "user": str(fields["user"]),
        "warehouse": str(fields.get("warehouse") or DEFAULT_WAREHOUSE),
        "schema": str(fields.get("schema") or DEFAULT_SCHEMA),
        "paramstyle": "qmark", "login_timeout": int(fields.get("login_timeout") or LOGIN_TIMEOUT_SECONDS),
        "session_parameters": {"CLIENT_OUT_OF_BAND_TELEMETRY_ENABLED": False},
    }
    for name in ("database", "role", "host", "protocol", "authenticator"):
        if fields.get(name):
            kwargs[name] = str(fields[name])
    if fields.get("port"):
        kwargs["port"] = int(fields["port"])
    if fields.get("private_key"):
        kwargs["private_key"] = _private_key(fields["private_key"], fields.get("private_key_passphrase"))
        kwargs.setdefault("authenticator", "SNOWFLAKE_JWT")
    elif fields.get("password"):
        kwargs["password"] = str(fields["password"])
    try:
        return snowflake.connector.connect(**kwargs)
    except Exception as exc:  # noqa: BLE001 - the connector's errors, OSError...
        raise ToolError(redact(f"snowflake: cannot connect to account {fields['account']} as "
                               f"{fields['user']} ({fields['who']}): {exc}")) from None


def _execute(cur: Any, statement: str, params: Any) -> None:
    if params:
        cur.execute(statement, params)
    else:
        cur.execute(statement)


class SnowflakeTool(Tool):
    kind = "snowflake"

    def run(self, config: dict[str, Any], ctx: ToolContext) -> Any:
        return secret_safe(self._run)(config, ctx)

    def _run(self, config: dict[str, Any], ctx: ToolContext) -> Any:
        cfg = ctx.render({k: v for k, v in config.items() if k not in ("kind", *_SQL_KEYS)})
        params = cfg.get("params")
        if params is not None and not isinstance(params, (list, tuple)):
            raise ToolError("snowflake: `params` must render to a list (bound to `?` placeholders)")
        statements = bound_statements(config, ctx, params)
        if not statements:
            raise ToolError("snowflake: the SQL has no statement")
        arrow = result_format(config) == "arrow"
        fields = connection_fields(cfg, ctx)
        con = connect(fields)
        results: dict[str, Any] = {}
        table = None
        try:
            cur = con.cursor()
            for index, (statement, values) in enumerate(statements):
                key = f"statement_{index}"
                try:
                    _execute(cur, statement, values)
                    if cur.description is None:
                        results[key] = {"status": "success", "row_count": max(cur.rowcount or 0, 0)}
                        continue
                    columns = [d[0] for d in cur.description]
                    if arrow and index == len(statements) - 1:
                        table = _fetch_arrow(cur, columns)
                        continue
                    rows = [{c: json_value(v) for c, v in zip(columns, row)} for row in cur.fetchall()]
                except Exception as exc:  # noqa: BLE001 - ProgrammingError, DatabaseError...
                    if isinstance(exc, ToolError):
                        raise
                    # NoETL runs the remaining statements and reports each one's outcome
                    results[key] = {"status": "error", "row_count": 0, "error": redact(_message(exc))}
                    continue
                results[key] = {"status": "success", "row_count": len(rows), "result": rows, "columns": columns}
        finally:
            con.close()
        failed = [k for k, v in results.items() if v["status"] == "error"]
        if failed:
            detail = "; ".join(f"{k}: {results[k]['error']}" for k in failed)
            return ErrorResult(results, f"Some statements failed ({detail})")
        if arrow:
            if table is None:
                raise ToolError("snowflake: format: arrow needs the last statement to return rows")
            return table
        return results


def _message(exc: BaseException) -> str:
    msg = getattr(exc, "msg", None) or str(exc)
    return str(msg).strip()


def _fetch_arrow(cur: Any, columns: list[str]) -> "pa.Table":
    """The result as Arrow (the connector's Arrow fetch; rows for JSON results)."""
    import pyarrow as pa

    try:
        table = cur.fetch_arrow_all(force_return_table=True)
    except TypeError:  # older connectors: no force_return_table
        table = cur.fetch_arrow_all()
    except Exception:  # noqa: BLE001 - NotSupportedError: a JSON result set
        table = None
    if table is None:
        return pa.Table.from_pylist([dict(zip(columns, r)) for r in cur.fetchall()])
    return _plain(table)


def _plain(table: "pa.Table") -> "pa.Table":
    """Drop the connector's per-field metadata (logicalType...) so products keep clean schemas."""
    import pyarrow as pa

    return table.cast(pa.schema([pa.field(f.name, f.type, f.nullable) for f in table.schema]))


# ------------------------------------------------------------------------------ transfer ends
def source_batches(cfg: Mapping[str, Any], ctx: ToolContext) -> tuple[Iterator["pa.RecordBatch"], "pa.Schema | None"]:
    """A transfer source: the query's Arrow batches (JSON result sets converted per batch)."""
    import pyarrow as pa

    query = cfg.get("query") if cfg.get("query") is not None else cfg.get("command")
    if not isinstance(query, str) or not query.strip():
        raise ToolError("transfer: snowflake source needs `query`")
    params = cfg.get("params")
    con = connect(connection_fields(cfg, ctx))
    try:
        cur = con.cursor()
        _execute(cur, query.strip().rstrip(";"), params if params and "?" in query else None)
        columns = [d[0] for d in cur.description or []]
        try:
            table = cur.fetch_arrow_all(force_return_table=True)
        except Exception:  # noqa: BLE001 - a JSON result set
            table = pa.Table.from_pylist([dict(zip(columns, r)) for r in cur.fetchall()])
    except ToolError:
        con.close()
        raise
    except Exception as exc:  # noqa: BLE001
        con.close()
        raise ToolError(redact(f"transfer: snowflake source failed: {_message(exc)}")) from None
    con.close()
    table = _plain(table) if table is not None else pa.table({})
    # Snowflake reports unquoted identifiers upper-cased; as a source they keep their meaning
    # case-insensitively (NoETL writes them into an unquoted INSERT): ID -> id, as Postgres names it
    names = [n.lower() if _UPPER_IDENT.match(n) else n for n in table.column_names]
    table = table.rename_columns(names)
    return iter(table.to_batches()), table.schema


def _ident(name: str) -> str:
    """A Snowflake identifier: plain names as they are (upper-cased by Snowflake), else quoted."""
    if _IDENT.match(name):
        return name
    return '"' + name.replace('"', '""') + '"'


def _table_ref(table: str) -> str:
    return ".".join(_ident(p) for p in table.split("."))


def _sf_type(dtype: "pa.DataType") -> str:
    import pyarrow.types as t

    if t.is_boolean(dtype):
        return "BOOLEAN"
    if t.is_integer(dtype):
        return "NUMBER(38,0)"
    if t.is_floating(dtype):
        return "FLOAT"
    if t.is_decimal(dtype):
        return f"NUMBER({min(dtype.precision, 38)},{dtype.scale})"
    if t.is_timestamp(dtype):
        return "TIMESTAMP_TZ" if dtype.tz else "TIMESTAMP_NTZ"
    if t.is_date(dtype):
        return "DATE"
    if t.is_time(dtype):
        return "TIME"
    if t.is_binary(dtype) or t.is_large_binary(dtype):
        return "BINARY"
    return "VARCHAR"


def _cell(value: Any) -> Any:
    """A Python value the connector binds (nested values as JSON text)."""
    import json
    from decimal import Decimal

    if isinstance(value, (dict, list)):
        return json.dumps(value, default=str)
    if isinstance(value, Decimal):
        return str(value)
    return value


class SnowflakeTarget:
    """A transfer target: bound ``INSERT``s in one transaction (autocommit off)."""

    def __init__(self, cfg: Mapping[str, Any], ctx: ToolContext, table: str, mode: str, keys: list[str]) -> None:
        self.redact = redact
        self.table, self.ref, self.mode, self.keys = table, _table_ref(table), mode, keys
        self.con = connect(connection_fields(cfg, ctx))
        self.cur = self.con.cursor()
        self.exists = False

    def _fail(self, exc: Exception) -> ToolError:
        return ToolError(self.redact(f"transfer: target snowflake {self.table}: {_message(exc)}"))

    def begin(self) -> None:
        try:
            self.con.autocommit(False)  # one transaction, committed in finish()
            self.exists = self._exists()
            if self.exists and self.mode == "replace":
                self.cur.execute(f"TRUNCATE TABLE {self.ref}")
        except Exception as exc:  # noqa: BLE001
            raise self._fail(exc) from None

    def _exists(self) -> bool:
        parts = self.table.split(".")
        name = parts[-1] if not _IDENT.match(parts[-1]) else parts[-1].upper()
        schema = None if len(parts) < 2 else (parts[-2].upper() if _IDENT.match(parts[-2]) else parts[-2])
        query = "SELECT count(*) FROM information_schema.tables WHERE table_name = ?"
        args: list[Any] = [name]
        if schema:
            query += " AND table_schema = ?"
            args.append(schema)
        else:
            query += " AND table_schema = current_schema()"
        self.cur.execute(query, args)
        return bool(self.cur.fetchone()[0])

    def _create(self, schema: "pa.Schema") -> None:
        # DDL commits the open transaction in Snowflake: nothing is written yet at this point
        # (the table did not exist, so neither a truncate nor a row happened before)
        cols = ", ".join(f"{_ident(f.name)} {_sf_type(f.type)}" for f in schema)
        self.cur.execute(f"CREATE TABLE IF NOT EXISTS {self.ref} ({cols})")
        self.exists = True

    def write(self, batch: "pa.RecordBatch") -> None:
        try:
            if not self.exists:
                self._create(batch.schema)
            names = batch.schema.names
            if self.mode == "upsert":
                missing = [k for k in self.keys if k not in names]
                if missing:
                    raise ToolError(f"transfer: upsert key column(s) {missing} not in the source's columns {names}")
                key_cols = batch.select(self.keys).to_pylist()
                where = " AND ".join(f"{_ident(k)} = ?" for k in self.keys)
                self.cur.executemany(f"DELETE FROM {self.ref} WHERE {where}",
                                     [[_cell(r[k]) for k in self.keys] for r in key_cols])
            cols = ", ".join(_ident(n) for n in names)
            marks = ", ".join("?" for _ in names)
            rows = [[_cell(v) for v in row.values()] for row in batch.to_pylist()]
            if rows:
                self.cur.executemany(f"INSERT INTO {self.ref} ({cols}) VALUES ({marks})", rows)
        except ToolError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise self._fail(exc) from None

    def finish(self, schema: "pa.Schema | None") -> None:
        try:
            if not self.exists and schema is not None and len(schema):
                self._create(schema)
            self.con.commit()
        except Exception as exc:  # noqa: BLE001
            raise self._fail(exc) from None

    def close(self, ok: bool) -> None:
        try:
            if not ok:
                self.con.rollback()
        except Exception:  # noqa: BLE001
            pass
        self.con.close()
