"""Data products: assets keyed [domain, name], checks, lineage across playbooks, schedules."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from noetl_dagster import PlaybookError, PlaybookTranslator, load_playbook_definitions, run_playbook
from noetl_dagster.playbook.loader import parse_text

CUSTOMERS = """apiVersion: noetl.io/v2
kind: Playbook
metadata:
  name: customer_360
  path: marketing/customer_360
  schedule: "0 * * * *"
  owners: [team:marketing]
workload: {n: 4, publish_vip: false}
workflow:
  - step: start
    tool: {kind: python, input: {n: "{{ n }}"}, code: "result = {'rows': [{'id': i, 'spend': i * 10.0} for i in range(n)]}"}
    next:
      spec: {mode: inclusive}
      arcs:
        - {step: customers}
        - {step: vip, when: "{{ publish_vip }}"}
  - step: customers
    desc: Every customer with their spend.
    tool: {kind: duckdb, query: "SELECT range AS id, (range * 10)::DOUBLE AS spend FROM range({{ n }})"}
    product:
      name: customer_360
      checks:
        - {columns: {id: int64, spend: double}}
        - {not_null: spend}
        - {unique: id}
        - {row_count: {min: 1}}
        - {sql: "SELECT count(*) FROM product WHERE spend < 0", name: no_negative_spend}
  - step: vip
    tool: {kind: python, code: "result = [{'id': 1}]"}
    product: {name: vip_customers}
"""

SCORES = """apiVersion: noetl.io/v2
kind: Playbook
metadata:
  name: score_application
  path: risk/score_application
  uses: [marketing/customer_360]
workflow:
  - step: start
    tool: {kind: python, code: "result = {'rows': [{'id': 1, 'score': 0.5}, {'id': 1, 'score': None}]}"}
    product:
      name: application_scores
      checks:
        - {not_null: score}
        - {unique: id}
        - {row_count: {min: 5}}
"""


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "marketing").mkdir()
    (tmp_path / "risk").mkdir()
    (tmp_path / "marketing" / "customer_360.yaml").write_text(CUSTOMERS)
    (tmp_path / "risk" / "score_application.yaml").write_text(SCORES)
    return tmp_path


def test_products_are_assets_with_domain_group_lineage_and_checks(tree):
    defs = load_playbook_definitions(tree, strict=True)
    dg.Definitions.validate_loadable(defs)  # what `dagster definitions validate` checks
    graph = defs.resolve_asset_graph()
    key = dg.AssetKey(["marketing", "customer_360"])
    node = graph.get(key)
    assert node.group_name == "marketing"
    assert node.owners == ["team:marketing"]
    assert "noetl" in node.kinds and "duckdb" in node.kinds
    assert node.metadata["dagster/code_references"].code_references[0].line_number == 17
    scores = graph.get(dg.AssetKey(["risk", "application_scores"]))
    assert key in scores.parent_keys  # lineage across playbooks
    checks = {c.name for c in graph.asset_check_keys if c.asset_key == key}
    assert checks == {"columns", "not_null_spend", "unique_id", "row_count", "no_negative_spend"}
    assert defs.resolve_job_def("marketing__customer_360") is not None
    schedule = defs.get_schedule_def("marketing__customer_360__schedule")
    assert schedule.cron_schedule == "0 * * * *"


def test_run_materializes_only_fired_products_and_evaluates_checks(tree, instance):
    report = run_playbook(tree / "marketing" / "customer_360.yaml", instance=instance)
    assert report.status == "success"
    assert report.steps["vip"].status == "skipped"
    assert report.steps["customers"].result == [{"id": i, "spend": i * 10.0} for i in range(4)]
    mat = instance.get_latest_materialization_event(dg.AssetKey(["marketing", "customer_360"]))
    assert mat is not None
    assert instance.get_latest_materialization_event(dg.AssetKey(["marketing", "vip_customers"])) is None
    evaluations = _check_results(instance, report.run_id)
    assert evaluations == {"columns": True, "not_null_spend": True, "unique_id": True, "row_count": True,
                           "no_negative_spend": True}


def test_failing_checks_show_the_offending_count(tree, instance):
    report = run_playbook(tree / "risk" / "score_application.yaml", instance=instance)
    assert report.status == "success"  # checks warn, they do not fail the run
    records = _check_records(instance, report.run_id)
    assert {k: v.passed for k, v in records.items()} == {"not_null_score": False, "unique_id": False,
                                                          "row_count": False}
    assert records["not_null_score"].metadata["offending_rows"].value == 1
    assert records["unique_id"].metadata["offending_rows"].value == 1
    assert records["row_count"].metadata["row_count"].value == 2


def _check_records(instance, run_id):
    out = {}
    for record in instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION):
        data = record.dagster_event.event_specific_data
        out[data.check_name] = data
    return out


def _check_results(instance, run_id):
    return {k: v.passed for k, v in _check_records(instance, run_id).items()}


def test_product_in_a_cycle_and_bad_schedule_are_errors():
    text = CUSTOMERS.replace('schedule: "0 * * * *"', 'schedule: "every hour"')
    with pytest.raises(PlaybookError) as err:
        parse_text(text, "c.yaml")
    assert "schedule 'every hour' is not a cron expression" in str(err.value)
    bad_check = CUSTOMERS.replace("- {not_null: spend}", "- {not_null: spend, unique: id}")
    with pytest.raises(PlaybookError, match="exactly one of"):
        parse_text(bad_check, "c.yaml")


def test_duplicate_product_across_playbooks(tree, caplog):
    (tree / "marketing" / "copy.yaml").write_text(CUSTOMERS.replace("path: marketing/customer_360",
                                                                    "path: marketing/copy"))
    defs = load_playbook_definitions(tree)
    assert "already published" in caplog.text
    assert len([j for j in defs.jobs if "marketing" in j.name]) == 1


READER = """apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: big_spenders, path: risk/big_spenders}
workflow:
  - step: start
    tool: {kind: duckdb, query: "SELECT count(*) AS n, sum(spend) AS total FROM {{ product('marketing/customer_360') }} WHERE spend >= 20"}
    product: {name: big_spenders, checks: [{row_count: {min: 1}}]}
"""


def test_reading_another_domains_product_by_reference(tree, instance):
    (tree / "risk" / "big_spenders.yaml").write_text(READER)
    defs = load_playbook_definitions(tree, strict=True)
    node = defs.resolve_asset_graph().get(dg.AssetKey(["risk", "big_spenders"]))
    assert dg.AssetKey(["marketing", "customer_360"]) in node.parent_keys
    before = run_playbook(tree / "risk" / "big_spenders.yaml", instance=instance)
    assert before.status == "failure" and "has no stored data yet" in before.steps["start"].error
    assert run_playbook(tree / "marketing" / "customer_360.yaml", instance=instance).status == "success"
    report = run_playbook(tree / "risk" / "big_spenders.yaml", instance=instance)
    assert report.status == "success", report.steps["start"].error
    assert report.steps["start"].result == [{"n": 2, "total": 50.0}]
    stored = Path(instance.root_directory) / "noetl_data" / "marketing" / "customer_360"
    assert any(p.suffix == ".parquet" for p in stored.rglob("*"))


MIDDLE = """apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: middle, path: ops/middle}
workflow:
  - step: start
    tool: {kind: python, code: "result = [{'id': 1}, {'id': 2}]"}
    product: {name: ids}
    next: end
  - step: end
    tool: {kind: python, input: {n: "{{ start | length }}"}, code: "result = {'published': n}"}
"""


def test_final_steps_after_a_product_become_the_run_outcome_asset(tmp_path, instance):
    path = tmp_path / "middle.yaml"
    path.write_text(MIDDLE)
    defs = load_playbook_definitions(tmp_path, strict=True)
    dg.Definitions.validate_loadable(defs)
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert keys == {"ops/ids", "ops/middle__outcome"}
    report = run_playbook(path, instance=instance)
    assert report.status == "success"
    assert report.steps["end"].result == {"published": 2}
    assert instance.get_latest_materialization_event(dg.AssetKey(["ops", "middle__outcome"])) is not None


class Lake(PlaybookTranslator):
    """Every product key under ``lake``: ``[lake, marketing, customer_360]``."""

    def get_asset_key(self, playbook, step):  # type: ignore[no-untyped-def]
        return super().get_asset_key(playbook, step).with_prefix("lake")


TOTAL = """apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: spend_total, path: risk/spend_total}
workflow:
  - step: start
    tool: {kind: duckdb, query: "SELECT sum(spend) AS total FROM {{ product('marketing/customer_360') }}"}
"""


def test_a_consumer_run_alone_reads_products_by_the_translators_keys(tree, instance):
    """run_playbook of one consumer (a product of its own, or none) finds what a producer run
    stored under the key a key-changing translator gives it."""
    (tree / "risk" / "big_spenders.yaml").write_text(READER)
    (tree / "risk" / "spend_total.yaml").write_text(TOTAL)
    producer = run_playbook(tree / "marketing" / "customer_360.yaml", instance=instance, translator=Lake())
    assert producer.status == "success"
    data = Path(instance.root_directory) / "noetl_data"
    assert any(p.suffix == ".parquet" for p in (data / "lake" / "marketing" / "customer_360").rglob("*"))
    assert not (data / "marketing").exists()

    report = run_playbook(tree / "risk" / "big_spenders.yaml", instance=instance, translator=Lake())
    assert report.status == "success", report.steps["start"].error
    assert report.steps["start"].result == [{"n": 2, "total": 50.0}]
    assert any(p.suffix == ".parquet" for p in (data / "lake" / "risk" / "big_spenders").rglob("*"))
    total = run_playbook(tree / "risk" / "spend_total.yaml", instance=instance, translator=Lake())
    assert total.status == "success", total.steps["start"].error
    assert total.steps["start"].result["rows"] == [{"total": 60.0}]

    plain = run_playbook(tree / "risk" / "spend_total.yaml", instance=instance)  # the plain key holds nothing
    assert plain.status == "failure" and "has no stored data yet" in plain.steps["start"].error
    assert run_playbook(tree / "marketing" / "customer_360.yaml", instance=instance).status == "success"
    plain = run_playbook(tree / "risk" / "spend_total.yaml", instance=instance)  # a consumer without products
    assert plain.status == "success", plain.steps["start"].error  # used to lack the ArrowRefIOManager
    assert plain.steps["start"].result["rows"] == [{"total": 60.0}]
