"""``kind: script``: a Python script as a Kubernetes Job, through dagster-k8s against the loopback
fake API server of test_k8s_run (its kubelet runs the Job's container here; manifests are
validated against the Kubernetes 1.33 schema)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import dagster as dg
import pytest

from noetl_dagster import PlaybookError, load_playbook_definitions
from noetl_dagster.playbook.loader import parse_text
from test_k8s_run import FakeKube, _validate

ENV_SECRET = "scr1pt-env-Secr3t-value"

PLAYBOOK = """\
apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: scripts, path: k8s/scripts}
workload: {input_file: "it's data.csv", fail: false, mode: batch}
workflow:
  - step: start
    tool:
      kind: script
      script:
        uri: jobs/process.py
        source: {type: file}
      input: {input_file: "{{ workload.input_file }}", mode: "{{ workload.mode }}", fail: "{{ workload.fail }}"}
      job:
        image: python:3.11-slim
        namespace: noetl
        backoffLimit: 0
        resources: {requests: {memory: 256Mi, cpu: 500m}, limits: {memory: 512Mi}}
        env: {OUTPUT_BUCKET: out-bucket, API_TOKEN: "{{ workload.token }}"}
    next: end
  - step: end
    tool:
      kind: python
      input: {job: "{{ start }}"}
      code: 'result = {"status": job["status"], "rows": job["result"]["rows"]}'
"""

SCRIPT = """\
import json, os, sys
args = json.loads(sys.argv[1])
print("processing", args["input_file"], "{{ not a template }}")
if args["fail"] in (True, "True", "true"):
    raise SystemExit("boom: bad input " + args["input_file"])
print(json.dumps({"rows": 3, "file": args["input_file"], "bucket": os.environ["OUTPUT_BUCKET"],
                  "mode": args["mode"], "has_token": bool(os.environ.get("API_TOKEN"))}))
"""


@pytest.fixture
def fake_kube(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeKube]:
    kube = FakeKube(tmp_path / "kube").start()
    monkeypatch.setenv("KUBECONFIG", kube.kubeconfig)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    yield kube
    kube.stop()


def _job(tmp_path: Path) -> dg.JobDefinition:
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "process.py").write_text(SCRIPT)
    path = tmp_path / "scripts.yaml"
    path.write_text(PLAYBOOK.replace('mode: batch}', 'mode: batch, token: ""}'))
    return load_playbook_definitions(path, strict=True).resolve_job_def("k8s__scripts")


def test_script_runs_as_a_kubernetes_job(tmp_path: Path, fake_kube: FakeKube) -> None:
    job = _job(tmp_path)
    with dg.instance_for_test() as instance:
        result = job.execute_in_process(instance=instance, run_config={
            "ops": {"start": {"config": {"workload": {"token": ENV_SECRET}}}}})
        events = [repr(e) for e in instance.all_logs(result.run_id)]
    assert result.success
    out = result.output_for_node("start")
    assert out["status"] == "completed" and out["namespace"] == "noetl" and out["succeeded"] == 1
    assert out["result"] == {"rows": 3, "file": "it's data.csv", "bucket": "out-bucket", "mode": "batch",
                             "has_token": True}
    assert "processing it's data.csv {{ not a template }}" in out["output"]
    assert result.output_for_node("end") == {"status": "completed", "rows": 3}
    (manifest,) = fake_kube.manifests()
    _validate(manifest)
    (container,) = manifest["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "python:3.11-slim" and container["command"][:2] == ["python", "-c"]
    assert json.loads(container["args"][0]) == {"input_file": "it's data.csv", "mode": "batch", "fail": False}
    assert container["resources"] == {"requests": {"memory": "256Mi", "cpu": "500m"}, "limits": {"memory": "512Mi"}}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["NOETL_SCRIPT"] == SCRIPT and json.loads(env["NOETL_SCRIPT_DEPENDENCIES"]) == []
    assert not any(ENV_SECRET in e for e in events)  # the job's env is not in the run's events


def test_failing_script_is_an_error_result(tmp_path: Path, fake_kube: FakeKube) -> None:
    job = _job(tmp_path)
    with dg.instance_for_test() as instance:
        result = job.execute_in_process(instance=instance, raise_on_error=False, run_config={
            "ops": {"start": {"config": {"workload": {"fail": True}}}}})
        logs = [e.user_message for e in instance.all_logs(result.run_id)]
    out = result.output_for_node("start")
    assert out["status"] == "failed" and out["failed"] == 1 and out["job_name"].startswith("noetl-start-")
    # dagster-k8s's diagnosis: the log tail when it read the pod in time, else the Job's status
    assert "boom: bad input" in out["output"] or "Encountered failed job pods" in out["output"]
    # NoETL's error result: the step completes with status error and its arc fires
    assert any("completed with an error result: Job failed" in m for m in logs)
    assert "end" in {e.step_key for e in result.all_events if e.event_type_value == "STEP_START"}


def test_rust_form_and_validation(tmp_path: Path) -> None:
    text = """apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: bad_script}
workflow:
  - step: start
    tool:
      kind: script
      script: {type: inline, content: "print(1"}
      job: {install_dependencies: requests, timeout: -5}
"""
    with pytest.raises(PlaybookError) as info:
        parse_text(text, "bad.yaml")
    found = {i.field: i.message for i in info.value.issues}
    assert "Python syntax error" in found["tool.script"]
    assert "tool.job.install_dependencies" in found and "tool.job.timeout" in found
