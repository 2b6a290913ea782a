"""noetl_dagster: run NoETL playbooks on Dagster.

Public API::

    from noetl_dagster import load_playbook_definitions, PlaybookTranslator, run_playbook
    defs = load_playbook_definitions("playbooks/")
"""

from .ai import TunedTranslator, tuning_definitions
from .errors import Issue, PlaybookError, StepFailed
from .playbook.loader import load_playbook, validate_file
from .playbook.models import Playbook
from .resources.credentials import CredentialsResource, redact
from .report import RunReport, StepReport, run_playbook
from .runtime.tools import Tool, ToolContext, ToolError, register_tool
from .translator.definitions import load_playbook_definitions
from .translator.emit import build_job
from .translator.plan import Net, plan
from .translator.translator import PlaybookTranslator

__all__ = [
    "CredentialsResource", "redact", "Issue", "Net", "Playbook", "PlaybookError", "PlaybookTranslator", "RunReport", "StepFailed",
    "StepReport", "Tool", "TunedTranslator", "ToolContext", "ToolError", "build_job", "load_playbook",
    "load_playbook_definitions", "plan", "register_tool", "run_playbook", "tuning_definitions", "validate_file",
]
