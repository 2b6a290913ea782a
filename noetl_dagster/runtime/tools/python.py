"""``kind: python``: run the step's ``code`` in process, NoETL's contract.

The rendered ``input:`` (alias ``args``; else the step's legacy ``args``) becomes globals, and
also ``input_data``/``args`` dicts. The result is the global ``result``; else ``main(**args)``
is called (coroutines are awaited); a top-level ``return`` works too. ``code`` itself is not
rendered as a template: pass values through ``input:``.
"""

from __future__ import annotations

import asyncio
import builtins
import inspect
import textwrap
import traceback
from functools import lru_cache
from types import CodeType
from typing import Any

from .base import Tool, ToolContext, ToolError

_WRAPPER = "__noetl_body__"


@lru_cache(maxsize=1024)
def compile_code(source: str, filename: str) -> tuple[CodeType, bool]:
    """Compile step code; a body with a top-level ``return`` is wrapped in a function."""
    try:
        return compile(source, filename, "exec"), False
    except SyntaxError as exc:
        if "'return' outside function" not in str(exc):
            raise
    wrapped = f"def {_WRAPPER}():\n" + textwrap.indent(source, "    ") + "\n"
    return compile(wrapped, filename, "exec"), True


def _code_line(exc: BaseException, filename: str, wrapped: bool) -> int | None:
    line = None
    for frame, lineno in traceback.walk_tb(exc.__traceback__):
        if frame.f_code.co_filename == filename:
            line = lineno - (1 if wrapped else 0)
    return line


class PythonTool(Tool):
    kind = "python"

    def validate(self, config):  # type: ignore[no-untyped-def]
        code = config.get("code")
        if code is None:
            if "script" in config:
                return [("script", "external `script:` sources are not supported",
                         "inline the code under `code:`")]
            return [("code", "a python tool needs `code:`", "add `code: | result = ...`")]
        if not isinstance(code, str):
            return [("code", "`code` must be a string", None)]
        try:
            compile_code(code, "<check>")
        except SyntaxError as exc:
            return [("code", f"Python syntax error at code line {exc.lineno}: {exc.msg}", None)]
        return []

    def run(self, config: dict[str, Any], ctx: ToolContext) -> Any:
        raw_args = config.get("input", config.get("args"))
        if raw_args is None:
            raw_args = ctx.step_args
        args = ctx.render(raw_args) or {}
        if not isinstance(args, dict):
            raise ToolError("`input` must render to a mapping of name: value")
        args.update(ctx.iteration)
        filename = f"<step {ctx.step}>"
        code, wrapped = compile_code(config.get("code") or "", filename)
        env: dict[str, Any] = {"__builtins__": builtins, "__name__": "__noetl_step__"}
        env.update(args)
        env.update(input_data=dict(args), args=dict(args), execution_id=ctx.execution_id,
                   step=ctx.step)
        try:
            exec(code, env)  # noqa: S102 - running the playbook's own code is the tool's purpose
            if wrapped:
                return _finish(env[_WRAPPER]())
            if "result" in env:
                return env["result"]
            main = env.get("main")
            if callable(main):
                params = inspect.signature(main).parameters
                accepts_all = any(p.kind is p.VAR_KEYWORD for p in params.values())
                kwargs = args if accepts_all else {k: v for k, v in args.items() if k in params}
                return _finish(main(**kwargs))
            return None
        except Exception as exc:  # noqa: BLE001 - reported with its code line
            line = _code_line(exc, filename, wrapped)
            where = f" (code line {line})" if line else ""
            raise ToolError(f"{type(exc).__name__}: {exc}{where}") from exc


def _finish(value: Any) -> Any:
    if inspect.iscoroutine(value):
        return asyncio.run(value)
    return value

