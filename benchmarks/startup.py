"""Start-up: ``noetl-dagster run`` of a 1-step playbook versus a minimal hand-written Dagster script.

Both are fresh Python processes doing the same thing on the same instance (one ``DAGSTER_HOME``
with SQLite storage, the embedded default): import, build a one-op job, ``execute_in_process``
recorded in that instance, print the step's result.

* ``noetl``: ``python -m noetl_dagster.cli run one.yaml`` (the console script's code path: parse,
  validate, plan, compile, run, report);
* ``dagster``: a script with one ``@op`` returning the same dict, a ``@job`` and
  ``execute_in_process(instance=DagsterInstance.get())``;
* ``import dagster``: ``python -c "import dagster"``, the floor both share.

The variants alternate for ``--runs`` rounds (the order rotates each round); wall seconds and CPU
seconds of the child (user + system, from ``os.wait4``) are reported as median and best, and the
ratio noetl/dagster of each. Also printed: which heavy modules ``noetl-dagster run`` imported.

Run: ``.venv/bin/python benchmarks/startup.py [--runs 9] [--quick]``. Never asserts times.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import interleaved_processes, median, table  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TARGET = 1.1
PLAYBOOK = """apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: one, path: one}
workflow:
  - step: start
    tool: {kind: python, code: "result = {'x': 1}"}
"""
DAGSTER_SCRIPT = """import json
import dagster as dg

@dg.op
def start():
    return {"x": 1}

@dg.job
def one():
    start()

result = one.execute_in_process(instance=dg.DagsterInstance.get(), raise_on_error=False)
print(json.dumps({"status": "success" if result.success else "failure", "x": result.output_for_node("start")}))
"""
HEAVY = ("pyarrow", "numpy", "duckdb", "clickhouse_connect", "chdb", "qdrant_client", "onnxruntime",
         "pandas", "polars", "psycopg", "httpx", "matplotlib")
PROBE = ("import runpy, sys\n"
         "sys.argv = ['noetl-dagster', 'run', sys.argv[1]]\n"
         "try:\n    runpy.run_module('noetl_dagster.cli', run_name='__main__')\n"
         "except SystemExit:\n    pass\n"
         f"print('HEAVY', sorted(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=9, help="interleaved rounds (default 9)")
    parser.add_argument("--quick", action="store_true", help="3 rounds")
    parser.add_argument("--root", default=str(ROOT), help="the checkout whose noetl_dagster runs (to compare two)")
    args = parser.parse_args(argv)
    runs = 3 if args.quick else args.runs
    python = sys.executable
    with tempfile.TemporaryDirectory(prefix="noetl-startup-") as tmp:
        home = Path(tmp, "home")
        home.mkdir()
        (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        work = Path(tmp, "work")
        work.mkdir()
        (work / "one.yaml").write_text(PLAYBOOK)
        (work / "one_dagster.py").write_text(DAGSTER_SCRIPT)
        env = {**os.environ, "DAGSTER_HOME": str(home), "PYTHONPATH": args.root}
        variants = {
            "noetl": [python, "-m", "noetl_dagster.cli", "run", "one.yaml"],
            "dagster": [python, "one_dagster.py"],
            "import dagster": [python, "-c", "import dagster"],
        }
        times = interleaved_processes(variants, env, str(work), runs)  # warm-up too: the instance's tables
        probe = subprocess.run([python, "-c", PROBE, "one.yaml"], env=env, cwd=str(work), capture_output=True,
                               text=True)
        heavy = next((line for line in probe.stderr.splitlines() if line.startswith("HEAVY")), "HEAVY ?")
        rows = []
        for name, values in times.items():
            walls, cpus = [v[0] for v in values], [v[1] for v in values]
            rows.append([name, f"{median(walls):.2f}", f"{min(walls):.2f}", f"{median(cpus):.2f}", f"{min(cpus):.2f}"])
        print(f"start-up of a 1-step run, {runs} interleaved rounds (seconds)")
        print(table(["variant", "wall median", "wall best", "CPU median", "CPU best"], rows))
        print(f"noetl-dagster run imported: {heavy[6:]}")
        n, d = times["noetl"], times["dagster"]
        ratios_wall = [a[0] / b[0] for a, b in zip(n, d)]
        ratios_cpu = [a[1] / b[1] for a, b in zip(n, d)]
        print(f"per-round ratio noetl/dagster: wall median {median(ratios_wall):.2f}x (best {min(ratios_wall):.2f}x), "
              f"CPU median {median(ratios_cpu):.2f}x (best {min(ratios_cpu):.2f}x); target <= {TARGET}x")
        print(f"ratio noetl/dagster = {median([v[1] for v in n]) / median([v[1] for v in d]):.2f}x CPU "
              f"(median/median), {median([v[0] for v in n]) / median([v[0] for v in d]):.2f}x wall")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
