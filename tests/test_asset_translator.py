"""The asset-first translator: every ``get_*`` override point changes what Dagster defines and
materializes (real runs in process, products stored by the ArrowRefIOManager)."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from noetl_dagster import PlaybookError, PlaybookTranslator, load_playbook_definitions, playbook_asset_specs
from noetl_dagster.ai import TunedTranslator
from noetl_dagster.ai.profiles import ProfileEntry, TuningProfile
from noetl_dagster.contract import TIMEOUT_TAG
from noetl_dagster.io.manager import ArrowRefIOManager
from noetl_dagster.translator.emit import build_definitions
from noetl_dagster.playbook.loader import parse_text

CUSTOMERS = """apiVersion: noetl.io/v2
kind: Playbook
metadata:
  name: customer_360
  path: marketing/customer_360
  owners: [team:marketing]
workflow:
  - step: start
    desc: Every customer with their spend.
    tool: {kind: duckdb, query: "SELECT range AS id, (range * 10)::DOUBLE AS spend FROM range(4)"}
    product:
      name: customer_360
      checks:
        - {unique: id}
        - {row_count: {min: 10}}
"""

READER = """apiVersion: noetl.io/v2
kind: Playbook
metadata:
  name: big_spenders
  path: risk/big_spenders
  uses: [marketing/customer_360]
workflow:
  - step: start
    tool: {kind: duckdb, query: "SELECT count(*) AS n FROM {{ product('marketing/customer_360') }} WHERE spend >= 20"}
    product: {name: big_spenders}
"""

CUSTOMERS_KEY = dg.AssetKey(["marketing", "customer_360"])


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "marketing").mkdir()
    (tmp_path / "risk").mkdir()
    (tmp_path / "marketing" / "customer_360.yaml").write_text(CUSTOMERS)
    (tmp_path / "risk" / "big_spenders.yaml").write_text(READER)
    return tmp_path


def _defs(tree: Path, translator: PlaybookTranslator) -> dg.Definitions:
    store = ArrowRefIOManager(base_uri=str(tree / "data"))
    return load_playbook_definitions(tree, translator=translator, strict=True, resources={"io_manager": store})


def _run(defs: dg.Definitions, job: str, instance: dg.DagsterInstance, **kwargs: Any) -> dg.ExecuteInProcessResult:
    return defs.resolve_job_def(job).execute_in_process(instance=instance, raise_on_error=False, **kwargs)


def _spec(defs: dg.Definitions, key: dg.AssetKey) -> dg.AssetSpec:
    return next(s for a in defs.assets or [] for s in getattr(a, "specs", []) if s.key == key)


class Domains(PlaybookTranslator):
    def get_domain(self, playbook):  # type: ignore[no-untyped-def]
        return "lake_" + super().get_domain(playbook)


def test_get_domain_drives_keys_groups_and_lineage(tree: Path, instance: dg.DagsterInstance) -> None:
    defs = _defs(tree, Domains())
    graph = defs.resolve_asset_graph()
    upstream, reader = dg.AssetKey(["lake_marketing", "customer_360"]), dg.AssetKey(["lake_risk", "big_spenders"])
    assert graph.get(reader).parent_keys == {upstream}  # `uses:` resolves to the producer's new key
    assert CUSTOMERS_KEY not in graph.get_all_asset_keys()
    assert _spec(defs, upstream).group_name == "lake_marketing" and _spec(defs, reader).group_name == "lake_risk"
    assert defs.resolve_job_def("marketing__customer_360").tags["noetl/domain"] == "lake_marketing"
    assert _run(defs, "marketing__customer_360", instance).success
    result = _run(defs, "risk__big_spenders", instance)  # `product('marketing/...')` reads the new key
    assert result.success
    assert result.asset_value(reader) is not None
    assert instance.get_latest_materialization_event(reader) is not None
    assert (tree / "data" / "lake_marketing" / "customer_360").exists()


class Prefixed(PlaybookTranslator):
    def get_asset_key(self, playbook, step):  # type: ignore[no-untyped-def]
        return super().get_asset_key(playbook, step).with_prefix("noetl")


def test_get_asset_key(tree: Path, instance: dg.DagsterInstance) -> None:
    defs = _defs(tree, Prefixed())
    key = dg.AssetKey(["noetl", "marketing", "customer_360"])
    reader = dg.AssetKey(["noetl", "risk", "big_spenders"])
    assert defs.resolve_asset_graph().get(reader).parent_keys == {key}
    assert _run(defs, "marketing__customer_360", instance).success
    assert instance.get_latest_materialization_event(key) is not None
    assert instance.get_latest_materialization_event(CUSTOMERS_KEY) is None
    checks = {c.asset_key for c in defs.resolve_asset_graph().asset_check_keys}
    assert checks == {key}
    assert _run(defs, "risk__big_spenders", instance).success


class Described(PlaybookTranslator):
    def get_group_name(self, playbook, step):  # type: ignore[no-untyped-def]
        return self.get_job_name(playbook)

    def get_owners(self, playbook, step):  # type: ignore[no-untyped-def]
        return [*(super().get_owners(playbook, step) or []), "team:platform"]

    def get_kinds(self, playbook, step):  # type: ignore[no-untyped-def]
        return super().get_kinds(playbook, step) | {step.product.kind}

    def get_description(self, playbook, step):  # type: ignore[no-untyped-def]
        return f"{super().get_description(playbook, step) or ''} (by {playbook.metadata.catalog_path})"

    def get_metadata(self, playbook, step):  # type: ignore[no-untyped-def]
        return {**super().get_metadata(playbook, step), "docs": dg.MetadataValue.url(f"https://wiki/{step.product.name}")}


@pytest.mark.parametrize("field,want", [
    ("group_name", "marketing__customer_360"),
    ("owners", ["team:marketing", "team:platform"]),
    ("kinds", {"noetl", "duckdb", "table"}),
    ("description", "Every customer with their spend. (by marketing/customer_360)"),
])
def test_spec_overrides(tree: Path, instance: dg.DagsterInstance, field: str, want: Any) -> None:
    defs = _defs(tree, Described())
    spec = _spec(defs, CUSTOMERS_KEY)
    assert getattr(spec, field) == want
    assert spec.key == Described().get_asset_spec(parse_text(CUSTOMERS), parse_text(CUSTOMERS).workflow[0]).key
    result = _run(defs, "marketing__customer_360", instance)
    assert result.success and instance.get_latest_materialization_event(CUSTOMERS_KEY) is not None


def test_get_metadata(tree: Path, instance: dg.DagsterInstance) -> None:
    defs = _defs(tree, Described())
    metadata = _spec(defs, CUSTOMERS_KEY).metadata
    assert metadata["docs"] == dg.MetadataValue.url("https://wiki/customer_360")
    assert metadata["noetl/step"] == "start" and "dagster/code_references" in metadata
    assert _run(defs, "marketing__customer_360", instance).success


class Checks(PlaybookTranslator):
    def get_asset_check_spec(self, playbook, step, check):  # type: ignore[no-untyped-def]
        spec = super().get_asset_check_spec(playbook, step, check)
        if check.kind != "row_count":
            return spec
        return dg.AssetCheckSpec(f"team_{spec.name}", asset=spec.asset_key, blocking=True,
                                 description="at least ten customers", metadata={"owner": "team:marketing"})


def test_get_asset_check_spec(tree: Path, instance: dg.DagsterInstance) -> None:
    defs = _defs(tree, Checks())
    names = {k.name for k in defs.resolve_asset_graph().asset_check_keys if k.asset_key == CUSTOMERS_KEY}
    assert names == {"unique_id", "team_row_count"}
    result = _run(defs, "marketing__customer_360", instance)
    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert evaluations["unique_id"].passed
    failed = evaluations["team_row_count"]  # 4 rows < 10: fails, and blocking makes it an ERROR
    assert not failed.passed and failed.severity == dg.AssetCheckSeverity.ERROR
    assert PlaybookTranslator().get_asset_check_spec(
        parse_text(CUSTOMERS), parse_text(CUSTOMERS).workflow[0],
        parse_text(CUSTOMERS).workflow[0].product.checks[1]).blocking is False  # type: ignore[union-attr]


SLOW = """apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: slow_product, path: ops/slow_product}
workload: {sleep: 30}
workflow:
  - step: start
    tool: {kind: python, input: {s: "{{ workload.sleep }}"}, code: "import time\\ntime.sleep(s)\\nresult = [{'id': 1}]"}
    product: {name: slow_rows}
"""


class Timeouts(PlaybookTranslator):
    def get_op_timeout(self, playbook, step):  # type: ignore[no-untyped-def]
        return 1.5 if step.step == "start" else None


def test_get_op_timeout_bounds_a_product_step(tmp_path: Path, instance: dg.DagsterInstance) -> None:
    (tmp_path / "slow.yaml").write_text(SLOW)
    defs = _defs(tmp_path, Timeouts())
    job = defs.resolve_job_def("ops__slow_product")
    node = job.graph.node_named("ops__slow_product__playbook").definition.node_named("start")
    assert node.definition.tags[TIMEOUT_TAG] == "1.5"  # shown as information
    result = _run(defs, "ops__slow_product", instance)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "timed out after 1.5s" in failure.step_failure_data.error.message
    assert _run(defs, "ops__slow_product", instance, run_config={"ops": {"ops__slow_product__playbook": {
        "ops": {"start": {"config": {"workload": {"sleep": 0}}}}}}}).success


def test_bad_op_timeouts_are_clear_errors(tmp_path: Path) -> None:
    playbook = parse_text(SLOW)

    class Bad(PlaybookTranslator):
        def get_op_timeout(self, playbook, step):  # type: ignore[no-untyped-def]
            return "soon"

    class Legacy(PlaybookTranslator):  # the old tag side channel is refused, never silently ignored
        def get_op_tags(self, playbook, step):  # type: ignore[no-untyped-def]
            return {**super().get_op_tags(playbook, step), TIMEOUT_TAG: "5"}

    with pytest.raises(PlaybookError, match=r"step 'start': timeout: the translator's get_op_timeout returned 'soon'"):
        build_definitions(playbook, Bad())
    with pytest.raises(PlaybookError, match="override get_op_timeout"):
        build_definitions(playbook, Legacy())


def test_tuned_translator_timeout_goes_through_get_op_timeout() -> None:
    playbook = parse_text(SLOW)
    profile = TuningProfile(playbook="ops/slow_product", version=1, steps={"start": [ProfileEntry(
        parameter="timeout_seconds", value=240, status="approved")]})
    tuned = TunedTranslator(profiles={"ops/slow_product": profile})
    assert tuned.get_op_timeout(playbook, playbook.workflow[0]) == 240
    assert TIMEOUT_TAG not in tuned.get_op_tags(playbook, playbook.workflow[0])


REGIONS = """apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: regional, path: sales/regional, schedule: "0 3 * * *"}
workflow:
  - step: start
    tool: {kind: python, input: {region: "{{ partition_key }}"}, code: "result = [{'region': region, 'n': 1}]"}
    product:
      name: regional
      checks:
        - {sql: "SELECT count(*) FROM product WHERE region <> '{{ partition_key }}'", name: one_region}
"""


class Regional(PlaybookTranslator):
    def get_partitions_def(self, playbook):  # type: ignore[no-untyped-def]
        return dg.StaticPartitionsDefinition(["eu", "us"])


def test_get_partitions_def(tmp_path: Path, instance: dg.DagsterInstance) -> None:
    (tmp_path / "regional.yaml").write_text(REGIONS)
    defs = _defs(tmp_path, Regional())
    key = dg.AssetKey(["sales", "regional"])
    assert _spec(defs, key).partitions_def == dg.StaticPartitionsDefinition(["eu", "us"])
    dg.Definitions.validate_loadable(defs)
    schedule = defs.resolve_schedule_def("sales__regional__schedule")
    assert schedule.cron_schedule == "0 3 * * *"
    tick = datetime.datetime(2026, 12, 6, 3, tzinfo=datetime.timezone.utc)
    with dg.build_schedule_context(instance=instance, scheduled_execution_time=tick,
                                   repository_def=defs.get_repository_def()) as context:
        requests = schedule.evaluate_tick(context).run_requests
    assert [r.partition_key for r in requests or []] == ["eu", "us"]
    result = _run(defs, "sales__regional", instance, partition_key="eu")
    assert result.success
    assert result.asset_value(key).to_pylist() == [{"region": "eu", "n": 1}]
    assert instance.get_materialized_partitions(key) == {"eu"}
    assert [e.passed for e in result.get_asset_check_evaluations()] == [True]


def test_playbook_asset_specs_compose(tree: Path, instance: dg.DagsterInstance) -> None:
    specs = playbook_asset_specs(tree, translator=Domains())
    by_key = {s.key: s for s in specs}
    upstream, reader = dg.AssetKey(["lake_marketing", "customer_360"]), dg.AssetKey(["lake_risk", "big_spenders"])
    assert set(by_key) == {upstream, reader}
    assert [d.asset_key for d in by_key[reader].deps] == [upstream]
    assert by_key[upstream].owners == ["team:marketing"] and by_key[upstream].group_name == "lake_marketing"

    @dg.asset(deps=[by_key[reader]])
    def dashboard() -> int:
        return 1

    defs = dg.Definitions.merge(_defs(tree, Domains()), dg.Definitions(assets=[dashboard]))
    assert defs.resolve_asset_graph().get(dashboard.key).parent_keys == {reader}
    assert playbook_asset_specs([parse_text(CUSTOMERS)])[0].key == CUSTOMERS_KEY
    assert _run(defs, "marketing__customer_360", instance).success


def test_every_override_point_is_documented_with_examples() -> None:
    points = [name for name in vars(PlaybookTranslator) if name.startswith("get_")]
    assert {"get_asset_spec", "get_asset_check_spec", "get_op_timeout", "get_partitions_def"} <= set(points)
    undocumented = [name for name in points if "Examples:" not in (getattr(PlaybookTranslator, name).__doc__ or "")]
    assert not undocumented


def test_a_translator_failing_on_one_playbook_leaves_the_others(tree: Path, caplog: pytest.LogCaptureFixture) -> None:
    class Broken(Domains):
        def get_asset_key(self, playbook, step):  # type: ignore[no-untyped-def]
            if playbook.metadata.name == "big_spenders":
                raise ValueError("no key for big_spenders")
            return super().get_asset_key(playbook, step)

    defs = load_playbook_definitions(tree, translator=Broken())
    assert "no key for big_spenders" in caplog.text and "big_spenders.yaml" in caplog.text
    keys = defs.resolve_asset_graph().get_all_asset_keys()
    assert dg.AssetKey(["lake_marketing", "customer_360"]) in keys
    assert not any("big_spenders" in k.to_user_string() for k in keys)
