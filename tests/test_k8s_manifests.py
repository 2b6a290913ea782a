"""Kubernetes manifests built offline by dagster-k8s's own functions, validated against the schema.

* executor selection: ``metadata.dagster.executor: k8s`` (+ ``metadata.dagster.k8s``) and its errors;
* every step's Job as the ``k8s_job_executor`` builds it (``construct_dagster_k8s_job`` with
  ``get_user_defined_k8s_config(op tags)``), schema-valid with the step's declared resources;
* the ``container`` tool's Job (``translator.k8s.manifest``) and its validation errors;
* the raw manifests shipped in ``deploy/k8s/``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import yaml

import noetl_dagster.runtime.tools.container as container
import noetl_dagster.translator.k8s as k8s
from noetl_dagster import PlaybookError, load_playbook, load_playbook_definitions, validate_file

kubernetes_validate = pytest.importorskip("kubernetes_validate")
dagster_k8s = pytest.importorskip("dagster_k8s")
from dagster_k8s.job import (  # noqa: E402
    DagsterK8sJobConfig,
    construct_dagster_k8s_job,
    get_k8s_job_name,
    get_user_defined_k8s_config,
)

ROOT = Path(__file__).resolve().parent.parent
K8S_VERSION = "1.33"
#: Kubernetes resource.Quantity syntax (the JSON schema only says int-or-string)
QUANTITY = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)(([KMGTPE]i)|[numkMGTPE]|[eE][+-]?\d+)?")

PLAYBOOK = """\
apiVersion: noetl.io/v2
kind: Playbook
metadata:
  name: sized
  path: ml/sized
  dagster:
    executor: k8s
workload: {items: [1, 2]}
workflow:
  - step: start
    desc: no hardware
    tool: {kind: noop, result: 1}
    next: prepare
  - step: prepare
    hardware: {cpu: 500m, memory: 1Gi}
    tool: {kind: noop, result: 2}
    next: fan
  - step: fan
    hardware: {cpu: "1", memory: 2Gi, cpu_limit: "2", memory_limit: 3Gi}
    loop: {in: "{{ workload.items }}", iterator: item, spec: {mode: parallel}}
    tool: {kind: noop, result: "{{ item }}"}
    next: train
  - step: train
    hardware: {cpu: "8", memory: 32Gi, gpu: 2, node_selector: {pool: gpu},
               tolerations: [{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}]}
    tool: {kind: noop, result: 3}
"""

EXPECTED_RESOURCES = {
    "start": None,
    "prepare": {"requests": {"cpu": "500m", "memory": "1Gi"}},
    "fan": {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"cpu": "2", "memory": "3Gi"}},
    "train": {"requests": {"cpu": "8", "memory": "32Gi"}, "limits": {"nvidia.com/gpu": "2"}},
}


def _job(tmp_path: Path, text: str = PLAYBOOK, name: str = "ml__sized"):  # type: ignore[no-untyped-def]
    path = tmp_path / "p.yaml"
    path.write_text(text)
    return load_playbook_definitions(path, strict=True).resolve_job_def(name)


def _with_dagster(block: str) -> str:
    return PLAYBOOK.replace("  dagster:\n    executor: k8s\n", block)


def test_k8s_executor_by_extension(tmp_path: Path) -> None:
    job = _job(tmp_path)
    assert job.executor_def is dagster_k8s.k8s_job_executor  # unconfigured: run config / launcher decide


def test_k8s_executor_configured_from_the_playbook(tmp_path: Path) -> None:
    job = _job(tmp_path, _with_dagster(
        "  dagster:\n    executor: k8s\n    max_concurrent: 3\n"
        "    k8s: {job_namespace: etl, image_pull_policy: IfNotPresent,\n"
        "          per_step_k8s_config: {train: {pod_spec_config: {priority_class_name: high}}}}\n"))
    executor = job.executor_def
    assert executor.name == "k8s" and executor is not dagster_k8s.k8s_job_executor
    config = executor.config_schema._config_fn({})  # what `configured` fixed  # noqa: SLF001
    assert config["job_namespace"] == "etl" and config["max_concurrent"] == 3
    assert config["per_step_k8s_config"]["train"]["pod_spec_config"] == {"priority_class_name": "high"}


@pytest.mark.parametrize("block, message", [
    ("  dagster: {executor: kubernetes-ish}\n", "unknown executor 'kubernetes-ish'"),
    ("  dagster: {executor: k8s, k8s: {job_namespase: etl}}\n", 'unexpected config entry "job_namespase"'),
    ("  dagster: {executor: k8s, k8s: {max_concurrent: lots}}\n", "max_concurrent"),
    ("  dagster: {executor: k8s, k8s: [etl]}\n", "must be a mapping"),
], ids=["unknown-executor", "typo", "bad-type", "not-a-mapping"])
def test_bad_executor_settings_are_load_errors(tmp_path: Path, block: str, message: str) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(_with_dagster(block))
    with pytest.raises(PlaybookError) as info:
        load_playbook_definitions(path, strict=True)
    text = str(info.value)
    assert message in text and "metadata.dagster" in text and str(path) in text


def _step_job(node: Any, job_name: str) -> dict[str, Any]:
    """The Job ``K8sStepHandler`` would create for ``node`` (its op tags -> user k8s config)."""
    config = DagsterK8sJobConfig(
        job_image="registry.example.com/noetl-dagster:1.0", dagster_home="/opt/dagster/dagster_home",
        image_pull_policy="IfNotPresent", instance_config_map="dagster-instance",
        postgres_password_secret="dagster-postgresql-secret")
    name = get_k8s_job_name("a1b2c3d4-run", node.name)
    job = construct_dagster_k8s_job(
        job_config=config, args=["dagster", "api", "execute_step"], job_name=name, pod_name=name,
        component="step_worker", user_defined_k8s_config=get_user_defined_k8s_config(node.tags),
        labels={"dagster/job": job_name, "dagster/op": node.name, "dagster/run-id": "a1b2c3d4-run"},
        env_vars=[{"name": "DAGSTER_RUN_STEP_KEY", "value": node.name}])
    return kubernetes.client.ApiClient().sanitize_for_serialization(job)


def test_every_step_job_is_schema_valid_with_its_resources(tmp_path: Path) -> None:
    job = _job(tmp_path)
    seen = {}
    for node in job.graph.nodes:
        step = node.tags.get("noetl/step")
        manifest = {"apiVersion": "batch/v1", "kind": "Job", **_step_job(node, job.name)}
        kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)
        pod = manifest["spec"]["template"]["spec"]
        (container_spec,) = pod["containers"]
        seen[node.name] = container_spec.get("resources") or None
        assert seen[node.name] == EXPECTED_RESOURCES[step], node.name
        for kind in (seen[node.name] or {}).values():  # the schema says int-or-string: check the syntax
            assert all(QUANTITY.fullmatch(q) for q in kind.values()), kind
        if step == "train":
            assert pod["nodeSelector"] == {"pool": "gpu"}
            assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
        else:
            assert "nodeSelector" not in pod and "tolerations" not in pod
    # the parallel loop's three ops (fan-out, mapped body, collect) all carry the step's size
    assert {n for n in seen if n.startswith("fan")} == {"fan__fan_out", "fan", "fan__collect"}


def test_schema_validation_catches_a_bad_manifest(tmp_path: Path) -> None:
    job = _job(tmp_path)
    node = next(n for n in job.graph.nodes if n.name == "train")
    manifest = {"apiVersion": "batch/v1", "kind": "Job", **_step_job(node, job.name)}
    manifest["spec"]["template"]["spec"]["nodeSelector"] = ["gpu"]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)


# --------------------------------------------------------------------------------------------
# the container tool's manifest

FULL = {
    "kind": "container", "image": "ghcr.io/acme/etl:2.1", "command": ["python", "-m", "etl"],
    "args": ["--date", "2026-11-29", 3], "env": {"MODE": "full", "DEBUG": False, "SECRET": {"valueFrom": {
        "secretKeyRef": {"name": "etl", "key": "token"}}}},
    "resources": {"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"memory": "6Gi"}},
    "timeout_seconds": 900, "namespace": "etl", "service_account": "etl-runner", "backoff_limit": 2,
    "restart_policy": "OnFailure", "node_selector": {"pool": "batch"},
    "tolerations": [{"key": "batch", "operator": "Exists"}],
    "volumes": [{"name": "scratch", "emptyDir": {"sizeLimit": "10Gi"}}],
    "volume_mounts": [{"name": "scratch", "mountPath": "/scratch"}],
    "image_pull_policy": "IfNotPresent", "labels": {"team": "risk"},
}


def test_container_manifest_full_form() -> None:
    manifest = k8s.manifest(FULL, name="noetl-load-abc")
    kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)
    assert manifest["metadata"]["namespace"] == "etl" and manifest["spec"]["backoffLimit"] == 2
    pod = manifest["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["image"] == "ghcr.io/acme/etl:2.1" and c["command"] == ["python", "-m", "etl"]
    assert c["args"] == ["--date", "2026-11-29", "3"]
    assert {"name": "MODE", "value": "full"} in c["env"] and {"name": "DEBUG", "value": "false"} in c["env"]
    assert {"name": "SECRET", "valueFrom": {"secretKeyRef": {"name": "etl", "key": "token"}}} in c["env"]
    assert c["resources"] == {"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"memory": "6Gi"}}
    assert c["volumeMounts"] == [{"name": "scratch", "mountPath": "/scratch"}]
    assert pod["serviceAccountName"] == "etl-runner" and pod["restartPolicy"] == "OnFailure"
    assert pod["nodeSelector"] == {"pool": "batch"} and pod["volumes"][0]["emptyDir"] == {"sizeLimit": "10Gi"}
    assert manifest["metadata"]["labels"]["team"] == "risk"


def test_container_manifest_short_forms_and_runtime_block() -> None:
    manifest = k8s.manifest({
        "kind": "container", "command": "sh -c 'echo hi'",
        "runtime": {"provider": "kubernetes", "image": "busybox", "namespace": "jobs"},
        "resources": {"cpu": "250m", "memory": "128Mi", "memory_limit": "256Mi", "gpu": 1},
    })
    kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)
    (c,) = manifest["spec"]["template"]["spec"]["containers"]
    assert c["image"] == "busybox" and c["command"] == ["sh", "-c", "echo hi"]
    assert c["resources"] == {"requests": {"cpu": "250m", "memory": "128Mi"},
                              "limits": {"memory": "256Mi", "nvidia.com/gpu": "1"}}
    assert manifest["metadata"]["namespace"] == "jobs" and manifest["spec"]["backoffLimit"] == 0


def test_container_config_errors_are_reported_at_load(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "apiVersion: noetl.io/v2\nkind: Playbook\nmetadata: {name: bad, path: k8s/bad}\nworkflow:\n"
        "  - step: start\n    tool: {kind: container, command: 5, restart_policy: Always}\n")
    messages = "\n".join(str(i) for i in validate_file(path))
    assert "needs `image:`" in messages and "`command` must be a list" in messages
    assert "restart_policy 'Always' is not allowed" in messages


def test_container_job_names_are_unique_and_dns_safe() -> None:
    from noetl_dagster import ToolContext

    ctx = ToolContext(step="Load_Orders_From_A_Really_Long_Step_Name_That_Goes_On", execution_id="r", scope={})
    names = {container.job_name({}, ctx, "run-1") for _ in range(50)}
    assert len(names) == 50
    for name in names:
        assert len(name) <= 57 and name.startswith("noetl-load-orders-")
        assert name.replace("-", "").isalnum() and name == name.lower()
    assert container.job_name({"name": "My_Job!"}, ctx, "run-1") == "my-job"


def test_container_tool_runs_jobs_through_the_hosts_runner(monkeypatch: pytest.MonkeyPatch) -> None:
    """The runtime's container tool builds the Job's arguments and leaves running it to the host
    (``ToolContext.run_k8s_job``); without a runner the step fails with a ToolError."""
    from noetl_dagster import ToolContext, ToolError

    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", "/etc/kube/config")
    config = {"image": "busybox:1.36", "command": ["sh", "-c"], "args": ["echo '{{ workload.msg }}'"],
              "runtime": {"provider": "kubernetes", "namespace": "etl"}, "name": "echo-job"}
    bare = ToolContext(step="echo", execution_id=1, scope={"workload": {"msg": "hi"}}, run_id="run-9")
    with pytest.raises(ToolError, match="needs a Kubernetes job runner from its host"):
        container.ContainerTool().run(config, bare)
    seen: list[dict[str, Any]] = []

    def runner(kwargs: dict[str, Any], log: Any) -> dict[str, Any]:
        seen.append(kwargs)
        return {"job_name": kwargs["k8s_job_name"], "namespace": kwargs["namespace"], "pod": "echo-job-x",
                "logs": 'starting\n{"rows": 3}\n'}

    ctx = ToolContext(step="echo", execution_id=1, scope={"workload": {"msg": "hi"}}, run_id="run-9",
                      run_k8s_job=runner)
    result = container.ContainerTool().run(config, ctx)
    assert {k: v for k, v in result.items() if k != "duration_seconds"} == {
        "status": "succeeded", "job_name": "echo-job", "namespace": "etl", "pod": "echo-job-x",
        "image": "busybox:1.36", "logs": 'starting\n{"rows": 3}\n', "output": {"rows": 3}}
    (kwargs,) = seen
    assert kwargs["args"] == ["echo 'hi'"] and kwargs["command"] == ["sh", "-c"]
    assert kwargs["load_incluster_config"] is False and kwargs["kubeconfig_file"] == "/etc/kube/config"
    assert kwargs["job_spec_config"] == {"backoff_limit": 0}


def test_example_playbooks_load_with_the_container_tool_registered() -> None:
    for path in sorted((ROOT / "playbooks").rglob("*.yaml")):
        load_playbook(path)


# --------------------------------------------------------------------------------------------
# deploy/k8s: the raw manifests shipped for a cluster

def test_deploy_k8s_manifests_are_schema_valid() -> None:
    files = sorted((ROOT / "deploy" / "k8s").glob("*.yaml"))
    assert files, "deploy/k8s/*.yaml"
    count = 0
    for path in files:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
                count += 1
    assert count >= 3
