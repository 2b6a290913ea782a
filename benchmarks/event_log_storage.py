"""Per-step cost with history kept: Dagster's SQLite event log vs ``FastSqliteEventLogStorage``
(and Postgres storage, when ``--postgres`` starts a local PostgreSQL 15 as the tests do).

Shapes (compiled NoETL playbooks from ``step_overhead.py``): python chains of ``--chains`` steps
(10, 50, 200) and a ``--width`` (20) fan-out + join. Each runs with ``execute_in_process`` on a
persistent instance: ``sqlite`` (Dagster's default ``dagster.yaml``), ``fast sqlite`` (the same
with ``event_log_storage: noetl_dagster.storage.FastSqliteEventLogStorage``), ``postgres``
(dagster-postgres storage) and ``fast postgres`` (``FastPostgres{Run,EventLog,Schedule}Storage``:
kept connection pools; its own database on the same server). Every shape is warmed up once per
instance, then the instances take turns for ``--runs`` rounds. Figures: process CPU (and wall) milliseconds per step (run time /
steps), median and best; ratios per round. NoETL's distributed runtime publishes 65-105 ms per step.

Run: ``.venv/bin/python benchmarks/event_log_storage.py [--quick] [--postgres]``. Never asserts times.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import environment_line, median, quiet_warnings, scratch, table  # noqa: E402

quiet_warnings()

import dagster as dg  # noqa: E402

from noetl_dagster import build_job  # noqa: E402
from noetl_dagster.playbook.loader import parse_text  # noqa: E402
from noetl_dagster.storage import instance_config  # noqa: E402
from step_overhead import RUN_CONFIG, fanout_yaml, linear_yaml  # noqa: E402

NOETL_MS = (65, 105)


def sqlite_instance(home: Path, fast: bool) -> dg.DagsterInstance:
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text(instance_config(str(home)) if fast else "telemetry:\n  enabled: false\n")
    return dg.DagsterInstance.from_config(str(home))


def postgres_instance(home: Path, dsn_fields: dict[str, Any], fast: bool = False) -> dg.DagsterInstance:
    home.mkdir(parents=True, exist_ok=True)
    f = dsn_fields
    db = {"hostname": f["db_host"], "port": int(f["db_port"]), "username": f["db_user"],
          "password": f["db_password"], "db_name": f["db_name"], "scheme": "postgresql+psycopg2"}
    if fast:
        text = instance_config(str(home), postgres=db)
    else:
        import yaml

        text = yaml.safe_dump({"storage": {"postgres": {"postgres_db": db}}, "telemetry": {"enabled": False}})
    (home / "dagster.yaml").write_text(text)
    return dg.DagsterInstance.from_config(str(home))


def second_database(server: Any, name: str) -> dict[str, Any]:
    """``server``'s fields with a new database ``name`` owned by its user."""
    return {**server.fields(), "db_name": server.create_database(name)}


def run_once(job: dg.JobDefinition, instance: dg.DagsterInstance) -> tuple[float, float]:
    start, cpu = time.perf_counter(), time.process_time()
    result = job.execute_in_process(run_config=RUN_CONFIG, instance=instance, raise_on_error=False)
    wall, cpu_s = time.perf_counter() - start, time.process_time() - cpu
    if not result.success:
        raise SystemExit(f"{job.name} failed on {type(instance.event_log_storage).__name__}")
    return wall, cpu_s


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chains", default="10,50,200", help="chain lengths (comma-separated)")
    parser.add_argument("--width", type=int, default=20, help="fan-out width")
    parser.add_argument("--runs", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--quick", action="store_true", help="chains 10,50, width 5, 3 rounds")
    parser.add_argument("--postgres", action="store_true", help="also Postgres storage (starts PostgreSQL 15)")
    args = parser.parse_args(argv)
    if args.quick:
        args.chains, args.width, args.runs = "10,50", 5, 3
    shapes: dict[str, tuple[dg.JobDefinition, int]] = {}
    for n in [int(c) for c in args.chains.split(",") if c]:
        shapes[f"chain {n}"] = (build_job(parse_text(linear_yaml(n, "python"), f"/bench/chain{n}.yaml")), n)
    shapes[f"fan-out {args.width} + join"] = (
        build_job(parse_text(fanout_yaml(args.width), "/bench/fanout.yaml")), args.width + 2)
    with scratch("noetl-eventlog-bench-", postgres=args.postgres) as (tmp, server):
        instances = {"sqlite": sqlite_instance(tmp / "sqlite", False),
                     "fast sqlite": sqlite_instance(tmp / "fast", True)}
        if args.postgres:
            instances["postgres"] = postgres_instance(tmp / "pg", server.fields())
            instances["fast postgres"] = postgres_instance(tmp / "fast_pg", second_database(server, "fast_events"),
                                                           fast=True)
        print(environment_line())
        print(f"{args.runs} interleaved rounds; CPU (wall) ms per step = a run's time / its steps")
        times: dict[tuple[str, str], list[tuple[float, float]]] = {}
        for shape, (job, _) in shapes.items():
            for name, instance in instances.items():
                run_once(job, instance)  # warm-up: imports, caches, tables
        for r in range(args.runs):
            names = list(instances)
            names = names[r % len(names):] + names[:r % len(names)]
            for shape, (job, steps) in shapes.items():
                for name in names:
                    wall, cpu = run_once(job, instances[name])
                    times.setdefault((shape, name), []).append((wall / steps, cpu / steps))
        rows = []
        for shape in shapes:
            for name in instances:
                values = times[(shape, name)]
                cpus, walls = [v[1] * 1000 for v in values], [v[0] * 1000 for v in values]
                base = times[(shape, "sqlite")]
                ratios = [b[1] / v[1] for b, v in zip(base, values)]
                rows.append([shape, name, f"{median(cpus):.1f} / {min(cpus):.1f}",
                             f"{median(walls):.1f} / {min(walls):.1f}",
                             f"{median(ratios):.2f}x / {max(ratios):.2f}x",
                             f"{NOETL_MS[0] / median(cpus):.1f}-{NOETL_MS[1] / median(cpus):.1f}x"])
        print(table(["shape", "event log", "CPU ms/step (median / best)", "wall ms/step", "sqlite / this (CPU)",
                     "NoETL 65-105 ms / this"], rows, aligns="llrrrr"))
        for instance in instances.values():
            instance.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
