"""`dagster dev` entry point: every playbook under ./playbooks, the event-log exporters and the tuning loop.

Jobs and data products come from the playbooks, compiled with the approved tuning profiles in
./tuning (retry policies, resources); sensors export every run to ClickHouse (chdb under
$DAGSTER_HOME) and Qdrant (local mode) and attach similar-failure hints to failed runs; the
observability/tuning_report asset (job noetl_tuning, scheduled daily) learns from that history
and proposes profile entries in ./tuning.
"""

from pathlib import Path

import dagster as dg

from noetl_dagster import TunedTranslator, load_playbook_definitions, tuning_definitions
from noetl_dagster.resources.clickhouse import ClickHouseResource
from noetl_dagster.sensors import export_definitions

HERE = Path(__file__).parent
PLAYBOOKS = HERE / "playbooks"
TUNING = HERE / "tuning"
CLICKHOUSE = ClickHouseResource()  # one resource for the exporters and the tuning report

defs = dg.Definitions.merge(
    load_playbook_definitions(PLAYBOOKS, translator=TunedTranslator(TUNING)),
    export_definitions(playbooks=PLAYBOOKS, clickhouse=CLICKHOUSE),
    tuning_definitions(profiles=TUNING, playbooks=PLAYBOOKS, clickhouse=CLICKHOUSE),
)
