"""Tokens carry only what later steps read, and every step still sees what NoETL gives it.

The planner computes each arc's ``carry`` (the results and ``ctx`` values its token keeps); a
step that can read the whole context makes every arc upstream of it carry everything. The
differential test runs each conformance case twice, with the plan's ``carry`` and with every
arc carrying everything (the behaviour before), and compares the run reports.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import dagster as dg
import pytest
import yaml

from noetl_dagster.playbook.loader import load_playbook, parse_text
from noetl_dagster.report import build_report
from noetl_dagster.translator.emit import build_job, has_products, workload_run_config
from noetl_dagster.translator.guard import deep_enough
from noetl_dagster.planner import Net, plan

HEAD = "apiVersion: noetl.io/v2\nkind: Playbook\nmetadata: {name: p, path: dom/p}\n"
CASES = sorted((Path(__file__).parent / "conformance" / "cases").iterdir())


def pb(body: str, workload: str = ""):
    return parse_text(HEAD + workload + "workflow:\n" + body, "p.yaml")


def carry(net: Net, source: str, target: str):
    return next(a.carry for n in net.nodes for a in n.outbound if a.source == source and a.target == target)


def carry_all(net: Net) -> Net:
    """The same net with every arc carrying everything (how tokens were built before)."""
    def every(arcs):  # type: ignore[no-untyped-def]
        return tuple(replace(a, carry=None) for a in arcs)

    nodes = [replace(n, inbound=every(n.inbound), outbound=every(n.outbound)) for n in net.nodes]
    return Net(net.playbook, nodes, net.node_of_step, net.unreachable)


def chain(n: int, pad: int = 200) -> str:
    """``start`` -> s00001 -> ... : each step reads the previous step's result."""
    lines = []
    for i in range(n):
        name, prev = ("start" if i == 0 else f"s{i:05d}"), ("start" if i == 1 else f"s{i - 1:05d}")
        source = "{{ workload.seed }}" if i == 0 else "{{ " + prev + ".value }}"
        lines += [f"  - step: {name}", "    tool:", "      kind: python", "      input:",
                  f'        prev: "{source}"', "      code: |",
                  f"        result = {{'value': prev + 1, 'pad': 'x' * {pad}}}"]
        if i + 1 < n:
            lines.append(f"    next: s{i + 1:05d}")
    return "\n".join(lines) + "\n"


def execute(playbook, net: Net, workload=None, run_id: str | None = None):  # type: ignore[no-untyped-def]
    with deep_enough(playbook):
        job = build_job(playbook, net=net)
    config = {**workload_run_config(playbook, net, None, workload or {}),
              "loggers": {"console": {"config": {"log_level": "WARNING"}}}}
    with dg.DagsterInstance.ephemeral() as instance:
        with deep_enough(playbook):
            result = job.execute_in_process(run_config=config, instance=instance, raise_on_error=False,
                                            run_id=run_id)
    return result, build_report(net, result)


def test_chain_arcs_carry_the_previous_result_only():
    net = plan(pb(chain(30), "workload: {seed: 1}\n"))
    assert carry(net, "start", "s00001") == {"start"}
    assert carry(net, "s00010", "s00011") == {"s00010"}


def test_chain_token_size_stays_bounded_and_values_are_unchanged():
    playbook = pb(chain(120), "workload: {seed: 1}\n")
    result, report = execute(playbook, plan(playbook))
    assert report.status == "success"
    assert report.steps["s00119"].result["value"] == 121
    sizes = [len(json.dumps(result.output_for_node(f"s{i:05d}", f"to_s{i + 1:05d}"))) for i in (1, 60, 118)]
    assert max(sizes) - min(sizes) <= 4, sizes  # only the step numbers' digits may differ
    assert max(sizes) < 600, sizes  # the workload, one result (200 bytes of padding) and the stamps


def test_everything_is_carried_to_a_step_that_reads_the_whole_context():
    playbook = pb("""
  - {step: start, tool: {kind: noop, result: {v: 1}}, set: {flag: on}, next: a}
  - {step: a, tool: {kind: noop, result: {v: 2}}, next: b}
  - step: b
    tool: {kind: python, code: "result = sorted(k for k in context['variables'] if k in ('start', 'a', 'flag'))"}
    next: c
  - {step: c, tool: {kind: noop, result: "{{ ctx | tojson }}"}}
""")
    net = plan(playbook)
    assert carry(net, "start", "a") is None and carry(net, "a", "b") is None
    assert carry(net, "b", "c") is None  # `ctx | tojson` reads everything too
    _, report = execute(playbook, net)
    assert report.steps["b"].result == ["a", "flag", "start"]
    assert {"start", "a", "b", "flag"} <= set(json.loads(report.steps["c"].result))


def test_only_what_is_read_downstream_and_exists_upstream_is_carried():
    playbook = pb("""
  - {step: start, tool: {kind: noop, result: {v: 1}}, set: {total: "{{ output.v }}"}, next: [a, b]}
  - {step: a, tool: {kind: noop, result: {v: 2}}, next: j}
  - {step: b, tool: {kind: noop, result: {v: 3}}, next: j}
  - {step: j, tool: {kind: noop, result: "{{ a.v + b.v }}"}, next: k}
  - {step: k, when: "total > 0", tool: {kind: noop, result: "{{ start.v }}-{{ ctx.total }}-{{ j }}"}}
""")
    net = plan(playbook)
    assert carry(net, "start", "a") == {"start", "total", "b"}  # `b` is read by j (and absent here)
    assert carry(net, "j", "k") == {"j", "start", "total"}
    result, report = execute(playbook, net)
    token = result.output_for_node("a", "to_j")
    assert set(token["results"]) == {"start", "a"} and set(token["ctx"]) == {"total"}
    assert set(result.output_for_node("j", "to_k")["results"]) == {"start", "j"}
    assert report.steps["j"].result == 5
    assert report.steps["k"].result == "1-1-5"


def test_a_misspelt_name_keeps_its_close_matches_for_the_did_you_mean():
    playbook = pb("""
  - {step: start, tool: {kind: noop, result: {rows: [1]}}, next: fetch}
  - {step: fetch, tool: {kind: noop, result: {rows: [1, 2]}}, next: b}
  - {step: b, tool: {kind: noop}, next: c}
  - {step: c, tool: {kind: python, input: {rows: "{{ fecth.rows }}"}, code: "result = len(rows)"}}
""")
    net = plan(playbook)
    assert "fetch" in carry(net, "b", "c")
    _, report = execute(playbook, net)
    assert report.steps["c"].status == "error"
    assert "did you mean 'fetch'" in report.steps["c"].error


def test_duckdb_sql_naming_a_step_carries_that_result():
    net = plan(pb("""
  - {step: start, tool: {kind: noop, result: {v: 1}}, next: mid}
  - {step: mid, tool: {kind: noop}, next: q}
  - {step: q, tool: {kind: duckdb, query: "SELECT count(*) AS n FROM start"}}
"""))
    assert carry(net, "mid", "q") == {"mid", "start"}


def test_a_cycle_sees_its_values_and_its_exit_carries_what_follows_reads():
    playbook = pb("""
  - {step: start, tool: {kind: noop}, set: {page: 0}, next: fetch}
  - step: fetch
    tool: {kind: noop, result: {n: "{{ page + 1 }}"}}
    set: {page: "{{ output.n }}"}
    next: {spec: {mode: exclusive}, arcs: [{step: fetch, when: "{{ page < 3 }}"}, {step: done}]}
  - {step: done, tool: {kind: noop, result: "{{ page }}/{{ fetch.n }}"}}
""")
    net = plan(playbook)
    assert carry(net, "fetch", "done") == {"fetch", "page"}
    _, report = execute(playbook, net)
    assert report.steps["fetch"].runs == 3
    assert report.steps["done"].result == "3/3"


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_conformance_reports_equal_those_with_everything_carried(case: Path, items_server: str) -> None:
    playbook = load_playbook(case / "playbook.yaml")
    if has_products(playbook):
        pytest.skip("a product playbook runs as an asset job (compared by test_products)")
    expect = yaml.safe_load((case / "expect.yaml").read_text())
    workload = dict(expect.get("workload") or {})
    if "kind: http" in (case / "playbook.yaml").read_text():
        workload["base_url"] = items_server
    net = plan(playbook)
    run_id = "0c6f8a4e-3b1d-4d1e-9a53-5f2f0e8b7a11"  # the same execution_id in both runs
    _, trimmed = execute(playbook, net, workload, run_id)
    _, everything = execute(playbook, carry_all(net), workload, run_id)
    assert undated(trimmed.to_dict()) == undated(everything.to_dict())


def undated(value):  # type: ignore[no-untyped-def]
    """``value`` without the HTTP ``Date`` headers (the two runs may straddle a second)."""
    if isinstance(value, dict):
        return {k: undated(v) for k, v in value.items() if not (k.lower() == "date" and isinstance(v, str)
                                                               and v.endswith(" GMT"))}
    if isinstance(value, list):
        return [undated(v) for v in value]
    return value


@pytest.mark.slow
def test_a_10000_step_chain_compiles():
    playbook = pb(chain(10_000, pad=10), "workload: {seed: 1}\n")
    net = plan(playbook)
    assert carry(net, "s09998", "s09999") == {"s09998"}
    with deep_enough(playbook):  # Dagster walks the graph recursively (run_playbook and the loader do this)
        job = build_job(playbook, net=net)
    assert len(job.graph.node_defs) == 10_000
    upstream = job.graph.dependency_structure.all_upstream_outputs_from_node("s09999")
    assert [(o.node.name, o.output_def.name) for o in upstream] == [("s09998", "to_s09999")]


@pytest.mark.slow
def test_a_2000_step_chain_runs_with_tokens_of_constant_size():
    playbook = pb(chain(2_000), "workload: {seed: 1}\n")
    result, report = execute(playbook, plan(playbook))
    assert report.status == "success"
    assert report.steps["s01999"].result["value"] == 2_001
    sizes = {len(json.dumps(result.output_for_node(f"s{i:05d}", f"to_s{i + 1:05d}"))) for i in range(1, 1_999)}
    assert max(sizes) - min(sizes) <= 4 and max(sizes) < 600, sorted(sizes)
