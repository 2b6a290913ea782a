"""``dagster dev`` started exactly as ``make dev`` starts it, shared by the tests that need one.

``make dev PORT=<free port> DAGSTER_HOME=<tmp>`` from the project root (``-o .venv/.installed``:
the virtualenv is never rebuilt by a test), so the code location is the one ``[tool.dagster]`` in
pyproject.toml names (``noetl_playbooks``) — the one ``dagster job launch`` targets too. One
instance per test session (the ``dagster_dev`` fixture in ``conftest.py``): starting it takes
30-90 s on a loaded 2-core machine.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
STARTUP_TIMEOUT = 300  # dagster dev on a loaded 2-core machine has taken 75 s
LOCATION = "noetl_playbooks"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dev_env(home: Path) -> dict[str, str]:
    """The environment of `make dev` and of the commands run beside it (same DAGSTER_HOME)."""
    return {**os.environ, "DAGSTER_HOME": str(home), "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


class DagsterDev:
    def __init__(self, home: Path, port: int, log: Path) -> None:
        self.home, self.port, self.log = home, port, log
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None
        self.stopped_by: str | None = None

    def start(self) -> None:
        venv = os.path.relpath(BIN.parent, ROOT) if BIN.parent.is_relative_to(ROOT) else str(BIN.parent)
        command = ["make", "-s", "-o", f"{venv}/.installed", "dev", f"VENV={venv}", f"PORT={self.port}"]
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(command, cwd=ROOT, env=dev_env(self.home), stdout=out,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            assert self.proc.poll() is None, f"make dev exited: {self.log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"dagster dev not ready: {self.log.read_text()[-3000:]}"
            try:
                status = self.location_status()
                if status == "LOADED":
                    return
                assert status != "ERROR", f"code location failed to load: {self.log.read_text()[-3000:]}"
            except OSError:
                pass
            time.sleep(1)

    def graphql(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        request = urllib.request.Request(f"{self.url}/graphql", method="POST",
                                         data=json.dumps({"query": query, "variables": variables or {}}).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as exc:  # a bad query: say why
            raise AssertionError(f"GraphQL {exc.code}: {exc.read()[:2000]!r}") from None
        assert "errors" not in body, body
        return body["data"]

    def location_status(self) -> str | None:
        data = self.graphql("""{ workspaceOrError { __typename ... on Workspace { locationEntries {
            name loadStatus locationOrLoadError { __typename } } } } }""")
        entries = data["workspaceOrError"].get("locationEntries") or []
        if not entries or any(e["loadStatus"] != "LOADED" for e in entries):
            return None
        if any(e["locationOrLoadError"]["__typename"] != "RepositoryLocation" for e in entries):
            return "ERROR"
        return "LOADED"

    def wait_run(self, run_id: str, timeout: float = 300) -> dict[str, Any]:
        """The run's record once it has finished (or fail after ``timeout`` seconds)."""
        deadline = time.monotonic() + timeout
        while True:
            run = self.graphql("""query($id: ID!) { runOrError(runId: $id) { __typename ... on Run {
                status jobName stepStats { stepKey status } } } }""",
                               {"id": run_id})["runOrError"]
            if run.get("status") in ("SUCCESS", "FAILURE", "CANCELED"):
                return run
            assert time.monotonic() < deadline, f"run {run_id} not finished: {run}"
            time.sleep(2)

    def stop(self) -> None:
        """Ctrl-C as a terminal sends it (SIGINT to the process group: make, dagster dev, its
        webserver, daemon and code servers), then SIGTERM and SIGKILL for anything left behind."""
        if self.proc is None:
            return
        pgid = self.proc.pid
        for sig, grace in ((signal.SIGINT, 30), (signal.SIGTERM, 10), (signal.SIGKILL, 10)):
            if not self.alive(pgid):
                break
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and self.alive(pgid):
                time.sleep(0.25)
            self.stopped_by = sig.name
        self.proc.wait(timeout=30)
        assert not group_pids(pgid), f"left running: {group_pids(pgid)}"

    def alive(self, pgid: int) -> bool:
        self.proc.poll()  # type: ignore[union-attr]  # reap the leader: a zombie still counts
        return bool(group_pids(pgid))


def group_pids(pgid: int) -> set[int]:
    """Live (non-zombie) processes of process group ``pgid``."""
    pids = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # state ppid pgrp ...
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.add(int(entry.name))
    return pids
