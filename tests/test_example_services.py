"""playbooks/payments/settle_merchants.yaml against a real Postgres 15 and an FX-rates API on loopback.

The example uses http, postgres and duckdb; without the services it ends on `not_configured`,
which says what to set.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import dagster as dg
import psycopg
import pytest

from conftest import FX_MISSING_DATE, FX_RATES
from noetl_dagster import CredentialsResource, load_playbook, run_playbook
from noetl_dagster.cli import main
from pg import PgServer, pg_server  # noqa: F401  (tests/pg.py; pg_server is a fixture)

PLAYBOOK = load_playbook(Path(__file__).resolve().parent.parent / "playbooks" / "payments" / "settle_merchants.yaml")


def settle(pg_server: PgServer, fx_api: str, **workload):  # type: ignore[no-untyped-def]
    creds = CredentialsResource(use_env=False, credentials={"warehouse": pg_server.fields()})
    return run_playbook(PLAYBOOK, {"fx_api_url": fx_api, "warehouse": "warehouse", **workload},
                        instance=dg.DagsterInstance.ephemeral(), resources={"noetl_credentials": creds},
                        log_level="WARNING")


def rows(pg_server: PgServer, sql: str) -> list[tuple]:
    with psycopg.connect(pg_server.dsn()) as conn:
        return conn.execute(sql).fetchall()


def test_without_services_it_says_what_to_configure() -> None:
    report = run_playbook(PLAYBOOK, instance=dg.DagsterInstance.ephemeral(), log_level="WARNING")
    assert report.status == "success"
    assert report.steps["prepare_warehouse"].status == "skipped"
    message = report.steps["end"].result["message"]
    assert report.steps["end"].result["outcome"] == "not_configured"
    assert "set workload.fx_api_url and workload.warehouse" in message and "NOETL_CREDENTIAL_WAREHOUSE" in message


def test_cli_run_prints_the_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    assert main(["run", PLAYBOOK.file, "--log-level", "WARNING"]) == 0
    out = capsys.readouterr().out
    assert "  skipped  prepare_warehouse" in out
    assert 'result of end: {"outcome": "not_configured", "message": "payments/settle_merchants needs' in out


def test_settles_every_merchant_and_reruns_idempotently(pg_server: PgServer, fx_api: str) -> None:
    schema = f"pay_{uuid.uuid4().hex[:8]}"
    for _ in range(2):  # the second run upserts the same day: same rows, no duplicates
        report = settle(pg_server, fx_api, schema=schema)
        assert report.status == "success", {k: s.error for k, s in report.steps.items() if s.error}
        assert report.steps["end"].result["outcome"] == "settled"
        assert report.steps["hold_for_review"].status == "skipped"
        assert report.steps["fx_unavailable"].status == "skipped"
    # the invalid rate (XX1: -1) is rejected, USD is added
    assert report.steps["normalise_rates"].result["rejected"] == ["XX1"]
    stored = dict(rows(pg_server, f"SELECT currency, usd_rate FROM {schema}.fx_rates"))
    assert stored == {**{k: v for k, v in FX_RATES.items() if v > 0}, "USD": 1.0}
    assert rows(pg_server, f"SELECT count(*) FROM {schema}.captured_payments") == [(240,)]
    settled = rows(pg_server, f"SELECT merchant_id, payments, gross_usd, fee_usd, net_usd "
                              f"FROM {schema}.merchant_settlements ORDER BY merchant_id")
    assert [r[0] for r in settled] == PLAYBOOK.workload["merchants"]
    # recompute the settlement independently from the stored payments and rates
    expected = dict(rows(pg_server, f"""
        SELECT p.merchant_id, round(sum(p.amount_minor / CASE p.currency WHEN 'JPY' THEN 1.0 ELSE 100.0 END
                                        * r.usd_rate)::numeric, 2)::float8
        FROM {schema}.captured_payments p JOIN {schema}.fx_rates r USING (currency)
        GROUP BY p.merchant_id"""))
    chf = rows(pg_server, f"SELECT count(*) FROM {schema}.captured_payments WHERE currency = 'CHF'")[0][0]
    assert 0 < chf < 240 * 0.25  # CHF has no rate: unsettled, below the hold threshold
    assert sum(r[1] for r in settled) == 240 - chf
    for merchant, _, gross, fee, net in settled:
        assert gross == pytest.approx(expected[merchant], abs=0.011)
        assert fee == pytest.approx(gross * 0.029, abs=0.011) and net == pytest.approx(gross - fee, abs=0.011)
    assert report.steps["end"].result["net_usd"] == pytest.approx(sum(r[4] for r in settled), abs=0.05)


def test_too_many_missing_rates_hold_the_day(pg_server: PgServer, fx_api: str) -> None:
    schema = f"pay_{uuid.uuid4().hex[:8]}"
    report = settle(pg_server, fx_api, schema=schema, max_unsettled_ratio=0.05)
    assert report.status == "success"
    held = report.steps["hold_for_review"].result
    assert held["currencies_without_rate"] == ["CHF"] and held["unsettled_ratio"] > 0.05
    assert report.steps["record_settlements"].status == "skipped"
    assert report.steps["end"].result["outcome"] == "held_for_review"
    assert rows(pg_server, f"SELECT count(*) FROM {schema}.merchant_settlements") == [(0,)]


def test_fx_api_without_rates_ends_in_an_error_result_with_its_answer(pg_server: PgServer, fx_api: str) -> None:
    report = settle(pg_server, fx_api, schema=f"pay_{uuid.uuid4().hex[:8]}", settlement_date=FX_MISSING_DATE)
    # NoETL: the 503 and the step that reports it are error results; the run completes with errors
    assert report.status == "success" and set(report.error_steps) == {"fetch_fx_rates", "fx_unavailable"}
    assert report.steps["normalise_rates"].status == "skipped"
    error = report.steps["fx_unavailable"].error
    assert "FX API answered 503" in error and f"no rates published for {FX_MISSING_DATE}" in error


def test_wrong_warehouse_password_names_the_problem_without_the_secret(pg_server: PgServer, fx_api: str) -> None:
    fields = {**pg_server.fields(), "db_password": "Wr0ng-Secret-pw"}
    fields.pop("password", None)
    creds = CredentialsResource(use_env=False, credentials={"warehouse": fields})
    report = run_playbook(PLAYBOOK, {"fx_api_url": fx_api, "warehouse": "warehouse"},
                          instance=dg.DagsterInstance.ephemeral(), resources={"noetl_credentials": creds},
                          log_level="WARNING")
    assert report.status == "failure"
    error = report.steps["prepare_warehouse"].error
    assert "password" in error.lower() and "Wr0ng-Secret-pw" not in error
