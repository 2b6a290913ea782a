"""Kubernetes without a cluster: dagster-k8s's real code paths against a loopback fake API server.

The fake (``FakeKube``) implements the few batch/v1 Job and v1 Pod endpoints dagster-k8s uses and
has a local "kubelet": each created Job's container (``command`` + ``args``) runs here as a
subprocess, ignoring the image. Every manifest dagster-k8s POSTs is kept and validated against
the Kubernetes 1.33 schema (``kubernetes-validate``).

* the ``container`` tool: ``execute_k8s_job`` from inside a playbook op (result, logs, failure);
* ``metadata.dagster.executor: k8s`` end to end: ``dagster job launch`` with a ``K8sRunLauncher``
  on a Postgres instance -> a run-worker Job -> one step Job per step (``k8s_job_executor``), with
  each step's ``hardware:`` as its pod's resources.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import parse_qs, urlparse

import dagster as dg
import pytest

import noetl_dagster.runtime.tools.container  # noqa: F401  (registers kind: container)
from noetl_dagster import load_playbook_definitions
from pg import PgServer, pg_server  # noqa: F401

kubernetes_validate = pytest.importorskip("kubernetes_validate")
K8S_VERSION = "1.33"
VENV_BIN = str(Path(sys.executable).parent)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class FakeKube:
    """A loopback kube-apiserver with a local kubelet. ``start()``, ``stop()``, ``kubeconfig``."""

    def __init__(self, workdir: Path, *, dagster_home: str | None = None, cwd: str | None = None) -> None:
        self.workdir = workdir
        self.logdir = workdir / "pods"
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.dagster_home = dagster_home
        self.cwd = cwd
        self.jobs: dict[tuple[str, str], dict[str, Any]] = {}
        self.created: list[dict[str, Any]] = []  # every Job body POSTed, in order
        self.lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None
        self.kubeconfig = str(workdir / "kubeconfig")

    # --- kubelet -------------------------------------------------------------------------
    def _run(self, name: str, body: dict[str, Any]) -> subprocess.Popen:
        container = body["spec"]["template"]["spec"]["containers"][0]
        cmd = (container.get("command") or []) + (container.get("args") or [])
        env = dict(os.environ)
        for item in container.get("env") or []:
            if "value" in item:
                env[item["name"]] = item["value"]
        if self.dagster_home:
            env["DAGSTER_HOME"] = self.dagster_home
        env["PATH"] = VENV_BIN + os.pathsep + env.get("PATH", "")
        log = open(self.logdir / f"{name}.log", "wb")
        try:
            return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=self.cwd,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        finally:
            log.close()

    def _state(self, rec: dict[str, Any]) -> tuple[str, dict[str, Any], int | None]:
        rc = rec["proc"].poll()
        if rc is None:
            return "Running", {"running": {"startedAt": rec["start"]}}, None
        rec.setdefault("finish", _now())
        term = {"terminated": {"exitCode": rc, "reason": "Completed" if rc == 0 else "Error",
                               "startedAt": rec["start"], "finishedAt": rec["finish"]}}
        return ("Succeeded" if rc == 0 else "Failed"), term, rc

    def job_json(self, rec: dict[str, Any]) -> dict[str, Any]:
        phase, _, rc = self._state(rec)
        status: dict[str, Any] = {"startTime": rec["start"]}
        if rc is None:
            status["active"] = 1
        elif rc == 0:
            status.update(succeeded=1, completionTime=rec["finish"])
        else:
            status["failed"] = 1
        return {**rec["body"], "status": status}

    def pod_json(self, rec: dict[str, Any]) -> dict[str, Any]:
        phase, state, _ = self._state(rec)
        name = rec["body"]["metadata"]["name"]
        container = rec["body"]["spec"]["template"]["spec"]["containers"][0]
        return {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"{name}-pod", "namespace": rec["ns"], "labels": {"job-name": name}},
            "spec": {"containers": [{"name": container.get("name", "dagster"), "image": container.get("image")}]},
            "status": {"phase": phase, "containerStatuses": [{
                "name": container.get("name", "dagster"), "ready": phase == "Running", "restartCount": 0,
                "image": container.get("image") or "none", "imageID": "", "state": state}]},
        }

    def pods(self, ns: str, query: dict[str, list[str]]) -> list[dict[str, Any]]:
        label = query.get("labelSelector", [""])[0]
        field = query.get("fieldSelector", [""])[0]
        out = []
        with self.lock:
            records = [r for (n, _), r in self.jobs.items() if n == ns]
        for rec in records:
            pod = self.pod_json(rec)
            if label and label != f"job-name={rec['body']['metadata']['name']}":
                continue
            if field and field != f"metadata.name={pod['metadata']['name']}":
                continue
            out.append(pod)
        return out

    def record_for_pod(self, ns: str, pod: str) -> dict[str, Any] | None:
        with self.lock:
            return self.jobs.get((ns, pod.removesuffix("-pod")))

    # --- server --------------------------------------------------------------------------
    def start(self) -> "FakeKube":
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, code: int, obj: Any, text: bool = False) -> None:
                data = obj.encode() if text else json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "text/plain" if text else "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _404(self) -> None:
                self._send(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                 "reason": "NotFound", "code": 404})

            def do_POST(self) -> None:  # noqa: N802
                parts = urlparse(self.path).path.strip("/").split("/")
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                if parts[:4] == ["apis", "batch", "v1", "namespaces"] and parts[5:] == ["jobs"]:
                    ns, name = parts[4], body["metadata"]["name"]
                    body["metadata"].update({"namespace": ns, "uid": str(uuid.uuid4()),
                                             "creationTimestamp": _now()})
                    with fake.lock:
                        if (ns, name) in fake.jobs:
                            return self._send(409, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                                    "reason": "AlreadyExists", "code": 409})
                        fake.created.append(json.loads(json.dumps(body)))
                        fake.jobs[(ns, name)] = {"body": body, "ns": ns, "start": _now(),
                                                 "proc": fake._run(name, body)}
                    return self._send(201, body)
                self._404()

            def do_GET(self) -> None:  # noqa: N802
                url = urlparse(self.path)
                parts, query = url.path.strip("/").split("/"), parse_qs(url.query)
                if parts[:4] == ["apis", "batch", "v1", "namespaces"] and len(parts) >= 6 and parts[5] == "jobs":
                    ns = parts[4]
                    if len(parts) == 6:
                        field = query.get("fieldSelector", [""])[0]
                        with fake.lock:
                            recs = [r for (n, name), r in fake.jobs.items()
                                    if n == ns and (not field or field == f"metadata.name={name}")]
                        return self._send(200, {"apiVersion": "batch/v1", "kind": "JobList", "metadata": {},
                                                "items": [fake.job_json(r) for r in recs]})
                    with fake.lock:
                        rec = fake.jobs.get((ns, parts[6]))
                    return self._send(200, fake.job_json(rec)) if rec else self._404()
                if parts[:3] == ["api", "v1", "namespaces"] and len(parts) >= 5:
                    ns = parts[3]
                    if parts[4] == "pods" and len(parts) == 5:
                        return self._send(200, {"apiVersion": "v1", "kind": "PodList", "metadata": {},
                                                "items": fake.pods(ns, query)})
                    if parts[4] == "pods" and len(parts) >= 6:
                        rec = fake.record_for_pod(ns, parts[5])
                        if rec is None:
                            return self._404()
                        if len(parts) == 6:
                            return self._send(200, fake.pod_json(rec))
                        if parts[6] == "log":
                            if query.get("follow", ["false"])[0] == "true":
                                try:
                                    rec["proc"].wait(timeout=300)
                                except subprocess.TimeoutExpired:
                                    pass
                            path = fake.logdir / f"{rec['body']['metadata']['name']}.log"
                            text = path.read_text(errors="replace") if path.exists() else ""
                            tail = query.get("tailLines", [None])[0]
                            if tail:
                                text = "\n".join(text.splitlines()[-int(tail):]) + "\n"
                            return self._send(200, text, text=True)
                    if parts[4] == "events":
                        return self._send(200, {"apiVersion": "v1", "kind": "EventList", "metadata": {},
                                                "items": []})
                self._404()

            def do_DELETE(self) -> None:  # noqa: N802
                parts = urlparse(self.path).path.strip("/").split("/")
                if parts[:4] == ["apis", "batch", "v1", "namespaces"] and len(parts) == 7:
                    with fake.lock:
                        rec = fake.jobs.pop((parts[4], parts[6]), None)
                    if rec:
                        _kill(rec["proc"])
                self._send(200, {"kind": "Status", "apiVersion": "v1", "status": "Success"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        port = self.server.server_address[1]
        Path(self.kubeconfig).write_text(textwrap.dedent(f"""\
            apiVersion: v1
            kind: Config
            clusters: [{{name: fake, cluster: {{server: "http://127.0.0.1:{port}"}}}}]
            users: [{{name: fake, user: {{token: fake}}}}]
            contexts: [{{name: fake, context: {{cluster: fake, user: fake, namespace: default}}}}]
            current-context: fake
            """))
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
        with self.lock:
            records = list(self.jobs.values())
        for rec in records:
            _kill(rec["proc"])

    def manifests(self) -> list[dict[str, Any]]:
        return list(self.created)


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=10)


def _validate(manifest: dict[str, Any]) -> None:
    """The Job as POSTed (apiVersion/kind added, as kubectl would) against the 1.33 schema."""
    kubernetes_validate.validate({"apiVersion": "batch/v1", "kind": "Job", **manifest}, K8S_VERSION, strict=True)


@pytest.fixture
def fake_kube(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeKube]:
    kube = FakeKube(tmp_path / "kube").start()
    monkeypatch.setenv("KUBECONFIG", kube.kubeconfig)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    yield kube
    kube.stop()


# --------------------------------------------------------------------------------------------
# the container tool through dagster_k8s.execute_k8s_job

CONTAINER_PLAYBOOK = """\
apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: containers, path: k8s/containers}
workload:
  who: world
  fail: false
workflow:
  - step: start
    desc: Run a container that greets the workload's `who` and prints a JSON line.
    tool:
      kind: container
      image: busybox:1.36
      image_pull_policy: IfNotPresent
      command: [sh, -c]
      args:
        - |
          echo "hello $WHO from {{ workload.who }}"
          if [ "{{ workload.fail }}" = "true" ] || [ "{{ workload.fail }}" = "True" ]; then echo "boom: bad input" >&2; exit 3; fi
          echo '{"greeted": "{{ workload.who }}", "n": 2}'
      env: {WHO: "{{ workload.who }}"}
      resources: {cpu: 100m, memory: 64Mi, memory_limit: 128Mi}
      timeout_seconds: 60
      namespace: etl
      node_selector: {pool: batch}
      tolerations: [{key: batch, operator: Exists, effect: NoSchedule}]
    next: end
  - step: end
    tool:
      kind: python
      input: {out: "{{ start.output }}", job: "{{ start.job_name }}"}
      code: |
        result = {"greeted": out["greeted"], "job": job}
"""


def _container_job(tmp_path: Path) -> dg.JobDefinition:
    path = tmp_path / "containers.yaml"
    path.write_text(CONTAINER_PLAYBOOK)
    return load_playbook_definitions(path, strict=True).resolve_job_def("k8s__containers")


def test_container_step_runs_a_kubernetes_job(tmp_path: Path, fake_kube: FakeKube) -> None:
    job = _container_job(tmp_path)
    with dg.instance_for_test() as instance:
        result = job.execute_in_process(instance=instance, run_config={
            "ops": {"start": {"config": {"workload": {"who": "noetl"}}}}})
    assert result.success
    out = result.output_for_node("start")
    assert out["status"] == "succeeded" and out["namespace"] == "etl"
    assert "hello noetl from noetl" in out["logs"]
    assert out["output"] == {"greeted": "noetl", "n": 2}
    assert result.output_for_node("end") == {"greeted": "noetl", "job": out["job_name"]}

    (manifest,) = fake_kube.manifests()
    _validate(manifest)
    assert manifest["metadata"]["name"] == out["job_name"] and manifest["metadata"]["namespace"] == "etl"
    assert manifest["metadata"]["labels"]["dagster/op"].endswith("start")
    pod = manifest["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "busybox:1.36" and container["imagePullPolicy"] == "IfNotPresent"
    assert container["command"] == ["sh", "-c"]
    assert {"name": "WHO", "value": "noetl"} in container["env"]
    assert container["resources"] == {"requests": {"cpu": "100m", "memory": "64Mi"},
                                      "limits": {"memory": "128Mi"}}
    assert pod["nodeSelector"] == {"pool": "batch"} and pod["restartPolicy"] == "Never"
    assert pod["tolerations"] == [{"key": "batch", "operator": "Exists", "effect": "NoSchedule"}]
    assert manifest["spec"]["backoffLimit"] == 0


def test_container_failure_fails_the_step_with_the_log_tail(tmp_path: Path, fake_kube: FakeKube) -> None:
    job = _container_job(tmp_path)
    with dg.instance_for_test() as instance:
        result = job.execute_in_process(instance=instance, raise_on_error=False, run_config={
            "ops": {"start": {"config": {"workload": {"fail": True}}}}})
    assert not result.success
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    message = failure.step_failure_data.error.message  # type: ignore[union-attr]
    assert "container: Kubernetes job noetl-start-" in message and "boom: bad input" in message
    assert "end" not in {e.step_key for e in result.all_events if e.event_type_value == "STEP_START"}
    # the failed Job was deleted, as execute_k8s_job does
    assert len(fake_kube.manifests()) == 1 and not fake_kube.jobs


# --------------------------------------------------------------------------------------------
# metadata.dagster.executor: k8s, launched with `dagster job launch` and a K8sRunLauncher

K8S_PLAYBOOK = """\
apiVersion: noetl.io/v2
kind: Playbook
metadata:
  name: sized_steps
  path: k8s/sized_steps
  dagster:
    executor: k8s
    k8s: {job_namespace: etl, max_concurrent: 2}
workload: {n: 3}
workflow:
  - step: start
    desc: No hardware declared.
    tool:
      kind: python
      input: {n: "{{ workload.n }}"}
      code: |
        import os
        result = {"n": n, "pid": os.getpid()}
    next: heavy
  - step: heavy
    desc: Big step on the GPU pool.
    hardware: {cpu: "2", memory: 4Gi, memory_limit: 8Gi, gpu: 1, node_selector: {pool: gpu},
               tolerations: [{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}]}
    tool:
      kind: python
      input: {n: "{{ start.n }}", first: "{{ start.pid }}"}
      code: |
        import os
        result = {"square": n * n, "pids": [first, os.getpid()]}
"""


def test_k8s_executor_end_to_end_with_job_launch(tmp_path: Path, pg_server: PgServer,  # noqa: F811
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_PG_PASSWORD", pg_server.password)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    code = tmp_path / "code"
    (code / "playbooks").mkdir(parents=True)
    (code / "playbooks" / "sized_steps.yaml").write_text(K8S_PLAYBOOK)
    (code / "defs.py").write_text("from pathlib import Path\nfrom noetl_dagster import load_playbook_definitions\n"
                                  "defs = load_playbook_definitions(Path(__file__).parent / 'playbooks', strict=True)\n")
    home = tmp_path / "home"
    home.mkdir()
    database = f"dagster_k8s_{uuid.uuid4().hex[:8]}"
    pg_server.create_database(database)
    kube = FakeKube(tmp_path / "kube", dagster_home=str(home), cwd=str(code)).start()
    try:
        (home / "dagster.yaml").write_text(textwrap.dedent(f"""\
            storage:
              postgres:
                postgres_db:
                  hostname: 127.0.0.1
                  port: {pg_server.port}
                  username: {pg_server.user}
                  password: {{env: TEST_PG_PASSWORD}}
                  db_name: {database}
                  scheme: postgresql+psycopg2
            run_coordinator:
              module: dagster.core.run_coordinator
              class: DefaultRunCoordinator
            run_launcher:
              module: dagster_k8s
              class: K8sRunLauncher
              config:
                job_image: registry.example.com/noetl-dagster:test
                dagster_home: /opt/dagster/dagster_home
                instance_config_map: dagster-instance
                postgres_password_secret: dagster-postgresql-secret
                service_account_name: dagster
                job_namespace: dagster
                load_incluster_config: false
                kubeconfig_file: {kube.kubeconfig}
            telemetry: {{enabled: false}}
            """))
        env = {**os.environ, "DAGSTER_HOME": str(home), "PATH": VENV_BIN + os.pathsep + os.environ.get("PATH", "")}
        proc = subprocess.run([f"{VENV_BIN}/dagster", "job", "launch", "-f", str(code / "defs.py"),
                               "-j", "k8s__sized_steps", "--config-json",
                               json.dumps({"ops": {"start": {"config": {"workload": {"n": 7}}}}})],
                              env=env, cwd=code, capture_output=True, text=True, timeout=180)
        assert proc.returncode == 0, proc.stderr[-3000:]
        with dg.DagsterInstance.from_config(str(home)) as instance:
            deadline = time.monotonic() + 240
            while True:
                runs = instance.get_runs()
                assert len(runs) == 1
                run = runs[0]
                if run.is_finished or time.monotonic() > deadline:
                    break
                time.sleep(1)
            logs = "\n".join(f"== {p.name}\n{p.read_text(errors='replace')[-2000:]}"
                             for p in sorted(kube.logdir.glob("*.log")))
            assert run.status == dg.DagsterRunStatus.SUCCESS, logs
            events = instance.all_logs(run.run_id)
        steps = [e.step_key for e in events if e.dagster_event and e.dagster_event.event_type_value == "STEP_SUCCESS"]
        assert sorted(steps) == ["heavy", "start"]

        manifests = kube.manifests()
        run_worker = [m for m in manifests if m["metadata"]["name"].startswith("dagster-run-")]
        step_jobs = {_step_key(m): m for m in manifests if m["metadata"]["name"].startswith("dagster-step-")}
        assert len(run_worker) == 1 and set(step_jobs) == {"start", "heavy"}
        for manifest in manifests:
            _validate(manifest)
        assert run_worker[0]["metadata"]["namespace"] == "dagster"
        assert all(m["metadata"]["namespace"] == "etl" for m in step_jobs.values())  # metadata.dagster.k8s
        resources = {key: m["spec"]["template"]["spec"]["containers"][0].get("resources") or {}
                     for key, m in step_jobs.items()}
        assert resources["heavy"] == {"requests": {"cpu": "2", "memory": "4Gi"},
                                      "limits": {"memory": "8Gi", "nvidia.com/gpu": "1"}}
        assert resources["start"] == {}
        heavy_pod = step_jobs["heavy"]["spec"]["template"]["spec"]
        assert heavy_pod["nodeSelector"] == {"pool": "gpu"}
        assert heavy_pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
        assert "nodeSelector" not in step_jobs["start"]["spec"]["template"]["spec"]
        # each step ran in its own process (its own "pod"); the workload override reached the run
        out = step_result(home, run.run_id, "heavy")
        assert out["square"] == 49 and len(set(out["pids"])) == 2
    finally:
        kube.stop()



def _step_key(manifest: dict[str, Any]) -> str:
    env = {e["name"]: e.get("value") for e in manifest["spec"]["template"]["spec"]["containers"][0]["env"]}
    return env["DAGSTER_RUN_STEP_KEY"]


def step_result(home: Path, run_id: str, step: str) -> Any:
    """A step's ``result`` output of a run stored under DAGSTER_HOME ``home``, by whichever IO
    manager the job uses: noetl_dagster's ArrowRefIOManager (``noetl_data/runs/...``) or Dagster's
    default pickling filesystem IO manager (``storage/<run>/<step>/result``)."""
    import pickle

    from noetl_dagster.io.manager import ArrowRefIOManager

    io = ArrowRefIOManager(base_uri=str(home / "noetl_data"))
    if Path(io.run_uri(run_id, step, "result")).exists():
        return io.load(io.run_uri(run_id, step, "result"))
    with open(home / "storage" / run_id / step / "result", "rb") as f:
        return pickle.load(f)


