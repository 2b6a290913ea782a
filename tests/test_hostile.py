"""The hostile corpus: playbooks written to break the loader, the compiler and the runtime.

Each ``tests/hostile/*.yaml`` runs alone (validate, compile, and run when valid) in a worker
process under a time limit per playbook and a memory limit per process (``hostile_worker.py``;
two workers; a worker that hangs or dies is killed by its pid and replaced for the files left).
Every playbook states at its end what it must produce::

    # expect: 12:9 step=fetch field=next.arcs[1].step message="arc to unknown step" hint="did you mean"
    # expect-run: step=start message="loop.in has 1,000,000,000 items"

``# expect:`` lines are the validation (or compile) issues, exactly (as in test_bad_input.py);
``# expect-run:`` lines are steps that must fail at run time with that text in their error.
The bar: 0 tracebacks, 0 hangs, 0 silent acceptances; every issue names file:line:col, and its
field (and step, when the problem is inside one); every run error names its step.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shlex
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).parent
ROOT = HERE.parent
CORPUS = sorted((HERE / "hostile").glob("*.yaml"))
#: seconds one playbook may take in the worker (validate + compile + run)
FILE_SECONDS = 45
#: address space of a worker process (Dagster, DuckDB and chdb imports included)
MEMORY_BYTES = 4 * 1024 ** 3
WORKERS = 2
#: limits the corpus runs with (small, so that hitting them is quick)
LIMITS_ENV = {"NOETL_MAX_LOOP_ITEMS": "5000", "NOETL_MAX_RENDERED_CHARS": "2000000",
              "NOETL_MAX_SUBPLAYBOOK_DEPTH": "3"}
POSITION = re.compile(r"^(?P<line>\d+)(?::(?P<col>\d+))?$")
#: issues about the document as a whole (YAML) name no field
DOCUMENT_LEVEL = re.compile(r"^(YAML|the document|the file has|a mapping key|duplicate key|not UTF-8|a playbook must be)")


@dataclass(frozen=True)
class Expected:
    line: int | None
    col: int | None
    step: str | None
    field: str | None
    message: str
    hint: str | None
    run: bool = False

    def matches(self, issue: dict[str, Any]) -> bool:
        return (issue["line"] == self.line and (self.col is None or issue["col"] == self.col)
                and issue["step"] == self.step and issue["field"] == self.field
                and self.message in issue["message"]
                and (self.hint is None or (issue["hint"] is not None and self.hint in issue["hint"])))


def expectations(path: Path) -> list[Expected]:
    found = []
    for text in path.read_text(encoding="utf-8", errors="replace").splitlines():
        run = text.startswith("# expect-run:")
        if not (run or text.startswith("# expect:")):
            continue
        parts = shlex.split(text.split(":", 1)[1])
        line = col = None
        if not run:
            match = POSITION.match(parts[0])
            assert match, f"{path.name}: bad position in {text!r}"
            line, col = int(match["line"]), int(match["col"]) if match["col"] else None
            parts = parts[1:]
        values = dict(p.split("=", 1) for p in parts)
        assert set(values) <= {"step", "field", "message", "hint"} and "message" in values, text
        found.append(Expected(line, col, values.get("step"), values.get("field"), values["message"],
                              values.get("hint"), run))
    return found


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_BYTES, MEMORY_BYTES))


def _worker(files: list[str], results: dict[str, dict[str, Any]], home: Path) -> None:
    """Run ``files`` in worker processes, one after another; a hung or dead worker is replaced."""
    env = {**os.environ, **LIMITS_ENV, "DAGSTER_HOME": str(home), "PYTHONPATH": str(ROOT)}
    left = list(files)
    while left:
        process = subprocess.Popen([sys.executable, str(HERE / "hostile_worker.py"), *left], cwd=ROOT, env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   preexec_fn=_limit_memory)
        timer: threading.Timer | None = None
        current: str | None = None
        hung = threading.Event()

        def kill(pid: int = process.pid) -> None:
            hung.set()
            os.kill(pid, 9)

        assert process.stdout is not None
        for line in process.stdout:
            data = json.loads(line)
            if "start" in data:
                current = data["start"]
                timer = threading.Timer(FILE_SECONDS, kill)
                timer.start()
                continue
            if timer is not None:
                timer.cancel()
            results[data["file"]] = data
            left.remove(data["file"])
            current = None
        if timer is not None:
            timer.cancel()
        stderr = process.stderr.read() if process.stderr else ""
        process.wait()
        if current is None:
            assert not left or process.returncode != 0, f"worker ended early: {stderr[-2000:]}"
            if not left:
                break
            current = left[0]
        why = (f"hang: no answer within {FILE_SECONDS}s" if hung.is_set()
               else f"worker died (exit {process.returncode}): {stderr[-1500:]}")
        results[current] = {"file": current, "crash": why, "issues": [], "run": None, "phase": "died"}
        left.remove(current)


@pytest.fixture(scope="module")
def corpus_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    home = tmp_path_factory.mktemp("hostile_home")
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    files = [str(p) for p in CORPUS]
    results: dict[str, dict[str, Any]] = {}
    threads = [threading.Thread(target=_worker, args=(files[i::WORKERS], results, home)) for i in range(WORKERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_corpus_is_large_enough() -> None:
    assert len(CORPUS) >= 80
    assert len({p.name[:3] for p in CORPUS}) == len(CORPUS), "case numbers must be unique"


@pytest.mark.parametrize("path", CORPUS, ids=[p.stem for p in CORPUS])
def test_hostile_playbook(path: Path, corpus_results: dict[str, dict[str, Any]]) -> None:
    result = corpus_results[str(path)]
    assert result["crash"] is None, f"{path.name}: {result['crash']}"
    expected = expectations(path)
    assert expected, f"{path.name} states no `# expect:` line"
    issues = result["issues"]
    report = "\n".join(i["text"] for i in issues)
    assert result["phase"] != "ok", f"{path.name}: silently accepted (ran to success)"
    wanted_issues = [e for e in expected if not e.run]
    unmatched = list(issues)
    for want in wanted_issues:
        hit = next((i for i in unmatched if want.matches(i)), None)
        assert hit is not None, f"{path.name}: expected {want}\nreported:\n{report}"
        unmatched.remove(hit)
    assert not unmatched, f"{path.name}: unexpected issue(s):\n{report}"
    for issue in issues:
        assert issue["text"].startswith(f"{path}:{issue['line']}:{issue['col']}: "), issue["text"]
        assert issue["line"] >= 1 and issue["col"] >= 1
        assert "Traceback" not in issue["text"] and "internal error" not in issue["text"], issue["text"]
        assert issue["field"] is not None or DOCUMENT_LEVEL.match(issue["message"]), \
            f"{path.name}: an issue without a field: {issue['text']}"
        if issue["step"] is not None:
            assert f"step '{issue['step']}':" in issue["text"]
    runs = [e for e in expected if e.run]
    if runs:
        assert result["run"] is not None, f"{path.name}: expected a run, got issues:\n{report}"
        assert result["run"]["status"] == "failure", path.name
        for want in runs:
            step = result["run"]["steps"][want.step]
            assert step["status"] == "failed", f"{path.name}: step {want.step} is {step['status']}"
            assert want.message in (step["error"] or ""), f"{path.name}: {step['error']}"
            assert f"step '{want.step}'" in step["error"] and "Traceback" not in step["error"], step["error"]
    else:
        assert result["run"] is None, f"{path.name}: ran, but only issues were expected: {result['run']}"
