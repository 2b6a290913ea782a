"""``kind: ducklake``: SQL on a DuckLake catalog (DuckDB's ``ducklake`` extension).

NoETL's contract (NoETL runs it as DuckDB with a Postgres metastore)::

    tool:
      kind: ducklake
      catalog_connection: "postgresql://etl@db:5432/ducklake_catalog"   # the metadata catalog:
                                    # a Postgres URL or libpq "dbname=... host=..." string,
      # catalog_auth: pg_catalog    # or a postgres credential alias (alias `auth:`),
      # catalog_path: lake.ducklake # or a DuckDB file (extension: no Postgres needed)
      catalog_name: sales           # the attached catalog, also `USE`d (default: lake)
      data_path: /data/lake         # where the Parquet files go (needed when the lake is created)
      metadata_schema: lake_meta    # optional: the catalog's schema in its database (an identifier)
      command: |                    # or query:, or commands: [...] run in order as one script
        SELECT * FROM users WHERE id > $min
      params: {min: 1}              # bound by DuckDB, never formatted into the SQL
      format: rows                  # or arrow

Everything else is the ``duckdb`` tool: the result is ``{columns, rows, row_count}`` (or
``{affected_rows}`` for statements, a ``pyarrow.Table`` with ``format: arrow``), Arrow results of
earlier steps can be queried by name or through ``tables:``, and ``ducklake_snapshots('<catalog>')``
and the other DuckLake functions are available.

The extension comes from the PyPI wheel ``duckdb-extension-ducklake`` (and
``duckdb-extension-postgres-scanner`` for a Postgres catalog) matching the installed DuckDB; it is
loaded from the wheel, never downloaded (extension autoinstall is off). ``catalog_name`` must be an
identifier; the catalog and data path are passed as quoted SQL string literals (the ``ATTACH``
statement takes no parameters). The catalog's password (in the URL, the libpq string or the
credential) is registered for redaction.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

from noetl_dagster.playbook.kinds import ducklake_commands
from noetl_dagster.runtime.tools.base import ToolContext, ToolError
from noetl_dagster.runtime.tools.duckdb import DuckDBTool
from noetl_dagster.core.secrets import redact, register_connection_secret, secret_safe

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
DEFAULT_CATALOG = "lake"


def _literal(text: str) -> str:
    """A DuckDB string literal (quotes doubled; DuckDB strings have no other escapes)."""
    if "\x00" in text:
        raise ToolError("ducklake: a path or connection string may not contain NUL characters")
    return "'" + text.replace("'", "''") + "'"


def extension_path(name: str) -> Path:
    """The ``.duckdb_extension`` file of PyPI's ``duckdb-extension-<name>`` for this DuckDB."""
    import importlib

    import duckdb

    package = "duckdb_extension_" + name
    wheel = "duckdb-extension-" + name.replace("_", "-")
    try:
        module = importlib.import_module(package)
    except ImportError:
        raise ToolError(f"ducklake: the DuckDB extension {name!r} is not installed: "
                        f"pip install '{wheel}=={duckdb.__version__}'") from None
    folder = Path(module.__file__ or "").parent / "extensions"
    path = folder / f"v{duckdb.__version__}" / f"{name}.duckdb_extension"
    if not path.exists():
        have = sorted(p.name for p in folder.glob("v*")) if folder.exists() else []
        raise ToolError(f"ducklake: the installed {wheel} is built for DuckDB {', '.join(have) or '?'}, "
                        f"not {duckdb.__version__}: pip install '{wheel}=={duckdb.__version__}'")
    return path


def _postgres_conninfo(fields: Mapping[str, Any]) -> str:
    """A libpq ``key=value`` string from NoETL's postgres credential fields."""
    if fields.get("connection_string") or fields.get("dsn"):
        return str(fields.get("connection_string") or fields.get("dsn"))
    names = {"host": ("db_host", "host"), "port": ("db_port", "port"), "user": ("db_user", "user"),
             "password": ("db_password", "password"), "dbname": ("db_name", "database", "dbname")}
    parts = []
    for key, candidates in names.items():
        value = next((fields[c] for c in candidates if fields.get(c) not in (None, "")), None)
        if value is not None:
            text = str(value).replace("\\", "\\\\").replace("'", "\\'")
            parts.append(f"{key}='{text}'")
    return " ".join(parts)


class DuckLakeTool(DuckDBTool):
    kind = "ducklake"

    def run(self, config: dict[str, Any], ctx: ToolContext) -> Any:
        return secret_safe(super().run)(ducklake_commands(config), ctx)

    def connect(self, config: Mapping[str, Any], ctx: ToolContext) -> Any:
        import duckdb

        name = str(ctx.render(config.get("catalog_name")) or DEFAULT_CATALOG)
        if not _IDENT.match(name):
            raise ToolError(f"ducklake: catalog_name {name!r} is not an identifier")
        data_path = ctx.render(config.get("data_path"))
        extensions = [extension_path("ducklake")]
        if config.get("catalog_path"):
            target = "ducklake:" + str(ctx.render(config["catalog_path"]))
            who = "catalog_path"
        else:
            if config.get("catalog_auth") or config.get("auth"):
                alias = str(ctx.render(config.get("catalog_auth") or config["auth"]))
                conninfo = _postgres_conninfo(ctx.credential(alias))
                who = f"credential {alias!r}"
            else:
                conninfo = str(ctx.render(config.get("catalog_connection")) or "")
                who = "catalog_connection"
            if not conninfo.strip():
                raise ToolError(f"ducklake: {who} rendered empty")
            register_connection_secret(conninfo)
            target = "ducklake:postgres:" + conninfo
            extensions.append(extension_path("postgres_scanner"))
        con = duckdb.connect(config={"autoinstall_known_extensions": False,
                                     "autoload_known_extensions": False})
        try:
            for path in extensions:
                con.execute(f"LOAD {_literal(str(path))}")
            options = [f"DATA_PATH {_literal(str(data_path))}"] if data_path else []
            schema = ctx.render(config.get("metadata_schema"))
            if schema:
                if not _IDENT.match(str(schema)):
                    raise ToolError(f"ducklake: metadata_schema {schema!r} is not an identifier")
                options.append(f"METADATA_SCHEMA {_literal(str(schema))}")
            options_sql = f" ({', '.join(options)})" if options else ""
            con.execute(f"ATTACH {_literal(target)} AS {name}{options_sql}")
            con.execute(f"USE {name}")
        except duckdb.Error as exc:
            con.close()
            raise ToolError(redact(f"ducklake: cannot attach the catalog ({who}): {exc}")) from None
        return con
