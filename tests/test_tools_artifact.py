"""``kind: artifact``: put/get of step outputs by reference in a local folder, moto's S3 server and
the GCS emulator (gcp-storage-emulator), both real HTTP APIs started on 127.0.0.1 by the tests."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Iterator

import dagster as dg
import pyarrow as pa
import pytest

from noetl_dagster import PlaybookError, run_playbook
from noetl_dagster.playbook.loader import parse_text
from noetl_dagster.io.arrow_ref import ArrowRef
from noetl_dagster.resources.credentials import CredentialsResource
from noetl_dagster.runtime.tools import ToolContext, ToolError, get_tool

S3_SECRET = "s3-Secr3t-artifact-key-42"


def _serve(args: list[str], port: int, what: str) -> Iterator[subprocess.Popen]:
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    pytest.fail(f"{what} did not start")
                time.sleep(0.2)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def s3_server() -> Iterator[str]:
    """moto's S3 server on 127.0.0.1 with bucket ``arts``; stopped by PID."""
    import pyarrow.fs as pafs

    moto = Path(sys.executable).parent / "moto_server"
    if not moto.exists():
        pytest.skip("moto_server (moto[server]) is not installed")
    port = _port()
    for _ in _serve([str(moto), "-H", "127.0.0.1", "-p", str(port)], port, "moto_server"):
        fs = pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{port}", scheme="http", access_key="test",
                               secret_key=S3_SECRET, region="us-east-1", allow_bucket_creation=True)
        fs.create_dir("arts")
        yield f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def gcs_server() -> Iterator[str]:
    """gcp-storage-emulator on 127.0.0.1 (in memory) with bucket ``arts``; stopped by PID."""
    emulator = Path(sys.executable).parent / "gcp-storage-emulator"
    if not emulator.exists():
        pytest.skip("gcp-storage-emulator is not installed")
    port = _port()
    args = [str(emulator), "start", "--host", "127.0.0.1", "--port", str(port), "--in-memory",
            "--default-bucket", "arts"]
    for _ in _serve(args, port, "gcp-storage-emulator"):
        yield f"http://127.0.0.1:{port}"


def ctx_for(step: str = "save", execution_id: str = "4242", **credentials: dict) -> ToolContext:
    return ToolContext(step, execution_id, {}, resources={
        "credentials": CredentialsResource(use_env=False, credentials=credentials)})


def artifact(config: dict, ctx: ToolContext | None = None) -> object:
    return get_tool("artifact").run(config, ctx or ctx_for())


ITEMS = {"status": "ok", "count": 3, "items": [{"id": i, "data": "x" * 10} for i in range(3)]}


def test_local_put_get_and_select(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    put = artifact({"action": "put", "store": store, "input": {"data": ITEMS, "select": ["status", "count"]}})
    assert put["status"] == "ok" and put["_store"] == "disk" and put["count"] == 3 and "items" not in put
    assert put["_ref"] == str(tmp_path / "store" / "artifacts" / "4242" / "save" / "save.json")
    got = artifact({"action": "get", "store": store, "input": {"result_ref": put["_ref"]}}, ctx_for("load"))
    assert got == ITEMS
    # a whole put result works as the reference too (args: is NoETL's other spelling)
    assert artifact({"store": store, "args": {"result_ref": put}}, ctx_for("load")) == ITEMS


def test_local_table_is_stored_as_parquet_and_returned_by_reference(tmp_path: Path) -> None:
    store = str(tmp_path)
    table = pa.table({"id": [1, 2, 3], "v": [0.5, 1.5, 2.5]})
    put = artifact({"action": "put", "store": store, "input": {"data": table, "name": "scores"}})
    assert put["_ref"].endswith("/artifacts/4242/save/scores.parquet")
    ref = artifact({"action": "get", "store": store, "input": {"result_ref": put["_ref"]}})
    assert isinstance(ref, ArrowRef) and ref.num_rows == 3 and ref.to_table().equals(table)


def test_get_is_confined_to_the_artifact_store(tmp_path: Path) -> None:
    store = tmp_path / "store"
    secret_file = tmp_path / "secret.json"
    secret_file.write_text('{"noetl_value": 1, "value": "do not read"}')
    for ref in (str(secret_file), str(store / "artifacts" / ".." / ".." / "secret.json"), "/etc/passwd",
                "s3://other/artifacts/x.json"):
        with pytest.raises(ToolError, match="outside the artifact store|not in the artifact store"):
            artifact({"action": "get", "store": str(store), "input": {"result_ref": ref}})
    with pytest.raises(ToolError, match="NoETL result-store reference"):
        artifact({"action": "get", "store": str(store), "input": {"result_ref": "noetl://execution/1/result/a/b"}})
    with pytest.raises(ToolError, match="not a safe path segment"):
        artifact({"action": "put", "store": str(store), "input": {"data": 1, "name": "../escape"}})
    with pytest.raises(ToolError, match="no artifact at"):
        artifact({"action": "get", "store": str(store), "input": {"result_ref": str(store / "artifacts/1/a/b.json")}})


def test_default_root_is_the_io_managers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOETL_ARTIFACT_URI", raising=False)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    put = artifact({"action": "put", "input": {"data": [1, 2]}})
    assert put["_ref"].startswith(str(tmp_path / "noetl_data" / "artifacts") + "/")
    assert artifact({"input": {"result_ref": put["_ref"]}}) == [1, 2]


def test_s3_put_get_with_a_credential(s3_server: str) -> None:
    ctx = ctx_for(s3_art={"access_key_id": "test", "secret_access_key": S3_SECRET, "endpoint": s3_server})
    put = artifact({"action": "put", "auth": "s3_art", "store": "s3://arts/noetl",
                    "input": {"data": ITEMS, "select": ["count"]}}, ctx)
    assert put["_store"] == "s3" and put["_ref"] == "s3://arts/noetl/artifacts/4242/save/save.json"
    got = artifact({"action": "get", "auth": "s3_art", "store": "s3://arts/noetl",
                    "input": {"result_ref": put["_ref"]}}, ctx)
    assert got == ITEMS
    assert S3_SECRET not in json.dumps([put, got])
    with pytest.raises(ToolError) as info:
        artifact({"action": "get", "auth": "s3_art", "store": "s3://arts/noetl",
                  "input": {"result_ref": "s3://arts/noetl/artifacts/../../x.json"}}, ctx)
    assert S3_SECRET not in "".join(traceback.format_exception_only(info.value))


def test_gcs_put_get(gcs_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_server)
    put = artifact({"action": "put", "store": "gs://arts/noetl", "input": {"data": ITEMS}})
    assert put["_store"] == "gcs" and put["_ref"].startswith("gs://arts/noetl/artifacts/4242/save/")
    assert artifact({"store": "gs://arts/noetl", "input": {"result_ref": put["_ref"]}}) == ITEMS


#: NoETL's test_output_select, with the externalisation as an explicit put (see the README)
PLAYBOOK = """
apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: test_output_select, path: tests/output_select_test}
workload: {item_count: 1000, item_size: 200, store: ""}
workflow:
- step: start
  tool:
  - name: generate_data
    kind: python
    input: {count: '{{ item_count }}', size: '{{ item_size }}'}
    code: |
      items = [{"id": i, "name": f"item_{i}", "data": "x" * size, "status": "active"} for i in range(count)]
      result = {"status": "success", "count": len(items), "total_size": sum(len(i["data"]) for i in items),
                "items": items}
  - name: save
    kind: artifact
    action: put
    store: '{{ store }}'
    input: {data: '{{ generate_data }}', name: full, select: [status, count, total_size]}
  next: verify_extracted_fields
- step: verify_extracted_fields
  tool:
    kind: python
    input: {count: '{{ start.save.count }}', has_ref: '{{ start.save._ref is defined }}'}
    code: 'result = {"verified": True, "count_received": count, "was_externalized": has_ref}'
  next: lazy_load_full_data
- step: lazy_load_full_data
  tool:
  - {name: load_artifact, kind: artifact, action: get, store: '{{ store }}',
     input: {result_ref: '{{ start.save._ref }}'}}
  next: process_full_data
- step: process_full_data
  tool:
    kind: python
    input: {data: '{{ lazy_load_full_data.load_artifact }}'}
    code: 'result = {"processed": len(data["items"]), "first": data["items"][0]["name"]}'
"""


def test_output_select_playbook(tmp_path: Path, instance: dg.DagsterInstance) -> None:
    report = run_playbook(parse_text(PLAYBOOK), {"store": str(tmp_path)}, instance=instance)
    assert report.status == "success", {k: s.error for k, s in report.steps.items() if s.error}
    assert report.steps["verify_extracted_fields"].result == {"verified": True, "count_received": 1000,
                                                              "was_externalized": True}
    assert report.steps["process_full_data"].result == {"processed": 1000, "first": "item_0"}


def test_validation() -> None:
    text = """apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: bad_artifact}
workflow:
  - step: start
    tool:
      kind: artifact
      action: fetch
"""
    with pytest.raises(PlaybookError) as info:
        parse_text(text, "bad.yaml")
    (issue,) = info.value.issues
    assert issue.field == "tool.action" and "unknown artifact action 'fetch'" in issue.message


#: NoETL's step `output:` externalisation: a large result leaves only its selected fields and `_ref`
EXTERNALIZED = """
apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: externalized, path: tests/externalized}
workload: {count: 1000, size: 200}
workflow:
- step: start
  tool:
  - name: generate_data
    kind: python
    input: {count: '{{ count }}', size: '{{ size }}'}
    code: |
      items = [{"id": i, "data": "x" * size} for i in range(count)]
      result = {"status": "success", "count": len(items), "items": items}
  output:
    store: {kind: auto}
    output_select: [status, count]
  next: small
- step: small
  tool: {kind: python, code: 'result = {"status": "ok", "n": 1}'}
  output: {output_select: [status]}
  next: load
- step: load
  tool:
  - {name: load_artifact, kind: artifact, action: get, input: {result_ref: '{{ start._ref }}'}}
  next: check
- step: check
  tool:
    kind: python
    input: {start: '{{ start }}', small: '{{ small }}', full: '{{ load.load_artifact }}'}
    code: |
      result = {"start_keys": sorted(start), "small": small, "items": len(full["items"]),
                "first": full["generate_data"]["items"][0]["id"]}
"""


def test_step_output_externalizes_large_results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                instance: dg.DagsterInstance) -> None:
    monkeypatch.setenv("NOETL_ARTIFACT_URI", str(tmp_path))
    report = run_playbook(parse_text(EXTERNALIZED), instance=instance)
    assert report.status == "success", {k: s.error for k, s in report.steps.items() if s.error}
    check = report.steps["check"].result
    assert check["start_keys"] == ["_ref", "_size", "_store", "count", "status"]
    assert check["small"] == {"status": "ok", "n": 1}  # under 64 KiB: stays inline, untouched
    assert check["items"] == 1000 and check["first"] == 0
    assert report.steps["start"].result["_ref"].startswith(str(tmp_path / "artifacts") + "/")


def test_step_output_to_gcs_and_back(gcs_server: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                     instance: dg.DagsterInstance) -> None:
    """`output.store.kind: gcs` (NoETL's test_gcs_storage): the artifact lands in the GCS root and
    `artifact get` finds it there by its `gs://` reference."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_server)
    monkeypatch.setenv("NOETL_ARTIFACT_GCS_URI", "gs://arts/noetl")
    monkeypatch.setenv("NOETL_ARTIFACT_URI", str(tmp_path))
    text = EXTERNALIZED.replace("store: {kind: auto}", "store: {kind: gcs}").replace("count: 1000", "count: 10")
    report = run_playbook(parse_text(text), instance=instance)
    assert report.status == "success", {k: s.error for k, s in report.steps.items() if s.error}
    start = report.steps["start"].result
    assert start["_store"] == "gcs" and start["_ref"].startswith("gs://arts/noetl/artifacts/")
    assert report.steps["check"].result["items"] == 10
    monkeypatch.delenv("NOETL_ARTIFACT_GCS_URI")  # kind gcs without a GCS root: a clear error
    report = run_playbook(parse_text(text), instance=instance)
    assert report.status == "failure" and "set NOETL_ARTIFACT_GCS_URI" in report.steps["start"].error


S3_PLAYBOOK = """
apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: s3_artifacts, path: tests/s3_artifacts}
workflow:
- step: start
  tool:
    kind: artifact
    action: put
    auth: s3_art
    store: s3://arts/pb
    input: {data: {rows: [1, 2, 3]}, name: rows}
  next: load
- step: load
  tool: {kind: artifact, auth: s3_art, store: s3://arts/pb, input: {result_ref: "{{ start._ref }}"}}
"""


def test_s3_playbook_keeps_the_secret_out_of_results_and_events(s3_server: str, instance: dg.DagsterInstance) -> None:
    creds = CredentialsResource(use_env=False, credentials={
        "s3_art": {"access_key_id": "test", "secret_access_key": S3_SECRET, "endpoint": s3_server}})
    report = run_playbook(parse_text(S3_PLAYBOOK), instance=instance, resources={"noetl_credentials": creds})
    assert report.status == "success", {k: s.error for k, s in report.steps.items() if s.error}
    assert report.steps["load"].result == {"rows": [1, 2, 3]}
    events = [repr(e) for e in instance.all_logs(report.run_id)]
    assert events and not any(S3_SECRET in e for e in events)
    assert S3_SECRET not in json.dumps({k: s.result for k, s in report.steps.items()})


TIERS = """
apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: tiers, path: tests/tiers}
workflow:
- step: start
  tool: {kind: python, code: 'result = {"status": "ok", "items": ["x" * 50] * 100}'}
  output: {output_select: [status]}
  next: kv
- step: kv
  tool: {kind: python, code: 'result = {"status": "ok", "items": ["K" * 200] * 500}'}
  output: {output_select: [status]}
  next: disk
- step: disk
  tool: {kind: python, code: 'result = {"status": "ok", "items": ["D" * 1000] * 1200}'}
  output: {output_select: [status]}
  next: load
- step: load
  tool:
  - {name: kv_back, kind: artifact, input: {result_ref: '{{ kv._ref }}'}}
  - {name: disk_back, kind: artifact, input: {result_ref: '{{ disk._ref }}'}}
  next: check
- step: check
  tool:
    kind: python
    input: {start: '{{ start }}', kv: '{{ kv }}', disk: '{{ disk }}', back: '{{ load }}'}
    code: |
      result = {"inline": "_ref" in start, "kv": kv["_store"], "disk": disk["_store"],
                "kv_items": len(back["kv_back"]["items"]), "disk_items": len(back["disk_back"]["items"])}
"""


def test_storage_tiers_with_nats_kv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    instance: dg.DagsterInstance) -> None:
    """NoETL's tiers: inline below 64 KiB, NATS KV below 1 MiB (a real nats-server), files above."""
    from nats_server import start

    gen = start("tiers-T0ken-0xbeef")
    server = next(gen)
    try:
        monkeypatch.setenv("NOETL_ARTIFACT_NATS_URL", f"nats://{server.token}@127.0.0.1:{server.port}")
        monkeypatch.setenv("NOETL_ARTIFACT_URI", str(tmp_path))
        report = run_playbook(parse_text(TIERS), instance=instance)
        assert report.status == "success", {k: s.error for k, s in report.steps.items() if s.error}
        assert report.steps["check"].result == {"inline": False, "kv": "kv", "disk": "disk",
                                                "kv_items": 500, "disk_items": 1200}
        assert report.steps["kv"].result["_ref"].startswith("nats-kv://noetl_results/")
        events = [repr(e) for e in instance.all_logs(report.run_id)]
        assert not any(server.token in e for e in events)  # the token inside the URL is redacted
        with pytest.raises(ToolError, match="outside the artifact KV bucket"):
            artifact({"input": {"result_ref": "nats-kv://other/x.y"}})
    finally:
        gen.close()
