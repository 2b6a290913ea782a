"""The arc graph of a playbook: reachability, strongly connected components, cycles.

Pure functions over a validated :class:`~noetl_dagster.playbook.models.Playbook` (steps are
nodes, ``next`` arcs are edges). The loader uses them for its checks (a cycle without a guarded
exit, a product step inside a cycle); the planner condenses the same components into regions.

Example::

    pb = load_playbook("pb.yaml")
    reachable(pb)                 # step names reachable from `start`, in YAML order
    unguarded_cycles(pb)          # [] when every cycle has an arc that can stop it
    cyclic_steps(pb)              # names of the steps that are part of a cycle
"""

from __future__ import annotations

from noetl_dagster.playbook.models import Arc, Playbook, Step


def arcs_of(step: Step) -> list[Arc]:
    """The step's outgoing arcs (none for a step without ``next``)."""
    return list(step.next.arcs) if step.next else []


def reachable(playbook: Playbook) -> list[str]:
    """Names of the steps reachable from ``start`` (following every arc), in YAML order."""
    steps = playbook.steps
    seen: set[str] = set()
    stack = ["start"] if "start" in steps else []
    while stack:
        name = stack.pop()
        if name in seen or name not in steps:
            continue
        seen.add(name)
        stack.extend(reversed([a.step for a in arcs_of(steps[name])]))
    return [s.step for s in playbook.workflow if s.step in seen]


def strongly_connected(playbook: Playbook, names: list[str]) -> list[list[str]]:
    """Tarjan's SCCs over ``names`` (iterative), each in YAML order."""
    steps = playbook.steps
    allowed = set(names)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    position = {n: i for i, n in enumerate(names)}
    for root in names:
        if root in index:
            continue
        work = [(root, iter([a.step for a in arcs_of(steps[root]) if a.step in allowed]))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter([a.step for a in arcs_of(steps[child]) if a.step in allowed])))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                out.append(sorted(component, key=position.__getitem__))
    return out


def is_cycle(playbook: Playbook, component: list[str]) -> bool:
    """Whether a strongly connected component loops (several steps, or one with an arc to itself)."""
    if len(component) > 1:
        return True
    only = component[0]
    return any(a.step == only for a in arcs_of(playbook.steps[only]))


def cyclic_steps(playbook: Playbook) -> set[str]:
    """Names of the steps that are part of a cycle of arcs."""
    names = [s.step for s in playbook.workflow]
    return {name for component in strongly_connected(playbook, names) if is_cycle(playbook, component)
            for name in component}


def unguarded_cycles(playbook: Playbook) -> list[list[str]]:
    """Cycles in which no arc can stop the looping (each would run forever)."""
    names = [s.step for s in playbook.workflow]
    bad = []
    for component in strongly_connected(playbook, names):
        if not is_cycle(playbook, component):
            continue
        members = set(component)
        guarded = False
        for name in component:
            step = playbook.steps[name]
            if step.when is not None:
                guarded = True
            mode = step.next.mode if step.next else "exclusive"
            arcs = arcs_of(step)
            for i, arc in enumerate(arcs):
                if arc.step not in members:
                    continue
                earlier_exit = any(a.when is not None for a in arcs[:i]) and mode == "exclusive"
                if arc.when is not None or earlier_exit:
                    guarded = True
        if not guarded:
            bad.append(component)
    return bad
