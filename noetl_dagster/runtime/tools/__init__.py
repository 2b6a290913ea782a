"""Tool kinds: one module each, registered here."""

from .artifact import ArtifactTool
from .base import ErrorResult, Tool, ToolContext, ToolError, get_tool, register_tool, supported_kinds
from .container import ContainerTool
from .duckdb import DuckDBTool
from .ducklake import DuckLakeTool
from .http import HttpTool
from .nats import NatsTool
from .noop import NoopTool
from .playbook import PlaybookTool
from .postgres import PostgresTool
from .python import PythonTool
from .python_script import PythonScriptTool
from .script import ScriptTool
from .shell import ShellTool
from .snowflake import SnowflakeTool
from .transfer import TransferTool

for _tool in (PythonTool(), NoopTool(), DuckDBTool(), HttpTool(), PostgresTool(), ShellTool(),
              PlaybookTool(), TransferTool(), ContainerTool(), NatsTool(),
              DuckLakeTool(), SnowflakeTool(), ArtifactTool(), ScriptTool()):
    register_tool(_tool)
register_tool(PythonScriptTool())  # kind: python, with NoETL's `script:` sources on top of PythonTool

#: Every tool kind NoETL knows; those not in :func:`supported_kinds` get a clear error.
NOETL_KINDS = frozenset({
    "python", "http", "postgres", "duckdb", "ducklake", "shell", "rhai", "noop", "playbook",
    "workbook", "transfer", "snowflake", "container", "script", "artifact", "nats",
    "subscription", "wasm", "task_sequence", "secrets", "iterator", "gcs", "gateway",
    "playbooks", "snowflake_transfer", "mcp", "provider", "result_fetch", "agent",
})

__all__ = ["ErrorResult", "Tool", "ToolContext", "ToolError", "get_tool", "register_tool", "supported_kinds",
           "NOETL_KINDS"]
