"""The step statistics asset feeding the tuning report, and similar past failures from Qdrant as evidence.

Synthetic history in chdb (the session's folder, a database per test) and, where a test wants
it, the same failures in Qdrant local mode (a tmp folder, the hashing embedder): ``fetch`` fails
for good in runs 2 and 5 with a 429 and succeeds in every other run (a retry policy); ``parse``
never succeeds (a KeyError: no retry); ``price`` is a mapped loop step (3 or 5 items per run).
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import dagster as dg
import pytest
import yaml

from noetl_dagster.ai import (NO_RETRY, STEP_STATS_KEY, TUNING_JOB, TUNING_REPORT_KEY, load_profiles,
                              tuning_definitions, tuning_run_config)
from noetl_dagster.io.manager import ArrowRefIOManager
from noetl_dagster.export.clickhouse import ClickHouseResource
from noetl_dagster.export.embedder import EmbedderResource
from noetl_dagster.export.qdrant import QdrantResource
from noetl_dagster.export.mapping import RunSummary, StepFailure, StepRun

PLAYBOOK = "ops/sync"
N_RUNS = 10
FETCH_FAILS = (2, 5)
THROTTLED = "HTTPError: 429 Too Many Requests from the partner gateway (rate limit exceeded)"
MISSING = "KeyError: column 'customer_id' is missing from the input record"
T0 = 1_700_000_000.0


def _t(i: int) -> float:
    return T0 + 600 * i


def _run_id(i: int) -> str:
    return f"{i:02d}" + uuid.uuid5(uuid.NAMESPACE_OID, f"sync-{i}").hex[2:]


def _row(i: int, key: str, status: str, dur_ms: int, error: str = "", tool: str = "python") -> StepRun:
    step = key.split("[")[0]
    return StepRun(execution_id=_run_id(i), step_key=key, attempt=1, playbook_path=PLAYBOOK, domain="ops",
                   job_name="ops__sync", step_name=step, tool_kind=tool, status=status, started_at=_t(i),
                   finished_at=_t(i) + dur_ms / 1000, duration_ms=dur_ms, retries=0, rows=50, bytes=2048,
                   cpu_seconds=dur_ms / 1000 * 0.5, peak_rss_mb=200.0 + i, error_message=error, worker="w1")


def history() -> list[StepRun]:
    rows = []
    for i in range(N_RUNS):
        rows.append(_row(i, "start", "success", 100, tool="noop"))
        if i in FETCH_FAILS:
            rows.append(_row(i, "fetch", "failed", 300, THROTTLED, "http"))
            continue
        rows.append(_row(i, "fetch", "success", 1500, tool="http"))
        rows.extend(_row(i, f"price[i{k:05d}]", "success", 400) for k in range(5 if i >= 7 else 3))
        rows.append(_row(i, "parse", "failed", 200, MISSING))
    return rows


def summaries() -> list[RunSummary]:
    """What the Qdrant export holds for these runs (failures, and which steps succeeded)."""
    out = []
    for i in range(N_RUNS):
        rid, failed = _run_id(i), "fetch" if i in FETCH_FAILS else "parse"
        error, tool = (THROTTLED, "http") if failed == "fetch" else (MISSING, "python")
        steps = {"start": {"status": "success"}, failed: {"status": "failed", "error": error}}
        if failed == "parse":
            steps.update(fetch={"status": "success"}, price={"status": "success"})
        failure = StepFailure(run_id=rid, playbook=PLAYBOOK, domain="ops", step=failed, step_key=failed, tool=tool,
                              attempt=1, error=error, timestamp=_t(i) + 1)
        out.append(RunSummary(run_id=rid, playbook=PLAYBOOK, domain="ops", job_name="ops__sync", status="failure",
                              started_at=_t(i), finished_at=_t(i) + 5, duration_ms=5000, steps=steps,
                              failures=[failure]))
    return out


@pytest.fixture
def clickhouse(chdb_dsn: str) -> ClickHouseResource:
    resource = ClickHouseResource(dsn=chdb_dsn, database=f"ai_assets_{uuid.uuid4().hex[:10]}")
    sink = resource.sink()
    sink.migrate()
    sink.write_step_runs(history())
    return resource


@pytest.fixture
def qdrant(tmp_path: Path) -> tuple[QdrantResource, EmbedderResource]:
    """Qdrant local mode in a folder of this test, holding the runs' failures."""
    resource, embedder = QdrantResource(path=str(tmp_path / "qdrant")), EmbedderResource(kind="hashing")
    resource.sink(embedder.get()).write_runs(summaries())
    return resource, embedder


def materialize(defs: dg.Definitions, auto_approve: bool = False, logs: list[str] | None = None
                ) -> dict[dg.AssetKey, dict]:
    """Run the tuning job; each materialized asset's metadata (``logs`` gets the run's log messages)."""
    with dg.instance_for_test() as instance:
        result = defs.resolve_job_def(TUNING_JOB).execute_in_process(
            run_config=tuning_run_config(auto_approve), instance=instance)
        assert result.success
        if logs is not None:
            logs.extend(e.user_message for e in instance.all_logs(result.run_id))
        events = result.get_asset_materialization_events()
        return {e.asset_key: {k: v.value for k, v in e.materialization.metadata.items()} for e in events}


def test_step_stats_asset_feeds_the_report(clickhouse, tmp_path):
    folder = tmp_path / "tuning"
    defs = dg.Definitions.merge(
        tuning_definitions(profiles=folder, clickhouse=clickhouse),
        dg.Definitions(resources={"io_manager": ArrowRefIOManager(base_uri=str(tmp_path / "data"))}))
    # lineage: stats -> report, both in the tuning job, the stats read from ClickHouse only
    graph = defs.resolve_asset_graph()
    assert graph.get(TUNING_REPORT_KEY).parent_keys == {STEP_STATS_KEY}
    assert defs.resolve_job_def(TUNING_JOB).asset_layer.executable_asset_keys == {STEP_STATS_KEY, TUNING_REPORT_KEY}
    stats_def = defs.resolve_assets_def(STEP_STATS_KEY)
    assert stats_def.required_resource_keys == {"noetl_clickhouse", "io_manager"}
    assert "noetl_clickhouse" not in defs.resolve_assets_def(TUNING_REPORT_KEY).required_resource_keys

    meta = materialize(defs)
    stats = meta[STEP_STATS_KEY]
    assert stats["dagster/row_count"] == 4 and stats["playbooks"] == 1 and stats["runs"] == N_RUNS
    rows = {r.data["step"]: r.data for r in stats["stats"].records}
    assert [c.name for c in stats["stats"].schema.columns][:3] == ["playbook", "step", "runs"]
    fetch, parse, price = rows["fetch"], rows["parse"], rows["price"]
    assert (fetch["runs"], fetch["attempts"], fetch["failure_rate"], fetch["attempt_failure_rate"]) == (10, 10, 0.2, 0.2)
    assert (fetch["intermittent_failures"], fetch["deterministic_failures"], fetch["transient_failures"]) == (2, 0, 0)
    assert fetch["p50_s"] == fetch["p95_s"] == fetch["p99_s"] == 1.5 and fetch["cpu_s_p95"] == 0.75
    assert (fetch["rows_p50"], fetch["bytes_p50"], fetch["loop_items_max"]) == (50, 2048, None)
    assert (parse["runs"], parse["failure_rate"], parse["deterministic_failures"], parse["p50_s"]) == (8, 1.0, 8, None)
    assert parse["peak_mb_max"] == 209.0
    # the mapped loop step: 3 items in runs 0, 1, 3, 4, 6 and 5 in runs 7, 8, 9
    assert (price["runs"], price["attempts"], price["loop_items_p50"], price["loop_items_max"]) == (8, 30, 3, 5)
    assert rows["start"]["failure_rate"] == 0.0 and rows["start"]["loop_items_p50"] is None

    report = meta[TUNING_REPORT_KEY]
    assert report["steps"] == 4 and report["with_similar_failures"] == 0
    assert f"| {PLAYBOOK} | fetch | 10 | 20.0% | 20.0% | 2 | 0 |" in report["report"]
    assert f"| {PLAYBOOK} | parse | retry_policy | no retry |" in report["report"]
    assert "Similar past failures" not in report["report"]  # no Qdrant: no such evidence
    profile = load_profiles(folder)[PLAYBOOK]
    (retry,) = profile.entries("fetch", "retry_policy")
    assert retry.value["max_retries"] >= 1 and "similar_failures" not in retry.evidence
    (no_retry,) = profile.entries("parse", "retry_policy")
    assert no_retry.value == NO_RETRY and "similar_failures" not in no_retry.evidence
    # the stats went to the report through the io_manager (stored once, as the asset's value)
    assert (tmp_path / "data" / "observability" / "step_stats").is_dir()


def test_recommendations_carry_similar_past_failures(clickhouse, qdrant, tmp_path):
    folder = tmp_path / "tuning"
    resource, embedder = qdrant
    defs = tuning_definitions(profiles=folder, clickhouse=clickhouse, qdrant=resource, embedder=embedder)
    assert {"noetl_qdrant", "noetl_embedder"} <= defs.resolve_assets_def(TUNING_REPORT_KEY).required_resource_keys
    report = materialize(defs)[TUNING_REPORT_KEY]
    assert report["with_similar_failures"] == 2

    profile = load_profiles(folder)[PLAYBOOK]
    # fetch: the two 429s, each followed by a run where fetch succeeded -> a retry policy
    (retry,) = profile.entries("fetch", "retry_policy")
    hits = retry.evidence["similar_failures"]
    assert {h["run_id"] for h in hits[:2]} == {_run_id(i) for i in FETCH_FAILS}
    for hit in hits[:2]:
        assert hit["step"] == "fetch" and hit["message"] == THROTTLED and hit["score"] > 0.99
        assert hit["later_succeeded"] is True
    assert {h["run_id"]: h["resolved_by_run"] for h in hits[:2]} == {_run_id(2): _run_id(3), _run_id(5): _run_id(6)}
    # parse: the same KeyError in every run it ran, never followed by a success -> no retry
    (no_retry,) = profile.entries("parse", "retry_policy")
    assert no_retry.value == NO_RETRY
    hits = no_retry.evidence["similar_failures"]
    assert len(hits) == 3 and all(h["step"] == "parse" and h["message"] == MISSING for h in hits)
    assert not any(h["later_succeeded"] for h in hits) and {h["run_id"][:2] for h in hits} <= {"00", "01", "03", "04",
                                                                                               "06", "07", "08", "09"}
    # the report shows them
    text = report["report"]
    assert "### Similar past failures" in text
    assert f"- **{PLAYBOOK} / fetch** (retry_policy: max_retries=" in text
    assert f"run `{_run_id(2)[:8]}` step fetch of {PLAYBOOK} (similarity 1.00): {THROTTLED}" in text
    assert f"a later run `{_run_id(3)[:8]}` of the step succeeded" in text
    assert f"- **{PLAYBOOK} / parse** (retry_policy: no retry)" in text and "no later run of the step succeeded" in text
    # evidence does not make a second pass propose anything new
    assert materialize(defs)[TUNING_REPORT_KEY]["new_recommendations"] == 0
    assert yaml.safe_load((folder / "ops__sync.yaml").read_text())["version"] == 1


def test_unavailable_qdrant_leaves_recommendations_unchanged(clickhouse, tmp_path):
    """Local mode's folder held by another process (as by the export sensors' code server): the
    report logs why, recommends as without Qdrant, and nothing fails."""
    held = tmp_path / "qdrant"
    code = (f"import sys\nfrom qdrant_client import QdrantClient\nc = QdrantClient(path={str(held)!r})\n"
            "print('ready', flush=True)\nsys.stdin.read()")
    holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        folder = tmp_path / "tuning"
        defs = tuning_definitions(profiles=folder, clickhouse=clickhouse, qdrant=QdrantResource(path=str(held)),
                                  embedder=EmbedderResource(kind="hashing"))
        logs: list[str] = []
        report = materialize(defs, logs=logs)[TUNING_REPORT_KEY]
    finally:
        holder.communicate("")
    assert any("Qdrant unavailable" in m and "already accessed by another instance" in m for m in logs)
    assert report["new_recommendations"] >= 2 and report["with_similar_failures"] == 0
    assert "Similar past failures" not in report["report"]
    profile = load_profiles(folder)[PLAYBOOK]
    assert "similar_failures" not in profile.entries("fetch", "retry_policy")[0].evidence
    assert profile.entries("parse", "retry_policy")[0].value == NO_RETRY


def test_empty_qdrant_adds_no_evidence(clickhouse, tmp_path):
    """Qdrant present but nothing indexed yet: the collections are created, no evidence, same recommendations."""
    folder = tmp_path / "tuning"
    defs = tuning_definitions(profiles=folder, clickhouse=clickhouse, qdrant=QdrantResource(path=str(tmp_path / "q")),
                              embedder=EmbedderResource(kind="hashing"))
    report = materialize(defs)[TUNING_REPORT_KEY]
    assert report["with_similar_failures"] == 0 and "Similar past failures" not in report["report"]
    assert f"| {PLAYBOOK} | parse | retry_policy | no retry |" in report["report"]


def test_tune_command_prints_similar_failures(clickhouse, qdrant, tmp_path, monkeypatch, capsys):
    """`noetl-dagster tune --similar-failures` searches the configured Qdrant and prints the same section."""
    from noetl_dagster.cli import main

    resource, _ = qdrant
    monkeypatch.setenv("NOETL_CLICKHOUSE_DSN", clickhouse.dsn)
    monkeypatch.setenv("NOETL_CLICKHOUSE_DATABASE", clickhouse.database)
    monkeypatch.setenv("NOETL_QDRANT_PATH", resource.path)
    monkeypatch.setenv("NOETL_EMBEDDER", "hashing")
    assert main(["tune", "--similar-failures", "--profiles", str(tmp_path / "tuning")]) == 0
    out = capsys.readouterr().out
    assert "### Similar past failures" in out and f"run `{_run_id(2)[:8]}` step fetch of {PLAYBOOK}" in out
    assert main(["tune", "--profiles", str(tmp_path / "plain")]) == 0  # without the flag: no Qdrant
    assert "Similar past failures" not in capsys.readouterr().out
