"""``kind: nats`` against a real nats-server with JetStream on 127.0.0.1 (tests/nats_server.py)."""

from __future__ import annotations

import asyncio
import base64
import json
import traceback
import uuid

import dagster as dg
import pytest

from nats_server import NatsServer, start
from noetl_dagster import PlaybookError, run_playbook
from noetl_dagster.playbook.loader import parse_text
from noetl_dagster.resources.credentials import CredentialsResource
from noetl_dagster.runtime.tools import ToolContext, ToolError, get_tool

TOKEN = "nats-T0ken-" + uuid.uuid4().hex[:12]
WRONG_TOKEN = "wr0ng-nats-T0ken-9f8e7d"


@pytest.fixture(scope="module")
def nats_server() -> NatsServer:
    gen = start(TOKEN)
    server = next(gen)
    asyncio.run(_setup(server))
    yield server
    gen.close()


async def _setup(server: NatsServer) -> None:
    """Buckets, a stream and a durable pull consumer: NoETL's tool uses them, never creates them."""
    import nats
    from nats.js.api import ConsumerConfig, KeyValueConfig

    nc = await nats.connect(server.url, token=server.token)
    js = nc.jetstream()
    await js.create_key_value(KeyValueConfig(bucket="sessions"))
    await js.create_key_value(KeyValueConfig(bucket="scratch"))
    await js.create_object_store("blobs")
    await js.add_stream(name="ORDERS", subjects=["orders.>"])
    await js.add_consumer("ORDERS", ConsumerConfig(durable_name="projector", ack_policy="explicit"))
    await nc.close()


def creds(server: NatsServer, **extra: dict) -> CredentialsResource:
    return CredentialsResource(use_env=False, credentials={
        "nats_credential": {"url": server.url, "token": server.token}, **extra})


def run(server: NatsServer, config: dict, scope: dict | None = None) -> dict:
    ctx = ToolContext("nats", "exec-1", scope or {}, resources={"credentials": creds(server)})
    return get_tool("nats").run({"auth": "nats_credential", **config}, ctx)


def no_secret(value: object, *secrets: str) -> str:
    if isinstance(value, BaseException):
        assert value.__cause__ is None and value.__context__ is None
        text = "".join(traceback.format_exception_only(value)) + repr(value)
    else:
        text = json.dumps(value, default=str)
    for secret in secrets:
        assert secret not in text
    return text


# --------------------------------------------------------------------------------------- KV
def test_kv_put_get_keys_delete(nats_server: NatsServer) -> None:
    put = run(nats_server, {"operation": "kv_put", "bucket": "scratch", "key": "user.1",
                            "value": {"name": "Ada", "n": 1}})
    assert put["status"] == "success" and put["key"] == "user.1" and put["revision"] >= 1
    run(nats_server, {"operation": "kv_put", "bucket": "scratch", "key": "user.2", "value": "plain text"})
    run(nats_server, {"operation": "kv_put", "bucket": "scratch", "key": "other", "value": [1, 2]})
    got = run(nats_server, {"operation": "kv_get", "bucket": "scratch", "key": "user.1"})
    assert got == {"status": "success", "bucket": "scratch", "key": "user.1", "value": {"name": "Ada", "n": 1}}
    assert run(nats_server, {"operation": "kv_get", "bucket": "scratch", "key": "user.2"})["value"] == "plain text"
    keys = run(nats_server, {"operation": "kv_keys", "bucket": "scratch", "pattern": "user.*"})
    assert sorted(keys["keys"]) == ["user.1", "user.2"] and keys["count"] == 2
    assert run(nats_server, {"operation": "kv_delete", "bucket": "scratch", "key": "user.1"})["status"] == "success"
    missing = run(nats_server, {"operation": "kv_get", "bucket": "scratch", "key": "user.1"})
    assert missing == {"status": "not_found", "bucket": "scratch", "key": "user.1", "value": None}
    assert run(nats_server, {"operation": "kv_purge", "bucket": "scratch", "key": "other"})["status"] == "success"
    assert run(nats_server, {"operation": "kv_keys", "bucket": "scratch"})["keys"] == ["user.2"]


def test_kv_unknown_bucket_is_a_clear_error(nats_server: NatsServer) -> None:
    with pytest.raises(ToolError, match="KV bucket 'nope' does not exist"):
        run(nats_server, {"operation": "kv_get", "bucket": "nope", "key": "k"})


def test_templated_values_are_data_not_syntax(nats_server: NatsServer) -> None:
    evil = 'x"}; DROP; {{ 7*7 }}'
    scope = {"workload": {"v": {"text": evil}}}
    run(nats_server, {"operation": "kv_put", "bucket": "scratch", "key": "evil", "value": "{{ workload.v }}"}, scope)
    assert run(nats_server, {"operation": "kv_get", "bucket": "scratch", "key": "evil"})["value"] == {"text": evil}


# ----------------------------------------------------------------------------- object store
def test_object_store_round_trip(nats_server: NatsServer) -> None:
    raw = bytes(range(256)) * 600  # more than one chunk
    put = run(nats_server, {"operation": "object_put", "bucket": "blobs", "name": "bin", "encoding": "base64",
                            "data": base64.b64encode(raw).decode(), "description": "binary"})
    assert put == {"status": "success", "bucket": "blobs", "name": "bin", "size": len(raw)}
    run(nats_server, {"operation": "object_put", "bucket": "blobs", "name": "report.txt", "data": "hello"})
    got = run(nats_server, {"operation": "object_get", "bucket": "blobs", "name": "bin", "encoding": "base64"})
    assert base64.b64decode(got["data"]) == raw and got["size"] == len(raw)
    assert run(nats_server, {"operation": "object_get", "bucket": "blobs", "name": "report.txt"})["data"] == "hello"
    info = run(nats_server, {"operation": "object_info", "bucket": "blobs", "name": "bin"})
    assert info["size"] == len(raw) and info["description"] == "binary" and info["chunks"] >= 2
    listed = run(nats_server, {"operation": "object_list", "bucket": "blobs"})
    assert {o["name"] for o in listed["objects"]} >= {"bin", "report.txt"}
    run(nats_server, {"operation": "object_delete", "bucket": "blobs", "name": "report.txt"})
    assert "report.txt" not in {o["name"] for o in run(nats_server, {"operation": "object_list",
                                                                     "bucket": "blobs"})["objects"]}
    with pytest.raises(ToolError, match="no object 'report.txt'"):
        run(nats_server, {"operation": "object_get", "bucket": "blobs", "name": "report.txt"})


# -------------------------------------------------------------------------------- JetStream
def test_js_publish_get_consume_and_info(nats_server: NatsServer) -> None:
    first = run(nats_server, {"operation": "js_publish", "subject": "orders.new", "data": {"id": 1},
                              "headers": {"X-Source": "test"}})
    assert first["status"] == "success" and first["stream"] == "ORDERS" and first["duplicate"] is False
    run(nats_server, {"operation": "js_publish", "subject": "orders.new", "data": {"id": 2}})
    by_seq = run(nats_server, {"operation": "js_get_msg", "stream": "ORDERS", "seq": first["seq"]})
    assert by_seq == {"status": "success", "stream": "ORDERS", "subject": "orders.new", "seq": first["seq"],
                      "data": {"id": 1}}
    assert run(nats_server, {"operation": "js_get_msg", "stream": "ORDERS", "last": True,
                             "subject": "orders.new"})["data"] == {"id": 2}
    consumed = run(nats_server, {"operation": "js_consume", "stream": "ORDERS", "consumer": "projector",
                                 "batch": 10, "timeout_ms": 500})
    assert consumed["count"] == 2 and consumed["acked"] == 2
    assert [m["data"] for m in consumed["messages"]] == [{"id": 1}, {"id": 2}]
    assert consumed["messages"][0]["headers"] == {"X-Source": "test"}
    # acked: an idle stream gives an empty batch within the bounded wait, not an error
    again = run(nats_server, {"operation": "js_consume", "stream": "ORDERS", "consumer": "projector",
                              "timeout_ms": 200})
    assert again["count"] == 0 and again["messages"] == []
    info = run(nats_server, {"operation": "js_stream_info", "stream": "ORDERS"})
    assert info["config"]["subjects"] == ["orders.>"] and info["state"]["messages"] >= 2


def test_js_publish_without_stream_and_missing_consumer(nats_server: NatsServer) -> None:
    with pytest.raises(ToolError, match="no JetStream stream listens on subject 'nowhere.x'"):
        run(nats_server, {"operation": "js_publish", "subject": "nowhere.x", "data": "x"})
    with pytest.raises(ToolError, match="consumer 'ghost' on stream 'ORDERS' not found"):
        run(nats_server, {"operation": "js_consume", "stream": "ORDERS", "consumer": "ghost"})


def test_core_publish_and_request(nats_server: NatsServer) -> None:
    import threading

    import nats

    ready, stop = threading.Event(), threading.Event()

    async def responder() -> None:
        nc = await nats.connect(nats_server.url, token=nats_server.token)

        async def answer(msg) -> None:  # type: ignore[no-untyped-def]
            await msg.respond(json.dumps({"echo": json.loads(msg.data)}).encode())

        await nc.subscribe("svc.echo", cb=answer)
        await nc.flush()
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.02)
        await nc.close()

    thread = threading.Thread(target=lambda: asyncio.run(responder()), daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        out = run(nats_server, {"operation": "request", "subject": "svc.echo", "data": {"q": 1}})
        assert out["data"] == {"echo": {"q": 1}}
        assert run(nats_server, {"operation": "publish", "subject": "svc.note", "data": "hi"}) == {
            "status": "success", "subject": "svc.note", "size": 2}
    finally:
        stop.set()
        thread.join(10)
    with pytest.raises(ToolError, match="no responders on subject 'svc.none'"):
        run(nats_server, {"operation": "request", "subject": "svc.none", "data": "x"})


# -------------------------------------------------------------------------------- secrets
def test_wrong_token_fails_without_showing_it(nats_server: NatsServer) -> None:
    ctx = ToolContext("nats", "exec-1", {}, resources={"credentials": CredentialsResource(
        use_env=False, credentials={"bad": {"url": nats_server.url, "token": WRONG_TOKEN}})})
    with pytest.raises(ToolError) as info:
        get_tool("nats").run({"auth": "bad", "operation": "kv_get", "bucket": "sessions", "key": "k"}, ctx)
    text = no_secret(info.value, WRONG_TOKEN, TOKEN)
    assert "credential 'bad'" in text and "authorization violation" in text.lower()


def test_literal_token_and_url_password_are_redacted(nats_server: NatsServer) -> None:
    ctx = ToolContext("nats", "exec-1", {}, resources={})
    url = f"nats://svc:{WRONG_TOKEN}-pw@127.0.0.1:{nats_server.port}"
    with pytest.raises(ToolError) as info:
        get_tool("nats").run({"url": url, "operation": "kv_get", "bucket": "s", "key": "k"}, ctx)
    no_secret(info.value, f"{WRONG_TOKEN}-pw")
    out = get_tool("nats").run({"url": nats_server.url, "token": TOKEN, "operation": "kv_keys",
                                "bucket": "sessions"}, ctx)
    assert out["status"] == "success"
    no_secret(out, TOKEN)


# ------------------------------------------------------------------------------ playbooks
#: NoETL's e2e test_nats_kv, as written upstream (python init, kv_put/kv_get/kv_delete by alias)
NATS_KV = """
apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: test_nats_kv, path: test_nats_kv}
workload:
  nats_credential: nats_credential
  bucket: sessions
  test_key: test_session_123
  test_value: {session_token: test_session_123, user_id: 1, email: test@example.com, is_active: true}
workflow:
- step: start
  tool:
  - name: init
    kind: python
    code: 'result = {"status": "initialized"}'
  next: {spec: {mode: exclusive}, arcs: [{step: kv_put}]}
- step: kv_put
  tool:
  - {name: put_value, kind: nats, auth: '{{ nats_credential }}', operation: kv_put, bucket: '{{ bucket }}',
     key: '{{ test_key }}', value: '{{ test_value }}'}
  next: {spec: {mode: exclusive}, arcs: [{step: kv_get}]}
- step: kv_get
  tool:
  - {name: get_value, kind: nats, auth: '{{ nats_credential }}', operation: kv_get, bucket: '{{ bucket }}',
     key: '{{ test_key }}'}
  next: {spec: {mode: exclusive}, arcs: [{step: kv_delete}]}
- step: kv_delete
  tool:
  - {name: delete_value, kind: nats, auth: '{{ nats_credential }}', operation: kv_delete,
     bucket: '{{ bucket }}', key: '{{ test_key }}'}
  next: {spec: {mode: exclusive}, arcs: [{step: end}]}
- step: end
  tool:
  - name: complete
    kind: python
    code: 'result = {"status": "complete"}'
"""


def test_upstream_style_kv_playbook(nats_server: NatsServer, instance: dg.DagsterInstance) -> None:
    report = run_playbook(parse_text(NATS_KV), instance=instance,
                          resources={"noetl_credentials": creds(nats_server)})
    assert report.status == "success", {k: s.error for k, s in report.steps.items() if s.error}
    got = report.steps["kv_get"].result["get_value"]
    assert got["status"] == "success" and got["value"]["email"] == "test@example.com"
    assert report.steps["kv_delete"].result["delete_value"]["status"] == "success"
    assert report.steps["end"].result == {"complete": {"status": "complete"}, "status": "complete"}  # flattened (NoETL)
    # the token reached neither results nor any event of the run
    events = [repr(e) for e in instance.all_logs(report.run_id)]
    assert events and not any(TOKEN in e for e in events)
    no_secret({k: s.result for k, s in report.steps.items()}, TOKEN)


def test_failed_connection_fails_the_step_without_the_token(nats_server: NatsServer,
                                                            instance: dg.DagsterInstance) -> None:
    bad = CredentialsResource(use_env=False, credentials={
        "nats_credential": {"url": nats_server.url, "token": WRONG_TOKEN}})
    report = run_playbook(parse_text(NATS_KV), instance=instance, resources={"noetl_credentials": bad})
    assert report.status == "failure" and report.steps["kv_put"].status == "failed"
    assert "authorization violation" in report.steps["kv_put"].error.lower()
    events = [repr(e) for e in instance.all_logs(report.run_id)]
    assert not any(WRONG_TOKEN in e for e in events)


def test_validation_names_field_and_line() -> None:
    text = """apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: bad_nats}
workflow:
  - step: start
    tool:
      kind: nats
      url: nats://127.0.0.1:4222
      operation: kv_fetch
      bucket: b
"""
    with pytest.raises(PlaybookError) as info:
        parse_text(text, "bad.yaml")
    (issue,) = info.value.issues
    assert (issue.step, issue.field) == ("start", "tool.operation") and "unknown nats operation 'kv_fetch'" in issue.message
    assert issue.line == 9
