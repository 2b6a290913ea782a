"""The package's layers: a module imports only its own layer or lower ones (function-local
imports count), the runtime imports nothing of Dagster, and no modules import each other in a cycle.

Layers, lowest first: ``core/`` + ``errors`` + ``contract``; ``playbook/`` (the DSL);
``planner``; ``io/``; ``runtime/`` (interpreter and tool executors); the Dagster adapter
(``translator/``, ``resources/``, ``storage``); ``run``/``report``/``recovery``/``progress``;
the edges (``export/``, ``ai/``, ``components/``, ``cli``); the package root re-exports all.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "noetl_dagster"
LAYERS = [
    ("core", "errors", "contract"),
    ("playbook",),
    ("planner",),
    ("io",),
    ("runtime",),
    ("translator", "resources", "storage"),
    ("run", "report", "recovery", "progress"),
    ("export", "ai", "components", "cli"),
]
#: imports another change removes (the DSL loader asks the planner and the tool executors)
PENDING = {("noetl_dagster.playbook.loader", "noetl_dagster.planner"),
           ("noetl_dagster.playbook.loader", "noetl_dagster.runtime.tools"),
           ("noetl_dagster.playbook.loader", "noetl_dagster.runtime.tools.python_script")}


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ["noetl_dagster", *path.relative_to(PACKAGE).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Every module ``name`` imports anywhere in its file (package modules, and ``dagster*``)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        for target in targets:
            if target.split(".")[0] == "dagster" or target.startswith("dagster_"):
                out.add(target.split(".")[0])
            elif target.startswith("noetl_dagster"):
                while target not in modules and "." in target:
                    target = target.rsplit(".", 1)[0]
                if target != name:
                    out.add(target)
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _layer(module: str) -> int:
    if module == "noetl_dagster":
        return len(LAYERS)
    top = module.split(".")[1]
    return next(i for i, names in enumerate(LAYERS) if top in names)


def test_every_module_has_a_layer() -> None:
    for module in _graph():
        assert 0 <= _layer(module) <= len(LAYERS), module


def test_modules_import_only_their_layer_or_lower() -> None:
    graph = _graph()
    upward = sorted((module, target) for module, targets in graph.items() for target in targets
                    if target.startswith("noetl_dagster") and _layer(target) > _layer(module)
                    and (module, target) not in PENDING)
    assert upward == []


def test_the_runtime_imports_no_dagster_even_through_io() -> None:
    graph = _graph()
    runtime = [m for m in graph if m.startswith("noetl_dagster.runtime")]
    assert len(runtime) > 10
    seen: set[str] = set()
    todo = list(runtime)
    while todo:  # everything the runtime loads, transitively (minus the loader's pending edges)
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        todo += [t for t in graph.get(module, ()) if (module, t) not in PENDING]
    assert sorted(m for m in seen if m == "dagster" or m.startswith("dagster_")) == []
    assert sorted(m for m in seen if m.startswith("noetl_dagster.io")) == ["noetl_dagster.io.arrow_ref",
                                                                          "noetl_dagster.io.codec"]
    assert "noetl_dagster.run" not in seen and not any(m.startswith("noetl_dagster.translator") for m in seen)


def test_no_import_cycles() -> None:
    graph = {m: {t for t in targets if t.startswith("noetl_dagster")} for m, targets in _graph().items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(module: str) -> None:  # Tarjan's strongly connected components
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in graph.get(module, ()):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == module:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    assert cycles == []


def test_the_checker_sees_local_and_relative_imports(tmp_path: Path) -> None:
    """The graph counts imports inside functions and relative ones (what the checks rely on)."""
    modules = {"noetl_dagster.runtime.a": tmp_path / "a.py", "noetl_dagster.run": tmp_path / "run.py",
               "noetl_dagster.runtime": tmp_path / "__init__.py"}
    (tmp_path / "a.py").write_text("def f():\n    from noetl_dagster.run import run_playbook\n"
                                   "    import dagster_k8s.client\n    from . import b\n")
    assert _imports("noetl_dagster.runtime.a", tmp_path / "a.py", modules) == {
        "noetl_dagster.run", "dagster_k8s", "noetl_dagster.runtime"}
