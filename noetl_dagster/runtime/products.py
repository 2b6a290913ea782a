"""Data products at run time: a step result as an Arrow table, and the product checks.

Example::

    table = as_table({"rows": [{"id": 1, "score": 0.5}]})      # pyarrow.Table
    evaluate_check(ProductCheck(not_null="score"), table)       # (True, {"offending_rows": 0})
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from noetl_dagster.playbook.models import ProductCheck

if TYPE_CHECKING:  # pyarrow loads on first use: a python-only run never imports it
    import pyarrow as pa


def as_table(value: Any) -> pa.Table | None:
    """The step result as an Arrow table when it is tabular, else None.

    Accepts Arrow tables and record batch readers, pandas/polars frames, ``{columns, rows}`` (the
    postgres/duckdb result shape, rows as mappings or lists), a list of mappings, and anything
    with ``to_table()`` (refs). Raises ``pyarrow.ArrowInvalid``/``ArrowTypeError`` for rows whose
    values do not form columns.
    """
    import pyarrow as pa

    if isinstance(value, pa.Table):
        return value
    if isinstance(value, pa.RecordBatchReader):
        return value.read_all()
    if hasattr(value, "to_table") and callable(value.to_table):
        return value.to_table()
    if hasattr(value, "to_arrow") and callable(value.to_arrow):  # polars
        return value.to_arrow()
    if type(value).__name__ == "DataFrame" and hasattr(value, "columns"):  # pandas
        return pa.Table.from_pandas(value, preserve_index=False)
    rows = value.get("rows") if isinstance(value, Mapping) else value
    columns = value.get("columns") if isinstance(value, Mapping) else None
    if not isinstance(rows, list):
        return None
    if not rows and columns:
        return pa.table({c: pa.array([], pa.null()) for c in columns})
    if columns and all(isinstance(r, (list, tuple)) for r in rows):  # `as_objects: false` rows
        return pa.Table.from_pylist([dict(zip(columns, r)) for r in rows])
    if all(isinstance(r, Mapping) for r in rows):
        return pa.Table.from_pylist([dict(r) for r in rows])
    return None


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def evaluate_check(check: ProductCheck, value: Any) -> tuple[bool, dict[str, Any]]:
    """Run one check on a product value; returns (passed, metadata with the offending count)."""
    import duckdb

    table = as_table(value)
    if table is None:
        return False, {"error": "the product is not a table, so table checks cannot run"}
    if check.kind == "columns":
        actual = {f.name: str(f.type) for f in table.schema}
        missing = [c for c in check.columns or {} if c not in actual]
        wrong = {c: f"{actual[c]} (expected {t})" for c, t in (check.columns or {}).items()
                 if c in actual and not _same_type(actual[c], t)}
        return not missing and not wrong, {"missing_columns": missing, "wrong_types": wrong,
                                           "offending_columns": len(missing) + len(wrong)}
    if check.kind == "row_count":
        bounds = check.row_count or {}
        n = table.num_rows
        ok = bounds.get("min", 0) <= n and ("max" not in bounds or n <= bounds["max"])
        return ok, {"row_count": n, **{f"expected_{k}": v for k, v in bounds.items()}}
    # checks only read the product: no files, no network, no extensions, settings locked
    con = duckdb.connect(config={"enable_external_access": False, "lock_configuration": True})
    try:
        con.register("product", table)
        if check.kind in ("not_null", "unique"):
            columns = check.columns_list
            missing = [c for c in columns if c not in table.column_names]
            if missing:
                return False, {"missing_columns": missing}
            cols = ", ".join(_quote(c) for c in columns)
            if check.kind == "not_null":
                where = " OR ".join(f"{_quote(c)} IS NULL" for c in columns)
                bad = (con.execute(f"SELECT count(*) FROM product WHERE {where}").fetchone() or (0,))[0]
            else:
                bad = (con.execute(f"SELECT coalesce(sum(n - 1), 0) FROM (SELECT count(*) AS n FROM product "
                                   f"GROUP BY {cols}) WHERE n > 1").fetchone() or (0,))[0]
            return bad == 0, {"offending_rows": int(bad)}
        statements = con.extract_statements(check.sql or "")
        if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
            return False, {"error": "a check's `sql` must be one SELECT statement (checks are read-only)"}
        got = con.execute(check.sql or "").fetchone()
        actual_value = got[0] if got else None
        return actual_value == check.expect, {"result": actual_value, "expected": check.expect}
    except duckdb.Error as exc:
        return False, {"error": f"DuckDB: {exc}"}
    finally:
        con.close()


_ALIASES = {"double": "double", "float64": "double", "float": "float", "float32": "float",
            "str": "string", "string": "string", "utf8": "string", "large_string": "large_string",
            "int": "int64", "bool": "bool", "boolean": "bool"}


def _same_type(actual: str, expected: str) -> bool:
    norm = lambda t: _ALIASES.get(t.lower().strip(), t.lower().strip())  # noqa: E731
    return norm(actual) == norm(expected)
