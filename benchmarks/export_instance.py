"""Export end to end from a real Dagster instance: its event log -> the Exporter -> chdb.

Unlike ``export.py`` (prebuilt records from an in-memory stand-in), this reads Dagster's own
database: the runs are real playbook runs (a parallel loop of ``--items`` items, so ~9 events per
item, and a failing variant) recorded in a persistent instance, ``--runs`` of them, on:

* ``sqlite``: Dagster's default SQLite storage (one file per run);
* ``fast sqlite``: the same files through ``noetl_dagster.storage.FastSqliteEventLogStorage``;
* ``postgres`` (``--postgres``: a local PostgreSQL 15 started as the tests do): dagster-postgres.

Paths, in ``--repeat`` interleaved rounds (order rotating, each export into a fresh database):

* ``export <storage>``: the real :class:`~noetl_dagster.export.exporter.Exporter` from an empty
  cursor to caught up: discovery, reading and deserialising the event log, mapping, step attempts,
  Arrow encoding, inserts into ``noetl_events`` and ``step_runs``;
* ``read <storage>``: only ``get_records_for_run`` over every run (what reading costs);
* anchor ``insert_arrow``: the same ``noetl_events`` rows as prebuilt Arrow tables inserted with
  ``client.insert_arrow`` and the sink's settings (no reading, no mapping).

Prints wall seconds and events/s (median and best) per path and the per-round ratios
export / insert_arrow. Target: >= 50k events/s end to end.

Run: ``.venv/bin/python benchmarks/export_instance.py [--runs 40] [--items 150] [--postgres] [--quick]``.
Never asserts times.
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import environment_line, median, profiled, quiet_warnings, table  # noqa: E402

quiet_warnings()

import dagster as dg  # noqa: E402

from noetl_dagster import build_job  # noqa: E402
from noetl_dagster.playbook.loader import parse_text  # noqa: E402
from noetl_dagster.export.clickhouse import EVENT_COLUMNS, INSERT_SETTINGS, ClickHouseSink, get_client  # noqa: E402
from noetl_dagster.export.clickhouse import rows_to_arrow  # noqa: E402
from noetl_dagster.export.exporter import ExportCursor, Exporter  # noqa: E402
from noetl_dagster.export.mapping import RunContext, map_records  # noqa: E402
from noetl_dagster.storage import instance_config  # noqa: E402

PLAYBOOK = """apiVersion: noetl.io/v2
kind: Playbook
metadata: {{name: loop_{tag}, path: bench/loop_{tag}}}
workload: {{items: {items}, fail_at: -1}}
workflow:
  - step: start
    tool: {{kind: python, code: "result = {{'n': 1}}"}}
    next: work
  - step: work
    loop: {{in: "{{{{ range(workload['items']) | list }}}}", iterator: i, mode: parallel}}
    tool:
      kind: python
      input: {{i: "{{{{ i }}}}", fail_at: "{{{{ workload.fail_at }}}}"}}
      code: |
        if i == fail_at:
            raise ValueError(f"item {{i}} failed")
        result = {{"i": i, "sq": i * i}}
    next: end
  - step: end
    tool: {{kind: noop, result: done}}
"""
RUN_CONFIG_LOG = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}


def make_instance(home: Path, kind: str, pg: Any = None) -> dg.DagsterInstance:
    home.mkdir(parents=True, exist_ok=True)
    if kind == "fast sqlite":
        text = instance_config(str(home))
    elif kind == "postgres":
        f = pg.fields()
        text = ("storage:\n  postgres:\n    postgres_db:\n"
                f"      hostname: {f['db_host']}\n      port: {f['db_port']}\n      username: {f['db_user']}\n"
                f"      password: {f['db_password']}\n      db_name: {f['db_name']}\n"
                "      scheme: postgresql+psycopg2\ntelemetry:\n  enabled: false\n")
    else:
        text = "telemetry:\n  enabled: false\n"
    (home / "dagster.yaml").write_text(text)
    return dg.DagsterInstance.from_config(str(home))


def record_runs(instance: dg.DagsterInstance, runs: int, items: int) -> int:
    """``runs`` playbook runs (every 5th fails one item); returns the number of events stored."""
    job = build_job(parse_text(PLAYBOOK.format(tag="x", items=items), "/bench/loop.yaml"))
    run_ids = []
    for i in range(runs):
        workload = {"items": items, "fail_at": (items // 2) if i % 5 == 4 else -1}
        config = {"ops": {"start": {"config": {"workload": workload}}}, **RUN_CONFIG_LOG}
        result = job.execute_in_process(run_config=config, instance=instance, raise_on_error=False,
                                        tags={"noetl/playbook": "bench/loop_x"})
        run_ids.append(result.run_id)
    return sum(len(instance.get_records_for_run(r).records) for r in run_ids)


def read_all(instance: dg.DagsterInstance) -> int:
    count = 0
    for record in instance.get_run_records():
        cursor = None
        while True:
            page = instance.get_records_for_run(record.dagster_run.run_id, cursor=cursor, limit=1000)
            count += len(page.records)
            cursor = page.cursor
            if not page.has_more:
                break
    return count


def prebuilt_tables(instance: dg.DagsterInstance, batch: int) -> list[Any]:
    rows = []
    for record in instance.get_run_records():
        ctx = RunContext.of(record.dagster_run, {}, record.start_time, record.end_time)
        rows.extend(map_records(instance.get_records_for_run(record.dagster_run.run_id).records, ctx))
    return [rows_to_arrow(rows[i:i + batch], EVENT_COLUMNS) for i in range(0, len(rows), batch)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--items", type=int, default=150, help="loop items per run (~9 events each)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--postgres", action="store_true", help="also Postgres storage (starts PostgreSQL 15)")
    parser.add_argument("--storages", default="sqlite,fast sqlite", help="comma-separated")
    parser.add_argument("--quick", action="store_true", help="8 runs of 40 items, 2 rounds")
    parser.add_argument("--profile", action="store_true", help="cProfile the first export of each storage")
    args = parser.parse_args(argv)
    if args.quick:
        args.runs, args.items, args.repeat = 8, 40, 2
    kinds = [k for k in args.storages.split(",") if k] + (["postgres"] if args.postgres else [])
    tmp = Path(tempfile.mkdtemp(prefix="noetl-export-instance-"))
    server = None
    try:
        if "postgres" in kinds:
            sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
            from pg import start_postgres

            server = start_postgres()
        print(environment_line())
        instances, totals = {}, {}
        source = None
        sqlite_kinds = [k for k in kinds if k != "postgres"]
        for kind in sorted(kinds, key=lambda k: k != "fast sqlite"):  # record with the fast storage first
            folder = tmp / kind.replace(" ", "_")
            if kind in sqlite_kinds and any(k in instances for k in sqlite_kinds):  # same files: copy the runs
                done = next(k for k in sqlite_kinds if k in instances)
                shutil.copytree(tmp / done.replace(" ", "_"), folder)
                instances[kind] = make_instance(folder, kind)
                totals[kind] = totals[done]
                continue
            instances[kind] = make_instance(folder, kind, server)
            started = time.perf_counter()
            totals[kind] = record_runs(instances[kind], args.runs, args.items)
            print(f"recorded {args.runs} runs, {totals[kind]:,} events in {kind} ({time.perf_counter() - started:.0f}s)")
            source = source or instances[kind]
        folder = tempfile.mkdtemp(prefix="bench_chdb.", dir=str(tmp))
        client = get_client(f"chdb://{folder}")
        warm = ClickHouseSink(client, "warm")
        warm.migrate()
        batch = Exporter.__init__.__kwdefaults__["batch_size"]
        tables = prebuilt_tables(source, batch)
        events = sum(t.num_rows for t in tables)
        paths = [*(f"export {k}" for k in kinds), *(f"read {k}" for k in kinds), "insert_arrow"]
        times: dict[str, list[float]] = {p: [] for p in paths}
        for r in range(args.repeat):
            for path in paths[r % len(paths):] + paths[:r % len(paths)]:
                database = f"b{r}_{abs(hash(path)) % 10**8}"
                if path == "insert_arrow":
                    ClickHouseSink(client, database).migrate()
                    gc.disable()
                    start = time.perf_counter()
                    for t in tables:
                        client.insert_arrow("noetl_events", t, database=database, settings=INSERT_SETTINGS)
                    times[path].append(time.perf_counter() - start)
                    gc.enable()
                elif path.startswith("read "):
                    start = time.perf_counter()
                    n = read_all(instances[path[5:]])
                    times[path].append(time.perf_counter() - start)
                    assert n == totals[path[5:]], (n, totals[path[5:]])
                else:
                    kind = path[7:]
                    sink = ClickHouseSink(client, database)
                    sink.migrate()
                    exporter = Exporter(instances[kind], sink, lag_seconds=0)
                    with profiled(args.profile and r == 0, path, restrict="noetl_dagster|dagster|sqlalchemy"):
                        start = time.perf_counter()
                        _, stats = exporter.export(ExportCursor())
                        times[path].append(time.perf_counter() - start)
                    assert stats.caught_up and stats.events == totals[kind], (stats, totals[kind])
                client.command(f"DROP DATABASE IF EXISTS {database}")
        rows = []
        for path in paths:
            n = events if path == "insert_arrow" else totals[path.split(" ", 1)[1]]
            ts = times[path]
            ratios = [a / b for a, b in zip(ts, times["insert_arrow"])]
            rows.append([path, f"{median(ts):.2f} / {min(ts):.2f}", f"{n / median(ts):,.0f} / {n / min(ts):,.0f}",
                         f"{median(ratios):.2f}x / {min(ratios):.2f}x"])
        print(f"\n{events:,} events per storage ({args.runs} runs); {args.repeat} interleaved rounds")
        print(table(["path", "seconds (median / best)", "events/s (median / best)", "/ insert_arrow (median / best)"],
                    rows))
        for kind in kinds:
            rate = totals[kind] / median(times[f"export {kind}"])
            print(f"export from {kind}: {rate:,.0f} events/s median; target >= 50,000 "
                  f"({'met' if rate >= 50_000 else 'NOT met'})")
    finally:
        if server is not None:
            from pg import stop_postgres

            stop_postgres(server)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
