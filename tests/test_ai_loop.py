"""The tuning loop end to end, on real runs of the flaky example playbook and real chdb.

``logistics/carrier_tracking`` pulls from a partner gateway that throttles every N-th request
(a request counter in a file: deterministic). With no retry policy, runs 3 and 6 of 6 fail at
``fetch_tracking``. The runs are exported to ClickHouse (the session's chdb folder, a database of
this module's own), the ``observability/tuning_report`` asset proposes a retry policy, a second
pass proposes nothing new, an ``auto_approve`` pass approves it, and the recompiled job
(``TunedTranslator``) absorbs the next 429 with a retry.
"""

import base64
import importlib.util
import struct
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator

import dagster as dg
import pytest
import yaml

from noetl_dagster import build_job, load_playbook, run_playbook
from noetl_dagster.ai import (STEP_STATS_KEY, TUNING_JOB, TUNING_REPORT_KEY, TUNING_SCHEDULE, TunedTranslator,
                              load_profiles, step_stats, tuning_definitions, tuning_run_config)
from noetl_dagster.ai.cli import run_tune
from noetl_dagster.ai.report import PNG_MAGIC
from noetl_dagster.export.clickhouse import ClickHouseResource
from noetl_dagster.export.embedder import EmbedderResource
from noetl_dagster.export.qdrant import QdrantResource
from noetl_dagster.export.sensors import CLICKHOUSE_KEY, EMBEDDER_KEY, QDRANT_KEY
from noetl_dagster.export.cli import run_export

ROOT = Path(__file__).resolve().parent.parent
PLAYBOOK = ROOT / "playbooks" / "logistics" / "carrier_tracking.yaml"
PLAYBOOK_PATH = "logistics/carrier_tracking"
FLAKY = "fetch_tracking"
THROTTLE_EVERY = 3
N_RUNS = 6
#: what the recommender derives from 2 failures in 6 attempts (p = 1/3: p^5 <= 1%)
EXPECTED_RETRY = {"max_retries": 4, "delay": 1.0, "backoff": "exponential"}


def workload(state: Path) -> dict:
    return {"throttle_every": THROTTLE_EVERY, "gateway_state": str(state), "shipments_per_carrier": 5}


def export(instance: dg.DagsterInstance, resource: ClickHouseResource, folder: Path) -> None:
    results = run_export(instance, [resource.sink()], lag_seconds=0, folder=folder)
    assert not results["clickhouse"].error, results["clickhouse"].error
    assert results["clickhouse"].caught_up


@pytest.fixture(scope="module")
def history(chdb_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    """Six runs without a retry policy, exported to a database of this module's own."""
    tmp = tmp_path_factory.mktemp("ai_loop")
    resource = ClickHouseResource(dsn=chdb_dsn, database=f"ai_loop_{uuid.uuid4().hex[:8]}")
    with dg.instance_for_test() as instance:
        reports = [run_playbook(PLAYBOOK, workload(tmp / "gateway"), instance=instance, log_level="CRITICAL")
                   for _ in range(N_RUNS)]
        export(instance, resource, tmp / "cursors")
        yield SimpleNamespace(reports=reports, resource=resource, tmp=tmp, instance=instance)


def materialize(defs: dg.Definitions, auto_approve: bool = False) -> dict:
    """Run the tuning job (in an instance of its own); the report's materialization metadata."""
    with dg.instance_for_test() as instance:
        result = defs.resolve_job_def(TUNING_JOB).execute_in_process(
            run_config=tuning_run_config(auto_approve), instance=instance)
        assert result.success
        (event,) = result.asset_materializations_for_node(TUNING_REPORT_KEY.to_python_identifier())
        assert event.asset_key == TUNING_REPORT_KEY
        return {k: v.value for k, v in event.metadata.items()}


def decode_png(markdown: str) -> bytes:
    prefix = "](data:image/png;base64,"
    assert markdown.startswith("![") and prefix in markdown and markdown.endswith(")")
    return base64.b64decode(markdown.split(prefix, 1)[1][:-1], validate=True)


def test_history_has_intermittent_failures(history):
    # a 429 is an error result (NoETL): the step completes with status `error`, routes to
    # `gateway_throttled` and the run completes
    assert [r.status for r in history.reports] == ["success"] * 6
    assert [r.steps[FLAKY].status for r in history.reports] == ["success", "success", "error"] * 2
    for report in history.reports[2::3]:
        assert "429 Too Many Requests" in report.steps[FLAKY].error
        assert report.steps["gateway_throttled"].status == "success"
        assert report.steps["end"].status == "skipped"
    stats = {s.step: s for s in step_stats(history.resource.sink()) if s.playbook == PLAYBOOK_PATH}
    flaky = stats[FLAKY]
    assert (flaky.runs, flaky.executions, flaky.failed_executions, flaky.successes) == (6, 6, 2, 4)
    assert flaky.intermittent_failures == 2 and flaky.deterministic_failures == 0 and flaky.transient_failures == 0
    assert sorted(flaky.failed_run_ids) == sorted(r.run_id for r in history.reports[2::3])
    # downstream steps ran in the 4 successful runs only (skipped rows do not count)
    assert stats["start"].failure_rate == 0 and stats["normalize_carrier"].runs == 4


def test_report_asset_proposes_then_is_quiet(history, tmp_path):
    folder = tmp_path / "tuning"
    defs = tuning_definitions(profiles=folder, playbooks=ROOT / "playbooks", clickhouse=history.resource)
    schedule = defs.resolve_schedule_def(TUNING_SCHEDULE)
    assert schedule.job_name == TUNING_JOB and schedule.cron_schedule == "0 6 * * *"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    assert defs.resolve_assets_def(TUNING_REPORT_KEY).group_names_by_key[TUNING_REPORT_KEY] == "observability"

    meta = materialize(defs)
    report = meta["report"]
    # the per-step statistics: 6 runs, 2 final failures (33.3%), intermittent, none deterministic
    assert f"| {PLAYBOOK_PATH} | {FLAKY} | 6 | 33.3% | 33.3% | 2 | 0 |" in report
    assert f"| {PLAYBOOK_PATH} | start | 6 | 0.0% | 0.0% | 0 | 0 |" in report
    # the new recommendations: a retry policy for the flaky step only
    assert (f"| {PLAYBOOK_PATH} | {FLAKY} | retry_policy | max_retries=4, delay=1.0s, backoff=exponential |"
            in report)
    assert report.count("| retry_policy |") == 1
    assert meta["auto_approve"] is False and meta["approved"] == 0 and meta["new_recommendations"] >= 1
    assert meta["steps"] == 9 and meta["playbooks"] == 1
    png = decode_png(meta["chart"])
    assert png[:8] == PNG_MAGIC and png[12:16] == b"IHDR"
    width, height = struct.unpack(">II", png[16:24])
    assert width >= 600 and height >= 200 and len(png) > 10_000
    # proposed entries in the profile; the compiled job is unchanged until someone approves
    profile_file = folder / "logistics__carrier_tracking.yaml"
    assert meta["profiles_written"] == [str(profile_file)]
    data = yaml.safe_load(profile_file.read_text())
    assert data["playbook"] == PLAYBOOK_PATH and data["version"] == 1
    assert {e["status"] for es in data["steps"].values() for e in es} == {"proposed"}
    (retry,) = [e for e in data["steps"][FLAKY] if e["parameter"] == "retry_policy"]
    assert retry["value"] == EXPECTED_RETRY and retry["evidence"]["intermittent_failures"] == 2
    assert build_job(load_playbook(PLAYBOOK), TunedTranslator(folder)).graph.node_named(
        FLAKY).definition.retry_policy is None

    # a second materialization on unchanged history proposes nothing new and writes nothing
    before = profile_file.read_text()
    again = materialize(defs)
    assert again["new_recommendations"] == 0 and again["profiles_written"] == []
    assert "nothing new to propose" in again["report"] and f"| {FLAKY} | 6 | 33.3%" in again["report"]
    assert profile_file.read_text() == before


def test_retry_recommendation_is_explained_by_similar_past_failures(history, tmp_path):
    """With the runs also exported to Qdrant (local mode, hashing embedder), the proposed retry
    policy carries the two 429 failures: the first was followed by a run where the step
    succeeded, the last one not (yet)."""
    qdrant, embedder = QdrantResource(path=str(tmp_path / "qdrant")), EmbedderResource(kind="hashing")
    results = run_export(history.instance, [qdrant.sink(embedder.get())], lag_seconds=0, folder=tmp_path / "cursors")
    assert not results["qdrant"].error and results["qdrant"].failures == 2
    folder = tmp_path / "tuning"
    defs = tuning_definitions(profiles=folder, playbooks=ROOT / "playbooks", clickhouse=history.resource,
                              qdrant=qdrant, embedder=embedder)
    meta = materialize(defs)
    assert meta["with_similar_failures"] == 1
    (retry,) = [e for e in load_profiles(folder)[PLAYBOOK_PATH].entries(FLAKY, "retry_policy")]
    assert retry.value == EXPECTED_RETRY
    first, last = history.reports[2], history.reports[5]
    hits = {h["run_id"]: h for h in retry.evidence["similar_failures"] if h["step"] == FLAKY}
    assert set(hits) == {first.run_id, last.run_id}
    assert all("429 Too Many Requests" in h["message"] for h in hits.values())
    assert hits[first.run_id]["later_succeeded"] and hits[first.run_id]["resolved_by_run"] == history.reports[3].run_id
    assert not hits[last.run_id]["later_succeeded"] and hits[last.run_id]["resolved_by_run"] is None
    assert "### Similar past failures" in meta["report"]
    assert f"run `{first.run_id[:8]}` step {FLAKY} of {PLAYBOOK_PATH}" in meta["report"]
    assert f"a later run `{history.reports[3].run_id[:8]}` of the step succeeded" in meta["report"]


def test_loop_closes_failure_absorbed_by_approved_retry(history, tmp_path):
    folder = tmp_path / "tuning"
    defs = tuning_definitions(profiles=folder, playbooks=ROOT / "playbooks", clickhouse=history.resource)
    # approve within bounds (the explicit option), recompile with the approved profile
    meta = materialize(defs, auto_approve=True)
    assert meta["auto_approve"] is True and meta["approved"] >= 1
    assert "approved within bounds" in meta["report"]
    profile = load_profiles(folder)[PLAYBOOK_PATH]
    assert profile.approved(FLAKY, "retry_policy") == EXPECTED_RETRY and profile.version == 1
    tuned = TunedTranslator(folder)
    policy = build_job(load_playbook(PLAYBOOK), tuned).graph.node_named(FLAKY).definition.retry_policy
    assert isinstance(policy, dg.RetryPolicy) and policy.max_retries == 4
    assert policy.delay == 1.0 and policy.backoff == dg.Backoff.EXPONENTIAL

    # run again: the gateway's next request is throttled (9 % 3 == 0), the retry (request 10) succeeds
    state = tmp_path / "gateway"
    state.write_text(str(3 * THROTTLE_EVERY - 1))
    rerun_db = ClickHouseResource(dsn=history.resource.dsn, database=f"ai_rerun_{uuid.uuid4().hex[:8]}")
    with dg.instance_for_test() as instance:
        untuned = run_playbook(PLAYBOOK, workload(state), instance=instance, log_level="CRITICAL")
        assert untuned.steps[FLAKY].status == "error"  # control: request 9
        assert untuned.steps["end"].status == "skipped"
        state.write_text(str(3 * THROTTLE_EVERY - 1))
        report = run_playbook(PLAYBOOK, workload(state), instance=instance, translator=tuned, log_level="CRITICAL")
        assert report.status == "success", {k: v.error for k, v in report.steps.items() if v.error}
        assert report.steps["end"].status == "success" and report.steps["end"].result["fetched"] == 20
        assert state.read_text() == str(3 * THROTTLE_EVERY + 1)
        retries = [e.step_key for e in instance.all_logs(report.run_id, of_type=dg.DagsterEventType.STEP_UP_FOR_RETRY)]
        assert retries == [FLAKY]
        # the retried attempt is in the exported history too: attempt 1 retried, attempt 2 succeeded
        export(instance, rerun_db, tmp_path / "cursors")
    rows = rerun_db.sink().query("SELECT Attempt, Status FROM {db}.step_runs FINAL WHERE ExecutionId = {rid:String} "
                                 "AND StepName = {step:String} ORDER BY Attempt",
                                 {"rid": report.run_id, "step": FLAKY})
    assert [tuple(r) for r in rows] == [(1, "retried"), (2, "success")]
    stats = {s.step: s for s in step_stats(rerun_db.sink())}
    assert stats[FLAKY].transient_failures >= 1 and stats[FLAKY].recovered_executions == 1


def test_definitions_py_has_the_tuning_job_and_schedule():
    spec = importlib.util.spec_from_file_location("noetl_definitions_under_test", ROOT / "definitions.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    defs = module.defs
    assert defs.resolve_job_def(TUNING_JOB).name == TUNING_JOB
    schedule = defs.resolve_schedule_def(TUNING_SCHEDULE)
    assert schedule.job_name == TUNING_JOB and schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    graph = defs.resolve_asset_graph()
    assert graph.get(TUNING_REPORT_KEY).parent_keys == {STEP_STATS_KEY}
    # one resource object each serves the export sensors and the tuning assets (Qdrant: evidence)
    assert defs.resources[CLICKHOUSE_KEY] is module.CLICKHOUSE
    assert defs.resources[QDRANT_KEY] is module.QDRANT and defs.resources[EMBEDDER_KEY] is module.EMBEDDER
    assert {QDRANT_KEY, EMBEDDER_KEY} <= defs.resolve_assets_def(TUNING_REPORT_KEY).required_resource_keys
    assert "logistics__carrier_tracking" in {job.name for job in defs.jobs}


def test_tune_command_prints_the_report_table(history, tmp_path, monkeypatch, capsys):
    """`noetl-dagster tune` prints the asset's markdown (statistics, then new recommendations)."""
    from noetl_dagster.cli import main

    monkeypatch.setenv("NOETL_CLICKHOUSE_DSN", history.resource.dsn)
    monkeypatch.setenv("NOETL_CLICKHOUSE_DATABASE", history.resource.database)
    folder = tmp_path / "tuning"
    assert main(["tune", "--profiles", str(folder), "--playbooks", str(ROOT / "playbooks")]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("### Step statistics")
    assert f"| {PLAYBOOK_PATH} | {FLAKY} | 6 | 33.3% | 33.3% | 2 | 0 |" in out
    assert f"| {PLAYBOOK_PATH} | {FLAKY} | retry_policy | max_retries=4, delay=1.0s, backoff=exponential |" in out
    assert "proposed; wrote" in err and (folder / "logistics__carrier_tracking.yaml").exists()
    assert main(["tune", "--profiles", str(folder)]) == 0  # unchanged history: nothing new
    out, err = capsys.readouterr()
    assert "nothing new to propose" in out and "0 recommendation(s) proposed; wrote nothing" in err


LOOP_PLAYBOOK = """apiVersion: noetl.io/v2
kind: Playbook
metadata:
  name: enrich
  path: ops/enrich
workload:
  ids: 40
workflow:
  - step: start
    tool: {kind: noop}
    next: enrich
  - step: enrich
    loop: {in: "{{ workload.ids }}", iterator: id, spec: {mode: parallel}}
    tool: {kind: python, input: {id: "{{ id }}"}, code: "result = {'id': id, 'code': 'c' + str(id * 7)}"}
    next: end
  - step: end
    tool: {kind: python, input: {rows: "{{ enrich }}"}, code: "result = {'n': len(rows), 'last': rows[-1]['code']}"}
"""


def test_short_loop_items_get_chunked_end_to_end(chdb_dsn, tmp_path):
    """Real runs of a loop of 40 short items -> export -> a chunk size is recommended and approved
    -> the recompiled job runs the loop in chunks, with the same result -> history shows the chunks."""
    (tmp_path / "playbooks").mkdir()
    path = tmp_path / "playbooks" / "enrich.yaml"
    path.write_text(LOOP_PLAYBOOK)
    folder = tmp_path / "tuning"
    resource = ClickHouseResource(dsn=chdb_dsn, database=f"ai_chunks_{uuid.uuid4().hex[:8]}")
    with dg.instance_for_test() as instance:
        plain = [run_playbook(path, instance=instance, log_level="CRITICAL") for _ in range(5)]
        assert all(r.status == "success" and r.steps["enrich"].runs == 40 for r in plain)
        export(instance, resource, tmp_path / "cursors")
        stats = {s.step: s for s in step_stats(resource.sink())}
        assert stats["enrich"].loop_items_p50 == 40 and stats["enrich"].loop_chunk_max == 1
        assert stats["enrich"].item_p50_ms < 500
        added, _ = run_tune(resource.sink(), folder, apply=True, playbooks_dir=tmp_path / "playbooks")
        chunk = next(r for r in added if r.parameter == "loop_chunk_size")
        assert chunk.value == 4 and chunk.evidence["current_chunk_size"] == 1 and len(chunk.evidence["run_ids"]) == 5
        # in process: no concurrency limit to propose (one op at a time anyway)
        assert not [r for r in added if r.parameter == "loop_concurrency"]
        assert load_profiles(folder)["ops/enrich"].approved("enrich", "loop_chunk_size") == 4
        tuned = run_playbook(path, instance=instance, translator=TunedTranslator(folder), log_level="CRITICAL")
        assert tuned.status == "success" and tuned.steps["enrich"].runs == 40
        assert tuned.steps["enrich"].result == plain[0].steps["enrich"].result
        assert tuned.steps["end"].result == plain[0].steps["end"].result == {"n": 40, "last": "c273"}
        keys = {e.step_key for e in instance.all_logs(tuned.run_id, of_type=dg.DagsterEventType.STEP_SUCCESS)}
        assert {k for k in keys if k.startswith("enrich[")} == {f"enrich[i{i:05d}_i{i + 3:05d}]" for i in range(0, 40, 4)}
        export(instance, resource, tmp_path / "cursors")
    rows = resource.sink().query("SELECT count() FROM {db}.step_runs FINAL WHERE ExecutionId = {rid:String} "
                                 "AND StepKey LIKE 'enrich[%'", {"rid": tuned.run_id})
    assert rows[0][0] == 10
    after = {s.step: s for s in step_stats(resource.sink())}["enrich"]
    assert after.loop_items_p50 == 40 and after.loop_items_max == 40 and after.loop_chunk_max == 4
