"""Compile-time scale: many NoETL playbooks -> Dagster jobs, versus the same jobs hand-built.

Generates ``--playbooks`` playbooks of ``--steps`` steps each (default 200 x 50) as YAML text in
memory. Every playbook has the same realistic mix, with a fan width that varies per playbook:

* ``start``: python with ``input`` templates and a step ``set``; an inclusive router to W branches
  (one arc guarded by ``when`` and carrying an arc ``set``);
* ``fan_01..fan_W``: python steps, joined by ``join_fan`` (a fan-in of W arcs);
* ``router``: python, exclusive arcs with ``when`` to ``route_hi/route_mid/route_lo``, joined again
  by ``merge_route``;
* ``per_item``: a parallel loop (fan-out -> mapped body -> collect: 3 ops);
* ``c01..cNN``: a linear chain of python steps with input templates; ``end``: noop.

Timed in one process; for every playbook the variants run back to back in a rotating order, and
each playbook's best of ``--reps`` repetitions is summed. CPU time (``process_time``) is the
headline because it ignores other processes on the cores; wall time is printed next to it.

* **noetl**: ``parse_text`` (YAML + validation) -> ``plan`` -> ``build_job``, for every playbook;
* **noetl folder**: ``load_playbook_definitions`` on a temp folder holding the same YAML files,
  then ``get_repository_def()`` (what a code server does next), against
  ``Definitions(jobs=<direct+meta jobs>)`` resolved the same way;
* **direct**: the same jobs from the same in-memory shape, written straight against the Dagster
  API (``@op`` with the same ins/outs, ``GraphDefinition`` with ``MultiDependencyDefinition``
  fan-ins and ``DynamicCollectDependencyDefinition`` for the loop, ``to_job``); no YAML.
  ``direct+meta`` also attaches what noetl attaches (op tags, descriptions, a code-reference on
  every ``result`` Out, two required resources, job tags/metadata/resources), so
  "noetl / direct+meta" is the framework's own cost and "direct+meta / direct" the features'.

Run: ``.venv/bin/python benchmarks/compile_scale.py [--quick] [--profile]``. Never asserts times.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import best, environment_line, profiled, quiet_warnings, table, timed  # noqa: E402

quiet_warnings()

import dagster as dg  # noqa: E402
# not exported at the top level; it is what `.map(...).collect()` compiles to
from dagster._core.definitions.dependency import DynamicCollectDependencyDefinition  # noqa: E402

from noetl_dagster import build_job, load_playbook_definitions, plan  # noqa: E402
from noetl_dagster.playbook.loader import parse_text  # noqa: E402

TARGET = 1.3
FIXED_STEPS = 9  # start, join_fan, router, route_hi/mid/lo, merge_route, per_item, end


# --------------------------------------------------------------------------- the shared shape


@dataclass
class StepSpec:
    name: str
    inputs: dict[str, Any] = field(default_factory=dict)  # templates (str) or literals
    code: str = ""
    kind: str = "python"
    mode: str = "exclusive"
    arcs: list[tuple[str, str | None, dict[str, str]]] = field(default_factory=list)
    set: dict[str, str] = field(default_factory=dict)
    loop_in: str | None = None  # a parallel loop over this template
    desc: str = ""


@dataclass
class Shape:
    index: int
    path: str
    steps: list[StepSpec]

    @property
    def job_name(self) -> str:
        return self.path.replace("/", "__")


def make_shape(index: int, n_steps: int) -> Shape:
    """One playbook's steps; the fan width (4..10) varies with ``index``, the total does not."""
    rng = random.Random(index)
    width = 4 + index % 7
    chain = n_steps - FIXED_STEPS - width
    if chain < 1:
        raise SystemExit(f"--steps must be at least {FIXED_STEPS + 11}")
    fans = [f"fan_{k:02d}" for k in range(1, width + 1)]
    links = [f"c{k:02d}" for k in range(1, chain + 1)]
    steps: list[StepSpec] = []
    arcs: list[tuple[str, str | None, dict[str, str]]] = []
    for k, fan in enumerate(fans):
        if k == 1:
            arcs.append((fan, "{{ output.base > 0 }}", {"ctx.fan_reason": "base={{ output.base }}"}))
        else:
            arcs.append((fan, None, {}))
    steps.append(StepSpec(
        "start", {"seed": "{{ workload.seed }}", "label": "run-{{ workload.seed }}-{{ execution_id }}"},
        'result = {"base": seed % 97 + 1, "label": label}', mode="inclusive", arcs=arcs,
        set={"ctx.base": "{{ output.base }}"}, desc="Normalise the input and fan out."))
    for k, fan in enumerate(fans, 1):
        steps.append(StepSpec(
            fan, {"b": "{{ start.base }}", "k": k, "reason": "{{ fan_reason | default('none') }}"},
            f'result = {{"value": b * k + {rng.randint(0, 9)}, "reason": reason}}',
            arcs=[("join_fan", None, {})]))
    steps.append(StepSpec(
        "join_fan", {f"v{k}": f"{{{{ {fan}.value | default(0) }}}}" for k, fan in enumerate(fans, 1)},
        "result = {'total': sum(v for k, v in dict(input_data).items() if k.startswith('v'))}",
        arcs=[("router", None, {})], desc="Join of the fan-out."))
    steps.append(StepSpec(
        "router", {"total": "{{ join_fan.total }}"}, 'result = {"score": total % 100}',
        arcs=[("route_hi", "{{ output.score >= 70 }}", {"ctx.band": "hi"}),
              ("route_mid", "{{ output.score >= 30 }}", {"ctx.band": "mid"}),
              ("route_lo", None, {"ctx.band": "lo"})]))
    for band in ("hi", "mid", "lo"):
        steps.append(StepSpec(
            f"route_{band}", {"score": "{{ router.score }}", "band": "{{ band }}"},
            'result = {"value": score, "band": band}', arcs=[("merge_route", None, {})]))
    steps.append(StepSpec(
        "merge_route",
        {"hi": "{{ route_hi | default(none) }}", "mid": "{{ route_mid | default(none) }}",
         "lo": "{{ route_lo | default(none) }}"},
        'result = {"value": (hi or mid or lo)["value"]}', arcs=[("per_item", None, {})]))
    steps.append(StepSpec(
        "per_item", {"item": "{{ item }}", "base": "{{ merge_route.value }}"},
        'result = {"value": item * 2 + base}', arcs=[(links[0], None, {})],
        loop_in="{{ workload.items }}", desc="One iteration per workload item, in parallel."))
    for k, link in enumerate(links):
        prev = "{{ per_item | length }}" if k == 0 else f"{{{{ {links[k - 1]}.value }}}}"
        target = links[k + 1] if k + 1 < len(links) else "end"
        steps.append(StepSpec(link, {"prev": prev, "seed": "{{ workload.seed }}"},
                              'result = {"value": prev + seed % 3}', arcs=[(target, None, {})]))
    steps.append(StepSpec("end", kind="noop"))
    assert len(steps) == n_steps, (len(steps), n_steps)
    return Shape(index, f"bench{index % 5}/pb_{index:04d}", steps)


# --------------------------------------------------------------------------- YAML generation


def _q(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def to_yaml(shape: Shape) -> str:
    out = [
        f"# generated benchmark playbook {shape.index}",
        "apiVersion: noetl.io/v2",
        "kind: Playbook",
        "metadata:",
        f"  name: pb_{shape.index:04d}",
        f"  path: {shape.path}",
        f"  description: Benchmark playbook {shape.index} ({len(shape.steps)} steps).",
        "workload:",
        f"  seed: {shape.index + 11}",
        "  items: [1, 2, 3]",
        "workflow:",
    ]
    for s in shape.steps:
        out.append(f"  - step: {s.name}")
        if s.desc:
            out.append(f"    desc: {s.desc}")
        if s.loop_in is not None:
            out += ["    loop:", f"      in: {_q(s.loop_in)}", "      iterator: item",
                    "      spec:", "        mode: parallel"]
        out.append("    tool:")
        out.append(f"      kind: {s.kind}")
        if s.inputs:
            out.append("      input:")
            out += [f"        {k}: {_q(v) if isinstance(v, str) else v}" for k, v in s.inputs.items()]
        if s.code:
            out.append("      code: |")
            out += [f"        {line}" for line in s.code.splitlines()]
        if s.set:
            out.append("    set:")
            out += [f"      {k}: {_q(v)}" for k, v in s.set.items()]
        if len(s.arcs) == 1 and s.arcs[0][1] is None and not s.arcs[0][2]:
            out.append(f"    next: {s.arcs[0][0]}")
        elif s.arcs:
            out += ["    next:", "      spec:", f"        mode: {s.mode}", "      arcs:"]
            for target, when, arc_set in s.arcs:
                out.append(f"        - step: {target}")
                if when is not None:
                    out.append(f"          when: {_q(when)}")
                if arc_set:
                    out.append("          set:")
                    out += [f"            {k}: {_q(v)}" for k, v in arc_set.items()]
        out.append("")
    return "\n".join(out)


# --------------------------------------------------------------------------- direct Dagster


#: direct+meta ops require two resources, as noetl's ops do (credentials and catalog)
META_RESOURCES = ("noetl_credentials", "noetl_catalog")
WORKLOAD_CONFIG = {"workload": dg.Field(dg.Permissive(), is_required=False, default_value={})}


def _code_ref(file: str, line: int, label: str) -> dict[str, Any]:
    ref = dg.LocalFileCodeReference(file_path=file, line_number=line, label=label)
    return {"dagster/code_references": dg.CodeReferencesMetadataValue(code_references=[ref])}


def _step_fn(name: str, outputs: list[str], exclusive: bool, entry: bool):
    """A compute function with the signature Dagster needs (``context`` [+ ``tokens``]).

    No annotations: the types are declared by ``ins=`` (string annotations, as under
    ``from __future__ import annotations``, make every ``@op`` evaluate them again).
    """

    def body(tokens):
        yield dg.Output({"step": name, "n": len(tokens or ())}, "result")
        for out in outputs:
            yield dg.Output({"to": out, "from": name, "workload": {}}, out)
            if exclusive:
                break

    if entry:
        def entry_fn(context):
            yield from body(None)
        return entry_fn

    def with_tokens(context, tokens):
        yield from body(tokens)
    return with_tokens


def build_direct(shape: Shape, meta: bool = False) -> dg.JobDefinition:
    """The same job as noetl emits, from the in-memory shape, written against Dagster directly.

    As in noetl, op *definitions* are named ``<job>__<step>`` (unique in a code location) and the
    graph nodes are aliased back to the step names.
    """
    job = shape.job_name
    inbound: dict[str, list[tuple[str, str]]] = {s.name: [] for s in shape.steps}
    loops = {s.name for s in shape.steps if s.loop_in is not None}
    for s in shape.steps:
        for target, _, _ in s.arcs:
            inbound[target].append((f"{s.name}__collect" if s.name in loops else s.name, f"to_{target}"))
    file = f"/bench/{shape.path}.yaml"
    node_defs: list[dg.OpDefinition] = []
    deps: dict[Any, dict[str, Any]] = {}

    def add(node: str, op_def: dg.OpDefinition, node_deps: dict[str, Any]) -> None:
        node_defs.append(op_def)
        deps[dg.NodeInvocation(op_def.name, node)] = node_deps

    for line, s in enumerate(shape.steps, 12):
        extra: dict[str, Any] = {}
        result_meta: dict[str, Any] = {}
        if meta:
            extra = {"description": s.desc or f"NoETL step `{s.name}` ({s.kind})",
                     "tags": {"noetl/step": s.name, "noetl/tool": s.kind, "dagster/kind/noetl": "",
                              f"dagster/kind/{s.kind}": ""},
                     "required_resource_keys": set(META_RESOURCES)}
            result_meta = {"metadata": _code_ref(file, line, f"step {s.name}"),
                           "description": f"result of {s.name}"}
        outputs = [f"to_{t}" for t, _, _ in s.arcs]
        outs = {"result": dg.Out(**result_meta), **{o: dg.Out(is_required=False) for o in outputs}}
        entry = not inbound[s.name]
        ins = {} if entry else {"tokens": dg.In(list)}
        token_dep = {} if entry else {"tokens": dg.MultiDependencyDefinition(
            [dg.DependencyDefinition(src, out) for src, out in inbound[s.name]])}
        if s.loop_in is None:
            add(s.name, dg.op(name=f"{job}__{s.name}", ins=ins, out=outs,
                              config_schema=WORKLOAD_CONFIG if entry else None, **extra)(
                _step_fn(s.name, outputs, s.mode == "exclusive", entry)), token_dep)
            continue

        def fan_out(context, tokens):
            token = tokens[0] if tokens else {}
            yield dg.Output({"token": token, "total": 3}, "loop_context")
            for i in range(3):
                yield dg.DynamicOutput({"token": token, "item": i}, mapping_key=f"i{i:05d}",
                                       output_name="items")

        def loop_body(context, work):
            return dg.Output({"value": work["item"]}, "result")

        def make_collect(arc_outputs: tuple[str, ...]):
            def collect(context, loop_context, results):
                yield dg.Output([r["value"] for r in results], "result")
                for out in arc_outputs:
                    yield dg.Output({"to": out, "token": loop_context["token"]}, out)
            return collect

        fan, coll = f"{s.name}__fan_out", f"{s.name}__collect"
        add(fan, dg.op(name=f"{job}__{fan}", ins=ins,
                       out={"loop_context": dg.Out(), "items": dg.DynamicOut()}, **extra)(fan_out),
            token_dep)
        add(s.name, dg.op(name=f"{job}__{s.name}", ins={"work": dg.In(dict)},
                          out={"result": dg.Out()}, **extra)(loop_body),
            {"work": dg.DependencyDefinition(fan, "items")})
        add(coll, dg.op(name=f"{job}__{coll}", ins={"loop_context": dg.In(dict), "results": dg.In(list)},
                        out=outs, **extra)(make_collect(tuple(outputs))),
            {"loop_context": dg.DependencyDefinition(fan, "loop_context"),
             "results": DynamicCollectDependencyDefinition(s.name, "result")})
    graph = dg.GraphDefinition(name=job, node_defs=node_defs, dependencies=deps)
    job_extra: dict[str, Any] = {}
    if meta:
        job_extra = {"description": f"Benchmark playbook {shape.index}",
                     "resource_defs": {key: dg.ResourceDefinition.hardcoded_resource({}, key)
                                       for key in META_RESOURCES},
                     "tags": {"noetl/playbook": shape.path, "noetl/domain": shape.path.split("/")[0]},
                     "metadata": {**_code_ref(file, 1, "playbook"), "noetl/path": shape.path}}
    return graph.to_job(name=job, executor_def=dg.in_process_executor, **job_extra)


# --------------------------------------------------------------------------- timing passes


class Samples:
    """Per-playbook (wall, cpu) seconds of each variant, over repetitions."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.data: dict[str, list[list[tuple[float, float]]]] = {}

    def add(self, variant: str, index: int, wall: float, cpu: float) -> None:
        self.data.setdefault(variant, [[] for _ in range(self.n)])[index].append((wall, cpu))

    def best(self, variant: str, cpu: bool = False) -> float:
        """Sum over playbooks of each playbook's best repetition (robust to noisy neighbours)."""
        k = 1 if cpu else 0
        return sum(min(r[k] for r in runs) for runs in self.data[variant])


def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def noetl_one(file: str, text: str) -> tuple[dict[str, float], dg.JobDefinition]:
    """parse_text -> plan -> build_job for one doc; CPU seconds per phase."""
    clock = time.process_time
    t0 = clock()
    playbook = parse_text(text, file)
    t1 = clock()
    net = plan(playbook)
    t2 = clock()
    job = build_job(playbook, net=net)
    t3 = clock()
    return {"parse": t1 - t0, "plan": t2 - t1, "emit": t3 - t2}, job


def _yaml_reader() -> Any:
    """The YAML reader alone, for the breakdown (a private function: None if it moved)."""
    try:
        from noetl_dagster.playbook.source import load_yaml_text
    except ImportError:
        return None
    return load_yaml_text


def _resolve(defs: dg.Definitions) -> int:
    """What a code server does next: build the repository (checks op-name clashes too)."""
    return len(defs.get_repository_def().get_all_jobs())


def run(args: argparse.Namespace) -> int:
    shapes = [make_shape(i, args.steps) for i in range(args.playbooks)]
    docs = [(f"/bench/{s.path}.yaml", to_yaml(s)) for s in shapes]
    ops_per_job = len(build_direct(shapes[0]).graph.node_defs)
    n_jobs = len(shapes)
    total_ops = n_jobs * ops_per_job
    print(f"compile_scale: {n_jobs} playbooks x {args.steps} steps ({ops_per_job} ops per job, "
          f"{total_ops} ops), best of {args.reps} per playbook, variants interleaved")
    print(environment_line())

    tmp = tempfile.TemporaryDirectory(prefix="noetl_bench_")
    root = Path(tmp.name)
    for shape, (_, text) in zip(shapes, docs):
        target = root / f"{shape.path}.yaml"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")

    load_yaml = _yaml_reader()
    variants: dict[str, Any] = {
        "noetl": lambda i: noetl_one(*docs[i]),
        "direct": lambda i: build_direct(shapes[i]),
        "direct_meta": lambda i: build_direct(shapes[i], meta=True),
    }
    if load_yaml is not None:
        variants["yaml"] = lambda i: load_yaml(docs[i][1], docs[i][0])
    for i in range(min(2, n_jobs)):  # warm-up: imports, registries, template env, caches
        for fn in variants.values():
            fn(i)

    # Objects alive now (modules, shapes, docs) are frozen out of the collector, so the untimed
    # gc.collect() before every timed call is cheap and nobody is billed for another's garbage.
    gc.collect()
    gc.freeze()
    samples = Samples(n_jobs)
    phases: list[list[dict[str, float]]] = [[] for _ in range(n_jobs)]
    folder: dict[str, list[tuple[float, float]]] = {"noetl": [], "direct": []}
    names = list(variants)
    for rep in range(args.reps):
        started = time.perf_counter()
        for i in range(n_jobs):
            shift = (i + rep) % len(names)  # rotate the order: nobody always runs first
            for variant in names[shift:] + names[:shift]:
                gc.collect()
                w0, c0 = _clock()
                value = variants[variant](i)
                w1, c1 = _clock()
                samples.add(variant, i, w1 - w0, c1 - c0)
                if variant == "noetl":
                    phases[i].append({**value[0], "total": c1 - c0})
                del value
        wall, cpu, n_folder = timed(lambda: _resolve(load_playbook_definitions(root, strict=True)))
        folder["noetl"].append((wall, cpu))
        assert n_folder == n_jobs, (n_folder, n_jobs)
        wall, cpu, _ = timed(lambda: _resolve(
            dg.Definitions(jobs=[build_direct(s, meta=True) for s in shapes])))
        folder["direct"].append((wall, cpu))
        print(f"  rep {rep + 1}/{args.reps} done in {time.perf_counter() - started:.1f}s wall "
              f"(folder pass cpu: noetl {folder['noetl'][-1][1]:.2f}s, direct {folder['direct'][-1][1]:.2f}s)",
              flush=True)

    direct, direct_cpu = samples.best("direct"), samples.best("direct", cpu=True)
    meta, meta_cpu = samples.best("direct_meta"), samples.best("direct_meta", cpu=True)
    noetl, noetl_cpu = samples.best("noetl"), samples.best("noetl", cpu=True)
    folder_noetl = best([w for w, _ in folder["noetl"]])
    folder_noetl_cpu = best([c for _, c in folder["noetl"]])
    folder_direct = best([w for w, _ in folder["direct"]])
    folder_direct_cpu = best([c for _, c in folder["direct"]])

    def row(label: str, seconds: float, cpu: float) -> list[str]:
        return [label, f"{seconds:.3f}", f"{cpu:.3f}", f"{cpu / n_jobs * 1e3:.1f}",
                f"{cpu / total_ops * 1e6:.0f}", f"{cpu / direct_cpu:.2f}x", f"{seconds / direct:.2f}x"]

    print()
    print(table(["variant", "wall s", "cpu s", "cpu ms/job", "cpu us/op", "vs direct (cpu)",
                 "vs direct (wall)"], [
        row("direct (GraphDefinition, plain)", direct, direct_cpu),
        row("direct+meta (tags/desc/code refs/resources)", meta, meta_cpu),
        row("noetl (parse+validate+plan+build_job)", noetl, noetl_cpu),
        row("direct+meta -> Definitions, resolved", folder_direct, folder_direct_cpu),
        row("noetl load_playbook_definitions, resolved", folder_noetl, folder_noetl_cpu),
    ]))

    # the noetl breakdown: for each playbook, the phases of its best repetition
    best_phases = [min(runs, key=lambda p: p["total"]) for runs in phases]
    parse_s = sum(p["parse"] for p in best_phases)
    plan_s = sum(p["plan"] for p in best_phases)
    emit_s = sum(p["emit"] for p in best_phases)
    total_s = parse_s + plan_s + emit_s
    rows: list[tuple[str, float]] = []
    if "yaml" in samples.data:
        yaml_s = samples.best("yaml", cpu=True)
        rows += [("YAML parse (load_yaml_text)", yaml_s),
                 ("validation (models + checks)", max(parse_s - yaml_s, 0.0))]
    else:
        rows.append(("parse_text (YAML + validation)", parse_s))
    rows += [("plan", plan_s), ("emit (build_job)", emit_s), ("total", total_s)]
    print()
    print("noetl breakdown (CPU time, each playbook's best repetition):")
    print(table(["phase", "cpu s", "ms/job", "share"],
                [[name, f"{sec:.3f}", f"{sec / n_jobs * 1e3:.2f}", f"{sec / total_s * 100:.0f}%"]
                 for name, sec in rows]))
    print()
    print(f"(cpu) emit alone / direct: {emit_s / direct_cpu:.2f}x   emit alone / direct+meta: "
          f"{emit_s / meta_cpu:.2f}x   noetl / direct+meta: {noetl_cpu / meta_cpu:.2f}x   "
          f"folder noetl / folder direct+meta: {folder_noetl_cpu / folder_direct_cpu:.2f}x")

    if args.profile:
        with profiled(True, "noetl compile of every playbook", limit=args.profile_lines):
            for file, text in docs:
                noetl_one(file, text)
        with profiled(True, "noetl compile of every playbook", sort="tottime", limit=args.profile_lines):
            for file, text in docs:
                noetl_one(file, text)

    gc.unfreeze()
    if not args.no_check:
        _sanity_run(shapes[0], docs[0])
    tmp.cleanup()
    ratio = noetl_cpu / direct_cpu
    verdict = "within" if ratio <= TARGET else "ABOVE"
    print(f"ratio noetl/direct = {ratio:.2f}x (cpu, sum of per-playbook best of {args.reps}; "
          f"wall {noetl / direct:.2f}x; target <= {TARGET}x: {verdict})")
    return 0


def _sanity_run(shape: Shape, doc: tuple[str, str]) -> None:
    """Both jobs of the first shape execute (the generated YAML is a valid, runnable playbook)."""
    run_config = {"ops": {"start": {"config": {"workload": {}}}},
                  "loggers": {"console": {"config": {"log_level": "WARNING"}}}}
    with dg.DagsterInstance.ephemeral() as instance:
        noetl_res = build_job(parse_text(doc[1], doc[0])).execute_in_process(
            run_config=run_config, instance=instance, raise_on_error=False)
        direct_res = build_direct(shape, meta=True).execute_in_process(
            run_config=run_config, instance=instance, raise_on_error=False)

    def ran(res: Any) -> int:
        return sum(1 for e in res.all_events if e.event_type_value == "STEP_SUCCESS")

    print(f"sanity: noetl job success={noetl_res.success} ({ran(noetl_res)} steps ran), "
          f"direct job success={direct_res.success} ({ran(direct_res)} steps ran)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="20 playbooks, 2 repetitions")
    parser.add_argument("--playbooks", type=int, default=None, help="number of playbooks (200)")
    parser.add_argument("--steps", type=int, default=50, help="steps per playbook (50)")
    parser.add_argument("--reps", type=int, default=None, help="repetitions, best is kept (3)")
    parser.add_argument("--profile", action="store_true", help="cProfile the noetl pass (stderr)")
    parser.add_argument("--profile-lines", type=int, default=35)
    parser.add_argument("--no-check", action="store_true", help="skip the sanity execution")
    args = parser.parse_args(argv)
    args.playbooks = args.playbooks or (20 if args.quick else 200)
    args.reps = args.reps or (2 if args.quick else 3)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
