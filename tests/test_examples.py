"""The example domain playbooks: valid, loadable by `dagster dev`, and they run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from noetl_dagster import CredentialsResource, load_playbook, load_playbook_definitions, run_playbook
from noetl_dagster.cli import main
from noetl_dagster.playbook.loader import product_references
from pg import pg_server  # noqa: F401  (tests/pg.py; pg_server is a fixture)

ROOT = Path(__file__).resolve().parent.parent
# Producers before readers: a playbook that reads products (`metadata.uses`, `product('d/n')`)
# runs after the ones that publish them, against the same instance (see `shared_instance`).
EXAMPLES = sorted((ROOT / "playbooks").rglob("*.yaml"),
                  key=lambda p: (bool(product_references(load_playbook(p))), str(p)))
# The data product each example publishes with the default workload: playbook stem -> asset key.
PRODUCTS = {
    "score_application": ["risk", "application_scores"],
    "attribution_model": ["marketing", "customer_360"],
    "patient_cohort": ["healthcare", "patient_cohort"],
    "campaign_targets": ["marketing", "campaign_targets"],
}


#: examples that reach real services: the workload and resources that point them at the test's own
#: Postgres and FX API (without them they end on `not_configured`, see test_example_services.py)
NEEDS_SERVICES = {"settle_merchants"}


def _services(request: pytest.FixtureRequest) -> tuple[dict, dict]:
    pg, fx_api = request.getfixturevalue("pg_server"), request.getfixturevalue("fx_api")
    creds = CredentialsResource(use_env=False, credentials={"warehouse": pg.fields()})
    return {"fx_api_url": fx_api, "warehouse": "warehouse"}, {"noetl_credentials": creds}


def test_examples_validate_clean(capsys):
    assert main(["validate", str(ROOT / "playbooks")]) == 0
    assert f"{len(EXAMPLES)} playbook(s) valid" in capsys.readouterr().out


def test_every_domain_is_a_job():
    jobs = {job.name for job in load_playbook_definitions(ROOT / "playbooks", strict=True).jobs}
    assert {"risk__score_application", "healthcare__patient_cohort", "marketing__attribution_model",
            "observability__ingest_traces", "mlops__train_model"} <= jobs


@pytest.fixture(scope="module")
def shared_instance():
    """One persistent instance for the module: product('d/n') reads what an earlier run stored."""
    with dg.instance_for_test() as inst:
        yield inst


def test_readers_run_after_producers():
    order = [p.stem for p in EXAMPLES]
    assert order.index("score_application") < order.index("campaign_targets")
    assert "risk/application_scores" in product_references(load_playbook(ROOT / "playbooks" / "marketing" /
                                                                         "campaign_targets.yaml"))


@pytest.mark.xdist_group("examples")  # keep producers and readers on one worker under `--dist loadgroup`
@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs(path, shared_instance, request):
    instance = shared_instance
    workload, resources = _services(request) if path.stem in NEEDS_SERVICES else ({}, None)
    report = run_playbook(path, workload, instance=instance, log_level="WARNING", resources=resources)
    assert report.status == "success", {k: v.error for k, v in report.steps.items() if v.status == "failed"}
    assert report.steps["end"].status == "success"
    assert all(s.status in ("success", "skipped") for s in report.steps.values())
    assert sum(s.runs for s in report.steps.values()) >= (4 if path.stem == "campaign_targets" else 8)
    if path.stem not in PRODUCTS:
        return
    key = dg.AssetKey(PRODUCTS[path.stem])
    event = instance.get_latest_materialization_event(key)
    assert event is not None, f"{key.to_user_string()} was not materialized"
    assert event.run_id == report.run_id
    evaluations = {}
    for record in instance.all_logs(report.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION):
        data = record.dagster_event.event_specific_data
        assert data.asset_key == key
        evaluations[data.check_name] = data
    kinds = {next(k for k in ("columns", "not_null", "unique", "row_count", "") if name.startswith(k))
             for name in evaluations}
    assert {"columns", "not_null", "unique", "row_count"} <= kinds, sorted(evaluations)
    failed = {name: dict(data.metadata) for name, data in evaluations.items() if not data.passed}
    assert not failed, failed


def test_dagster_definitions_validate(tmp_path):
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path)}
    (tmp_path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    dagster = Path(sys.executable).parent / "dagster"
    proc = subprocess.run([str(dagster), "definitions", "validate", "-f", "definitions.py"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "All code locations passed validation" in proc.stderr + proc.stdout
