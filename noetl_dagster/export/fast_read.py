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

Example::

    page = read_run_page(instance, run_id, after=-1, limit=1000)   # (records, has_more) or None
"""

from __future__ import annotations

import json
import threading
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

try:  # a declared dependency; the standard module is the fallback (3-9x slower on these texts)
    from orjson import loads as _loads
except ImportError:  # pragma: no cover
    _loads = json.loads
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
        field = _PLAIN_ENTRIES.get(data.get("__class__")) if isinstance(data, dict) else None
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


def read_run_page(instance: Any, run_id: str, after: int, limit: int | None
                  ) -> tuple[list[LightRecord], bool] | None:
    """The run's events with storage id > ``after`` (at most ``limit``, None: all) and whether more
    remain; None when the storage cannot be read directly."""
    if not supports(instance):
        return None
    import sqlalchemy as sa
    from noetl_dagster.compat import SqlEventLogStorageTable as table

    query = (sa.select(table.c.id, table.c.event).where(table.c.run_id == run_id)
             .order_by(table.c.id.asc()))
    if after >= 0:
        query = query.where(table.c.id > after)
    if limit is not None:
        query = query.limit(limit + 1)
    storage = instance.event_log_storage
    shared = getattr(_SHARED, "conns", {}).get(id(storage))
    if shared is not None:
        rows = shared.execute(query).fetchall()
    else:
        with storage.run_connection(run_id) as conn:
            rows = conn.execute(query).fetchall()
    more = limit is not None and len(rows) > limit
    if more:
        rows = rows[:limit]
    return [LightRecord(storage_id, LightEntry(_loads(text))) for storage_id, text in rows], more


_SHARED = threading.local()


@contextmanager
def shared_connection(instance: Any) -> Iterator[None]:
    """Within the block, reads of an event log that is one database (Postgres, MySQL: not one
    file per run) use one connection: dagster-postgres opens a new connection (TCP, SCRAM) for
    every query otherwise. Per-run SQLite files keep their own connections."""
    storage = instance.event_log_storage if supports(instance) else None
    if storage is None or storage.is_run_sharded:
        yield
        return
    conns = _SHARED.__dict__.setdefault("conns", {})
    if id(storage) in conns:  # nested: the outer block's connection serves
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


__all__ = ["LightEntry", "LightEvent", "LightRecord", "read_run", "read_run_page", "shared_connection", "supports"]
