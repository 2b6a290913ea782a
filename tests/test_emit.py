"""What the compiled Dagster definitions look like, and the translator's override points."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from noetl_dagster import PlaybookError, PlaybookTranslator, build_job, load_playbook_definitions, run_playbook
from noetl_dagster.playbook.loader import parse_text

PLAYBOOK = """apiVersion: noetl.io/v2
kind: Playbook
metadata:
  name: score_application
  path: risk/score_application
  description: Score loan applications.
workload:
  n: 2
workflow:
  - step: start
    desc: Read the applications.
    tool: {kind: python, input: {n: "{{ n }}"}, code: "result = {'n': n}"}
    next:
      spec: {mode: exclusive}
      arcs:
        - {step: big, when: "{{ output.n > 5 }}"}
        - {step: small}
  - step: big
    tool: {kind: noop}
    next: end
  - step: small
    tool: {kind: noop}
    next: end
  - step: end
    tool: {kind: noop}
"""


@pytest.fixture
def playbook(tmp_path: Path):
    path = tmp_path / "score.yaml"
    path.write_text(PLAYBOOK)
    return parse_text(PLAYBOOK, str(path))


def test_job_name_tags_and_metadata(playbook):
    job = build_job(playbook)
    assert job.name == "risk__score_application"
    assert job.description == "Score loan applications."
    assert job.tags["noetl/playbook"] == "risk/score_application"
    assert job.tags["noetl/domain"] == "risk"
    refs = job.metadata["dagster/code_references"].code_references
    assert refs[0].file_path.endswith("score.yaml") and refs[0].line_number == 1
    assert isinstance(job.executor_def, dg.ExecutorDefinition) and job.executor_def.name == "in_process"


def test_ops_carry_description_tags_and_yaml_line(playbook):
    job = build_job(playbook)
    start = job.graph.node_named("start").definition
    assert start.description.startswith("Read the applications.")
    assert start.tags["noetl/step"] == "start"
    assert start.tags["noetl/tool"] == "python"
    assert "dagster/kind/python" in start.tags
    ref = start.output_defs[0].metadata["dagster/code_references"].code_references[0]
    assert ref.line_number == 10 and ref.label == "step start"
    assert sorted(o.name for o in start.output_defs) == ["result", "to_big", "to_small"]
    assert all(not o.is_required for o in start.output_defs if o.name.startswith("to_"))
    end = job.graph.node_named("end").definition
    assert [i.name for i in end.input_defs] == ["tokens"]
    # the join is fed by a fan-in list of both branches
    upstream = job.graph.dependency_structure.input_to_upstream_outputs_for_node("end")
    assert [(o.node_name, o.output_name) for outs in upstream.values() for o in outs] == [
        ("big", "to_end"), ("small", "to_end")]


def test_unfired_branch_is_skipped_in_dagster(playbook, instance):
    result = build_job(playbook).execute_in_process(instance=instance)
    skipped = {e.step_key for e in result.all_events if e.event_type_value == "STEP_SKIPPED"}
    assert skipped == {"big"}
    assert result.output_for_node("start", "result") == {"n": 2}


def test_workload_is_run_config(playbook, instance):
    job = build_job(playbook)
    result = job.execute_in_process(run_config={"ops": {"start": {"config": {"workload": {"n": 9}}}}},
                                    instance=instance)
    skipped = {e.step_key for e in result.all_events if e.event_type_value == "STEP_SKIPPED"}
    assert skipped == {"small"}


class CustomTranslator(PlaybookTranslator):
    def get_job_name(self, playbook):
        return "custom_" + super().get_job_name(playbook)

    def get_retry_policy(self, playbook, step):
        return dg.RetryPolicy(max_retries=3, delay=0.1) if step.step == "start" else None

    def get_op_tags(self, playbook, step):
        return {**super().get_op_tags(playbook, step), "team": "risk"}


def test_translator_overrides(playbook):
    job = build_job(playbook, CustomTranslator())
    assert job.name == "custom_risk__score_application"
    start = job.graph.node_named("start").definition
    assert start.retry_policy.max_retries == 3
    assert start.tags["team"] == "risk"
    assert job.graph.node_named("big").definition.retry_policy is None


def test_multiprocess_executor_by_extension(tmp_path):
    text = PLAYBOOK.replace("  description: Score loan applications.\n",
                            "  dagster: {executor: multiprocess, max_concurrent: 3}\n")
    job = build_job(parse_text(text, str(tmp_path / "x.yaml")))
    assert job.executor_def.name == "multiprocess"


def test_definitions_skip_broken_playbooks_unless_strict(tmp_path, caplog):
    (tmp_path / "good.yaml").write_text(PLAYBOOK)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "broken.yaml").write_text(PLAYBOOK.replace("next: end\n  - step: end", "next: ned\n  - step: end"))
    defs = load_playbook_definitions(tmp_path)
    assert [j.name for j in defs.jobs] == ["risk__score_application"]
    assert "broken.yaml" in caplog.text and "unknown step 'ned'" in caplog.text
    with pytest.raises(PlaybookError, match="broken.yaml:"):
        load_playbook_definitions(tmp_path, strict=True)


def test_duplicate_job_names_are_reported(tmp_path, caplog):
    (tmp_path / "a.yaml").write_text(PLAYBOOK)
    (tmp_path / "b.yaml").write_text(PLAYBOOK)
    defs = load_playbook_definitions(tmp_path)
    assert len(defs.jobs) == 1
    assert "already used" in caplog.text


def test_report_lists_every_step(playbook, instance):
    report = run_playbook(playbook, {"n": 1}, instance=instance)
    assert report.status == "success"
    assert {k: v.status for k, v in report.steps.items()} == {
        "start": "success", "big": "skipped", "small": "success", "end": "success"}


def test_hardware_extension_becomes_k8s_config(tmp_path):
    import json

    text = PLAYBOOK.replace("    desc: Read the applications.\n", "    desc: Read the applications.\n"
                            "    hardware: {cpu: '2', memory: 4Gi, gpu: 1, memory_limit: 8Gi, node_selector: {pool: gpu}}\n")
    job = build_job(parse_text(text, str(tmp_path / "x.yaml")))
    config = json.loads(job.graph.node_named("start").definition.tags["dagster-k8s/config"])
    assert config == {"container_config": {"resources": {"requests": {"cpu": "2", "memory": "4Gi"},
                                                         "limits": {"memory": "8Gi", "nvidia.com/gpu": "1"}}},
                      "pod_spec_config": {"node_selector": {"pool": "gpu"}}}
    assert "dagster-k8s/config" not in job.graph.node_named("big").definition.tags


def test_ops_record_cpu_and_memory(playbook, instance):
    result = build_job(playbook).execute_in_process(instance=instance)
    outputs = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"
               and e.step_output_data.output_name == "result"]
    assert outputs and all("noetl/cpu_seconds" in e.step_output_data.metadata for e in outputs)
    assert all(e.step_output_data.metadata["noetl/peak_rss_mb"].value > 10 for e in outputs)


CHUNKED = """apiVersion: noetl.io/v2
kind: Playbook
metadata:
  name: chunked
  path: ops/chunked
workload:
  items: [3, 1, 4, 1, 5, 9, 2, 6, 5, 3]
workflow:
  - step: start
    tool: {kind: noop}
    next: square
  - step: square
    loop:
      in: "{{ workload.items }}"
      iterator: item
      chunk_size: 4
      spec: {mode: parallel}
    tool:
      - name: calc
        kind: python
        input: {x: "{{ item }}", i: "{{ _index }}", n: "{{ _total }}"}
        code: |
          result = {"x": x, "sq": x * x, "index": i, "total": n}
        spec:
          policy:
            rules:
              - else:
                  then:
                    do: continue
                    set:
                      last_index: "{{ _index }}"
    set:
      ctx.count: "{{ output | length }}"
    next: total
  - step: total
    tool:
      kind: python
      input: {rows: "{{ square }}", last: "{{ last_index }}", count: "{{ count }}"}
      code: |
        result = {"sum": sum(r["calc"]["sq"] for r in rows), "last": last, "count": count}
"""


class _Chunks(PlaybookTranslator):
    """Overrides the loop chunk size (None: the playbook's own)."""

    def __init__(self, size):  # type: ignore[no-untyped-def]
        self.size = size

    def get_loop_chunk_size(self, playbook, step):  # type: ignore[no-untyped-def]
        return self.size or super().get_loop_chunk_size(playbook, step)


def _body_keys(result: dg.ExecuteInProcessResult, op: str) -> list[str]:
    return [e.step_key for e in result.all_events
            if e.event_type_value == "STEP_SUCCESS" and e.step_key.startswith(f"{op}[")]


def test_loop_chunks_run_consecutive_items_with_identical_results(tmp_path, instance):
    from noetl_dagster.contract import loop_items_of

    playbook = parse_text(CHUNKED, str(tmp_path / "chunked.yaml"))
    assert playbook.steps["square"].loop.chunk_size == 4
    chunked = build_job(playbook).execute_in_process(instance=instance)
    single = build_job(playbook, _Chunks(1)).execute_in_process(instance=instance)
    assert chunked.success and single.success
    keys = _body_keys(chunked, "square")
    assert keys == ["square[i00000_i00003]", "square[i00004_i00007]", "square[i00008_i00009]"]
    assert [loop_items_of(k) for k in keys] == [4, 4, 2]
    assert _body_keys(single, "square") == [f"square[i{i:05d}]" for i in range(10)]
    # the loop's result, ctx updates (per item, in order) and `set` are those of one op per item
    items = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3]
    want = [{"calc": calc, **calc} for calc in  # each pipeline result also carries its task's fields (NoETL)
            ({"x": x, "sq": x * x, "index": i, "total": 10} for i, x in enumerate(items))]
    for result in (chunked, single):
        assert result.output_for_node("square__collect") == want
        assert result.output_for_node("total") == {"sum": sum(x * x for x in items), "last": 9, "count": 10}
    # the run report counts iterations, not ops
    report = run_playbook(playbook, instance=instance, log_level="CRITICAL")
    assert report.steps["square"].runs == 10 and report.steps["square"].result == want


@pytest.mark.parametrize("size", [2, 3, 100])
def test_chunked_loop_conformance_cases_report_the_same(size, items_server, instance):
    root = Path(__file__).parent / "conformance" / "cases"
    cases = [c for c in sorted(root.iterdir()) if "mode: parallel" in (c / "playbook.yaml").read_text()]
    assert len(cases) >= 4
    for case in cases:
        text = (case / "playbook.yaml").read_text()
        workload = {"base_url": items_server} if "kind: http" in text else {}
        plain = run_playbook(case / "playbook.yaml", workload, instance=instance, log_level="CRITICAL").to_dict()
        chunked = run_playbook(case / "playbook.yaml", workload, instance=instance, translator=_Chunks(size),
                               log_level="CRITICAL").to_dict()
        assert {k: v for k, v in chunked.items() if k != "run_id"} == \
            {k: v for k, v in plain.items() if k != "run_id"}, case.name


class _ZeroChunks(PlaybookTranslator):
    def get_loop_chunk_size(self, playbook, step):  # type: ignore[no-untyped-def]
        return 0


def test_a_bad_chunk_size_from_a_translator_is_a_clear_error(tmp_path):
    with pytest.raises(PlaybookError, match=r"chunked.yaml:\d+:1: step 'square': loop.chunk_size: the translator's "
                                            r"get_loop_chunk_size returned 0 \(return a whole number >= 1\)"):
        build_job(parse_text(CHUNKED, str(tmp_path / "chunked.yaml")), _ZeroChunks())
    # in a code location it is one broken playbook, not a broken location
    (tmp_path / "chunked.yaml").write_text(CHUNKED)
    (tmp_path / "plain.yaml").write_text(PLAYBOOK)
    defs = load_playbook_definitions(tmp_path, translator=_ZeroChunks())
    assert [job.name for job in defs.jobs] == ["risk__score_application"]


def _executor_config(job: dg.JobDefinition) -> dict:
    """The configuration a job's configured executor runs with."""
    resolved = job.executor_def.config_schema.resolve_config({})
    assert resolved.success, resolved.errors
    return resolved.value.get("config", resolved.value)


class _Concurrency(PlaybookTranslator):
    def get_loop_concurrency(self, playbook, step):  # type: ignore[no-untyped-def]
        return 3


def test_loop_concurrency_becomes_a_tag_concurrency_limit(tmp_path):
    from noetl_dagster.contract import LOOP_STEP_TAG

    limit = {"key": LOOP_STEP_TAG, "value": "square", "limit": 3}
    text = CHUNKED.replace("  path: ops/chunked\n", "  path: ops/chunked\n  dagster: {executor: multiprocess}\n")
    job = build_job(parse_text(text, str(tmp_path / "x.yaml")), _Concurrency())
    assert job.executor_def.name == "multiprocess"
    assert _executor_config(job)["tag_concurrency_limits"] == [limit]
    assert job.graph.node_named("square").definition.tags[LOOP_STEP_TAG] == "square"
    assert LOOP_STEP_TAG not in job.graph.node_named("square__fan_out").definition.tags
    # the default is the step's `spec.max_in_flight` (NoETL's hint); none: no limit
    job = build_job(parse_text(text.replace("spec: {mode: parallel}", "spec: {mode: parallel, max_in_flight: 2}"),
                               str(tmp_path / "x.yaml")))
    assert _executor_config(job)["tag_concurrency_limits"] == [{**limit, "limit": 2}]
    job = build_job(parse_text(text, str(tmp_path / "x.yaml")))
    assert "tag_concurrency_limits" not in _executor_config(job)
    # k8s: appended to the limits its block lists, checked against k8s_job_executor's schema
    k8s = text.replace("dagster: {executor: multiprocess}", "dagster: {executor: k8s, k8s: {tag_concurrency_limits: "
                       "[{key: team, limit: 5}]}}")
    job = build_job(parse_text(k8s, str(tmp_path / "x.yaml")), _Concurrency())
    assert job.executor_def.name == "k8s"
    assert _executor_config(job)["tag_concurrency_limits"] == [{"key": "team", "limit": 5}, limit]
    # in process: one op at a time anyway, nothing to configure
    assert build_job(parse_text(CHUNKED, str(tmp_path / "x.yaml")), _Concurrency()).executor_def.name == "in_process"


LIMITED = """apiVersion: noetl.io/v2
kind: Playbook
metadata:
  name: limited
  path: ops/limited
  dagster: {executor: multiprocess, max_concurrent: 2}
workflow:
  - step: start
    tool: {kind: noop}
    next: nap
  - step: nap
    loop:
      in: [0.6, 0.6, 0.6, 0.6]
      iterator: s
      chunk_size: 2
      spec: {mode: parallel, max_in_flight: 1}
    tool:
      kind: python
      input: {s: "{{ s }}", i: "{{ _index }}"}
      code: |
        import time
        time.sleep(s)
        result = i
"""


def limited_job() -> dg.JobDefinition:
    """Module-level factory (child processes rebuild the job from it) of a multiprocess loop job."""
    import os

    return build_job(parse_text(LIMITED, os.path.join(os.environ["NOETL_TEST_LIMITED_DIR"], "limited.yaml")))


def test_multiprocess_executor_enforces_the_loop_concurrency(tmp_path, monkeypatch):
    monkeypatch.setenv("NOETL_TEST_LIMITED_DIR", str(tmp_path))
    with dg.instance_for_test() as instance:
        job = dg.build_reconstructable_job("test_emit", "limited_job",
                                           reconstructor_working_directory=str(Path(__file__).parent))
        with dg.execute_job(job, instance=instance) as result:
            assert result.success
            assert result.output_for_node("nap__collect") == [0, 1, 2, 3]
            spans: dict[str, list[float]] = {}
            for record in instance.get_records_for_run(result.run_id).records:
                event = record.event_log_entry
                if event.step_key and event.step_key.startswith("nap[") and event.dagster_event is not None and \
                        event.dagster_event.event_type_value in ("STEP_START", "STEP_SUCCESS"):
                    spans.setdefault(event.step_key, []).append(event.timestamp)
    assert sorted(spans) == ["nap[i00000_i00001]", "nap[i00002_i00003]"]
    (a_start, a_end), (b_start, b_end) = sorted(spans.values())
    assert a_end - a_start >= 1.2 and b_end - b_start >= 1.2  # each op ran its 2 items in order
    assert b_start >= a_end  # max_in_flight: 1 -> tag_concurrency_limits: one body op at a time
