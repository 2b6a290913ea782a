"""The net: a pure, Dagster-free plan of a playbook.

Steps are transitions and ``next`` arcs are token flows. Every strongly connected component
of the arc graph (workflow back-edges such as pagination) is condensed into one *region*, so
what reaches Dagster is a DAG of :class:`Node` s:

* ``step``: one op running one step;
* ``loop``: a step with ``loop: {spec: {mode: parallel}}``: fan-out -> mapped step -> collect;
  sequential loops are plain ``step`` nodes that iterate in order;
* ``region``: one op that interprets a cycle's steps with an iteration bound.

A node with several inbound arcs is a join: it runs once, after every live upstream finished.

Example::

    net = plan(load_playbook("pb.yaml"))
    [n.name for n in net.nodes]      # topological order
"""

from __future__ import annotations

import keyword
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from noetl_dagster.contract import arc_output_name
from noetl_dagster.playbook.graph import arcs_of, is_cycle, reachable, strongly_connected
from noetl_dagster.playbook.models import Playbook

_INVALID = re.compile(r"[^A-Za-z0-9_]")


#: names Dagster reserves (python keywords and a few of its own); a step so named gets ``_step``
_RESERVED = frozenset(keyword.kwlist) | {"arg_dict", "bool", "conf", "config", "context", "dict", "float",
                                          "input", "input_arg_dict", "int", "meta", "output",
                                          "output_arg_dict", "str", "type"}


def op_safe(name: str) -> str:
    """A Dagster-safe name: ``risk/score-app`` -> ``risk__score_app``, ``input`` -> ``input_step``."""
    safe = _INVALID.sub("_", name.replace("/", "__")).strip("_") or "step"
    if safe[0].isdigit():
        safe = "s_" + safe
    return f"{safe}_step" if safe in _RESERVED else safe


@dataclass(frozen=True)
class ArcPlan:
    """An arc between two nodes; ``output`` is the producing op's output name."""

    source: str
    index: int
    target: str
    when: str | None
    set: dict[str, Any]
    output: str = ""


@dataclass(frozen=True)
class Node:
    name: str
    kind: Literal["step", "loop", "region"]
    steps: tuple[str, ...]
    inbound: tuple[ArcPlan, ...] = ()
    outbound: tuple[ArcPlan, ...] = ()

    @property
    def is_entry(self) -> bool:
        return "start" in self.steps


@dataclass
class Net:
    playbook: Playbook
    nodes: list[Node]
    node_of_step: dict[str, str]
    unreachable: list[str] = field(default_factory=list)

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)


def plan(playbook: Playbook) -> Net:
    """Condense the playbook's arc graph into a DAG of op nodes (pure)."""
    steps = playbook.steps
    components = strongly_connected(playbook, reachable(playbook))
    node_of: dict[str, str] = {}
    taken: set[str] = set()
    raw_nodes: list[tuple[str, str, list[str]]] = []
    yaml_pos = {s.step: i for i, s in enumerate(playbook.workflow)}
    for component in sorted(components, key=lambda c: yaml_pos[c[0]]):
        if is_cycle(playbook, component):
            kind = "region"
            entry = _region_entry(playbook, component)
            name = _unique(op_safe(entry), taken)
        else:
            step = steps[component[0]]
            kind = "loop" if step.loop is not None and step.loop.mode == "parallel" else "step"
            name = _unique(op_safe(step.step), taken)
        for member in component:
            node_of[member] = name
        raw_nodes.append((name, kind, component))

    outbound: dict[str, list[ArcPlan]] = {name: [] for name, _, _ in raw_nodes}
    inbound: dict[str, list[ArcPlan]] = {name: [] for name, _, _ in raw_nodes}
    for name, _, component in raw_nodes:
        used: set[str] = set()
        for member in component:
            for i, arc in enumerate(arcs_of(steps[member])):
                target_node = node_of[arc.step]
                if target_node == name:
                    continue
                output = _unique("to_" + op_safe(arc.step), used)
                ap = ArcPlan(member, i, arc.step, arc.when, dict(arc.set), output)
                outbound[name].append(ap)
                inbound[target_node].append(ap)

    order = _topological([n for n, _, _ in raw_nodes], inbound, node_of)
    by_name = {n: (k, c) for n, k, c in raw_nodes}
    nodes = [
        Node(name, by_name[name][0], tuple(by_name[name][1]), tuple(inbound[name]), tuple(outbound[name]))
        for name in order
    ]
    unreachable = [s.step for s in playbook.workflow if s.step not in node_of]
    return Net(playbook, nodes, node_of, unreachable)


def _region_entry(playbook: Playbook, component: list[str]) -> str:
    if "start" in component:
        return "start"
    members = set(component)
    for step in playbook.workflow:
        for arc in arcs_of(step):
            if step.step not in members and arc.step in members:
                return arc.step
    return component[0]


def _unique(name: str, taken: set[str]) -> str:
    candidate, n = name, 2
    while candidate in taken:
        candidate = f"{name}_{n}"
        n += 1
    taken.add(candidate)
    return candidate


def _topological(names: list[str], inbound: dict[str, list[ArcPlan]], node_of: dict[str, str]) -> list[str]:
    deps = {n: {node_of[a.source] for a in inbound[n]} for n in names}
    done: list[str] = []
    placed: set[str] = set()
    while len(done) < len(names):
        progressed = False
        for name in names:
            if name not in placed and deps[name] <= placed:
                done.append(name)
                placed.add(name)
                progressed = True
        if not progressed:  # pragma: no cover - SCC condensation leaves no cycles
            raise RuntimeError("cycle left after condensation")
    return done
