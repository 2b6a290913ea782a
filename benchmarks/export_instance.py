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

Each export and read uses a fresh ``DagsterInstance`` of the storage's folder, as a sensor tick does
(Dagster builds ``context.instance`` from the instance ref for every evaluation; a new instance has
touched no run file yet); ``--reuse-instance``: one instance per storage for all rounds (as before).

Then ``idle tick <storage>``: a tick with nothing new after everything was exported (the finished
runs watched for appended events are probed, ``tail_probes`` of them), on a fresh instance.

Prints wall seconds and events/s (median and best) per path, the process CPU seconds (median; the
export's writer thread and chdb included: steadier than wall time on a shared machine) and the
per-round ratios export / insert_arrow and export sqlite / export fast sqlite. Target: >= 50k
events/s end to end.

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
from contextlib import nullcontext
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import environment_line, median, profiled, quiet_warnings, scratch, table  # noqa: E402

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


class NullSink:
    """Writes nothing: the idle ticks' sink (an idle tick has nothing to write)."""

    name, wants_events = "null", True

    def write(self, batch: Any) -> None:
        pass


def idle_ticks(home: str, rounds: int) -> tuple[float, float, int]:
    """Median wall and CPU seconds of a tick with nothing new (fresh instance each), and the
    number of runs it watched."""
    with dg.DagsterInstance.from_config(home) as instance:
        cursor, _ = Exporter(instance, NullSink(), lag_seconds=0).export(ExportCursor())
    wall, cpu = [], []
    for _ in range(rounds):
        with dg.DagsterInstance.from_config(home) as instance:
            start, cpu_start = time.perf_counter(), time.process_time()
            _, stats = Exporter(instance, NullSink(), lag_seconds=0).export(cursor)
            wall.append(time.perf_counter() - start)
            cpu.append(time.process_time() - cpu_start)
        assert stats.events == 0 and stats.caught_up, stats
    return median(wall), median(cpu), len(cursor.tail)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--items", type=int, default=150, help="loop items per run (~9 events each)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--postgres", action="store_true", help="also Postgres storage (starts PostgreSQL 15)")
    parser.add_argument("--storages", default="sqlite,fast sqlite", help="comma-separated")
    parser.add_argument("--quick", action="store_true", help="8 runs of 40 items, 2 rounds")
    parser.add_argument("--profile", action="store_true", help="cProfile the first export of each storage")
    parser.add_argument("--reuse-instance", action="store_true",
                        help="one instance per storage for every round (default: a fresh one per export, as a sensor tick)")
    args = parser.parse_args(argv)
    if args.quick:
        args.runs, args.items, args.repeat = 8, 40, 2
    kinds = [k for k in args.storages.split(",") if k] + (["postgres"] if args.postgres else [])
    with scratch("noetl-export-instance-", postgres="postgres" in kinds) as (tmp, server):
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
        cpu: dict[str, list[float]] = {p: [] for p in paths}
        homes = {kind: str(tmp / kind.replace(" ", "_")) for kind in kinds}

        def instance_for(kind: str) -> Any:
            return nullcontext(instances[kind]) if args.reuse_instance else dg.DagsterInstance.from_config(homes[kind])

        for r in range(args.repeat):
            for path in paths[r % len(paths):] + paths[:r % len(paths)]:
                database = f"b{r}_{abs(hash(path)) % 10**8}"
                if path == "insert_arrow":
                    ClickHouseSink(client, database).migrate()
                    gc.disable()
                    start, cpu_start = time.perf_counter(), time.process_time()
                    for t in tables:
                        client.insert_arrow("noetl_events", t, database=database, settings=INSERT_SETTINGS)
                    times[path].append(time.perf_counter() - start)
                    cpu[path].append(time.process_time() - cpu_start)
                    gc.enable()
                elif path.startswith("read "):
                    with instance_for(path[5:]) as instance:
                        start, cpu_start = time.perf_counter(), time.process_time()
                        n = read_all(instance)
                        times[path].append(time.perf_counter() - start)
                        cpu[path].append(time.process_time() - cpu_start)
                    assert n == totals[path[5:]], (n, totals[path[5:]])
                else:
                    kind = path[7:]
                    sink = ClickHouseSink(client, database)
                    sink.migrate()
                    with instance_for(kind) as instance, \
                            profiled(args.profile and r == 0, path, restrict="noetl_dagster|dagster|sqlalchemy"):
                        exporter = Exporter(instance, sink, lag_seconds=0)
                        start, cpu_start = time.perf_counter(), time.process_time()
                        _, stats = exporter.export(ExportCursor())
                        times[path].append(time.perf_counter() - start)
                        cpu[path].append(time.process_time() - cpu_start)
                    assert stats.caught_up and stats.events == totals[kind], (stats, totals[kind])
                client.command(f"DROP DATABASE IF EXISTS {database}")
        rows = []
        for path in paths:
            n = events if path == "insert_arrow" else totals[path.split(" ", 1)[1]]
            ts = times[path]
            ratios = [a / b for a, b in zip(ts, times["insert_arrow"])]
            rows.append([path, f"{median(ts):.2f} / {min(ts):.2f}", f"{n / median(ts):,.0f} / {n / min(ts):,.0f}",
                         f"{median(cpu[path]):.2f}", f"{median(ratios):.2f}x / {min(ratios):.2f}x"])
        print(f"\n{events:,} events per storage ({args.runs} runs); {args.repeat} interleaved rounds; "
              f"{'one instance per storage' if args.reuse_instance else 'a fresh instance per export (a sensor tick)'}")
        print(table(["path", "seconds (median / best)", "events/s (median / best)", "CPU s (median)",
                     "/ insert_arrow (median / best)"], rows))
        if "export sqlite" in times and "export fast sqlite" in times:
            pair = [a / b for a, b in zip(times["export sqlite"], times["export fast sqlite"])]
            print("export sqlite / export fast sqlite, wall per round: "
                  + " ".join(f"{x:.2f}x" for x in pair) + f" (median {median(pair):.2f}x)")
        for kind in kinds:
            wall, cpu_s, watched = idle_ticks(homes[kind], max(3, args.repeat))
            print(f"idle tick {kind}: {wall * 1000:.0f} ms wall, {cpu_s * 1000:.0f} ms CPU (median; "
                  f"{watched} finished runs watched, fresh instance)")
        for kind in kinds:
            rate = totals[kind] / median(times[f"export {kind}"])
            print(f"export from {kind}: {rate:,.0f} events/s median; target >= 50,000 "
                  f"({'met' if rate >= 50_000 else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
