"""``kind: duckdb``: a query on an in-memory (or ``db_path``) DuckDB database.

Result ``{columns, rows: [{col: value}], row_count}`` for queries (a ``pyarrow.Table`` with
``format: arrow``) (rows as lists with
``as_objects: false``), ``{affected_rows}`` for statements without a result set. ``query``
(alias ``command``; a list is joined into one script) is rendered as a template.

``params`` (a list for ``?``/``$1``, a mapping for ``$name``) are bound by DuckDB, never
formatted into the SQL. So are the ``{{ }}`` values of ``query`` (each becomes a ``$n``
placeholder, see :mod:`noetl_dagster.core.binding`); ``| sql_identifier`` and ``| raw_sql``
mark the templates that must produce SQL text.

Arrow data from earlier steps can be queried as tables:

* ``tables: {orders: "{{ load.table }}"}`` registers each value under its name: a
  ``pyarrow.Table``/``RecordBatch``/``RecordBatchReader``, a pandas DataFrame, a list of row
  mappings, or a postgres/duckdb step result (``{columns, rows}``);
* a step whose whole result is a ``pyarrow.Table`` can be named directly in the SQL
  (``SELECT * FROM load``).

Example::

    - step: totals
      tool:
        kind: duckdb
        tables: {o: "{{ load.orders }}"}
        query: SELECT region, sum(amount) AS total FROM o WHERE amount > $min GROUP BY region
        params: {min: 10}
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from noetl_dagster.io.arrow_ref import ArrowRef
from noetl_dagster.runtime.products import as_table
from noetl_dagster.runtime.tools.base import Tool, ToolContext, ToolError, result_format
from noetl_dagster.runtime.tools.postgres import bind_query, split_bound

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _as_relation(name: str, value: Any) -> Any:
    """A value DuckDB can register as a table (Arrow, pandas, rows), or a ToolError."""
    import pyarrow as pa

    if isinstance(value, (pa.Table, pa.RecordBatch, pa.RecordBatchReader, ArrowRef)):
        return value  # an ArrowRef is scanned from its file by reference (Arrow C stream)
    if type(value).__name__ == "DataFrame":  # pandas / polars, registered as they are
        return value
    try:
        table = as_table(value)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise ToolError(f"duckdb: table {name!r}: rows do not form a table: {exc}") from None
    if table is None:
        raise ToolError(f"duckdb: table {name!r} must be a pyarrow Table, a DataFrame or a list of "
                        f"row mappings, got {type(value).__name__}")
    return table


class DuckDBTool(Tool):
    kind = "duckdb"

    def connect(self, config: Mapping[str, Any], ctx: ToolContext) -> Any:
        """The connection a query runs on (``db_path``, in memory by default); ``ducklake`` overrides it."""
        import duckdb

        return duckdb.connect(str(ctx.render(config.get("db_path")) or ":memory:"))

    def run(self, config: dict[str, Any], ctx: ToolContext) -> Any:
        import duckdb
        import pyarrow as pa

        # every {{ }} value in the query is a bound parameter ($n), never SQL text
        query, params = bind_query(config.get("query") or config.get("command"),
                                   ctx.render(config.get("params")), ctx.scope,
                                   script=bool(ctx.render(config.get("script"))), tool="duckdb",
                                   text_type="VARCHAR")
        tables = ctx.render(config.get("tables")) or {}
        if not isinstance(tables, Mapping):
            raise ToolError("duckdb: `tables` must render to a mapping of name: table")
        relations = {str(name): _as_relation(str(name), value) for name, value in tables.items()}
        # a step whose result is an Arrow table can be named in the SQL directly
        for name, value in ctx.scope.items():
            if (name not in relations and isinstance(value, (pa.Table, ArrowRef)) and _NAME.match(name)
                    and re.search(rf"\b{re.escape(name)}\b", str(query))):
                relations[name] = value
        if params is not None and not isinstance(params, (list, tuple, Mapping)):
            params = [params]
        try:
            with self.connect(config, ctx) as con:
                for name, relation in relations.items():
                    con.register(name, relation)
                if result_format(config) == "arrow":  # the relation API: no extra copy of the rows
                    relation = con.sql(str(query), params=params or None)
                    return {"affected_rows": 0} if relation is None else relation.to_arrow_table()
                parts = split_bound(str(query), params) if params and isinstance(params, list) else []
                if len(parts) > 1:  # a script binding values: statement by statement, the last one's rows
                    for text, values in parts[:-1]:
                        con.execute(text, values) if values else con.execute(text)
                    text, values = parts[-1]
                    cursor = con.execute(text, values) if values else con.execute(text)
                else:
                    cursor = con.execute(str(query), params) if params else con.execute(str(query))
                if cursor.description is None:
                    return {"affected_rows": 0}
                columns = [d[0] for d in cursor.description]
                rows = cursor.fetchall()
        except duckdb.Error as exc:
            raise ToolError(f"DuckDB: {exc}") from exc
        if columns == ["Count"] and len(rows) <= 1 and _is_statement(str(query)):
            return {"affected_rows": int(rows[0][0]) if rows else 0}
        if config.get("as_objects", True):
            data: list[Any] = [dict(zip(columns, row)) for row in rows]
        else:
            data = [list(row) for row in rows]
        return {"columns": columns, "rows": data, "row_count": len(data)}


def _is_statement(query: str) -> bool:
    """Whether the last statement changes data or schema (DuckDB reports those as ``Count``)."""
    last = [s for s in query.split(";") if s.strip()]
    return bool(last) and bool(re.match(
        r"\s*(insert|update|delete|merge|create|drop|alter|copy|truncate|attach|detach|use|set|load|install)\b",
        last[-1], re.IGNORECASE))
