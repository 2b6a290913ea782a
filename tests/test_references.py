"""A misspelt step name in a template: a did-you-mean warning at validate, the name at run time."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from noetl_dagster import load_playbook, run_playbook
from noetl_dagster.cli import main
from noetl_dagster.playbook.references import template_roots, undefined_references

ROOT = Path(__file__).resolve().parent.parent
TYPO = ROOT / "tests" / "references" / "typo.yaml"


def test_validate_warns_with_did_you_mean(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(TYPO)]) == 0  # a warning, not an error: NoETL renders it empty
    out = capsys.readouterr()
    assert "1 playbook(s) valid, 1 warning(s)" in out.out
    assert (f"warning: {TYPO}:19:1: step 'total': tool.input.rows: 'fecth' is not a step, workload key or ctx "
            "value on any path (did you mean 'fetch'?)") in out.err


def test_example_playbooks_have_no_warnings() -> None:
    for path in sorted((ROOT / "playbooks").rglob("*.yaml")):
        assert undefined_references(load_playbook(path)) == [], path


def test_run_names_the_undefined_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the default IO root (./.noetl_data) stays in the test's folder
    report = run_playbook(TYPO, instance=dg.DagsterInstance.ephemeral())
    assert report.steps["total"].status == "error"  # NoETL: a raising python step completes with an error
    error = report.steps["total"].error or ""
    assert "TypeError" in error and "'fecth' is undefined here (did you mean 'fetch'?)" in error, error
    assert "tool.input.rows" in error
    strict = run_playbook(TYPO, instance=dg.DagsterInstance.ephemeral(), on_error="fail")
    assert strict.status == "failure" and "(did you mean 'fetch'?)" in (strict.steps["total"].error or "")


@pytest.mark.parametrize("text, roots", [
    ("{{ fetch.rows }}", [("fetch", True)]),
    ("{{ x | default('y') }} {{ a[0] }}", [("x", False), ("a", True)]),
    ("{% for r in rows %}{{ r.id }}{% endfor %}", [("rows", False)]),
    ("{{ 'fecth.rows' }} {{ range(3) | length }} {{ v is defined }}", [("v", False)]),
    ("{{ product('risk/scores') }} {{ dict(a=1) }}", []),
    ("plain text", []),
])
def test_template_roots(text: str, roots: list[tuple[str, bool]]) -> None:
    assert template_roots(text) == roots
