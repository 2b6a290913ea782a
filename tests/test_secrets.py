"""Secrets never leak: a keychain value, plain, upper/lower-cased, base64 or URL-quoted, is in no
result, no event, no file under ``noetl_data``, no ClickHouse row and no Qdrant payload.

One playbook hands a keychain token to every tool kind that can echo it (python, shell, http
with an unusual header name and a URL query, noop, a DuckDB product table in Arrow form, `set:`
into ctx, a failing step whose message holds it) and the run is exported to ClickHouse (chdb)
and Qdrant (local, in memory). Everything is then searched byte by byte for every encoding.
"""

from __future__ import annotations

import base64
import json
import textwrap
import uuid
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Iterator
from urllib.parse import quote, quote_plus

import dagster as dg
import pytest

from conftest import _serve
from noetl_dagster import run_playbook
from noetl_dagster.export.clickhouse import ClickHouseSink, get_client
from noetl_dagster.core.templates import TemplateFailure

PLAYBOOK = """
apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: leak, path: sec/leak}
keychain:
  - {name: vault, kind: credential, credential: vault}
workload: {echo: ""}
workflow:
  - step: start
    tool: {kind: noop}
    next: py
  - step: py
    tool:
      kind: python
      input: {t: "{{ keychain.vault.token }}"}
      code: |
        import base64, urllib.parse
        result = {"plain": t, "upper": t.upper(), "lower": t.lower(), "title": t.title(),
                  "b64": base64.b64encode(t.encode()).decode(),
                  "b64_inside": base64.b64encode(("user:" + t).encode()).decode(),
                  "b64_url": base64.urlsafe_b64encode(t.encode()).decode().rstrip("="),
                  "url": urllib.parse.quote(t, safe=""), "url_plus": urllib.parse.quote_plus(t)}
    set: {leaked_ctx: "{{ keychain.vault.token | upper }}"}
    next: sh
  - step: sh
    tool:
      kind: shell
      command: |
        echo {{ keychain.vault.token }}
        echo '{{ keychain.vault.token }}' | tr a-z A-Z
        printf %s "{{ keychain.vault.token }}" | base64
    next: http
  - step: http
    tool:
      kind: http
      method: GET
      url: "{{ workload.echo }}/echo?k={{ keychain.vault.token | urlencode }}"
      headers: {X-Odd-Name: "{{ keychain.vault.token }}", X-Upper: "{{ keychain.vault.token | upper }}"}
    next: noop
  - step: noop
    tool:
      kind: noop
      result: {b64: "{{ keychain.vault.token | b64encode }}", u: "{{ keychain.vault.token | upper }}"}
    next: table
  - step: table
    tool:
      kind: duckdb
      format: arrow
      query: >
        SELECT '{{ keychain.vault.token }}' AS s, upper('{{ keychain.vault.token }}') AS u,
               to_base64(encode('{{ keychain.vault.token }}')) AS b
    product: {name: leak_table, kind: table}
    next: boom
  - step: boom
    tool:
      kind: python
      input: {t: "{{ keychain.vault.token }}"}
      code: |
        raise ValueError("bad token " + t.upper())
"""


class _Echo(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        body = json.dumps({"path": self.path, "headers": dict(self.headers)}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-Echo", self.headers.get("X-Odd-Name", ""))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def echo_server() -> Iterator[str]:
    yield from _serve(_Echo)


def encodings(secret: str) -> dict[str, str]:
    forms = {"plain": secret, "upper": secret.upper(), "lower": secret.lower(),
             "b64": base64.b64encode(secret.encode()).decode(),
             "b64_url": base64.urlsafe_b64encode(secret.encode()).decode().rstrip("="),
             "url": quote(secret, safe=""), "url_plus": quote_plus(secret)}
    # the part of base64("user:" + secret) that only depends on the secret
    inside = base64.b64encode(("user:" + secret).encode()).decode()
    forms["b64_inside"] = inside[8:-4]
    return forms


def leaks(blob: bytes | str, secret: str) -> list[str]:
    data = blob if isinstance(blob, bytes) else blob.encode()
    return [name for name, form in encodings(secret).items() if form.encode() in data]


def test_a_keychain_value_never_leaks(echo_server: str, chdb_dsn: str, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from qdrant_client import QdrantClient

    from noetl_dagster.export.embedder import HashingEmbedder
    from noetl_dagster.export.qdrant import QdrantSink
    from noetl_dagster.export.sensors import ExportCursor, Exporter

    secret = "Sk/" + uuid.uuid4().hex[:20] + "+Qz=w"
    monkeypatch.setenv("NOETL_CREDENTIAL_VAULT__TOKEN", secret)
    file = tmp_path / "sec" / "leak.yaml"
    file.parent.mkdir()
    file.write_text(PLAYBOOK)
    (tmp_path / "home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "home")) as instance:
        report = run_playbook(file, {"echo": echo_server}, instance=instance, log_level="DEBUG")
        steps = report.steps
        # the tools really ran and really saw the secret (masked afterwards)
        assert steps["py"].status == "success" and steps["py"].result["plain"] == "***"
        assert steps["py"].result["upper"] == "***" and steps["py"].result["b64_inside"].startswith("dXNlcj")
        assert steps["sh"].result["stdout"].splitlines()[:2] == ["***", "***"]
        assert steps["http"].result["status_code"] == 200
        assert steps["table"].status == "success"
        assert steps["boom"].status == "error" and "bad token ***" in steps["boom"].error
        assert not leaks(report.to_json(), secret), "run report"

        # the event log and every file under DAGSTER_HOME (sqlite storage, noetl_data, logs)
        records = instance.get_records_for_run(report.run_id).records
        assert not leaks(repr([r.event_log_entry for r in records]), secret), "event log"
        data = Path(instance.root_directory) / "noetl_data"
        assert any(p.is_file() for p in data.rglob("*")), "the asset job stored its outputs"
        for path in Path(instance.root_directory).rglob("*"):
            if path.is_file():
                assert not leaks(path.read_bytes(), secret), f"{path}"

        ch = ClickHouseSink(get_client(chdb_dsn), database=f"t_{uuid.uuid4().hex[:10]}")
        Exporter(instance, ch).export(ExportCursor())
        rows = ch.query("SELECT * FROM {db}.noetl_events FINAL") + ch.query("SELECT * FROM {db}.step_runs FINAL")
        assert len(rows) > 10 and not leaks(repr(rows), secret), "ClickHouse rows"

        client = QdrantClient(location=":memory:")
        Exporter(instance, QdrantSink(client, HashingEmbedder())).export(ExportCursor())
        payloads = []
        for collection in client.get_collections().collections:
            points, _ = client.scroll(collection.name, limit=10_000, with_payload=True)
            payloads += [p.payload for p in points]
        client.close()
        assert payloads and not leaks(repr(payloads), secret), "Qdrant payloads"


@pytest.mark.parametrize("template, message", [
    ("{{ keychain | tojson }}", "cannot be listed or serialised"),
    ("{{ keychain }}", "cannot be listed or serialised"),
    ("x{% for k in keychain %}{{ k }}{% endfor %}", "not iterable"),
    ("{{ debug() }}", "unknown function"),
    ("{% include keychain.vault.token %}", "template"),
])
def test_templates_cannot_dump_the_keychain(template: str, message: str, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "Dump-" + uuid.uuid4().hex
    monkeypatch.setenv("NOETL_CREDENTIAL_VAULT__TOKEN", secret)
    file = tmp_path / "sec" / "dump.yaml"
    file.parent.mkdir()
    file.write_text(textwrap.dedent(f"""
        apiVersion: noetl.io/v2
        kind: Playbook
        metadata: {{name: dump, path: sec/dump}}
        keychain:
          - {{name: vault, kind: credential, credential: vault}}
        workflow:
          - step: start
            tool: {{kind: noop, result: {{x: "{{{{ keychain.vault.token }}}}"}}}}
            next: dump
          - step: dump
            tool: {{kind: noop, result: {{x: {json.dumps(template)}}}}}
        """))
    with dg.instance_for_test() as instance:
        report = run_playbook(file, {}, instance=instance, log_level="CRITICAL")
        records = instance.get_records_for_run(report.run_id).records
    assert report.steps["dump"].status == "failed"
    assert message in report.steps["dump"].error
    assert not leaks(report.to_json(), secret) and not leaks(repr(records), secret)


def test_masking_covers_encodings_and_arrow_tables() -> None:
    import pyarrow as pa

    from noetl_dagster.core.secrets import redact, redact_value, register_secret

    secret = "Mask-" + uuid.uuid4().hex[:12] + "/+"
    register_secret(secret)
    whole = {"b64_inside": base64.b64encode(("user:" + secret).encode()).decode()}
    for name, form in encodings(secret).items():
        assert form not in redact(f"<{whole.get(name, form)}>"), name
    table = pa.table({"s": [secret.upper(), "fine"], "n": [1, 2]})
    masked = redact_value({"t": table, "rows": [{"v": secret.lower()}]})
    assert masked["t"].column("s").to_pylist() == ["***", "fine"] and masked["rows"] == [{"v": "***"}]
    clean = {"a": [1, "x"]}
    assert redact_value(clean) is clean  # nothing to mask: the same object, no copy


def test_template_errors_never_quote_values() -> None:
    from noetl_dagster.core.secrets import register_secret
    from noetl_dagster.core.templates import render_text

    secret = "Quote-" + uuid.uuid4().hex
    register_secret(secret)
    for template in ("{% include s %}", "{{ s + 1 }}", "{{ s | nosuchfilter }}", "{{ s.x.y() }}"):
        with pytest.raises(TemplateFailure) as info:
            render_text(template, {"s": secret})
        assert secret not in str(info.value), template
