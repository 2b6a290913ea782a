"""What an operator sees of a run: one line per step, the step's own memory, tokens as JSON.

A routing playbook (duckdb -> exclusive arcs -> python/noop -> join) compiled as `dagster dev`
compiles it (``load_playbook_definitions``: the Arrow/JSON IO manager) and executed in process.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from noetl_dagster import load_playbook_definitions
from noetl_dagster.io.manager import ArrowRefIOManager
from noetl_dagster.translator.observe import measured, preview, size_of

HERE = Path(__file__).parent / "observe"


@pytest.fixture(autouse=True)
def _io_root_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs without DAGSTER_HOME store outputs under ./.noetl_data: keep that in the test's folder."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def routed(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("io")
    defs = load_playbook_definitions(HERE, strict=True, resources={"io_manager": ArrowRefIOManager(base_uri=str(root))})
    instance = dg.DagsterInstance.ephemeral()
    result = defs.resolve_job_def("ops__route").execute_in_process(instance=instance, raise_on_error=False)
    assert result.success
    lines = [e.user_message for e in instance.all_logs(result.run_id) if e.dagster_event is None]
    outputs = {}
    for event in result.all_events:
        if event.event_type_value == "STEP_OUTPUT" and event.step_output_data.output_name == "result":
            outputs[event.step_key] = {k: getattr(v, "value", v) for k, v in
                                       event.step_output_data.metadata.items()}
    return root, [line for line in lines if line.startswith("step ")], outputs


def test_one_line_per_step_with_tool_target_duration_and_arcs(routed) -> None:  # type: ignore[no-untyped-def]
    _, lines, _ = routed
    by_step = {line.split(":")[0].removeprefix("step "): line for line in lines}
    assert set(by_step) == {"start", "measure", "large", "end"}, lines  # `small` did not run
    measure = by_step["measure"]
    # the rendered SQL (not the template), rows, a duration, which arc fired and why, which did not
    assert "tool duckdb SELECT 4200 AS amount, 4200 > 1000 AS big" in measure, measure
    assert "| 1 rows |" in measure
    assert "-> large (when {{ measure.rows[0].big }})" in measure
    assert "not fired: small" in measure
    parts = measure.split(" | ")
    assert any(p.endswith(" MB") and p.split("s,")[0].replace(".", "").isdigit() for p in parts), parts
    assert "result {" in measure and '"big": true' in measure
    assert by_step["start"].startswith("step start: success | tool noop") and "-> measure (always)" in by_step["start"]
    assert "tool python code (3 lines)" in by_step["large"]
    assert "no next arcs" in by_step["end"] and '"cheap": 4201' in by_step["end"]


def test_step_memory_is_the_step_own(routed) -> None:  # type: ignore[no-untyped-def]
    _, _, outputs = routed
    large, end = outputs["large"], outputs["end"]
    assert large["noetl/memory_method"] in ("rss_hwm", "rss_sampled")
    assert large["noetl/step_rss_mb"] >= 150, large
    assert end["noetl/step_rss_mb"] < 50, end
    assert large["noetl/peak_rss_mb"] >= large["noetl/step_rss_mb"]


def test_tokens_are_json_not_pickles(routed) -> None:  # type: ignore[no-untyped-def]
    root, _, _ = routed
    assert not list(root.rglob("*.pkl"))
    tokens = list(root.rglob("to_*/value.json"))
    assert {p.parent.name for p in tokens} >= {"to_measure", "to_large", "to_end"}


def test_measured_keeps_the_peak_of_a_nested_op() -> None:
    """A sub-playbook run in process resets the mark inside the outer op: the outer keeps its peak."""
    from noetl_dagster.translator import observe

    def inner(context, inputs):  # type: ignore[no-untyped-def]
        data = b"y" * (120 * 1024 * 1024)
        yield len(data)

    def outer(context, inputs):  # type: ignore[no-untyped-def]
        list(measured(inner)(None, {}))
        yield observe.current().metadata()  # type: ignore[union-attr]

    meta = next(iter(measured(outer)(None, {})))
    assert meta["noetl/step_rss_mb"] >= 100, meta


def test_size_and_preview() -> None:
    import pyarrow as pa

    table = pa.table({"a": [1, 2, 3]})
    assert size_of(table).startswith("3 rows, ")
    assert size_of({"columns": ["a"], "rows": [[1]], "row_count": 1}) == "1 rows"
    assert size_of({"status_code": 200, "body": "x" * 2048}) == "HTTP 200, 2.0 KB"
    assert preview(table) == "<table 3 rows: a>"
    assert len(preview({"k": "v" * 1000})) <= 160


def test_launchpad_default_is_the_playbook_workload() -> None:
    """The entry op's config defaults to the playbook's workload (the Launchpad shows it, not `{}`)."""
    import json

    defs = load_playbook_definitions(HERE, strict=True)
    job = defs.resolve_job_def("ops__route")
    config = job.run_config_schema.config_type.fields["ops"].config_type.fields["start"].config_type
    default = json.loads(config.fields["config"].config_type.fields["workload"].default_value_as_json_str)
    assert default == {"amount": 4200, "api": "http://127.0.0.1:9/never-called"}
    overridden = job.execute_in_process(run_config={"ops": {"start": {"config": {"workload": {"amount": 5}}}}},
                                        instance=dg.DagsterInstance.ephemeral())
    assert overridden.output_for_node("small") == {"size": "small"}  # amount 5: the other arc


def test_a_cycle_logs_each_member_and_the_arcs_leaving_it() -> None:
    defs = load_playbook_definitions(
        Path(__file__).parent / "conformance" / "cases" / "15_cycle_counter" / "playbook.yaml", strict=True)
    instance = dg.DagsterInstance.ephemeral()
    result = defs.resolve_job_def("conformance__cycle_counter").execute_in_process(instance=instance)
    lines = [e.user_message for e in instance.all_logs(result.run_id) if e.dagster_event is None]
    assert any(line.startswith("step fetch_page: success | tool python code (5 lines) | 3 run(s) in the cycle")
               for line in lines), lines
    assert any(line.startswith("cycle fetch_page: arcs leaving the cycle fired: fetch_page -> report | ")
               for line in lines), lines
