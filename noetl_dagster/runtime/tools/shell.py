"""``kind: shell``: run a command with a shell, NoETL's contract.

Config (rendered as templates)::

    tool:
      kind: shell
      command: "wc -l {{ workload.file }}"   # or a list of commands, run in order (set -e)
      shell: sh              # default sh (POSIX); bash, zsh... if installed
      cwd: /data             # working directory (default: the process's)
      env: {LANG: C}         # added to the inherited environment (null drops a variable)
      timeout_seconds: 60    # the whole process group is killed when it runs longer
      check: true            # false: a non-zero exit is a success result (status success)
      capture: true          # false: output goes to this process's stdout/stderr

**Templates in** ``command`` never become shell syntax: each ``{{ }}`` value is passed as a
positional parameter (``sh -c 'echo "${1}"' noetl-shell <value>``) and referenced where the
template stood, whatever quotes surround it (see :mod:`noetl_dagster.core.binding`).
``{{ x | raw_shell }}`` inserts a trusted value as syntax (``validate`` lists each use).
``env:`` values are environment variables, never syntax either.

Result ``{stdout, stderr, exit_code}`` (text, decoded as UTF-8). A non-zero exit is NoETL's
*error result*: the step completes with status ``error`` and that result (route on
``output.exit_code``), its message naming the exit code and the tail of stderr (of stdout when
stderr is empty); with ``check: false`` it is a plain success. A timeout fails the step naming
the limit. The command runs as ``<shell> -c <command>`` in a new process group.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from typing import Any, Mapping

from noetl_dagster.core.secrets import secret_safe
from noetl_dagster.runtime.tools.base import ErrorResult, Tool, ToolContext, ToolError
from noetl_dagster.core import secrets as creds
from noetl_dagster.core.binding import render_shell

#: how much of stderr a failure message shows
TAIL_LINES = 20
TAIL_CHARS = 2000


def tail(text: str, lines: int = TAIL_LINES, chars: int = TAIL_CHARS) -> str:
    """The last ``lines`` lines (at most ``chars`` characters) of ``text``."""
    text = text.rstrip()
    out = "\n".join(text.splitlines()[-lines:])
    return out if len(out) <= chars else "..." + out[-chars:]


class ShellTool(Tool):
    kind = "shell"

    @secret_safe
    def run(self, config: dict[str, Any], ctx: ToolContext) -> Any:
        source = config.get("command", config.get("cmds"))
        cfg = ctx.render({k: v for k, v in config.items() if k not in ("command", "cmds")})
        # each {{ }} value reaches the shell as a positional parameter, never as syntax
        command, arguments = render_shell(source if isinstance(source, list) else str(source),
                                          ctx.scope)
        if not isinstance(command, str) or not command.strip():
            raise ToolError("shell: `command` rendered empty")
        shell = str(cfg.get("shell") or "sh")
        shell_path = shutil.which(shell)
        if shell_path is None:
            raise ToolError(f"shell: {shell!r} is not installed (not found on PATH); "
                            "set `shell:` to an installed shell such as sh")
        cwd = cfg.get("cwd")
        if cwd is not None and not os.path.isdir(str(cwd)):
            raise ToolError(f"shell: working directory {cwd!r} does not exist")
        env = dict(os.environ)
        extra = cfg.get("env") or {}
        if not isinstance(extra, Mapping):
            raise ToolError("shell: `env` must render to a mapping of NAME: value")
        for key, value in extra.items():
            if value is None:
                env.pop(str(key), None)
            else:
                env[str(key)] = value if isinstance(value, str) else _text(value)
        timeout = cfg.get("timeout_seconds", cfg.get("timeout"))
        timeout = float(timeout) if timeout not in (None, "", 0) else None
        capture = bool(cfg.get("capture", True))
        pipe = subprocess.PIPE if capture else None

        try:
            proc = subprocess.Popen([shell_path, "-c", command, "noetl-shell", *arguments], cwd=cwd, env=env, stdout=pipe,
                                    stderr=pipe, stdin=subprocess.DEVNULL, start_new_session=True)
        except OSError as exc:
            raise ToolError(creds.redact(f"shell: cannot start {shell}: {exc}")) from None
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            try:
                out, err = proc.communicate(timeout=5)
            except subprocess.TimeoutExpired:  # a descendant escaped the group, holding the pipes
                out, err = b"", b""
                for stream in (proc.stdout, proc.stderr):
                    if stream:
                        stream.close()
            stderr = (err or b"").decode("utf-8", "replace")
            detail = f"; stderr: {tail(stderr)}" if stderr.strip() else ""
            raise ToolError(creds.redact(
                f"shell: command timed out after {timeout:g}s and was killed{detail}")) from None
        except BaseException:
            _kill_group(proc)
            proc.wait()
            raise
        stdout = (out or b"").decode("utf-8", "replace")
        stderr = (err or b"").decode("utf-8", "replace")
        code = proc.returncode
        if code != 0 and cfg.get("check", True):
            if code < 0:
                what = f"was killed by signal {-code} ({_signal_name(-code)})"
            else:
                what = f"exited with code {code}"
            shown = tail(stderr) or tail(stdout)
            detail = f": {shown}" if shown else " (no output)"
            return ErrorResult({"stdout": stdout, "stderr": stderr, "exit_code": code},
                               creds.redact(f"shell: command {what}{detail}"))
        return {"stdout": stdout, "stderr": stderr, "exit_code": code}


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        try:
            proc.kill()
        except ProcessLookupError:
            pass


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return "unknown"


def _text(value: Any) -> str:
    import json

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)
