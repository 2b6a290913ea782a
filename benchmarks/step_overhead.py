"""Per-step run overhead: a compiled NoETL playbook versus a hand-written Dagster job of the same shape.

Shapes (each as a NoETL playbook compiled with ``build_job`` and as a hand-written job):

* ``linear python``: ``--chain`` (100) python steps in a row; each renders an ``input`` template
  reading the previous step's result and returns ``{"v": v + 1}``;
* ``linear noop``: the same chain of ``kind: noop`` steps (the framework with no tool work);
* ``fan-out``: ``start`` -> inclusive router to ``--width`` (20) python branches -> a join;
* ``single step``: one python step (the fixed cost of a run, used for the marginal column).

The hand-written jobs have the same ops, ins (a fan-in list ``tokens``), outs (``result`` plus one
optional ``to_<target>`` per arc) and wiring; each op passes a small dict. Everything runs in
process with ``execute_in_process`` on one ephemeral instance, console logger at WARNING. Each job is
warmed up once, then the noetl and direct runs alternate; the median of ``--runs`` is reported, in
process CPU time (robust when other processes share the cores) and in wall time.

Run: ``.venv/bin/python benchmarks/step_overhead.py [--quick] [--profile]``. Never asserts times.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import environment_line, median, profiled, quiet_warnings, table  # noqa: E402

quiet_warnings()

import dagster as dg  # noqa: E402

from noetl_dagster import build_job  # noqa: E402
from noetl_dagster.playbook.loader import parse_text  # noqa: E402

TARGET = 1.15
RUN_CONFIG = {"ops": {"start": {"config": {"workload": {}}}},
              "loggers": {"console": {"config": {"log_level": "WARNING"}}}}
HEADER = """apiVersion: noetl.io/v2
kind: Playbook
metadata:
  name: {name}
  path: bench/{name}
workload:
  seed: 1
workflow:
"""


# --------------------------------------------------------------------------- playbooks (YAML)


def linear_yaml(n: int, kind: str) -> str:
    names = ["start"] + [f"s{i:03d}" for i in range(1, n)]
    out = [HEADER.format(name=f"linear_{kind}_{n}")]
    for i, name in enumerate(names):
        out.append(f"  - step: {name}\n    tool:\n      kind: {kind}\n")
        if kind == "python":
            value = "{{ workload.seed }}" if i == 0 else f"{{{{ {names[i - 1]}.v }}}}"
            out.append(f'      input:\n        v: "{value}"\n      code: |\n        result = {{"v": v + 1}}\n')
        if i + 1 < len(names):
            out.append(f"    next: {names[i + 1]}\n")
    return "".join(out)


def fanout_yaml(width: int) -> str:
    branches = [f"b{i:02d}" for i in range(1, width + 1)]
    out = [HEADER.format(name=f"fanout_{width}"),
           '  - step: start\n    tool:\n      kind: python\n      input:\n        v: "{{ workload.seed }}"\n'
           '      code: |\n        result = {"v": v}\n    next:\n      spec:\n        mode: inclusive\n'
           "      arcs:\n"]
    out += [f"        - step: {b}\n" for b in branches]
    for k, b in enumerate(branches, 1):
        out.append(f'  - step: {b}\n    tool:\n      kind: python\n      input:\n        v: "{{{{ start.v }}}}"\n'
                   f'      code: |\n        result = {{"v": v + {k}}}\n    next: join\n')
    out.append('  - step: join\n    tool:\n      kind: python\n      input:\n'
               f'        first: "{{{{ {branches[0]}.v }}}}"\n        last: "{{{{ {branches[-1]}.v }}}}"\n'
               '      code: |\n        result = {"v": first + last}\n')
    return "".join(out)


# --------------------------------------------------------------------------- direct jobs


def _direct_op(name: str, targets: list[str], entry: bool, delta: int) -> dg.OpDefinition:
    outs = {"result": dg.Out(), **{f"to_{t}": dg.Out(is_required=False) for t in targets}}

    def body(tokens):
        v = tokens[0]["v"] + delta if tokens else 1
        value = {"v": v}
        yield dg.Output(value, "result")
        for target in targets:
            yield dg.Output({"to": target, "v": v}, f"to_{target}")

    if entry:
        def entry_fn(context):
            yield from body(None)
        return dg.op(name=name, out=outs, config_schema={
            "workload": dg.Field(dg.Permissive(), is_required=False, default_value={})})(entry_fn)

    def with_tokens(context, tokens):
        yield from body(tokens)
    return dg.op(name=name, ins={"tokens": dg.In(list)}, out=outs)(with_tokens)


def direct_job(name: str, edges: dict[str, list[str]], delta: int = 1) -> dg.JobDefinition:
    """``edges``: step -> targets, in YAML order; fan-in lists follow that order too."""
    inbound: dict[str, list[tuple[str, str]]] = {step: [] for step in edges}
    for step, targets in edges.items():
        for target in targets:
            inbound[target].append((step, f"to_{target}"))
    node_defs = [_direct_op(step, targets, not inbound[step], delta) for step, targets in edges.items()]
    deps = {step: {"tokens": dg.MultiDependencyDefinition(
        [dg.DependencyDefinition(src, out) for src, out in inbound[step]])} if inbound[step] else {}
        for step in edges}
    graph = dg.GraphDefinition(name=name, node_defs=node_defs, dependencies=deps)
    return graph.to_job(name=name, executor_def=dg.in_process_executor)


def linear_edges(n: int) -> dict[str, list[str]]:
    names = ["start"] + [f"s{i:03d}" for i in range(1, n)]
    return {name: ([names[i + 1]] if i + 1 < n else []) for i, name in enumerate(names)}


def fanout_edges(width: int) -> dict[str, list[str]]:
    branches = [f"b{i:02d}" for i in range(1, width + 1)]
    return {"start": branches, **{b: ["join"] for b in branches}, "join": []}


# --------------------------------------------------------------------------- running


@dataclass
class Case:
    label: str
    steps: int
    noetl: dg.JobDefinition
    direct: dg.JobDefinition


@dataclass
class Measured:
    case: Case
    noetl: list[float]  # wall seconds per run
    direct: list[float]
    noetl_cpu: list[float]  # process CPU seconds per run (robust to busy neighbours)
    direct_cpu: list[float]
    noetl_events: int
    direct_events: int


def execute(job: dg.JobDefinition, instance: dg.DagsterInstance, steps: int) -> tuple[float, float, int]:
    """Run once; (wall seconds, CPU seconds, number of events). Exits if a step did not run."""
    start, cpu = time.perf_counter(), time.process_time()
    result = job.execute_in_process(run_config=RUN_CONFIG, instance=instance, raise_on_error=False)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    ran = sum(1 for e in result.all_events if e.event_type_value == "STEP_SUCCESS")
    if not result.success or ran != steps:
        failures = [e.message for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
        raise SystemExit(f"{job.name}: success={result.success}, {ran}/{steps} steps ran: {failures[:2]}")
    return seconds, cpu, len(result.all_events)


def measure(case: Case, instance: dg.DagsterInstance, runs: int) -> Measured:
    *_, noetl_events = execute(case.noetl, instance, case.steps)  # warm-up
    *_, direct_events = execute(case.direct, instance, case.steps)
    m = Measured(case, [], [], [], [], noetl_events, direct_events)
    for i in range(runs):
        pair = [(m.noetl, m.noetl_cpu, case.noetl), (m.direct, m.direct_cpu, case.direct)]
        for wall_sink, cpu_sink, job in (pair if i % 2 == 0 else pair[::-1]):
            wall, cpu, _ = execute(job, instance, case.steps)
            wall_sink.append(wall)
            cpu_sink.append(cpu)
    return m


def compile_case(label: str, text: str, file: str, direct: Callable[[], dg.JobDefinition],
                 steps: int) -> Case:
    return Case(label, steps, build_job(parse_text(text, file)), direct())


def run(args: argparse.Namespace) -> int:
    n, width = args.chain, args.width
    print(f"step_overhead: in process, ephemeral instance, console WARNING; warm-up 1, "
          f"median of {args.runs} alternating runs")
    print(environment_line())
    cases = [
        compile_case("single step", linear_yaml(1, "python"), "single.yaml",
                     lambda: direct_job("single", linear_edges(1)), 1),
        compile_case(f"linear python x{n}", linear_yaml(n, "python"), "linear_python.yaml",
                     lambda: direct_job("linear_python", linear_edges(n)), n),
        compile_case(f"linear noop x{n}", linear_yaml(n, "noop"), "linear_noop.yaml",
                     lambda: direct_job("linear_noop", linear_edges(n), delta=0), n),
        compile_case(f"fan-out {width} + join", fanout_yaml(width), "fanout.yaml",
                     lambda: direct_job("fanout", fanout_edges(width)), width + 2),
    ]
    results: list[Measured] = []
    with dg.DagsterInstance.ephemeral() as instance:
        for case in cases:
            results.append(measure(case, instance, args.runs))
            m = results[-1]
            print(f"  {case.label}: noetl {median(m.noetl) * 1e3:.0f} ms "
                  f"(cpu {median(m.noetl_cpu) * 1e3:.0f}), direct {median(m.direct) * 1e3:.0f} ms "
                  f"(cpu {median(m.direct_cpu) * 1e3:.0f})", flush=True)
        if args.profile:
            linear = cases[1]
            with profiled(True, f"noetl {linear.label}, {args.runs} runs", limit=args.profile_lines,
                          sort="tottime"):
                for _ in range(args.runs):
                    execute(linear.noetl, instance, linear.steps)
            with profiled(True, f"noetl {linear.label}: noetl_dagster functions",
                          limit=args.profile_lines, restrict="noetl_dagster"):
                for _ in range(args.runs):
                    execute(linear.noetl, instance, linear.steps)

    fixed = results[0]
    rows = []
    totals = {"noetl": 0.0, "direct": 0.0, "noetl_cpu": 0.0, "direct_cpu": 0.0}
    for m in results:
        steps = m.case.steps
        wall_n, wall_d = median(m.noetl), median(m.direct)
        cpu_n, cpu_d = median(m.noetl_cpu), median(m.direct_cpu)
        marginal = "-"
        if steps > 1:
            totals["noetl"] += wall_n
            totals["direct"] += wall_d
            totals["noetl_cpu"] += cpu_n
            totals["direct_cpu"] += cpu_d
            # per extra step: minus the fixed cost of a run (the single-step job)
            marginal = (f"{(cpu_n - median(fixed.noetl_cpu)) / (steps - 1) * 1e3:.2f} / "
                        f"{(cpu_d - median(fixed.direct_cpu)) / (steps - 1) * 1e3:.2f}")
        rows.append([m.case.label, steps,
                     f"{cpu_n / steps * 1e3:.2f} / {cpu_d / steps * 1e3:.2f}", marginal,
                     f"{wall_n / steps * 1e3:.2f} / {wall_d / steps * 1e3:.2f}",
                     f"{m.noetl_events} / {m.direct_events}", f"{cpu_n / cpu_d:.2f}x", f"{wall_n / wall_d:.2f}x"])
    print()
    print(table(["shape", "steps", "cpu ms/step noetl / direct", "marginal cpu ms/step", "wall ms/step noetl / direct",
                 "events", "ratio cpu", "ratio wall"], rows))
    ratio = totals["noetl_cpu"] / totals["direct_cpu"]
    verdict = "within" if ratio <= TARGET else "ABOVE"
    parts = ", ".join(f"{m.case.label} {median(m.noetl_cpu) / median(m.direct_cpu):.2f}x" for m in results[1:])
    print(f"ratio noetl/direct = {ratio:.2f}x per step (cpu, multi-step shapes, sum of medians: {parts}; "
          f"wall {totals['noetl'] / totals['direct']:.2f}x; target <= {TARGET}x: {verdict})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="chain 20, fan-out 5, 3 runs")
    parser.add_argument("--chain", type=int, default=None, help="linear chain length (100)")
    parser.add_argument("--width", type=int, default=None, help="fan-out width (20)")
    parser.add_argument("--runs", type=int, default=None, help="timed runs per job (9)")
    parser.add_argument("--profile", action="store_true", help="cProfile the noetl linear run (stderr)")
    parser.add_argument("--profile-lines", type=int, default=35)
    args = parser.parse_args(argv)
    args.chain = args.chain or (20 if args.quick else 100)
    args.width = args.width or (5 if args.quick else 20)
    args.runs = args.runs or (3 if args.quick else 9)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
