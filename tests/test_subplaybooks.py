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


AWAITING = """apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: parent, path: dom/parent}
workflow:
  - step: start
    tool: {kind: playbook, path: dom/child, args: {x: 4}, return_result: true}
"""


def test_the_runtime_alone_has_no_sub_playbook_runner(tree):
    """The runtime imports no runner: a host passes one in RunInfo, and without one an awaited
    child is a clear step failure, not an import of the Dagster adapter."""
    from noetl_dagster import load_playbook
    from noetl_dagster.errors import StepFailed
    from noetl_dagster.playbook.catalog import PlaybookCatalog
    from noetl_dagster.runtime.context import Context
    from noetl_dagster.runtime.step import RunInfo, run_step

    (tree / "dom" / "parent.yaml").write_text(AWAITING)
    parent, child = load_playbook(tree / "dom" / "parent.yaml"), load_playbook(tree / "dom" / "child.yaml")
    resources = {"catalog": PlaybookCatalog.of([parent, child])}
    with pytest.raises(StepFailed, match=r"'dom/child': awaiting a child needs a host that runs playbooks"):
        run_step(parent.step("start"), Context.initial({}), RunInfo(1, resources=resources))
    # a host's runner gets the child, its workload and the parent's tags; its report is the result
    calls = []

    def runner(playbook, workload, **kwargs):
        calls.append((playbook.metadata.path, dict(workload), kwargs["tags"]["noetl/parent_step"]))
        return run_playbook(playbook, workload)

    outcome = run_step(parent.step("start"), Context.initial({}), RunInfo(1, resources=resources, run_playbook=runner))
    assert outcome.result == {"answer": 8}
    assert calls == [("dom/child", {"x": 4}, "start")]


def test_definitions_run_children_without_importing_run_first(tree, tmp_path):
    """What `dagster dev` loads (load_playbook_definitions) runs an awaited child in a fresh process:
    the package installs run.run_playbook as the adapter's runner; run.py loads with the first child."""
    import subprocess
    import sys

    (tree / "dom" / "parent.yaml").write_text(AWAITING)
    code = ("import sys, dagster as dg\n"
            "from noetl_dagster.translator.definitions import load_playbook_definitions\n"
            f"defs = load_playbook_definitions({str(tree)!r}, strict=True)\n"
            "before = 'noetl_dagster.run' in sys.modules\n"
            "result = defs.resolve_job_def('dom__parent').execute_in_process(instance=dg.DagsterInstance.ephemeral())\n"
            "print(before, result.success, result.output_for_node('start', 'result'))\n")
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "PYTHONPATH": str(root)})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "False True {'answer': 8}"
