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

import difflib
import keyword
import re
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from noetl_dagster.core.templates import is_template, template_reads
from noetl_dagster.playbook.graph import arcs_of, is_cycle, reachable, strongly_connected
from noetl_dagster.playbook.kinds import compile_code, reads_context
from noetl_dagster.playbook.models import Playbook, Step, strip_scope
from noetl_dagster.playbook.references import _strings, step_templates

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
    #: the step results and ``ctx`` values the arc's token carries (None: all of them); see
    #: :func:`carried_names`
    carry: frozenset[str] | None = None


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
    live = live_names(playbook, order, {n: c for n, _, c in raw_nodes}, outbound, node_of)
    for name in order:  # each arc carries what its target node (or a node after it) reads
        own = frozenset(by_name[name][1])  # the node's own results: the run report reads them there
        arcs = []
        for ap in outbound[name]:
            needed = live[node_of[ap.target]]
            arcs.append(replace(ap, carry=None if needed is None else needed | own))
        for old_ap, new_ap in zip(outbound[name], arcs):
            target = inbound[node_of[old_ap.target]]
            target[target.index(old_ap)] = new_ap
        outbound[name] = arcs
    nodes = [
        Node(name, by_name[name][0], tuple(by_name[name][1]), tuple(inbound[name]),  # type: ignore[arg-type]
             tuple(outbound[name]))
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


# --------------------------------------------------------------------------- carried names
#
# A token carries the workload, the ``arc`` values of its arc, and only those step results and
# ``ctx`` values that a step at or after its target reads (liveness over the DAG of nodes):
#
# * what a step reads: the root names of every template it renders (MiniJinja's undeclared
#   variables: tool config, ``when``/``loop``/``set``/``args``, policy rules, arcs, ``output:``,
#   templated python code, the cursor claim), and for ``duckdb``/``ducklake`` every word of its
#   config that names a step (an Arrow result is queried by its step name);
# * a step whose reads cannot be known statically reads *everything*, and every arc upstream of
#   it then carries everything, as NoETL gives it: python code using the ``context``/``variables``
#   globals (or loaded from ``script:``), a template reading ``ctx`` as a whole (``ctx | tojson``,
#   ``ctx[name]``, ``ctx.get(...)``) or one that does not parse;
# * a name stops being carried above the one node that can produce it (a step's result, or a
#   ``ctx`` key only that node's ``set:``/policy rules write): no value of it exists before;
# * a node's arcs always carry its own steps' results (the run report reads them from there);
# * a name that reads like a misspelt result (``fecth``) keeps its close matches, so the
#   ``did you mean`` of an undefined-variable error still finds them.


#: tool kinds whose SQL may name an earlier step's Arrow result as a table
_TABLE_KINDS = frozenset({"duckdb", "ducklake"})
_WORD = re.compile(r"[A-Za-z_]\w*")
_CONTEXT_GLOBALS = re.compile(r"\b(?:context|variables)\b")


def step_reads(step: Step) -> frozenset[str] | None:
    """The scope names ``step`` reads (see above), or None when it may read any of them."""
    names: set[str] = set()
    texts = list(step_templates(step))
    if step.loop is not None and step.loop.cursor is not None:
        texts.append(("loop.cursor.claim", step.loop.cursor.claim))
    for key, value in (step.model_extra or {}).items():
        texts.extend(_strings(value, str(key)))
    for task in step.tool:
        if task.kind == "python":
            code = task.config.get("code")
            if not isinstance(code, str) or _reads_context(code):
                return None  # a `script:` source, or NoETL's whole-context globals
            texts.append(("code", code))
        if task.kind in _TABLE_KINDS:
            names.update(word for _, text in _strings(task.config, "") for word in _WORD.findall(text))
    for field_name, text in texts:
        if field_name.endswith("when") and not is_template(text):
            text = "{{ " + text + " }}"  # a bare condition, as `condition()` renders it
        elif not is_template(text):
            continue
        reads = template_reads(text)
        if reads is None:
            return None
        names.update(reads)
    return frozenset(names)


def _reads_context(code: str) -> bool:
    """Does python ``code`` read the ``context``/``variables`` globals (the whole render scope)?
    Textually first; a mention in a comment or string is ruled out by compiling the code."""
    if not _CONTEXT_GLOBALS.search(code):
        return False
    if is_template(code):
        return True  # rendered first: what it becomes is not known here
    try:  # as the python tool compiles it
        compiled, _ = compile_code(code, "<plan>")
    except SyntaxError:
        return True
    return reads_context(compiled)


def _producers(playbook: Playbook) -> dict[str, set[str]]:
    """Which steps can put each name into the carried context (results and ``ctx`` keys)."""
    producers: dict[str, set[str]] = {}
    for step in playbook.workflow:
        producers.setdefault(step.step, set()).add(step.step)
        keys = set(step.set)
        for task in step.tool:
            for rule in task.rules:
                keys.update(strip_scope(str(k)) for k in rule.then.set)
        for key in keys:
            producers.setdefault(key, set()).add(step.step)
    return producers


def live_names(playbook: Playbook, order: list[str], members: dict[str, list[str]],
               outbound: dict[str, list[ArcPlan]], node_of: dict[str, str]) -> dict[str, frozenset[str] | None]:
    """For each node, the names read at or after it that may exist before it (None: all)."""
    producers = _producers(playbook)
    produced_in: dict[str, set[str]] = {}  # node -> names only it can produce
    for name, steps in producers.items():
        nodes = {node_of[s] for s in steps if s in node_of}
        if len(nodes) == 1:
            produced_in.setdefault(nodes.pop(), set()).add(name)
    known = None  # names a run can define at all, for the did-you-mean of a misspelt name
    live: dict[str, frozenset[str] | None] = {}
    for name in reversed(order):
        reads: set[str] = set()
        everything = False
        for member in members[name]:
            found = step_reads(playbook.steps[member])
            if found is None:
                everything = True
                break
            for word in found:
                if word in producers:
                    reads.add(word)
                else:
                    if known is None:
                        from noetl_dagster.playbook.references import known_names

                        known = known_names(playbook)
                    if word not in known:  # a misspelt name: keep what it was probably meant to be
                        reads.update(difflib.get_close_matches(word, list(producers), n=3, cutoff=0.75))
        for ap in outbound[name] if not everything else ():
            after = live[node_of[ap.target]]
            if after is None:
                everything = True
                break
            reads |= after
        live[name] = None if everything else frozenset(reads - produced_in.get(name, set()))
    return live
