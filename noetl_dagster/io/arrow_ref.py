"""``ArrowRef``: a small, immutable reference to an Arrow table stored as Parquet or Arrow IPC.

Tokens and step results never carry table data: the IO manager
(:class:`noetl_dagster.io.manager.ArrowRefIOManager`) writes every table once and puts an
``ArrowRef`` in its place. A ref is a frozen dataclass of plain values, so it pickles, hashes,
compares by value and round-trips through JSON (:meth:`ArrowRef.to_dict` /
:meth:`ArrowRef.from_dict`). A consumer that only forwards a ref reads nothing; one that needs the
data asks for it in the form it wants:

=====================================  =========================================================
``ref.to_table(columns=None)``         ``pyarrow.Table``; memory-mapped when the file is local
                                       (zero-copy for uncompressed Arrow IPC)
``ref.to_reader()`` / ``to_batches()`` a ``RecordBatchReader`` / iterator, batch by batch
``ref.to_dataset()``                   a lazy ``pyarrow.dataset.Dataset`` (filters, projection)
``ref.to_pandas()`` / ``to_polars()``  DataFrames (when pandas / polars are installed)
``ref.to_duckdb(con)``                 a ``duckdb.DuckDBPyRelation``
``str(ref)`` / ``ref.duckdb_sql()``    ``read_parquet('<uri>')``: a DuckDB table expression, so
                                       ``SELECT * FROM {{ step.table }}`` works in a query template
``pa.table(ref)``                      via the Arrow PyCapsule stream interface (also polars, DuckDB
                                       replacement scans of a Python variable)
=====================================  =========================================================

URIs are absolute local paths (no scheme) or ``s3://`` / ``gs://`` / ``abfs://`` / ``hdfs://``
URIs opened with :func:`pyarrow.fs.FileSystem.from_uri`; other schemes can be served by a
``pyarrow.fs.FileSystem`` registered with :func:`register_filesystem` (tests use an fsspec memory
filesystem that way).

Example::

    ref = write_arrow(pa.table({"id": [1, 2]}), "/data/out/ids.parquet")
    ref.num_rows                 # 2
    ref.to_table()               # memory-mapped read
    str(ref)                     # "read_parquet('/data/out/ids.parquet')"
    ArrowRef.from_dict(ref.to_dict()) == ref    # True
"""

from __future__ import annotations

import json
import os
import re
import threading
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

if TYPE_CHECKING:  # heavy imports stay lazy: importing this module does not import pyarrow
    import pyarrow as pa
    import pyarrow.fs as pafs

__all__ = [
    "ArrowRef",
    "FORMATS",
    "register_filesystem",
    "resolve_uri",
    "write_arrow",
    "write_arrow_later",
    "live_table",
    "wait_written",
    "wait_all_written",
    "json_default",
]

#: Accepted format names and their canonical form (``arrow`` is the Arrow IPC *file* format).
FORMATS: Mapping[str, str] = {"parquet": "parquet", "arrow": "arrow", "ipc": "arrow", "feather": "arrow"}
EXTENSIONS: Mapping[str, str] = {"parquet": ".parquet", "arrow": ".arrow"}
#: Rows buffered before a streamed Parquet row group is written (bounds memory of streaming writes).
PARQUET_ROW_GROUP_ROWS = 1 << 20
PARQUET_ROW_GROUP_BYTES = 128 << 20
_DEFAULT_COMPRESSION = {"parquet": "snappy", "arrow": None}

_FS_LOCK = threading.Lock()
_REGISTERED: dict[str, "pafs.FileSystem"] = {}
_FS_CACHE: dict[str, "pafs.FileSystem"] = {}


def canonical_format(fmt: str) -> str:
    try:
        return FORMATS[str(fmt).lower()]
    except KeyError:
        raise ValueError(f"unknown Arrow storage format {fmt!r}: use one of "
                         f"{', '.join(sorted(FORMATS))}") from None


def register_filesystem(scheme: str, filesystem: "pafs.FileSystem | None") -> None:
    """Serve URIs ``<scheme>://<path>`` with ``filesystem`` (``None`` unregisters).

    The path handed to the filesystem is the URI without ``<scheme>://``. Use it for schemes
    ``pyarrow.fs.FileSystem.from_uri`` does not know (e.g. an fsspec filesystem wrapped in
    ``pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(fs))``) or to inject credentials.
    """
    with _FS_LOCK:
        if filesystem is None:
            _REGISTERED.pop(scheme, None)
        else:
            _REGISTERED[scheme] = filesystem


_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
#: Schemes whose pyarrow path is simply the URI without ``scheme://`` (bucket/key).
_BUCKET_SCHEMES = frozenset({"s3", "gs", "gcs"})


def _scheme(uri: str) -> str | None:
    match = _SCHEME.match(uri)
    return match.group(1).lower() if match else None


def is_local(uri: str) -> bool:
    """Whether ``uri`` names a file on the local filesystem (a plain path or ``file://``)."""
    scheme = _scheme(uri)
    return scheme is None or (scheme == "file" and "file" not in _REGISTERED)


def local_path(uri: str) -> str:
    return uri[len("file://"):] if uri.startswith("file://") else uri


def resolve_uri(uri: str) -> tuple["pafs.FileSystem", str]:
    """The ``(pyarrow filesystem, path inside it)`` of ``uri``."""
    import pyarrow.fs as pafs

    scheme = _scheme(uri)
    if scheme is not None and scheme in _REGISTERED:
        return _REGISTERED[scheme], uri[len(scheme) + 3:]
    if scheme is None or scheme == "file":
        return pafs.LocalFileSystem(), os.path.abspath(local_path(uri))
    if scheme not in _BUCKET_SCHEMES:
        return pafs.FileSystem.from_uri(uri)
    # one client per bucket: creating an S3/GCS filesystem is not free
    rest = uri[len(scheme) + 3:].split("?", 1)[0]
    key = f"{scheme}://{rest.split('/', 1)[0]}"
    with _FS_LOCK:
        fs = _FS_CACHE.get(key)
    if fs is None:
        fs, _ = pafs.FileSystem.from_uri(uri)
        with _FS_LOCK:
            _FS_CACHE[key] = fs
    return fs, rest


def _sql_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


@dataclass(frozen=True, slots=True, repr=False)
class ArrowRef:
    """A reference to one Arrow table stored in one file.

    Attributes:
        uri: absolute local path or ``s3://``/``gs://``... URI of the file.
        format: ``"parquet"`` or ``"arrow"`` (Arrow IPC file format; ``"ipc"`` is accepted).
        schema: ``((column name, Arrow type as a string), ...)``, e.g. ``(("id", "int64"),)``.
        num_rows: rows in the table.
        num_bytes: size of the stored file in bytes (what the ref costs in storage).
    """

    uri: str
    format: str = "parquet"
    schema: tuple[tuple[str, str], ...] = ()
    num_rows: int = 0
    num_bytes: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "format", canonical_format(self.format))
        object.__setattr__(self, "schema", tuple((str(n), str(t)) for n, t in self.schema))
        object.__setattr__(self, "num_rows", int(self.num_rows))
        object.__setattr__(self, "num_bytes", int(self.num_bytes))

    # ------------------------------------------------------------------ description
    def __repr__(self) -> str:
        return (f"ArrowRef({self.uri!r}, {self.format}, {self.num_rows} rows x "
                f"{len(self.schema)} cols, {self.num_bytes} bytes)")

    def __str__(self) -> str:
        return self.duckdb_sql()

    @property
    def columns(self) -> list[str]:
        """Column names, in order."""
        return [name for name, _ in self.schema]

    @property
    def is_local(self) -> bool:
        return is_local(self.uri)

    @property
    def path(self) -> str | None:
        """The local file path, or ``None`` for a remote URI. A file still being written in the
        background (:func:`write_arrow_later`) is complete when this returns."""
        if self.uri in _PENDING:
            wait_written(self.uri)
        return local_path(self.uri) if self.is_local else None

    def exists(self) -> bool:
        import pyarrow.fs as pafs

        if self.uri in _LIVE:
            return True
        fs, path = resolve_uri(self.uri)
        return fs.get_file_info(path).type == pafs.FileType.File

    def duckdb_sql(self) -> str:
        """A DuckDB table expression for the file: ``read_parquet('<uri>')``.

        For Arrow IPC refs it is ``read_arrow('<uri>')``, which needs DuckDB's ``nanoarrow``
        community extension; without it use :meth:`to_duckdb` (zero-copy) instead. Remote URIs
        need DuckDB's ``httpfs`` extension and credentials in the DuckDB connection.
        """
        if self.uri in _PENDING:  # the SQL text names the file: it must be complete
            wait_written(self.uri)
        fn = "read_parquet" if self.format == "parquet" else "read_arrow"
        return f"{fn}({_sql_string(self.uri)})"

    def read_schema(self) -> "pa.Schema":
        """The exact Arrow schema, read from the file's footer (no data is read)."""
        import pyarrow.parquet as pq

        live = _LIVE.get(self.uri)
        if live is not None:
            return live.schema

        if self.format == "parquet":
            fs, path = resolve_uri(self.uri)
            if self.is_local:
                return pq.read_schema(path, memory_map=True)
            with fs.open_input_file(path) as f:
                return pq.read_schema(f)
        return self._ipc_reader().schema

    # ------------------------------------------------------------------ reading
    def _ipc_reader(self) -> Any:
        import pyarrow as pa
        import pyarrow.ipc  # noqa: F401

        if self.is_local:
            return pa.ipc.open_file(pa.memory_map(self.path, "r"))
        fs, path = resolve_uri(self.uri)
        return pa.ipc.open_file(fs.open_input_file(path))

    def to_table(self, columns: Sequence[str] | None = None) -> "pa.Table":
        """Read the table. Local files are memory-mapped: an uncompressed Arrow IPC file is not
        copied at all (pages load on first touch), a Parquet file is decoded from the mapping.
        A table this process is still writing (:func:`write_arrow_later`) is handed over as is."""
        import pyarrow.parquet as pq

        live = _LIVE.get(self.uri)
        if live is not None:
            return live.select(list(columns)) if columns is not None else live
        if self.format == "arrow":
            table = self._ipc_reader().read_all()
            return table.select(list(columns)) if columns is not None else table
        cols = list(columns) if columns is not None else None
        if self.is_local:
            return pq.read_table(self.path, columns=cols, memory_map=True)
        fs, path = resolve_uri(self.uri)
        return pq.read_table(path, columns=cols, filesystem=fs)

    def to_reader(self, columns: Sequence[str] | None = None,
                  batch_size: int = 65_536) -> "pa.RecordBatchReader":
        """A ``RecordBatchReader`` over the file: the table is never fully materialised."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        cols = list(columns) if columns is not None else None
        live = _LIVE.get(self.uri)
        if live is not None:
            table = live.select(cols) if cols is not None else live
            return pa.RecordBatchReader.from_batches(table.schema, table.to_batches(max_chunksize=batch_size))
        if self.format == "arrow":
            reader = self._ipc_reader()
            schema = reader.schema if cols is None else pa.schema([reader.schema.field(c) for c in cols])

            def ipc_batches() -> Iterator[pa.RecordBatch]:
                for i in range(reader.num_record_batches):
                    batch = reader.get_batch(i)
                    yield batch if cols is None else batch.select(cols)

            return pa.RecordBatchReader.from_batches(schema, ipc_batches())
        if self.is_local:
            pf = pq.ParquetFile(self.path, memory_map=True)
        else:
            fs, path = resolve_uri(self.uri)
            pf = pq.ParquetFile(fs.open_input_file(path))
        full = pf.schema_arrow
        schema = full if cols is None else pa.schema([full.field(c) for c in cols])
        return pa.RecordBatchReader.from_batches(
            schema, pf.iter_batches(batch_size=batch_size, columns=cols))

    open_reader = to_reader

    def to_batches(self, columns: Sequence[str] | None = None,
                   batch_size: int = 65_536) -> Iterator["pa.RecordBatch"]:
        """Iterate the table's record batches."""
        yield from self.to_reader(columns, batch_size)

    def to_dataset(self) -> Any:
        """A lazy ``pyarrow.dataset.Dataset`` over the file (filter/projection pushdown)."""
        import pyarrow.dataset as ds

        if self.uri in _PENDING:
            wait_written(self.uri)
        fs, path = resolve_uri(self.uri)
        return ds.dataset(path, format="parquet" if self.format == "parquet" else "ipc", filesystem=fs)

    def to_pandas(self, columns: Sequence[str] | None = None, **kwargs: Any) -> Any:
        """A pandas DataFrame (needs pandas); ``kwargs`` go to ``pyarrow.Table.to_pandas``."""
        return self.to_table(columns).to_pandas(**kwargs)

    def to_polars(self, columns: Sequence[str] | None = None) -> Any:
        """A polars DataFrame (needs polars)."""
        import polars as pl

        return pl.from_arrow(self.to_table(columns))

    def to_duckdb(self, connection: Any = None) -> Any:
        """A ``duckdb.DuckDBPyRelation`` on ``connection`` (DuckDB's default connection if None).

        Parquet is scanned by DuckDB itself (projection/filter pushdown); Arrow IPC is
        memory-mapped and handed to DuckDB without a copy.
        """
        import duckdb

        con = connection
        if con is None:  # a function in DuckDB >= 1.2, the connection itself before
            default = duckdb.default_connection
            con = default if isinstance(default, duckdb.DuckDBPyConnection) else default()
        if self.format == "parquet":
            return con.read_parquet(self.uri)
        return con.from_arrow(self.to_table())

    def __arrow_c_stream__(self, requested_schema: Any = None) -> Any:
        """Arrow PyCapsule stream: ``pa.table(ref)``, ``polars.DataFrame(ref)``, DuckDB scans."""
        return self.to_reader().__arrow_c_stream__(requested_schema)

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict; :meth:`from_dict` reverses it."""
        return {"uri": self.uri, "format": self.format, "schema": [list(c) for c in self.schema],
                "num_rows": self.num_rows, "num_bytes": self.num_bytes}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ArrowRef":
        return cls(uri=data["uri"], format=data.get("format", "parquet"),
                   schema=tuple(tuple(c) for c in data.get("schema") or ()),  # type: ignore[misc]
                   num_rows=data.get("num_rows", 0), num_bytes=data.get("num_bytes", 0))

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> "ArrowRef":
        return cls.from_dict(json.loads(text))


def json_default(obj: Any) -> Any:
    """``json.dumps(value, default=json_default)``: ArrowRefs become their ``to_dict()``."""
    if isinstance(obj, ArrowRef):
        return obj.to_dict()
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


# ---------------------------------------------------------------------------------- writing

def schema_strings(schema: "pa.Schema") -> tuple[tuple[str, str], ...]:
    return tuple((f.name, str(f.type)) for f in schema)


def _compression(fmt: str, compression: str | None) -> str | None:
    if compression is None:
        return _DEFAULT_COMPRESSION[fmt]
    value = str(compression).lower()
    return None if value in ("none", "uncompressed", "") else value


def _dictionary_columns(schema: "pa.Schema") -> list[str]:
    """Parquet dictionary encoding only where it usually pays: string, binary and dictionary
    columns. Trying it on every numeric column (pyarrow's default) costs write time for
    high-cardinality data and falls back to plain encoding anyway."""
    import pyarrow.types as pat

    return [f.name for f in schema
            if pat.is_string(f.type) or pat.is_large_string(f.type) or pat.is_binary(f.type)
            or pat.is_large_binary(f.type) or pat.is_dictionary(f.type)
            or getattr(pat, "is_string_view", lambda t: False)(f.type)]


def write_arrow(data: Any, uri: str, format: str = "parquet", compression: str | None = None,
                atomic: bool = True) -> ArrowRef:
    """Write ``data`` to ``uri`` and return its :class:`ArrowRef`.

    Args:
        data: a ``pyarrow.Table``, ``RecordBatch``, ``RecordBatchReader`` (streamed batch by batch,
            never materialised), or anything exposing ``__arrow_c_stream__``.
        uri: the target file (local path or remote URI); parent folders are created.
        format: ``parquet`` (default) or ``arrow``/``ipc``.
        compression: codec (Parquet default ``snappy``; Arrow IPC default uncompressed so that
            reads are zero-copy memory maps); ``"none"`` disables compression. Parquet uses
            dictionary encoding for string/binary/dictionary columns only.
        atomic: local files are written under a temporary name and renamed into place, so a
            reader never sees a half-written file and existing memory maps keep the old data.
    """
    import pyarrow as pa
    import pyarrow.ipc  # noqa: F401
    import pyarrow.parquet as pq

    fmt = canonical_format(format)
    codec = _compression(fmt, compression)
    fs, path = resolve_uri(uri)
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    if parent:
        fs.create_dir(parent, recursive=True)
    local = is_local(uri)
    target = path
    if local and atomic:
        target = f"{parent}/.{path.rsplit('/', 1)[-1]}.{uuid.uuid4().hex[:12]}.tmp"

    if isinstance(data, pa.RecordBatch):
        data = pa.Table.from_batches([data])
    if not isinstance(data, (pa.Table, pa.RecordBatchReader)) and hasattr(data, "__arrow_c_stream__"):
        data = pa.RecordBatchReader.from_stream(data)
    if not isinstance(data, (pa.Table, pa.RecordBatchReader)):
        raise TypeError(f"write_arrow: cannot write a {type(data).__name__} as Arrow")

    num_rows = 0
    try:
        if fmt == "parquet":
            options = dict(compression=codec or "none", use_dictionary=_dictionary_columns(data.schema))
            if isinstance(data, pa.Table):
                pq.write_table(data, target, filesystem=fs, **options)
                num_rows = data.num_rows
            else:
                with pq.ParquetWriter(target, data.schema, filesystem=fs, **options) as writer:
                    pending: list[pa.RecordBatch] = []
                    rows = size = 0
                    for batch in data:
                        pending.append(batch)
                        rows += batch.num_rows
                        size += batch.nbytes
                        num_rows += batch.num_rows
                        if rows >= PARQUET_ROW_GROUP_ROWS or size >= PARQUET_ROW_GROUP_BYTES:
                            writer.write_table(pa.Table.from_batches(pending, data.schema))
                            pending, rows, size = [], 0, 0
                    if pending:
                        writer.write_table(pa.Table.from_batches(pending, data.schema))
            schema = data.schema
        else:
            options = pa.ipc.IpcWriteOptions(compression=codec)
            with fs.open_output_stream(target, compression=None, buffer_size=1 << 20) as sink:
                with pa.ipc.new_file(sink, data.schema, options=options) as writer:
                    if isinstance(data, pa.Table):
                        writer.write_table(data)
                        num_rows = data.num_rows
                    else:
                        for batch in data:
                            writer.write_batch(batch)
                            num_rows += batch.num_rows
            schema = data.schema
        if target != path:
            fs.move(target, path)
    except BaseException:
        if target != path:
            try:
                fs.delete_file(target)
            except Exception:  # noqa: BLE001 - best effort cleanup of the temporary file
                pass
        raise
    size = fs.get_file_info(path).size or 0
    out_uri = path if local else uri
    return ArrowRef(uri=out_uri, format=fmt, schema=schema_strings(schema), num_rows=num_rows,
                    num_bytes=size)


# ------------------------------------------------------------ in-process handoff, written later
#
# An op output's table goes to the next op of the same process as the object itself (zero
# copy), while a writer thread writes its Arrow IPC file. The file is what every other reader
# uses (another process, a re-execution, the SQL text of ``duckdb_sql``): anything that needs
# it (``ref.path``, ``duckdb_sql``, ``to_dataset``, :func:`wait_written`) waits for the write.
# A table is held only until its file is complete; loads after that memory-map the file.

_LIVE: dict[str, "pa.Table"] = {}
_PENDING: dict[str, Any] = {}  # uri -> concurrent.futures.Future of its write
_LIVE_LOCK = threading.Lock()
_WRITER: Any = None


def _writer() -> Any:
    global _WRITER
    with _LIVE_LOCK:
        if _WRITER is None:
            from concurrent.futures import ThreadPoolExecutor

            # joined at interpreter exit: a process never ends with a half-written intermediate
            _WRITER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="noetl-arrow-writer")
        return _WRITER


def ipc_file_size(table: "pa.Table") -> int:
    """The exact size of ``table`` as an uncompressed Arrow IPC file (counted, not written)."""
    import pyarrow as pa
    import pyarrow.ipc  # noqa: F401

    sink = pa.MockOutputStream()
    with pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return int(sink.size())


def write_arrow_later(table: "pa.Table", uri: str) -> ArrowRef:
    """The :class:`ArrowRef` of ``table`` as an uncompressed Arrow IPC file at local ``uri``,
    returned at once: until the writer thread has written the file, loads of the ref in this
    process get ``table`` itself; afterwards they memory-map the file."""
    if not is_local(uri):
        raise ValueError(f"write_arrow_later writes local files only, not {uri!r}")
    path = os.path.abspath(local_path(uri))
    ref = ArrowRef(uri=path, format="arrow", schema=schema_strings(table.schema), num_rows=table.num_rows,
                   num_bytes=ipc_file_size(table))
    with _LIVE_LOCK:
        previous = _PENDING.get(path)
    if previous is not None:  # the same output stored again (a retried step): one writer per file
        try:
            _wait(previous)
        except Exception:  # noqa: BLE001 - that write failed; this one replaces it
            pass
    writer = _writer()
    with _LIVE_LOCK:
        _LIVE[path] = table
        _PENDING[path] = future = writer.submit(_write_later, table, path)
    future.add_done_callback(lambda f, path=path: _forget(path, f))
    return ref


def _write_later(table: "pa.Table", path: str) -> None:
    write_arrow(table, path, "arrow")


def _forget(path: str, future: Any) -> None:
    """A finished write: the file serves loads from now on. A failed one stays pending (its
    error is what :func:`wait_written` raises) and keeps the table: this process can still load it."""
    with _LIVE_LOCK:
        pending = _PENDING.get(path)
        if pending is not None and pending is future and pending.exception() is None:
            _PENDING.pop(path, None)
            _LIVE.pop(path, None)


def _wait(future: Any) -> None:
    future.result()


def live_table(uri: str) -> "pa.Table | None":
    """The table this process is handing over for ``uri`` (its file not yet complete), or None."""
    return _LIVE.get(uri)


def wait_written(uri: str) -> None:
    """Block until the background write of ``uri`` (if any) is done; raise its error."""
    with _LIVE_LOCK:
        future = _PENDING.get(uri)
    if future is not None:
        _wait(future)


def wait_all_written(prefix: str = "") -> list[str]:
    """Wait for every background write of a file under ``prefix``; returns the URIs whose write
    failed (their tables stay loadable in this process)."""
    with _LIVE_LOCK:
        pending = [(uri, f) for uri, f in _PENDING.items() if uri.startswith(prefix)]
    failed = []
    for uri, future in pending:
        try:
            _wait(future)
        except Exception:  # noqa: BLE001 - reported by URI to the caller
            failed.append(uri)
    return failed
