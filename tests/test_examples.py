"""The example domain playbooks: valid, loadable by `dagster dev`, and they run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from noetl_dagster import load_playbook_definitions, run_playbook
from noetl_dagster.cli import main

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "playbooks").rglob("*.yaml"))


def test_examples_validate_clean(capsys):
    assert main(["validate", str(ROOT / "playbooks")]) == 0
    assert f"{len(EXAMPLES)} playbook(s) valid" in capsys.readouterr().out


def test_every_domain_is_a_job():
    jobs = {job.name for job in load_playbook_definitions(ROOT / "playbooks", strict=True).jobs}
    assert {"risk__score_application", "healthcare__patient_cohort", "marketing__attribution_model",
            "observability__ingest_traces", "mlops__train_model"} <= jobs


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs(path, instance):
    report = run_playbook(path, instance=instance, log_level="WARNING")
    assert report.status == "success", {k: v for k, v in report.steps.items() if v.status == "failed"}
    assert report.steps["end"].status == "success"
    assert all(s.status in ("success", "skipped") for s in report.steps.values())
    assert sum(s.runs for s in report.steps.values()) >= 8


def test_dagster_definitions_validate(tmp_path):
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path)}
    (tmp_path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    dagster = Path(sys.executable).parent / "dagster"
    proc = subprocess.run([str(dagster), "definitions", "validate", "-f", "definitions.py"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "All code locations passed validation" in proc.stderr + proc.stdout
