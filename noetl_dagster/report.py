"""NoETL-style step outcomes of a run, read from Dagster's result (:class:`RunReport`).

Example::

    from noetl_dagster import run_playbook
    report = run_playbook("playbooks/risk/score_application.yaml", workload={"threshold": 0.7})
    report.status, report.steps["score"].result
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import dagster as dg

from noetl_dagster.contract import FAILED_STEP_KEY, RESULT_OUTPUT, loop_items_of, parse_step_key
from noetl_dagster.planner import Net
from noetl_dagster.translator.emit import steps_metadata


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


def build_report(net: Net, result: dg.ExecuteInProcessResult | dg.JobExecutionResult) -> RunReport:
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
            failure_meta = data.user_failure_data.metadata if data.user_failure_data else {}
            for name, partial in steps_metadata(failure_meta).items():
                steps[name].status, steps[name].runs = partial["status"], partial["runs"]
            failed = failure_meta.get(FAILED_STEP_KEY)
            failed_name = str(getattr(failed, "value", failed) or node.steps[0])
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


def _result_value(result: dg.ExecuteInProcessResult | dg.JobExecutionResult, node: Any, key: str, output: str, step: str) -> Any:
    """The step's result from the op's ``result`` output, or from the token it rode on."""
    try:
        value = result.output_for_node(key, output)
    except Exception:  # noqa: BLE001 - not kept in memory (another IO manager): no value
        return None
    if output != RESULT_OUTPUT:
        stamped = (value.get("results") or {}).get(step)
        return stamped[1] if stamped else None
    return value.get(step) if node.kind == "region" else value
