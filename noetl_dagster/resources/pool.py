"""Clients shared per key in one process: kept open, or borrowed for a ``with`` block.

chdb and Qdrant local mode lock their folder per process. A short-lived process (a run, the CLI)
keeps its client for its whole life (:meth:`ClientPool.get`); a long-lived one (the code server
evaluating sensors) borrows it per tick (:meth:`ClientPool.session`), and the client of a
releasable key is closed when the last borrower is done and nobody keeps it: another process
can then open the folder until the next tick.

Example::

    pool = ClientPool(releasable=lambda key: key[0].startswith("chdb://"))
    with pool.session(("chdb:///tmp/ch",), lambda: clickhouse_connect.get_client(dsn="chdb:///tmp/ch")) as c:
        c.query("SELECT 1")
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Any, Callable, Hashable, Iterator


class ClientPool:
    """Clients by key, each with a lock for callers to share it across threads and a set of
    marks for work done once per client (a schema migrated, a collection created)."""

    def __init__(self, releasable: Callable[[Hashable], bool]) -> None:
        self._releasable = releasable
        self._guard = threading.Lock()
        self._clients: dict[Hashable, Any] = {}
        self._locks: dict[int, threading.RLock] = {}
        self._marks: set[tuple[int, Hashable]] = set()
        self._kept: set[Hashable] = set()
        self._borrowers: dict[Hashable, int] = {}

    def get(self, key: Hashable, create: Callable[[], Any]) -> Any:
        """The client for ``key`` (``create()`` on first use), kept open for the process's life."""
        with self._guard:
            self._kept.add(key)
            return self._client(key, create)

    @contextmanager
    def session(self, key: Hashable, create: Callable[[], Any]) -> Iterator[Any]:
        """The client for ``key`` for a ``with`` block; closed after the last borrower if releasable."""
        with self._guard:
            client = self._client(key, create)
            self._borrowers[key] = self._borrowers.get(key, 0) + 1
        try:
            yield client
        finally:
            with self._guard:
                self._borrowers[key] -= 1
                release = self._borrowers[key] == 0 and key not in self._kept and self._releasable(key)
                if release:
                    del self._borrowers[key], self._clients[key]
                    self._locks.pop(id(client), None)
                    self._marks.difference_update({m for m in self._marks if m[0] == id(client)})
            if release:
                client.close()

    def lock_for(self, client: Any) -> threading.RLock:
        """One re-entrant lock per client (local-mode and chdb clients are not thread-safe)."""
        with self._guard:
            return self._locks.setdefault(id(client), threading.RLock())

    def marked(self, client: Any, what: Hashable) -> bool:
        return (id(client), what) in self._marks

    def mark(self, client: Any, what: Hashable) -> None:
        """Remember that ``what`` was done for ``client`` (forgotten when the client is closed)."""
        with self._guard:
            self._marks.add((id(client), what))

    def _client(self, key: Hashable, create: Callable[[], Any]) -> Any:
        client = self._clients.get(key)
        if client is None:
            client = self._clients[key] = create()
        return client
