"""A per-op time limit: Dagster bounds whole runs (``dagster/max_runtime``) but not ops.

An op with a time limit (``PlaybookTranslator.get_op_timeout``: what an approved tuning profile
sets, shown as the op tag ``noetl/timeout_seconds``) runs its own code under a ``SIGALRM`` timer (paused while Dagster
stores its outputs); when it fires, the step fails with a clear message and its RetryPolicy, if
any, applies. Deadlines nest: the enclosing one is re-armed with the time it has left. The alarm raises a
``BaseException`` so that tool code catching ``Exception`` (pipeline policies, retries inside a
tool) cannot swallow it. Signals reach only the main thread: elsewhere the limit is not
enforced (ops run in the main thread with the in-process, multiprocess and k8s executors).

Example::

    with deadline(30):
        run_step(step, context, run)   # raises StepTimedOut after 30 s
"""

from __future__ import annotations

import signal
import threading
import time
from contextlib import contextmanager
from typing import Iterator

from noetl_dagster.contract import TIMEOUT_TAG  # the op tag showing the limit in seconds


class StepTimedOut(BaseException):
    """The op ran past its ``noetl/timeout_seconds``."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        super().__init__(f"timed out after {seconds:g}s (op tag {TIMEOUT_TAG})")


def enforceable() -> bool:
    """Whether a deadline can be enforced here (the main thread of a POSIX process)."""
    return hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()


@contextmanager
def deadline(seconds: float | None) -> Iterator[None]:
    """Raise :class:`StepTimedOut` in the body after ``seconds`` (no limit for None/0)."""
    if not seconds or seconds <= 0 or not enforceable():
        yield
        return

    def on_alarm(signum: int, frame: object) -> None:
        raise StepTimedOut(seconds)

    previous = signal.signal(signal.SIGALRM, on_alarm)
    outer, _ = signal.setitimer(signal.ITIMER_REAL, seconds)  # an enclosing deadline's time left
    started = time.monotonic()
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer:  # re-arm the enclosing deadline (a nested playbook run) with what it has left
            signal.setitimer(signal.ITIMER_REAL, max(outer - (time.monotonic() - started), 0.001))
