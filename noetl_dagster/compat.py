"""Every private Dagster name this package uses, in one place (pinned: dagster==1.13.27).

Dagster keeps these under ``dagster._...``: they may move in any release. Importing them only here
makes an upgrade one file to check; ``tests/test_architecture.py`` fails on a private import
anywhere else. Names Dagster loads with ``import dagster`` anyway are imported directly; the event
log storage classes load on first use (``__getattr__``), so the CLI's start-up never pays for them.

Examples:
    >>> from noetl_dagster.compat import make_new_run_id
    >>> len(make_new_run_id())
    36
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from dagster._config import Field as ConfigField
from dagster._config import IntSource, StringSource, process_config
from dagster._core.definitions.dependency import DynamicCollectDependencyDefinition
from dagster._core.definitions.run_request import DagsterRunReaction
from dagster._core.event_api import RunStatusChangeRecordsFilter
from dagster._core.events import (ASSET_CHECK_EVENTS, ASSET_EVENTS, BATCH_WRITABLE_EVENTS,
                                  EVENT_TYPE_TO_PIPELINE_RUN_STATUS, EngineEventData)
from dagster._core.utils import make_new_run_id
from dagster._record import copy as copy_record
from dagster._serdes import ConfigurableClassData

#: name -> module of the names imported on first use
_LAZY = {
    "EventLogCursor": "dagster._core.storage.event_log.base",
    "SqlEventLogStorageTable": "dagster._core.storage.event_log.schema",
    "SqlEventLogStorage": "dagster._core.storage.event_log.sql_event_log",
    "SqliteEventLogStorage": "dagster._core.storage.event_log.sqlite.sqlite_event_log",
    "SQLITE_BUSY_TIMEOUT_SECONDS": "dagster._core.storage.sqlite",
    "create_db_conn_string": "dagster._core.storage.sqlite",
    "INDEX_SHARD_NAME": "dagster._core.storage.event_log.sqlite.sqlite_event_log",
    "SqliteEventLogStorageWatchdog": "dagster._core.storage.event_log.sqlite.sqlite_event_log",
    "pg_config": "dagster._core.storage.config",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


if TYPE_CHECKING:
    from dagster._core.storage.event_log.base import EventLogCursor
    from dagster._core.storage.event_log.schema import SqlEventLogStorageTable
    from dagster._core.storage.event_log.sql_event_log import SqlEventLogStorage
    from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage
    from dagster._core.storage.config import pg_config
    from dagster._core.storage.event_log.sqlite.sqlite_event_log import (INDEX_SHARD_NAME,
                                                                         SqliteEventLogStorageWatchdog)
    from dagster._core.storage.sqlite import SQLITE_BUSY_TIMEOUT_SECONDS, create_db_conn_string

__all__ = ["ASSET_CHECK_EVENTS", "ASSET_EVENTS", "BATCH_WRITABLE_EVENTS", "ConfigField",
           "ConfigurableClassData", "copy_record", "create_db_conn_string", "DagsterRunReaction",
           "DynamicCollectDependencyDefinition", "EngineEventData", "EVENT_TYPE_TO_PIPELINE_RUN_STATUS",
           "EventLogCursor", "INDEX_SHARD_NAME", "IntSource", "make_new_run_id", "pg_config",
           "process_config", "RunStatusChangeRecordsFilter", "SqlEventLogStorage", "SqlEventLogStorageTable",
           "SQLITE_BUSY_TIMEOUT_SECONDS", "SqliteEventLogStorage", "SqliteEventLogStorageWatchdog",
           "StringSource"]
