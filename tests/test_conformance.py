"""Every conformance case runs through the same code path as `noetl-dagster run`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from noetl_dagster import run_playbook

CASES = sorted((Path(__file__).parent / "conformance" / "cases").iterdir())


def matches(expected: Any, actual: Any) -> bool:
    """The conformance README's subset rules (mappings subset, lists exact, typed scalars)."""
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(k in actual and matches(v, actual[k]) for k, v in expected.items())
    if isinstance(expected, list):
        return isinstance(actual, list) and len(expected) == len(actual) and all(
            matches(e, a) for e, a in zip(expected, actual))
    if isinstance(expected, bool) or isinstance(actual, bool):
        return type(expected) is type(actual) and expected == actual
    if isinstance(expected, (int, float)) and isinstance(actual, (int, float)):
        return expected == actual
    return type(expected) is type(actual) and expected == actual


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_case(case: Path, items_server: str, instance) -> None:
    expect = yaml.safe_load((case / "expect.yaml").read_text())
    workload = dict(expect.get("workload") or {})
    playbook_text = (case / "playbook.yaml").read_text()
    if "kind: http" in playbook_text:
        workload["base_url"] = items_server
    report = run_playbook(case / "playbook.yaml", workload, instance=instance).to_dict()
    assert report["status"] == expect["status"], report
    for name, want in expect["steps"].items():
        got = report["steps"][name]
        assert got["status"] == want["status"], (name, got)
        if "runs" in want:
            assert got["runs"] == want["runs"], (name, got)
        if "result" in want:
            assert matches(want["result"], got["result"]), (name, want["result"], got["result"])
    declared = set(yaml.safe_load(playbook_text)["workflow"][i]["step"] for i in range(len(yaml.safe_load(playbook_text)["workflow"])))
    assert set(report["steps"]) == declared


def test_matcher_is_strict() -> None:
    assert matches({"a": 1}, {"a": 1.0, "b": 2})
    assert not matches({"a": True}, {"a": 1})
    assert not matches("7", 7)
    assert not matches([1, 2], [1, 2, 3])
    assert not matches({"a": None}, {})
