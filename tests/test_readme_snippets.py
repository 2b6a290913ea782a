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
