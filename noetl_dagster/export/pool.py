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
import weakref
from contextlib import contextmanager
from typing import Any, Callable, Hashable, Iterator


class ClientPool:
    """Clients by key, each with a lock for callers to share it across threads and a set of
    marks for work done once per client (a schema migrated, a collection created)."""

    def __init__(self, releasable: Callable[[Any], bool]) -> None:
        self._releasable = releasable
        self._guard = threading.Lock()
        self._clients: dict[Hashable, Any] = {}
        self._locks: dict[int, threading.RLock] = {}
        self._marks: set[tuple[int, Hashable]] = set()
        self._kept: set[Hashable] = set()
        self._borrowers: dict[Hashable, int] = {}
        self._tracked: set[int] = set()
        self._dead: list[int] = []

    def get(self, key: Hashable, create: Callable[[], Any]) -> Any:
        """The client for ``key`` (``create()`` on first use), kept open for the process's life."""
        with self._guard:
            client = self._client(key, create)
            self._kept.add(key)
            return client

    @contextmanager
    def session(self, key: Hashable, create: Callable[[], Any]) -> Iterator[Any]:
        """The client for ``key`` for a ``with`` block; closed after the last borrower if releasable."""
        with self._guard:
            client = self._client(key, create)
            self._borrowers[key] = self._borrowers.get(key, 0) + 1
        try:
            yield client
        finally:
            with self._guard:  # closed under the guard: a new session never meets a half-closed folder
                self._borrowers[key] -= 1
                if self._borrowers[key] == 0 and key not in self._kept and self._releasable(key):
                    del self._borrowers[key], self._clients[key]
                    self._forget(id(client))
                    client.close()

    def lock_for(self, client: Any) -> threading.RLock:
        """One re-entrant lock per client (local-mode and chdb clients are not thread-safe)."""
        with self._guard:
            self._track(client)
            return self._locks.setdefault(id(client), threading.RLock())

    def marked(self, client: Any, what: Hashable) -> bool:
        with self._guard:
            self._track(client)
            return (id(client), what) in self._marks

    def mark(self, client: Any, what: Hashable) -> None:
        """Remember that ``what`` was done for ``client`` (forgotten when it is closed or collected)."""
        with self._guard:
            self._track(client)
            self._marks.add((id(client), what))

    def _track(self, client: Any) -> None:
        """Forget a client's lock and marks once it is garbage-collected: a later client that
        reuses its ``id`` (also one the pool did not create) starts unmarked. The finalizer only
        queues the id (it may run inside any allocation, even under the guard); the next guarded
        call forgets it."""
        while self._dead:
            self._forget(self._dead.pop())
        if id(client) not in self._tracked:
            self._tracked.add(id(client))
            weakref.finalize(client, self._dead.append, id(client))

    def _forget(self, ident: int) -> None:
        self._locks.pop(ident, None)
        self._tracked.discard(ident)
        self._marks.difference_update({m for m in self._marks if m[0] == ident})

    def _client(self, key: Hashable, create: Callable[[], Any]) -> Any:
        client = self._clients.get(key)
        if client is None:
            client = self._clients[key] = create()
        return client
