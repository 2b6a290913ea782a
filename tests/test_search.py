"""Qdrant export (local mode) with real MiniLM embeddings: search, dedup, resolutions, failure hints."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Iterator

import dagster as dg
import numpy as np
import pytest
from qdrant_client import QdrantClient

from noetl_dagster import run_playbook
from noetl_dagster.export.embedder import (EmbedderResource, HashingEmbedder, MiniLMEmbedder, get_embedder)
from noetl_dagster.export.qdrant import QdrantResource, QdrantSink, playbook_documents
from noetl_dagster.export.sensors import ExportCursor, Exporter, export_definitions, index_playbooks
from noetl_dagster.export.cli import format_hit, run_export, search
from noetl_dagster.export.hints import HINT_TAG, hint_pass

CASES = Path(__file__).parent / "conformance" / "cases"

#: playbook path, failing step, the error it raises, a paraphrase of that error
FAILURES = [
    ("crm/load_customers", "fetch",
     'raise ConnectionError("could not connect to server: Connection refused. Is the server running on host '
     'db.internal and accepting TCP/IP connections on port 5432?")',
     "the postgres database refused our connection, the server seems to be down"),
    ("sales/join_orders", "join_orders",
     "raise KeyError(\"column 'customer_id' is missing from the input record\")",
     "the customer id field was not present in the row"),
    ("finance/parse_ledger", "parse_dates",
     "raise ValueError(\"time data '2024-13-45' does not match format '%Y-%m-%d'\")",
     "a date string had an impossible month and could not be parsed"),
    ("ml/train_model", "fit",
     'raise MemoryError("Unable to allocate 12.0 GiB for an array with shape (40000, 40000) and data type float64")',
     "training ran out of RAM while building a huge matrix"),
]


def failing_playbook(folder: Path, path: str, step: str, code: str) -> Path:
    domain, name = path.split("/")
    file = folder / domain / f"{name}.yaml"
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(textwrap.dedent(f"""\
        apiVersion: noetl.io/v2
        kind: Playbook
        metadata:
          name: {name}
          path: {path}
          description: {name.replace('_', ' ')} for the {domain} domain
        workflow:
          - step: start
            tool: {{kind: noop}}
            next: {step}
          - step: {step}
            desc: {step.replace('_', ' ')}
            tool:
              kind: python
              code: |
                {code}
            next: end
          - step: end
            tool: {{kind: noop}}
        """))
    return file


@pytest.fixture(scope="module")
def embedder() -> MiniLMEmbedder:
    return get_embedder("minilm")  # type: ignore[return-value]


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dg.DagsterInstance, dict[str, str], Path]]:
    """A SQLite instance with four different failures, the divide-by-zero failure, then its fix.
    The failing playbooks run in strict mode: their python exceptions fail the runs (hints are for
    failed runs; by default NoETL's error results complete them)."""
    folder = tmp_path_factory.mktemp("playbooks")
    with dg.instance_for_test() as instance:
        runs = {}
        for path, step, code, _ in FAILURES:
            runs[path] = run_playbook(failing_playbook(folder, path, step, code), {}, instance=instance,
                                      log_level="CRITICAL", on_error="fail").run_id
        divide = CASES / "21_failure_skips_downstream" / "playbook.yaml"
        runs["divide"] = run_playbook(divide, {}, instance=instance, log_level="CRITICAL").run_id
        runs["divide_fixed"] = run_playbook(divide, {"divisor": 2}, instance=instance, log_level="CRITICAL").run_id
        runs["loop"] = run_playbook(CASES / "12_loop_parallel" / "playbook.yaml", {}, instance=instance,
                                    log_level="CRITICAL").run_id
        yield instance, runs, folder


@pytest.fixture(scope="module")
def exported(history, embedder) -> Iterator[tuple[QdrantSink, ExportCursor]]:
    instance, _, _ = history
    client = QdrantClient(location=":memory:")
    sink = QdrantSink(client, embedder)
    cursor, stats = Exporter(instance, sink).export(ExportCursor())
    assert stats.caught_up and stats.runs == 7 and stats.failures == 5
    yield sink, cursor
    client.close()


@pytest.fixture
def memory_qdrant() -> Iterator[QdrantClient]:
    """An in-memory Qdrant, closed after the test (no `QdrantClient.__del__` noise at exit)."""
    client = QdrantClient(location=":memory:")
    yield client
    client.close()


@pytest.mark.parametrize("path,step,paraphrase", [(p, s, q) for p, s, _, q in FAILURES], ids=[p for p, *_ in FAILURES])
def test_a_paraphrased_error_finds_the_real_failure_first(exported, history, path: str, step: str,
                                                          paraphrase: str) -> None:
    sink, _ = exported
    _, runs, _ = history
    hits = sink.search("failures", paraphrase, limit=3)
    assert hits[0].payload["run_id"] == runs[path] and hits[0].payload["step"] == step
    assert hits[0].score > hits[1].score


def test_division_by_zero_paraphrase(exported, history) -> None:
    sink, _ = exported
    _, runs, _ = history
    top = sink.search("failures", "the step crashed dividing a number by zero", limit=1)[0]
    assert top.payload["run_id"] == runs["divide"] and top.payload["step"] == "divide"
    assert "ZeroDivisionError" in top.payload["error"] and top.payload["tool"] == "python"


def test_failures_record_how_they_were_resolved(exported, history) -> None:
    sink, _ = exported
    _, runs, _ = history
    hit = sink.search("failures", "integer division or modulo by zero", limit=1)[0]
    assert hit.payload["resolved_by_run"] == runs["divide_fixed"]
    others = [h for h in sink.search("failures", "connection refused", limit=5) if h.payload["step"] == "fetch"]
    assert others and not others[0].payload.get("resolved_by_run")


def test_resolution_is_found_in_either_export_order(history, embedder, memory_qdrant) -> None:
    """The fix exported before the failure still resolves it (and the earliest fix wins)."""
    instance, runs, _ = history
    sink = QdrantSink(memory_qdrant, embedder)
    exporter = Exporter(instance, sink)
    summaries = {name: exporter.summarize(runs[name])[1] for name in ("divide", "divide_fixed")}
    sink.write_runs([summaries["divide_fixed"]])
    sink.write_runs([summaries["divide"]])
    hit = sink.search("failures", "division by zero", limit=1)[0]
    assert hit.payload["resolved_by_run"] == runs["divide_fixed"]


def test_replays_do_not_duplicate_points(exported, history) -> None:
    sink, cursor = exported
    instance, _, _ = history
    counts = {c: sink.count(c) for c in ("runs", "failures")}
    assert counts == {"runs": 7, "failures": 5}
    _, stats = Exporter(instance, sink).export(cursor)
    assert stats.runs == 0
    _, stats = Exporter(instance, sink).export(ExportCursor())  # replay everything
    assert stats.runs == 7
    assert {c: sink.count(c) for c in ("runs", "failures")} == counts


def test_run_summaries_are_searchable(exported, history) -> None:
    sink, _ = exported
    _, runs, _ = history
    hits = sink.search("runs", "price every order line in parallel and total them", limit=3)
    assert runs["loop"] in [h.payload["run_id"] for h in hits]
    loop = next(h for h in hits if h.payload["run_id"] == runs["loop"])
    assert loop.payload["status"] == "success" and "price_lines" in loop.payload["steps_ok"]


def test_playbooks_and_steps_are_indexed(history, embedder, memory_qdrant) -> None:
    _, _, folder = history
    sink = QdrantSink(memory_qdrant, embedder)
    written = index_playbooks(sink, folder)
    assert written == 4 * 4  # each playbook: itself and three steps
    hit = sink.search("playbooks", "train a machine learning model", limit=1)[0]
    assert hit.payload["playbook"] == "ml/train_model"
    step = sink.search("playbooks", "code raising a KeyError about customer_id", limit=1)[0]
    assert step.payload["kind"] == "step" and step.payload["step"] == "join_orders"
    assert index_playbooks(sink, folder) == written and sink.count("playbooks") == written  # upserts, no dups


def test_playbook_documents_keep_secrets_out(tmp_path: Path) -> None:
    from noetl_dagster import load_playbook

    file = tmp_path / "p.yaml"
    file.write_text(textwrap.dedent("""\
        apiVersion: noetl.io/v2
        kind: Playbook
        metadata: {name: p, path: d/p}
        workflow:
          - step: start
            tool: {kind: http, url: "https://api.example/x", method: GET, password: "hunter2-secret"}
        """))
    docs = playbook_documents(load_playbook(file))
    assert "hunter2" not in json.dumps(docs) and "api.example" in docs[1]["text"]


def test_failure_hints_are_recorded_on_the_failed_run(exported, history) -> None:
    sink, _ = exported
    instance, runs, _ = history
    cursor, handled = hint_pass(instance, sink, None)
    assert handled == 5
    again = run_playbook(CASES / "21_failure_skips_downstream" / "playbook.yaml", {}, instance=instance,
                         log_level="CRITICAL").run_id
    cursor, handled = hint_pass(instance, sink, cursor)
    assert handled == 1
    tag = instance.get_run_by_id(again).tags[HINT_TAG]
    assert tag.split(",")[0] == f"{runs['divide'][:8]}:divide"
    events = [r.event_log_entry.dagster_event for r in instance.get_records_for_run(
        again, of_type=dg.DagsterEventType.ENGINE_EVENT).records
        if "Similar past failures" in (r.event_log_entry.dagster_event.message or "")]
    assert len(events) == 1
    assert f"resolved: step succeeded in later run {runs['divide_fixed'][:8]}" in events[0].message
    hints = events[0].event_specific_data.metadata["similar_failures"].value
    assert hints[0]["run_id"] == runs["divide"] and hints[0]["score"] > 0.9
    # the first failures had nothing earlier that was similar enough, or only earlier ones
    assert instance.get_run_by_id(runs["crm/load_customers"]).tags[HINT_TAG] == "none"
    _, handled = hint_pass(instance, sink, None)  # a re-scan from scratch records nothing twice
    assert handled == 0


def test_cli_search_and_export(history, embedder, tmp_path: Path, memory_qdrant) -> None:
    instance, runs, folder = history
    sink = QdrantSink(memory_qdrant, embedder)
    stats = run_export(instance, [sink], playbooks=folder, folder=tmp_path)
    assert stats["qdrant"].runs == len(instance.get_runs()) and not stats["qdrant"].error
    hits = search("could not reach the database server", "failures", limit=2, sink=sink)
    assert hits[0]["run_id"] == runs["crm/load_customers"] and "text" not in hits[0]
    json.dumps(hits)
    assert "crm/load_customers / fetch" in format_hit(hits[0])
    playbook_hits = search("parse dates of ledger entries", "playbooks", limit=1, sink=sink)
    assert playbook_hits[0]["playbook"] == "finance/parse_ledger"
    assert format_hit(playbook_hits[0])


def test_qdrant_sensor_tick_indexes_playbooks_and_exports_runs(history, tmp_path: Path) -> None:
    instance, _, folder = history
    resources = {"noetl_qdrant": QdrantResource(path=str(tmp_path / "q")), "noetl_embedder": EmbedderResource()}
    defs = export_definitions(playbooks=folder, **{"qdrant": resources["noetl_qdrant"],
                                                   "embedder": resources["noetl_embedder"]})
    sensor = defs.resolve_sensor_def("noetl_export_qdrant")
    data = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, cursor=None, resources=resources))
    cursor = ExportCursor.from_json(data.cursor)
    assert cursor.extra["playbooks"].startswith("all-MiniLM-L6-v2-onnx-int8:") and not cursor.active
    runs = len(instance.get_runs())  # 7, or 8 after the hints test
    # every run finished exporting in this tick: reported back to (a "Success" tick), counts observed
    assert len(data.dagster_run_reactions) == runs and not data.skip_message
    observed = instance.fetch_observations(dg.AssetKey(["observability", "noetl_search_index"]), limit=1).records
    counts = {k: getattr(v, "value", v) for k, v in observed[0].asset_observation.metadata.items()}
    assert counts["runs"] == runs and counts["failures"] == runs - 2
    sink = resources["noetl_qdrant"].sink(resources["noetl_embedder"].get())
    assert sink.count("runs") == runs and sink.count("playbooks") == 16
    data = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, cursor=data.cursor, resources=resources))
    assert "0 runs" in (data.skip_message or "")


HOLD_FOLDER = """
import sys
from qdrant_client import QdrantClient
client = QdrantClient(path=sys.argv[1])
names = [c.name for c in client.get_collections().collections]
print(client.count("noetl_runs").count if "noetl_runs" in names else -1, flush=True)
sys.stdin.readline()   # hold the folder until told to go
client.close()
"""


def test_sensor_ticks_release_the_local_folder_between_ticks(history, tmp_path: Path) -> None:
    """Local mode locks its folder per process: the sensors open it for a tick only, so
    `noetl-dagster export` or a tuning run can use it between ticks; a tick that finds it held
    by another process skips and keeps its cursor."""
    import subprocess
    import sys

    instance, _, _ = history
    path = str(tmp_path / "q")
    resources = {"noetl_qdrant": QdrantResource(path=path), "noetl_embedder": EmbedderResource(kind="hashing")}
    sensor = export_definitions(**{"qdrant": resources["noetl_qdrant"], "embedder": resources["noetl_embedder"]}
                                ).resolve_sensor_def("noetl_export_qdrant")
    data = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, cursor=None, resources=resources))
    runs = len(instance.get_runs())
    holder = subprocess.Popen([sys.executable, "-c", HOLD_FOLDER, path], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == str(runs)  # opened after the tick: the data is there
        busy = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, cursor=None, resources=resources))
        assert busy.cursor is None and "open in another process" in (busy.skip_message or "")
    finally:
        holder.communicate("go\n", timeout=60)
    assert holder.returncode == 0
    data = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, cursor=None, resources=resources))
    assert len(data.dagster_run_reactions) == runs  # the folder is free again: the tick runs


def test_embedders() -> None:
    minilm = get_embedder("minilm")
    vectors = minilm.embed(["step failed: connection refused to postgres", "postgres connection error in step",
                            "asset materialized successfully"])
    assert vectors.shape == (3, 384) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-4)
    assert vectors[0] @ vectors[1] > 0.7 > 0.3 > vectors[0] @ vectors[2]
    assert np.allclose(minilm.embed(["b", "a much longer text than b"])[0], minilm.embed(["b"])[0], atol=1e-4)
    hashing = EmbedderResource(kind="hashing", dim=64).get()
    assert isinstance(hashing, HashingEmbedder) and hashing.embed(["x y"]).shape == (1, 64)
    assert np.array_equal(hashing.embed(["same text"]), HashingEmbedder(64).embed(["same text"]))
    with pytest.raises(ValueError, match="unknown embedder"):
        get_embedder("word2vec")


def test_hints_for_a_run_that_completed_with_errors(exported, history) -> None:
    """NoETL's default: the divide-by-zero completes its step with an error result and the run
    succeeds, tagged `completed_with_errors`; the hint pass still finds the similar past failure."""
    sink, _ = exported
    instance, runs, _ = history
    cursor, _ = hint_pass(instance, sink, None)
    again = run_playbook(CASES / "21_failure_skips_downstream" / "playbook.yaml", {}, instance=instance,
                         log_level="CRITICAL", on_error="complete")
    assert again.status == "success" and again.steps["divide"].status == "error"
    cursor, handled = hint_pass(instance, sink, cursor)
    assert handled == 1 and json.loads(cursor)["e"] > 0
    tag = instance.get_run_by_id(again.run_id).tags[HINT_TAG]
    assert tag.split(",")[0] == f"{runs['divide'][:8]}:divide"
    assert hint_pass(instance, sink, cursor)[1] == 0  # handled once
