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

#: public name -> the module (relative to this package) that defines it
_EXPORTS = {
    "TunedTranslator": ".ai.translator", "tuning_definitions": ".ai.assets",
    "Issue": ".errors", "PlaybookError": ".errors", "StepFailed": ".errors",
    "load_playbook": ".playbook.loader", "validate_file": ".playbook.loader",
    "Playbook": ".playbook.models",
    "CredentialsResource": ".resources.credentials", "redact": ".resources.credentials",
    "RunReport": ".report", "StepReport": ".report", "run_playbook": ".report",
    "Tool": ".runtime.tools", "ToolContext": ".runtime.tools", "ToolError": ".runtime.tools",
    "register_tool": ".runtime.tools",
    "load_playbook_definitions": ".translator.definitions",
    "build_job": ".translator.emit",
    "Net": ".translator.plan", "plan": ".translator.plan",
    "PlaybookTranslator": ".translator.translator", "playbook_asset_specs": ".translator.definitions",
    "ErrorResult": ".runtime.tools",
    "ArrowRefIOManager": ".resources.arrow_io", "retention_definitions": ".resources.arrow_io",
    "ClickHouseResource": ".resources.clickhouse", "QdrantResource": ".resources.qdrant",
    "EmbedderResource": ".resources.embedder", "export_definitions": ".sensors",
    "default_resources": ".translator.emit", "PlaybookComponent": ".components.playbook",
}

__all__ = sorted({*_EXPORTS, "__version__"})


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("noetl-dagster")
    except PackageNotFoundError:  # a source tree that is not installed
        return "0+unknown"


__version__ = _version()


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # the next access is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names resolve through __getattr__
    from .ai.assets import tuning_definitions
    from .ai.translator import TunedTranslator
    from .errors import Issue, PlaybookError, StepFailed
    from .playbook.loader import load_playbook, validate_file
    from .playbook.models import Playbook
    from .report import RunReport, StepReport, run_playbook
    from .resources.credentials import CredentialsResource, redact
    from .runtime.tools import Tool, ToolContext, ToolError, register_tool
    from .translator.definitions import load_playbook_definitions, playbook_asset_specs
    from .translator.emit import build_job
    from .translator.plan import Net, plan
    from .translator.translator import PlaybookTranslator
    from .components.playbook import PlaybookComponent
    from .resources.arrow_io import ArrowRefIOManager, retention_definitions
    from .resources.clickhouse import ClickHouseResource
    from .resources.embedder import EmbedderResource
    from .resources.qdrant import QdrantResource
    from .runtime.tools import ErrorResult
    from .sensors import export_definitions
    from .translator.emit import default_resources
