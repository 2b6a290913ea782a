"""NoETL's error results: a tool that *returns* an error completes its step (status ``error``),
its ``set:`` and arcs apply and the run completes; only a *raised* tool error fails the step.
Strict mode (``metadata.dagster.on_error: fail``) turns error results into failures.

Also the result shapes templates see (flattened pipelines, nested scoped ``set:``, python
wrapper globals, rendered ``code:``, the numeric ``execution_id``), retries of error results and
what ``noetl-dagster run`` prints. Every playbook here is this project's own.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from noetl_dagster import run_playbook
from noetl_dagster.playbook.loader import parse_text
from noetl_dagster.runtime.step import numeric_execution_id
from noetl_dagster.translator.translator import PlaybookTranslator

ROOT = Path(__file__).resolve().parent.parent


def _playbook(tmp_path: Path, body: str, name: str = "p", extra_meta: str = "") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"apiVersion: noetl.io/v2\nkind: Playbook\nmetadata:\n  name: {name}\n  path: tests/{name}\n"
                    f"{extra_meta}{body}")
    return path


ROUTE_ON_ERROR = """workload:
  divisor: 0
workflow:
  - step: start
    tool: {kind: noop}
    next: divide
  - step: divide
    tool:
      kind: python
      input: {d: "{{ workload.divisor }}"}
      code: |
        print("dividing by", d)
        result = {"q": 10 / d}
    set:
      ctx.saw_stderr: "{{ output.stderr is defined }}"
    next:
      spec: {mode: exclusive}
      arcs:
        - step: recover
          when: "{{ divide.stderr is defined and 'ZeroDivisionError' in divide.stderr }}"
        - step: report
  - step: recover
    tool:
      kind: python
      input: {seen: "{{ saw_stderr }}", out: "{{ divide.stdout }}"}
      code: |
        result = {"recovered": True, "seen": seen, "printed": out}
    next: end
  - step: report
    tool: {kind: noop, result: {q: "{{ divide.q }}"}}
    next: end
  - step: end
    tool: {kind: noop}
"""


def test_python_exception_completes_the_step_and_routes_on_it(tmp_path, instance) -> None:
    report = run_playbook(_playbook(tmp_path, ROUTE_ON_ERROR), instance=instance)
    assert report.status == "success"
    divide = report.steps["divide"]
    assert divide.status == "error" and divide.runs == 1
    assert divide.error == "ZeroDivisionError: division by zero (code line 2)"
    # NoETL's error data of a python step: {stdout, stderr}; what the code printed is its stdout
    assert divide.result["stdout"] == "dividing by 0\n"
    assert divide.result["stderr"].startswith("Traceback (most recent call last):\n")
    assert divide.result["stderr"].endswith("ZeroDivisionError: division by zero\n")
    assert report.steps["recover"].status == "success"
    assert report.steps["recover"].result == {"recovered": True, "seen": True, "printed": "dividing by 0\n"}
    assert report.steps["report"].status == "skipped"
    assert report.steps["end"].status == "success"
    assert report.error_steps == {"divide": "ZeroDivisionError: division by zero (code line 2)"}
    # the run is tagged so Dagster users see it, and the step's output carries the status
    run = instance.get_run_by_id(report.run_id)
    assert run.tags["noetl/outcome"] == "completed_with_errors"
    assert run.tags["noetl/error_steps"] == "divide"
    assert run.tags["noetl/execution_id"] == str(numeric_execution_id(report.run_id))
    outputs = [e for e in instance.all_logs(report.run_id, of_type=dg.DagsterEventType.STEP_OUTPUT)
               if e.step_key == "divide" and e.dagster_event.step_output_data.output_name == "result"]
    metadata = outputs[0].dagster_event.step_output_data.metadata
    assert metadata["noetl/status"].value == "error"
    assert "ZeroDivisionError: division by zero" in metadata["noetl/error"].value
    errors = [e for e in instance.all_logs(report.run_id) if e.level >= 40 and "error result" in (e.user_message or "")]
    assert errors and "step 'divide' completed with an error result" in errors[0].user_message


def test_strict_mode_fails_the_step(tmp_path, instance) -> None:
    strict = _playbook(tmp_path, ROUTE_ON_ERROR, "strict", "  dagster: {on_error: fail}\n")
    report = run_playbook(strict, instance=instance)
    assert report.status == "failure"
    assert report.steps["divide"].status == "failed"
    assert "ZeroDivisionError: division by zero" in report.steps["divide"].error
    assert {report.steps[s].status for s in ("recover", "report", "end")} == {"skipped"}
    # the same playbook without the key, made strict by the caller
    lenient = _playbook(tmp_path, ROUTE_ON_ERROR, "lenient")
    assert run_playbook(lenient, instance=instance, on_error="fail").status == "failure"
    assert run_playbook(lenient, instance=instance).status == "success"


def test_strict_mode_from_a_translator_override(tmp_path, instance) -> None:
    class Strict(PlaybookTranslator):
        def get_on_error(self, playbook):  # type: ignore[no-untyped-def]
            return "fail"

    report = run_playbook(_playbook(tmp_path, ROUTE_ON_ERROR), instance=instance, translator=Strict())
    assert report.status == "failure" and report.steps["divide"].status == "failed"


def test_a_bad_on_error_value_is_a_validation_error(tmp_path) -> None:
    from noetl_dagster.playbook.loader import validate_file

    path = _playbook(tmp_path, ROUTE_ON_ERROR, "bad", "  dagster: {on_error: sometimes}\n")
    issues = [str(i) for i in validate_file(path)]
    assert any("metadata.dagster.on_error" in i and "'sometimes'" in i and "bad.yaml:6:" in i for i in issues), issues


def test_a_raised_tool_error_still_fails_the_step(tmp_path, instance) -> None:
    body = """workflow:
  - step: start
    tool: {kind: noop}
    next: query
  - step: query
    tool: {kind: duckdb, query: "SELECT * FROM no_such_table"}
    next: end
  - step: end
    tool: {kind: noop}
"""
    report = run_playbook(_playbook(tmp_path, body), instance=instance)
    assert report.status == "failure"
    assert report.steps["query"].status == "failed" and "no_such_table" in report.steps["query"].error
    assert report.steps["end"].status == "skipped"


HTTP_PIPELINE = """workload:
  base_url: http://127.0.0.1:9
workflow:
  - step: start
    tool: {kind: noop}
    next: fetch
  - step: fetch
    tool:
      - name: missing
        kind: http
        url: "{{ workload.base_url }}/nothing-here"
        spec:
          policy:
            rules:
              - when: "{{ output.status == 'error' and output.data.status_code == 404 }}"
                then: {do: continue, set: {ctx.missing_code: "{{ output.data.status_code }}"}}
      - name: items
        kind: http
        url: "{{ workload.base_url }}/items"
      - name: summary
        kind: python
        input: {code: "{{ ctx.missing_code }}", n: "{{ items.data['items'] | length }}"}
        code: |
          result = {"code": code, "n": n}
    next: end
  - step: end
    tool: {kind: noop, result: {code: "{{ fetch.code }}", n: "{{ fetch.n }}", first: "{{ fetch.items.data['items'][0] }}"}}
"""


def test_http_non_2xx_is_an_error_envelope_in_a_pipeline(tmp_path, items_server, instance) -> None:
    report = run_playbook(_playbook(tmp_path, HTTP_PIPELINE), {"base_url": items_server}, instance=instance)
    assert report.status == "success", report.to_dict()
    fetch = report.steps["fetch"]
    assert fetch.status == "success"
    assert fetch.result["missing"]["status_code"] == 404  # an errored task keeps its data under its name
    assert fetch.result["summary"] == {"code": 404, "n": 3}
    assert fetch.result["code"] == 404 and fetch.result["n"] == 3  # flattened task fields
    assert report.steps["end"].result == {"code": 404, "n": 3, "first": 1}


def test_single_http_non_2xx_completes_with_status_error(tmp_path, items_server, instance) -> None:
    body = """workflow:
  - step: start
    tool: {kind: noop}
    next: get
  - step: get
    tool: {kind: http, url: "{{ workload.base_url }}/nope"}
    next:
      arcs:
        - {step: not_found, when: "{{ output.status_code == 404 }}"}
        - {step: end}
  - step: not_found
    tool: {kind: noop, result: {code: "{{ get.status_code }}", body: "{{ get.data.error }}"}}
  - step: end
    tool: {kind: noop}
"""
    report = run_playbook(_playbook(tmp_path, body), {"base_url": items_server}, instance=instance)
    assert report.status == "success"
    assert report.steps["get"].status == "error"
    assert report.steps["get"].error.startswith("HTTP 404 response from GET")
    assert report.steps["not_found"].result == {"code": 404, "body": "not found"}
    assert report.steps["end"].status == "skipped"


NESTED_SET = """workflow:
  - step: start
    tool: {kind: noop}
    next: work
  - step: work
    tool:
      - name: first
        kind: python
        code: |
          result = {"n": 2}
        set:
          ctx.doubled: "{{ output.n * 2 }}"
          iter.label: "two"
      - name: second
        kind: python
        input: {d: "{{ ctx.doubled }}", label: "{{ iter.label }}"}
        code: |
          result = {"d": d, "label": label}
        spec:
          policy:
            rules:
              - when: "{{ true }}"
                then: {do: continue, set: {ctx.total: "{{ output.data.d + 1 }}"}}
    next: end
  - step: end
    tool: {kind: noop, result: {total: "{{ total }}", ctx_total: "{{ ctx.total }}", doubled: "{{ doubled | default('unset') }}"}}
"""


def test_scoped_set_nests_inside_a_pipeline(tmp_path, instance) -> None:
    report = run_playbook(_playbook(tmp_path, NESTED_SET), instance=instance)
    assert report.status == "success", report.to_dict()
    assert report.steps["work"].result["second"] == {"d": 4, "label": "two"}
    assert report.steps["work"].result["n"] == 2 and report.steps["work"].result["d"] == 4
    # a rule's set reaches later steps (scope stripped); a task's set stays inside its pipeline
    assert report.steps["end"].result == {"total": 5, "ctx_total": 5, "doubled": "unset"}


WRAPPER = """workload:
  greeting: hello
workflow:
  - step: start
    tool: {kind: noop, result: {who: world}}
    next: py
  - step: py
    tool:
      kind: python
      input: {n: 3}
      code: |
        result = {
          "rendered": "{{ workload.greeting }}",
          "variables": variables["start"]["who"],
          "context_args": context["args"]["n"],
          "context_step": context["step"],
          "execution_id_is_int": isinstance(execution_id, int),
          "same_id": context["execution_id"] == execution_id,
          "input_data": input_data["n"],
        }
    next: end
  - step: end
    tool: {kind: noop, result: {eid: "{{ execution_id }}"}}
"""


def test_python_wrapper_globals_rendered_code_and_numeric_execution_id(tmp_path, instance) -> None:
    report = run_playbook(_playbook(tmp_path, WRAPPER), instance=instance)
    assert report.status == "success", report.to_dict()
    assert report.steps["py"].result == {"rendered": "hello", "variables": "world", "context_args": 3,
                                         "context_step": "py", "execution_id_is_int": True, "same_id": True,
                                         "input_data": 3}
    eid = report.steps["end"].result["eid"]
    assert eid == numeric_execution_id(report.run_id) and 0 < eid < 2**63
    assert numeric_execution_id(report.run_id) == numeric_execution_id(report.run_id)


FLAKY_HTTP = """workload:
  base_url: http://127.0.0.1:9
workflow:
  - step: start
    tool: {kind: noop}
    next: get
  - step: get
    tool: {kind: http, url: "{{ workload.base_url }}/nope"}
    next: end
  - step: end
    tool: {kind: noop}
"""


class _Retry(PlaybookTranslator):
    def get_retry_policy(self, playbook, step):  # type: ignore[no-untyped-def]
        return dg.RetryPolicy(max_retries=2) if step.step == "get" else None


def test_a_retry_policy_retries_an_error_result_then_completes_with_it(tmp_path, items_server, instance) -> None:
    report = run_playbook(_playbook(tmp_path, FLAKY_HTTP), {"base_url": items_server}, instance=instance,
                          translator=_Retry())
    assert report.status == "success"
    assert report.steps["get"].status == "error" and report.steps["end"].status == "success"
    retries = instance.all_logs(report.run_id, of_type=dg.DagsterEventType.STEP_UP_FOR_RETRY)
    assert len([e for e in retries if e.step_key == "get"]) == 2
    strict = run_playbook(_playbook(tmp_path, FLAKY_HTTP), {"base_url": items_server}, instance=instance,
                          translator=_Retry(), on_error="fail")
    assert strict.status == "failure" and strict.steps["get"].status == "failed"
    retries = instance.all_logs(strict.run_id, of_type=dg.DagsterEventType.STEP_UP_FOR_RETRY)
    assert len([e for e in retries if e.step_key == "get"]) == 2


def test_loop_iterations_with_error_results(tmp_path, instance) -> None:
    body = """workflow:
  - step: start
    tool: {kind: noop}
    next: each
  - step: each
    loop: {in: "{{ [1, 0, 2] }}", iterator: d, spec: {mode: MODE}}
    tool: {kind: python, input: {d: "{{ d }}"}, code: "result = {'q': 6 // d}"}
    next: end
  - step: end
    tool: {kind: noop, result: {first: "{{ each[0].q }}", last: "{{ each[2].q }}"}}
"""
    for mode in ("sequential", "parallel"):
        report = run_playbook(_playbook(tmp_path, body.replace("MODE", mode), f"loop_{mode}"), instance=instance)
        assert report.status == "success", (mode, report.to_dict())
        assert report.steps["each"].status == "error" and report.steps["each"].runs == 3
        assert report.steps["each"].error.startswith("iteration 1: ZeroDivisionError")
        assert report.steps["end"].result == {"first": 6, "last": 3}
        strict = run_playbook(_playbook(tmp_path, body.replace("MODE", mode), f"loop_{mode}"), instance=instance,
                              on_error="fail")
        assert strict.status == "failure" and strict.steps["each"].status == "failed", mode


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "noetl_dagster.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300, env={**__import__("os").environ, "DAGSTER_HOME": str(cwd)})


def test_cli_prints_errored_steps_and_keeps_json_pure(tmp_path) -> None:
    (tmp_path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    path = _playbook(tmp_path, ROUTE_ON_ERROR)
    plain = _cli("run", str(path), cwd=tmp_path)
    assert plain.returncode == 0, plain.stderr
    assert "error    divide: ZeroDivisionError: division by zero (code line 2)" in plain.stdout
    assert "completed with error results in 1 step(s): divide" in plain.stdout
    assert _cli("run", str(path), "--fail-on-error", cwd=tmp_path).returncode == 1
    as_json = _cli("run", str(path), "--json", cwd=tmp_path)
    assert as_json.returncode == 0
    report = json.loads(as_json.stdout)  # python's print() never mixes into the JSON
    assert report["steps"]["divide"]["status"] == "error"
    assert report["steps"]["divide"]["error"] == "ZeroDivisionError: division by zero (code line 2)"
    strict = _cli("run", str(path), "--json", "--on-error", "fail", cwd=tmp_path)
    assert strict.returncode == 1 and json.loads(strict.stdout)["steps"]["divide"]["status"] == "failed"


def test_flatten_follows_the_engine() -> None:
    from noetl_dagster.runtime.step import flatten_result

    assert flatten_result({"b": {"x": 2, "y": 1}, "a": {"x": 1}}) == {"b": {"x": 2, "y": 1}, "a": {"x": 1}, "x": 2, "y": 1}
    assert flatten_result({"a": {"x": 1}, "n": 3}) == {"a": {"x": 1}, "n": 3}  # not every value a mapping
    assert flatten_result({}) == {} and flatten_result([{"a": 1}]) == [{"a": 1}]
    assert flatten_result({"labeled_results": {"t": {}}, "failed_task": 0}) == {"labeled_results": {"t": {}},
                                                                                 "failed_task": 0}


def test_parse_keeps_scoped_task_set_keys() -> None:
    playbook = parse_text("apiVersion: noetl.io/v2\nkind: Playbook\nmetadata: {name: p}\n" + NESTED_SET, "p.yaml")
    assert set(playbook.steps["work"].tool[0].set) == {"ctx.doubled", "iter.label"}


@pytest.mark.parametrize("case", ["19_pipeline_fail", "22_parallel_branch_failure"])
def test_conformance_error_cases_tag_the_run(case, instance) -> None:
    report = run_playbook(ROOT / "tests" / "conformance" / "cases" / case / "playbook.yaml", instance=instance)
    run = instance.get_run_by_id(report.run_id)
    assert report.status == "success" and run.tags["noetl/outcome"] == "completed_with_errors"
    assert run.tags["noetl/error_steps"] == ",".join(report.error_steps)
