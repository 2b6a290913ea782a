"""Reading Dagster's event log for the export, without rebuilding Dagster's objects.

``instance.get_records_for_run`` turns every stored event back into Dagster's objects (serdes:
an ``EventLogEntry``, a ``DagsterEvent``, handles, metadata...): that is most of an export's
time. The mapping (:func:`~noetl_dagster.export.mapping.map_records`) reads only a few fields
of most events. Here the stored JSON is parsed with ``orjson`` into plain
dicts, wrapped in light records offering the same attributes the mapping reads; an event's
``event_specific_data`` and an entry's ``error_info`` are turned into Dagster's objects only when
read (step outputs, failures, assets: the detailed types), with Dagster's own deserialiser.

Rows come straight from the storage's ``event_logs`` table (``id > after ORDER BY id``), on any
``SqlEventLogStorage`` (SQLite per-run files, Postgres, MySQL) of a ``DagsterInstance``; other
storages (in memory) and stand-ins return None, and the caller uses ``get_records_for_run``.

Dagster's SQLite storage (one file per run, ``SqliteEventLogStorage`` and subclasses) is read with
Python's ``sqlite3`` on the run's file opened read-only (``file:...?mode=ro``): Dagster's own
``run_connection`` creates an engine per query and, the first time a process touches a run, checks
its schema with alembic (and creates the file when missing). Inside :func:`shared_connection` a
run's file stays open for the block (a tick); reads never write the database file, take no write
lock and end their read snapshot with each query (the run's writer keeps writing; in WAL mode
SQLite may create the ``-wal``/``-shm`` side files, as any reader does). A file that is missing or
not a readable event log raises :class:`ShardReadError` naming the run.

Example::

    page = read_run_page(instance, run_id, after=-1, limit=1000)   # (records, has_more) or None
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections import OrderedDict
from contextlib import contextmanager
from typing import Any, Iterator, Sequence
from urllib.parse import quote

try:  # a declared dependency; the standard module is the fallback (3-9x slower on these texts)
    from orjson import loads as _loads
except ImportError:  # pragma: no cover
    _loads = json.loads  # type: ignore[assignment]  # same call shape for our texts
_MISSING = object()


def _unpack(value: Any) -> Any:
    from dagster_shared.serdes.serdes import unpack_value

    return None if value is None else unpack_value(value)


#: metadata entry kinds whose value is one plain field (the field name), as Dagster stores them
_PLAIN_ENTRIES = {"TextMetadataEntryData": "text", "FloatMetadataEntryData": "value",
                  "IntMetadataEntryData": "value", "BoolMetadataEntryData": "value",
                  "JsonMetadataEntryData": "data", "PathMetadataEntryData": "path",
                  "UrlMetadataEntryData": "url", "MarkdownMetadataEntryData": "md_str",
                  "TextMetadataValue": "text", "FloatMetadataValue": "value", "IntMetadataValue": "value",
                  "BoolMetadataValue": "value", "JsonMetadataValue": "data", "PathMetadataValue": "path",
                  "UrlMetadataValue": "url", "MarkdownMetadataValue": "md_str"}


class _Value:
    """A metadata value reduced to ``.value`` (what the export reads)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


def _metadata(raw: dict[str, Any]) -> dict[str, Any] | None:
    """An event's metadata as ``{label: value with .value}``; entries of other kinds are Dagster's
    own ``MetadataValue`` objects. None when the stored form is not one this knows."""
    entries = raw.get("metadata_entries")
    if entries is not None:
        pairs = [(e.get("label"), e.get("entry_data")) for e in entries]
    elif isinstance(raw.get("metadata"), dict):
        pairs = list(raw["metadata"].items())
    else:
        return None if "metadata" in raw else {}
    out: dict[str, Any] = {}
    for label, data in pairs:
        field = _PLAIN_ENTRIES.get(str(data.get("__class__"))) if isinstance(data, dict) else None
        if field is not None and field in data and not isinstance(data[field], dict):
            out[label] = _Value(data[field])
        else:
            value = _unpack(data)
            out[label] = value
    return out


class _Handle:
    __slots__ = ("output_name", "mapping_key", "step_key")

    def __init__(self, raw: dict[str, Any]) -> None:
        self.output_name = raw.get("output_name")
        self.mapping_key = raw.get("mapping_key")
        self.step_key = raw.get("step_key")


class _OutputData:
    """``StepOutputData``'s ``step_output_handle`` and ``metadata``."""

    __slots__ = ("step_output_handle", "metadata")

    def __init__(self, handle: _Handle, metadata: dict[str, Any]) -> None:
        self.step_output_handle = handle
        self.metadata = metadata


class _SuccessData:
    __slots__ = ("duration_ms",)

    def __init__(self, duration_ms: Any) -> None:
        self.duration_ms = duration_ms


def _light_data(kind: str | None, raw: Any) -> Any:
    """The light form of the two most frequent detailed payloads, or _MISSING (unpack it)."""
    if not isinstance(raw, dict):
        return _MISSING
    if kind == "STEP_OUTPUT" and raw.get("__class__") == "StepOutputData":
        handle = raw.get("step_output_handle")
        metadata = _metadata(raw)
        if isinstance(handle, dict) and metadata is not None:
            return _OutputData(_Handle(handle), metadata)
    elif kind == "STEP_SUCCESS" and raw.get("__class__") == "StepSuccessData":
        return _SuccessData(raw.get("duration_ms"))
    return _MISSING


class LightEvent:
    """The attributes of a ``DagsterEvent`` the export reads; the data is unpacked on first use."""

    __slots__ = ("_raw", "_data", "event_type_value", "step_key", "pid", "message")

    def __init__(self, raw: dict[str, Any]) -> None:
        self._raw = raw
        self._data = _MISSING
        self.event_type_value = raw.get("event_type_value")
        self.step_key = raw.get("step_key")
        self.pid = raw.get("pid")
        self.message = raw.get("message")

    @property
    def event_specific_data(self) -> Any:
        if self._data is _MISSING:
            raw = self._raw.get("event_specific_data")
            data = _light_data(self.event_type_value, raw)
            self._data = _unpack(raw) if data is _MISSING else data
        return self._data

    @property
    def is_step_event(self) -> bool:
        return self.step_key is not None


class LightEntry:
    """The attributes of an ``EventLogEntry`` the export reads."""

    __slots__ = ("_raw", "_error", "timestamp", "run_id", "step_key", "level", "job_name", "user_message",
                 "dagster_event")

    def __init__(self, raw: dict[str, Any]) -> None:
        self._raw = raw
        self._error = _MISSING
        self.timestamp = raw.get("timestamp")
        self.run_id = raw.get("run_id")
        self.step_key = raw.get("step_key")
        self.level = raw.get("level")
        self.job_name = raw.get("pipeline_name", raw.get("job_name"))
        self.user_message = raw.get("user_message", "")
        event = raw.get("dagster_event")
        self.dagster_event = LightEvent(event) if event is not None else None

    @property
    def error_info(self) -> Any:
        if self._error is _MISSING:
            self._error = _unpack(self._raw.get("error_info"))
        return self._error

    @property
    def is_dagster_event(self) -> bool:
        return self.dagster_event is not None

    @property
    def message(self) -> str:
        return self.user_message


class LightRecord:
    """``EventLogRecord``'s shape: ``storage_id`` and ``event_log_entry``."""

    __slots__ = ("storage_id", "event_log_entry")

    def __init__(self, storage_id: int, entry: LightEntry) -> None:
        self.storage_id = storage_id
        self.event_log_entry = entry


class ShardReadError(RuntimeError):
    """A run's SQLite event log file could not be read (missing, corrupt, not an event log)."""

    def __init__(self, run_id: str, path: str, reason: str) -> None:
        super().__init__(f"cannot read the event log of run {run_id} ({path}): {reason}")
        self.run_id = run_id
        self.path = path
        self.reason = reason


def supports(instance: Any) -> bool:
    """Whether ``instance`` is a Dagster instance whose event log is an SQL storage this module can
    read directly (a stand-in or a wrapper of an instance is read through its own methods)."""
    try:
        import dagster as dg
        from noetl_dagster.compat import SqlEventLogStorage

        return isinstance(instance, dg.DagsterInstance) and isinstance(instance.event_log_storage,
                                                                        SqlEventLogStorage)
    except Exception:  # noqa: BLE001 - a stand-in instance without a storage
        return False


def _sharded_sqlite(storage: Any) -> bool:
    """Dagster's SQLite event log with one file per run (the default storage and its subclasses)."""
    from noetl_dagster.compat import SqliteEventLogStorage

    return isinstance(storage, SqliteEventLogStorage)


#: run files kept open at most within a block (least recently used closed first)
MAX_OPEN_SHARDS = 64
_PAGE_SQL = "SELECT id, event FROM event_logs WHERE run_id = ? AND id > ? ORDER BY id LIMIT ?"
_OF_TYPE_SQL = "SELECT id, step_key FROM event_logs WHERE run_id = ? AND dagster_event_type = ? ORDER BY id"


class _Shards:
    """Read-only ``sqlite3`` connections to run files: one per run, kept for a block (or one query)."""

    def __init__(self, storage: Any, keep: int = MAX_OPEN_SHARDS) -> None:
        self.storage = storage
        self.keep = keep
        self.conns: OrderedDict[str, sqlite3.Connection] = OrderedDict()

    def _open(self, run_id: str, path: str) -> sqlite3.Connection:
        conn = self.conns.get(run_id)
        if conn is not None:
            self.conns.move_to_end(run_id)
            return conn
        from noetl_dagster.compat import SQLITE_BUSY_TIMEOUT_SECONDS

        # mode=ro: never creates, never writes the file; autocommit: each SELECT's snapshot ends with it
        conn = sqlite3.connect(f"file:{quote(path)}?mode=ro", uri=True, isolation_level=None,
                               timeout=SQLITE_BUSY_TIMEOUT_SECONDS, check_same_thread=False)
        self.conns[run_id] = conn
        while len(self.conns) > self.keep:
            self.conns.popitem(last=False)[1].close()
        return conn

    def query(self, run_id: str, sql: str, params: tuple) -> list[tuple]:
        path = self.storage.path_for_shard(run_id)
        try:
            conn = self._open(run_id, path)
            return conn.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            self.drop(run_id)
            reason = "no such file" if not os.path.exists(path) else f"{type(exc).__name__}: {exc}"
            raise ShardReadError(run_id, path, reason) from exc

    def drop(self, run_id: str) -> None:
        conn = self.conns.pop(run_id, None)
        if conn is not None:
            conn.close()

    def close(self) -> None:
        while self.conns:
            self.conns.popitem()[1].close()


def _shard_query(storage: Any, run_id: str, sql: str, params: tuple) -> list[tuple]:
    """``sql`` on the run's SQLite file: the block's kept connection, else one opened for it."""
    kept = getattr(_SHARED, "conns", {}).get(id(storage))
    if isinstance(kept, _Shards):
        return kept.query(run_id, sql, params)
    once = _Shards(storage, keep=1)
    try:
        return once.query(run_id, sql, params)
    finally:
        once.close()


def _fetch(instance: Any, run_id: str, after: int, limit: int | None) -> list[Any]:
    """``(storage id, event json)`` rows of the run after ``after``, at most ``limit + 1``."""
    storage = instance.event_log_storage
    if _sharded_sqlite(storage):
        return _shard_query(storage, run_id, _PAGE_SQL, (run_id, after, -1 if limit is None else limit + 1))
    kept = getattr(_SHARED, "conns", {}).get(id(storage))
    import sqlalchemy as sa
    from noetl_dagster.compat import SqlEventLogStorageTable as table

    query = (sa.select(table.c.id, table.c.event).where(table.c.run_id == run_id)
             .order_by(table.c.id.asc()))
    if after >= 0:
        query = query.where(table.c.id > after)
    if limit is not None:
        query = query.limit(limit + 1)
    if kept is not None:
        return kept.execute(query).fetchall()
    with storage.run_connection(run_id) as conn:
        return conn.execute(query).fetchall()


def read_run_page(instance: Any, run_id: str, after: int, limit: int | None
                  ) -> tuple[list[LightRecord], bool] | None:
    """The run's events with storage id > ``after`` (at most ``limit``, None: all) and whether more
    remain; None when the storage cannot be read directly. Raises :class:`ShardReadError` when a
    run's SQLite file is missing or unreadable."""
    if not supports(instance):
        return None
    rows = _fetch(instance, run_id, after, limit)
    more = limit is not None and len(rows) > limit
    if more:
        rows = rows[:limit]
    return [LightRecord(storage_id, LightEntry(_loads(text))) for storage_id, text in rows], more


def read_of_type(instance: Any, run_id: str, event_type: str) -> list[tuple[int, str | None]] | None:
    """``(storage id, step key)`` of the run's events of one type, from a Dagster SQLite run file
    (as :func:`read_run_page`); None for other storages (ask the instance)."""
    storage = instance.event_log_storage if supports(instance) else None
    if storage is None or not _sharded_sqlite(storage):
        return None
    return _shard_query(storage, run_id, _OF_TYPE_SQL, (run_id, event_type))


_SHARED = threading.local()


@contextmanager
def shared_connection(instance: Any) -> Iterator[None]:
    """Within the block, reads of an event log that is one database (Postgres, MySQL: not one
    file per run) use one connection: dagster-postgres opens a new connection (TCP, SCRAM) for
    every query otherwise. Dagster's SQLite files are opened read-only once per run for the block."""
    storage = instance.event_log_storage if supports(instance) else None
    conns = _SHARED.__dict__.setdefault("conns", {})
    if storage is None or id(storage) in conns:  # nested: the outer block's connections serve
        yield
        return
    if _sharded_sqlite(storage):
        shards = _Shards(storage)
        conns[id(storage)] = shards
        try:
            yield
        finally:
            conns.pop(id(storage), None)
            shards.close()
        return
    if storage.is_run_sharded:
        yield
        return
    with storage.run_connection(None) as conn:
        conns[id(storage)] = conn
        try:
            yield
        finally:
            conns.pop(id(storage), None)


def read_run(instance: Any, run_id: str) -> Sequence[Any]:
    """All of a run's events (light records, or Dagster's when the storage is not SQL)."""
    page = read_run_page(instance, run_id, -1, None)
    return page[0] if page is not None else instance.get_records_for_run(run_id).records


__all__ = ["LightEntry", "LightEvent", "LightRecord", "ShardReadError", "read_of_type", "read_run", "read_run_page",
           "shared_connection", "supports"]
