"""``noetl-dagster export`` and ``noetl-dagster search``: the export sensors' work from the shell.

    noetl-dagster export                       # one pass over $DAGSTER_HOME into ClickHouse + Qdrant
    noetl-dagster export --sink clickhouse --full
    noetl-dagster search "division by zero" --collection failures --json

Sinks are configured as for the sensors (``NOETL_CLICKHOUSE_DSN``, ``NOETL_QDRANT_URL``/
``NOETL_QDRANT_API_KEY``/``NOETL_QDRANT_PATH``, ``NOETL_EMBEDDER``), with the same embedded
defaults under ``$DAGSTER_HOME`` (or ``./.dagster_home``). The CLI keeps its own cursors in
``$DAGSTER_HOME/noetl_export/<sink>-<destination hash>.cursor.json``, one per destination (DSN +
database, URL + prefix: a new ClickHouse starts from the beginning; ``--full`` starts over;
rewriting is idempotent). Each sink opens and exports on its own: one that is held, locked or
unreachable is reported in one line and the others still export. Embedded chdb and Qdrant
folders are locked by the process using them; ``dagster dev``'s sensors hold them only during a
tick, so the commands wait (``--wait``, 15 s) and then say which folder is held, without a
traceback (:mod:`.held`).

Wire into the main parser with ``add_commands(subparsers)``.
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Iterator

from noetl_dagster.export.destination import cursor_name, one_line
from noetl_dagster.export.exporter import ExportCursor, ExportStats
from noetl_dagster.export.held import SinkHeld, open_sink

SINKS = ("clickhouse", "qdrant")


def cursor_dir() -> Path:
    from noetl_dagster.export.clickhouse import default_home

    return default_home() / "noetl_export"


def load_cursor(sink: str, folder: Path | None = None, destination: str = "") -> ExportCursor:
    """The saved cursor of ``sink`` for ``destination`` (a cursor belongs to a DSN + database)."""
    path = (folder or cursor_dir()) / cursor_name(sink, destination)
    return ExportCursor.from_json(path.read_text()) if path.exists() else ExportCursor()


def save_cursor(sink: str, cursor: ExportCursor, folder: Path | None = None, destination: str = "") -> None:
    folder = folder or cursor_dir()
    folder.mkdir(parents=True, exist_ok=True)
    name = cursor_name(sink, destination)
    tmp = folder / f"{name}.tmp"
    tmp.write_text(cursor.to_json())
    tmp.replace(folder / name)


def open_sinks(stack: ExitStack, names: list[str], *, wait_seconds: float = 15.0, clickhouse: Any = None,
               qdrant: Any = None, embedder: Any = None) -> tuple[list[Any], dict[str, str]]:
    """The sinks that open (sessions closed with ``stack``), and a one-line error for each that
    does not: a held, locked or unreachable sink never keeps the others from exporting."""
    sinks, errors = [], {}
    for name in names:
        try:
            sinks.append(open_sink(stack, name, clickhouse=clickhouse, qdrant=qdrant, embedder=embedder,
                                   wait_seconds=wait_seconds))
        except SinkHeld as exc:
            errors[name] = str(exc).removeprefix(f"{name}: ")
        except Exception as exc:  # noqa: BLE001 - reported per sink
            errors[name] = one_line(exc)
    return sinks, errors


def make_sinks(names: list[str], clickhouse: Any = None, qdrant: Any = None, embedder: Any = None) -> list[Any]:
    """Sinks from the resources (default: configured by environment, embedded otherwise)."""
    from noetl_dagster.export.clickhouse import ClickHouseResource
    from noetl_dagster.export.embedder import EmbedderResource
    from noetl_dagster.export.qdrant import QdrantResource

    sinks = []
    for name in names:
        if name == "clickhouse":
            sinks.append((clickhouse or ClickHouseResource()).sink())
        elif name == "qdrant":
            sinks.append((qdrant or QdrantResource()).sink((embedder or EmbedderResource()).get()))
    return sinks


def run_export(instance: Any, sinks: list[Any], *, full: bool = False, playbooks: str | Path | None = None,
               budget_seconds: float | None = None, lag_seconds: float | None = None,
               folder: Path | None = None) -> dict[str, ExportStats]:
    """One export pass per sink from its saved cursor (or from the start with ``full``); saves cursors."""
    from noetl_dagster.export.sensors import Exporter, index_playbooks, register_env_secrets

    register_env_secrets()
    out: dict[str, ExportStats] = {}
    for sink in sinks:
        destination = str(getattr(sink, "destination", "") or "")
        cursor = ExportCursor() if full else load_cursor(sink.name, folder, destination)
        try:
            if sink.name == "qdrant" and playbooks and Path(playbooks).is_dir():
                index_playbooks(sink, playbooks)
            cursor, stats = Exporter(instance, sink, lag_seconds=lag_seconds).export(
                cursor, budget_seconds=budget_seconds)
        except Exception as exc:  # noqa: BLE001 - reported, the saved cursor stays
            out[sink.name] = ExportStats(error=one_line(exc))
            continue
        save_cursor(sink.name, cursor, folder, destination)
        out[sink.name] = stats
    return out


@contextmanager
def export_status(sink: str, *, enabled: bool) -> Iterator[None]:
    """A spinner on stderr naming the sink being exported, with the seconds elapsed (a terminal only)."""
    if not enabled:
        yield
        return
    import time

    from rich.console import Console

    started = time.monotonic()
    with Console(stderr=True).status(f"exporting the event log to {sink} ...", spinner="dots"):
        yield
    Console(stderr=True).print(f"[dim]{sink}: done in {time.monotonic() - started:.1f}s[/]", highlight=False)


def cmd_export(args: argparse.Namespace) -> int:
    from noetl_dagster.storage import default_instance

    names = list(SINKS) if args.sink == "all" else [args.sink]
    playbooks = args.playbooks if args.playbooks is not None else ("playbooks" if Path("playbooks").is_dir() else None)
    instance = default_instance()
    with ExitStack() as stack:  # sessions: every client is closed before the interpreter exits
        sinks, errors = open_sinks(stack, names, wait_seconds=args.wait)
        results = {}
        for sink in sinks:  # one sink at a time, with a spinner on a terminal (an export can take minutes)
            with export_status(sink.name, enabled=not args.json and sys.stderr.isatty()):
                results.update(run_export(instance, [sink], full=args.full, playbooks=playbooks,
                                          budget_seconds=args.budget, lag_seconds=args.lag))
    results.update({name: ExportStats(error=error) for name, error in errors.items()})
    if args.json:
        print(json.dumps({name: stats.as_dict() for name, stats in results.items()}, sort_keys=True))
    else:
        for name, stats in results.items():
            if stats.error:
                print(f"{name}: FAILED: {stats.error}", file=sys.stderr)
            else:
                print(f"{name}: {stats.events} events, {stats.step_runs} step runs, {stats.runs} runs, "
                      f"{stats.failures} failures ({stats.seconds:.1f}s{'' if stats.caught_up else ', more to do'})")
    return 1 if any(s.error for s in results.values()) else 0


def search(text: str, collection: str = "failures", limit: int = 5, sink: Any = None) -> list[dict[str, Any]]:
    """Semantic search over a collection; hits as dicts (score + payload without the embedded text)."""
    sink = sink or make_sinks(["qdrant"])[0]
    hits = sink.search(collection, text, limit=limit)
    return [{"score": round(h.score, 4), **{k: v for k, v in h.payload.items() if k not in ("text",)}}
            for h in hits]


def format_hit(hit: dict[str, Any]) -> str:
    kind = hit.get("kind")
    score = f"{hit['score']:.3f}"
    if kind == "failure":
        resolved = f" (resolved by run {hit['resolved_by_run'][:8]})" if hit.get("resolved_by_run") else ""
        return f"{score}  run {hit.get('run_id', '')[:8]}  {hit.get('playbook')} / {hit.get('step')}: {hit.get('error')}{resolved}"
    if kind == "run":
        return f"{score}  run {hit.get('run_id', '')[:8]}  {hit.get('playbook')}: {hit.get('status')} ({hit.get('duration_ms')} ms)"
    step = f" / {hit['step']}" if hit.get("step") else ""
    return f"{score}  {hit.get('kind')}  {hit.get('playbook')}{step} [{hit.get('tool') or ''}]: {hit.get('description') or ''}"


def cmd_search(args: argparse.Namespace) -> int:
    with ExitStack() as stack:
        try:
            sink = open_sink(stack, "qdrant", wait_seconds=args.wait)
        except SinkHeld as exc:
            print(f"noetl-dagster search: {exc}", file=sys.stderr)
            return 1
        hits = search(args.query, args.collection, args.limit, sink=sink)
    if args.json:
        print(json.dumps(hits, default=str))
    else:
        if not hits:
            print("no matches")
        for hit in hits:
            print(format_hit(hit))
    return 0


def add_commands(subparsers: Any) -> None:
    """Register ``export`` and ``search`` on the ``noetl-dagster`` argparse sub-parsers."""
    export = subparsers.add_parser("export", help="export the event log at DAGSTER_HOME to ClickHouse and Qdrant")
    export.add_argument("--sink", choices=[*SINKS, "all"], default="all")
    export.add_argument("--full", action="store_true", help="start from the beginning (rewrites are idempotent)")
    export.add_argument("--playbooks", help="folder of playbooks to index in Qdrant (default ./playbooks if present)")
    export.add_argument("--budget", type=float, default=None, help="stop after this many seconds (default: catch up)")
    export.add_argument("--lag", type=float, default=None,
                        help="overlap window in seconds for out-of-order ids (default 0 on SQLite, 5 otherwise)")
    export.add_argument("--json", action="store_true", help="print the counts as JSON")
    export.add_argument("--wait", type=float, default=15.0,
                        help="seconds to wait while an embedded folder is held by another process (default 15)")
    export.set_defaults(func=cmd_export)
    find = subparsers.add_parser("search", help="semantic search over exported playbooks, runs or failures")
    find.add_argument("query")
    find.add_argument("--collection", choices=["playbooks", "runs", "failures"], default="failures")
    find.add_argument("--limit", type=int, default=5)
    find.add_argument("--json", action="store_true", help="print the hits as JSON")
    find.add_argument("--wait", type=float, default=15.0,
                      help="seconds to wait while the Qdrant folder is held by another process (default 15)")
    find.set_defaults(func=cmd_search)


__all__ = ["add_commands", "cmd_export", "cmd_search", "load_cursor", "make_sinks", "open_sinks", "run_export",
           "save_cursor", "search"]
