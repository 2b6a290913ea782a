"""`dagster dev` entry point: every playbook under ./playbooks, plus the event-log exporters.

Jobs and data products come from the playbooks; sensors export every run to ClickHouse (chdb under
$DAGSTER_HOME) and Qdrant (local mode) and attach similar-failure hints to failed runs.
"""

from pathlib import Path

import dagster as dg

from noetl_dagster import load_playbook_definitions
from noetl_dagster.sensors import export_definitions

PLAYBOOKS = Path(__file__).parent / "playbooks"

defs = dg.Definitions.merge(
    load_playbook_definitions(PLAYBOOKS),
    export_definitions(playbooks=PLAYBOOKS),
)
