"""noetl_dagster: run NoETL playbooks on Dagster.

Public API::

    from noetl_dagster import load_playbook_definitions, PlaybookTranslator, run_playbook
    defs = load_playbook_definitions("playbooks/")

Names load on first use (``__getattr__``), so ``import noetl_dagster`` costs only what a caller
touches: a python-only run never imports the AI, ClickHouse, DuckDB or Arrow modules.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from noetl_dagster.core.version import __version__
from noetl_dagster.translator import subplaybooks as _subplaybooks

#: public name -> the module (relative to this package) that defines it
_EXPORTS = {
    "NoetlDagsterError": ".errors", "Issue": ".errors", "PlaybookError": ".errors", "StepFailed": ".errors",
    "ToolError": ".errors", "CredentialNotFound": ".errors",
    "redact": ".core.secrets",
    "load_playbook": ".playbook.loader", "validate_file": ".playbook.loader",
    "Playbook": ".playbook.models",
    "Net": ".planner", "plan": ".planner",
    "Tool": ".runtime.tools", "ToolContext": ".runtime.tools", "register_tool": ".runtime.tools",
    "ErrorResult": ".runtime.tools",
    "PlaybookTranslator": ".translator.translator",
    "build_job": ".translator.emit", "default_resources": ".translator.emit",
    "load_playbook_definitions": ".translator.definitions", "playbook_asset_specs": ".translator.definitions",
    "run_playbook": ".run", "RunReport": ".report", "StepReport": ".report",
    "CredentialsResource": ".resources.credentials",
    "ArrowRefIOManager": ".io.manager", "retention_definitions": ".io.manager",
    "ClickHouseResource": ".export.clickhouse", "QdrantResource": ".export.qdrant",
    "EmbedderResource": ".export.embedder", "export_definitions": ".export.sensors",
    "TunedTranslator": ".ai.translator", "tuning_definitions": ".ai.assets",
    "PlaybookComponent": ".components.component",
}

__all__ = sorted({*_EXPORTS, "__version__"})




def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # the next access is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


def _run_playbook(*args: Any, **kwargs: Any) -> Any:
    """:func:`run_playbook` for sub-playbook steps, loaded when the first child runs."""
    return __getattr__("run_playbook")(*args, **kwargs)


# the adapter's ops run sub-playbooks with run.py, a layer above them: the package wires it in
_subplaybooks.set_runner(_run_playbook)


if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names resolve through __getattr__
    from noetl_dagster.ai.assets import tuning_definitions
    from noetl_dagster.ai.translator import TunedTranslator
    from noetl_dagster.components.component import PlaybookComponent
    from noetl_dagster.core.secrets import redact
    from noetl_dagster.errors import (CredentialNotFound, Issue, NoetlDagsterError, PlaybookError, StepFailed,
                                      ToolError)
    from noetl_dagster.export.clickhouse import ClickHouseResource
    from noetl_dagster.export.embedder import EmbedderResource
    from noetl_dagster.export.qdrant import QdrantResource
    from noetl_dagster.export.sensors import export_definitions
    from noetl_dagster.io.manager import ArrowRefIOManager, retention_definitions
    from noetl_dagster.planner import Net, plan
    from noetl_dagster.playbook.loader import load_playbook, validate_file
    from noetl_dagster.playbook.models import Playbook
    from noetl_dagster.report import RunReport, StepReport
    from noetl_dagster.resources.credentials import CredentialsResource
    from noetl_dagster.run import run_playbook
    from noetl_dagster.runtime.tools import ErrorResult, Tool, ToolContext, register_tool
    from noetl_dagster.translator.definitions import load_playbook_definitions, playbook_asset_specs
    from noetl_dagster.translator.emit import build_job, default_resources
    from noetl_dagster.translator.translator import PlaybookTranslator
