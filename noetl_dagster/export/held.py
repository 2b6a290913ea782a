"""Embedded chdb and Qdrant folders held by another process: wait a little, then say so plainly.

chdb and Qdrant local mode lock their folder per process. ``dagster dev``'s export sensors hold
them during a tick (a few seconds every 30 s), a tuning run while it reads. The CLI opens its
sinks as sessions (closed before the interpreter exits, so no ``QdrantClient.__del__`` noise),
retries while a folder is held and otherwise stops with one line naming the folder and the way
out, never a traceback. chdb writes its own lock error straight to file descriptor 2 ("Cannot
lock file ... Another server instance ..."); :func:`quiet_native_stderr` keeps that off the
console while a folder is being opened (the sensors use it too).

Example::

    with ExitStack() as stack:
        sink = open_sink(stack, "qdrant", wait_seconds=15)   # SinkHeld if still held after 15 s
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from typing import Any, Callable, Iterator

#: how each embedded sink reports a folder locked by another process: (exception type name, marker)
HELD_MARKERS = {
    "clickhouse": ("ProgrammingError", "Unable to open the chdb engine"),
    "qdrant": ("RuntimeError", "already accessed by another instance"),
}
FOLDERS = {"clickhouse": "the chdb folder", "qdrant": "the Qdrant local-mode folder"}


class SinkHeld(Exception):
    """A sink's embedded folder stayed locked by another process."""

    def __init__(self, sink: str, where: str, waited: float) -> None:
        self.sink, self.where, self.waited = sink, where, waited
        super().__init__(
            f"{sink}: {FOLDERS.get(sink, 'the folder')} {where} is held by another process (dagster dev's "
            f"export sensors during a tick, a tuning run, another `noetl-dagster export`); still held after "
            f"{waited:.0f}s. Retry, pass --wait N, stop that process, or use a server "
            f"({'NOETL_CLICKHOUSE_DSN' if sink == 'clickhouse' else 'NOETL_QDRANT_URL'}).")


def is_held(sink: str, exc: BaseException) -> bool:
    name, marker = HELD_MARKERS.get(sink, ("", ""))
    return bool(marker) and type(exc).__name__ == name and marker in str(exc)


@contextmanager
def quiet_native_stderr() -> Iterator[None]:
    """Send what native code writes to file descriptor 2 to a scratch file for the block."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no real fd 2 (captured): nothing to silence
        yield
        return
    with tempfile.TemporaryFile() as scratch:
        os.dup2(scratch.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def open_sink(stack: ExitStack, name: str, *, clickhouse: Any = None, qdrant: Any = None, embedder: Any = None,
              wait_seconds: float = 15.0, sleep: Callable[[float], None] = time.sleep) -> Any:
    """The sink ``name`` (``clickhouse`` | ``qdrant``) as a session closed with ``stack``;
    retries for ``wait_seconds`` while its folder is held, then raises :class:`SinkHeld`."""
    from noetl_dagster.export.clickhouse import ClickHouseResource, default_dsn
    from noetl_dagster.export.embedder import EmbedderResource
    from noetl_dagster.export.qdrant import QdrantResource, default_path

    if name == "clickhouse":
        resource = clickhouse or ClickHouseResource()
        opener, where = resource.session, str(resource.connection()[0] or default_dsn())
    else:
        resource, model = qdrant or QdrantResource(), (embedder or EmbedderResource()).get()
        opener, where = (lambda: resource.session(model)), str(resource.path or default_path())
    started, delay = time.monotonic(), 0.25
    while True:
        try:
            with quiet_native_stderr():
                return stack.enter_context(opener())
        except Exception as exc:  # noqa: BLE001 - only a held folder is retried
            if not is_held(name, exc):
                raise
        waited = time.monotonic() - started
        if waited >= wait_seconds:
            raise SinkHeld(name, where.removeprefix("chdb://"), waited)
        sleep(min(delay, max(wait_seconds - waited, 0.01)))
        delay = min(delay * 2, 2.0)
