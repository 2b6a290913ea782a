"""ClickHouse sink for the event export: ``noetl_events`` and ``step_runs``, through clickhouse-connect.

The same code talks to an embedded ClickHouse (chdb, the default: ``chdb:///<DAGSTER_HOME>/
noetl_clickhouse``) and to a server (``http://user:pw@host:8123`` or host/port fields). Tables
are created and migrated by :meth:`ClickHouseSink.migrate` (a ``noetl_schema_migrations`` table
records the applied versions). Both tables are ``ReplacingMergeTree`` keyed on the row identity
- ``(ExecutionId, EventId)`` and ``(ExecutionId, StepKey, Attempt)`` - so a replayed batch
collapses into the rows already there: **query with ``FINAL``** (or ``GROUP BY`` the key) for
exact counts before background merges run. Inserts are batched, as Arrow tables.

chdb limits: one data folder per process, and one process per folder (``dagster dev``'s code
server holds it while it runs sensors; stop it before ``noetl-dagster export`` on the same folder).

Example::

    from noetl_dagster.export.clickhouse import ClickHouseResource

    sink = ClickHouseResource(dsn="chdb:///tmp/ch").sink()     # migrates on first use
    sink.query("SELECT EventType, count() FROM {db}.noetl_events FINAL GROUP BY EventType")
"""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping, NamedTuple, Sequence

import dagster as dg
from pydantic import Field

from noetl_dagster.core.secrets import register_connection_secret, register_secret
from noetl_dagster.export.pool import ClientPool

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

#: environment variables read when the resource's fields are unset
ENV_DSN = "NOETL_CLICKHOUSE_DSN"
ENV_DATABASE = "NOETL_CLICKHOUSE_DATABASE"
DEFAULT_DATABASE = "observability"

EVENTS_TABLE = "noetl_events"
STEP_RUNS_TABLE = "step_runs"
MIGRATIONS_TABLE = "noetl_schema_migrations"
#: settings of every insert: a batch holds each row identity once, so the merge that would collapse
#: repeats inside an inserted block is skipped (replays still collapse in background merges / FINAL)
INSERT_SETTINGS = {"optimize_on_insert": "0"}

#: (version, description, statements); statements are idempotent and run in order
MIGRATIONS: list[tuple[int, str, list[str]]] = [
    (1, "noetl_events: NoETL's observability columns plus run/step identity", [
        """CREATE TABLE IF NOT EXISTS {db}.noetl_events (
            Timestamp DateTime64(6, 'UTC'),
            EventId UInt64,
            ExecutionId String,
            EventType LowCardinality(String),
            Status LowCardinality(String),
            StepName String,
            NodeName String,
            PlaybookPath LowCardinality(String),
            Duration UInt64 COMMENT 'milliseconds',
            ErrorMessage String,
            Metadata Map(String, String),
            Domain LowCardinality(String),
            JobName LowCardinality(String),
            Attempt UInt16,
            DagsterEventType LowCardinality(String),
            Level LowCardinality(String),
            Message String,
            INDEX idx_event_type EventType TYPE set(64) GRANULARITY 4,
            INDEX idx_playbook PlaybookPath TYPE bloom_filter GRANULARITY 4
        ) ENGINE = ReplacingMergeTree
        PARTITION BY toYYYYMM(Timestamp)
        ORDER BY (ExecutionId, EventId)""",
    ]),
    (2, "step_runs: one row per step attempt", [
        """CREATE TABLE IF NOT EXISTS {db}.step_runs (
            ExecutionId String,
            StepKey String,
            Attempt UInt16,
            PlaybookPath LowCardinality(String),
            Domain LowCardinality(String),
            JobName LowCardinality(String),
            StepName String,
            ToolKind LowCardinality(String),
            Status LowCardinality(String),
            StartedAt DateTime64(6, 'UTC'),
            FinishedAt DateTime64(6, 'UTC'),
            DurationMs UInt64,
            Retries UInt16,
            Rows Nullable(Int64),
            Bytes Nullable(Int64),
            CpuSeconds Nullable(Float64),
            PeakRssMb Nullable(Float64),
            ErrorMessage String,
            Worker String
        ) ENGINE = ReplacingMergeTree
        PARTITION BY toYYYYMM(StartedAt)
        ORDER BY (ExecutionId, StepKey, Attempt)""",
    ]),
]

#: column name -> EventRow field, in table order
EVENT_COLUMNS = {
    "Timestamp": "timestamp", "EventId": "event_id", "ExecutionId": "execution_id", "EventType": "event_type",
    "Status": "status", "StepName": "step_name", "NodeName": "node_name", "PlaybookPath": "playbook_path",
    "Duration": "duration_ms", "ErrorMessage": "error_message", "Metadata": "metadata", "Domain": "domain",
    "JobName": "job_name", "Attempt": "attempt", "DagsterEventType": "dagster_event_type", "Level": "level",
    "Message": "message",
}
STEP_RUN_COLUMNS = {
    "ExecutionId": "execution_id", "StepKey": "step_key", "Attempt": "attempt", "PlaybookPath": "playbook_path",
    "Domain": "domain", "JobName": "job_name", "StepName": "step_name", "ToolKind": "tool_kind",
    "Status": "status", "StartedAt": "started_at", "FinishedAt": "finished_at", "DurationMs": "duration_ms",
    "Retries": "retries", "Rows": "rows", "Bytes": "bytes", "CpuSeconds": "cpu_seconds",
    "PeakRssMb": "peak_rss_mb", "ErrorMessage": "error_message", "Worker": "worker",
}


def default_home() -> Path:
    """``$DAGSTER_HOME``, else ``./.dagster_home`` (where ``noetl-dagster run`` records runs)."""
    return Path(os.environ.get("DAGSTER_HOME") or ".dagster_home").resolve()


def default_dsn() -> str:
    return os.environ.get(ENV_DSN) or f"chdb://{default_home() / 'noetl_clickhouse'}"


#: chdb clients are released after the last sensor tick borrowing them (see ``pool``)
_POOL = ClientPool(releasable=lambda key: _is_chdb_folder(key[0]))


def get_client(dsn: str | None = None, **kwargs: Any) -> Any:
    """A clickhouse-connect client, shared per DSN/host in this process and kept open for its life
    (chdb allows one folder per process and locks it: long-lived processes use :func:`client_session`)."""
    return _POOL.get(_key(dsn, kwargs), lambda: _create(dsn, kwargs))


@contextmanager
def client_session(dsn: str | None = None, **kwargs: Any) -> Iterator[Any]:
    """The shared client for a ``with`` block. A chdb client is closed when the last session
    using it ends (and no :func:`get_client` caller holds it): that releases chdb's folder, so
    another process (``noetl-dagster export``, a tuning run) can open it between sensor ticks.
    Opening a folder another process holds raises clickhouse-connect's ProgrammingError."""
    with _POOL.session(_key(dsn, kwargs), lambda: _create(dsn, kwargs)) as client:
        yield client


def _key(dsn: str | None, kwargs: Mapping[str, Any]) -> tuple:
    return (dsn, tuple(sorted((k, str(v)) for k, v in kwargs.items())))


def _is_chdb_folder(dsn: str | None) -> bool:
    return bool(dsn and dsn.startswith("chdb://") and dsn[len("chdb://"):] not in ("", "memory"))


def _create(dsn: str | None, kwargs: Mapping[str, Any]) -> Any:
    import clickhouse_connect

    if _is_chdb_folder(dsn):
        Path(dsn[len("chdb://"):]).mkdir(parents=True, exist_ok=True)  # type: ignore[index]
    return clickhouse_connect.get_client(dsn=dsn, **kwargs) if dsn else clickhouse_connect.get_client(**kwargs)


#: Arrow type of each column (by kind): ``LowCardinality`` columns go as dictionary arrays, which
#: ClickHouse reads without re-hashing every value in Python
_KINDS = {
    "Timestamp": "time", "EventId": "u64", "EventType": "lc", "Status": "lc", "PlaybookPath": "lc",
    "Duration": "u64", "Metadata": "map", "Domain": "lc", "JobName": "lc", "Attempt": "u16",
    "DagsterEventType": "lc", "Level": "lc", "ToolKind": "lc", "StartedAt": "time", "FinishedAt": "time",
    "DurationMs": "u64", "Retries": "u16", "Rows": "i64", "Bytes": "i64", "CpuSeconds": "f64", "PeakRssMb": "f64",
}


def rows_to_arrow(rows: Sequence[tuple], columns: dict[str, str]) -> Any:
    """Named-tuple rows -> a ``pyarrow.Table`` with one column per ClickHouse column (``columns``:
    column -> field, in table order), transposed with ``zip(*rows)``: float-second times become
    ``timestamp[us, UTC]``, ``LowCardinality`` columns dictionary arrays, ``Map`` columns map arrays
    (``None`` stays null in ``Nullable`` columns).

    Example: ``rows_to_arrow(rows, EVENT_COLUMNS).column("Timestamp")[0]   # <TimestampScalar: ...>``
    """
    import numpy as np
    import pyarrow as pa

    plain = {"str": pa.string(), "u64": pa.uint64(), "u16": pa.uint16(), "i64": pa.int64(), "f64": pa.float64()}
    fields = type(rows[0])._fields if rows else ()  # type: ignore[attr-defined]  # NamedTuple rows
    transposed = list(zip(*rows))
    arrays = {}
    for column, attr in columns.items():
        values = transposed[fields.index(attr)] if rows else []
        kind = _KINDS.get(column, "str")
        if kind == "time":
            micros = np.rint(np.asarray(values, dtype=np.float64) * 1_000_000).astype(np.int64)
            arrays[column] = pa.array(micros, pa.timestamp("us", tz="UTC"))
        elif kind == "lc":
            arrays[column] = pa.array(values, pa.dictionary(pa.int32(), pa.string()))
        elif kind == "map":
            arrays[column] = _map_array(values)
        else:
            arrays[column] = pa.array(values, plain[kind])
    return pa.table(arrays)


def _map_array(dicts: Sequence[Mapping[str, str]]) -> Any:
    """``Map(String, String)`` values as an Arrow map array, built from flat keys, values and offsets."""
    import pyarrow as pa

    offsets, total = [0], 0
    keys: list[Any] = []
    values: list[Any] = []
    for item in dicts:
        keys.extend(item)
        values.extend(item.values())
        total += len(item)
        offsets.append(total)
    return pa.MapArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(keys, pa.string()),
                                   pa.array(values, pa.string()))


def _encode(rows: Sequence[tuple], columns: dict[str, str]) -> Any:
    """:func:`rows_to_arrow`, or ``None`` for no rows (nothing to insert)."""
    return rows_to_arrow(rows, columns) if rows else None


class ArrowBatch(NamedTuple):
    """A prepared write: the ``noetl_events`` and ``step_runs`` Arrow tables (``None``: no rows)."""

    events: Any
    step_runs: Any


class ClickHouseSink:
    """Writes export batches to ``noetl_events`` / ``step_runs``; idempotent under replays.

    Example::

        sink = ClickHouseSink(get_client("chdb:///tmp/ch"), database="observability")
        sink.migrate()
        sink.write_events(rows)          # EventRow list; rewriting them adds nothing after FINAL
        sink.count_events()              # distinct events (FINAL)
    """

    name = "clickhouse"
    wants_events = True
    wants_runs = False  # step attempts only: run summaries go to Qdrant
    thread_safe = True  # writes take the client's lock: the exporter may write from its writer thread
    #: where the sink writes, without credentials (set by the resource; names the export cursor)
    destination = ""

    def __init__(self, client: Any, database: str = DEFAULT_DATABASE) -> None:
        if not _IDENTIFIER.match(database):  # formatted into the SQL (identifiers cannot be bound)
            raise ValueError(f"ClickHouse database name {database!r} must be a plain identifier ([A-Za-z_][A-Za-z0-9_]*)")
        self.client = client
        self.database = database
        self._lock = _POOL.lock_for(client)

    # -- schema --------------------------------------------------------------------------
    def migrate(self) -> list[int]:
        """Create the database and apply missing migrations; returns the versions applied now."""
        with self._lock:
            db = self.database
            self.client.command(f"CREATE DATABASE IF NOT EXISTS {db}")
            self.client.command(
                f"CREATE TABLE IF NOT EXISTS {db}.{MIGRATIONS_TABLE} (Version UInt32, Description String, "
                f"AppliedAt DateTime DEFAULT now()) ENGINE = ReplacingMergeTree ORDER BY Version")
            done = {r[0] for r in self.client.query(f"SELECT Version FROM {db}.{MIGRATIONS_TABLE} FINAL").result_rows}
            applied = []
            for version, description, statements in MIGRATIONS:
                if version in done:
                    continue
                for statement in statements:
                    self.client.command(statement.format(db=db))
                self.client.insert(MIGRATIONS_TABLE, [[version, description]], database=db,
                                   column_names=["Version", "Description"])
                applied.append(version)
            _POOL.mark(self.client, ("migrated", db))
            return applied

    def _ensure(self) -> None:
        if not _POOL.marked(self.client, ("migrated", self.database)):
            self.migrate()

    # -- writes --------------------------------------------------------------------------
    def write_events(self, rows: Sequence[Any]) -> None:
        self._insert(EVENTS_TABLE, _encode(rows, EVENT_COLUMNS))

    def write_step_runs(self, rows: Sequence[Any]) -> None:
        self._insert(STEP_RUNS_TABLE, _encode(rows, STEP_RUN_COLUMNS))

    def _insert(self, table: str, data: Any) -> None:
        """One insert of an Arrow table (Arrow format in: no per-value encoding in Python)."""
        if data is None:
            return
        with self._lock:
            self._ensure()
            self.client.insert_arrow(table, data, database=self.database, settings=INSERT_SETTINGS)

    def prepare(self, batch: Any) -> "ArrowBatch":
        """An :class:`~noetl_dagster.export.exporter.ExportBatch` as Arrow tables: the CPU work of a
        write, which the exporter does in its own thread so that its writer thread only inserts
        (ClickHouse works without holding the interpreter).

        Example: ``sink.write(sink.prepare(batch))``  # the same as ``sink.write(batch)``
        """
        return ArrowBatch(_encode(batch.events, EVENT_COLUMNS), _encode(batch.step_runs, STEP_RUN_COLUMNS))

    def write(self, batch: Any) -> None:
        """Write an ``ExportBatch`` (or its :meth:`prepare`-d tables): events, then step attempts."""
        tables = batch if isinstance(batch, ArrowBatch) else self.prepare(batch)
        self._insert(EVENTS_TABLE, tables.events)
        self._insert(STEP_RUNS_TABLE, tables.step_runs)

    # -- reads ---------------------------------------------------------------------------
    def query(self, sql: str, parameters: dict[str, Any] | None = None) -> list[tuple]:
        """Rows of a query; ``{db}`` in ``sql`` stands for the sink's database.

        Example: ``sink.query("SELECT count() FROM {db}.noetl_events FINAL")``
        """
        with self._lock:
            self._ensure()
            return list(self.client.query(sql.replace("{db}", self.database), parameters=parameters).result_rows)

    def count_events(self, run_id: str | None = None) -> int:
        where = " WHERE ExecutionId = {rid:String}" if run_id else ""
        return int(self.query(f"SELECT count() FROM {{db}}.{EVENTS_TABLE} FINAL" + where,
                              {"rid": run_id} if run_id else None)[0][0])

    def count_step_runs(self, run_id: str | None = None) -> int:
        where = " WHERE ExecutionId = {rid:String}" if run_id else ""
        return int(self.query(f"SELECT count() FROM {{db}}.{STEP_RUNS_TABLE} FINAL" + where,
                              {"rid": run_id} if run_id else None)[0][0])


class ClickHouseResource(dg.ConfigurableResource):
    """Where the event export writes: a ClickHouse DSN (``chdb://`` embedded by default) or a host.

    Unset fields read ``NOETL_CLICKHOUSE_DSN`` / ``NOETL_CLICKHOUSE_DATABASE``, so the sensors and
    ``noetl-dagster export`` share one configuration; without them the embedded default is
    ``chdb://$DAGSTER_HOME/noetl_clickhouse``.

    Example::

        ClickHouseResource()                                              # embedded chdb
        ClickHouseResource(host="ch.internal", port=8443, secure=True, username="noetl",
                           password=dg.EnvVar("CLICKHOUSE_PASSWORD"))     # a server
    """

    dsn: str | None = Field(default=None, description="clickhouse-connect DSN; chdb:///path for embedded")
    host: str | None = Field(default=None, description="server host (instead of a DSN)")
    port: int | None = Field(default=None, description="HTTP(S) port of the server")
    username: str | None = Field(default=None)
    password: str | None = Field(default=None, description="give as dagster.EnvVar")
    secure: bool = Field(default=False, description="HTTPS")
    database: str | None = Field(default=None, description="database of the tables (default observability)")

    def connection(self) -> tuple[str | None, dict[str, Any]]:
        """``(dsn, client kwargs)``; the password (or the one inside the DSN) is registered for redaction."""
        register_secret(self.password)
        register_connection_secret(self.dsn or os.environ.get(ENV_DSN))
        if self.host:
            kwargs: dict[str, Any] = {"host": self.host, "secure": self.secure}
            if self.port:
                kwargs["port"] = self.port
            if self.username:
                kwargs["username"] = self.username
            if self.password:
                kwargs["password"] = self.password
            return None, kwargs
        return self.dsn or default_dsn(), {}

    def sink(self) -> ClickHouseSink:
        """The (process-shared) client wrapped in a sink; the schema is migrated on first write."""
        dsn, kwargs = self.connection()
        sink = ClickHouseSink(get_client(dsn, **kwargs), self._database())
        sink.destination = self.destination()
        return sink

    def destination(self) -> str:
        """Where rows go, without credentials: ``clickhouse:<dsn or host:port>/<database>`` (export cursors
        belong to it)."""
        from noetl_dagster.export.destination import without_credentials

        where = f"{self.host}:{self.port or ''}" if self.host else (self.dsn or os.environ.get(ENV_DSN) or default_dsn())
        return f"clickhouse:{without_credentials(where)}/{self._database()}"

    @contextmanager
    def session(self) -> Iterator[ClickHouseSink]:
        """A sink for one ``with`` block; an embedded chdb folder is released afterwards.

        Example (what the export sensor does each tick)::

            with ClickHouseResource().session() as sink:
                sink.client.query("SELECT count() FROM observability.noetl_events")
        """
        dsn, kwargs = self.connection()
        with client_session(dsn, **kwargs) as client:
            sink = ClickHouseSink(client, self._database())
            sink.destination = self.destination()
            yield sink

    def _database(self) -> str:
        return self.database or os.environ.get(ENV_DATABASE) or DEFAULT_DATABASE


__all__ = ["ArrowBatch", "ClickHouseResource", "ClickHouseSink", "DEFAULT_DATABASE", "EVENTS_TABLE", "INSERT_SETTINGS",
           "MIGRATIONS", "STEP_RUNS_TABLE", "client_session", "default_dsn", "default_home", "get_client",
           "rows_to_arrow"]
