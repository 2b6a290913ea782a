"""``FastSqliteEventLogStorage``: Dagster's SQLite event log (the embedded default) without a new
database connection per event.

Dagster's :class:`~dagster._core.storage.event_log.sqlite.SqliteEventLogStorage` keeps every
run's events in its own SQLite file and, for each event written or read, creates a SQLAlchemy
engine, opens a connection, commits and disposes it (a 1000-item loop opens ~18 000
connections). This subclass keeps the same files, schema, locking and behaviour, and changes only
how it connects:

* one engine per database file, kept (at most ``max_open_shards`` run files, least recently used
  first out) with a small connection pool, so an event costs one ``INSERT`` and one commit;
* ``PRAGMA synchronous=NORMAL`` on those connections: the files are in WAL mode already, where
  NORMAL never corrupts a database and commits skip the fsync (an OS crash may lose the last
  events; a process crash loses none);
* :meth:`store_event_batch` writes a batch of one run's events in one transaction.

Pools are dropped in a forked child (a connection never crosses processes) and on
:meth:`wipe`/:meth:`dispose`.

Configure it in ``$DAGSTER_HOME/dagster.yaml`` (run and schedule storage stay the default)::

    event_log_storage:
      module: noetl_dagster.storage
      class: FastSqliteEventLogStorage
      config:
        base_dir: /path/to/dagster_home/history/runs/   # where the default keeps run event logs

or write that file with :func:`write_instance_config`.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dagster as dg
import sqlalchemy as db
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import QueuePool

from noetl_dagster.compat import (SQLITE_BUSY_TIMEOUT_SECONDS, ConfigurableClassData, IntSource,
                                  SqliteEventLogStorage, StringSource)

__all__ = ["FastSqliteEventLogStorage", "default_instance", "instance_config", "write_instance_config"]

#: run databases whose engines stay open at most (each keeps its pooled connections)
DEFAULT_MAX_OPEN_SHARDS = 64
_ALL: "weakref.WeakSet[FastSqliteEventLogStorage]" = weakref.WeakSet()


class FastSqliteEventLogStorage(SqliteEventLogStorage):
    """SQLite event log storage, one file per run as Dagster's, with kept connections.

    Example (``dagster.yaml``)::

        event_log_storage:
          module: noetl_dagster.storage
          class: FastSqliteEventLogStorage
          config: {base_dir: /home/me/.dagster/history/runs/}
    """

    def __init__(self, base_dir: str, inst_data: ConfigurableClassData | None = None,
                 max_open_shards: int = DEFAULT_MAX_OPEN_SHARDS) -> None:
        self._engines: OrderedDict[str, Engine] = OrderedDict()
        self._engines_lock = threading.Lock()
        self._max_open_shards = max(2, int(max_open_shards))
        self._pid = os.getpid()
        super().__init__(base_dir, inst_data=inst_data)
        _ALL.add(self)

    @classmethod
    def config_type(cls) -> dict[str, Any]:
        return {"base_dir": StringSource, "max_open_shards": db_optional(IntSource)}

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData | None,  # type: ignore[override]
                          config_value: dict[str, Any]) -> "FastSqliteEventLogStorage":
        return cls(inst_data=inst_data, **config_value)

    # -- connections -------------------------------------------------------------------
    def _engine(self, shard: str) -> tuple[Engine, bool]:
        """The kept engine of ``shard`` (and whether it was just created)."""
        if self._pid != os.getpid():  # a forked child: the parent's pooled connections are not ours
            self._forget_engines()
        with self._engines_lock:
            engine = self._engines.get(shard)
            if engine is not None:
                self._engines.move_to_end(shard)
                return engine, False
        engine = db.create_engine(self.conn_string_for_shard(shard), poolclass=QueuePool, pool_size=1,
                                  max_overflow=4, pool_reset_on_return=None,
                                  connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS,
                                                "check_same_thread": False})
        db.event.listen(engine, "connect", _on_connect)
        with self._engines_lock:
            self._engines[shard] = engine
            evicted = []
            while len(self._engines) > self._max_open_shards:
                _, old = self._engines.popitem(last=False)
                evicted.append(old)
        for old in evicted:
            old.dispose()
        return engine, True

    @contextmanager
    def _connect(self, shard: str) -> Iterator[Connection]:
        with self._db_lock:
            engine, _ = self._engine(shard)
            if shard not in self._initialized_dbs:
                self._initdb(engine)
                self._initialized_dbs.add(shard)
            with engine.connect() as conn:
                with conn.begin():
                    yield conn

    def _forget_engines(self) -> None:
        """Drop every kept engine without touching its connections (after a fork: they belong
        to the parent)."""
        with self._engines_lock:
            engines = list(self._engines.values())
            self._engines.clear()
            self._pid = os.getpid()
        for engine in engines:
            engine.dispose(close=False)

    def _close_engines(self) -> None:
        with self._engines_lock:
            engines = list(self._engines.values())
            self._engines.clear()
        for engine in engines:
            engine.dispose()

    # -- writes ----------------------------------------------------------------------------
    def store_event_batch(self, events: Sequence[Any]) -> None:
        """Events of one run that only go to its own file: one transaction; anything else (asset,
        check and run-status events are mirrored into the index) goes through :meth:`store_event`."""
        from noetl_dagster.compat import ASSET_CHECK_EVENTS, ASSET_EVENTS, EVENT_TYPE_TO_PIPELINE_RUN_STATUS

        mirrored = {*ASSET_EVENTS, *ASSET_CHECK_EVENTS, *EVENT_TYPE_TO_PIPELINE_RUN_STATUS}
        run_ids = {e.run_id for e in events}
        if len(run_ids) != 1 or any(e.is_dagster_event and e.dagster_event_type in mirrored for e in events):
            for event in events:
                self.store_event(event)
            return
        statements = [self.prepare_insert_event(e) for e in events]
        with self.run_connection(next(iter(run_ids))) as conn:
            for statement in statements:
                conn.execute(statement)

    # -- lifecycle ---------------------------------------------------------------------------
    def wipe(self) -> None:
        self._close_engines()  # the files are deleted: no connection may keep them open
        super().wipe()

    def dispose(self) -> None:
        self._close_engines()
        super().dispose()


def db_optional(config_type: Any) -> Any:
    from noetl_dagster.compat import ConfigField as Field

    return Field(config_type, is_required=False)


def _on_connect(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


def _after_fork() -> None:
    for storage in list(_ALL):
        storage._pid = -1  # the next connection in the child drops the inherited engines


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


def instance_config(home: str) -> str:
    """The ``dagster.yaml`` text of an instance at ``home`` using this storage for its event log
    (run and schedule storage stay Dagster's SQLite defaults under ``home``)."""
    base = os.path.join(os.path.abspath(home), "history", "runs", "")
    return ("event_log_storage:\n"
            "  module: noetl_dagster.storage\n"
            "  class: FastSqliteEventLogStorage\n"
            f"  config:\n    base_dir: {_yaml_string(base)}\n"
            "telemetry:\n  enabled: false\n")


def write_instance_config(home: str) -> str:
    """Write :func:`instance_config` to ``home/dagster.yaml``; returns the path."""
    os.makedirs(home, exist_ok=True)
    path = os.path.join(home, "dagster.yaml")
    with open(path, "w", encoding="utf-8") as f:
        f.write(instance_config(home))
    return path


def _yaml_string(text: str) -> str:
    import json

    return json.dumps(text)  # a JSON string is a YAML double-quoted scalar


#: where `noetl-dagster run` records runs when DAGSTER_HOME is not set
LOCAL_DAGSTER_HOME = ".dagster_home"


def default_instance() -> dg.DagsterInstance:
    """The instance at ``DAGSTER_HOME``, else a persistent one under ``./.dagster_home``."""
    if os.environ.get("DAGSTER_HOME"):
        return dg.DagsterInstance.get()
    home = Path(LOCAL_DAGSTER_HOME).resolve()
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():  # the embedded default, with the event log that keeps its connections
        write_instance_config(str(home))
    return dg.DagsterInstance.from_config(str(home))
