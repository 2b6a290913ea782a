"""`dagster dev` entry point: every playbook under ./playbooks, the event-log exporters and the tuning loop.

Jobs and data products come from the playbooks, compiled with the approved tuning profiles in
./tuning (retry policies, resources); sensors export every run to ClickHouse (chdb under
$DAGSTER_HOME) and Qdrant (local mode) and attach similar-failure hints to failed runs; the
observability/step_stats asset feeds observability/tuning_report (job noetl_tuning, scheduled
daily), which learns from that history, explains retry recommendations with similar past
failures from Qdrant, and proposes profile entries in ./tuning. (chdb and Qdrant local mode
lock their folders per process; the sensors hold them only during a tick, so tuning runs and
`noetl-dagster export` use them in between.)
"""

from pathlib import Path

import dagster as dg

from noetl_dagster import TunedTranslator, load_playbook_definitions, tuning_definitions
from noetl_dagster.io.manager import retention_definitions
from noetl_dagster.export.clickhouse import ClickHouseResource
from noetl_dagster.export.embedder import EmbedderResource
from noetl_dagster.export.qdrant import QdrantResource
from noetl_dagster.export.sensors import export_definitions

HERE = Path(__file__).parent
PLAYBOOKS = HERE / "playbooks"
TUNING = HERE / "tuning"
# one resource object each, shared by the exporters and the tuning assets
CLICKHOUSE = ClickHouseResource()
QDRANT = QdrantResource()
EMBEDDER = EmbedderResource()

defs = dg.Definitions.merge(
    load_playbook_definitions(PLAYBOOKS, translator=TunedTranslator(TUNING)),
    export_definitions(playbooks=PLAYBOOKS, clickhouse=CLICKHOUSE, qdrant=QDRANT, embedder=EMBEDDER),
    tuning_definitions(profiles=TUNING, playbooks=PLAYBOOKS, clickhouse=CLICKHOUSE, qdrant=QDRANT, embedder=EMBEDDER),
    retention_definitions(),  # daily: delete op outputs older than intermediate_retention_days
)
