"""``FastSqliteEventLogStorage`` and ``FastPostgresEventLogStorage``: Dagster's SQLite event log
(the embedded default) and dagster-postgres's event log without a new database connection per event.

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
* :meth:`store_event_batch` writes a batch of one run's events in one transaction;
* a new run's file is a copy of an empty run file that Dagster's own ``_initdb`` made once per
  process (Dagster runs ``_initdb`` per run, loading alembic's migration scripts to check the
  revision: ~0.1 s CPU, most of a short run's fixed cost); a file that already exists is checked
  by ``_initdb`` as before;
* watchers (``instance.watch_event_logs``, the webserver's live run view) are also woken by the
  run file's WAL, where the kept connections commit.

Both event log classes write a step's events in one transaction (Dagster hands a storage one
event at a time; its own batching, ``DAGSTER_EVENT_BATCH_SIZE``, covers asset events only): a
running step's own events and log lines wait in memory until the step ends, and are written in
one batch before its terminal event returns, so a finished step's events are never lost. Asset,
check and run events, any read through the storage, ``dispose`` and interpreter exit write what
waits first, so readers in the process see every event in storage order; other processes (the
webserver, the daemon) see a running step's events at most ``flush_interval`` seconds (default
0.25) late, and a killed process loses at most that much of a running step's events. Set
``flush_interval: 0`` to write every event as it comes.

Pools are dropped in a forked child (a connection never crosses processes) and on
:meth:`wipe`/:meth:`dispose`.

Configure it in ``$DAGSTER_HOME/dagster.yaml`` (run and schedule storage stay the default)::

    event_log_storage:
      module: noetl_dagster.storage
      class: FastSqliteEventLogStorage
      config:
        base_dir: /path/to/dagster_home/history/runs/   # where the default keeps run event logs
        # optional: max_open_shards (64), flush_interval (0.25 s)

or write that file with :func:`write_instance_config`.

``FastPostgresEventLogStorage``, ``FastPostgresRunStorage`` and ``FastPostgresScheduleStorage`` are
dagster-postgres's storages (same tables, migrations, ``NOTIFY run_events`` per event, polling
watcher for ``watch_event_logs``) with a kept connection pool instead of dagster-postgres's
``NullPool`` (a new connection, with its password handshake, for every event and every read; a
run also reads and updates its run row ~19 times):

* a ``QueuePool`` of ``pool_size`` (default 2) connections plus ``max_overflow`` (default 8) in
  autocommit mode, each checked with a ping when taken (a restarted server costs no failed call),
  recycled after ``pool_recycle`` seconds (default 3600) - as dagster-postgres
  itself keeps one in the webserver (``optimize_for_webserver``);
* a batch of events (a step's) goes in one multi-row ``INSERT``, then their ``NOTIFY``s;
* a forked child drops the inherited pool without closing the parent's sockets, and opens its
  own; :meth:`dispose` closes the pool.

Configure them with dagster-postgres's fields (``postgres_url`` or ``postgres_db``; ``{env: ...}``
values work) in place of ``storage: postgres:``::

    run_storage:
      module: noetl_dagster.storage
      class: FastPostgresRunStorage
      config: &pg
        postgres_db: {hostname: db, port: 5432, username: dagster, password: {env: PGPASSWORD},
                      db_name: dagster, scheme: postgresql+psycopg2}
    event_log_storage:
      module: noetl_dagster.storage
      class: FastPostgresEventLogStorage
      config: *pg          # (a full mapping may add pool_size, max_overflow, pool_recycle, flush_interval)
    schedule_storage:
      module: noetl_dagster.storage
      class: FastPostgresScheduleStorage
      config: *pg

(``write_instance_config(home, postgres=...)`` writes this. Every process that opens the instance -
webserver, daemon, run workers - must be able to import ``noetl_dagster``.)
"""

from __future__ import annotations

import atexit
import contextlib
import os
import tempfile
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dagster as dg
import sqlalchemy as db
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import NullPool, QueuePool

from noetl_dagster.compat import (INDEX_SHARD_NAME, SQLITE_BUSY_TIMEOUT_SECONDS, ConfigurableClassData, IntSource,
                                  SqliteEventLogStorage, SqliteEventLogStorageWatchdog, StringSource,
                                  create_db_conn_string)

__all__ = ["FastPostgresEventLogStorage", "FastPostgresRunStorage", "FastPostgresScheduleStorage",
           "FastSqliteEventLogStorage", "default_instance", "instance_config", "postgres_instance_config",
           "write_instance_config"]

#: run databases whose engines stay open at most (each keeps its pooled connections)
DEFAULT_MAX_OPEN_SHARDS = 64
#: seconds a running step's events may wait in memory (``_StepTransactions``); 0: none wait
DEFAULT_FLUSH_INTERVAL = 0.25
#: the Postgres pool: kept connections, extra ones under load, seconds before one is reopened
DEFAULT_PG_POOL_SIZE, DEFAULT_PG_MAX_OVERFLOW, DEFAULT_PG_POOL_RECYCLE = 2, 8, 3600
PG_CHANNEL = "run_events"  # dagster-postgres's NOTIFY channel (kept for watchers of older versions)
_ALL: "weakref.WeakSet[Any]" = weakref.WeakSet()
#: an empty run file as Dagster's ``_initdb`` makes it (see ``FastSqliteEventLogStorage._seed``)
_TEMPLATE: dict[str, bytes | None] = {}
_TEMPLATE_LOCK = threading.Lock()


class _StepTransactions:
    """A step's events in one transaction: events of a running step (its own events and log
    lines, not asset, check or run events) wait in memory and go to the database in one batch
    when the step ends (``STEP_SUCCESS``/``FAILURE``/``SKIPPED``/``UP_FOR_RETRY``/``RESTARTED``),
    when any other event is stored, before any read through this storage, at ``dispose`` and at
    interpreter exit; and, for a step still running, at most ``flush_interval`` seconds after the
    first of them (a thread: other processes - the webserver, the daemon - see a running step's
    events that late at most). A finished step's events are written before its terminal event
    returns; a killed process loses at most the last ``flush_interval`` of a running step's
    events. ``flush_interval: 0`` writes every event as it comes (as Dagster does)."""

    _flush_interval: float

    def _init_step_transactions(self, flush_interval: float) -> None:
        self._flush_interval = max(0.0, float(flush_interval))
        self._reset_pending()

    def _reset_pending(self) -> None:
        self._pending: list[Any] = []
        self._pending_since = 0.0
        self._flushing = False
        self._pending_lock = threading.RLock()
        self._direct = threading.local()
        self._flusher: threading.Thread | None = None
        self._flusher_stop = threading.Event()

    def store_event(self, event: Any) -> None:
        if self._flush_interval <= 0 or getattr(self._direct, "on", False) or not _step_scoped(event):
            self._flush_pending()
            super().store_event(event)  # type: ignore[misc]
            return
        with self._pending_lock:
            if not self._pending:
                self._pending_since = time.monotonic()
            self._pending.append(event)
            if self._flusher is None:
                self._start_flusher()
            if event.is_dagster_event and event.dagster_event_type in _STEP_ENDS:
                self._flush_pending()

    def store_event_batch(self, events: Sequence[Any]) -> None:
        self._flush_pending()
        super().store_event_batch(events)  # type: ignore[misc]

    def _flush_pending(self) -> None:
        # read without the lock: the common case (nothing held, no flush under way) costs nothing;
        # during another thread's flush, wait for it (a read must see what was stored before it)
        if not self._pending and not self._flushing:
            return
        with self._pending_lock:
            events, self._pending = self._pending, []
            if not events:
                return
            self._direct.on = True
            self._flushing = True
            start = 0
            try:
                for i in range(1, len(events) + 1):  # consecutive events of one run: one batch
                    if i == len(events) or events[i].run_id != events[start].run_id:
                        super().store_event_batch(events[start:i])  # type: ignore[misc]
                        start = i
            except BaseException:
                self._pending[:0] = events[start:]  # not written: kept for the next flush
                raise
            finally:
                self._direct.on = False
                self._flushing = False

    def _start_flusher(self) -> None:
        ref, stop, interval = weakref.ref(self), self._flusher_stop, self._flush_interval

        def loop() -> None:
            while not stop.wait(interval / 2):
                storage = ref()
                if storage is None:
                    return
                if storage._pending and time.monotonic() - storage._pending_since >= interval:
                    try:
                        storage._flush_pending()
                    except Exception:  # noqa: BLE001 - the next store or read flushes and raises
                        pass
                del storage

        self._flusher = threading.Thread(target=loop, name="noetl-event-flush", daemon=True)
        self._flusher.start()

    def _stop_flusher(self) -> None:
        self._flush_pending()
        self._flusher_stop.set()
        self._flusher = None
        self._flusher_stop = threading.Event()


def _event_sets() -> tuple[frozenset[Any], frozenset[Any]]:
    from dagster import DagsterEventType

    from noetl_dagster.compat import ASSET_CHECK_EVENTS, ASSET_EVENTS, EVENT_TYPE_TO_PIPELINE_RUN_STATUS

    ends = frozenset({DagsterEventType.STEP_SUCCESS, DagsterEventType.STEP_FAILURE, DagsterEventType.STEP_SKIPPED,
                      DagsterEventType.STEP_UP_FOR_RETRY, DagsterEventType.STEP_RESTARTED})
    return ends, frozenset({*ASSET_EVENTS, *ASSET_CHECK_EVENTS, *EVENT_TYPE_TO_PIPELINE_RUN_STATUS})


#: a step's terminal events; events never held back (the index, asset and run status readers)
_STEP_ENDS, _NOT_BUFFERED = _event_sets()


def _step_scoped(event: Any) -> bool:
    if event.step_key is None:
        return False
    return not (event.is_dagster_event and event.dagster_event_type in _NOT_BUFFERED)


class _SqliteBatches(SqliteEventLogStorage):
    def store_event_batch(self, events: Sequence[Any]) -> None:
        """Events of one run that only go to its own file: one transaction; anything else (asset,
        check and run-status events are mirrored into the index) goes through ``store_event``."""
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


class FastSqliteEventLogStorage(_StepTransactions, _SqliteBatches):
    """SQLite event log storage, one file per run as Dagster's, with kept connections.

    Example (``dagster.yaml``)::

        event_log_storage:
          module: noetl_dagster.storage
          class: FastSqliteEventLogStorage
          config: {base_dir: /home/me/.dagster/history/runs/}
    """

    def __init__(self, base_dir: str, inst_data: ConfigurableClassData | None = None,
                 max_open_shards: int = DEFAULT_MAX_OPEN_SHARDS,
                 flush_interval: float = DEFAULT_FLUSH_INTERVAL) -> None:
        self._init_step_transactions(flush_interval)
        self._engines: OrderedDict[str, Engine] = OrderedDict()
        self._engines_lock = threading.Lock()
        self._max_open_shards = max(2, int(max_open_shards))
        self._pid = os.getpid()
        super().__init__(base_dir, inst_data=inst_data)
        _ALL.add(self)

    @classmethod
    def config_type(cls) -> dict[str, Any]:
        return {"base_dir": StringSource, "max_open_shards": db_optional(IntSource),
                "flush_interval": db_optional(float)}

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
        self._flush_pending()  # every read and write sees the events stored before it
        with self._db_lock:
            engine, _ = self._engine(shard)
            if shard not in self._initialized_dbs:
                if not self._seed(shard):
                    self._initdb(engine)
                self._initialized_dbs.add(shard)
            with engine.connect() as conn:
                with conn.begin():
                    yield conn

    def _seed(self, shard: str) -> bool:
        """Create a new run's file as a copy of an empty run file made by Dagster's own
        ``_initdb`` (once per process): ``_initdb`` per run loads alembic's ~90 migration scripts
        to check the revision (~0.1 s CPU, most of a short run's fixed cost). False when the
        file (or a leftover WAL of it) exists, or another process created it first: then
        Dagster's ``_initdb`` checks it as before."""
        if shard == INDEX_SHARD_NAME:
            return False
        path = self.path_for_shard(shard)
        if any(os.path.exists(path + suffix) for suffix in ("", "-wal", "-shm")):
            return False
        template = self._template()
        if template is None:
            return False
        seed = f"{path}.{os.getpid()}.{threading.get_ident()}.seed"  # not *.db: never read as a run
        try:
            with open(seed, "wb") as f:
                f.write(template)
            os.link(seed, path)  # atomic: fails if another process made the file meanwhile
        except FileExistsError:
            return False
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(seed)
        return True

    def _template(self) -> bytes | None:
        with _TEMPLATE_LOCK:
            if "run" not in _TEMPLATE:
                with tempfile.TemporaryDirectory(prefix="noetl-runfile-") as tmp:
                    engine = db.create_engine(create_db_conn_string(tmp, "template"), poolclass=NullPool,
                                              connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS})
                    try:
                        self._initdb(engine)
                    finally:
                        engine.dispose()
                    # the last connection closed: its WAL is checkpointed into the file and removed
                    leftover = os.path.exists(os.path.join(tmp, "template.db-wal"))
                    _TEMPLATE["run"] = None if leftover else Path(tmp, "template.db").read_bytes()
            return _TEMPLATE["run"]

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

    # -- watchers ----------------------------------------------------------------------------
    def watch(self, run_id: str, cursor: str | None, callback: Any) -> None:
        """As Dagster's, but woken by the run file's write-ahead log too: a kept connection commits
        into ``<run>.db-wal`` and the run file itself changes only at a checkpoint (Dagster's
        watcher, looking at ``<run>.db`` alone, would see a live run's events only then)."""
        from watchdog.observers import Observer

        observer: Any = self._obs
        if not observer:
            observer = Observer()
            observer.start()
            self._obs = observer  # Dagster declares it None until it watches
        watchdog = _WalWatchdog(self, run_id, callback, cursor)
        self._watchers[run_id][callback] = (watchdog, observer.schedule(watchdog, self._base_dir, recursive=True))

    # -- lifecycle ---------------------------------------------------------------------------
    def wipe(self) -> None:
        self._flush_pending()
        self._close_engines()  # the files are deleted: no connection may keep them open
        super().wipe()

    def dispose(self) -> None:
        self._stop_flusher()
        self._close_engines()
        super().dispose()


class _WalWatchdog(SqliteEventLogStorageWatchdog):
    """Dagster's run-file watchdog, also woken by writes to the file's WAL."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._paths = (self._log_path, self._log_path + "-wal")
        self._patterns = list(self._paths)

    def on_modified(self, event: Any) -> None:
        if event.src_path in self._paths:
            self._process_log()


def _define_postgres_storages() -> dict[str, type]:
    """``FastPostgres{EventLog,Run,Schedule}Storage``, defined on first use: importing
    dagster-postgres (alembic, psycopg2) costs ~0.8 s CPU, which a SQLite instance or the CLI
    never needs."""
    from dagster_postgres.event_log.event_log import PostgresEventLogStorage
    from dagster_postgres.run_storage import PostgresRunStorage
    from dagster_postgres.schedule_storage import PostgresScheduleStorage
    from dagster_postgres.utils import create_pg_engine, get_token_provider_from_config, pg_url_from_config

    class KeptPool:
        """A dagster-postgres storage whose engine keeps a pool (``_engine`` is what every method
        of theirs connects through: a forked child gets a fresh, empty pool)."""

        postgres_url: str
        _token_provider: Any
        _pid: int
        _engine_value: Engine

        def __init__(self, postgres_url: str, should_autocreate_tables: bool = True,
                     inst_data: ConfigurableClassData | None = None, token_provider: Any = None,
                     pool_size: int = DEFAULT_PG_POOL_SIZE, max_overflow: int = DEFAULT_PG_MAX_OVERFLOW,
                     pool_recycle: int = DEFAULT_PG_POOL_RECYCLE) -> None:
            self._pool_args = {"pool_size": max(1, int(pool_size)), "max_overflow": max(0, int(max_overflow)),
                               "pool_recycle": int(pool_recycle)}
            super().__init__(postgres_url, should_autocreate_tables, inst_data=inst_data,  # type: ignore[call-arg]
                             token_provider=token_provider)
            self._engine = create_pg_engine(self.postgres_url, self._token_provider, isolation_level="AUTOCOMMIT",
                                            poolclass=QueuePool, pool_reset_on_return=None, pool_pre_ping=True,
                                            **self._pool_args)
            _ALL.add(self)

        @property  # type: ignore[no-redef]  # dagster-postgres assigns `_engine`: the setter below takes it
        def _engine(self) -> Engine:
            if self._pid != os.getpid():
                self._engine_value.dispose(close=False)  # the parent's sockets: leave them open
                self._pid = os.getpid()
            return self._engine_value

        @_engine.setter
        def _engine(self, engine: Engine) -> None:  # dagster-postgres sets it (and in optimize_for_webserver)
            previous = self.__dict__.get("_engine_value")
            self._engine_value = engine
            self._pid = os.getpid()
            if previous is not None and previous is not engine:
                previous.dispose()

        @classmethod
        def config_type(cls) -> Any:
            from noetl_dagster.compat import pg_config

            fields: dict[str, Any] = dict(pg_config())  # type: ignore[arg-type]  # a mapping of config fields
            return {**fields, "pool_size": db_optional(IntSource), "max_overflow": db_optional(IntSource),
                    "pool_recycle": db_optional(IntSource)}

        @classmethod
        def from_config_value(cls, inst_data: ConfigurableClassData | None, config_value: Mapping[str, Any]) -> Any:
            pool = {k: config_value[k] for k in ("pool_size", "max_overflow", "pool_recycle") if k in config_value}
            return cls(pg_url_from_config(config_value), config_value.get("should_autocreate_tables", True),
                       inst_data=inst_data, token_provider=get_token_provider_from_config(config_value), **pool)

        def dispose(self) -> None:
            super().dispose()  # type: ignore[misc]
            self._engine.dispose()

    class FastPostgresRunStorage(KeptPool, PostgresRunStorage):
        """dagster-postgres's run storage with a kept connection pool (a run reads and updates its
        row ~19 times: with dagster-postgres's ``NullPool`` each is a new connection)."""

    class FastPostgresScheduleStorage(KeptPool, PostgresScheduleStorage):
        """dagster-postgres's schedule storage with a kept connection pool (daemon ticks)."""

    class PostgresBatches(KeptPool, PostgresEventLogStorage):
        def store_event_batch(self, events: Sequence[Any]) -> None:
            """Asset batches as dagster-postgres stores them; any other events in storage order, runs
            of plain events (neither asset nor check events) in one multi-row ``INSERT`` (one
            transaction), then their ``NOTIFY``s."""
            from noetl_dagster.compat import ASSET_CHECK_EVENTS, ASSET_EVENTS, BATCH_WRITABLE_EVENTS

            if events and all(e.is_dagster_event and e.dagster_event_type in BATCH_WRITABLE_EVENTS for e in events):
                super().store_event_batch(events)
                return
            indexed = {*ASSET_EVENTS, *ASSET_CHECK_EVENTS}
            plain: list[Any] = []
            for event in events:
                if event.is_dagster_event and event.dagster_event_type in indexed:
                    self._insert_plain(plain)
                    plain = []
                    self.store_event(event)
                else:
                    plain.append(event)
            self._insert_plain(plain)

        def _insert_plain(self, events: Sequence[Any]) -> None:
            if not events:
                return
            from noetl_dagster.compat import SqlEventLogStorageTable

            table = SqlEventLogStorageTable
            statement = self.prepare_insert_event_batch(events).returning(table.c.run_id, table.c.id)
            with self._connect() as conn:  # one statement: one transaction
                rows = conn.execute(statement).fetchall()
                conn.execute(db.text(f"SELECT pg_notify('{PG_CHANNEL}', n) FROM unnest(CAST(:ids AS text[])) AS n"),
                             {"ids": [f"{run_id}_{event_id}" for run_id, event_id in rows]})

    class FastPostgresEventLogStorage(_StepTransactions, PostgresBatches):
        """dagster-postgres's event log storage with a kept connection pool and a step's events
        in one transaction (see the module doc).

        Example (``dagster.yaml``)::

            event_log_storage:
              module: noetl_dagster.storage
              class: FastPostgresEventLogStorage
              config:
                postgres_url: postgresql+psycopg2://dagster:secret@db:5432/dagster
        """

        def __init__(self, postgres_url: str, should_autocreate_tables: bool = True,
                     inst_data: ConfigurableClassData | None = None, token_provider: Any = None,
                     flush_interval: float = DEFAULT_FLUSH_INTERVAL, **pool: Any) -> None:
            self._init_step_transactions(flush_interval)
            super().__init__(postgres_url, should_autocreate_tables, inst_data=inst_data,
                             token_provider=token_provider, **pool)

        @classmethod
        def config_type(cls) -> Any:
            return {**super().config_type(), "flush_interval": db_optional(float)}

        @classmethod
        def from_config_value(cls, inst_data: ConfigurableClassData | None, config_value: Mapping[str, Any]) -> Any:
            extra = {k: config_value[k] for k in ("pool_size", "max_overflow", "pool_recycle", "flush_interval")
                     if k in config_value}
            return cls(pg_url_from_config(config_value), config_value.get("should_autocreate_tables", True),
                       inst_data=inst_data, token_provider=get_token_provider_from_config(config_value), **extra)

        def _connect(self) -> Any:
            self._flush_pending()  # every read and write sees the events stored before it
            return super()._connect()

        def wipe(self) -> None:
            self._flush_pending()
            super().wipe()

        def dispose(self) -> None:
            self._stop_flusher()
            super().dispose()

    classes: dict[str, type] = {c.__name__: c for c in (FastPostgresEventLogStorage, FastPostgresRunStorage,
                                       FastPostgresScheduleStorage)}
    for name, cls in classes.items():
        cls.__module__, cls.__qualname__ = __name__, name
    return classes


_POSTGRES_CLASSES = ("FastPostgresEventLogStorage", "FastPostgresRunStorage", "FastPostgresScheduleStorage")


def __getattr__(name: str) -> Any:
    if name in _POSTGRES_CLASSES:
        classes = _define_postgres_storages()
        globals().update(classes)
        return classes[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
        if isinstance(storage, _StepTransactions):
            storage._reset_pending()  # the parent writes what it held; no thread runs here yet


def _at_exit() -> None:
    for storage in list(_ALL):
        if isinstance(storage, _StepTransactions):
            with contextlib.suppress(Exception):
                storage._flush_pending()


atexit.register(_at_exit)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


def instance_config(home: str, postgres: str | Mapping[str, Any] | None = None) -> str:
    """The ``dagster.yaml`` text of an instance at ``home`` using our event log storage.

    Without ``postgres``: :class:`FastSqliteEventLogStorage` (run and schedule storage stay
    Dagster's SQLite defaults under ``home``). With ``postgres`` (a ``postgres_url`` string, or
    dagster-postgres's ``postgres_db`` fields: ``hostname``, ``port``, ``username``, ``password``,
    ``db_name``, ``scheme``, ... where ``{"env": "VAR"}`` values work): every storage in that
    database, run and schedule storage dagster-postgres's, the event log
    ``FastPostgresEventLogStorage``."""
    if postgres is not None:
        return postgres_instance_config(postgres)
    base = os.path.join(os.path.abspath(home), "history", "runs", "")
    return ("event_log_storage:\n"
            "  module: noetl_dagster.storage\n"
            "  class: FastSqliteEventLogStorage\n"
            f"  config:\n    base_dir: {_yaml_string(base)}\n"
            "telemetry:\n  enabled: false\n")


def postgres_instance_config(postgres: str | Mapping[str, Any]) -> str:
    """The ``dagster.yaml`` text with every storage in one PostgreSQL database (see
    :func:`instance_config`)."""
    import yaml

    import copy

    config = {"postgres_url": postgres} if isinstance(postgres, str) else {"postgres_db": dict(postgres)}
    doc: dict[str, Any] = {f"{kind}_storage": {"module": "noetl_dagster.storage", "class": f"FastPostgres{name}Storage",
                                               "config": copy.deepcopy(config)}
                           for kind, name in (("run", "Run"), ("event_log", "EventLog"), ("schedule", "Schedule"))}
    doc["telemetry"] = {"enabled": False}
    return yaml.safe_dump(doc, sort_keys=False)


def write_instance_config(home: str, postgres: str | Mapping[str, Any] | None = None) -> str:
    """Write :func:`instance_config` to ``home/dagster.yaml``; returns the path."""
    os.makedirs(home, exist_ok=True)
    path = os.path.join(home, "dagster.yaml")
    with open(path, "w", encoding="utf-8") as f:
        f.write(instance_config(home, postgres))
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
