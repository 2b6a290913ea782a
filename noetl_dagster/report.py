"""Run a playbook through its compiled Dagster job and report NoETL-style step outcomes.

Example::

    report = run_playbook("playbooks/risk/score_application.yaml", workload={"threshold": 0.7})
    report.status, report.steps["score"].result
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import dagster as dg

from .errors import Issue, PlaybookError
from .playbook.loader import load_playbook
from .playbook.catalog import PlaybookCatalog, calls_playbooks, catalog_for, catalog_root
from .resources.arrow_io import ArrowRefIOManager
from .playbook.models import Playbook
from .contract import FAILED_STEP_KEY, RESULT_OUTPUT, loop_items_of, parse_step_key
from .translator.emit import (build_definitions, build_job, default_resources, has_products, steps_metadata,
                              workload_run_config)
from .translator.guard import compiling, deep_enough
from .translator.plan import Net, plan
from .translator.translator import PlaybookTranslator

#: where `noetl-dagster run` records runs when DAGSTER_HOME is not set
LOCAL_DAGSTER_HOME = ".dagster_home"


@dataclass
class StepReport:
    status: str  # success | error | failed | skipped
    result: Any = None
    runs: int = 0
    error: str | None = None


@dataclass
class RunReport:
    status: str  # success | failure
    run_id: str
    steps: dict[str, StepReport] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` report: status, run_id and every declared step."""
        return {
            "status": self.status,
            "run_id": self.run_id,
            "steps": {name: {"status": s.status, "result": s.result, "runs": s.runs,
                             **({"error": s.error} if s.error is not None else {})}
                      for name, s in self.steps.items()},
        }

    @property
    def error_steps(self) -> dict[str, str]:
        """Steps that completed with an error result (status ``error``), with their messages."""
        return {name: s.error or "" for name, s in self.steps.items() if s.status == "error"}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), default=_json_default, sort_keys=False)


def _json_default(value: Any) -> Any:
    if hasattr(value, "to_dict") and callable(value.to_dict):
        return value.to_dict()
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if isinstance(value, (set, tuple)):
        return list(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def default_instance() -> dg.DagsterInstance:
    """The instance at ``DAGSTER_HOME``, else a persistent one under ``./.dagster_home``."""
    if os.environ.get("DAGSTER_HOME"):
        return dg.DagsterInstance.get()
    home = Path(LOCAL_DAGSTER_HOME).resolve()
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():  # the embedded default, with the event log that keeps its connections
        from .storage import write_instance_config

        write_instance_config(str(home))
    return dg.DagsterInstance.from_config(str(home))


def run_playbook(playbook: str | Path | Playbook, workload: Mapping[str, Any] | None = None, *,
                 instance: dg.DagsterInstance | None = None,
                 translator: PlaybookTranslator | None = None, log_level: str = "INFO",
                 resources: Mapping[str, Any] | None = None, catalog: PlaybookCatalog | None = None,
                 tags: Mapping[str, str] | None = None, run_id: str | None = None,
                 partition_key: str | None = None, on_error: str | None = None) -> RunReport:
    """Compile and execute a playbook in process; ``workload`` overrides top-level keys.

    ``catalog`` holds the playbooks it may call (default: the playbooks of its own folder tree).
    A partitioned playbook (``metadata.partitions``) runs ``partition_key`` (``YYYY-MM-DD``), by
    default its last partition, as its schedule would. ``on_error`` (``complete``: NoETL's error
    results complete their step; ``fail``: strict) overrides the playbook's
    ``metadata.dagster.on_error``.
    """
    if not isinstance(playbook, Playbook):
        playbook = load_playbook(playbook)
    net, job = compile_run_job(playbook, getattr(instance, "root_directory", None), translator=translator,
                               resources=resources, catalog=catalog, on_error=on_error)
    run_config = {**workload_run_config(playbook, net, translator, workload or {}),
                  "loggers": {"console": {"config": {"log_level": log_level.upper()}}}}
    partition_key = _partition_key(playbook, job, partition_key)
    with deep_enough(playbook):
        result = job.execute_in_process(run_config=run_config, instance=instance, raise_on_error=False,
                                        tags=dict(tags or {}), run_id=run_id, partition_key=partition_key)
    return build_report(net, result)


def _partition_key(playbook: Playbook, job: dg.JobDefinition, key: str | None) -> str | None:
    """``key`` checked against the job's partitions (the last one by default); None if unpartitioned."""
    partitions = job.partitions_def
    if partitions is None:
        if key is not None:
            raise PlaybookError([Issue(playbook.file, playbook.metadata.line or 1, 1,
                                       f"partition {key!r} given, but the playbook is not partitioned",
                                       field="metadata.partitions",
                                       hint="add `partitions: {daily: {start: YYYY-MM-DD}}` under metadata")])
        return None
    if key is None:
        key = partitions.get_last_partition_key()
        if key is None:
            start = playbook.metadata.partitions["daily"]["start"]
            raise PlaybookError([Issue(playbook.file, playbook.metadata.line or 1, 1,
                                       f"no daily partition is complete yet (they start on {start})",
                                       field="metadata.partitions", hint="pass a partition key, or wait a day")])
        return key
    if not partitions.has_partition_key(key):
        start = playbook.metadata.partitions["daily"]["start"]
        raise PlaybookError([Issue(playbook.file, playbook.metadata.line or 1, 1,
                                   f"partition {key!r} is not one of the playbook's daily partitions "
                                   f"(from {start} to yesterday)", field="metadata.partitions",
                                   hint="pass a date YYYY-MM-DD inside that range")])
    return key


def compile_run_job(playbook: Playbook, home: str | None, *, translator: PlaybookTranslator | None = None,
                    resources: Mapping[str, Any] | None = None, catalog: PlaybookCatalog | None = None,
                    on_error: str | None = None) -> tuple[Net, dg.JobDefinition]:
    """The plan and the job a run of ``playbook`` executes (what ``run --resume`` reconstructs too).

    A playbook with products runs its asset job, its products stored as Parquet under
    ``<home>/noetl_data`` (where `dagster dev` finds them); the catalog of sub-playbooks is read
    only when a step can call one. A compile failure is a PlaybookError naming the playbook.
    """
    if catalog is None:
        catalog = catalog_around(playbook) if calls_playbooks(playbook) else PlaybookCatalog.of([playbook])
    with compiling(playbook):
        net = plan(playbook)
        if has_products(playbook):
            products = ArrowRefIOManager(base_uri=os.path.join(home, "noetl_data")) if home else ArrowRefIOManager()
            resources = {"io_manager": products, **(resources or {})}
            defs = dg.Definitions.merge(build_definitions(playbook, translator, net, on_error),
                                        dg.Definitions(resources=default_resources(resources, catalog)))
            return net, defs.resolve_job_def((translator or PlaybookTranslator()).get_job_name(playbook))
        return net, build_job(playbook, translator, net, resources, catalog, on_error)


def playbook_root(playbook: Playbook) -> Path:
    """The folder a playbook's sub-playbooks are looked up in (see :func:`catalog_root`)."""
    return catalog_root(playbook)


def catalog_around(*playbooks: Playbook) -> PlaybookCatalog:
    """``playbooks`` plus the playbooks of their catalog root, read on demand (bounded)."""
    return catalog_for(*playbooks)


def build_report(net: Net, result: dg.ExecuteInProcessResult) -> RunReport:
    """Step statuses from the run's events; results from the ops' ``result`` outputs."""
    steps = {s.step: StepReport("skipped") for s in net.playbook.workflow}
    nodes = {n.name: n for n in net.nodes}
    loop_runs: dict[str, int] = {}
    for event in result.all_events:
        key = event.step_key
        if key is None:
            continue
        parsed = parse_step_key(key)  # asset jobs nest ops under the graph's name
        node = nodes.get(parsed.step)
        if node is None:
            continue
        if node.kind == "loop" and parsed.mapping_key and event.event_type_value in ("STEP_SUCCESS", "STEP_FAILURE"):
            loop_runs[node.name] = loop_runs.get(node.name, 0) + loop_items_of(key)
        if event.event_type_value == "STEP_OUTPUT":
            output = event.step_output_data.output_name
            for name, meta in steps_metadata(event.step_output_data.metadata).items():
                steps[name].status, steps[name].runs = meta["status"], meta["runs"]
                steps[name].error = meta.get("error")
                steps[name].result = plain(_result_value(result, node, parsed.op, output, name))
        elif event.event_type_value == "STEP_FAILURE":
            data = event.step_failure_data
            meta = data.user_failure_data.metadata if data.user_failure_data else {}
            for name, partial in steps_metadata(meta).items():
                steps[name].status, steps[name].runs = partial["status"], partial["runs"]
            failed = meta.get(FAILED_STEP_KEY)
            failed_name = getattr(failed, "value", failed) or node.steps[0]
            report = steps[failed_name]
            report.status = "failed"
            report.runs = max(report.runs, 1)
            if data.user_failure_data and data.user_failure_data.description:
                report.error = data.user_failure_data.description
            elif data.error:
                report.error = data.error.message.strip()
    for node_name, count in loop_runs.items():
        step = net.node(node_name).steps[0]
        steps[step].runs = count
    status = "success" if result.success and all(s.status != "failed" for s in steps.values()) else "failure"
    return RunReport(status, result.run_id, steps)


#: a product table with more rows than this is reported as a summary, not as rows
REPORT_MAX_ROWS = 1000


def plain(value: Any) -> Any:
    """A report value: Arrow tables (products) become rows, or a summary when large."""
    if hasattr(value, "to_pylist") and hasattr(value, "num_rows"):
        if value.num_rows <= REPORT_MAX_ROWS:
            return value.to_pylist()
        return {"num_rows": value.num_rows, "columns": value.column_names}
    return value


def _result_value(result: dg.ExecuteInProcessResult, node: Any, key: str, output: str, step: str) -> Any:
    """The step's result from the op's ``result`` output, or from the token it rode on."""
    try:
        value = result.output_for_node(key, output)
    except Exception:  # noqa: BLE001 - not kept in memory (another IO manager): no value
        return None
    if output != RESULT_OUTPUT:
        stamped = (value.get("results") or {}).get(step)
        return stamped[1] if stamped else None
    return value.get(step) if node.kind == "region" else value
