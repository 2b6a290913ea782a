"""Issue 3's end-to-end: http -> transform (python) -> postgres upsert -> duckdb query -> route."""

from __future__ import annotations

import uuid

import dagster as dg

from noetl_dagster import CredentialsResource, run_playbook
from noetl_dagster.playbook.loader import parse_text
from pg import PgServer, pg_server  # noqa: F401  (tests/pg.py; pg_server is a fixture)

PLAYBOOK = """apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: items_sync, path: ops/items_sync}
workload: {base_url: "http://127.0.0.1:1", table: items, threshold: 5}
workflow:
  - step: start
    tool:
      kind: postgres
      auth: warehouse
      query: CREATE TABLE IF NOT EXISTS {{ table | sql_identifier }} (id int PRIMARY KEY, value int)
    next: fetch
  - step: fetch
    tool: {kind: http, method: GET, url: "{{ base_url }}/items"}
    next:
      spec: {mode: exclusive}
      arcs:
        - {step: transform, when: "{{ output.status_code == 200 }}"}
        - {step: http_failed}
  - step: transform
    tool:
      kind: python
      input: {items: "{{ fetch.data.items }}"}
      code: |
        result = {"rows": [{"id": i, "value": v * v} for i, v in enumerate(items)]}
    next: upsert
  - step: upsert
    loop: {in: "{{ transform.rows }}", iterator: row}
    tool:
      kind: postgres
      auth: warehouse
      query: |
        INSERT INTO {{ table | sql_identifier }} (id, value) VALUES ($1, $2)
        ON CONFLICT (id) DO UPDATE SET value = EXCLUDED.value
      params: ["{{ row.id }}", "{{ row.value }}"]
    next: read_back
  - step: read_back
    tool:
      kind: postgres
      auth: warehouse
      query: SELECT id, value FROM {{ table | sql_identifier }} ORDER BY id
    next: analyse
  - step: analyse
    tool:
      kind: duckdb
      query: SELECT sum(value) AS total, count(*) AS n FROM rows_in
      tables: {rows_in: "{{ read_back.rows }}"}
    next:
      spec: {mode: exclusive}
      arcs:
        - {step: big, when: "{{ output.rows[0].total > threshold }}"}
        - {step: small}
  - step: big
    tool: {kind: noop, result: {route: big, total: "{{ analyse.rows[0].total }}"}}
  - step: small
    tool: {kind: noop, result: {route: small}}
  - step: http_failed
    tool: {kind: noop}
"""


def test_http_python_postgres_upsert_duckdb_route(pg_server: PgServer, items_server: str) -> None:
    table = f"items_{uuid.uuid4().hex[:8]}"
    creds = CredentialsResource(credentials={"warehouse": pg_server.fields()}, use_env=False)
    playbook = parse_text(PLAYBOOK, "items_sync.yaml")
    for _ in range(2):  # the second run upserts the same keys: no duplicates
        report = run_playbook(playbook, {"base_url": items_server, "table": table},
                              instance=dg.DagsterInstance.ephemeral(), resources={"noetl_credentials": creds})
        assert report.status == "success", {k: v.error for k, v in report.steps.items() if v.error}
        assert report.steps["upsert"].runs == 3
        assert report.steps["read_back"].result["rows"] == [{"id": 0, "value": 1}, {"id": 1, "value": 4},
                                                             {"id": 2, "value": 9}]
        assert report.steps["big"].result == {"route": "big", "total": 14}
        assert report.steps["small"].status == "skipped" and report.steps["http_failed"].status == "skipped"
    assert pg_server.password not in report.to_json()
