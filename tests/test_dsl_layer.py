"""The DSL layer (``core/``, ``playbook/``) checks playbooks without the runtime, the planner or Dagster."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from noetl_dagster.cli import main
from noetl_dagster.errors import PlaybookError
from noetl_dagster.playbook import kinds
from noetl_dagster.playbook.kinds import RUN_KINDS, Problem, check_tool_config, supported_kinds
from noetl_dagster.playbook.loader import parse_text

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "noetl_dagster"
PLAYBOOK = ROOT / "playbooks" / "payments" / "settle_merchants.yaml"
#: what the DSL layer may import of this package
DSL_MAY_IMPORT = ("noetl_dagster.core", "noetl_dagster.playbook", "noetl_dagster.errors", "noetl_dagster.contract")
HEAD = "apiVersion: noetl.io/v2\nkind: Playbook\nmetadata: {name: p, path: dom/p}\nworkflow:\n"


def _imports(path: Path) -> list[str]:
    """Every module ``path`` imports, function-local imports included."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return names


def _is_dagster(name: str) -> bool:
    return name == "dagster" or name.startswith(("dagster.", "dagster_"))


@pytest.mark.parametrize("path", sorted([*PACKAGE.glob("core/*.py"), *PACKAGE.glob("playbook/*.py")]),
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_dsl_modules_import_nothing_of_the_runtime_the_planner_or_dagster(path: Path) -> None:
    bad = [n for n in _imports(path) if _is_dagster(n)
           or (n.startswith("noetl_dagster") and not n.startswith(DSL_MAY_IMPORT))]
    assert bad == []


@pytest.mark.parametrize("target", [PLAYBOOK, ROOT / "playbooks"], ids=["file", "folder"])
def test_validate_imports_no_dagster_module(target: Path) -> None:
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "noetl_dagster.cli", "validate", str(target)],
                          cwd=ROOT, capture_output=True, text=True, env={"PYTHONPATH": str(ROOT), "PATH": ""})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert re.match(r"\d+ playbook\(s\) valid", proc.stdout)
    imported = [line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")]
    assert "noetl_dagster.playbook.loader" in imported and "noetl_dagster.playbook.kinds" in imported
    assert [name for name in imported if _is_dagster(name)] == []
    assert [name for name in imported if name.startswith(("noetl_dagster.runtime", "noetl_dagster.planner"))] == []


def test_the_other_subcommands_are_still_there(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    assert "{validate,run,export,search,tune,cancel}" in capsys.readouterr().out


def test_every_kind_the_dsl_accepts_has_an_executor_and_back() -> None:
    from noetl_dagster.runtime.tools import base

    assert set(base._REGISTRY) == set(RUN_KINDS)
    assert base.supported_kinds() == supported_kinds() == sorted({*RUN_KINDS, "workbook"})
    assert RUN_KINDS < kinds.NOETL_KINDS


def test_problems_name_field_message_and_hint() -> None:
    assert check_tool_config("shell", {}) == [Problem("command", "a shell tool needs `command:`",
                                                      "add `command: echo hello`")]
    assert check_tool_config("shell", {}) == [("command", "a shell tool needs `command:`", "add `command: echo hello`")]
    assert check_tool_config("python", {"code": "return 1"}) == []  # a top-level return is allowed
    assert check_tool_config("python", {"code": "x ="})[0].message.startswith("Python syntax error at code line 1")
    assert check_tool_config("noop", {"anything": 1}) == []


@pytest.fixture
def registries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Custom tools registered by a test leave no trace in the DSL's or the runtime's registry."""
    from noetl_dagster.runtime.tools import base

    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))
    monkeypatch.setattr(kinds, "_registered_kinds", set(kinds._registered_kinds))
    monkeypatch.setattr(kinds, "_registered_checks", dict(kinds._registered_checks))


def test_a_custom_tools_validate_is_checked_at_load_time(registries: None) -> None:
    from noetl_dagster.runtime.tools import Tool, register_tool

    class EchoTool(Tool):
        kind = "echo"

        def validate(self, config):  # type: ignore[no-untyped-def]
            return [] if "text" in config else [("text", "an echo tool needs `text:`", "text: hello")]

        def run(self, config, ctx):  # type: ignore[no-untyped-def]
            return {"said": ctx.render(config["text"])}

    class AnyTool(Tool):  # no validate: any config
        kind = "anything"

    with pytest.raises(PlaybookError) as bad:
        parse_text(HEAD + "  - step: start\n    tool: {kind: echo}\n", "pb.yaml")
    assert [i.message for i in bad.value.issues] == ["unknown tool kind 'echo'"]
    register_tool(EchoTool())
    register_tool(AnyTool())
    assert {"echo", "anything"} <= set(supported_kinds())
    with pytest.raises(PlaybookError) as bad:
        parse_text(HEAD + "  - step: start\n    tool: {kind: echo, say: hi}\n", "pb.yaml")
    (issue,) = bad.value.issues
    assert (issue.line, issue.field, issue.message, issue.hint) == (6, "tool.text", "an echo tool needs `text:`",
                                                                    "text: hello")
    assert parse_text(HEAD + "  - step: start\n    tool: {kind: echo, text: hi}\n").workflow[0].tool[0].kind == "echo"
    assert parse_text(HEAD + "  - step: start\n    tool: {kind: anything, x: 1}\n").workflow[0].tool[0].kind == "anything"


def test_a_tool_replacing_a_builtin_kind_without_validate_keeps_the_builtin_checks(registries: None) -> None:
    from noetl_dagster.runtime.tools import Tool, register_tool

    class LoudShell(Tool):
        kind = "shell"

    register_tool(LoudShell())
    assert check_tool_config("shell", {})[0].field == "command"


def test_kinds_noetl_knows_but_this_package_does_not_run_keep_their_error() -> None:
    with pytest.raises(PlaybookError) as bad:
        parse_text(HEAD + "  - step: start\n    tool: {kind: rhai, code: x}\n", "pb.yaml")
    (issue,) = bad.value.issues
    assert issue.message == "tool kind 'rhai' is a NoETL kind that noetl_dagster does not run"
    assert issue.hint == "supported kinds: " + ", ".join(supported_kinds())


def test_product_checks_without_the_planner() -> None:
    text = HEAD + ("  - step: start\n    tool: {kind: noop}\n    next: [{step: loop}]\n"
                   "  - step: loop\n    tool: {kind: noop}\n    product: {name: orders}\n"
                   "    next: [{step: loop, when: \"{{ ctx.more }}\"}, {step: end}]\n"
                   "  - step: end\n    tool: {kind: noop}\n"
                   "  - step: orphan\n    tool: {kind: noop}\n    product: {name: lost}\n")
    with pytest.raises(PlaybookError) as bad:
        parse_text(text, "pb.yaml")
    assert sorted((i.step, i.message) for i in bad.value.issues) == [
        ("loop", "a product step cannot be part of a cycle"),
        ("orphan", "this product step is never reached from `start`")]
