"""Start-up of ``noetl-dagster validate FILE``: the DSL alone versus the same validation after ``import dagster``.

The loader used to import Dagster (for its cron check), the planner and every tool executor
before it read a line of YAML; now the DSL layer (``core/``, ``playbook/``) imports none of them.
Both variants are fresh Python processes validating the same playbook:

* ``validate``: ``python -m noetl_dagster.cli validate FILE`` (the console script's code path);
* ``import dagster + validate``: the same command in a process that first does ``import dagster``,
  which is what the old loader paid;
* ``python``: ``python -c pass``, the floor both share.

The variants alternate for ``--runs`` rounds (the order rotates each round); CPU seconds of the
child (user + system, from ``getrusage``) and wall seconds are reported as median and best, and
the per-round ratio validate/(import dagster + validate). The last line prints the ratio.

Run: ``.venv/bin/python benchmarks/validate_startup.py [--runs 9] [--quick] [--playbook FILE]``.
Never asserts times.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import interleaved_processes, median, table  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PLAYBOOK = ROOT / "playbooks" / "payments" / "settle_merchants.yaml"
TARGET = 0.5
OLD = ("import dagster, runpy, sys\n"
       "sys.argv = ['noetl-dagster', 'validate', sys.argv[1]]\n"
       "runpy.run_module('noetl_dagster.cli', run_name='__main__')\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=9, help="interleaved rounds (default 9)")
    parser.add_argument("--quick", action="store_true", help="3 rounds")
    parser.add_argument("--playbook", default=str(PLAYBOOK), help="the playbook file to validate")
    parser.add_argument("--root", default=str(ROOT), help="the checkout whose noetl_dagster runs")
    args = parser.parse_args(argv)
    runs = 3 if args.quick else args.runs
    python, playbook = sys.executable, str(Path(args.playbook).resolve())
    env = {**os.environ, "PYTHONPATH": args.root}
    variants = {
        "validate": [python, "-m", "noetl_dagster.cli", "validate", playbook],
        "import dagster + validate": [python, "-c", OLD, playbook],
        "python": [python, "-c", "pass"],
    }
    times = interleaved_processes(variants, env, args.root, runs)
    rows = []
    for name, values in times.items():
        walls, cpus = [v[0] for v in values], [v[1] for v in values]
        rows.append([name, f"{median(cpus):.3f}", f"{min(cpus):.3f}", f"{median(walls):.3f}", f"{min(walls):.3f}"])
    print(f"start-up of `noetl-dagster validate {Path(playbook).name}`, {runs} interleaved rounds (seconds)")
    print(table(["variant", "CPU median", "CPU best", "wall median", "wall best"], rows))
    new, old = times["validate"], times["import dagster + validate"]
    per_round = [a[1] / b[1] for a, b in zip(new, old)]
    best = min(v[1] for v in new) / min(v[1] for v in old)
    print(f"per-round CPU ratio: median {median(per_round):.2f}x, best {min(per_round):.2f}x; "
          f"best/best {best:.2f}x; target <= {TARGET}x")
    print(f"ratio validate/(import dagster + validate) = {median([v[1] for v in new]) / median([v[1] for v in old]):.2f}x "
          f"CPU (median/median)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
