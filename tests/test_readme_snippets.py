"""The README's merge snippet runs exactly as printed, in a project that already has an io_manager."""

from __future__ import annotations

import re
from pathlib import Path

import dagster as dg
import pytest

ROOT = Path(__file__).resolve().parent.parent


def public_api_snippet() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Public API"):]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)  # type: ignore[union-attr]


def test_merge_snippet_runs_as_printed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # "playbooks/" as in the project root
    namespace: dict = {}
    exec(compile(public_api_snippet(), "README.md#public-api", "exec"), namespace)  # noqa: S102
    defs: dg.Definitions = namespace["defs"]
    assert defs.resolve_job_def("risk__score_application").name == "risk__score_application"
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert {"my_report", "risk/application_scores"} <= keys
    assert defs.resources["io_manager"] is namespace["my_io_manager"]
    assert defs.resolve_implicit_global_asset_job_def().executor_def.name == "in_process"


def shell_quickstart() -> list[str]:
    """The command lines of the README's first shell block that runs the examples (`make run`, validate, run)."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("also runs from the shell"):]
    block = re.search(r"```bash\n(.*?)```", section, re.DOTALL).group(1)  # type: ignore[union-attr]
    return [line for line in block.splitlines() if line.strip()]


def test_shell_quickstart_runs_as_printed(tmp_path: Path) -> None:
    """Each line run by bash from the checkout, as printed (its own DAGSTER_HOME, so nothing lands in the tree)."""
    import json
    import os
    import subprocess

    lines = shell_quickstart()
    assert [line.split()[:2] for line in lines] == [["make", "run"], [".venv/bin/noetl-dagster", "validate"],
                                                    [".venv/bin/noetl-dagster", "run"]]
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path)}
    done = [subprocess.run(["bash", "-c", line], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
            for line in lines]
    for line, proc in zip(lines, done):
        assert proc.returncode == 0, f"{line}\n{proc.stdout}\n{proc.stderr}"
    assert "playbook(s) valid" in done[1].stdout
    report = json.loads(done[2].stdout)
    assert report["status"] == "success" and report["steps"]["end"]["status"] == "success"
