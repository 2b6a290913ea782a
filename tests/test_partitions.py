"""Daily-partitioned playbooks end to end: `{{ partition_key }}` in steps, one stored object per
partition, materializations and checks per partition, and `noetl-dagster run --partition`."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from noetl_dagster import PlaybookError, load_playbook_definitions, run_playbook
from noetl_dagster.cli import main
from noetl_dagster.playbook.loader import parse_text

ORDERS = """apiVersion: noetl.io/v2
kind: Playbook
metadata:
  name: daily_orders
  path: sales/daily_orders
  partitions: {daily: {start: "2026-11-01"}}
  schedule: "0 2 * * *"
workload: {orders_per_day: 5}
workflow:
  - step: start
    tool:
      kind: python
      input: {day: "{{ partition_key }}", n: "{{ workload.orders_per_day }}"}
      code: |
        import datetime
        d = datetime.date.fromisoformat(day)
        result = {"day": day, "orders": [{"order_id": f"{day}-{i}", "day": day, "amount": d.day * 10 + i}
                                         for i in range(n)]}
    next: orders
  - step: orders
    product:
      name: orders
      checks:
        - {not_null: order_id}
        - {unique: order_id}
        - {sql: "SELECT count(*) FROM product WHERE day <> '{{ partition_key }}'", description: one day per partition}
    tool:
      kind: duckdb
      format: arrow
      tables: {o: "{{ start.orders }}"}
      query: SELECT order_id, day, amount FROM o WHERE day = '{{ partition_key }}' ORDER BY order_id
"""

PLAIN = """apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: daily_ping, path: ops/daily_ping, partitions: {daily: {start: "2026-11-01"}}}
workflow:
  - step: start
    tool: {kind: noop, result: {day: "{{ partition_key }}"}}
"""


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "sales").mkdir()
    (tmp_path / "sales" / "daily_orders.yaml").write_text(ORDERS)
    return tmp_path


def test_each_partition_is_its_own_run_object_and_check(tree: Path, instance: dg.DagsterInstance) -> None:
    key = dg.AssetKey(["sales", "orders"])
    for day in ("2026-11-03", "2026-11-04"):
        report = run_playbook(tree / "sales" / "daily_orders.yaml", instance=instance, partition_key=day,
                              log_level="WARNING")
        assert report.status == "success", {k: s.error for k, s in report.steps.items() if s.error}
        assert report.steps["start"].result["day"] == day
        assert {r["day"] for r in report.steps["orders"].result} == {day}
    materialized = instance.get_materialized_partitions(key)
    assert materialized == {"2026-11-03", "2026-11-04"}
    # one Parquet object per partition under the instance's data folder, holding that day only
    root = Path(instance.root_directory) / "noetl_data" / "sales" / "orders"
    assert sorted(p.name for p in root.iterdir()) == ["2026-11-03", "2026-11-04"]
    import pyarrow.parquet as pq

    day4 = pq.read_table(root / "2026-11-04" / "data.parquet").to_pylist()
    assert [r["amount"] for r in day4] == [40, 41, 42, 43, 44] and {r["day"] for r in day4} == {"2026-11-04"}
    checks = {r.dagster_event.event_specific_data.check_name: r.dagster_event.event_specific_data
              for r in instance.all_logs(report.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)}
    assert set(checks) == {"not_null_order_id", "unique_order_id", "sql"}
    assert all(c.passed for c in checks.values()), {k: dict(c.metadata) for k, c in checks.items()}
    assert {c.partition for c in checks.values()} == {"2026-11-04"}  # evaluated on the run's partition


def test_definitions_have_a_partitioned_job_and_schedule(tree: Path) -> None:
    defs = load_playbook_definitions(tree, strict=True)
    job = defs.resolve_job_def("sales__daily_orders")
    assert isinstance(job.partitions_def, dg.DailyPartitionsDefinition)
    assert job.partitions_def.start.strftime("%Y-%m-%d") == "2026-11-01"
    schedule = defs.resolve_schedule_def("sales__daily_orders__schedule")
    assert schedule.cron_schedule == "0 2 * * *" and schedule.job_name == "sales__daily_orders"


def test_plain_jobs_are_partitioned_too_and_default_to_the_last_partition(instance: dg.DagsterInstance) -> None:
    playbook = parse_text(PLAIN, "daily_ping.yaml")
    report = run_playbook(playbook, instance=instance)
    last = dg.DailyPartitionsDefinition(start_date="2026-11-01").get_last_partition_key()
    assert report.status == "success" and report.steps["start"].result == {"day": last}
    run = instance.get_run_by_id(report.run_id)
    assert run.tags["dagster/partition"] == last


def test_partition_errors_name_the_playbook(tree: Path, instance: dg.DagsterInstance) -> None:
    with pytest.raises(PlaybookError, match=r"daily_orders.yaml:\d+:1: metadata.partitions: partition "
                                            r"'2019-01-01' is not one of the playbook's daily partitions"):
        run_playbook(tree / "sales" / "daily_orders.yaml", instance=instance, partition_key="2019-01-01")
    unpartitioned = parse_text(PLAIN.replace(", partitions: {daily: {start: \"2026-11-01\"}}", ""), "ping.yaml")
    with pytest.raises(PlaybookError, match="the playbook is not partitioned"):
        run_playbook(unpartitioned, instance=instance, partition_key="2026-11-03")


def test_cli_run_partition(tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                           capsys: pytest.CaptureFixture) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    assert main(["run", str(tree / "sales" / "daily_orders.yaml"), "--partition", "2026-11-05", "--json"]) == 0
    assert '"day": "2026-11-05"' in capsys.readouterr().out
    assert main(["run", str(tree / "sales" / "daily_orders.yaml"), "--partition", "someday"]) == 1
    assert "partition 'someday' is not one of" in capsys.readouterr().err
