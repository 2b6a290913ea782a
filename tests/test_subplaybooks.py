"""`kind: playbook`: awaited child runs, fire-and-forget launches, unknown paths at load time."""

from __future__ import annotations

import time
from pathlib import Path

import dagster as dg
import pytest

from noetl_dagster import PlaybookError, load_playbook_definitions, run_playbook
from noetl_dagster.cli import main

CHILD = """apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: child, path: dom/child}
workload: {x: 1}
workflow:
  - step: start
    tool: {kind: python, input: {x: "{{ x }}"}, code: "result = {'doubled': x * 2}"}
    next: end
  - step: end
    tool: {kind: noop, result: {answer: "{{ start.doubled }}"}}
"""
PARENT = """apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: parent, path: dom/parent}
workflow:
  - step: start
    tool: {kind: playbook, path: dom/child, args: {x: 21}, return_result: true}
    next: fire
  - step: fire
    tool: {kind: playbook, path: dom/child, args: {x: 5}}
    next: end
  - step: end
    tool: {kind: noop, result: {got: "{{ start.answer }}", launched: "{{ fire.execution_id }}"}}
"""


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "dom").mkdir()
    (tmp_path / "dom" / "child.yaml").write_text(CHILD)
    (tmp_path / "dom" / "parent.yaml").write_text(PARENT)
    return tmp_path


def test_awaited_and_fire_and_forget(tree, instance):
    report = run_playbook(tree / "dom" / "parent.yaml", instance=instance)
    assert report.status == "success"
    assert report.steps["start"].result == {"answer": 42}
    launched = report.steps["fire"].result
    assert launched["status"] == "started" and launched["async"] is True
    assert report.steps["end"].result["got"] == 42
    children = instance.get_runs(dg.RunsFilter(tags={"noetl/parent_run_id": report.run_id}))
    awaited = [r for r in children if r.run_id != launched["execution_id"]]
    assert len(awaited) == 1 and awaited[0].status == dg.DagsterRunStatus.SUCCESS
    assert awaited[0].tags["noetl/parent_step"] == "start"
    deadline = time.time() + 120
    while time.time() < deadline:
        run = instance.get_run_by_id(launched["execution_id"])
        if run is not None and run.is_finished:
            break
        time.sleep(0.5)
    assert run is not None and run.status == dg.DagsterRunStatus.SUCCESS
    assert run.tags["noetl/parent_run_id"] == report.run_id


def test_failed_awaited_child_fails_the_step(tree, instance):
    (tree / "dom" / "child.yaml").write_text(CHILD.replace("x * 2", "x // 0"))
    report = run_playbook(tree / "dom" / "parent.yaml", instance=instance)
    # the child's python error completes its step (NoETL's error result): the child completes
    assert report.status == "success", report.to_dict()
    child = next(r for r in instance.get_runs(dg.RunsFilter(tags={"noetl/parent_run_id": report.run_id}))
                 if r.tags.get("noetl/parent_step") == "start")
    assert child.tags["noetl/error_steps"] == "start"
    # a child that fails (a raised tool error) fails an awaited `return_result` step
    (tree / "dom" / "child.yaml").write_text(CHILD.replace(
        "tool: {kind: python, input: {x: \"{{ x }}\"}, code: \"result = {'doubled': x * 2}\"}",
        "tool: {kind: duckdb, query: 'SELECT * FROM nowhere'}"))
    report = run_playbook(tree / "dom" / "parent.yaml", instance=instance)
    assert report.status == "failure"
    assert report.steps["start"].status == "failed"
    assert "sub-playbook 'dom/child' failed" in report.steps["start"].error
    assert "nowhere" in report.steps["start"].error


def test_return_step_never_fails_the_parent(tree, instance):
    (tree / "dom" / "child.yaml").write_text(CHILD.replace(
        "tool: {kind: python, input: {x: \"{{ x }}\"}, code: \"result = {'doubled': x * 2}\"}",
        "tool: {kind: duckdb, query: 'SELECT * FROM nowhere'}"))
    (tree / "dom" / "parent.yaml").write_text(PARENT.replace("return_result: true", "return_step: end"))
    report = run_playbook(tree / "dom" / "parent.yaml", instance=instance)
    assert report.status == "success", report.to_dict()
    payload = report.steps["start"].result
    assert payload["status"] == "FAILED" and payload["path"] == "dom/child" and "nowhere" in payload["error"]


def test_unknown_sub_playbook_is_a_load_error(tree, capsys):
    (tree / "dom" / "parent.yaml").write_text(PARENT.replace("path: dom/child, args: {x: 5}", "path: dom/nope"))
    with pytest.raises(PlaybookError, match=r"parent.yaml:\d+:\d+: step 'fire': tool.path: sub-playbook 'dom/nope'"):
        load_playbook_definitions(tree, strict=True)
    assert [j.name for j in load_playbook_definitions(tree).jobs] == ["dom__child"]
    assert main(["validate", str(tree)]) == 1
    assert "sub-playbook 'dom/nope' is not among the loaded playbooks" in capsys.readouterr().err
