"""Chain scaling: playbooks of 100 / 1000 / 10000 steps in a line, compiled and run in process.

Every step is a python step reading the previous step's result (``{{ s00041.value }}``) and
returning ``{value, pad}`` with 200 bytes of padding, so a token that carried every upstream
result would grow by about 250 bytes per step.

* **compile**: ``parse_text`` -> ``plan`` -> ``build_job`` (noetl) against the lean hand-built job
  of ``compile_scale.py`` (``direct+meta``: ``GraphDefinition`` + explicit dependencies, the same
  tags, descriptions, code references and resources), interleaved, best of ``--reps`` (one
  repetition at 10000 steps); CPU seconds per step at each size, and each size's per-step cost
  over the previous size's (1.00 = linear).
* **run**: ``execute_in_process`` on ``DagsterInstance.ephemeral()`` (in-process executor), CPU
  and wall seconds per step, and the JSON bytes of the tokens the run wrote (every ``to_*``
  output) per step; with ``--compare`` the same job with every arc carrying every result (the
  tokens before the planner computed ``carry``) runs right after it, for the ratio.

Run: ``.venv/bin/python benchmarks/chain_scale.py [--sizes 100,1000,10000] [--run-sizes 100,1000]
[--compare 100,1000]``. Never asserts times.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from dataclasses import replace
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import environment_line, quiet_warnings, table  # noqa: E402

quiet_warnings()

import dagster as dg  # noqa: E402
from compile_scale import Shape, StepSpec, build_direct  # noqa: E402

from noetl_dagster import build_job, plan  # noqa: E402
from noetl_dagster.playbook.loader import parse_text  # noqa: E402
from noetl_dagster.translator.guard import deep_enough  # noqa: E402
from noetl_dagster.planner import Net  # noqa: E402

PAD = 200


def names(n: int) -> list[str]:
    return ["start"] + [f"s{i:05d}" for i in range(1, n)]


def chain_yaml(n: int) -> str:
    steps = names(n)
    out = ["apiVersion: noetl.io/v2", "kind: Playbook", "metadata:", f"  name: chain_{n}",
           f"  path: bench/chain_{n}", "workload:", "  seed: 7", "workflow:"]
    for i, name in enumerate(steps):
        source = "{{ workload.seed }}" if i == 0 else "{{ " + steps[i - 1] + ".value }}"
        out += [f"  - step: {name}", "    tool:", "      kind: python", "      input:",
                f'        prev: "{source}"', "      code: |",
                f"        result = {{'value': prev + 1, 'pad': 'x' * {PAD}}}"]
        if i + 1 < n:
            out.append(f"    next: {steps[i + 1]}")
    return "\n".join(out) + "\n"


def chain_shape(n: int) -> Shape:
    """The same chain for the hand-built baseline (``compile_scale.build_direct``)."""
    steps = names(n)
    specs = [StepSpec(name, {"prev": "{{ workload.seed }}"},
                      f"result = {{'value': prev + 1, 'pad': 'x' * {PAD}}}",
                      arcs=[(steps[i + 1], None, {})] if i + 1 < n else [])
             for i, name in enumerate(steps)]
    return Shape(n, f"bench/chain_{n}", specs)


def carry_everything(net: Net) -> Net:
    """The net with every arc carrying every result (the tokens before ``carry``)."""
    def every(arcs: Any) -> tuple[Any, ...]:
        return tuple(replace(a, carry=None) for a in arcs)

    nodes = [replace(n, inbound=every(n.inbound), outbound=every(n.outbound)) for n in net.nodes]
    return Net(net.playbook, nodes, net.node_of_step, net.unreachable)


def cpu_of(fn: Any) -> tuple[float, float, Any]:
    gc.collect()
    w, c = time.perf_counter(), time.process_time()
    value = fn()
    return time.perf_counter() - w, time.process_time() - c, value


def compile_pass(n: int, reps: int) -> dict[str, float]:
    text, shape = chain_yaml(n), chain_shape(n)
    playbook = parse_text(text, f"/bench/chain_{n}.yaml")

    def noetl() -> Any:
        pb = parse_text(text, f"/bench/chain_{n}.yaml")
        return build_job(pb, net=plan(pb))

    variants = {"noetl": noetl, "direct+meta": lambda: build_direct(shape, meta=True)}
    best: dict[str, float] = {}
    with deep_enough(playbook):  # both walk the graph recursively inside Dagster
        for rep in range(reps):
            order = list(variants) if rep % 2 == 0 else list(reversed(variants))
            for name in order:
                _, cpu, job = cpu_of(variants[name])
                del job
                best[name] = min(best.get(name, float("inf")), cpu)
    return best


def run_pass(n: int, everything: bool = False) -> dict[str, float]:
    playbook = parse_text(chain_yaml(n), f"/bench/chain_{n}.yaml")
    net = plan(playbook)
    if everything:
        net = carry_everything(net)
    steps = names(n)
    config = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
    with deep_enough(playbook):
        job = build_job(playbook, net=net)
        with dg.DagsterInstance.ephemeral() as instance:
            wall, cpu, result = cpu_of(lambda: job.execute_in_process(
                run_config=config, instance=instance, raise_on_error=False))
    assert result.success
    assert result.output_for_node(steps[-1], "result")["value"] == 7 + n  # every step ran, in order
    token_bytes = sum(len(json.dumps(result.output_for_node(steps[i], f"to_{steps[i + 1]}")))
                      for i in range(n - 1))
    return {"wall": wall, "cpu": cpu, "token_bytes": token_bytes}


def run(args: argparse.Namespace) -> int:
    sizes = [int(s) for s in args.sizes.split(",") if s]
    run_sizes = [int(s) for s in args.run_sizes.split(",") if s]
    compare = {int(s) for s in args.compare.split(",") if s}
    print(f"chain_scale: chains of {sizes} steps (compile), {run_sizes} (run); python steps, "
          f"{PAD} bytes of padding per result")
    print(environment_line())
    compile_pass(20, 2)  # warm-up: imports, template environment, registries

    rows, previous = [], None
    for n in sizes:
        best = compile_pass(n, args.reps if n < 5000 else 1)
        per = {k: v / n * 1e6 for k, v in best.items()}
        growth = "" if previous is None else f"{per['noetl'] / previous:.2f}x"
        rows.append([n, f"{best['noetl']:.2f}", f"{per['noetl']:.0f}", f"{best['direct+meta']:.2f}",
                     f"{per['direct+meta']:.0f}", f"{best['noetl'] / best['direct+meta']:.2f}x", growth])
        previous = per["noetl"]
        print(f"  compiled {n} steps", flush=True)
    print()
    print("compile (CPU seconds; per step in microseconds):")
    print(table(["steps", "noetl s", "noetl us/step", "direct+meta s", "direct+meta us/step",
                 "noetl / direct+meta", "us/step vs previous size"], rows))

    rows, previous = [], None
    for n in run_sizes:
        got = run_pass(n)
        extra = ["", ""]
        if n in compare:
            before = run_pass(n, everything=True)
            extra = [f"{before['token_bytes'] / (n - 1):.0f}", f"{before['cpu'] / got['cpu']:.2f}x"]
        per = got["cpu"] / n * 1e3
        growth = "" if previous is None else f"{per / previous:.2f}x"
        rows.append([n, f"{got['cpu']:.1f}", f"{got['wall']:.1f}", f"{per:.2f}", f"{got['wall'] / n * 1e3:.2f}",
                     growth, f"{got['token_bytes'] / (n - 1):.0f}", *extra])
        previous = per
        print(f"  ran {n} steps", flush=True)
    if rows:
        print()
        print("run in process (ephemeral instance):")
        print(table(["steps", "cpu s", "wall s", "cpu ms/step", "wall ms/step", "cpu/step vs previous size",
                     "token bytes/step", "everything carried: bytes/step", "everything carried: cpu ratio"], rows))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100,1000,10000", help="chain lengths to compile")
    parser.add_argument("--run-sizes", default="100,1000", help="chain lengths to run in process")
    parser.add_argument("--compare", default="100,1000", help="run sizes also run with everything carried")
    parser.add_argument("--reps", type=int, default=3, help="compile repetitions below 5000 steps (best kept)")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
