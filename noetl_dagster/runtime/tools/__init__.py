"""Tool kinds: one module each, registered here."""

from noetl_dagster.playbook.kinds import NOETL_KINDS
from noetl_dagster.runtime.tools.artifact import ArtifactTool
from noetl_dagster.runtime.tools.base import ErrorResult, Tool, ToolContext, ToolError, get_tool, register_tool, supported_kinds
from noetl_dagster.runtime.tools.container import ContainerTool
from noetl_dagster.runtime.tools.duckdb import DuckDBTool
from noetl_dagster.runtime.tools.ducklake import DuckLakeTool
from noetl_dagster.runtime.tools.http import HttpTool
from noetl_dagster.runtime.tools.nats import NatsTool
from noetl_dagster.runtime.tools.noop import NoopTool
from noetl_dagster.runtime.tools.playbook import PlaybookTool
from noetl_dagster.runtime.tools.postgres import PostgresTool
from noetl_dagster.runtime.tools.python import PythonTool
from noetl_dagster.runtime.tools.python_script import PythonScriptTool
from noetl_dagster.runtime.tools.script import ScriptTool
from noetl_dagster.runtime.tools.shell import ShellTool
from noetl_dagster.runtime.tools.snowflake import SnowflakeTool
from noetl_dagster.runtime.tools.transfer import TransferTool

for _tool in (PythonTool(), NoopTool(), DuckDBTool(), HttpTool(), PostgresTool(), ShellTool(),
              PlaybookTool(), TransferTool(), ContainerTool(), NatsTool(),
              DuckLakeTool(), SnowflakeTool(), ArtifactTool(), ScriptTool()):
    register_tool(_tool)
register_tool(PythonScriptTool())  # kind: python, with NoETL's `script:` sources on top of PythonTool

__all__ = ["ErrorResult", "Tool", "ToolContext", "ToolError", "get_tool", "register_tool", "supported_kinds",
           "NOETL_KINDS"]
