"""``kind: python``: run the step's ``code`` in process, NoETL's contract.

The rendered ``input:`` (alias ``args``; else the step's legacy ``args``) becomes globals, and
also ``input_data``/``args`` dicts; NoETL's wrapper globals ``context`` (``{args, variables,
execution_id, step}``), ``variables`` (the step's render context), ``execution_id`` and ``step``
are defined too. The result is the global ``result``; else ``main(**args)`` is called
(coroutines are awaited); a top-level ``return`` works too.

``code`` is rendered as a template when it holds ``{{``/``{%`` markers, as NoETL renders every
string of a tool: a rendered value becomes *Python source*, so pass values through ``input:``
(they arrive as Python objects, never as code).

An exception in the code is NoETL's *error result* (a non-zero exit): the step completes with
status ``error`` and result ``{stdout, stderr}`` (``stderr`` holds the traceback of the step's
code). What the code prints goes to the step's log (never to the process's stdout).
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import inspect
import io
import json
import traceback
from functools import lru_cache
from types import CodeType
from typing import Any, Mapping

from noetl_dagster.core.templates import thaw
from noetl_dagster.playbook.kinds import WRAPPED_BODY, compile_code, reads_context
from noetl_dagster.runtime.tools.base import ErrorResult, Tool, ToolContext, ToolError
from noetl_dagster.core.secrets import redact

def _code_line(exc: BaseException, filename: str, wrapped: bool) -> int | None:
    line = None
    for frame, lineno in traceback.walk_tb(exc.__traceback__):
        if frame.f_code.co_filename == filename:
            line = lineno - (1 if wrapped else 0)
    return line


class PythonTool(Tool):
    kind = "python"

    def run(self, config: dict[str, Any], ctx: ToolContext) -> Any:
        raw_args = config.get("input", config.get("args"))
        if raw_args is None:
            raw_args = ctx.step_args
        args = ctx.render(raw_args) or {}
        if not isinstance(args, dict):
            raise ToolError("`input` must render to a mapping of name: value")
        args.update(ctx.iteration)
        source = config.get("code") or ""
        if ("{{" in source or "{%" in source) and not config.get("_script_loaded"):  # a script: source is final
            source = str(ctx.render(source))
        filename = f"<step {ctx.step}>"
        try:
            code, wrapped = compile_code(source, filename)
        except SyntaxError as exc:
            raise ToolError(f"Python syntax error at code line {exc.lineno}: {exc.msg}") from None
        env: dict[str, Any] = {"__builtins__": builtins, "__name__": "__noetl_step__"}
        env.update(args)
        env.update(input_data=dict(args), args=dict(args), execution_id=ctx.execution_id,
                   step=ctx.step)
        if _wants_context(code):
            variables = _plain_variables(ctx.scope)
            env.update(variables=variables, context={"args": dict(args), "variables": variables,
                                                     "execution_id": ctx.execution_id, "step": ctx.step})
        out, err = _BoundedText(), _BoundedText()
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                return self._call(code, wrapped, env, args)
        except Exception as exc:  # noqa: BLE001 - NoETL's error result, with the code line
            line = _code_line(exc, filename, wrapped)
            where = f" (code line {line})" if line else ""
            trace = "".join(traceback.format_exception(exc)[-1:])
            frames = [f'  File "{filename}", line {n - (1 if wrapped else 0)}\n'
                      for frame, n in traceback.walk_tb(exc.__traceback__) if frame.f_code.co_filename == filename]
            err.write("Traceback (most recent call last):\n" + "".join(frames) + trace)
            stdout = out.getvalue()
            data: Any = {"stdout": stdout, "stderr": err.getvalue()}
            if stdout.strip():  # NoETL reads a failed script's stdout as its data when it is JSON
                with contextlib.suppress(ValueError):
                    data = json.loads(stdout)
            return ErrorResult(data, f"{type(exc).__name__}: {exc}{where}")
        finally:
            for name, text in (("stdout", out.getvalue()), ("stderr", err.getvalue())):
                if text.strip():
                    ctx.log.info(redact(f"step {ctx.step} python {name}:\n{text.rstrip()}"))

    @staticmethod
    def _call(code: CodeType, wrapped: bool, env: dict[str, Any], args: dict[str, Any]) -> Any:
        exec(code, env)  # noqa: S102 - running the playbook's own code is the tool's purpose
        if wrapped:
            return _finish(env[WRAPPED_BODY]())
        if "result" in env:
            return env["result"]
        main = env.get("main")
        if callable(main):
            params = inspect.signature(main).parameters
            accepts_all = any(p.kind is p.VAR_KEYWORD for p in params.values())
            kwargs = args if accepts_all else {k: v for k, v in args.items() if k in params}
            return _finish(main(**kwargs))
        return None


#: what a step's python code may print before the rest is cut (its log and error result)
MAX_CAPTURED_TEXT = 1 << 20


class _BoundedText(io.StringIO):
    """A print buffer that keeps the first :data:`MAX_CAPTURED_TEXT` characters."""

    def write(self, text: str) -> int:
        room = MAX_CAPTURED_TEXT - self.tell()
        if room > 0:
            super().write(text[:room])
        return len(text)


def _plain_variables(scope: Mapping[str, Any]) -> dict[str, Any]:
    """NoETL's ``variables``: the step's render context as plain data (the keychain, which is
    never handed over whole, and functions such as ``product`` are left out)."""
    plain: dict[str, Any] = {}
    for name, value in scope.items():
        if callable(value) or name == "keychain":
            continue
        try:
            plain[name] = thaw(value)
        except Exception:  # noqa: BLE001 - a value that refuses to be copied stays out
            continue
    return plain


@lru_cache(maxsize=1024)
def _wants_context(code: CodeType) -> bool:
    """Does the code read NoETL's ``variables``/``context`` globals (built only when it does)?"""
    return reads_context(code)


def _finish(value: Any) -> Any:
    if inspect.iscoroutine(value):
        return asyncio.run(value)
    return value

