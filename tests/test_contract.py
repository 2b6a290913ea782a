"""The names written into Dagster are read back through one module (noetl_dagster/contract.py)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from noetl_dagster.contract import StepKey, asset_graph_name, loop_items_of, parse_step_key

PACKAGE = Path(__file__).resolve().parent.parent / "noetl_dagster"


@pytest.mark.parametrize("key,want", [
    ("start", StepKey("start", "start", "start", "", "")),
    ("price[i00003]", StepKey("price", "price", "price", "i00003", "")),
    ("price__fan_out", StepKey("price", "price__fan_out", "price__fan_out", "", "")),
    ("price__collect", StepKey("price", "price__collect", "price__collect", "", "")),
    ("risk__x__playbook.score", StepKey("score", "risk__x__playbook.score", "score", "", "risk__x__playbook")),
    ("risk__x__playbook.price[i00000_i00007]",
     StepKey("price", "risk__x__playbook.price", "price", "i00000_i00007", "risk__x__playbook")),
    ("", StepKey("", "", "", "", "")),
])
def test_parse_step_key(key: str, want: StepKey) -> None:
    assert parse_step_key(key) == want


def test_loop_items_and_graph_names() -> None:
    assert [loop_items_of(k) for k in ("p[i00003]", "p[i00000_i00007]", "g.p[i00010_i00011]", "p")] == [1, 8, 2, 1]
    assert asset_graph_name("risk__score") == "risk__score__playbook"


def test_no_module_spells_the_generated_op_suffixes_itself() -> None:
    """`__fan_out`/`__collect`/`__playbook` as string literals live only in the contract."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "contract.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in (
                    "__fan_out", "__collect", "__playbook", "noetl/steps", "noetl/step", "noetl/loop_step"):
                offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno}: {node.value!r}")
    assert not offenders, offenders


def test_package_face() -> None:
    """`py.typed`, `__version__`, and every name in the root `__all__` resolves (lazily)."""
    from importlib.metadata import version

    import noetl_dagster

    assert (PACKAGE / "py.typed").is_file()
    assert noetl_dagster.__version__ == version("noetl-dagster")
    from dagster_shared.libraries import DagsterLibraryRegistry

    import noetl_dagster.translator.translator  # noqa: F401 - the Dagster adapter registers the library

    assert DagsterLibraryRegistry.get()["noetl-dagster"] == noetl_dagster.__version__
    missing = [n for n in noetl_dagster.__all__ if getattr(noetl_dagster, n, None) is None]
    assert not missing
    assert {"ArrowRefIOManager", "PlaybookComponent", "ClickHouseResource", "export_definitions",
            "retention_definitions", "default_resources", "ErrorResult"} <= set(noetl_dagster.__all__)
