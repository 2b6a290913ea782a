"""``kind: postgres``: SQL on a PostgreSQL server, NoETL's contract.

Config (every value rendered as a template)::

    tool:
      kind: postgres
      auth: pg_main                  # credential alias (NoETL `postgres` credential fields), or
      connection_string: postgresql://user@host:5432/db     # alias `dsn`; URI or key=value; or
      host: ..., port: 5432, database: ..., user: ..., password: ...   # (`dbname` = `database`)
      schema: analytics              # search_path (a name or a list of names)
      query: SELECT * FROM t WHERE id = $1 AND kind = $2   # alias `command`
      params: [42, "a"]              # bound by the server, never formatted into the SQL
      as_objects: true               # rows as {column: value} (false: lists)
      timeout_seconds: 60            # statement_timeout (optional)
      connect_timeout: 10

Precedence of connection settings (later wins): ``connection_string``, the credential's fields,
the tool's own ``host/port/database/user/password``. What none of them sets comes from libpq's
defaults and ``PGHOST``/``PGPORT``/``PGUSER``/``PGPASSWORD``/``PGDATABASE``.

**Params.** A list binds to PostgreSQL placeholders ``$1, $2`` (NoETL's form) or to ``%s``; a
mapping binds to ``%(name)s``. Values are sent separately from the SQL text (server-side
binding), so they are never string-formatted into it. A mapping value is sent as ``jsonb``, a
list as an array (``= ANY($1)``). Params need a single statement.

**Scripts.** Without params, ``query`` may hold several statements (``CREATE ...; INSERT ...;
SELECT ...``): they run as one simple-protocol batch, which PostgreSQL runs as one implicit
transaction (all or nothing), and the *last* statement's rows are returned. A single
statement runs in autocommit, so ``CREATE DATABASE``/``VACUUM`` work.

**Result.** With ``format: arrow``, a ``pyarrow.Table`` from :func:`query_arrow` (ADBC: no Python
object per value), the form a ``product:`` step publishes without conversion. Otherwise
``{columns, rows, row_count}`` when the last statement returns rows (``SELECT``,
``... RETURNING``), else ``{affected_rows}``. Values are JSON-compatible, as in NoETL's worker:
``numeric`` is its exact decimal text, timestamps are ISO-8601 strings (``timestamptz`` in
UTC), ``date``/``time`` ISO strings, ``uuid`` a string, ``bytea`` base64, ``json(b)`` parsed,
arrays lists, ``interval`` and ranges PostgreSQL's text.

**Errors.** An SQL error fails the step with the server's message and SQLSTATE (``syntax error
at or near "SELEC" (SQLSTATE 42601)``); a server that cannot be reached or refuses the login
fails it naming ``host:port``, the user and the credential alias. Passwords never appear in
messages: they are removed from every message (and registered for
:func:`noetl_dagster.core.secrets.redact`).

**Driver choice.** The tool runs on **psycopg 3** (``psycopg[binary]``): it binds ``$n``
placeholders natively (``RawCursor``) as well as ``%s``/``%(name)s``, runs multi-statement
scripts through the simple query protocol and walks every result set (``nextset``), exposes the
server's diagnostics (SQLSTATE, detail, hint), and supports autocommit. **ADBC**
(``adbc-driver-postgresql``) is used by :func:`query_arrow`, which returns a ``pyarrow.Table``
built column-wise by the driver (COPY binary, no Python object per value) for the Arrow/Parquet
paths. ADBC is not used for the tool's rows because its DBAPI prepares every statement (no
scripts: "cannot insert multiple commands into a prepared statement"), has no named params,
decodes ``numeric``/``inet``/ranges as opaque values, fails on composite types, and the tool
has to hand back Python objects anyway. :func:`query_arrow` falls back to psycopg (rows to
Arrow) for scripts, mapping params, composite/opaque types, or when ADBC is not installed.
"""

from __future__ import annotations

import base64
import os
import re
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence
from urllib.parse import quote, quote_plus
from uuid import UUID

from noetl_dagster.core.binding import render_sql, split_statements
from noetl_dagster.core.secrets import secret_safe
from noetl_dagster.runtime.tools.base import Tool, ToolContext, ToolError, result_format
from noetl_dagster.core import secrets as creds

if TYPE_CHECKING:  # pragma: no cover
    import psycopg
    import pyarrow as pa

#: fields of NoETL's ``postgres`` credential type (and plain names) -> libpq keywords
_FIELD_KEYWORDS: dict[str, str] = {
    "db_host": "host", "host": "host", "hostname": "host",
    "db_port": "port", "port": "port",
    "db_user": "user", "user": "user", "username": "user",
    "db_password": "password", "password": "password",
    "db_name": "dbname", "database": "dbname", "dbname": "dbname", "db": "dbname",
    "sslmode": "sslmode", "sslrootcert": "sslrootcert", "sslcert": "sslcert", "sslkey": "sslkey",
    "application_name": "application_name", "options": "options",
    "target_session_attrs": "target_session_attrs", "connect_timeout": "connect_timeout",
}
_CONNECTION_STRING_KEYS = ("connection_string", "dsn", "url", "conninfo", "connection")
_DEFAULT_CONNECT_TIMEOUT = 10
_DOLLAR_PARAM = re.compile(r"\$\d+")
_READ_ONLY = re.compile(r"^\s*(\(\s*)*(select|with|values|table|show|explain)\b", re.IGNORECASE)
#: types whose Python form is awkward in results: read as PostgreSQL's text
_TEXT_TYPES = ("interval", "record", "int4range", "int8range", "numrange", "daterange", "tsrange",
               "tstzrange", "int4multirange", "int8multirange", "nummultirange",
               "datemultirange", "tsmultirange", "tstzmultirange")


# --------------------------------------------------------------------------------- connection
@dataclass(frozen=True)
class PgConnection:
    """Where to connect: a libpq ``key=value`` string plus what error messages may show.

    ``conninfo`` holds the password: never log it or put it in a message; use :meth:`scrub`.
    """

    conninfo: str = field(repr=False)
    host: str
    port: str
    user: str | None
    database: str | None
    alias: str | None = None
    secrets: tuple[str, ...] = field(default=(), repr=False)

    def where(self) -> str:
        """``host:port`` (database, user, credential) for messages; never the password."""
        details = []
        if self.database:
            details.append(f"database {self.database!r}")
        if self.user:
            details.append(f"user {self.user!r}")
        if self.alias:
            details.append(f"credential {self.alias!r}")
        return f"{self.host}:{self.port}" + (f" ({', '.join(details)})" if details else "")

    def scrub(self, text: Any) -> str:
        """``text`` without this connection's password (nor any secret resolved so far)."""
        out = str(text)
        for secret in sorted(self.secrets, key=len, reverse=True):
            out = out.replace(secret, creds.MASK)
        return creds.redact(out)


@secret_safe
def connection_from_config(cfg: Mapping[str, Any], ctx: ToolContext | None = None) -> PgConnection:
    """A :class:`PgConnection` from a rendered tool config (``auth``, a DSN and/or fields).

    ``cfg["auth"]`` is a credential alias resolved with ``ctx.credential``; its fields may use
    NoETL's names (``db_host db_port db_user db_password db_name``), plain libpq names, or a
    ``connection_string``/``dsn``/``url``.
    """
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    alias = _alias(cfg.get("auth"))
    cred: Mapping[str, Any] = {}
    if alias:
        if ctx is None:
            raise ToolError(f"postgres: credential {alias!r} needs a tool context to resolve")
        cred = ctx.credential(alias)
        if not isinstance(cred, Mapping):
            raise ToolError(f"postgres: credential {alias!r} must resolve to a mapping of fields")

    base = ""
    for source in (cred, cfg):
        for key in _CONNECTION_STRING_KEYS:
            value = source.get(key)
            if isinstance(value, str) and value.strip():
                base = value.strip()
                break
    if not base and isinstance(cred.get("value"), str) and ("=" in cred["value"] or "://" in cred["value"]):
        base = cred["value"]  # NOETL_CREDENTIAL_<ALIAS>=postgresql://...

    overrides: dict[str, Any] = {}
    for source in (cred, cfg):
        for key, keyword in _FIELD_KEYWORDS.items():
            value = source.get(key)
            if value is not None and value != "":
                overrides[keyword] = str(value)
    overrides.setdefault("connect_timeout", str(cfg.get("connect_timeout") or _DEFAULT_CONNECT_TIMEOUT))

    secrets = {s for s in (overrides.get("password"), cred.get("password")) if s}
    for s in list(secrets):
        creds.register_secret(s)
    if base:
        creds.register_connection_secret(base)
    try:
        conninfo = make_conninfo(base, **overrides)
        parts = conninfo_to_dict(conninfo)
    except Exception as exc:  # noqa: BLE001 - a malformed connection string
        message = str(exc)
        for s in secrets:
            message = message.replace(s, creds.MASK)
        where = f" (credential {alias!r})" if alias else ""
        raise ToolError(f"postgres: invalid connection settings{where}: {creds.redact(message)}") from None
    if parts.get("password"):
        secrets.add(str(parts["password"]))
        creds.register_secret(parts["password"])
    forms: set[str] = set()
    for s in secrets:
        forms.update({s, quote(s, safe=""), quote_plus(s)})
    host = str(parts.get("hostaddr") or parts.get("host") or os.environ.get("PGHOST") or "localhost")
    port = str(parts.get("port") or os.environ.get("PGPORT") or 5432)
    user = str(parts.get("user") or os.environ.get("PGUSER") or "") or None
    database = str(parts.get("dbname") or os.environ.get("PGDATABASE") or "") or None
    return PgConnection(conninfo, host, port, user, database, alias,
                        tuple(f for f in forms if f))


def _alias(auth: Any) -> str | None:
    if auth is None or auth == "":
        return None
    if isinstance(auth, str):
        return auth.strip() or None
    if isinstance(auth, Mapping):
        value = auth.get("credential") or auth.get("alias") or auth.get("name")
        if isinstance(value, str) and value.strip():
            return value.strip()
    raise ToolError(f"postgres: `auth` must be a credential alias (a string), got {type(auth).__name__}")


@secret_safe
def connect(conn: PgConnection, *, autocommit: bool = True) -> "psycopg.Connection":
    """Open a psycopg connection, turning failures into clear, password-free messages."""
    import psycopg

    try:
        return psycopg.connect(conn.conninfo, autocommit=autocommit)
    except psycopg.Error as exc:
        raise ToolError(_connect_message(conn, str(exc))) from None


def _connect_message(conn: PgConnection, raw: str) -> str:
    text = re.sub(r"^(IO: )?(\[libpq\] )?(Failed to connect: )?(connection failed: )?", "", raw.strip())
    # libpq: 'connection to server at "h" (ip), port p failed: FATAL:  message'
    reason = re.sub(r'^connection to server (at|on) .*? failed: ', "", text, flags=re.S)
    reason = re.sub(r"^(FATAL|ERROR):\s+", "", reason.strip())
    reason = re.sub(r"\s*Is the server running on that host and accepting TCP/IP connections\?", "", reason)
    reason = " ".join(reason.split())
    lowered = reason.lower()
    if "password authentication failed" in lowered or "no password supplied" in lowered \
            or "authentication failed" in lowered:
        fix = (f"check the password of credential {conn.alias!r}" if conn.alias
               else "check `password` (or use `auth: <credential alias>`)")
        message = f"postgres: login refused by {conn.where()}: {reason}; {fix}"
    elif "does not exist" in lowered:
        message = f"postgres: {reason} on {conn.where()}"
    else:
        message = (f"postgres: cannot connect to {conn.where()}: {reason or 'connection failed'}; "
                   "check host and port, and that the server is running and reachable")
    return conn.scrub(message)


def _query_message(conn: PgConnection, exc: Exception, params: Any) -> str:
    diag = getattr(exc, "diag", None)
    sqlstate = getattr(diag, "sqlstate", None) or getattr(exc, "sqlstate", None)
    text = str(exc).strip()
    text = re.sub(r"^(INVALID_ARGUMENT|IO|INVALID_STATE|UNKNOWN): (\[libpq\] )?", "", text)
    text = re.sub(r"^Failed to (prepare|execute) query: (ERROR:\s+)?", "", text)
    text = re.sub(r"\s*Query was: .*$", "", text, flags=re.S)
    text = re.sub(r"\. SQLSTATE: \w+$", "", text)
    first, _, rest = text.partition("\n")
    message = f"postgres: {first.strip()}"
    if sqlstate:
        message += f" (SQLSTATE {sqlstate})"
    if params and "cannot insert multiple commands into a prepared statement" in text:
        message += ("; params bind to one statement only: put the other statements in a step "
                    "of their own, or drop `params`")
    if rest.strip():  # the server's LINE/DETAIL/HINT lines
        message += "\n" + rest.rstrip()
    return conn.scrub(message)


# ------------------------------------------------------------------------------------ running
def _bind_params(params: Any) -> Any:
    """Rendered ``params`` as psycopg parameters: dicts as jsonb, lists as arrays."""
    from psycopg.types.json import Jsonb

    def one(value: Any) -> Any:
        if isinstance(value, Mapping):
            return Jsonb(dict(value))
        if isinstance(value, (list, tuple)):
            return [one(v) for v in value]
        return value

    if params is None:
        return None
    if isinstance(params, Mapping):
        return {str(k): one(v) for k, v in params.items()} or None
    if isinstance(params, (list, tuple)):
        return [one(v) for v in params] or None
    return [one(params)]


def _cursor(con: "psycopg.Connection", query: str, params: Any) -> "psycopg.Cursor":
    import psycopg

    if isinstance(params, list) and _DOLLAR_PARAM.search(query):
        return psycopg.RawCursor(con)
    return con.cursor()


def _prepare_session(con: "psycopg.Connection", schema: Any, timeout_seconds: Any) -> None:
    from psycopg import sql
    from psycopg.types.string import TextLoader

    for name in _TEXT_TYPES:
        try:
            con.adapters.register_loader(name, TextLoader)
        except Exception:  # noqa: BLE001 - a type this server does not know
            pass
    if schema:
        names = [schema] if isinstance(schema, str) else list(schema)
        names = [n.strip() for s in names for n in str(s).split(",") if n.strip()]
        path = ", ".join(sql.Identifier(n).as_string(con) for n in names)
        con.execute("SELECT set_config('search_path', %s, false)", [path])
    if timeout_seconds:
        millis = int(float(timeout_seconds) * 1000)
        con.execute("SELECT set_config('statement_timeout', %s, false)", [str(millis)])


def json_value(value: Any) -> Any:
    """A database value as NoETL's worker returns it (JSON-compatible)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return (value.astimezone(timezone.utc) if value.tzinfo else value).isoformat()
    if isinstance(value, (date, time)):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_value(v) for v in value]
    if isinstance(value, timedelta):
        return str(value)
    return str(value)


def _result_sets(cur: "psycopg.Cursor") -> Iterator[tuple[list[str] | None, list[tuple] | int]]:
    while True:
        if cur.description is not None:
            yield [d.name for d in cur.description], cur.fetchall()
        else:
            yield None, max(cur.rowcount, 0)
        if not cur.nextset():
            return


@secret_safe
def execute(conn: PgConnection, query: str, params: Any = None, *, schema: Any = None,
            as_objects: bool = True, timeout_seconds: Any = None) -> dict[str, Any]:
    """Run ``query`` and return the tool's result (see the module docstring)."""
    import psycopg

    bound = _bind_params(params)
    if bound is not None and len(split_statements(query)) > 1:
        if not isinstance(bound, list):
            raise ToolError("postgres: named params bind to one statement only, and the query has "
                            f"{len(split_statements(query))}: put the other statements in a step "
                            "of their own, or drop `params`")
        return _execute_script(conn, query, bound, schema=schema, as_objects=as_objects,
                               timeout_seconds=timeout_seconds)
    with connect(conn) as con:
        try:
            _prepare_session(con, schema, timeout_seconds)
            cur = _cursor(con, query, bound)
            cur.execute(query, bound) if bound is not None else cur.execute(query)
            last: tuple[list[str] | None, Any] = (None, 0)
            for last in _result_sets(cur):
                pass
        except psycopg.Error as exc:
            raise ToolError(_query_message(conn, exc, bound)) from None
    return _tool_result(last, as_objects)



def _tool_result(last: tuple[list[str] | None, Any], as_objects: bool) -> dict[str, Any]:
    """The last result set as NoETL's ``{columns, rows, row_count}``, or ``{affected_rows}``."""
    columns, data = last
    if columns is None:
        return {"affected_rows": data}
    if as_objects:
        rows: list[Any] = [{c: json_value(v) for c, v in zip(columns, row)} for row in data]
    else:
        rows = [[json_value(v) for v in row] for row in data]
    return {"columns": columns, "rows": rows, "row_count": len(rows)}

def split_bound(query: str, params: list[Any]) -> list[tuple[str, list[Any]]]:
    """A script's statements, each with its own ``$n`` placeholders renumbered from ``$1``."""
    out = []
    for statement in split_statements(query):
        numbers: dict[int, int] = {}

        def renumber(m: re.Match) -> str:
            n = int(m.group(0)[1:])
            if n not in numbers:
                numbers[n] = len(numbers) + 1
            return f"${numbers[n]}"

        text = _replace_outside_literals(statement, _DOLLAR_PARAM, renumber)
        values = [params[n - 1] for n in sorted(numbers, key=lambda n: numbers[n])] if numbers else []
        if any(n > len(params) for n in numbers):
            raise ToolError(f"postgres: placeholder ${max(numbers)} has no value "
                            f"({len(params)} params)")
        out.append((text, values))
    return out


def _replace_outside_literals(sql: str, pattern: "re.Pattern[str]", func: Any) -> str:
    """``pattern`` replaced by ``func`` outside quotes, dollar quotes and comments."""
    out, i, n = [], 0, len(sql)
    while i < n:
        c = sql[i]
        if c in "'\"":
            j = i + 1
            while j < n and not (sql[j] == c and not sql.startswith(c * 2, j)):
                j += 2 if sql.startswith(c * 2, j) else 1
            out.append(sql[i:j + 1])
            i = j + 1
        elif sql.startswith("--", i) or sql.startswith("/*", i):
            end = sql.find("\n" if sql[i + 1] == "-" else "*/", i + 2)
            end = n if end < 0 else end + (0 if sql[i + 1] == "-" else 2)
            out.append(sql[i:end])
            i = end
        else:
            tag = re.match(r"\$([A-Za-z_][A-Za-z0-9_]*)?\$", sql[i:]) if c == "$" else None
            if tag:
                close = sql.find(tag.group(0), i + len(tag.group(0)))
                close = n if close < 0 else close + len(tag.group(0))
                out.append(sql[i:close])
                i = close
                continue
            m = pattern.match(sql, i)
            if m:
                out.append(func(m))
                i = m.end()
            else:
                out.append(c)
                i += 1
    return "".join(out)


def _execute_script(conn: PgConnection, query: str, bound: list[Any], *, schema: Any,
                    as_objects: bool, timeout_seconds: Any) -> dict[str, Any]:
    """A script whose statements bind values: each statement on its own, in one transaction."""
    import psycopg

    statements = split_bound(query, bound)
    with connect(conn, autocommit=False) as con:
        try:
            _prepare_session(con, schema, timeout_seconds)
            last: tuple[list[str] | None, Any] = (None, 0)
            for text, values in statements:
                cur = psycopg.RawCursor(con) if values else con.cursor()
                cur.execute(text, values) if values else cur.execute(text)
                for last in _result_sets(cur):
                    pass
            con.commit()
        except psycopg.Error as exc:
            raise ToolError(_query_message(conn, exc, bound)) from None
    return _tool_result(last, as_objects)


# --------------------------------------------------------------------------------------- Arrow
@secret_safe
def query_arrow(connection: PgConnection | Mapping[str, Any] | str, query: str, params: Any = None,
                *, schema: Any = None, engine: str = "auto", ctx: ToolContext | None = None,
                timeout_seconds: Any = None) -> "pa.Table":
    """Run ``query`` and return its (last statement's) rows as a ``pyarrow.Table``.

    ``connection`` is a :class:`PgConnection`, a tool-like config mapping (``auth`` needs
    ``ctx``) or a connection string. ``engine``: ``"auto"`` (ADBC when it can, else
    psycopg), ``"adbc"`` or ``"psycopg"``. With ADBC, list params bind to ``$1, $2``. A
    statement without rows gives an empty table. Example::

        table = query_arrow("postgresql://etl@db/warehouse", "SELECT * FROM t WHERE d > $1",
                            ["2024-01-01"])
    """
    if isinstance(connection, str):
        connection = connection_from_config({"connection_string": connection}, ctx)
    elif not isinstance(connection, PgConnection):
        connection = connection_from_config(connection, ctx)
    bound = _bind_params(params)
    single = len(split_statements(query)) <= 1
    use_adbc = engine == "adbc" or (engine == "auto" and single and not isinstance(bound, dict)
                                    and not _has_percent_params(query, bound) and _adbc_available())
    if engine not in ("auto", "adbc", "psycopg"):
        raise ToolError(f"query_arrow: engine must be auto, adbc or psycopg, not {engine!r}")
    if use_adbc:
        table = _adbc_query(connection, query, bound, schema, timeout_seconds,
                            fallback_ok=engine == "auto")
        if table is not None:
            return table
    return _psycopg_arrow(connection, query, bound, schema, timeout_seconds)


def _has_percent_params(query: str, bound: Any) -> bool:
    return bound is not None and not _DOLLAR_PARAM.search(query)


def _adbc_available() -> bool:
    try:
        import adbc_driver_postgresql.dbapi  # noqa: F401
    except ImportError:
        return False
    return True


def _adbc_query(conn: PgConnection, query: str, params: Any, schema: Any, timeout_seconds: Any,
                *, fallback_ok: bool) -> "pa.Table | None":
    import adbc_driver_manager
    import adbc_driver_postgresql.dbapi as adbc

    try:
        con = adbc.connect(conn.conninfo, autocommit=True)
    except adbc_driver_manager.Error as exc:
        raise ToolError(_connect_message(conn, str(exc))) from None
    try:
        with con, con.cursor() as cur:
            if schema:
                names = [schema] if isinstance(schema, str) else list(schema)
                names = [n.strip() for s in names for n in str(s).split(",") if n.strip()]
                path = ", ".join('"' + n.replace('"', '""') + '"' for n in names)
                cur.execute("SELECT set_config('search_path', $1, false)", [path])
                cur.fetchall()
            if timeout_seconds:
                cur.execute("SELECT set_config('statement_timeout', $1, false)",
                            [str(int(float(timeout_seconds) * 1000))])
                cur.fetchall()
            try:
                cur.execute(query, params) if params else cur.execute(query)
                table = cur.fetch_arrow_table()
            except adbc_driver_manager.Error as exc:
                server_error = getattr(exc, "sqlstate", None) not in (None, "", "00000")
                if fallback_ok and not server_error and _READ_ONLY.match(query):
                    return None  # a type ADBC cannot decode: psycopg reads it
                raise ToolError(_query_message(conn, exc, params)) from None
    except adbc_driver_manager.Error as exc:
        raise ToolError(_query_message(conn, exc, params)) from None
    opaque_binary = [f for f in table.schema if _is_opaque(f.type)
                     and not _storage_is_string(f.type)]
    if opaque_binary and fallback_ok and _READ_ONLY.match(query):
        return None  # inet, ranges...: ADBC hands their binary wire form; psycopg reads text
    return _plain_arrow(table)


def _is_opaque(t: Any) -> bool:
    import pyarrow as pa

    return isinstance(t, getattr(pa, "OpaqueType", ()))


def _storage_is_string(t: Any) -> bool:
    import pyarrow as pa

    return pa.types.is_string(t.storage_type) or pa.types.is_large_string(t.storage_type)


def _plain_arrow(table: "pa.Table") -> "pa.Table":
    """Opaque extension columns (``numeric`` as text) as their plain storage type."""
    import pyarrow as pa

    columns, fields = [], []
    changed = False
    for f, col in zip(table.schema, table.columns):
        if _is_opaque(f.type):
            col = pa.chunked_array([c.storage for c in col.chunks], type=f.type.storage_type)
            f = pa.field(f.name, f.type.storage_type, f.nullable, f.metadata)
            changed = True
        columns.append(col)
        fields.append(f)
    return pa.Table.from_arrays(columns, schema=pa.schema(fields, table.schema.metadata)) if changed else table


_OID_ARROW = {
    "int2": "int16", "int4": "int32", "int8": "int64", "oid": "int64", "float4": "float32",
    "float8": "float64", "bool": "bool_", "text": "string", "varchar": "string", "bpchar": "string",
    "name": "string", "date": "date32", "bytea": "binary", "json": "string", "jsonb": "string",
    "uuid": "string", "numeric": "string", "interval": "string",
}


def _arrow_type(type_name: str | None) -> "pa.DataType | None":
    import pyarrow as pa

    if type_name == "timestamp":
        return pa.timestamp("us")
    if type_name == "timestamptz":
        return pa.timestamp("us", tz="UTC")
    name = _OID_ARROW.get(type_name or "")
    return getattr(pa, name)() if name else None


def _psycopg_arrow(conn: PgConnection, query: str, bound: Any, schema: Any,
                   timeout_seconds: Any) -> "pa.Table":
    import psycopg
    import pyarrow as pa

    with connect(conn) as con:
        try:
            _prepare_session(con, schema, timeout_seconds)
            from psycopg.types.string import TextLoader

            for name in ("uuid", "json", "jsonb", "inet", "cidr"):
                try:
                    con.adapters.register_loader(name, TextLoader)
                except Exception:  # noqa: BLE001
                    pass
            cur = _cursor(con, query, bound)
            cur.execute(query, bound) if bound is not None else cur.execute(query)
            columns: list[str] | None = None
            data: Any = 0
            types: list[str | None] = []
            while True:
                if cur.description is not None:
                    columns = [d.name for d in cur.description]
                    types = []
                    for d in cur.description:
                        info = con.adapters.types.get(d.type_code)
                        types.append(info.name if info else None)
                    data = cur.fetchall()
                else:
                    columns, data = None, 0
                if not cur.nextset():
                    break
        except psycopg.Error as exc:
            raise ToolError(_query_message(conn, exc, bound)) from None
    if columns is None:
        return pa.table({})
    arrays = []
    for i, type_name in enumerate(types):
        arrays.append(_to_arrow_column([row[i] for row in data], type_name))
    return pa.Table.from_arrays(arrays, names=columns)


def _to_arrow_column(values: Sequence[Any], type_name: str | None) -> "pa.Array":
    import pyarrow as pa

    wanted = _arrow_type(type_name)
    if wanted is not None and pa.types.is_string(wanted):
        return pa.array([None if v is None else str(v) for v in values], pa.string())
    for attempt in (wanted, None):
        if attempt is None and wanted is None and not values:
            return pa.array([], pa.null())
        try:
            return pa.array(values, type=attempt) if attempt is not None else pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError):
            continue
    return pa.array([None if v is None else str(v) for v in values], pa.string())


# ------------------------------------------------------------------------------------ the tool
class PostgresTool(Tool):
    kind = "postgres"

    @secret_safe
    def run(self, config: dict[str, Any], ctx: ToolContext) -> Any:
        key = "query" if config.get("query") is not None else "command"
        cfg = ctx.render({k: v for k, v in config.items() if k not in ("query", "command")})
        query, params = bind_query(config.get(key), cfg.get("params"), ctx.scope,
                                   script=bool(cfg.get("script")), tool="postgres")
        if not isinstance(query, str) or not query.strip():
            raise ToolError("postgres: `query` (or `command`) rendered empty")
        conn = connection_from_config(cfg, ctx)
        if result_format(cfg) == "arrow":
            return query_arrow(conn, query, params, schema=cfg.get("schema"),
                               timeout_seconds=cfg.get("timeout_seconds"))
        return execute(conn, query, params, schema=cfg.get("schema"),
                       as_objects=bool(cfg.get("as_objects", True)),
                       timeout_seconds=cfg.get("timeout_seconds"))


def bind_query(source: Any, params: Any, scope: Mapping[str, Any], *, script: bool = False,
               tool: str = "postgres", text_type: str = "text") -> tuple[Any, Any]:
    """Render ``source`` with its ``{{ }}`` values as ``$N`` placeholders; the full params.

    The values follow the tool's own list ``params`` (``$1..$k`` stay theirs). A query whose
    templates bind values cannot also use ``%s``/``%(name)s`` or ``$name`` params (one
    placeholder style per statement): that is a ToolError naming the fix.
    """
    if source is None:
        return None, params
    own = params
    if own is not None and not isinstance(own, (list, tuple, Mapping)):
        own = [own]
    first = len(own) + 1 if isinstance(own, (list, tuple)) else 1
    query, values = render_sql(source if isinstance(source, list) else str(source), scope,
                               first=first, text_type=text_type, script=script)
    if not values:
        return query, params
    if isinstance(own, Mapping) and own:
        raise ToolError(f"{tool}: the query's templates are bound as $1..$n, which cannot be mixed "
                        "with named `params`; pass those values as templates too, or as a list")
    if own and not _DOLLAR_PARAM.search(str(source)):
        raise ToolError(f"{tool}: the query's templates are bound as $n placeholders, which cannot be "
                        "mixed with ?/%s `params`; write the query's own placeholders as $1..$k")
    return query, [*(own or []), *values]
