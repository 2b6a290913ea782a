"""AI tuning on synthetic run history in chdb's ``step_runs`` (created by the package's own migration).

chdb allows one data folder per process: the session-wide ``chdb_dsn`` fixture (tests/conftest.py)
is shared by every module; every test gets its own database.
"""

from __future__ import annotations

import json
import logging
import random
import time
import uuid

import dagster as dg
import pytest
import yaml

from noetl_dagster import PlaybookTranslator, build_job, run_playbook
from noetl_dagster.ai import (NO_RETRY, TIMEOUT_TAG, ProfileEntry, TunedTranslator, TuningBounds, TuningProfile,
                              apply_recommendations, load_profiles, markdown_table, recommend, save_profile,
                              step_stats)
from noetl_dagster.ai.cli import add_commands, run_tune
from noetl_dagster.ai.profiles import load_profile
from noetl_dagster.ai.recommend import parse_cpu, parse_memory_mb
from noetl_dagster.playbook.loader import parse_text
from noetl_dagster.export import clickhouse as ch
from noetl_dagster.export.clickhouse import ClickHouseSink
from noetl_dagster.export.mapping import StepRun

PLAYBOOK_PATH = "risk/tuned"
PLAYBOOK = """apiVersion: noetl.io/v2
kind: Playbook
metadata:
  name: tuned
  path: risk/tuned
workflow:
  - step: start
    tool: {kind: noop}
    next: flaky
  - step: flaky
    tool: {kind: noop}
    next: broken
  - step: broken
    tool: {kind: noop}
    next: big
  - step: big
    hardware: {cpu: "4", memory: 8Gi, node_selector: {pool: big}}
    tool: {kind: noop}
    next: slow
  - step: slow
    tool: {kind: noop}
    next: end
  - step: end
    tool: {kind: noop}
"""
DECLARED = {(PLAYBOOK_PATH, "big"): {"cpu": "4", "memory": "8Gi"}}
N_RUNS = 40


def _row(rid: str, step: str, attempt: int, status: str, dur_ms: int, cpu: float, mem: float, t: float) -> StepRun:
    return StepRun(execution_id=rid, step_key=step, attempt=attempt, playbook_path=PLAYBOOK_PATH, domain="risk",
                   job_name="risk__tuned", step_name=step, tool_kind="noop", status=status, started_at=t,
                   finished_at=t + dur_ms / 1000, duration_ms=dur_ms, retries=attempt - 1, rows=100, bytes=4096,
                   cpu_seconds=cpu, peak_rss_mb=mem, error_message="boom" if status != "success" else "",
                   worker="w1")


def synthetic_history(seed: int = 7) -> list[StepRun]:
    """flaky: ~30% of attempts fail and succeed on retry; broken: always fails (retries exhausted);
    big: 1 GB peak of an 8 GB request; slow: a long duration tail."""
    rnd = random.Random(seed)
    rows: list[StepRun] = []
    t = 1_700_000_000.0
    for i in range(N_RUNS):
        rid = f"run-{i:03d}"
        t += 60
        rows.append(_row(rid, "start", 1, "success", 100, 0.05, 80, t))
        attempt = 1
        while attempt < 4 and rnd.random() < 0.3:
            rows.append(_row(rid, "flaky", attempt, "retried", 200, 0.1, 90, t))
            attempt += 1
        rows.append(_row(rid, "flaky", attempt, "success", 1000, 0.5, 100, t))
        if i % 4 == 0:  # broken runs in a quarter of the runs here, and never succeeds
            rows.append(_row(rid, "broken", 1, "retried", 50, 0.01, 60, t))
            rows.append(_row(rid, "broken", 2, "failed", 50, 0.01, 60, t))
        rows.append(_row(rid, "big", 1, "success", 10_000, 5.0, 900 + rnd.random() * 124, t))  # <= ~1 GB
        slow_ms = 120_000 if i in (3, 17) else 2_000 + rnd.randint(0, 500)
        rows.append(_row(rid, "slow", 1, "success", slow_ms, slow_ms / 1000 * 0.2, 200, t))
    return rows


def history_sink(chdb_dsn: str, *batches: list) -> ClickHouseSink:
    """A sink on a fresh database of the session's chdb holding ``batches`` of step runs."""
    s = ClickHouseSink(ch.get_client(chdb_dsn), database=f"ai_{uuid.uuid4().hex[:10]}")
    s.migrate()
    for batch in batches:
        s.write_step_runs(batch)
    return s


@pytest.fixture
def sink(chdb_dsn: str) -> ClickHouseSink:
    return history_sink(chdb_dsn, synthetic_history(), synthetic_history()[:20])  # a replayed batch collapses


def by_key(recs):
    return {(r.step, r.parameter): r for r in recs}


def test_step_stats_from_clickhouse(sink):
    stats = {s.step: s for s in step_stats(sink)}
    assert set(stats) == {"start", "flaky", "broken", "big", "slow"}
    flaky, broken, big, slow = stats["flaky"], stats["broken"], stats["big"], stats["slow"]
    assert flaky.runs == N_RUNS and flaky.failed_executions == 0 and flaky.transient_failures > 0
    assert flaky.recovered_executions > 0 and flaky.transient_run_ids
    assert 0.15 < flaky.attempt_failure_rate < 0.4
    assert broken.runs == N_RUNS // 4 and broken.failure_rate == 1.0 and broken.successes == 0
    assert broken.deterministic_failures == N_RUNS // 4 and broken.transient_failures == 0
    assert broken.failed_run_ids[0] == "run-000"
    assert 900 <= big.peak_mb_p99 <= 1024 and big.cores_p95 == pytest.approx(0.5)
    assert slow.p50_ms < 3000 and slow.p99_ms > 100_000 and slow.tail_ratio > 30
    assert stats["start"].rows_p50 == 100 and stats["start"].bytes_max == 4096
    assert broken.last_error == "boom" and broken.tool == "noop" and stats["start"].last_error == ""
    assert stats["start"].loop_items_max is None  # no mapped step keys


def test_recommendations_match_history_and_bounds(sink):
    bounds = TuningBounds()
    recs = by_key(recommend(step_stats(sink), bounds, None, DECLARED))
    # transient -> a retry policy; deterministic -> none
    retry = recs[("flaky", "retry_policy")]
    assert bounds.retry_min_retries <= retry.value["max_retries"] <= bounds.retry_max_retries
    assert retry.value["max_retries"] >= 3 and retry.value["backoff"] == "exponential" and retry.value["delay"] == 1.0
    assert retry.evidence["transient_failures"] > 0 and retry.evidence["run_ids"] and "final failure rate" in retry.expected_effect
    assert ("start", "retry_policy") not in recs
    # deterministic -> explicitly no retry, with the failed runs as evidence
    broken = recs[("broken", "retry_policy")]
    assert broken.value == NO_RETRY and broken.summary() == "no retry" and "deterministic" in broken.flags
    assert broken.within_bounds and broken.evidence["run_ids"][0] == "run-000" and "fix the cause" in broken.expected_effect
    assert ("slow", "retry_policy") not in recs
    # over-provisioned: 1 GB of 8 GB -> cheaper hardware, bounded to 4x change, never below the floor
    big = recs[("big", "resources")]
    assert "cheaper_hardware_candidate" in big.flags and big.evidence["over_provisioned"]
    mem = parse_memory_mb(big.value["requests"]["memory"])
    assert mem == 8192 / bounds.max_change_factor
    assert mem >= big.evidence["peak_mb_p99"] * bounds.memory_headroom
    assert parse_memory_mb(big.value["limits"]["memory"]) >= mem
    assert parse_cpu(big.value["requests"]["cpu"]) == 1.0  # 4 cores / 4x (observed 0.5 x 1.5 = 0.75)
    # long tail -> timeout from p99 x headroom, within bounds
    slow = recs[("slow", "timeout_seconds")]
    assert slow.value == 240 and "long_tail" in slow.flags
    for r in recs.values():
        if r.parameter == "timeout_seconds":
            assert bounds.timeout_min_seconds <= r.value <= bounds.timeout_max_seconds
        if r.parameter == "resources":
            m = parse_memory_mb(r.value["requests"]["memory"])
            assert m >= bounds.memory_floor_mb(r.evidence["peak_mb_p99"]) and m <= bounds.memory_max_mb
            assert bounds.cpu_min_cores <= parse_cpu(r.value["requests"]["cpu"]) <= bounds.cpu_max_cores
    table = markdown_table(list(recs.values()))
    assert table.startswith("| playbook | step |") and "flaky" in table


def test_tight_bounds_are_respected(sink):
    bounds = TuningBounds(retry_max_retries=1, timeout_max_seconds=60, max_change_factor=2.0)
    recs = by_key(recommend(step_stats(sink), bounds, None, DECLARED))
    assert recs[("flaky", "retry_policy")].value["max_retries"] == 1
    assert not recs[("flaky", "retry_policy")].within_bounds  # wanted more: needs review, no auto-approve
    assert recs[("slow", "timeout_seconds")].value == 60 and not recs[("slow", "timeout_seconds")].within_bounds
    assert parse_memory_mb(recs[("big", "resources")].value["requests"]["memory"]) == 4096
    # the memory floor beats the change bound
    bounds = TuningBounds(max_change_factor=100.0)
    big = by_key(recommend(step_stats(sink), bounds, None, DECLARED))[("big", "resources")]
    assert parse_memory_mb(big.value["requests"]["memory"]) == bounds.memory_floor_mb(big.evidence["peak_mb_p99"])


def test_loop_closes_at_compile_time_and_second_pass_is_quiet(sink, tmp_path):
    folder = tmp_path / "tuning"
    playbook = parse_text(PLAYBOOK, str(tmp_path / "tuned.yaml"))
    # 1. propose: profile written, the compiled job unchanged
    added, written = run_tune(sink, folder)
    assert added and written == [folder / "risk__tuned.yaml"]
    data = yaml.safe_load(written[0].read_text())
    assert data["playbook"] == PLAYBOOK_PATH and data["version"] == 1
    assert {e["status"] for es in data["steps"].values() for e in es} == {"proposed"}
    job = build_job(playbook, TunedTranslator(folder))
    assert job.graph.node_named("flaky").definition.retry_policy is None
    assert TIMEOUT_TAG not in job.graph.node_named("slow").definition.tags
    # 2. a second pass on unchanged history proposes nothing new
    assert run_tune(sink, folder) == ([], [])
    assert yaml.safe_load(written[0].read_text())["version"] == 1
    # 3. approve (auto_approve within bounds) -> retry policy, timeout tag and k8s resources compiled in
    profiles = load_profiles(folder)
    recs = recommend(step_stats(sink), TuningBounds(), {}, DECLARED)
    assert apply_recommendations(profiles, recs, auto_approve=True)
    save_profile(profiles[PLAYBOOK_PATH], folder)
    job = build_job(playbook, TunedTranslator(folder))
    policy = job.graph.node_named("flaky").definition.retry_policy
    flaky = by_key(recs)[("flaky", "retry_policy")].value
    assert isinstance(policy, dg.RetryPolicy) and policy.max_retries == flaky["max_retries"]
    assert policy.delay == 1.0 and policy.backoff == dg.Backoff.EXPONENTIAL
    assert job.graph.node_named("broken").definition.retry_policy is None
    assert job.graph.node_named("slow").definition.tags[TIMEOUT_TAG] == "240"
    k8s = json.loads(job.graph.node_named("big").definition.tags["dagster-k8s/config"])
    assert k8s["container_config"]["resources"]["requests"] == {"cpu": "1000m", "memory": "2048Mi"}
    assert k8s["pod_spec_config"] == {"node_selector": {"pool": "big"}}  # declared config kept
    # a plain translator ignores profiles
    assert build_job(playbook).graph.node_named("flaky").definition.retry_policy is None
    # 4. after approval, unchanged history re-proposes nothing for retries/timeouts; memory converges
    again = by_key(recommend(step_stats(sink), TuningBounds(), load_profiles(folder), DECLARED))
    assert ("flaky", "retry_policy") not in again and ("slow", "timeout_seconds") not in again
    if ("big", "resources") in again:  # next 4x step toward the floor, never below it
        nxt = again[("big", "resources")]
        assert nxt.evidence["current_memory_mb"] == 2048
        assert parse_memory_mb(nxt.value["requests"]["memory"]) >= TuningBounds().memory_floor_mb(nxt.evidence["peak_mb_p99"])


def test_malformed_profile_is_ignored_with_a_clear_log(tmp_path, caplog):
    folder = tmp_path / "tuning"
    folder.mkdir()
    (folder / "risk__bad.yaml").write_text("playbook: risk/bad\nversion: 1\nsteps:\n  a:\n    - {parameter: nope, value: 1}\n")
    (folder / "risk__broken_yaml.yaml").write_text("playbook: [unclosed\n")
    (folder / "risk__tuned.yaml").write_text(yaml.safe_dump({"playbook": PLAYBOOK_PATH, "version": 2, "steps": {
        "flaky": [{"parameter": "retry_policy", "value": {"max_retries": 2, "delay": 0.5, "backoff": "linear"},
                   "status": "approved", "evidence": {}, "expected_effect": ""}]}}))
    with caplog.at_level(logging.ERROR, logger="noetl_dagster.ai"):
        profiles = load_profiles(folder)
    assert set(profiles) == {PLAYBOOK_PATH}
    messages = [r.getMessage() for r in caplog.records]
    assert any("risk__bad.yaml" in m and "malformed" in m and "parameter must be one of" in m for m in messages)
    assert any("risk__broken_yaml.yaml" in m and "malformed" in m for m in messages)
    assert load_profile(folder / "missing.yaml") is None
    job = build_job(parse_text(PLAYBOOK, str(tmp_path / "tuned.yaml")), TunedTranslator(folder))
    policy = job.graph.node_named("flaky").definition.retry_policy
    assert policy.max_retries == 2 and policy.backoff == dg.Backoff.LINEAR


def test_tune_command_registers():
    import argparse

    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["tune", "--apply", "--profiles", "x"])
    assert args.apply and args.profiles == "x" and callable(args.func)


def test_tune_apply_approves_pending_proposals_within_bounds(sink, tmp_path):
    folder = tmp_path / "tuning"
    run_tune(sink, folder)  # propose
    added, _ = run_tune(sink, folder, apply=True, bounds=TuningBounds(timeout_max_seconds=60))
    assert added
    profile = load_profiles(folder)[PLAYBOOK_PATH]
    assert profile.approved("flaky", "retry_policy")["max_retries"] >= 3
    assert profile.version == 2
    # the 60s cap made the slow step's timeout need review: proposed, not approved
    assert profile.approved("slow", "timeout_seconds") is None
    assert [e.status for e in profile.entries("slow", "timeout_seconds")] == ["proposed"]


class _Timeouts(PlaybookTranslator):
    """A translator setting the op timeout (what an approved profile entry compiles to)."""

    def get_op_timeout(self, playbook, step):  # type: ignore[no-untyped-def]
        return 1 if step.step in ("slow", "slow_loop") else None


TIMEOUT_PLAYBOOK = """apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: timeouts, path: ops/timeouts}
workload: {sleep: 30}
workflow:
  - step: start
    tool: {kind: noop}
    next: slow
  - step: slow
    tool:
      kind: python
      input: {s: "{{ workload.sleep }}"}
      code: |
        import time
        try:
            time.sleep(s)
        except Exception:   # a tool catching everything cannot swallow the deadline
            pass
        result = {"slept": s}
"""


def test_an_op_timeout_fails_the_step_with_a_clear_message(instance):
    started = time.monotonic()
    report = run_playbook(parse_text(TIMEOUT_PLAYBOOK), instance=instance, translator=_Timeouts(),
                          log_level="CRITICAL")
    assert time.monotonic() - started < 20  # not the 30 s the step wanted
    assert report.status == "failure"
    assert report.steps["slow"].error == "step 'slow': timed out after 1s (op tag noetl/timeout_seconds)"
    # within the limit the step completes
    report = run_playbook(parse_text(TIMEOUT_PLAYBOOK), {"sleep": 0.1}, instance=instance, translator=_Timeouts(),
                          log_level="CRITICAL")
    assert report.status == "success" and report.steps["slow"].result == {"slept": 0.1}


# -- parallel loops: chunk size and concurrency from throughput --------------------------------------
LOOP_PATH = "ops/fanout"
LOOP_PLAYBOOK = """apiVersion: noetl.io/v2
kind: Playbook
metadata:
  name: fanout
  path: ops/fanout
workload:
  items: [1, 2, 3]
workflow:
  - step: start
    tool: {kind: noop}
    next: score
  - step: score
    loop: {in: "{{ workload.items }}", iterator: item, spec: {mode: parallel}}
    tool: {kind: python, input: {x: "{{ item }}", i: "{{ _index }}"}, code: "result = {'x': x, 'double': 2 * x, 'i': i}"}
    next: crunch
  - step: crunch
    loop: {in: "{{ score }}", iterator: row, spec: {mode: parallel}}
    tool: {kind: python, input: {d: "{{ row.double }}"}, code: "result = d * d"}
    next: end
  - step: end
    tool: {kind: python, input: {squares: "{{ crunch }}"}, code: "result = {'total': sum(squares)}"}
"""
LOOP_RUNS = 8
SCORE_ITEMS, CRUNCH_ITEMS = 120, 30


def _loop_row(rid: str, key: str, step: str, dur_ms: int, cores: float, t: float) -> StepRun:
    return StepRun(execution_id=rid, step_key=key, attempt=1, playbook_path=LOOP_PATH, domain="ops",
                   job_name="ops__fanout", step_name=step, tool_kind="python", status="success", started_at=t,
                   finished_at=t + dur_ms / 1000, duration_ms=dur_ms, retries=0, rows=None, bytes=None,
                   cpu_seconds=round(cores * dur_ms / 1000, 6), peak_rss_mb=150.0, error_message="", worker="w1")


def loop_history(chunk: int = 1, seed: int = 3) -> list[StepRun]:
    """``score``: 120 IO-bound items per run (~40 ms, 0.05 cores); ``crunch``: 30 CPU-bound items
    (~100 ms, 0.9 cores); ``chunk`` consecutive items per body op (its key ``i00000_i00003``)."""
    rnd = random.Random(seed)
    rows: list[StepRun] = []
    t = 1_700_000_000.0
    for r in range(LOOP_RUNS):
        rid = f"loop-{r:03d}"
        t += 600
        rows.append(_loop_row(rid, "start", "start", 20, 0.5, t))
        for step, n, item_ms, cores in (("score", SCORE_ITEMS, 40, 0.05), ("crunch", CRUNCH_ITEMS, 100, 0.9)):
            rows.append(_loop_row(rid, f"{step}__fan_out", step, 30, 0.5, t))
            for first in range(0, n, chunk):
                last = min(first + chunk, n) - 1
                key = f"i{first:05d}" if chunk == 1 else f"i{first:05d}_i{last:05d}"
                dur = sum(item_ms * rnd.uniform(0.9, 1.1) for _ in range(last - first + 1))
                rows.append(_loop_row(rid, f"{step}[{key}]", step, round(dur), cores, t))
            rows.append(_loop_row(rid, f"{step}__collect", step, 25, 0.5, t))
    return rows


@pytest.fixture
def loop_sink(chdb_dsn: str) -> ClickHouseSink:
    return history_sink(chdb_dsn, loop_history())


LOOP_BOUNDS = TuningBounds(loop_cores_available=2.0)


def test_loop_stats_count_items_and_per_item_durations(loop_sink, chdb_dsn):
    stats = {s.step: s for s in step_stats(loop_sink)}
    score, crunch = stats["score"], stats["crunch"]
    assert score.loop_items_p50 == SCORE_ITEMS and score.loop_ops_p50 == SCORE_ITEMS and score.loop_chunk_max == 1
    assert 36 <= score.item_p50_ms <= 44 and score.item_p99_ms <= 44 and score.item_cores_p95 == pytest.approx(0.05)
    assert crunch.loop_items_p50 == CRUNCH_ITEMS and 90 <= crunch.item_p50_ms <= 110
    assert crunch.item_cores_p95 == pytest.approx(0.9)
    assert score.loop_run_ids == tuple(f"loop-{r:03d}" for r in range(LOOP_RUNS))
    assert stats["start"].loop_items_p50 is None and stats["start"].item_p50_ms is None
    # chunked history: items and per-item durations come from the chunk keys
    chunked = ClickHouseSink(ch.get_client(chdb_dsn), database=f"ai_{uuid.uuid4().hex[:10]}")
    chunked.migrate()
    chunked.write_step_runs(loop_history(chunk=8))
    again = {s.step: s for s in step_stats(chunked)}
    assert again["score"].loop_items_p50 == SCORE_ITEMS and again["score"].loop_ops_p50 == SCORE_ITEMS / 8
    assert again["score"].loop_chunk_max == 8 and 36 <= again["score"].item_p50_ms <= 44
    assert again["crunch"].loop_items_p50 == CRUNCH_ITEMS and again["crunch"].loop_ops_p50 == 4  # 3 x 8 + 6


def test_loop_recommendations_carry_evidence_within_bounds(loop_sink):
    b = LOOP_BOUNDS
    recs = by_key(recommend(step_stats(loop_sink), b))
    # many ~40 ms items: chunk them (toward 2 s per op = 50 items), at most 4x per pass from 1
    chunk = recs[("score", "loop_chunk_size")]
    assert chunk.value == 4 and chunk.within_bounds and chunk.summary() == "4 items per op"
    assert chunk.evidence["current_chunk_size"] == 1 and chunk.evidence["loop_items_p50"] == SCORE_ITEMS
    assert 36 <= chunk.evidence["item_p50_ms"] <= 44 and chunk.evidence["run_ids"][0] == "loop-000"
    assert "30 body ops per run instead of 120" in chunk.expected_effect
    assert recs[("crunch", "loop_chunk_size")].value == 4
    # IO-bound: every body op of a run at once (120 items / 4 per op), up to the bound
    io = recs[("score", "loop_concurrency")]
    assert io.value == 30 and "io_bound" in io.flags and io.evidence["io_bound"] and io.evidence["body_ops_per_run"] == 30
    assert "IO-bound" in io.expected_effect and io.within_bounds
    # CPU-bound: the cores available / cores per op
    cpu = recs[("crunch", "loop_concurrency")]
    assert cpu.value == 2 and "cpu_bound" in cpu.flags and cpu.evidence["item_cores_p95"] == pytest.approx(0.9)
    assert {(s, p) for s, p in recs if p.startswith("loop_")} == {
        ("score", "loop_chunk_size"), ("score", "loop_concurrency"), ("crunch", "loop_chunk_size"),
        ("crunch", "loop_concurrency")}
    # without the change bound the target itself: 2 s / 40 ms = 50 items; 2 s / 100 ms = 20
    wide = by_key(recommend(step_stats(loop_sink), TuningBounds(loop_cores_available=2.0, max_change_factor=100)))
    assert wide[("score", "loop_chunk_size")].value == 50 and wide[("crunch", "loop_chunk_size")].value == 20
    assert wide[("score", "loop_concurrency")].value == 3  # ceil(120 / 50) ops per run
    # tight bounds: the chunk and the concurrency are capped, the chunk flagged for review
    tight = by_key(recommend(step_stats(loop_sink), TuningBounds(loop_cores_available=2.0, max_change_factor=100,
                                                                 loop_chunk_max=10, loop_concurrency_max=5)))
    assert tight[("score", "loop_chunk_size")].value == 10 and not tight[("score", "loop_chunk_size")].within_bounds
    assert tight[("score", "loop_concurrency")].value == 5
    # a concurrency limit keeps the loop at least that many ops wide
    held = {LOOP_PATH: TuningProfile(LOOP_PATH, 1, {"score": [ProfileEntry("loop_concurrency", 6, "approved")]})}
    assert by_key(recommend(step_stats(loop_sink), TuningBounds(max_change_factor=100), held)
                  )[("score", "loop_chunk_size")].value == 20  # ceil(120 / 6)
    # in process, a concurrency limit changes nothing: not proposed; the declared chunk is the current one
    loops = {(LOOP_PATH, "score"): {"chunk_size": 4, "max_in_flight": None, "executor": "in_process"}}
    quiet = by_key(recommend(step_stats(loop_sink), b, None, None, loops=loops))
    assert ("score", "loop_concurrency") not in quiet and quiet[("score", "loop_chunk_size")].value == 16
    # few items per run: left alone
    assert not [r for r in recommend(step_stats(loop_sink), TuningBounds(loop_chunk_min_items=500))
                if r.parameter == "loop_chunk_size"]


def test_approved_loop_tuning_runs_the_loop_in_chunks(loop_sink, tmp_path, instance):
    folder = tmp_path / "tuning"
    playbook = parse_text(LOOP_PLAYBOOK, str(tmp_path / "fanout.yaml"))
    added, _ = run_tune(loop_sink, folder, bounds=LOOP_BOUNDS)
    assert {(r.step, r.parameter) for r in added} >= {("score", "loop_chunk_size"), ("score", "loop_concurrency")}
    assert run_tune(loop_sink, folder, bounds=LOOP_BOUNDS) == ([], [])  # unchanged history: nothing new
    proposed = TunedTranslator(folder)
    assert proposed.get_loop_chunk_size(playbook, playbook.steps["score"]) == 1  # proposals change nothing
    added, _ = run_tune(loop_sink, folder, apply=True, bounds=LOOP_BOUNDS)
    profile = load_profiles(folder)[LOOP_PATH]
    assert profile.approved("score", "loop_chunk_size") == 4 and profile.approved("score", "loop_concurrency") == 30
    assert profile.approved("crunch", "loop_concurrency") == 2
    run_config = {"ops": {"start": {"config": {"workload": {"items": list(range(10))}}}}}
    tuned = build_job(playbook, TunedTranslator(folder)).execute_in_process(run_config=run_config, instance=instance)
    plain = build_job(playbook).execute_in_process(run_config=run_config, instance=instance)
    assert tuned.success and plain.success

    def bodies(result, op):  # type: ignore[no-untyped-def]
        return [e.step_key for e in result.all_events if e.event_type_value == "STEP_SUCCESS"
                and e.step_key.startswith(f"{op}[")]

    assert bodies(tuned, "score") == ["score[i00000_i00003]", "score[i00004_i00007]", "score[i00008_i00009]"]
    assert bodies(plain, "score") == [f"score[i{i:05d}]" for i in range(10)]
    assert len(bodies(tuned, "crunch")) == 3 and len(bodies(plain, "crunch")) == 10
    for node in ("score__collect", "crunch__collect", "end"):
        assert tuned.output_for_node(node) == plain.output_for_node(node)
    assert tuned.output_for_node("score__collect") == [{"x": x, "double": 2 * x, "i": x} for x in range(10)]
    assert tuned.output_for_node("end") == {"total": sum((2 * x) ** 2 for x in range(10))}
    # under the multiprocess executor the approved concurrency is a tag concurrency limit
    multi = parse_text(LOOP_PLAYBOOK.replace("  path: ops/fanout\n", "  path: ops/fanout\n  dagster: {executor: "
                                             "multiprocess}\n"), str(tmp_path / "fanout.yaml"))
    job = build_job(multi, TunedTranslator(folder))
    config = job.executor_def.config_schema.resolve_config({}).value["config"]
    assert config["tag_concurrency_limits"] == [{"key": "noetl/loop_step", "value": "score", "limit": 30},
                                                {"key": "noetl/loop_step", "value": "crunch", "limit": 2}]
    assert config["max_concurrent"] == 30  # no max_concurrent in the playbook: the IO-bound loop can reach it
    assert job.graph.node_named("score").definition.tags["noetl/loop_step"] == "score"
    # the next pass over unchanged history starts from the approved values: `score` stays 30 ops wide
    # (its concurrency), `crunch` takes the next bounded step (4 -> 15 = 30 items / 2 at once, <= 4x)
    again = by_key(recommend(step_stats(loop_sink), LOOP_BOUNDS, load_profiles(folder)))
    assert [k for k in again if k[1].startswith("loop_")] == [("crunch", "loop_chunk_size")]
    nxt = again[("crunch", "loop_chunk_size")]
    assert nxt.value == 15 and nxt.evidence["current_chunk_size"] == 4 and nxt.evidence["loop_concurrency"] == 2


def test_loop_profile_values_are_checked(tmp_path, caplog):
    folder = tmp_path / "tuning"
    folder.mkdir()
    (folder / "ops__fanout.yaml").write_text(yaml.safe_dump({"playbook": LOOP_PATH, "version": 1, "steps": {
        "score": [{"parameter": "loop_chunk_size", "value": 0, "status": "approved"}]}}))
    with caplog.at_level(logging.ERROR, logger="noetl_dagster.ai"):
        assert load_profiles(folder) == {}
    assert any("steps.score[0].value must be a whole number >= 1 (items per body op), got 0" in r.getMessage()
               for r in caplog.records)


LOOP_TIMEOUT_PLAYBOOK = """apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: loop_timeouts, path: ops/loop_timeouts}
workflow:
  - step: start
    tool: {kind: noop}
    next: slow-loop
  - step: slow-loop
    loop: {in: "{{ [0.1, 30] }}", iterator: s}
    tool:
      kind: python
      input: {s: "{{ s }}"}
      code: |
        import time
        time.sleep(s)
        result = s
"""


class _LoopTimeouts(PlaybookTranslator):
    def get_op_timeout(self, playbook, step):  # type: ignore[no-untyped-def]
        return 2


def test_a_timed_out_loop_names_its_step_and_is_retried(instance):
    class Retried(_LoopTimeouts):
        def get_retry_policy(self, playbook, step):  # type: ignore[no-untyped-def]
            return dg.RetryPolicy(max_retries=1)

    report = run_playbook(parse_text(LOOP_TIMEOUT_PLAYBOOK), instance=instance, translator=Retried(),
                          log_level="CRITICAL")
    assert report.status == "failure"  # the report names the playbook step (not the op `slow_loop`)
    assert report.steps["slow-loop"].error == "step 'slow-loop': timed out after 2s (op tag noetl/timeout_seconds)"
    retried = [r for r in instance.all_logs(report.run_id, of_type=dg.DagsterEventType.STEP_UP_FOR_RETRY)]
    assert [r.dagster_event.step_key for r in retried] == ["slow_loop"]  # a dg.Failure: retried
