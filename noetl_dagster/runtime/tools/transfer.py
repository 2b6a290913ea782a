"""``kind: transfer``: move rows from a source to a target as Arrow record batches.

Config (rendered as templates)::

    tool:
      kind: transfer
      chunk_size: 10000                    # rows per batch (default 10000)
      source:
        type: postgres                     # postgres | duckdb | http
        auth: pg_src                       # postgres: credential alias / connection_string / fields
        query: SELECT * FROM orders WHERE day = $1
        params: ["{{ workload.day }}"]
      target:
        type: duckdb                       # postgres | duckdb
        db_path: /data/mart.duckdb         # duckdb (default :memory:)
        table: orders                      # may be schema-qualified: mart.orders
        mode: upsert                       # append (default) | replace | upsert
        key: [id]                          # upsert key columns (alias `keys`)
        mapping: {order_id: id}            # optional: target column <- source column

Sources (no Python object per value for the databases):

* ``postgres``: ``query`` (+ ``params`` for ``$1``) through an ADBC cursor's
  ``fetch_record_batch()`` reader; types ADBC hands as opaque binary (``inet``, ranges) and
  ``%s``/named params go through :func:`postgres.query_arrow` (psycopg) instead. Connection
  fields as in ``kind: postgres`` (``auth``, ``connection_string``, ``host``...); a mapping
  ``connection`` is read as those fields.
* ``duckdb``: ``query`` (+ ``params``) on ``db_path`` as an Arrow reader of ``chunk_size``
  batches (``con.sql(q).to_arrow_reader(n)``; ``fetch_record_batch(n)`` on older DuckDB).
* ``http``: a ``kind: http`` request (``url``, ``method``, ``headers``, ``params``, ``json``,
  ``auth``...); the JSON at ``data_path`` (dotted, list indexes as numbers: ``data.items``)
  must be a list of objects (or one object) and becomes ``pa.Table.from_pylist``. Nested
  values are stored as JSON text. A non-2xx answer fails the step.

* ``snowflake``: ``query`` (+ ``params`` for ``?``) with ``auth``/connection fields as in
  ``kind: snowflake``; the connector's Arrow fetch (:func:`snowflake.source_batches`).

Targets (``mode`` may also be given at the top level):

* ``postgres``: a table that does not exist is created from the first batch with ADBC
  ``adbc_ingest`` (COPY binary), and ``upsert`` gives it a primary key on ``key``. Into an
  existing table each batch is ingested into a temporary table, then
  ``INSERT INTO t (cols) SELECT col::type ... [ON CONFLICT (key) DO UPDATE SET ...]`` (the
  casts adapt Arrow's types to the table's columns). ``replace`` drops the table first. The
  whole transfer is one transaction: on an error nothing is written.
* ``duckdb``: ``CREATE TABLE IF NOT EXISTS t AS SELECT * FROM batch LIMIT 0`` then
  ``INSERT INTO t BY NAME SELECT * FROM batch``; ``replace`` drops first; ``upsert`` uses
  ``INSERT OR REPLACE`` when the table has a primary key, else deletes the batch's keys and
  inserts. One transaction too.

* ``snowflake``: bound ``INSERT``s (``executemany``) in one transaction; a missing table is
  created from the source's Arrow schema, ``replace`` truncates, ``upsert`` deletes the batch's
  keys first (:class:`snowflake.SnowflakeTarget`).

Result ``{rows_transferred, batches, source_type, target_type, table, mode}``.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping

from noetl_dagster.core.binding import split_statements
from noetl_dagster.core.secrets import secret_safe
from noetl_dagster.playbook.kinds import TRANSFER_MODES as MODES, TRANSFER_SOURCE_TYPES as SOURCE_TYPES, \
    TRANSFER_TARGET_TYPES as TARGET_TYPES
from noetl_dagster.runtime.tools.base import ErrorResult, Tool, ToolContext, ToolError, get_tool
from noetl_dagster.runtime.tools.postgres import (
    PgConnection,
    _adbc_available,
    _connect_message,
    _has_percent_params,
    _is_opaque,
    _plain_arrow,
    _query_message,
    _storage_is_string,
    bind_query,
    connection_from_config,
    query_arrow,
)
from noetl_dagster.runtime.tools.snowflake import SnowflakeTarget, source_batches

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa

DEFAULT_CHUNK_SIZE = 10000
_STAGE = "_noetl_transfer_stage"
_SOURCE_ONLY_KEYS = ("type", "data_path", "query", "command")


# ------------------------------------------------------------------------------------ helpers
def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _split_table(table: str) -> tuple[str | None, str]:
    """``schema.table`` (either part may be double-quoted) -> (schema, table)."""
    parts = re.findall(r'"((?:[^"]|"")*)"|([^."]+)', table.strip())
    names = [q.replace('""', '"') if q else u.strip() for q, u in parts]
    names = [n for n in names if n]
    if not names or len(names) > 2:
        raise ToolError(f"transfer: target table {table!r} must be `table` or `schema.table`")
    return (names[0], names[1]) if len(names) == 2 else (None, names[0])


def _qualified(schema: str | None, table: str) -> str:
    return (_quote_ident(schema) + "." if schema else "") + _quote_ident(table)


def _keys(target: Mapping[str, Any]) -> list[str]:
    key = target.get("key", target.get("keys", target.get("primary_key")))
    if key is None or key == "" or key == []:
        return []
    if isinstance(key, str):
        return [k.strip() for k in key.split(",") if k.strip()]
    if isinstance(key, (list, tuple)):
        return [str(k).strip() for k in key if str(k).strip()]
    raise ToolError("transfer: target `key` must be a column name or a list of column names")


def _connection_fields(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """A postgres side's config, with a mapping ``connection:`` flattened into it."""
    out = dict(cfg)
    connection = out.get("connection")
    if isinstance(connection, Mapping):
        out.pop("connection")
        for k, v in connection.items():
            out.setdefault(k, v)
    return out


def rechunk(batches: Iterable["pa.RecordBatch"], size: int) -> Iterator["pa.RecordBatch"]:
    """Record batches of exactly ``size`` rows (the last one may be shorter), none empty."""
    import pyarrow as pa

    pending: list[pa.RecordBatch] = []
    count = 0
    for batch in batches:
        while batch.num_rows:
            take = min(size - count, batch.num_rows)
            pending.append(batch.slice(0, take))
            count += take
            batch = batch.slice(take)
            if count == size:
                yield _combine(pending)
                pending, count = [], 0
    if count:
        yield _combine(pending)


def _combine(batches: list["pa.RecordBatch"]) -> "pa.RecordBatch":
    import pyarrow as pa

    if len(batches) == 1:
        return batches[0]
    return pa.Table.from_batches(batches).combine_chunks().to_batches()[0]


def _apply_mapping(batch: "pa.RecordBatch", mapping: Mapping[str, Any] | None) -> "pa.RecordBatch":
    """Select and rename columns: ``{target_column: source_column}``."""
    import pyarrow as pa

    if not mapping:
        return batch
    names = batch.schema.names
    arrays, fields = [], []
    for target_col, source_col in mapping.items():
        source_col = str(source_col)
        if source_col not in names:
            raise ToolError(f"transfer: mapping {target_col!r}: source column {source_col!r} not in "
                            f"the source's columns {names}")
        arrays.append(batch.column(names.index(source_col)))
        fields.append(pa.field(str(target_col), batch.schema.field(source_col).type))
    return pa.RecordBatch.from_arrays(arrays, schema=pa.schema(fields))


# ------------------------------------------------------------------------------------ sources
class _Source:
    """A source's schema (when known) and its record batches."""

    def __init__(self, batches: Iterator["pa.RecordBatch"], schema: "pa.Schema | None" = None) -> None:
        self.batches = batches
        self.schema = schema


def _postgres_source(cfg: Mapping[str, Any], ctx: ToolContext) -> _Source:
    query = cfg.get("query") if cfg.get("query") is not None else cfg.get("command")
    if not isinstance(query, str) or not query.strip():
        raise ToolError("transfer: postgres source needs `query`")
    conn = connection_from_config(_connection_fields(cfg), ctx)
    params = cfg.get("params")
    if isinstance(params, (list, tuple)) and not params:
        params = None
    if (not _adbc_available() or isinstance(params, Mapping) or len(split_statements(query)) > 1
            or _has_percent_params(query, params)):
        table = _source_table(conn, query, params, cfg)
        return _Source(iter(table.to_batches()), table.schema)
    return _adbc_source(conn, query, params, cfg)


def _source_table(conn: PgConnection, query: str, params: Any, cfg: Mapping[str, Any]) -> "pa.Table":
    try:
        return query_arrow(conn, query, params, schema=cfg.get("schema"), engine="psycopg")
    except ToolError as exc:
        raise ToolError(f"transfer: source {exc}") from None


def _adbc_source(conn: PgConnection, query: str, params: Any, cfg: Mapping[str, Any]) -> _Source:
    import adbc_driver_manager
    import adbc_driver_postgresql.dbapi as adbc
    import pyarrow as pa

    if params is not None and not isinstance(params, (list, tuple)):
        params = [params]
    try:
        con = adbc.connect(conn.conninfo, autocommit=True)
    except adbc_driver_manager.Error as exc:
        raise ToolError("transfer: source " + _connect_message(conn, str(exc))) from None
    try:
        cur = con.cursor()
        if cfg.get("schema"):
            schema = cfg["schema"]
            names = [schema] if isinstance(schema, str) else list(schema)
            path = ", ".join(_quote_ident(n.strip()) for s in names for n in str(s).split(",") if n.strip())
            cur.execute("SELECT set_config('search_path', $1, false)", [path])
            cur.fetchall()
        cur.execute(query, params) if params else cur.execute(query)
        reader = cur.fetch_record_batch()
    except adbc_driver_manager.Error as exc:
        con.close()
        raise ToolError("transfer: source " + _query_message(conn, exc, params)) from None
    if any(_is_opaque(f.type) and not _storage_is_string(f.type) for f in reader.schema):
        con.close()  # inet, ranges...: ADBC gives their binary wire form, psycopg reads text
        table = _source_table(conn, query, params, cfg)
        return _Source(iter(table.to_batches()), table.schema)
    schema = _plain_arrow(reader.schema.empty_table()).schema

    def batches() -> Iterator[pa.RecordBatch]:
        try:
            for batch in reader:
                yield from _plain_arrow(pa.Table.from_batches([batch])).to_batches()
        except adbc_driver_manager.Error as exc:
            raise ToolError("transfer: source " + _query_message(conn, exc, params)) from None
        finally:
            try:
                cur.close()  # (the cursor must live as long as its reader)
                con.close()
            except Exception:  # noqa: BLE001 - closing after an error
                pass

    return _Source(batches(), schema)


def _duckdb_source(cfg: Mapping[str, Any], chunk_size: int) -> _Source:
    import duckdb

    query = cfg.get("query") if cfg.get("query") is not None else cfg.get("command")
    if not isinstance(query, str) or not query.strip():
        raise ToolError("transfer: duckdb source needs `query`")
    db_path = str(cfg.get("db_path") or cfg.get("path") or ":memory:")
    params = cfg.get("params")
    if params is not None and not isinstance(params, (list, tuple, Mapping)):
        params = [params]
    try:
        con = duckdb.connect(db_path)
        relation = con.sql(query, params=params) if params else con.sql(query)
        if relation is None:
            con.close()
            raise ToolError("transfer: duckdb source `query` returns no rows (its last statement "
                            "must be a SELECT)")
        to_reader = getattr(relation, "to_arrow_reader", None) or relation.fetch_record_batch
        reader = to_reader(chunk_size)
    except duckdb.Error as exc:
        raise ToolError(f"transfer: source duckdb: {exc}") from None

    def batches() -> Iterator["pa.RecordBatch"]:
        try:
            yield from reader
        except duckdb.Error as exc:
            raise ToolError(f"transfer: source duckdb: {exc}") from None
        finally:
            con.close()

    return _Source(batches(), reader.schema)


def _json_at(data: Any, path: str | None) -> Any:
    if not path:
        return data
    current = data
    for part in str(path).split("."):
        if part == "":
            continue
        if isinstance(current, Mapping) and part in current:
            current = current[part]
        elif isinstance(current, list) and re.fullmatch(r"-?\d+", part) and -len(current) <= int(part) < len(current):
            current = current[int(part)]
        else:
            raise ToolError(f"transfer: http source: `data_path` {path!r}: no {part!r} in the response")
    return current


def _http_source(raw: Mapping[str, Any], cfg: Mapping[str, Any], ctx: ToolContext) -> _Source:
    import pyarrow as pa

    if not cfg.get("url") and not cfg.get("endpoint"):
        raise ToolError("transfer: http source needs `url`")
    request = {k: v for k, v in raw.items() if k not in _SOURCE_ONLY_KEYS}
    if raw.get("query") is not None and "params" not in request:
        request["params"] = raw["query"]
    response = get_tool("http").run(request, ctx)
    if isinstance(response, ErrorResult):  # a non-2xx answer: the transfer cannot read rows from it
        response = response.data
    status = response.get("status_code")
    if not (isinstance(status, int) and 200 <= status < 300):
        raise ToolError(f"transfer: http source {cfg.get('url') or cfg.get('endpoint')} answered "
                        f"{status}")
    data = _json_at(response.get("data"), cfg.get("data_path"))
    if isinstance(data, Mapping):
        data = [data]
    if not isinstance(data, list) or not all(isinstance(r, Mapping) for r in data):
        raise ToolError("transfer: http source: the data at `data_path` must be a list of objects, "
                        f"got {type(data).__name__}; set `data_path` to where the rows are")
    rows = [{str(k): (json.dumps(v) if isinstance(v, (Mapping, list)) else v) for k, v in r.items()}
            for r in data]
    try:
        table = pa.Table.from_pylist(rows)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise ToolError(f"transfer: http source: rows do not form a table: {exc}") from None
    for i, f in enumerate(table.schema):  # an all-null column has no type a database takes
        if pa.types.is_null(f.type):
            table = table.set_column(i, pa.field(f.name, pa.string()), table.column(i).cast(pa.string()))
    return _Source(iter(table.to_batches()), table.schema)


# ------------------------------------------------------------------------------------ targets
class _PostgresTarget:
    def __init__(self, cfg: Mapping[str, Any], ctx: ToolContext, table: str, mode: str,
                 keys: list[str]) -> None:
        import adbc_driver_manager
        import adbc_driver_postgresql.dbapi as adbc

        self.conn = connection_from_config(_connection_fields(cfg), ctx)
        self.schema, self.name = _split_table(table)
        self.target = _qualified(self.schema, self.name)
        self.mode, self.keys = mode, keys
        self.Error = adbc_driver_manager.Error
        try:
            self.con = adbc.connect(self.conn.conninfo, autocommit=False)
        except adbc_driver_manager.Error as exc:
            raise ToolError("transfer: target " + _connect_message(self.conn, str(exc))) from None
        self.cur = self.con.cursor()
        self.created = False
        self.columns: dict[str, str] = {}

    def _fail(self, exc: Exception) -> ToolError:
        return ToolError("transfer: target " + _query_message(self.conn, exc, None))

    def _exec(self, sql: str, params: Any = None) -> list[tuple]:
        self.cur.execute(sql, params) if params else self.cur.execute(sql)
        try:
            return self.cur.fetchall()
        except self.Error:
            return []

    def begin(self) -> None:
        try:
            if self.mode == "replace":
                self._exec(f"DROP TABLE IF EXISTS {self.target}")
            rows = self._exec(
                "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod)::text FROM pg_attribute a "
                "WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped "
                "ORDER BY a.attnum", [self.target])
        except self.Error as exc:
            raise self._fail(exc) from None
        self.columns = {name: type_name for name, type_name in rows}
        self.exists = bool(self.columns)

    def write(self, batch: "pa.RecordBatch") -> None:
        try:
            if not self.exists:
                self._create(batch)
            elif self.created and self.mode != "upsert":
                self.cur.adbc_ingest(self.name, batch, mode="append", db_schema_name=self.schema)
            else:
                self._merge(batch)
        except self.Error as exc:
            raise self._fail(exc) from None

    def _create(self, batch: "pa.RecordBatch | pa.Table") -> None:
        self.cur.adbc_ingest(self.name, batch, mode="create", db_schema_name=self.schema)
        if self.mode == "upsert":
            cols = ", ".join(_quote_ident(k) for k in self.keys)
            self._exec(f"ALTER TABLE {self.target} ADD PRIMARY KEY ({cols})")
        self.exists = self.created = True

    def _merge(self, batch: "pa.RecordBatch") -> None:
        names = batch.schema.names
        if not self.created:
            missing = [n for n in names if n not in self.columns]
            if missing:
                raise ToolError(f"transfer: target table {self.target} has no column(s) {missing}; "
                                f"its columns are {list(self.columns)}")
        missing_keys = [k for k in self.keys if k not in names]
        if missing_keys:
            raise ToolError(f"transfer: upsert key column(s) {missing_keys} not in the source's "
                            f"columns {names}")
        self.cur.adbc_ingest(_STAGE, batch, mode="replace", temporary=True)
        cols = ", ".join(_quote_ident(n) for n in names)
        select = ", ".join(f"{_quote_ident(n)}::{self.columns[n]}" if n in self.columns else _quote_ident(n)
                           for n in names)
        sql = f"INSERT INTO {self.target} ({cols}) SELECT {select} FROM {_quote_ident(_STAGE)}"
        if self.mode == "upsert":
            conflict = ", ".join(_quote_ident(k) for k in self.keys)
            updates = [n for n in names if n not in self.keys]
            if updates:
                sets = ", ".join(f"{_quote_ident(n)} = EXCLUDED.{_quote_ident(n)}" for n in updates)
                sql += f" ON CONFLICT ({conflict}) DO UPDATE SET {sets}"
            else:
                sql += f" ON CONFLICT ({conflict}) DO NOTHING"
        self._exec(sql)

    def finish(self, schema: "pa.Schema | None") -> None:
        try:
            if not self.exists and schema is not None and len(schema):
                self._create(schema.empty_table())  # an empty source still gives the table
            self.con.commit()
        except self.Error as exc:
            raise self._fail(exc) from None

    def close(self, ok: bool) -> None:
        try:
            if not ok:
                self.con.rollback()
        except Exception:  # noqa: BLE001 - rolling back after an error
            pass
        try:
            self.cur.close()
            self.con.close()
        except Exception:  # noqa: BLE001
            pass


class _DuckDBTarget:
    def __init__(self, cfg: Mapping[str, Any], table: str, mode: str, keys: list[str]) -> None:
        import duckdb

        self.Error = duckdb.Error
        self.db_path = str(cfg.get("db_path") or cfg.get("path") or ":memory:")
        self.schema, self.name = _split_table(table)
        self.target = _qualified(self.schema, self.name)
        self.mode, self.keys = mode, keys
        try:
            self.con = duckdb.connect(self.db_path)
            self.con.execute("BEGIN TRANSACTION")
        except duckdb.Error as exc:
            raise ToolError(f"transfer: target duckdb {self.db_path}: {exc}") from None
        self.has_pk = False

    def begin(self) -> None:
        try:
            if self.schema:
                self.con.execute(f"CREATE SCHEMA IF NOT EXISTS {_quote_ident(self.schema)}")
            if self.mode == "replace":
                self.con.execute(f"DROP TABLE IF EXISTS {self.target}")
        except self.Error as exc:
            raise ToolError(f"transfer: target duckdb: {exc}") from None

    def _ensure(self, relation: Any) -> None:
        self.con.register("__noetl_batch", relation)
        exists = self.con.execute(
            "SELECT count(*) FROM duckdb_tables() WHERE database_name = current_database() "
            "AND table_name = ? AND schema_name = coalesce(?, current_schema())",
            [self.name, self.schema]).fetchall()[0][0]
        if not exists:
            self.con.execute(f"CREATE TABLE {self.target} AS SELECT * FROM __noetl_batch LIMIT 0")
            if self.mode == "upsert":
                cols = ", ".join(_quote_ident(k) for k in self.keys)
                try:
                    self.con.execute(f"ALTER TABLE {self.target} ADD PRIMARY KEY ({cols})")
                except self.Error:
                    pass  # older DuckDB: delete + insert on the key works without it
        pk = self.con.execute(
            "SELECT count(*) FROM duckdb_constraints() WHERE database_name = current_database() "
            "AND table_name = ? AND "
            "schema_name = coalesce(?, current_schema()) AND constraint_type IN ('PRIMARY KEY', 'UNIQUE')",
            [self.name, self.schema]).fetchall()[0][0]
        self.has_pk = bool(pk)

    def write(self, batch: "pa.RecordBatch") -> None:
        try:
            self._ensure(batch)
            if self.mode == "upsert":
                missing = [k for k in self.keys if k not in batch.schema.names]
                if missing:
                    raise ToolError(f"transfer: upsert key column(s) {missing} not in the source's "
                                    f"columns {batch.schema.names}")
                if self.has_pk:
                    self.con.execute(f"INSERT OR REPLACE INTO {self.target} BY NAME SELECT * FROM __noetl_batch")
                    return
                match = " AND ".join(f"{self.target}.{_quote_ident(k)} = __noetl_batch.{_quote_ident(k)}"
                                     for k in self.keys)
                self.con.execute(f"DELETE FROM {self.target} WHERE EXISTS "
                                 f"(SELECT 1 FROM __noetl_batch WHERE {match})")
            self.con.execute(f"INSERT INTO {self.target} BY NAME SELECT * FROM __noetl_batch")
        except self.Error as exc:
            raise ToolError(f"transfer: target duckdb: {exc}") from None
        finally:
            try:
                self.con.unregister("__noetl_batch")
            except Exception:  # noqa: BLE001
                pass

    def finish(self, schema: "pa.Schema | None") -> None:
        try:
            if schema is not None and len(schema):
                self._ensure(schema.empty_table())
                self.con.unregister("__noetl_batch")
            self.con.execute("COMMIT")
        except self.Error as exc:
            raise ToolError(f"transfer: target duckdb: {exc}") from None

    def close(self, ok: bool) -> None:
        try:
            if not ok:
                self.con.execute("ROLLBACK")
        except Exception:  # noqa: BLE001
            pass
        self.con.close()


# ------------------------------------------------------------------------------------ the tool
class TransferTool(Tool):
    kind = "transfer"

    @secret_safe
    def run(self, config: dict[str, Any], ctx: ToolContext) -> Any:
        raw_source = config.get("source")
        raw_target = config.get("target")
        if not isinstance(raw_source, Mapping):
            raise ToolError("transfer: `source` must be a mapping {type, query | url, ...}")
        if not isinstance(raw_target, Mapping):
            raise ToolError("transfer: `target` must be a mapping {type, table, ...}")
        sql_source = str(ctx.render(raw_source.get("type")) or "").strip().lower() in ("postgres", "duckdb")
        sql_key = "query" if raw_source.get("query") is not None else "command"
        source = ctx.render({k: v for k, v in raw_source.items()
                             if not (sql_source and k in ("query", "command"))})
        if sql_source and raw_source.get(sql_key) is not None:
            # the source query's {{ }} values are bound parameters, never SQL text
            source[sql_key], params = bind_query(
                raw_source[sql_key], source.get("params"), ctx.scope, script=bool(source.get("script")),
                tool="transfer", text_type="text" if str(source.get("type")).strip().lower() == "postgres"
                else "VARCHAR")
            if params is not None:
                source["params"] = params
        target = ctx.render(dict(raw_target))
        stype = str(source.get("type") or "").strip().lower()
        ttype = str(target.get("type") or "").strip().lower()
        if stype not in SOURCE_TYPES:
            raise ToolError(f"transfer: unknown source type {source.get('type')!r}; "
                            f"use one of {', '.join(SOURCE_TYPES)}")
        if ttype not in TARGET_TYPES:
            raise ToolError(f"transfer: unknown target type {target.get('type')!r}; "
                            f"use one of {', '.join(TARGET_TYPES)}")
        table = target.get("table")
        if not isinstance(table, str) or not table.strip():
            raise ToolError("transfer: target needs `table` (the table to write)")
        table = table.strip()
        mode = str(target.get("mode") or ctx.render(config.get("mode")) or "append").strip().lower()
        if mode not in MODES:
            raise ToolError(f"transfer: unknown mode {mode!r}; use one of {', '.join(MODES)}")
        keys = _keys(target)
        if mode == "upsert" and not keys:
            raise ToolError("transfer: mode upsert needs the target's `key: [columns]`")
        chunk_size = ctx.render(config.get("chunk_size", target.get("chunk_size", source.get("chunk_size"))))
        try:
            chunk_size = int(chunk_size) if chunk_size not in (None, "") else DEFAULT_CHUNK_SIZE
        except (TypeError, ValueError):
            raise ToolError(f"transfer: `chunk_size` must be a whole number, got {chunk_size!r}") from None
        if chunk_size < 1:
            raise ToolError("transfer: `chunk_size` must be at least 1")
        mapping = target.get("mapping")
        if mapping is not None and not isinstance(mapping, Mapping):
            raise ToolError("transfer: target `mapping` must map target columns to source columns")

        if stype == "postgres":
            src = _postgres_source(source, ctx)
        elif stype == "duckdb":
            src = _duckdb_source(source, chunk_size)
        elif stype == "snowflake":
            src = _Source(*source_batches(source, ctx))
        else:
            src = _http_source(raw_source, source, ctx)

        if ttype == "postgres":
            sink: Any = _PostgresTarget(target, ctx, table, mode, keys)
        elif ttype == "snowflake":
            sink = SnowflakeTarget(target, ctx, table, mode, keys)
        else:
            sink = _DuckDBTarget(target, table, mode, keys)
        rows = batches = 0
        ok = False
        try:
            sink.begin()
            for batch in rechunk(src.batches, chunk_size):
                batch = _apply_mapping(batch, mapping)
                sink.write(batch)
                rows += batch.num_rows
                batches += 1
                ctx.log.debug("transfer: batch %d (%d rows) written to %s", batches, batch.num_rows, table)
            schema = src.schema
            if schema is not None and mapping:
                schema = _apply_mapping(_empty_batch(schema), mapping).schema
            sink.finish(schema)
            ok = True
        finally:
            close = getattr(src.batches, "close", None)
            if close is not None:
                close()
            sink.close(ok)
        return {"rows_transferred": rows, "batches": batches, "source_type": stype,
                "target_type": ttype, "table": table, "mode": mode}


def _empty_batch(schema: "pa.Schema") -> "pa.RecordBatch":
    import pyarrow as pa

    return pa.RecordBatch.from_arrays([pa.array([], f.type) for f in schema], schema=schema)
