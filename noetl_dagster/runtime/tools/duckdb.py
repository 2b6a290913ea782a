"""``kind: duckdb``: a query on an in-memory (or ``db_path``) DuckDB database.

Result ``{columns, rows: [{col: value}], row_count}`` for queries (rows as lists with
``as_objects: false``), ``{affected_rows}`` for statements without a result set. ``params``
are bound as parameters; ``query`` (alias ``command``) is rendered as a template.
"""

from __future__ import annotations

from typing import Any

from .base import Tool, ToolContext, ToolError


class DuckDBTool(Tool):
    kind = "duckdb"

    def validate(self, config):  # type: ignore[no-untyped-def]
        if not (config.get("query") or config.get("command")):
            return [("query", "a duckdb tool needs `query:` (or `command:`)", None)]
        return []

    def run(self, config: dict[str, Any], ctx: ToolContext) -> Any:
        import duckdb

        query = ctx.render(config.get("query") or config.get("command"))
        if isinstance(query, list):
            query = ";\n".join(str(q) for q in query)
        params = ctx.render(config.get("params"))
        db_path = ctx.render(config.get("db_path")) or ":memory:"
        try:
            with duckdb.connect(str(db_path)) as con:
                cursor = con.execute(str(query), params) if params else con.execute(str(query))
                if cursor.description is None:
                    return {"affected_rows": 0}
                columns = [d[0] for d in cursor.description]
                rows = cursor.fetchall()
        except duckdb.Error as exc:
            raise ToolError(f"DuckDB: {exc}") from exc
        if config.get("as_objects", True):
            data = [dict(zip(columns, row)) for row in rows]
        else:
            data = [list(row) for row in rows]
        return {"columns": columns, "rows": data, "row_count": len(data)}
