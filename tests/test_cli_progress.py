"""`noetl-dagster run` shows per-step progress on a terminal; `--json` stays pure JSON.

The CLI runs as a subprocess on a pseudo-terminal (``pty``: stdout and stderr are a TTY) and
with pipes, on a routing playbook (tests/observe/route.yaml).
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PLAYBOOK = ROOT / "tests" / "observe" / "route.yaml"
CLI = Path(sys.executable).parent / "noetl-dagster"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _env(home: Path) -> dict[str, str]:
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    return {**os.environ, "DAGSTER_HOME": str(home), "PYTHONPATH": str(ROOT), "COLUMNS": "200", "TERM": "xterm"}


def _on_tty(argv: list[str], env: dict[str, str], timeout: float = 180) -> tuple[int, str]:
    leader, follower = pty.openpty()
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=follower, stderr=follower)
    os.close(follower)
    chunks, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 0.5)
        if ready:
            try:
                data = os.read(leader, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    os.close(leader)
    code = proc.wait(timeout=30)
    return code, ANSI.sub("", b"".join(chunks).decode("utf-8", "replace")).replace("\r", "\n")


def test_run_on_a_tty_shows_each_step(tmp_path: Path) -> None:
    code, out = _on_tty([str(CLI), "run", str(PLAYBOOK)], _env(tmp_path))
    assert code == 0, out[-3000:]
    for step in ("start", "measure", "large", "end"):
        assert re.search(rf"✔ {step} \d+\.\d\ds", out), (step, out[-3000:])
    assert re.search(r"- small\b", out), out[-3000:]  # the arc that did not fire: skipped
    assert "tool duckdb SELECT 4200 AS amount" in out and "-> large (when" in out
    assert "run " in out and ": success" in out  # the report still follows


def test_json_stays_pure_json_on_a_tty_and_in_a_pipe(tmp_path: Path) -> None:
    env = _env(tmp_path)
    piped = subprocess.run([str(CLI), "run", str(PLAYBOOK), "--json"], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=180)
    assert piped.returncode == 0, piped.stderr[-3000:]
    report = json.loads(piped.stdout)
    assert report["status"] == "success" and report["steps"]["small"]["status"] == "skipped"
    assert "✔" not in piped.stderr  # not a terminal: no progress
    code, out = _on_tty([str(CLI), "run", str(PLAYBOOK), "--json"], env)
    assert code == 0, out[-3000:]
    assert "✔" not in out
    assert json.loads(out.strip().splitlines()[-1])["steps"]["end"]["result"] == {"cheap": 4201}


def test_an_error_result_is_marked_on_the_tty(tmp_path: Path) -> None:
    code, out = _on_tty([str(CLI), "run", str(ROOT / "tests" / "references" / "typo.yaml")], _env(tmp_path))
    assert code == 0, out[-3000:]  # completed with an error result (NoETL); --fail-on-error would exit 1
    assert re.search(r"! total \d+\.\d\ds  tool python", out), out[-3000:]
    assert re.search(r"✔ fetch \d+\.\d\ds", out)
