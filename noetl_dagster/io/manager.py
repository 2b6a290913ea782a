"""``ArrowRefIOManager``: Arrow tables travel between ops as references, written once.

What it stores
--------------
Every output (a step's ``result``, a token ``to_<step>``, an asset) is walked: each
``pyarrow.Table``, ``RecordBatch``, ``RecordBatchReader`` (streamed batch by batch, never fully
materialised), pandas or polars DataFrame is written once and replaced by an
:class:`~noetl_dagster.io.arrow_ref.ArrowRef`: as Parquet in asset outputs (data products:
compact, readable by every engine; ``format``) and as uncompressed Arrow IPC in op outputs (a
run's intermediates: loads are zero-copy memory maps; ``intermediate_format``). The small remainder (the
token or result, with refs in it) is stored as JSON (``value.json``: refs, tuples and dicts whose
only key looks like a marker are encoded with ``__noetl_*__`` markers) or, when it is not JSON-able
(``datetime``, ``bytes``, non-string keys...), as a pickle (``value.pkl``).

A table that appears in several outputs of one step (its ``result`` and every token it fires)
is written once: writes are cached by object identity per ``(root, run_id, step_key)`` (weak
references, so the cache never keeps a table alive) and every occurrence gets the same ref.
Refs already in the value (forwarded from upstream) are kept as they are: forwarding costs nothing.
(``job.execute_in_process`` itself keeps every output object alive until the run ends, for
``result.output_for_node``; runs launched by ``execute_job``/the daemon do not.)

Layout (``<root>`` is :attr:`ArrowRefIOManager.root`)::

    <root>/<asset key path>[/<partition key>]/value.json + <name>.parquet ...   asset outputs
    <root>/runs/<run_id>/<step_key>/<output_name>[/<mapping_key>]/... .arrow  op outputs

A single table stored as an asset lands in ``<root>/<asset key>/data.parquet``; tables inside a
structure are named after their position (``results.load.1.parquet``). Multi-dimensional
partition keys become one folder per dimension (sorted by dimension name), as in Dagster's
``UPathIOManager``. An asset folder is self-contained: a ref it holds to another file under the
root (an intermediate that retention deletes, another asset that gets overwritten) is hard-linked
(or copied, remotely) into the folder; refs outside the root are kept as they are. An asset
write overwrites the previous materialization (local files are replaced atomically by rename:
open memory maps keep the old data) and removes table files the new value does not use; refs
to them held elsewhere (e.g. in tokens of older runs) then see the new data or a missing file.

Every step name, asset key part, partition key, output name and mapping key must be a single
path segment: ``..``, ``.``, ``/``, ``\\``, NUL and control characters raise
:class:`ArrowRefPathError` before anything is written, and asset keys may not start with ``runs``.

What it loads
-------------
``load_input`` follows the input's annotation (its Dagster type's ``typing_type``):

=============================================  ==================================================
``pyarrow.Table``                              the table (memory-mapped when local)
``ArrowRef``                                   the ref; no table data is read
``pyarrow.RecordBatchReader``                  a streaming reader
``pyarrow.dataset.Dataset``                    a lazy dataset
``pandas.DataFrame`` / ``polars.DataFrame``    DataFrames; ``polars.LazyFrame`` a lazy scan
``duckdb.DuckDBPyRelation``                    a relation on DuckDB's default connection
anything else (``Any``, ``dict``, ``list``)    the stored structure with ArrowRefs intact
=============================================  ==================================================

For the table-shaped types the stored value must be a ref or contain exactly one. Partitioned
assets store one folder per partition key; loading several partitions gives
``{partition_key: value}`` (``allow_missing_partitions`` in the input's metadata skips missing
ones, as in ``UPathIOManager``).

Retention
---------
Op outputs (``runs/<run_id>``) are intermediates: :meth:`ArrowRefIOManager.clean_intermediates`
deletes those of runs whose files are all older than ``intermediate_retention_days`` (skipping
runs the instance still reports as not finished), :meth:`ArrowRefIOManager.clean_run` deletes one
run's. Re-execution from failure needs the parent run's intermediates: keep the retention longer
than the window in which runs are re-executed. Asset data is never deleted by retention.

Example::

    from noetl_dagster.io.manager import ArrowRefIOManager

    defs = dg.Definitions(assets=[...], resources={
        "io_manager": ArrowRefIOManager(base_uri="s3://lake/noetl", format="parquet")})

    @dg.asset
    def report(application_scores: pa.Table) -> pa.Table:   # loaded memory-mapped
        ...
"""

from __future__ import annotations

import os
import pickle
import re
import threading
import time
import types
import typing
import uuid
import weakref
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, Callable, Sequence

import dagster as dg
from pydantic import Field

from noetl_dagster.io.arrow_ref import (
    EXTENSIONS,
    ArrowRef,
    canonical_format,
    is_local,
    local_path,
    resolve_uri,
    wait_all_written,
    wait_written,
    write_arrow,
    write_arrow_later,
)
from noetl_dagster.io.codec import (
    ArrowRefPathError,
    _walk,
    as_arrow,
    check_segment,
    decode_value,
    encode_value,
    is_arrow_data,
    iter_refs,
    join_uri,
    load_refs,
    replace_refs,
    resolve_root,
)

__all__ = [
    "ArrowRef",
    "ArrowRefIOManager",
    "ArrowRefPathError",
    "StoredOutput",
    "check_segment",
    "decode_value",
    "encode_value",
    "is_arrow_data",
    "iter_refs",
    "load_refs",
    "replace_refs",
]

VALUE_JSON = "value.json"
VALUE_PICKLE = "value.pkl"
RUNS = "runs"
#: where ``shared_memory`` intermediates live (a tmpfs: files there are RAM)
SHM_BASE = "/dev/shm"
_TABLE_SUFFIXES = tuple(EXTENSIONS.values())


def _asset_parts(asset_key: Any) -> list[str]:
    if isinstance(asset_key, dg.AssetKey):
        parts = list(asset_key.path)
    elif isinstance(asset_key, str):
        parts = list(dg.AssetKey.from_user_string(asset_key).path) if "/" in asset_key else [asset_key]
    else:
        parts = list(asset_key)
    checked = [check_segment(p, "asset key part") for p in parts]
    if not checked:
        raise ArrowRefPathError("an empty asset key has no storage path")
    if checked[0] == RUNS:
        raise ArrowRefPathError(
            f"asset key {'/'.join(checked)!r} starts with {RUNS!r}, the folder reserved for op "
            "outputs (intermediates that retention deletes): rename the asset")
    return checked


def _partition_parts(partition_key: Any) -> list[str]:
    by_dimension = getattr(partition_key, "keys_by_dimension", None)
    if by_dimension:  # MultiPartitionKey: one folder per dimension, sorted by dimension name
        return [check_segment(v, f"partition key ({d})") for d, v in sorted(by_dimension.items())]
    return [check_segment(partition_key, "partition key")]


_NAME_CHARS = re.compile(r"[^A-Za-z0-9_-]+")


def _table_name(path: Sequence[Any]) -> str:
    if not path:
        return "data"
    parts = [(_NAME_CHARS.sub("_", str(p)) or "_")[:40] for p in path]
    return ".".join(parts)[-120:].lstrip(".") or "data"


# -------------------------------------------------------------------- one write per step

class _WriteCache:
    """Refs already written, by ``(run_id, step_key)`` and object identity (weakly held)."""

    def __init__(self, max_steps: int = 256) -> None:
        self._lock = threading.Lock()
        self._steps: OrderedDict[tuple[str, ...], dict[int, tuple[Any, ArrowRef]]] = OrderedDict()
        self._max = max_steps

    def get(self, key: tuple[str, ...], obj: Any) -> ArrowRef | None:
        with self._lock:
            entries = self._steps.get(key)
            entry = entries.get(id(obj)) if entries else None
        if entry is None:
            return None
        holder, ref = entry
        target = holder() if isinstance(holder, weakref.ref) else holder
        return ref if target is obj else None

    def put(self, key: tuple[str, ...], obj: Any, ref: ArrowRef) -> None:
        try:
            holder: Any = weakref.ref(obj)
        except TypeError:
            holder = obj
        with self._lock:
            entries = self._steps.get(key)
            if entries is None:
                entries = self._steps[key] = {}
                while len(self._steps) > self._max:
                    self._steps.popitem(last=False)
            else:
                self._steps.move_to_end(key)
            entries[id(obj)] = (holder, ref)

    def clear(self) -> None:
        with self._lock:
            self._steps.clear()


_WRITES = _WriteCache()


class StoredOutput(typing.NamedTuple):
    """What :meth:`ArrowRefIOManager.store` wrote: the stored value (tables replaced by refs),
    every distinct ref in it, how many tables this call wrote, and the value file's URI."""

    value: Any
    refs: list[ArrowRef]
    written: int
    value_uri: str


# ----------------------------------------------------------------------------- the manager

def _wanted_type(context: dg.InputContext) -> Any:
    dagster_type = getattr(context, "dagster_type", None)
    wanted = getattr(dagster_type, "typing_type", Any) if dagster_type is not None else Any
    args = typing.get_args(wanted)
    if typing.get_origin(wanted) in (typing.Union, types.UnionType):
        non_none = [a for a in args if a is not type(None)]
        wanted = non_none[0] if len(non_none) == 1 else Any
    return wanted


def _is_dict_type(wanted: Any) -> bool:
    return wanted is dict or typing.get_origin(wanted) in (dict, Mapping)


def _converter(wanted: Any) -> Callable[[ArrowRef], Any] | None:
    """How to turn the one ref of a value into the annotated type (None: give the structure)."""
    if wanted is ArrowRef:
        return lambda ref: ref
    if not isinstance(wanted, type):
        return None
    module, name = wanted.__module__, wanted.__name__
    if module.startswith("pyarrow"):
        import pyarrow as pa

        if wanted is pa.Table:
            return lambda ref: ref.to_table()
        if wanted is pa.RecordBatchReader:
            return lambda ref: ref.to_reader()
        import pyarrow.dataset as ds

        if issubclass(wanted, ds.Dataset):
            return lambda ref: ref.to_dataset()
        return None
    if module.startswith("pandas") and name == "DataFrame":
        return lambda ref: ref.to_pandas()
    if module.startswith("polars"):
        if name == "DataFrame":
            return lambda ref: ref.to_polars()
        if name == "LazyFrame":
            import polars as pl

            def scan(ref: ArrowRef) -> Any:
                wait_written(ref.uri)
                return pl.scan_parquet(ref.uri) if ref.format == "parquet" else pl.scan_ipc(ref.uri)

            return scan
        return None
    if module.lstrip("_").startswith("duckdb") and name == "DuckDBPyRelation":
        return lambda ref: ref.to_duckdb()
    return None


class ArrowRefIOManager(dg.ConfigurableIOManager):
    """Stores outputs with Arrow tables written once as Parquet/Arrow IPC and passed as
    :class:`ArrowRef`; see the module documentation for layout, loading and retention.

    Examples:
        .. code-block:: python

            io = ArrowRefIOManager(base_uri="/data/noetl")              # local folder
            io = ArrowRefIOManager(base_uri="s3://lake/noetl")          # pyarrow S3 filesystem
            io = ArrowRefIOManager(format="arrow")   # Arrow IPC: zero-copy memory-mapped loads
            io.clean_intermediates(older_than_days=3, instance=instance)
    """

    base_uri: str | None = Field(
        default=None,
        description="Root folder or URI (s3://, gs://... via pyarrow.fs). Default: "
                    "$DAGSTER_HOME/noetl_data, or ./.noetl_data when DAGSTER_HOME is not set.")
    format: str = Field(
        default="parquet",
        description="File format of asset (data product) tables: 'parquet' (compact, readable by "
                    "everything: DuckDB, Spark, warehouses) or 'arrow'/'ipc' (Arrow IPC file).")
    intermediate_format: str = Field(
        default="arrow",
        description="File format of op outputs (a run's intermediates, read back by this IO "
                    "manager): 'arrow' (Arrow IPC, uncompressed: loads are zero-copy memory maps) "
                    "or 'parquet'.")
    compression: str | None = Field(
        default=None,
        description="Codec of asset tables; default snappy for Parquet, none for Arrow IPC. "
                    "'none' disables. Intermediates use their format's default.")
    intermediate_retention_days: float = Field(
        default=7.0,
        description="Default age after which clean_intermediates() deletes op outputs of a run.")
    handoff: str = Field(
        default="auto",
        description="How op-output tables reach the next op. 'auto': under the in-process executor "
                    "the next op gets the table object itself (zero copy) while a background thread "
                    "writes its Arrow IPC file (complete before the run ends, for re-execution); "
                    "under the multiprocess executor with shared_memory, tables go to /dev/shm. "
                    "'write': every table is written before the op's output is reported.")
    shared_memory: bool = Field(
        default=False,
        description="With a local root, op-output tables of runs under the multiprocess executor "
                    "are Arrow IPC files in /dev/shm (memory maps of RAM: zero-copy across "
                    "processes). They take RAM until retention or clean_run deletes them.")

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        """Validate the config and import pyarrow's writers once per run, not in the first step."""
        import pyarrow.ipc  # noqa: F401
        import pyarrow.parquet  # noqa: F401

        canonical_format(self.format)
        canonical_format(self.intermediate_format)
        if self.handoff not in ("auto", "write"):
            raise dg.DagsterInvalidConfigError(
                f"{type(self).__name__}: handoff must be 'auto' or 'write', not {self.handoff!r}", [], None)
        self.root  # noqa: B018 - resolves (and validates) the root early

    # ------------------------------------------------------------------ locations
    @property
    def root(self) -> str:
        """The resolved root: an absolute local path or a remote URI (no trailing slash)."""
        return resolve_root(self.base_uri)

    @property
    def table_format(self) -> str:
        return canonical_format(self.format)

    def asset_uri(self, asset_key: Any, partition_key: Any = None) -> str:
        """Folder of an asset (``AssetKey``, ``"a/b"`` or ``["a", "b"]``) or one partition of it."""
        parts = _asset_parts(asset_key)
        if partition_key is not None:
            parts += _partition_parts(partition_key)
        return join_uri(self.root, *parts)

    def run_uri(self, run_id: str, step_key: str | None = None, output_name: str | None = None,
                mapping_key: str | None = None) -> str:
        """Folder of a run's intermediates, or of one op output in it."""
        parts = [RUNS, check_segment(run_id, "run id")]
        if step_key is not None:
            parts.append(check_segment(step_key, "step key"))
        if output_name is not None:
            parts.append(check_segment(output_name, "output name"))
        if mapping_key is not None:
            parts.append(check_segment(mapping_key, "mapping key"))
        return join_uri(self.root, *parts)

    @property
    def shm_root(self) -> str:
        """The folder under ``/dev/shm`` of this root's shared-memory intermediates."""
        import hashlib

        digest = hashlib.sha1(self.root.encode()).hexdigest()[:16]
        return join_uri(SHM_BASE, f"noetl-{os.getuid()}", digest)

    def shm_run_uri(self, run_id: str, step_key: str | None = None, output_name: str | None = None,
                    mapping_key: str | None = None) -> str:
        """Folder of one op output's tables in shared memory (``shared_memory``)."""
        parts = [RUNS, check_segment(run_id, "run id")]
        parts += [check_segment(v, what) for v, what in ((step_key, "step key"), (output_name, "output name"),
                                                          (mapping_key, "mapping key")) if v is not None]
        return join_uri(self.shm_root, *parts)

    def output_uris(self, context: dg.OutputContext) -> dict[str | None, str]:
        """``{partition key (None if unpartitioned): folder}`` of an output."""
        if context.has_asset_key:
            if context.has_asset_partitions:
                return {k: self.asset_uri(context.asset_key, k) for k in context.asset_partition_keys}
            return {None: self.asset_uri(context.asset_key)}
        return {None: self.run_uri(_get(context, "run_id", "ephemeral"), _get(context, "step_key", "step"),
                                   _get(context, "name", "result"), _get(context, "mapping_key", None))}

    def _op_input_uri(self, context: dg.InputContext) -> str:
        upstream = context.upstream_output
        if upstream is None:
            raise dg.DagsterInvariantViolationError(
                f"input {context.name!r} has no upstream output to load with {type(self).__name__}")
        identifier = list(upstream.get_identifier())  # [run_id, step_key, name, (mapping_key)]
        return self.run_uri(*identifier[:4])

    # ------------------------------------------------------------------ storing
    def store(self, obj: Any, uri: str, *, asset: bool = False,
              step: tuple[str, ...] | None = None, later: bool = False,
              table_uri: str | None = None) -> StoredOutput:
        """Write ``obj`` into folder ``uri``: tables once as files, the remainder as value file.

        ``step`` (a key such as ``(root, run_id, step_key)``) enables the one-write-per-step
        cache; ``asset`` makes the folder self-contained (refs to other files under the root are
        linked into it). ``later`` (op outputs in Arrow IPC on a local root) hands tables over in
        process and writes their files in the background (:func:`write_arrow_later`);
        ``table_uri`` puts the table files in another folder (``/dev/shm``).
        """
        fmt = self.table_format if asset else canonical_format(self.intermediate_format)
        compression = self.compression if asset else None
        ext = EXTENSIONS[fmt]
        tables_at = table_uri or uri
        later = later and not asset and fmt == "arrow" and is_local(tables_at)
        root_prefix, own_prefix = self.root.rstrip("/") + "/", uri.rstrip("/") + "/"
        used: set[str] = set()
        written: list[ArrowRef] = []

        def foreign(ref: ArrowRef) -> bool:
            """An asset folder must not depend on files it does not own under the root
            (intermediates that retention deletes, other assets that get overwritten)."""
            return asset and ref.uri.startswith(root_prefix) and not ref.uri.startswith(own_prefix)

        def unique_name(path: tuple) -> str:
            base = name = _table_name(path)
            n = 1
            while name in used:
                n += 1
                name = f"{base}-{n}"
            used.add(name)
            return name

        def put(data: Any, path: tuple) -> ArrowRef:
            if isinstance(data, ArrowRef):
                if foreign(data) and data.format != fmt:  # e.g. an Arrow IPC intermediate as a Parquet product
                    ref = write_arrow(data.to_reader(), join_uri(uri, unique_name(path) + ext), fmt, compression)
                    written.append(ref)
                    return ref
                if foreign(data):
                    ref = _adopt(data, join_uri(uri, unique_name(path) + EXTENSIONS[data.format]))
                    written.append(ref)
                    return ref
                return data
            if step is not None:
                cached = _WRITES.get(step, data)
                if cached is not None and asset and cached.format != fmt:
                    cached = None  # an intermediate of another format: the asset gets its own file
                if cached is not None and not foreign(cached):
                    return cached
                if cached is not None:  # written by a token of this step before the asset output
                    ref = _adopt(cached, join_uri(uri, unique_name(path) + EXTENSIONS[cached.format]))
                    written.append(ref)
                    _WRITES.put(step, data, ref)
                    return ref
            target = join_uri(tables_at, unique_name(path) + ext)
            table = as_arrow(data)
            if later and not _is_reader(table):
                ref = write_arrow_later(table, target)
            else:
                ref = write_arrow(table, target, fmt, compression)
            written.append(ref)
            if step is not None:
                _WRITES.put(step, data, ref)
            return ref

        value = _walk(obj, put, lambda v: isinstance(v, ArrowRef) or is_arrow_data(v))
        refs = list(iter_refs(value))
        value_uri = self._write_value(uri, value)
        self._remove_stale(uri, keep={r.uri for r in refs}, value_uri=value_uri)
        if table_uri:
            self._remove_stale(table_uri, keep={r.uri for r in refs}, value_uri=value_uri)
        return StoredOutput(value, refs, len(written), value_uri)

    def _write_value(self, uri: str, value: Any) -> str:
        text = encode_value(value)
        if text is not None:
            payload, name = text.encode("utf-8"), VALUE_JSON
        else:
            try:
                payload, name = pickle.dumps(value, protocol=5), VALUE_PICKLE
            except Exception as exc:  # noqa: BLE001 - report which output could not be stored
                raise dg.DagsterInvariantViolationError(
                    f"{type(self).__name__}: the output value at {uri} is neither JSON-able nor "
                    f"picklable after replacing tables by ArrowRefs: {exc}") from exc
        target = join_uri(uri, name)
        fs, path = resolve_uri(target)
        fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        if is_local(target):
            tmp = f"{path}.{uuid.uuid4().hex[:12]}.tmp"
            with open(tmp, "wb") as f:
                f.write(payload)
            os.replace(tmp, path)
        else:
            with fs.open_output_stream(path, compression=None) as f:
                f.write(payload)
        return target

    def _remove_stale(self, uri: str, keep: set[str], value_uri: str) -> None:
        """Drop table files of an earlier write to this folder that the new value does not use."""
        import pyarrow.fs as pafs

        fs, path = resolve_uri(uri)
        try:
            infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True, recursive=False))
        except OSError:
            return
        value_name = value_uri.rsplit("/", 1)[-1]
        for info in infos:
            if info.type != pafs.FileType.File:
                continue
            name = info.base_name
            stale_value = name in (VALUE_JSON, VALUE_PICKLE) and name != value_name
            stale_table = (name.endswith(_TABLE_SUFFIXES) and not name.startswith(".")
                           and join_uri(uri, name) not in keep)
            if stale_value or stale_table:
                try:
                    fs.delete_file(info.path)
                except OSError:
                    pass

    # ------------------------------------------------------------------ reading
    def load(self, uri: str) -> Any:
        """The stored value in folder ``uri`` (ArrowRefs intact, no table data read)."""
        fs, path = resolve_uri(uri)
        for name in (VALUE_JSON, VALUE_PICKLE):
            try:
                with fs.open_input_stream(f"{path}/{name}") as f:
                    payload = f.read()
            except OSError as exc:  # FileNotFoundError locally; S3/GCS say so in the message
                text = str(exc).lower()
                if isinstance(exc, FileNotFoundError) or any(
                        s in text for s in ("not found", "no such file", "does not exist", "not exist")):
                    continue
                raise
            return decode_value(payload) if name == VALUE_JSON else pickle.loads(payload)
        raise FileNotFoundError(f"{type(self).__name__}: nothing stored at {uri} "
                                f"(no {VALUE_JSON} or {VALUE_PICKLE})")

    def load_asset(self, asset_key: Any, partition_key: Any = None) -> Any:
        """The latest stored value of an asset (or one partition), ArrowRefs intact.

        Handy outside an IO-manager input, e.g. a template function resolving
        ``product('marketing/customer_360')`` to a ref whose ``str()`` is ``read_parquet(...)``.
        """
        return self.load(self.asset_uri(asset_key, partition_key))

    def load_asset_ref(self, asset_key: Any, partition_key: Any = None) -> ArrowRef:
        """The one ArrowRef of an asset's stored value (error if it has none or several)."""
        return _single_ref(self.load_asset(asset_key, partition_key), f"asset {asset_key}")

    # ------------------------------------------------------------------ Dagster hooks
    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        uris = self.output_uris(context)
        run_id, step_key = _get(context, "run_id", None), _get(context, "step_key", None)
        # one write per step: the cache is keyed by root, run and step (no run id: no cache)
        step = (self.root, str(run_id), str(step_key)) if run_id and step_key else None
        if len(uris) > 1:
            if not (isinstance(obj, Mapping) and set(obj) == set(uris)):
                raise dg.DagsterInvariantViolationError(
                    f"{type(self).__name__}: output {context.name!r} covers {len(uris)} partitions; "
                    "return a dict {partition_key: value} for them (or use a multi-run backfill)")
            stored = [self.store(obj[k], u, asset=True, step=step) for k, u in uris.items()]
        else:
            ((_, uri),) = uris.items()
            asset = context.has_asset_key
            later, table_uri = False, None
            if not asset and self.handoff == "auto":
                executor = _executor_kind(context)
                later = executor == "in_process"
                if executor == "multiprocess" and self.shared_memory and is_local(self.root):
                    table_uri = self.shm_run_uri(*_output_identifier(context))
            stored = [self.store(obj, uri, asset=asset, step=step, later=later, table_uri=table_uri)]
        context.add_output_metadata(self._metadata(context, stored))

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        """The run (in process) is over: every op-output file written in the background is
        complete, so a re-execution (in any process) finds it."""
        failed = wait_all_written(self.root.rstrip("/") + "/")
        if failed and context.log is not None:
            context.log.error(f"{type(self).__name__}: {len(failed)} intermediate table(s) could not be "
                              f"written (re-execution from a later step will not find them): {failed[:5]}")

    def _metadata(self, context: dg.OutputContext, stored: list[StoredOutput]) -> dict[str, Any]:
        refs = [r for s in stored for r in s.refs]
        written = sum(s.written for s in stored)
        meta: dict[str, Any] = {"noetl/tables": len(refs), "noetl/tables_written": written}
        if len(refs) == 1:
            ref = refs[0]
            partitioned = context.has_asset_key and context.has_asset_partitions
            meta["dagster/uri"] = dg.MetadataValue.path(ref.uri)
            meta["dagster/partition_row_count" if partitioned else "dagster/row_count"] = ref.num_rows
            meta["dagster/column_schema"] = dg.TableSchema(
                columns=[dg.TableColumn(name=n, type=t) for n, t in ref.schema])
            meta["noetl/bytes"] = ref.num_bytes
        else:
            meta["dagster/uri"] = dg.MetadataValue.path(stored[0].value_uri)
            if refs:
                meta["noetl/bytes"] = sum(r.num_bytes for r in refs)
                meta["noetl/refs"] = dg.MetadataValue.json(
                    [{"uri": r.uri, "num_rows": r.num_rows} for r in refs[:50]])
        return meta

    def load_input(self, context: dg.InputContext) -> Any:
        wanted = _wanted_type(context)
        if context.has_asset_key and context.has_asset_partitions:
            keys = list(context.asset_partition_keys)
            if not keys:
                return None
            element = wanted
            if _is_dict_type(wanted):
                args = typing.get_args(wanted)
                element = args[1] if len(args) == 2 else Any
            if len(keys) == 1:
                return self._load_as(self.asset_uri(context.asset_key, keys[0]), element, context)
            allow_missing = bool((context.definition_metadata or {}).get("allow_missing_partitions"))
            out: dict[str, Any] = {}
            for key in keys:
                try:
                    out[key] = self._load_as(self.asset_uri(context.asset_key, key), element, context)
                except FileNotFoundError:
                    if not allow_missing:
                        raise
                    context.log.warning(f"partition {key} of {context.asset_key.to_user_string()} "
                                        "is missing; skipped (allow_missing_partitions)")
            return out
        uri = self.asset_uri(context.asset_key) if context.has_asset_key else self._op_input_uri(context)
        return self._load_as(uri, wanted, context)

    def _load_as(self, uri: str, wanted: Any, context: dg.InputContext | None = None) -> Any:
        value = self.load(uri)
        convert = _converter(wanted)
        if convert is None or value is None:
            return value
        name = f"input {_get(context, 'name', '?')!r}" if context is not None else uri
        return convert(_single_ref(value, name))

    # ------------------------------------------------------------------ retention
    def clean_run(self, run_id: str) -> bool:
        """Delete all intermediate (op output) data of one run; True if there was any."""
        import pyarrow.fs as pafs

        found = False
        for uri in (self.run_uri(run_id), *((self.shm_run_uri(run_id),) if is_local(self.root) else ())):
            fs, path = resolve_uri(uri)
            if fs.get_file_info(path).type == pafs.FileType.NotFound:
                continue
            fs.delete_dir(path)
            found = True
        return found

    def clean_intermediates(self, older_than_days: float | None = None, *,
                            instance: dg.DagsterInstance | None = None,
                            now: float | None = None) -> list[str]:
        """Delete the intermediates (``runs/<run_id>``) of runs whose newest file is older than
        ``older_than_days`` (default :attr:`intermediate_retention_days`); asset data is never
        touched. With ``instance``, runs it reports as not finished are kept whatever their age.
        Returns the run ids deleted. Schedule it (an op calling it) or run it from a cron job.
        """
        import pyarrow.fs as pafs

        days = self.intermediate_retention_days if older_than_days is None else older_than_days
        cutoff_ns = int(((now if now is not None else time.time()) - float(days) * 86400) * 1e9)
        removed: list[str] = []
        roots = [self.root, *((self.shm_root,) if is_local(self.root) else ())]
        for root in roots:
            fs, runs_path = resolve_uri(join_uri(root, RUNS))
            for info in fs.get_file_info(pafs.FileSelector(runs_path, allow_not_found=True)):
                if info.type != pafs.FileType.Directory:
                    continue
                run_id = info.base_name
                if instance is not None:
                    run = instance.get_run_by_id(run_id)
                    if run is not None and not run.is_finished:
                        continue
                newest = _newest_mtime_ns(fs, info)
                if newest is None or newest < cutoff_ns:
                    fs.delete_dir(info.path)
                    if run_id not in removed:
                        removed.append(run_id)
        return removed


def _newest_mtime_ns(fs: Any, folder: Any) -> int | None:
    import pyarrow.fs as pafs

    stamps = [i.mtime_ns for i in fs.get_file_info(pafs.FileSelector(folder.path, recursive=True))
              if i.type == pafs.FileType.File and i.mtime_ns is not None]
    if folder.mtime_ns is not None:
        stamps.append(folder.mtime_ns)
    return max(stamps) if stamps else None


def _is_reader(data: Any) -> bool:
    import pyarrow as pa

    return isinstance(data, pa.RecordBatchReader)


def _executor_kind(context: Any) -> str:
    """``in_process``, ``multiprocess`` or ``other`` (k8s, docker, celery: steps on other
    machines, every file written before the step reports) for the step storing an output."""
    try:
        step_context = context.step_context
        name = step_context.job_def.executor_def.name
    except Exception:  # noqa: BLE001 - a context built outside a run (build_output_context)
        return "other"
    if name in ("in_process", "execute_in_process_executor"):
        return "in_process"
    if name == "multiprocess":
        return "multiprocess"
    if name == "multi_or_in_process_executor":  # Dagster's default: the run config chooses
        execution = (step_context.run_config or {}).get("execution") or {}
        chosen = execution.get("config", execution) if isinstance(execution, Mapping) else {}
        return "in_process" if isinstance(chosen, Mapping) and "in_process" in chosen else "multiprocess"
    return "other"


def _output_identifier(context: dg.OutputContext) -> list[str]:
    return [_get(context, "run_id", "ephemeral"), _get(context, "step_key", "step"), _get(context, "name", "result"),
            *([m] if (m := _get(context, "mapping_key", None)) is not None else [])]


def _get(context: Any, name: str, default: Any) -> Any:
    """A context attribute that ``build_output_context`` may have left unset (it raises then)."""
    try:
        value = getattr(context, name)
    except dg.DagsterInvariantViolationError:
        return default
    return default if value is None else value


def _single_ref(value: Any, what: str) -> ArrowRef:
    if isinstance(value, ArrowRef):
        return value
    refs = list(iter_refs(value))
    if len(refs) != 1:
        raise dg.DagsterTypeCheckDidNotPass(
            description=f"{what}: the stored value holds {len(refs)} tables, so it cannot be "
                        "loaded as one table; annotate the input as Any (or dict) to receive the "
                        "structure with its ArrowRefs")
    return refs[0]


def _adopt(ref: ArrowRef, target: str) -> ArrowRef:
    """A copy of ``ref``'s file at ``target`` (a hard link when both are local)."""
    import dataclasses

    if ref.uri == target:
        return ref
    if ref.is_local and is_local(target):
        src, dst = str(ref.path), local_path(target)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        tmp = f"{dst}.{uuid.uuid4().hex[:12]}.tmp"
        try:
            os.link(src, tmp)
        except OSError:
            import shutil

            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    else:
        src_fs, src_path = resolve_uri(ref.uri)
        dst_fs, dst_path = resolve_uri(target)
        dst_fs.create_dir(dst_path.rsplit("/", 1)[0], recursive=True)
        with src_fs.open_input_stream(src_path) as fin, dst_fs.open_output_stream(dst_path, compression=None) as fout:
            while chunk := fin.read(8 << 20):
                fout.write(chunk)
    return dataclasses.replace(ref, uri=target)



#: the job that applies ``intermediate_retention_days`` (scheduled daily by the definitions)
RETENTION_JOB = "noetl_clean_intermediates"


def retention_definitions(cron_schedule: str = "0 3 * * *") -> dg.Definitions:
    """A job deleting intermediates older than the io_manager's ``intermediate_retention_days``,
    and a daily schedule for it (running by default). Merge it once per code location (the
    repository's ``definitions.py`` does).

    Example::

        dg.Definitions.merge(load_playbook_definitions("playbooks/"), retention_definitions("30 4 * * *"))
    """

    @dg.op(name="clean_intermediates", required_resource_keys={"io_manager"},
           description="Delete the op outputs of finished runs older than intermediate_retention_days; "
                       "data products are never touched.")
    def clean(context) -> list[str]:  # type: ignore[no-untyped-def]
        io = context.resources.io_manager
        if not isinstance(io, ArrowRefIOManager):
            context.log.info(f"io_manager is a {type(io).__name__}, not an ArrowRefIOManager: nothing to clean")
            return []
        removed = io.clean_intermediates(instance=context.instance)
        context.add_output_metadata({"removed_runs": len(removed),
                                     "retention_days": float(io.intermediate_retention_days)})
        return removed

    @dg.job(name=RETENTION_JOB, description="Retention of the ArrowRefIOManager's intermediates.",
            tags={"noetl/system": "retention"})
    def job() -> None:
        clean()

    schedule = dg.ScheduleDefinition(name=f"{RETENTION_JOB}_daily", job=job, cron_schedule=cron_schedule,
                                     default_status=dg.DefaultScheduleStatus.RUNNING)
    return dg.Definitions(jobs=[job], schedules=[schedule])
