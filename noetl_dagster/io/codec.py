"""The Dagster-free half of the Arrow IO: how values are stored, without the IO manager.

* the JSON codec of stored values (:func:`encode_value`/:func:`decode_value`: ArrowRefs, tuples
  and dicts whose only key looks like a marker are written with ``__noetl_*__`` markers);
* walking values for tables and refs (:func:`is_arrow_data`, :func:`as_arrow`,
  :func:`iter_refs`, :func:`replace_refs`, :func:`load_refs`);
* safe path segments (:func:`check_segment`, :class:`ArrowRefPathError`) and the default
  storage root (:func:`resolve_root`: ``$DAGSTER_HOME/noetl_data``, else ``./.noetl_data``).

The :class:`~noetl_dagster.io.manager.ArrowRefIOManager` stores with these; the runtime's
``artifact`` tool uses them too, without importing Dagster. Importing this module does not
import pyarrow.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Mapping
from typing import Any, Callable, Iterator

from noetl_dagster.io.arrow_ref import ArrowRef, is_local, local_path

__all__ = [
    "ArrowRefPathError",
    "as_arrow",
    "check_segment",
    "decode_value",
    "encode_value",
    "is_arrow_data",
    "iter_refs",
    "join_uri",
    "load_refs",
    "replace_refs",
    "resolve_root",
]

REF_MARKER = "__noetl_arrow_ref__"
TUPLE_MARKER = "__noetl_tuple__"
DICT_MARKER = "__noetl_dict__"
_MARKERS = frozenset({REF_MARKER, TUPLE_MARKER, DICT_MARKER})
#: the storage root's folder under ``$DAGSTER_HOME``
DEFAULT_DIRNAME = "noetl_data"


def resolve_root(base_uri: str | None = None) -> str:
    """The storage root for ``base_uri`` (an absolute local path or a remote URI, no trailing
    slash); ``None`` means ``$DAGSTER_HOME/noetl_data``, or ``./.noetl_data`` without DAGSTER_HOME."""
    base = base_uri
    if not base:
        home = os.environ.get("DAGSTER_HOME")
        base = os.path.join(home, DEFAULT_DIRNAME) if home else ".noetl_data"
    if is_local(base):
        return os.path.abspath(local_path(base)).rstrip("/") or "/"
    return base.rstrip("/")


class ArrowRefPathError(ValueError):
    """A name would put a stored object outside the IO manager's root (or into ``runs/``)."""


# --------------------------------------------------------------------------------- paths

_BAD_SEGMENT = re.compile(r"[/\\\x00-\x1f\x7f]")


def check_segment(value: Any, what: str) -> str:
    """``value`` as one safe path segment, or :class:`ArrowRefPathError`.

    Rejected: empty, ``.``, ``..``, anything with ``/``, ``\\``, NUL or control characters.
    """
    text = str(value)
    if not text or text in (".", "..") or _BAD_SEGMENT.search(text):
        raise ArrowRefPathError(
            f"{what} {text!r} is not a safe path segment: names used in storage paths may not be "
            "empty, '.', '..', or contain '/', '\\\\' or control characters (they would escape the "
            "IO manager's root folder)")
    return text


def join_uri(root: str, *segments: str) -> str:
    """``root/seg1/seg2``; segments must already be checked with :func:`check_segment`."""
    return "/".join([root.rstrip("/"), *segments]) if segments else root


# ------------------------------------------------------------------------- walking values

def is_arrow_data(obj: Any) -> bool:
    """Whether the IO manager writes ``obj`` as a table (Arrow table/batch/reader, pandas or
    polars DataFrame). Does not import pandas or polars."""
    pa = sys.modules.get("pyarrow")
    if pa is not None and isinstance(obj, (pa.Table, pa.RecordBatch, pa.RecordBatchReader)):
        return True
    module = type(obj).__module__
    if module.startswith("pandas"):
        pd = sys.modules.get("pandas")
        return pd is not None and isinstance(obj, pd.DataFrame)
    if module.startswith("polars"):
        pl = sys.modules.get("polars")
        return pl is not None and isinstance(obj, pl.DataFrame)
    return False


def as_arrow(obj: Any) -> Any:
    """A pyarrow Table or RecordBatchReader for any :func:`is_arrow_data` object."""
    import pyarrow as pa

    if isinstance(obj, (pa.Table, pa.RecordBatchReader)):
        return obj
    if isinstance(obj, pa.RecordBatch):
        return pa.Table.from_batches([obj])
    if type(obj).__module__.startswith("polars"):
        return obj.to_arrow()
    return pa.Table.from_pandas(obj)


def _walk(obj: Any, leaf: Callable[[Any, tuple], Any], is_leaf: Callable[[Any], bool]) -> Any:
    """Rebuild ``obj`` with every leaf replaced by ``leaf(obj, path)``.

    Containers (dict, list, tuple, namedtuple, other Mappings -> dict) are copied only when
    something inside them changed; shared sub-objects stay shared; cycles are left alone.
    """
    memo: dict[int, Any] = {}
    active: set[int] = set()

    def walk(value: Any, path: tuple) -> Any:
        key = id(value)
        if key in memo:
            return memo[key]
        if is_leaf(value):
            result = leaf(value, path)
            memo[key] = result
            return result
        if value is None or isinstance(value, (str, bytes, int, float, bool)) or key in active:
            return value
        kind = type(value)
        if kind is dict or (isinstance(value, Mapping) and not isinstance(value, ArrowRef)):
            active.add(key)
            items = [(k, walk(v, (*path, k))) for k, v in value.items()]
            active.discard(key)
            changed = kind is not dict or any(nv is not v for (_, nv), v in zip(items, value.values()))
            result = dict(items) if changed else value
        elif kind is list or kind is tuple or (isinstance(value, tuple) and hasattr(value, "_fields")):
            active.add(key)
            new = [walk(v, (*path, i)) for i, v in enumerate(value)]
            active.discard(key)
            if not any(n is not v for n, v in zip(new, value)):
                result = value
            elif kind is list:
                result = new
            elif kind is tuple:
                result = tuple(new)
            else:
                result = kind(*new)
        else:
            return value
        memo[key] = result
        return result

    return walk(obj, ())


def iter_refs(obj: Any) -> Iterator[ArrowRef]:
    """Every distinct :class:`ArrowRef` inside ``obj`` (dicts, lists, tuples), in order."""
    seen: set[ArrowRef] = set()
    found: list[ArrowRef] = []

    def note(ref: ArrowRef, path: tuple) -> ArrowRef:
        if ref not in seen:
            seen.add(ref)
            found.append(ref)
        return ref

    _walk(obj, note, lambda v: isinstance(v, ArrowRef))
    return iter(found)


def replace_refs(obj: Any, fn: Callable[[ArrowRef], Any]) -> Any:
    """``obj`` with every ArrowRef replaced by ``fn(ref)`` (containers copied where changed)."""
    return _walk(obj, lambda ref, path: fn(ref), lambda v: isinstance(v, ArrowRef))


def load_refs(obj: Any) -> Any:
    """``obj`` with every ArrowRef replaced by its (memory-mapped) ``pyarrow.Table``.

    Keep refs in tokens and contexts; resolve them only where a tool needs the data, or every
    downstream step writes the table again.
    """
    return replace_refs(obj, lambda ref: ref.to_table())


# ------------------------------------------------------------------------ the JSON codec

class _NotJson(Exception):
    pass


def _to_jsonable(value: Any, depth: int = 0) -> Any:
    if depth > 400:
        raise _NotJson("too deep")
    kind = type(value)
    if value is None or kind is str or kind is bool or kind is int or kind is float:
        return value
    if kind is ArrowRef:
        return {REF_MARKER: value.to_dict()}
    if kind is dict:
        if not all(type(k) is str for k in value):
            raise _NotJson("non-string key")
        if len(value) == 1 and next(iter(value)) in _MARKERS:
            return {DICT_MARKER: [[k, _to_jsonable(v, depth + 1)] for k, v in value.items()]}
        return {k: _to_jsonable(v, depth + 1) for k, v in value.items()}
    if kind is list:
        return [_to_jsonable(v, depth + 1) for v in value]
    if kind is tuple:
        return {TUPLE_MARKER: [_to_jsonable(v, depth + 1) for v in value]}
    # subclasses of the plain types (the loader's SourceMap/SourceList carrying YAML lines in a
    # workload, str/int enums) are stored as the plain type: tokens stay JSON, not a pickle
    if isinstance(value, dict):
        return _to_jsonable(dict(value), depth)
    if isinstance(value, list):
        return _to_jsonable(list(value), depth)
    if isinstance(value, bool):
        return bool(value)
    for plain in (str, int, float):
        if isinstance(value, plain):
            return plain(value)
    raise _NotJson(kind.__name__)


def _from_json_object(obj: dict) -> Any:
    if len(obj) == 1:
        key, payload = next(iter(obj.items()))
        if key == REF_MARKER:
            return ArrowRef.from_dict(payload)
        if key == TUPLE_MARKER:
            return tuple(payload)
        if key == DICT_MARKER:
            return {k: v for k, v in payload}
    return obj


def encode_value(value: Any) -> str | None:
    """The JSON text the IO manager stores for ``value`` (refs and tuples marked), or ``None``
    when ``value`` is not JSON-able (then it is pickled)."""
    try:
        body = _to_jsonable(value)
    except (_NotJson, RecursionError):
        return None
    return json.dumps({"noetl_value": 1, "value": body}, ensure_ascii=False, allow_nan=True)


def decode_value(text: str | bytes) -> Any:
    """Reverse of :func:`encode_value`."""
    data = json.loads(text, object_hook=_from_json_object)
    return data["value"]
