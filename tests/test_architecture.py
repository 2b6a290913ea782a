"""The layers hold: imports (read with `ast`, function-local ones included) only go down.

Lowest first: the core (errors, contract, secrets, templates, binding, limits) -> the DSL
(`playbook/`) -> the planner -> IO -> the runtime (interpreter and tool executors) -> the Dagster
adapter (`translator/`, `resources/`, `storage`) -> running a playbook (`run`, `report`,
`recovery`, `progress`) -> the edges (`export/`, `ai/`, `components/`, the CLI, the package root).
A module imports its own layer or lower ones; the core, the DSL, the planner and the runtime import
nothing of Dagster; the export and the AI never reach the runtime, even through another module;
there is no import cycle; Dagster's private modules are imported by `compat` alone.
"""

from __future__ import annotations

import ast
import sys
from functools import cache
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "noetl_dagster"
ROOT = "noetl_dagster"

#: layers, lowest first: module-name prefixes (a prefix matches itself and its submodules)
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("core", ("noetl_dagster.errors", "noetl_dagster.contract", "noetl_dagster.core")),
    ("dsl", ("noetl_dagster.playbook",)),
    ("plan", ("noetl_dagster.planner",)),
    ("io", ("noetl_dagster.io",)),
    ("runtime", ("noetl_dagster.runtime",)),
    ("adapter", ("noetl_dagster.compat", "noetl_dagster.translator", "noetl_dagster.resources", "noetl_dagster.storage")),
    ("run", ("noetl_dagster.run", "noetl_dagster.report", "noetl_dagster.recovery", "noetl_dagster.progress")),
    ("edges", ("noetl_dagster.export", "noetl_dagster.ai", "noetl_dagster.components", "noetl_dagster.cli")),
]
#: layers that import nothing of Dagster
DAGSTER_FREE = ("core", "dsl", "plan", "runtime")
#: Dagster-free modules of a layer that otherwise uses Dagster (the runtime may use these)
DAGSTER_FREE_MODULES = ("noetl_dagster.io.arrow_ref", "noetl_dagster.io.codec")
#: the one module allowed to import `dagster._...`
COMPAT = "noetl_dagster.compat"


def _module_name(path: Path, package: Path) -> str:
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def read_imports(package: Path) -> dict[str, dict[str, set[str]]]:
    """module -> {"own": our modules it imports, "external": other modules it imports}."""
    found = {_module_name(p, package): p for p in package.rglob("*.py")}

    def resolve(name: str) -> str:  # the longest prefix that is one of our modules (a.b.func -> a.b)
        while name not in found and "." in name:
            name = name.rsplit(".", 1)[0]
        return name

    out: dict[str, dict[str, set[str]]] = {}
    for name, path in found.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        own: set[str] = set()
        external: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in found else module for a in node.names]
            for target in targets:
                if target == ROOT or target.startswith(ROOT + "."):
                    resolved = resolve(target)
                    if resolved != name:
                        own.add(resolved)
                else:
                    external.add(target)
        out[name] = {"own": own, "external": external}
    return out


@cache
def imports() -> dict[str, dict[str, set[str]]]:
    return read_imports(PACKAGE)


def modules() -> list[str]:
    return sorted(imports())


def layer_of(module: str) -> int:
    if module == ROOT:
        return len(LAYERS) - 1  # the package face re-exports every layer
    for index, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return index
    raise AssertionError(f"{module} belongs to no layer: add it to LAYERS in {__file__}")


def test_every_module_has_a_layer() -> None:
    for module in modules():
        layer_of(module)


def upward_imports(graph: dict[str, dict[str, set[str]]]) -> list[str]:
    return sorted(f"{m} ({LAYERS[layer_of(m)][0]}) imports {d} ({LAYERS[layer_of(d)][0]})"
                  for m, found in graph.items() for d in found["own"] if layer_of(d) > layer_of(m))


def test_imports_only_go_down() -> None:
    upward = upward_imports(imports())
    assert not upward, "\n".join(upward)


def _is_dagster(name: str) -> bool:
    return name == "dagster" or name.startswith(("dagster.", "dagster_"))


def test_the_lower_layers_import_nothing_of_dagster() -> None:
    found = sorted(f"{m} imports {e}" for m, f in imports().items()
                   if LAYERS[layer_of(m)][0] in DAGSTER_FREE or m in DAGSTER_FREE_MODULES
                   for e in f["external"] if _is_dagster(e))
    assert not found, "\n".join(found)


def test_the_runtime_uses_only_dagster_free_io() -> None:
    io = LAYERS[[n for n, _ in LAYERS].index("io")][1]
    found = sorted(f"{m} imports {d}" for m, f in imports().items() if m.startswith("noetl_dagster.runtime")
                   for d in f["own"] if d.startswith(io) and d not in DAGSTER_FREE_MODULES)
    assert not found, "\n".join(found)


def reach(module: str) -> set[str]:
    seen: set[str] = set()
    todo = [module]
    while todo:
        for dep in imports()[todo.pop()]["own"]:
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


def test_nothing_the_dsl_and_runtime_load_imports_dagster() -> None:
    """Transitively: what `validate` and a standalone runtime load is Dagster-free."""
    for prefix in ("noetl_dagster.playbook", "noetl_dagster.runtime"):
        for module in [m for m in modules() if m.startswith(prefix)]:
            loaded = reach(module) | {module}
            dagster = sorted(f"{m} imports {e}" for m in loaded for e in imports()[m]["external"] if _is_dagster(e))
            assert not dagster, f"{module} loads:\n" + "\n".join(dagster)
            above = sorted(m for m in loaded if layer_of(m) > layer_of("noetl_dagster.runtime"))
            assert not above, f"{module} loads {above}"


@pytest.mark.parametrize("edge", ["noetl_dagster.export", "noetl_dagster.ai"])
def test_export_and_ai_never_reach_the_runtime(edge: str) -> None:
    found = sorted(f"{m} reaches {sorted(d for d in reach(m) if d.startswith('noetl_dagster.runtime'))}"
                   for m in imports() if m == edge or m.startswith(edge + ".")
                   if any(d.startswith("noetl_dagster.runtime") for d in reach(m)))
    assert not found, "\n".join(found)


def strongly_connected(graph: dict[str, dict[str, set[str]]]) -> list[list[str]]:
    """Tarjan's components of the import graph with more than one module (the cycles)."""
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]["own"]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return found


def test_no_import_cycles() -> None:
    cycles = strongly_connected(imports())
    assert not cycles, "\n".join(" <-> ".join(c) for c in cycles)


def test_private_dagster_modules_only_in_compat() -> None:
    found = sorted(f"{m} imports {e}" for m, f in imports().items() if m != COMPAT
                   for e in f["external"] if e.startswith("dagster._") or ("._" in e and _is_dagster(e)))
    assert not found, "\n".join(found)


def test_the_checks_see_violations(tmp_path: Path) -> None:
    """On a package built to break the rules, every check finds its violation (they can fail)."""
    package = tmp_path / ROOT
    files = {
        "__init__.py": "",
        "runtime/__init__.py": "",
        "runtime/step.py": "def run():\n    from noetl_dagster.translator import emit\n    import dagster_k8s\n",
        "translator/__init__.py": "",
        "translator/emit.py": "from ..runtime.step import run\nfrom dagster._core import events\n",
    }
    for name, text in files.items():
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_text(text)
    graph = read_imports(package)
    assert graph["noetl_dagster.runtime.step"] == {"own": {"noetl_dagster.translator.emit"}, "external": {"dagster_k8s"}}
    assert graph["noetl_dagster.translator.emit"]["own"] == {"noetl_dagster.runtime.step"}
    assert upward_imports(graph) == ["noetl_dagster.runtime.step (runtime) imports noetl_dagster.translator.emit (adapter)"]
    assert strongly_connected(graph) == [["noetl_dagster.runtime.step", "noetl_dagster.translator.emit"]]
    assert "dagster._core" in graph["noetl_dagster.translator.emit"]["external"]
    assert _is_dagster("dagster_k8s") and _is_dagster("dagster") and not _is_dagster("dagsterish")
