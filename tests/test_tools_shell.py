"""``kind: shell``: real processes, exit codes, timeouts."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import dagster as dg
import pytest

from noetl_dagster import run_playbook
from noetl_dagster.playbook.loader import parse_text
from noetl_dagster.resources.credentials import CredentialsResource
from noetl_dagster.core.secrets import register_secret
from noetl_dagster.playbook.kinds import check_tool_config
from noetl_dagster.runtime.tools import ErrorResult, ToolContext, ToolError, get_tool


def run(config: dict, scope: dict | None = None) -> dict:
    ctx = ToolContext("sh", "exec-1", scope or {}, resources={"credentials": CredentialsResource()})
    return get_tool("shell").run(config, ctx)


def error_result(config: dict) -> tuple[dict, str]:
    """A non-zero exit is NoETL's error result (the step completes with status `error`)."""
    out = run(config)
    assert isinstance(out, ErrorResult), out
    return out.data, out.message


def test_echo_with_template() -> None:
    out = run({"command": "echo 'hello {{ workload.name }}'"}, {"workload": {"name": "world"}})
    assert out == {"stdout": "hello world\n", "stderr": "", "exit_code": 0}


def test_env_cwd_and_shell(tmp_path: Path) -> None:
    (tmp_path / "f.txt").write_text("a\nb\n")
    out = run({"command": 'printf "%s:" "$GREETING"; wc -l < f.txt', "cwd": str(tmp_path),
               "env": {"GREETING": "hi", "N": 3, "HOME": None}})
    assert out["stdout"].replace(" ", "") == "hi:2\n"
    assert run({"command": "echo $N-$FLAG", "env": {"N": 3, "FLAG": True}})["stdout"] == "3-true\n"
    if shutil.which("bash"):
        assert run({"command": "echo ${BASH_VERSION:+bash}", "shell": "bash"})["stdout"] == "bash\n"


def test_stderr_is_captured_on_success() -> None:
    out = run({"command": "echo out; echo err >&2"})
    assert out == {"stdout": "out\n", "stderr": "err\n", "exit_code": 0}


def test_list_of_commands_stops_at_first_failure() -> None:
    assert run({"command": ["echo one", "echo two"]})["stdout"] == "one\ntwo\n"
    data, message = error_result({"command": ["echo one", "false", "echo never"]})
    assert "exited with code 1" in message and data == {"stdout": "one\n", "stderr": "", "exit_code": 1}


def test_nonzero_exit_fails_with_code_and_stderr_tail() -> None:
    script = "for i in $(seq 1 50); do echo line$i >&2; done; exit 3"
    data, message = error_result({"command": script})
    assert data["exit_code"] == 3 and data["stderr"].endswith("line50\n")
    assert "exited with code 3" in message
    assert "line50" in message and "line31" in message and "line30\n" not in message  # the tail only


def test_nonzero_exit_with_check_false_completes() -> None:
    assert run({"command": "echo partial; exit 4", "check": False}) == {
        "stdout": "partial\n", "stderr": "", "exit_code": 4}


def test_timeout_kills_the_process_group() -> None:
    started = time.monotonic()
    with pytest.raises(ToolError, match=r"timed out after 0\.5s and was killed"):
        # a pipeline: the shell's children hold the output pipes open
        run({"command": "echo start >&2; sleep 30 | cat", "timeout_seconds": 0.5})
    assert time.monotonic() - started < 10


def test_missing_shell_and_cwd_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(ToolError, match=r"'no-such-shell' is not installed"):
        run({"command": "true", "shell": "no-such-shell"})
    with pytest.raises(ToolError, match="working directory .* does not exist"):
        run({"command": "true", "cwd": str(tmp_path / "missing")})


def test_secrets_are_redacted_in_failures() -> None:
    register_secret("shell-Secret-Value")
    data, message = error_result({"command": 'echo "token=$T" >&2; exit 2', "env": {"T": "shell-Secret-Value"}})
    assert "shell-Secret-Value" not in message and "token=***" in message


def test_validate() -> None:
    assert check_tool_config("shell", {})[0][0] == "command"
    assert check_tool_config("shell", {"command": "true"}) == []


def test_playbook_shell_then_python() -> None:
    playbook = parse_text("""
apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: shell_e2e, path: tests/shell_e2e}
workload: {word: noetl}
workflow:
  - step: start
    tool: {kind: noop}
    next: count
  - step: count
    tool:
      kind: shell
      command: printf '%s' "{{ workload.word }}" | wc -c
    next: check
  - step: check
    tool:
      kind: python
      input: {out: "{{ count.stdout }}", code: "{{ count.exit_code }}"}
      code: |
        result = {"chars": int(out.strip()), "exit": code}
    next: fail
  - step: fail
    tool: {kind: shell, command: "echo broken >&2; exit 9"}
""")
    report = run_playbook(playbook, instance=dg.DagsterInstance.ephemeral())
    assert report.steps["check"].result == {"chars": 5, "exit": 0}
    assert report.status == "success"  # NoETL: a non-zero exit completes the step with an error result
    assert report.steps["fail"].status == "error" and report.steps["fail"].result["exit_code"] == 9
    assert "exited with code 9: broken" in report.steps["fail"].error
    strict = run_playbook(playbook, instance=dg.DagsterInstance.ephemeral(), on_error="fail")
    assert strict.status == "failure" and strict.steps["fail"].status == "failed"
