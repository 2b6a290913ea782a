"""``kind: artifact``: store a step's output by reference and load it back (local, S3, GCS).

NoETL's get (the shape of its e2e fixtures ``test_output_select``/``test_storage_tiers``/
``test_gcs_storage``)::

    - step: lazy_load_full_data
      tool:
        kind: artifact
        action: get                           # default
        input: {result_ref: "{{ save._ref }}"}   # alias `args:`; or `result_ref:` / `ref:` directly

returns the stored value as it was put (a mapping stays a mapping; a stored table comes back as
an :class:`~noetl_dagster.io.arrow_ref.ArrowRef`, loaded lazily by whoever needs rows).

Put (NoETL's Python worker had it; its Rust tool leaves putting to the result store)::

    - step: save
      tool:
        kind: artifact
        action: put
        input:
          data: "{{ generate }}"              # any JSON-able value, or an Arrow table / DataFrame
          name: full_items                    # optional (default: the step's name)
          select: [status, count]             # NoETL's output_select: copied into the result
        store: gs://bucket/noetl              # optional: the root (local path, s3://, gs://)

returns ``{status: success, _ref: <uri>, _store: disk|s3|gcs, name, size, <selected fields>}``:
small fields travel in the token, the payload stays in the store.

Where: under ``<root>/artifacts/<execution_id>/<step>/``. The root is ``store:``, else
``$NOETL_ARTIFACT_URI``, else the IO manager's default root (``$DAGSTER_HOME/noetl_data``), so
artifacts sit beside the step outputs and products the IO manager writes, with the same URI
forms and ``pyarrow.fs`` filesystems (values as the IO manager's JSON encoding, tables as
Parquet). Names are checked like the IO manager's path segments, and ``get`` reads only
references inside ``<root>/artifacts/`` (no ``..``, no other scheme or bucket): a template can
not make the tool read an arbitrary file. Object stores: ``endpoint:`` (or ``AWS_ENDPOINT_URL``
for S3, ``STORAGE_EMULATOR_HOST`` for GCS) points at another server, and ``auth:`` names a
credential with ``access_key_id``/``secret_access_key`` (S3) whose secrets are redacted;
without it the platform's default credentials apply.
"""

from __future__ import annotations

import os
import posixpath
import re
from typing import Any, Mapping

from noetl_dagster.core.secrets import redact, register_connection_secret, register_secret, secret_safe
from noetl_dagster.io.arrow_ref import ArrowRef, is_local, json_default, local_path, resolve_uri, schema_strings
from noetl_dagster.io.codec import as_arrow, check_segment, decode_value, encode_value, is_arrow_data, resolve_root
from noetl_dagster.playbook.kinds import ARTIFACT_ACTIONS, artifact_inputs
from noetl_dagster.runtime.tools.base import Tool, ToolContext, ToolError
from noetl_dagster.runtime.tools.nats import _run_sync

FOLDER = "artifacts"
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_STORE_NAMES = {"s3": "s3", "gs": "gcs", "gcs": "gcs"}


def _templated(value: Any) -> bool:
    return isinstance(value, str) and ("{{" in value or "{%" in value)


def default_root(kind: str | None = None) -> str:
    """The artifact root: for ``kind`` ``gcs``/``s3`` ``$NOETL_ARTIFACT_GCS_URI``/``..._S3_URI``
    when set; else ``$NOETL_ARTIFACT_URI``, else the IO manager's default root."""
    if kind in ("gcs", "s3") and os.environ.get(f"NOETL_ARTIFACT_{kind.upper()}_URI"):
        return os.environ[f"NOETL_ARTIFACT_{kind.upper()}_URI"]
    return os.environ.get("NOETL_ARTIFACT_URI") or resolve_root()


def _root_for_ref(ref: Any) -> str:
    """The default root a reference lives under (its scheme's tier root)."""
    scheme = _scheme(ref) if isinstance(ref, str) else None
    return default_root(_STORE_NAMES.get(scheme or ""))


def _scheme(uri: str) -> str | None:
    match = _SCHEME.match(uri)
    return match.group(1).lower() if match else None


class _Store:
    """A root URI and the ``pyarrow.fs`` filesystem serving it."""

    def __init__(self, root: str, cfg: Mapping[str, Any], ctx: ToolContext) -> None:
        import pyarrow.fs as pafs

        root = str(root).strip()
        if not root:
            raise ToolError("artifact: `store` rendered empty")
        scheme = _scheme(root)
        self.kind = "disk" if is_local(root) else _STORE_NAMES.get(scheme or "", scheme or "disk")
        if self.kind == "disk":
            self.root = os.path.realpath(local_path(root))
            self.fs, self.base = pafs.LocalFileSystem(), self.root
            return
        self.root = root.rstrip("/")
        rest = self.root[len(scheme or "") + 3:]
        if not rest or rest.startswith("/"):
            raise ToolError(f"artifact: store {root!r} names no bucket")
        endpoint = cfg.get("endpoint")
        fields = _credential(cfg, ctx)
        endpoint = endpoint or fields.get("endpoint") or fields.get("endpoint_url")
        if self.kind == "s3" and (endpoint or fields):
            host, http = _split_endpoint(endpoint) if endpoint else (None, False)
            self.fs = pafs.S3FileSystem(
                access_key=fields.get("access_key_id"), secret_key=fields.get("secret_access_key"),
                session_token=fields.get("session_token"), region=fields.get("region") or "us-east-1",
                endpoint_override=host, scheme="http" if http else "https")
        elif self.kind == "gcs" and (endpoint or os.environ.get("STORAGE_EMULATOR_HOST")):
            from datetime import timedelta

            host, http = _split_endpoint(endpoint or os.environ["STORAGE_EMULATOR_HOST"])
            self.fs = pafs.GcsFileSystem(endpoint_override=host, scheme="http" if http else "https",
                                         anonymous=True, retry_time_limit=timedelta(seconds=15))
        else:
            self.fs, _ = resolve_uri(self.root + "/")
        self.base = rest

    def path_of(self, uri: str) -> str:
        """The filesystem path of a reference, which must lie inside ``<root>/artifacts/``."""
        uri = str(uri).strip()
        if uri.startswith("noetl://"):
            raise ToolError(f"artifact: {uri!r} is a NoETL result-store reference; this package "
                            "stores artifacts in files (use the `_ref` an `action: put` step returned)")
        inside = f"{self.root}/{FOLDER}/"
        if self.kind == "disk":
            if not is_local(uri):
                raise ToolError(f"artifact: reference {uri!r} is not in the artifact store {self.root}")
            path = os.path.realpath(local_path(uri))
            if not path.startswith(os.path.join(self.root, FOLDER) + os.sep):
                raise ToolError(f"artifact: reference {uri!r} is outside the artifact store "
                                f"{os.path.join(self.root, FOLDER)}")
            return path
        if not uri.startswith(inside) or ".." in uri[len(inside):].split("/") or "\\" in uri:
            raise ToolError(f"artifact: reference {uri!r} is outside the artifact store {inside}")
        return posixpath.normpath(self.base + "/" + uri[len(self.root) + 1:])

    def uri_of(self, *segments: str) -> tuple[str, str]:
        """``(uri, fs path)`` of a new artifact under ``artifacts/``."""
        if self.kind == "disk":
            path = os.path.join(self.root, FOLDER, *segments)
            return path, path
        rel = "/".join([FOLDER, *segments])
        return f"{self.root}/{rel}", f"{self.base}/{rel}"


def _split_endpoint(endpoint: str) -> tuple[str, bool]:
    text = str(endpoint).strip()
    http = not text.startswith("https://")
    return re.sub(r"^https?://", "", text).rstrip("/"), http


def _credential(cfg: Mapping[str, Any], ctx: ToolContext) -> dict[str, Any]:
    alias = cfg.get("auth")
    if not alias:
        return {}
    if not isinstance(alias, str):
        raise ToolError("artifact: `auth` must be a credential alias (a string)")
    fields = ctx.credential(alias)
    pick = {
        "access_key_id": ("access_key_id", "aws_access_key_id", "access_key", "key_id"),
        "secret_access_key": ("secret_access_key", "aws_secret_access_key", "secret_key", "secret"),
        "session_token": ("session_token", "aws_session_token"),
        "region": ("region", "aws_region"), "endpoint": ("endpoint", "endpoint_url"),
    }
    out = {k: next((fields[n] for n in names if fields.get(n)), None) for k, names in pick.items()}
    register_secret(out["secret_access_key"])
    register_secret(out["session_token"])
    return {k: v for k, v in out.items() if v}


class ArtifactTool(Tool):
    kind = "artifact"

    def run(self, config: dict[str, Any], ctx: ToolContext) -> Any:
        return secret_safe(self._run)(config, ctx)

    def _run(self, config: dict[str, Any], ctx: ToolContext) -> Any:
        cfg = ctx.render({k: v for k, v in config.items() if k != "kind"})
        action = str(cfg.get("action") or "get")
        if action not in ARTIFACT_ACTIONS:
            raise ToolError(f"artifact: unknown action {action!r}; use get or put")
        inputs = artifact_inputs(cfg)
        ref = inputs.get("result_ref") or inputs.get("ref")
        ref = ref.get("_ref") if isinstance(ref, Mapping) else ref
        if action == "get" and isinstance(ref, str) and ref.startswith(KV_SCHEME):
            if not os.environ.get("NOETL_ARTIFACT_NATS_URL"):
                raise ToolError(f"artifact: {ref!r} is in NATS KV: set NOETL_ARTIFACT_NATS_URL")
            return _kv_get(ref.strip())
        store = _Store(cfg.get("store") or (_root_for_ref(ref) if action == "get" else default_root()), cfg, ctx)
        try:
            return _put(store, inputs, ctx) if action == "put" else _get(store, inputs)
        except ToolError:
            raise
        except (OSError, ValueError) as exc:
            raise ToolError(redact(f"artifact: {action} failed: {exc}")) from None


def _put(store: _Store, inputs: Mapping[str, Any], ctx: ToolContext) -> dict[str, Any]:
    name = str(inputs.get("name") or ctx.step)
    try:
        segments = [check_segment(ctx.execution_id, "execution id"), check_segment(ctx.step, "step"),
                    check_segment(name, "artifact name")]
    except ValueError as exc:
        raise ToolError(f"artifact: {exc}") from None
    data = inputs.get("data")
    if is_arrow_data(data) or isinstance(data, ArrowRef):
        import pyarrow.parquet as pq

        table = data.to_table() if isinstance(data, ArrowRef) else as_arrow(data)
        if not hasattr(table, "schema") or not hasattr(table, "num_rows"):
            import pyarrow as pa

            table = pa.table(table)
        uri, path = store.uri_of(*segments[:-1], segments[-1] + ".parquet")
        _make_parent(store, path)
        pq.write_table(table, path, filesystem=store.fs)
        size = store.fs.get_file_info(path).size
    else:
        text = encode_value(data)
        if text is None:
            raise ToolError(f"artifact: put: `data` ({type(data).__name__}) is neither JSON-able nor a table")
        uri, path = store.uri_of(*segments[:-1], segments[-1] + ".json")
        body = text.encode()
        _make_parent(store, path)
        with store.fs.open_output_stream(path) as out:
            out.write(body)
        size = len(body)
    result: dict[str, Any] = {"status": "success", "_ref": uri, "_store": store.kind, "name": name, "size": size}
    select = inputs.get("select") or []
    if select and not isinstance(data, Mapping):
        raise ToolError("artifact: put: `select` needs `data` to be a mapping")
    fields: Mapping[Any, Any] = data if isinstance(data, Mapping) else {}
    for field in select:
        if field not in fields:
            raise ToolError(f"artifact: put: selected field {field!r} is not in the data")
        result[str(field)] = fields[field]
    return result


def _make_parent(store: _Store, path: str) -> None:
    if store.kind == "disk":
        os.makedirs(os.path.dirname(path), exist_ok=True)
    else:
        store.fs.create_dir(posixpath.dirname(path), recursive=True)


def _get(store: _Store, inputs: Mapping[str, Any]) -> Any:
    ref = inputs.get("result_ref") or inputs.get("ref")
    if isinstance(ref, Mapping):  # a whole put result passed instead of its `_ref`
        ref = ref.get("_ref")
    if isinstance(ref, ArrowRef):
        ref = ref.uri
    if not isinstance(ref, str) or not ref.strip():
        raise ToolError("artifact: get needs `result_ref` (the `_ref` of a stored artifact)")
    path = store.path_of(ref)
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        try:
            with store.fs.open_input_file(path) as handle:
                parquet = pq.ParquetFile(handle)
                schema, rows = parquet.schema_arrow, parquet.metadata.num_rows
        except FileNotFoundError:
            raise ToolError(f"artifact: no artifact at {ref!r}") from None
        return ArrowRef(uri=ref.strip(), format="parquet", schema=schema_strings(schema), num_rows=rows,
                        num_bytes=store.fs.get_file_info(path).size)
    try:
        with store.fs.open_input_stream(path) as handle:
            text = handle.read()
    except FileNotFoundError:
        raise ToolError(f"artifact: no artifact at {ref!r}") from None
    return decode_value(text)


#: NoETL's inline threshold: results below it stay in the token (64 KiB of JSON)
INLINE_LIMIT = 64 * 1024
#: NoETL's NATS-KV tier holds results below 1 MiB (when NOETL_ARTIFACT_NATS_URL is set)
KV_LIMIT = 1024 * 1024
KV_SCHEME = "nats-kv://"
_KV_KEY = re.compile(r"[^A-Za-z0-9_=-]+")


def _kv_bucket() -> str:
    return os.environ.get("NOETL_ARTIFACT_NATS_BUCKET") or "noetl_results"


def _kv_call(op: str, key: str, value: bytes | None = None) -> bytes | None:
    """One KV operation on the artifact bucket of ``$NOETL_ARTIFACT_NATS_URL`` (nats-py)."""
    url = os.environ["NOETL_ARTIFACT_NATS_URL"]
    register_connection_secret(url)
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.username and not parts.password:  # nats://<token>@host: the token is the user part
        register_secret(parts.username)
    bucket = _kv_bucket()

    async def call() -> bytes | None:
        import nats
        from nats.js.api import KeyValueConfig
        from nats.js.errors import BucketNotFoundError, KeyNotFoundError, NotFoundError

        nc = await nats.connect(url, connect_timeout=5, allow_reconnect=False, max_reconnect_attempts=0)
        try:
            js = nc.jetstream()
            try:
                kv = await js.key_value(bucket)
            except (BucketNotFoundError, NotFoundError):
                if op == "get":
                    raise ToolError(f"artifact: no KV bucket {bucket!r} for {KV_SCHEME}{bucket}/{key}") from None
                kv = await js.create_key_value(KeyValueConfig(bucket=bucket, history=1))
            if op == "put":
                await kv.put(key, value or b"")
                return None
            try:
                entry = await kv.get(key)
            except KeyNotFoundError:
                raise ToolError(f"artifact: no artifact at {KV_SCHEME}{bucket}/{key}") from None
            return entry.value or b""
        finally:
            await nc.close()

    try:
        return _run_sync(call())
    except ToolError:
        raise
    except Exception as exc:  # noqa: BLE001 - nats-py's errors, OSError, timeouts
        raise ToolError(redact(f"artifact: NATS KV {op} failed: {exc or type(exc).__name__}")) from None


def _kv_put(result: Any, ctx: ToolContext) -> str:
    text = encode_value(result)
    if text is None:
        raise ToolError("artifact: the result is not JSON-able")
    key = ".".join(_KV_KEY.sub("_", str(p)) for p in (ctx.execution_id, ctx.step, "result"))
    _kv_call("put", key, text.encode())
    return f"{KV_SCHEME}{_kv_bucket()}/{key}"


def _kv_get(ref: str) -> Any:
    bucket, _, key = ref[len(KV_SCHEME):].partition("/")
    if bucket != _kv_bucket() or not key or _KV_KEY.sub("", key.replace(".", "")) != key.replace(".", ""):
        raise ToolError(f"artifact: reference {ref!r} is outside the artifact KV bucket {_kv_bucket()!r}")
    return decode_value(_kv_call("get", key) or b"")


def externalize(spec: Mapping[str, Any], result: Any, execution_id: Any, step: str) -> Any:
    """NoETL's step ``output: {store: {kind}, output_select: [fields]}``: a large result is stored
    as an artifact and replaced by its selected fields plus ``_ref``/``_store``/``_size``.

    ``store.kind: auto`` (or no ``store``) externalises results above :data:`INLINE_LIMIT`
    bytes of JSON, as NoETL does; another kind always does. The artifact goes to ``store.uri``,
    else for ``kind: gcs``/``s3`` to ``$NOETL_ARTIFACT_GCS_URI``/``$NOETL_ARTIFACT_S3_URI``
    (an error when that root is not of that kind), else to the default artifact store
    (``$NOETL_ARTIFACT_URI`` or the IO manager's root). With ``$NOETL_ARTIFACT_NATS_URL`` set,
    results of 64 KiB–1 MiB (``kind: auto``, or ``kind: kv``) go to NoETL's NATS KV tier instead
    (bucket ``$NOETL_ARTIFACT_NATS_BUCKET``, default ``noetl_results``, created when missing;
    ``_ref`` ``nats-kv://<bucket>/<key>``, ``_store: kv``),
    where ``kind: artifact`` ``action: get`` finds it by ``_ref``. Steps without ``output:`` are
    untouched.
    """
    import json

    if "store" not in spec and "output_select" not in spec:
        return result  # another use of `output:`: not a storage directive
    store_spec = spec.get("store")
    kind = str(store_spec.get("kind") or "auto") if isinstance(store_spec, Mapping) else "auto"
    select = spec.get("output_select") or []
    if not isinstance(select, list):
        raise ToolError("output.output_select must be a list of field names")
    try:
        size = len(json.dumps(result, default=json_default))
    except (TypeError, ValueError):
        return result  # not JSON (tables): the IO manager already passes those by reference
    if kind == "auto" and size < INLINE_LIMIT:
        return result
    ctx = ToolContext(step, str(execution_id), {})
    fields = [f for f in select if isinstance(result, Mapping) and f in result]
    if (kind == "kv" or (kind == "auto" and size < KV_LIMIT)) and os.environ.get("NOETL_ARTIFACT_NATS_URL"):
        ref = _kv_put(result, ctx)
        return {**{f: result[f] for f in fields}, "_ref": ref, "_store": "kv", "_size": size}
    tier = {"gs": "gcs"}.get(kind, kind)
    root = store_spec.get("uri") if isinstance(store_spec, Mapping) and store_spec.get("uri") else None
    store = _Store(str(root or default_root(tier)), {}, ctx)
    if tier in ("gcs", "s3") and store.kind != tier:
        raise ToolError(f"output.store.kind {kind}: the artifact root {store.root} is not {tier}; set "
                        f"NOETL_ARTIFACT_{tier.upper()}_URI (or store.uri) to a "
                        f"{'gs' if tier == 'gcs' else 's3'}://bucket/prefix root")
    put = _put(store, {"data": result, "name": "result", "select": fields}, ctx)
    return {**{f: result[f] for f in fields}, "_ref": put["_ref"], "_store": put["_store"], "_size": size}
