"""`noetl-dagster export`/`search` when the embedded folders are held by another process.

chdb and Qdrant local mode lock their folder per process. The CLI waits (``--wait``) and then
prints one line naming the folder: no traceback, no chdb lock chatter, no "Exception ignored"
from a Qdrant client collected at exit. Checked against a process holding both folders with the
sensors' own session code, and beside a running ``dagster dev`` (its export sensors tick on the
same folders).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from devserver import DagsterDev, dev_env

ROOT = Path(__file__).resolve().parent.parent
CLI = Path(sys.executable).parent / "noetl-dagster"
NOISE = ("Traceback", "Exception ignored", "Cannot lock file", "DB::Exception")
HOLD = """
import sys, time
from noetl_dagster.export.clickhouse import ClickHouseResource
from noetl_dagster.export.embedder import EmbedderResource
from noetl_dagster.export.qdrant import QdrantResource
with ClickHouseResource().session(), QdrantResource().session(EmbedderResource().get()):
    print("HOLDING", flush=True)
    sys.stdin.read()  # until the test closes stdin
"""


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CLI), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)


@pytest.fixture()
def home(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path), "PYTHONPATH": str(ROOT), "NOETL_EMBEDDER": "hashing"}
    for name in ("NOETL_CLICKHOUSE_DSN", "NOETL_QDRANT_URL", "NOETL_QDRANT_PATH"):
        env.pop(name, None)
    return env


def test_held_folders_give_one_clear_line(home: dict[str, str]) -> None:
    holder = subprocess.Popen([sys.executable, "-c", HOLD], cwd=ROOT, env=home, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "HOLDING", holder.stderr.read()  # type: ignore[union-attr]
        started = time.monotonic()
        export = _cli(["export", "--wait", "1"], home)
        assert export.returncode == 1
        lines = export.stderr.splitlines()  # one line per held sink, each naming its folder
        assert len(lines) == 2, export.stderr
        assert lines[0].startswith("clickhouse: ") and "noetl_clickhouse is held by another process" in lines[0]
        assert lines[1].startswith("qdrant: ") and "noetl_qdrant is held by another process" in lines[1]
        search = _cli(["search", "connection refused", "--wait", "1"], home)
        assert search.returncode == 1
        assert "Qdrant local-mode folder" in search.stderr and search.stderr.count("\n") == 1, search.stderr
        for out in (export, search):
            assert not any(n in out.stderr + out.stdout for n in NOISE), out.stderr
        assert time.monotonic() - started < 120
    finally:
        holder.stdin.close()  # type: ignore[union-attr]
        holder.wait(timeout=60)
    # released: the same commands work, and exit without "Exception ignored"
    export = _cli(["export"], home)
    assert export.returncode == 0, export.stderr
    search = _cli(["search", "connection refused"], home)
    assert search.returncode == 0, search.stderr
    for out in (export, search):
        assert not any(n in out.stderr for n in NOISE), out.stderr


def test_export_and_search_beside_dagster_dev(dagster_dev: DagsterDev) -> None:
    """The dev instance's export sensors tick on the same folders: the commands wait their turn."""
    env = {**dev_env(dagster_dev.home), "PYTHONPATH": str(ROOT)}
    for _ in range(2):
        for args in (["export"], ["search", "connection refused"]):
            done = _cli([*args, "--wait", "60"], env)
            assert not any(n in done.stderr + done.stdout for n in NOISE), done.stderr
            assert done.returncode == 0 or "is held by another process" in done.stderr, done.stderr
