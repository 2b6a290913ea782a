"""Crash recovery: `kill -9` of `noetl-dagster run`, the orphaned run marked failed, `--resume`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from noetl_dagster.cli import main

ROOT = Path(__file__).resolve().parent.parent

PLAYBOOK = """\
apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: slow, path: crash/slow}
workload: {marks: MARKS}
workflow:
  - step: start
    tool:
      kind: python
      input: {marks: "{{ workload.marks }}"}
      code: |
        import os
        with open(os.path.join(marks, "start.count"), "a") as f:
            f.write("x")
        result = {"n": 41, "token": os.urandom(4).hex()}
    next: slow
  - step: slow
    tool:
      kind: python
      input: {marks: "{{ workload.marks }}", n: "{{ start.n }}"}
      code: |
        import os, time
        open(os.path.join(marks, "slow.started"), "w").close()
        while not os.path.exists(os.path.join(marks, "go")):
            time.sleep(0.1)
        result = n + 1
    next: end
  - step: end
    tool: {kind: noop, result: {n: "{{ slow }}", token: "{{ start.token }}"}}
"""


def _cli(*args: str, home: Path, **kwargs) -> subprocess.Popen:  # type: ignore[no-untyped-def]
    env = {**os.environ, "DAGSTER_HOME": str(home), "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "noetl_dagster.cli", *args], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def _wait_for(path: Path, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.2)


def test_kill_9_then_resume_reruns_only_what_did_not_finish(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    home, marks = tmp_path / "home", tmp_path / "marks"
    home.mkdir()
    marks.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    playbook = tmp_path / "slow.yaml"
    playbook.write_text(PLAYBOOK.replace("MARKS", str(marks)))

    first = _cli("run", str(playbook), "--json", home=home)
    try:
        _wait_for(marks / "slow.started", 120)
    finally:
        os.kill(first.pid, signal.SIGKILL)  # the process this test started
        first.communicate(timeout=60)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        (run,) = instance.get_runs()
        assert run.status == dg.DagsterRunStatus.STARTED  # what a killed run leaves behind
        killed = run.run_id

    (marks / "go").touch()
    resumed = _cli("run", "--resume", killed, "--json", home=home)
    out, err = resumed.communicate(timeout=180)
    assert resumed.returncode == 0, err[-3000:]
    assert "Traceback" not in err
    report = json.loads(out)
    assert report["status"] == "success" and report["run_id"] != killed
    assert report["steps"]["end"]["result"]["n"] == 42
    assert (marks / "start.count").read_text() == "x"  # upstream was not recomputed
    assert report["steps"]["start"] == {"status": "success", "result": None, "runs": 0}

    with dg.DagsterInstance.from_config(str(home)) as instance:
        old = instance.get_run_by_id(killed)
        assert old.status == dg.DagsterRunStatus.FAILURE  # marked when the next CLI started
        new = instance.get_run_by_id(report["run_id"])
        assert new.tags["noetl/resumed_from"] == killed and new.parent_run_id == killed
        # the token start produced in the killed run reached end through the persisted output
        token = [r for r in instance.all_logs(killed, of_type=dg.DagsterEventType.STEP_SUCCESS)]
        assert token and len(report["steps"]["end"]["result"]["token"]) == 8

    monkeypatch.setenv("DAGSTER_HOME", str(home))
    assert main(["run", "--resume", report["run_id"]]) == 1
    assert "cannot be resumed: it succeeded; there is nothing to resume" in capsys.readouterr().err
    assert main(["run", "--resume", "no-such-run"]) == 1
    assert "run no-such-run cannot be resumed: no such run" in capsys.readouterr().err
    assert main(["run"]) == 2


def test_a_failed_run_with_tables_resumes_from_its_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """Arrow tables between steps (the project's IO manager): the resumed run reads the stored
    table of the step that succeeded instead of running it again."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    gate = tmp_path / "gate"
    playbook = tmp_path / "tables.yaml"
    playbook.write_text(f"""\
apiVersion: noetl.io/v2
kind: Playbook
metadata: {{name: tables, path: crash/tables, dagster: {{on_error: fail}}}}
workflow:
  - step: start
    tool: {{kind: duckdb, format: arrow, query: "SELECT range AS n, random() AS r FROM range(5)"}}
    next: check
  - step: check
    tool:
      kind: python
      input: {{gate: "{gate}"}}
      code: |
        import os
        if not os.path.exists(gate):
            raise RuntimeError("the gate is closed")
        result = "open"
    next: end
  - step: end
    tool: {{kind: duckdb, query: "SELECT sum(r) AS total FROM start"}}
""")
    assert main(["run", str(playbook), "--json"]) == 1
    failed = json.loads(capsys.readouterr().out)
    assert failed["steps"]["check"]["status"] == "failed"
    gate.touch()
    assert main(["run", "--resume", failed["run_id"], "--json"]) == 0
    resumed = json.loads(capsys.readouterr().out)
    assert resumed["steps"]["start"]["status"] == "success" and resumed["steps"]["start"]["runs"] == 0
    assert resumed["steps"]["check"]["result"] == "open"
    total = resumed["steps"]["end"]["result"]["rows"][0]["total"]
    with dg.DagsterInstance.from_config(str(home)) as instance:
        resumed_run = instance.get_run_by_id(resumed["run_id"])
        assert resumed_run.parent_run_id == failed["run_id"]
    rows = failed["steps"]["start"]["result"]
    assert total == pytest.approx(sum(row["r"] for row in rows))  # the first run's table, read back
    again = main(["run", str(playbook), "--json"])  # a fresh run draws other random values
    assert again == 0 and json.loads(capsys.readouterr().out)["steps"]["end"]["result"]["rows"][0]["total"] != total


def test_cancel_ends_the_detached_children_of_a_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """A fire-and-forget child is tracked by its parent run: `noetl-dagster cancel PARENT` ends it."""
    from noetl_dagster.run import run_playbook

    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    (tmp_path / "dom").mkdir()
    (tmp_path / "dom" / "waits.yaml").write_text(
        "apiVersion: noetl.io/v2\nkind: Playbook\nmetadata: {name: waits, path: dom/waits}\nworkflow:\n"
        "  - step: start\n    tool:\n      kind: python\n      code: |\n        import time\n"
        "        while True:\n            time.sleep(0.2)\n")
    parent = tmp_path / "dom" / "parent.yaml"
    parent.write_text("apiVersion: noetl.io/v2\nkind: Playbook\nmetadata: {name: parent, path: dom/parent}\n"
                      "workflow:\n  - step: start\n    tool: {kind: playbook, path: dom/waits}\n")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        top = run_playbook(parent, instance=instance, log_level="CRITICAL")
        assert top.status == "success"
        child_id = top.steps["start"].result["execution_id"]
        deadline = time.monotonic() + 120
        while True:
            child = instance.get_run_by_id(child_id)
            if child is not None and child.status == dg.DagsterRunStatus.STARTED:
                break
            assert time.monotonic() < deadline, "the detached child never started"
            time.sleep(0.3)
        pid = int(child.tags["noetl/cli_pid"])
        assert instance.get_run_by_id(top.run_id).tags[f"noetl/detached/{child_id}"] == str(pid)
        try:
            assert main(["cancel", top.run_id]) == 0
            assert child_id in capsys.readouterr().out
            deadline = time.monotonic() + 30
            while not _ended(pid):
                assert time.monotonic() < deadline, "the child process is still running"
                time.sleep(0.2)
        finally:
            if not _ended(pid):
                os.kill(pid, signal.SIGKILL)  # launched by this test's run
        assert instance.get_run_by_id(child_id).status == dg.DagsterRunStatus.CANCELED


def _ended(pid: int) -> bool:
    """The process is gone (reaped here when this test process is its parent: no zombie)."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == pid
    except ChildProcessError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False
