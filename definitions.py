"""`dagster dev` entry point: every playbook under ./playbooks, plus the event-log exporters.

Jobs and data products come from the playbooks, compiled with the approved tuning profiles in
./tuning (retry policies, resources); sensors export every run to ClickHouse (chdb under
$DAGSTER_HOME) and Qdrant (local mode) and attach similar-failure hints to failed runs.
"""

from pathlib import Path

import dagster as dg

from noetl_dagster import TunedTranslator, load_playbook_definitions
from noetl_dagster.sensors import export_definitions

HERE = Path(__file__).parent
PLAYBOOKS = HERE / "playbooks"

defs = dg.Definitions.merge(
    load_playbook_definitions(PLAYBOOKS, translator=TunedTranslator(HERE / "tuning")),
    export_definitions(playbooks=PLAYBOOKS),
)
