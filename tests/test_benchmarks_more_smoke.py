"""The start-up, event-log storage and real-instance export benchmarks run end to end at a tiny
size (no timing is asserted; each script checks its own results)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.mark.parametrize("script, argv, expect", [
    ("startup.py", ["--runs", "1"], "ratio noetl/dagster = "),
    ("event_log_storage.py", ["--chains", "3", "--width", "2", "--runs", "1"], "fast sqlite"),
    ("export_instance.py", ["--runs", "2", "--items", "3", "--repeat", "1"], "export from fast sqlite: "),
])
def test_benchmark_script_runs(script: str, argv: list[str], expect: str) -> None:
    done = subprocess.run([sys.executable, str(BENCHMARKS / script), *argv], capture_output=True, text=True,
                          timeout=600, cwd=str(BENCHMARKS.parent))
    assert done.returncode == 0, done.stderr[-3000:]
    assert expect in done.stdout, done.stdout
