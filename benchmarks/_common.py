"""Helpers shared by the benchmark scripts (timing, tables, profiling). Not a public API."""

from __future__ import annotations

import cProfile
import gc
import io
import os
import platform
import pstats
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence


def quiet_warnings() -> None:
    """Dagster's beta/preview warnings would drown the tables."""
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    try:
        import dagster as dg

        warnings.filterwarnings("ignore", category=dg.BetaWarning)
        warnings.filterwarnings("ignore", category=dg.PreviewWarning)
    except Exception:  # noqa: BLE001 - older/newer dagster without these classes
        pass


def environment_line() -> str:
    import dagster

    return (f"python {platform.python_version()} | dagster {dagster.__version__} | "
            f"{os.cpu_count()} cpu | {platform.machine()}")


def timed(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    """(wall seconds, CPU seconds, value) of ``fn()``, after a full GC so that garbage from
    earlier work is not billed to it. CPU time (``process_time``) is what to compare on a busy
    machine: it does not count the time other processes held the cores."""
    gc.collect()
    start, cpu = time.perf_counter(), time.process_time()
    value = fn()
    return time.perf_counter() - start, time.process_time() - cpu, value


def child(argv: list[str], env: dict[str, str], cwd: str) -> tuple[float, float]:
    """(wall seconds, CPU seconds: user + system) of one process run to its end."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the child is reaped: its usage is counted
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def interleaved_processes(variants: dict[str, list[str]], env: dict[str, str], cwd: str,
                          runs: int) -> dict[str, list[tuple[float, float]]]:
    """(wall, CPU) seconds of each variant's command per round: one warm-up each (bytecode caches),
    then ``runs`` rounds, each starting one variant later so no variant always runs first."""
    for cmd in variants.values():
        child(cmd, env, cwd)
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    order = list(variants)
    for r in range(runs):
        for name in order[r % len(order):] + order[:r % len(order)]:
            times[name].append(child(variants[name], env, cwd))
    return times


def best(values: Sequence[float]) -> float:
    return min(values)


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], aligns: str | None = None) -> str:
    """A plain-text table (markdown-compatible pipes) that reads well in a terminal."""
    text_rows = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in text_rows)) if text_rows else len(h)
              for i, h in enumerate(headers)]
    aligns = aligns or "l" + "r" * (len(headers) - 1)

    def fmt(cells: Sequence[str]) -> str:
        out = []
        for i, cell in enumerate(cells):
            out.append(cell.ljust(widths[i]) if aligns[i] == "l" else cell.rjust(widths[i]))
        return "| " + " | ".join(out) + " |"

    sep = "|" + "|".join(("-" * (w + 1) + ":") if a == "r" else ("-" * (w + 2))
                         for w, a in zip(widths, aligns)) + "|"
    return "\n".join([fmt(headers), sep, *(fmt(r) for r in text_rows)])


@contextmanager
def profiled(enabled: bool, title: str, limit: int = 30, sort: str = "cumulative",
             restrict: str | None = None) -> Iterator[None]:
    """cProfile the block when ``enabled``; print the top ``limit`` lines to stderr."""
    if not enabled:
        yield
        return
    prof = cProfile.Profile()
    prof.enable()
    try:
        yield
    finally:
        prof.disable()
        buf = io.StringIO()
        stats = pstats.Stats(prof, stream=buf)
        if restrict:  # match on the full path, then shorten it
            stats.sort_stats(sort).print_stats(restrict, limit)
        else:
            stats.strip_dirs().sort_stats(sort).print_stats(limit)
        print(f"\n===== profile: {title} (sorted by {sort}) =====", file=sys.stderr)
        print(buf.getvalue(), file=sys.stderr)


@contextmanager
def scratch(prefix: str, postgres: bool = False) -> Iterator[tuple[Path, Any]]:
    """A scratch folder and (``postgres``) a PostgreSQL 15 on loopback as the tests start it
    (``tests/pg.py``), both gone afterwards; the server is None without ``postgres``."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    server = None
    try:
        if postgres:
            sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
            from pg import start_postgres

            server = start_postgres()
        yield tmp, server
    finally:
        if server is not None:
            from pg import stop_postgres

            stop_postgres(server)
        shutil.rmtree(tmp, ignore_errors=True)
