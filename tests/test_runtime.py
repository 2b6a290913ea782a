"""The step runtime without Dagster: pipelines and policy rules, loops, regions, guards."""

from __future__ import annotations

import pytest

from noetl_dagster.errors import StepFailed
from noetl_dagster.playbook.loader import parse_text
from noetl_dagster.runtime.context import Context
from noetl_dagster.runtime.region import RegionFailed, run_region
from noetl_dagster.runtime.step import RunInfo, run_step

HEAD = "apiVersion: noetl.io/v2\nkind: Playbook\nmetadata: {name: p}\nworkflow:\n  - {step: start, tool: {kind: noop}}\n"


def step(body: str):
    return parse_text(HEAD + body, "p.yaml").workflow[1]


def run(s, workload=None, sleeps=None, on_error="complete"):
    info = RunInfo(1, sleep=(sleeps.append if sleeps is not None else (lambda _: None)), on_error=on_error)
    return run_step(s, Context.initial(workload or {}), info)


FLAKY = """  - step: s
    tool:
      - name: t
        kind: python
        input: {n: "{{ tries | default(0) }}"}
        code: |
          if n < FAIL_TIMES:
              raise RuntimeError("flaky " + str(n))
          result = {"ok": n}
        spec:
          policy:
            rules:
              - when: "{{ output.status == 'error' }}"
                then: {do: retry, attempts: 3, backoff: BACKOFF, delay: 2, set: {tries: "{{ _attempt }}"}}
"""


def flaky(fail_times: int, backoff: str):
    return step(FLAKY.replace("FAIL_TIMES", str(fail_times)).replace("BACKOFF", backoff))


@pytest.mark.parametrize("backoff,delays", [("none", [2, 2]), ("linear", [2, 4]), ("exponential", [2, 4])])
def test_retry_backoff_delays(backoff, delays):
    sleeps: list[float] = []
    outcome = run(flaky(2, backoff), sleeps=sleeps)
    assert outcome.result == {"t": {"ok": 2}, "ok": 2}  # NoETL flattens a pipeline's task fields
    assert sleeps == delays
    assert outcome.context.ctx["tries"][1] == 2  # policy set reaches the step's ctx


def test_exhausted_retry_completes_the_step_with_the_last_error_result():
    outcome = run(flaky(5, "none"))
    assert outcome.status == "error" and outcome.runs == 1
    assert outcome.error == "task 't': RuntimeError: flaky 2 (code line 2)"
    # NoETL's stopped pipeline: {labeled_results, failed_task}; the python error data is {stdout, stderr}
    assert outcome.result["failed_task"] == 0
    failed = outcome.result["labeled_results"]["t"]
    assert failed["stdout"] == "" and failed["stderr"].endswith("RuntimeError: flaky 2\n")
    assert 'File "<step s>", line 2' in failed["stderr"]
    with pytest.raises(StepFailed, match=r"task 't': RuntimeError: flaky 2"):  # strict mode
        run(flaky(5, "none"), on_error="fail")


def test_unhandled_task_error_fails_and_jump_to_previous():
    s = step("""  - step: s
    tool:
      - {name: a, kind: python, code: "result = 1"}
      - {name: b, kind: python, code: "raise ValueError('boom')"}
""")
    outcome = run(s)
    assert (outcome.status, outcome.error) == ("error", "task 'b': ValueError: boom (code line 1)")
    assert outcome.result["labeled_results"]["a"] == 1 and outcome.result["failed_task"] == 1
    with pytest.raises(StepFailed, match=r"step 's': task 'b': ValueError: boom \(code line 1\)"):
        run(s, on_error="fail")
    jumper = step("""  - step: s
    tool:
      - name: a
        kind: python
        input: {k: "{{ k | default(0) }}"}
        code: "result = k + 1"
        set: {k: "{{ output }}"}
      - name: b
        kind: noop
        spec:
          policy:
            rules:
              - {when: "{{ k < 3 }}", then: {do: jump, to: previous}}
""")
    assert run(jumper).result["a"] == 3


def test_step_guard_skips_and_follows_the_first_matching_arc():
    s = step("""  - step: s
    when: "{{ enabled }}"
    tool: {kind: noop, result: 1}
    next:
      spec: {mode: inclusive}
      arcs: [{step: a, when: "{{ false }}"}, {step: b}, {step: c}]
  - {step: a, tool: {kind: noop}}
  - {step: b, tool: {kind: noop}}
  - {step: c, tool: {kind: noop}}
""")
    outcome = run(s, {"enabled": False})
    assert outcome.status == "skipped" and [arc.step for _, arc, _ in outcome.fired] == ["b"]
    outcome = run(s, {"enabled": True})
    assert outcome.status == "success" and [arc.step for _, arc, _ in outcome.fired] == ["b", "c"]


@pytest.mark.parametrize("value,items", [
    ("{{ [1, 2] }}", [1, 2]), ('{{ {"a": 1} }}', [{"key": "a", "value": 1}]), ("a, b,c", ["a", "b", "c"]),
    ("{{ 3 }}", [0, 1, 2]), ('["x", "y"]', ["x", "y"]),
])
def test_loop_in_coercion(value, items):
    s = step(f"""  - step: s
    loop: {{in: '{value}', iterator: it}}
    tool: {{kind: python, input: {{v: "{{{{ it }}}}"}}, code: "result = v"}}
""")
    assert run(s).result == items


def test_loop_over_null_fails_clearly():
    s = step("""  - step: s
    loop: {in: "{{ missing }}", iterator: it}
    tool: {kind: noop}
""")
    with pytest.raises(StepFailed, match=r"loop.in did not evaluate to a list \(got null \(undefined\)\)"):
        run(s)


def test_region_bound_stops_a_runaway_cycle():
    pb = parse_text(HEAD.replace("tool: {kind: noop}}", "tool: {kind: noop}, next: a}") + """  - step: a
    tool: {kind: noop}
    next: {arcs: [{step: a, when: "{{ true }}"}]}
""", "p.yaml")
    with pytest.raises(RegionFailed, match="ran 50 steps without leaving") as err:
        run_region({"a": pb.steps["a"]}, [("a", Context.initial({}))], RunInfo("r"), max_steps=50)
    assert err.value.records["a"].runs == 50
