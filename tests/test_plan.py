"""The pure plan: joins, loops, regions (SCC condensation), unreachable steps, names."""

from __future__ import annotations

import pytest

from noetl_dagster.errors import PlaybookError
from noetl_dagster.playbook.loader import parse_text
from noetl_dagster.planner import op_safe, plan
from noetl_dagster.playbook.graph import unguarded_cycles

HEAD = "apiVersion: noetl.io/v2\nkind: Playbook\nmetadata: {name: p, path: dom/p}\nworkflow:\n"


def pb(body: str):
    return parse_text(HEAD + body, "p.yaml")


def test_join_has_all_inbound_arcs_and_dag_order():
    net = plan(pb("""
  - {step: start, tool: {kind: noop}, next: [a, b]}
  - {step: a, tool: {kind: noop}, next: j}
  - {step: b, tool: {kind: noop}, next: j}
  - {step: j, tool: {kind: noop}}
  - {step: orphan, tool: {kind: noop}}
"""))
    names = [n.name for n in net.nodes]
    assert names.index("j") > names.index("a") and names.index("j") > names.index("b")
    join = net.node("j")
    assert [a.source for a in join.inbound] == ["a", "b"]
    assert net.unreachable == ["orphan"]
    assert [a.output for a in net.node("start").outbound] == ["to_a", "to_b"]


def test_cycle_condenses_into_one_region_named_by_entry():
    net = plan(pb("""
  - {step: start, tool: {kind: noop}, next: fetch}
  - step: fetch
    tool: {kind: noop}
    next: {arcs: [{step: parse, when: "{{ true }}"}]}
  - step: parse
    tool: {kind: noop}
    next: {arcs: [{step: fetch, when: "{{ false }}"}, {step: done}]}
  - {step: done, tool: {kind: noop}}
"""))
    kinds = {n.name: (n.kind, n.steps) for n in net.nodes}
    assert kinds["fetch"] == ("region", ("fetch", "parse"))
    assert net.node_of_step["parse"] == "fetch"
    region = net.node("fetch")
    assert [(a.source, a.target) for a in region.outbound] == [("parse", "done")]


def test_parallel_loop_is_a_loop_node_sequential_is_a_step():
    net = plan(pb("""
  - {step: start, tool: {kind: noop}, next: par}
  - step: par
    loop: {in: "{{ [1] }}", iterator: x, spec: {mode: parallel}}
    tool: {kind: noop}
    next: seq
  - step: seq
    loop: {in: "{{ [1] }}", iterator: x}
    tool: {kind: noop}
"""))
    assert net.node("par").kind == "loop"
    assert net.node("seq").kind == "step"


def test_unguarded_cycle_detected_and_guarded_by_earlier_exclusive_exit():
    with pytest.raises(PlaybookError, match=r"cycle a -> b -> a has no guarded exit"):
        pb("""
  - {step: start, tool: {kind: noop}, next: a}
  - {step: a, tool: {kind: noop}, next: b}
  - {step: b, tool: {kind: noop}, next: a}
""")
    good = pb("""
  - {step: start, tool: {kind: noop}, next: a}
  - step: a
    tool: {kind: noop}
    next: {arcs: [{step: end, when: "{{ done }}"}, {step: a}]}
  - {step: end, tool: {kind: noop}}
""")
    assert unguarded_cycles(good) == []


def test_op_safe_names():
    assert op_safe("risk/score_application") == "risk__score_application"
    assert op_safe("load-data") == "load_data"
    assert op_safe("input") == "input_step"
    assert op_safe("1st") == "s_1st"
