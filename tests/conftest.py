"""Shared fixtures: a real HTTP server on loopback, an ephemeral Dagster instance."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator
from urllib.parse import parse_qs, urlsplit

import dagster as dg
import pytest

ROOT = Path(__file__).resolve().parent.parent


class _JsonHandler(BaseHTTPRequestHandler):
    """A JSON API on loopback: subclasses answer ``route(path, query) -> (status, data)``."""

    def route(self, path: str, query: dict[str, list[str]]) -> tuple[int, object]:
        raise NotImplementedError

    def do_GET(self) -> None:  # noqa: N802
        url = urlsplit(self.path)
        status, data = self.route(url.path, parse_qs(url.query))
        body = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class _ItemsHandler(_JsonHandler):
    """The conformance harness server: GET /items -> {"items": [1, 2, 3]}, else 404."""

    def route(self, path: str, query: dict[str, list[str]]) -> tuple[int, object]:
        return (200, {"items": [1, 2, 3]}) if path == "/items" else (404, {"error": "not found"})


#: what the FX-rates API answers (USD value of one unit); CHF is deliberately missing
FX_RATES = {"EUR": 1.0825, "GBP": 1.2710, "JPY": 0.00667, "CAD": 0.7312, "XX1": -1}
#: a date the FX API has no rates for (it answers 503)
FX_MISSING_DATE = "1999-01-01"


class _FxHandler(_JsonHandler):
    """GET /rates?base=USD&date=YYYY-MM-DD -> {"base", "date", "rates"}; 503 for FX_MISSING_DATE."""

    def route(self, path: str, query: dict[str, list[str]]) -> tuple[int, object]:
        date = query.get("date", [""])[0]
        if path != "/rates" or query.get("base") != ["USD"]:
            return 404, {"error": "not found"}
        if date == FX_MISSING_DATE:
            return 503, {"error": f"no rates published for {date}"}
        return 200, {"base": "USD", "date": date, "rates": FX_RATES}


def _serve(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


@pytest.fixture(scope="session")
def items_server() -> Iterator[str]:
    yield from _serve(_ItemsHandler)


@pytest.fixture(scope="session")
def fx_api() -> Iterator[str]:
    """An FX-rates API on loopback for playbooks/payments/settle_merchants.yaml."""
    yield from _serve(_FxHandler)


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as inst:
        yield inst


@pytest.fixture(scope="session")
def chdb_dsn(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The one chdb folder of the test session (chdb allows a single data folder per process)."""
    return f"chdb://{tmp_path_factory.mktemp('chdb')}"


@pytest.fixture(scope="session")
def dagster_dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator["DagsterDev"]:
    """One ``dagster dev``, started as ``make dev`` starts it, for every test of the session."""
    from devserver import DagsterDev, free_port

    home = tmp_path_factory.mktemp("dagster_home")
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    dev = DagsterDev(home, free_port(), home.parent / "dagster_dev.log")
    try:
        dev.start()
        yield dev
    finally:
        dev.stop()
