"""``kind: nats``: NATS core, JetStream, Key/Value and Object Store operations (nats-py).

NoETL's contract (every field rendered as a template)::

    tool:
      kind: nats
      auth: my_nats                 # credential alias -> {url, user?, password?, token?}
                                    # (or NoETL's nats_url, nats_user, nats_password, nats_token)
      # or: url: nats://127.0.0.1:4222, user/password or token (a literal or a credential alias)
      operation: kv_put
      bucket: sessions
      key: "{{ workload.session_id }}"
      value: {user_id: 1}           # a mapping/list is stored as JSON, a string as its bytes

Operations and results (NoETL's shapes; every result has ``status``):

======================  ===================================================  =====================================================
operation               fields                                               result
======================  ===================================================  =====================================================
``kv_get``              ``bucket key``                                       ``{status: success|not_found, bucket, key, value}`` (JSON parsed when it is JSON)
``kv_put``              ``bucket key value``                                 ``{status, bucket, key, revision}``
``kv_delete``           ``bucket key``                                       ``{status, bucket, key}``
``kv_keys``             ``bucket [pattern]`` (``*`` glob)                    ``{status, bucket, keys, count}``
``kv_purge``            ``bucket key``                                       ``{status, bucket, key}``
``object_put``          ``bucket name data [encoding: utf-8|base64]``        ``{status, bucket, name, size}``
``object_get``          ``bucket name [encoding]``                           ``{status, bucket, name, data, size}``
``object_delete``       ``bucket name``                                      ``{status, bucket, name}``
``object_list``         ``bucket``                                           ``{status, bucket, objects: [{name, size, description, chunks}], count}``
``object_info``         ``bucket name``                                      ``{status, bucket, name, size, description, chunks}``
``js_publish``          ``subject data [headers]``                           ``{status, stream, seq, duplicate}``
``js_consume``          ``stream consumer [batch ≤1000] [timeout_ms ≤5000]``  ``{status, stream, consumer, count, messages, acked}``
                        ``[ack: true]`` (an existing durable pull consumer)
``js_get_msg``          ``stream`` and ``seq``, ``last: true`` or ``subject``  ``{status, stream, subject, seq, data}``
``js_stream_info``      ``stream``                                           ``{status, stream, config, state}``
``publish``             ``subject data [headers]`` (core NATS, extension)    ``{status, subject, size}``
``request``             ``subject data [headers] [timeout_ms]`` (extension)  ``{status, subject, data, headers}``
======================  ===================================================  =====================================================

Buckets and streams must exist (as in NoETL, the tool never creates them). Like NoETL, the
batch and the wait of ``js_consume`` are bounded so a step never holds its slot waiting for
events; an idle stream gives ``messages: []``. A failed operation fails the step; a missing
key is ``status: not_found``, not an error.

Secrets: the credential's fields (``password``, ``token``, a password inside ``url``) and
literal ``password``/``token`` values are registered for redaction; no result carries them.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import threading
from typing import Any, Mapping

from noetl_dagster.playbook.kinds import NATS_OPERATIONS as OPERATIONS
from noetl_dagster.runtime.tools.base import Tool, ToolContext, ToolError
from noetl_dagster.core.secrets import redact, register_connection_secret, register_secret, secret_safe

#: NoETL's bounds of js_consume (tools/src/tools/source/mod.rs)
BATCH_DEFAULT, BATCH_MAX = 100, 1000
TIMEOUT_DEFAULT_MS, TIMEOUT_MAX_MS = 1000, 5000
CONNECT_TIMEOUT_SECONDS = 5



def _secret_safe(func):  # type: ignore[no-untyped-def]
    def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]

        return secret_safe(func)(*args, **kwargs)

    return wrapper


class NatsTool(Tool):
    kind = "nats"

    @_secret_safe
    def run(self, config: dict[str, Any], ctx: ToolContext) -> Any:
        cfg = ctx.render({k: v for k, v in config.items() if k != "kind"})
        if not isinstance(cfg, Mapping):  # pragma: no cover - rendering keeps mappings
            raise ToolError("nats: the tool config must be a mapping")
        op = str(cfg.get("operation") or "")
        if op not in OPERATIONS:
            raise ToolError(f"nats: unknown operation {op!r}; valid: {', '.join(OPERATIONS)}")
        for name in OPERATIONS[op]:
            if cfg.get(name) in (None, ""):
                raise ToolError(f"nats: operation {op!r} requires {name!r}")
        conn = _connection(cfg, ctx)
        return _run_sync(_execute(op, cfg, conn))


# ------------------------------------------------------------------------------- connection
def _connection(cfg: Mapping[str, Any], ctx: ToolContext) -> dict[str, Any]:
    """``{url, user, password, token}`` from ``auth:`` or explicit fields (NoETL's order)."""
    alias = cfg.get("auth")
    if alias:
        if not isinstance(alias, str):
            raise ToolError("nats: `auth` must be a credential alias (a string)")
        fields = ctx.credential(alias)
        url = fields.get("url") or fields.get("nats_url")
        if not url:
            raise ToolError(f"nats: credential {alias!r} has no `url` field")
        register_connection_secret(url)
        # NoETL's `nats` credential type names them nats_url, nats_user, nats_password (its Rust
        # resolver reads only url/user/password/token: both spellings work here)
        return {"url": str(url), "user": fields.get("user") or fields.get("username") or fields.get("nats_user"),
                "password": fields.get("password") or fields.get("nats_password"),
                "token": fields.get("token") or fields.get("nats_token"), "who": f"credential {alias!r}"}
    url = cfg.get("url")
    if not url:
        raise ToolError("nats: a connection needs `url:` or an `auth:` credential alias with a `url` field")
    register_connection_secret(url)

    def secret(value: Any) -> Any:
        """A literal secret, or the value of the credential it names (NoETL's secret alias)."""
        if value in (None, ""):
            return None
        resolver = ctx.resources.get("credentials")
        if isinstance(value, str) and resolver is not None and resolver.has(value):
            fields = resolver.resolve(value)
            value = next((fields[k] for k in ("value", "password", "token") if fields.get(k)), value)
        register_secret(value)
        return str(value)

    return {"url": str(url), "user": cfg.get("user"), "password": secret(cfg.get("password")),
            "token": secret(cfg.get("token")), "who": "`url`"}


def _run_sync(coro: Any) -> Any:
    """Run ``coro`` to completion from sync code (in a thread when a loop already runs here)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name="noetl-nats")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


async def _execute(op: str, cfg: Mapping[str, Any], conn: Mapping[str, Any]) -> Any:
    import nats
    from nats.errors import Error as NatsError

    options: dict[str, Any] = {"connect_timeout": CONNECT_TIMEOUT_SECONDS, "allow_reconnect": False,
                               "max_reconnect_attempts": 0}
    if conn.get("token"):
        options["token"] = conn["token"]
    elif conn.get("user") and conn.get("password"):
        options["user"], options["password"] = str(conn["user"]), str(conn["password"])
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:  # nats-py reports asynchronous errors here
        errors.append(str(exc))

    try:
        nc = await nats.connect(conn["url"], error_cb=on_error, **options)
    except (NatsError, OSError, asyncio.TimeoutError) as exc:
        detail = "; ".join(dict.fromkeys(errors + [str(exc) or type(exc).__name__]))
        raise ToolError(redact(f"nats: connect to {conn['url']} ({conn['who']}) failed: {detail}")) from None
    try:
        return await _OPS[op](nc, cfg)
    except ToolError:
        raise
    except (NatsError, OSError, asyncio.TimeoutError) as exc:
        raise ToolError(redact(f"nats: {op} failed: {exc or type(exc).__name__}")) from None
    finally:
        try:
            await nc.close()
        except Exception:  # noqa: BLE001 - closing a broken connection
            pass


# ------------------------------------------------------------------------------------ payloads
def _payload(value: Any) -> bytes:
    """NoETL's ``serialize_value``: nothing -> b'', a string as is, anything else as JSON."""
    if value is None:
        return b""
    if isinstance(value, str):
        return value.encode()
    return json.dumps(value, default=str).encode()


def _object_bytes(cfg: Mapping[str, Any]) -> bytes:
    data = cfg.get("data")
    if isinstance(data, str) and cfg.get("encoding") == "base64":
        try:
            return base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ToolError(f"nats: object_put: `data` is not valid base64: {exc}") from None
    return _payload(data)


def _decode(raw: bytes) -> Any:
    """A payload as JSON when it is JSON, else its text (NoETL's kv_get/js_get_msg)."""
    text = raw.decode("utf-8", errors="replace")
    try:
        return json.loads(text)
    except ValueError:
        return text


def _headers(cfg: Mapping[str, Any]) -> dict[str, str] | None:
    headers = cfg.get("headers")
    if headers in (None, {}):
        return None
    if not isinstance(headers, Mapping):
        raise ToolError("nats: `headers` must map header names to values")
    return {str(k): str(v) for k, v in headers.items()}


def _glob(pattern: str, text: str) -> bool:
    """NoETL's glob: ``*`` matches any run of characters, nothing else is special."""
    import re

    return re.fullmatch(".*".join(re.escape(p) for p in pattern.split("*")), text, re.DOTALL) is not None


# ---------------------------------------------------------------------------------- KV store
async def _kv(nc: Any, cfg: Mapping[str, Any]) -> Any:
    from nats.js.errors import BucketNotFoundError, NotFoundError

    bucket = str(cfg["bucket"])
    try:
        return await nc.jetstream().key_value(bucket)
    except (BucketNotFoundError, NotFoundError):
        raise ToolError(f"nats: KV bucket {bucket!r} does not exist") from None


async def _kv_get(nc: Any, cfg: Mapping[str, Any]) -> Any:
    from nats.js.errors import KeyNotFoundError

    kv, key = await _kv(nc, cfg), str(cfg["key"])
    base = {"bucket": str(cfg["bucket"]), "key": key}
    try:
        entry = await kv.get(key)  # KeyDeletedError is a KeyNotFoundError
    except KeyNotFoundError:
        return {"status": "not_found", **base, "value": None}
    return {"status": "success", **base, "value": _decode(entry.value or b"")}


async def _kv_put(nc: Any, cfg: Mapping[str, Any]) -> Any:
    kv, key = await _kv(nc, cfg), str(cfg["key"])
    revision = await kv.put(key, _payload(cfg.get("value")))
    return {"status": "success", "bucket": str(cfg["bucket"]), "key": key, "revision": revision}


async def _kv_delete(nc: Any, cfg: Mapping[str, Any]) -> Any:
    kv, key = await _kv(nc, cfg), str(cfg["key"])
    await kv.delete(key)
    return {"status": "success", "bucket": str(cfg["bucket"]), "key": key}


async def _kv_purge(nc: Any, cfg: Mapping[str, Any]) -> Any:
    kv, key = await _kv(nc, cfg), str(cfg["key"])
    await kv.purge(key)
    return {"status": "success", "bucket": str(cfg["bucket"]), "key": key}


async def _kv_keys(nc: Any, cfg: Mapping[str, Any]) -> Any:
    from nats.js.errors import NoKeysError

    kv = await _kv(nc, cfg)
    try:
        keys = await kv.keys()
    except NoKeysError:
        keys = []
    pattern = cfg.get("pattern")
    if pattern:
        keys = [k for k in keys if _glob(str(pattern), k)]
    return {"status": "success", "bucket": str(cfg["bucket"]), "keys": keys, "count": len(keys)}


# ------------------------------------------------------------------------------ object store
async def _obs(nc: Any, cfg: Mapping[str, Any]) -> Any:
    from nats.js.errors import BucketNotFoundError, NotFoundError

    bucket = str(cfg["bucket"])
    try:
        return await nc.jetstream().object_store(bucket)
    except (BucketNotFoundError, NotFoundError):
        raise ToolError(f"nats: object store bucket {bucket!r} does not exist") from None


def _info(info: Any) -> dict[str, Any]:
    meta = getattr(info, "meta", None)
    return {"name": info.name, "size": info.size, "chunks": info.chunks,
            "description": getattr(meta, "description", None) if meta is not None else info.description}


async def _object_get(nc: Any, cfg: Mapping[str, Any]) -> Any:
    from nats.js.errors import NotFoundError, ObjectNotFoundError

    obs, name = await _obs(nc, cfg), str(cfg["name"])
    try:
        res = await obs.get(name)
    except (ObjectNotFoundError, NotFoundError):
        raise ToolError(f"nats: object_get: no object {name!r} in bucket {cfg['bucket']!r}") from None
    raw = res.data or b""
    data = base64.b64encode(raw).decode() if cfg.get("encoding") == "base64" else raw.decode("utf-8", "replace")
    return {"status": "success", "bucket": str(cfg["bucket"]), "name": name, "data": data, "size": len(raw)}


async def _object_put(nc: Any, cfg: Mapping[str, Any]) -> Any:
    from nats.js.api import ObjectMeta

    obs, name = await _obs(nc, cfg), str(cfg["name"])
    data = _object_bytes(cfg)
    description = cfg.get("description")
    await obs.put(name, data, meta=ObjectMeta(name=name, description=str(description) if description else None))
    return {"status": "success", "bucket": str(cfg["bucket"]), "name": name, "size": len(data)}


async def _object_delete(nc: Any, cfg: Mapping[str, Any]) -> Any:
    from nats.js.errors import NotFoundError, ObjectNotFoundError

    obs, name = await _obs(nc, cfg), str(cfg["name"])
    try:
        await obs.delete(name)
    except (ObjectNotFoundError, NotFoundError):
        raise ToolError(f"nats: object_delete: no object {name!r} in bucket {cfg['bucket']!r}") from None
    return {"status": "success", "bucket": str(cfg["bucket"]), "name": name}


async def _object_list(nc: Any, cfg: Mapping[str, Any]) -> Any:
    from nats.js.errors import NotFoundError

    obs = await _obs(nc, cfg)
    try:
        infos = await obs.list(ignore_deletes=True)
    except NotFoundError:  # nats-py: an empty bucket
        infos = []
    objects = [_info(i) for i in infos if not getattr(i, "deleted", False)]
    return {"status": "success", "bucket": str(cfg["bucket"]), "objects": objects, "count": len(objects)}


async def _object_info(nc: Any, cfg: Mapping[str, Any]) -> Any:
    from nats.js.errors import NotFoundError, ObjectNotFoundError

    obs, name = await _obs(nc, cfg), str(cfg["name"])
    try:
        info = await obs.get_info(name)
    except (ObjectNotFoundError, NotFoundError):
        raise ToolError(f"nats: object_info: no object {name!r} in bucket {cfg['bucket']!r}") from None
    return {"status": "success", "bucket": str(cfg["bucket"]), **_info(info)}


# --------------------------------------------------------------------------------- JetStream
async def _js_publish(nc: Any, cfg: Mapping[str, Any]) -> Any:
    from nats.errors import NoRespondersError
    from nats.js.errors import NoStreamResponseError

    subject = str(cfg["subject"])
    try:
        ack = await nc.jetstream().publish(subject, _payload(cfg.get("data")), headers=_headers(cfg))
    except (NoRespondersError, NoStreamResponseError):
        raise ToolError(f"nats: js_publish: no JetStream stream listens on subject {subject!r}") from None
    return {"status": "success", "stream": ack.stream, "seq": ack.seq, "duplicate": bool(ack.duplicate)}


def _bounded(value: Any, default: int, low: int, high: int, name: str) -> int:
    if value in (None, ""):
        return default
    try:
        return max(low, min(high, int(value)))
    except (TypeError, ValueError):
        raise ToolError(f"nats: `{name}` must be an integer, got {value!r}") from None


async def _js_consume(nc: Any, cfg: Mapping[str, Any]) -> Any:
    from nats.errors import TimeoutError as NatsTimeout
    from nats.js.errors import NotFoundError

    stream, consumer = str(cfg["stream"]), str(cfg["consumer"])
    batch = _bounded(cfg.get("batch"), BATCH_DEFAULT, 1, BATCH_MAX, "batch")
    timeout_ms = _bounded(cfg.get("timeout_ms"), TIMEOUT_DEFAULT_MS, 0, TIMEOUT_MAX_MS, "timeout_ms")
    ack = cfg.get("ack", True) not in (False, "false", "False", 0)
    js = nc.jetstream()
    try:
        await js.consumer_info(stream, consumer)  # must exist: js_consume never creates consumers
    except NotFoundError:
        raise ToolError(f"nats: js_consume: consumer {consumer!r} on stream {stream!r} not found") from None
    sub = await js.pull_subscribe_bind(consumer, stream=stream)
    messages: list[Any] = []
    deadline = asyncio.get_running_loop().time() + max(timeout_ms, 1) / 1000
    try:
        while len(messages) < batch:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                break
            try:
                got = await sub.fetch(batch - len(messages), timeout=left)
            except (NatsTimeout, asyncio.TimeoutError):
                break
            messages.extend(got)
    finally:
        await sub.unsubscribe()
    out, acked = [], 0
    for msg in messages:
        meta = msg.metadata
        out.append({"subject": msg.subject, "stream_seq": meta.sequence.stream,
                    "consumer_seq": meta.sequence.consumer, "delivered": meta.num_delivered,
                    "pending": meta.num_pending, "data": _decode(msg.data or b""),
                    "headers": dict(msg.headers or {})})
        if ack:
            await msg.ack()
            acked += 1
    return {"status": "success", "stream": stream, "consumer": consumer, "count": len(out),
            "messages": out, "acked": acked}


async def _js_get_msg(nc: Any, cfg: Mapping[str, Any]) -> Any:
    from nats.js.errors import NotFoundError

    stream, js = str(cfg["stream"]), nc.jetstream()
    try:
        if cfg.get("seq") not in (None, ""):
            msg = await js.get_msg(stream, seq=_bounded(cfg["seq"], 0, 0, 2**63, "seq"))
        elif cfg.get("last") or cfg.get("subject"):
            msg = await js.get_last_msg(stream, str(cfg.get("subject") or ">"))
        else:
            raise ToolError("nats: js_get_msg requires one of: 'seq', 'last: true', or 'subject'")
    except NotFoundError:
        raise ToolError(f"nats: js_get_msg: no such message in stream {stream!r}") from None
    return {"status": "success", "stream": stream, "subject": msg.subject, "seq": msg.seq,
            "data": _decode(msg.data or b"")}


async def _js_stream_info(nc: Any, cfg: Mapping[str, Any]) -> Any:
    from nats.js.errors import NotFoundError

    stream = str(cfg["stream"])
    try:
        info = await nc.jetstream().stream_info(stream)
    except NotFoundError:
        raise ToolError(f"nats: js_stream_info: stream {stream!r} not found") from None
    c, s = info.config, info.state
    return {"status": "success", "stream": stream,
            "config": {"name": c.name, "subjects": list(c.subjects or []), "max_msgs": c.max_msgs,
                       "max_bytes": c.max_bytes},
            "state": {"messages": s.messages, "bytes": s.bytes, "first_seq": s.first_seq,
                      "last_seq": s.last_seq, "consumer_count": s.consumer_count}}


# --------------------------------------------------------------------------------- core NATS
async def _publish(nc: Any, cfg: Mapping[str, Any]) -> Any:
    payload = _payload(cfg.get("data"))
    await nc.publish(str(cfg["subject"]), payload, headers=_headers(cfg))
    await nc.flush(timeout=CONNECT_TIMEOUT_SECONDS)
    return {"status": "success", "subject": str(cfg["subject"]), "size": len(payload)}


async def _request(nc: Any, cfg: Mapping[str, Any]) -> Any:
    from nats.errors import NoRespondersError
    from nats.errors import TimeoutError as NatsTimeout

    subject = str(cfg["subject"])
    timeout_ms = _bounded(cfg.get("timeout_ms"), TIMEOUT_DEFAULT_MS, 1, TIMEOUT_MAX_MS, "timeout_ms")
    try:
        msg = await nc.request(subject, _payload(cfg.get("data")), timeout=timeout_ms / 1000,
                               headers=_headers(cfg))
    except NoRespondersError:
        raise ToolError(f"nats: request: no responders on subject {subject!r}") from None
    except (NatsTimeout, asyncio.TimeoutError):
        raise ToolError(f"nats: request on subject {subject!r}: no reply within {timeout_ms} ms") from None
    return {"status": "success", "subject": subject, "data": _decode(msg.data or b""),
            "headers": dict(msg.headers or {})}


_OPS = {
    "kv_get": _kv_get, "kv_put": _kv_put, "kv_delete": _kv_delete, "kv_keys": _kv_keys,
    "kv_purge": _kv_purge, "object_get": _object_get, "object_put": _object_put,
    "object_delete": _object_delete, "object_list": _object_list, "object_info": _object_info,
    "js_publish": _js_publish, "js_consume": _js_consume, "js_get_msg": _js_get_msg,
    "js_stream_info": _js_stream_info, "publish": _publish, "request": _request,
}
