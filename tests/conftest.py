"""Shared fixtures: a real HTTP server on loopback, an ephemeral Dagster instance."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import dagster as dg
import pytest

ROOT = Path(__file__).resolve().parent.parent


class _ItemsHandler(BaseHTTPRequestHandler):
    """The conformance harness server: GET /items -> {"items": [1, 2, 3]}, else 404."""

    def do_GET(self) -> None:  # noqa: N802
        if self.path == "/items":
            body = json.dumps({"items": [1, 2, 3]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
        else:
            body = b'{"error": "not found"}'
            self.send_response(404)
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="session")
def items_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ItemsHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as inst:
        yield inst


@pytest.fixture(scope="session")
def chdb_dsn(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The one chdb folder of the test session (chdb allows a single data folder per process)."""
    return f"chdb://{tmp_path_factory.mktemp('chdb')}"
