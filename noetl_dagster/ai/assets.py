"""The step statistics and tuning report assets, their job and a daily schedule: the tuning loop in Dagster.

``observability/step_stats`` reads per-step statistics from ClickHouse (the ``noetl_clickhouse``
resource the export sensors write through, one query) and shows them as a table in its
materialization metadata. ``observability/tuning_report`` takes them as its input (lineage
stats -> report; the value travels through the ``io_manager``), writes new recommendations to the
tuning profiles (:func:`~noetl_dagster.ai.cli.run_tune`, as ``noetl-dagster tune`` does) and shows
a markdown table of statistics and recommendations plus a PNG chart of durations (p50/p95) and
failure rates per step. With Qdrant (``noetl_qdrant`` + ``noetl_embedder``, the export sensors'
resources) retry recommendations carry similar past failures as evidence (:mod:`.evidence`).

Recommendations are **proposed** by default; approving those within bounds is the explicit run
config ``auto_approve: true`` (or ``tuning_definitions(auto_approve=True)`` for the schedule).
Approved entries are compiled in by :class:`~noetl_dagster.ai.TunedTranslator` when the code
location next loads (reload it in the UI, or restart ``dagster dev``).

Example (``definitions.py``)::

    ch, qdrant, embedder = ClickHouseResource(), QdrantResource(), EmbedderResource()  # shared objects
    defs = dg.Definitions.merge(
        load_playbook_definitions("playbooks/", translator=TunedTranslator("tuning/")),
        export_definitions(playbooks="playbooks/", clickhouse=ch, qdrant=qdrant, embedder=embedder),
        tuning_definitions(profiles="tuning/", playbooks="playbooks/", clickhouse=ch, qdrant=qdrant,
                           embedder=embedder),
    )
"""

import os
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field

from noetl_dagster.export.clickhouse import ClickHouseResource
from noetl_dagster.export.embedder import EmbedderResource
from noetl_dagster.export.qdrant import QdrantResource
from noetl_dagster.export.sensors import CLICKHOUSE_KEY, EMBEDDER_KEY, QDRANT_KEY
from noetl_dagster.ai.cli import run_tune
from noetl_dagster.ai.evidence import evidence_sink
from noetl_dagster.ai.recommend import TuningBounds
from noetl_dagster.ai.report import chart_markdown, chart_png, report_markdown
from noetl_dagster.ai.stats import StepStats, step_stats

STEP_STATS_KEY = dg.AssetKey(["observability", "step_stats"])
TUNING_REPORT_KEY = dg.AssetKey(["observability", "tuning_report"])
TUNING_JOB = "noetl_tuning"
TUNING_SCHEDULE = "noetl_tuning_daily"
#: an embedded chdb folder is busy while an export sensor ticks (seconds): try again after it
STATS_RETRY = dg.RetryPolicy(max_retries=4, delay=30)


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def _secs(ms: float | None) -> float | None:
    return None if ms is None else round(ms / 1000, 3)


#: the columns of the step statistics table: name, type, description, value of a StepStats
STATS_COLUMNS: list[tuple[str, str, str, Any]] = [
    ("playbook", "string", "playbook path", lambda s: s.playbook),
    ("step", "string", "step name", lambda s: s.step),
    ("runs", "int", "runs with a finished attempt", lambda s: s.runs),
    ("attempts", "int", "finished attempts", lambda s: s.attempts),
    ("failure_rate", "float", "share of executions that finally failed", lambda s: round(s.failure_rate, 4)),
    ("attempt_failure_rate", "float", "share of attempts that failed", lambda s: round(s.attempt_failure_rate, 4)),
    ("transient_failures", "int", "failed attempts that later succeeded on retry", lambda s: s.transient_failures),
    ("intermittent_failures", "int", "final failures of a step that succeeds in other runs",
     lambda s: s.intermittent_failures),
    ("deterministic_failures", "int", "final failures retries did not (or would not) fix",
     lambda s: s.deterministic_failures),
    ("p50_s", "float", "median duration of successful attempts (s)", lambda s: _secs(s.p50_ms)),
    ("p95_s", "float", "p95 duration (s)", lambda s: _secs(s.p95_ms)),
    ("p99_s", "float", "p99 duration (s)", lambda s: _secs(s.p99_ms)),
    ("cpu_s_p50", "float", "median CPU seconds per attempt", lambda s: _round(s.cpu_seconds_p50)),
    ("cpu_s_p95", "float", "p95 CPU seconds per attempt", lambda s: _round(s.cpu_seconds_p95)),
    ("peak_mb_p99", "float", "p99 peak RSS (MB)", lambda s: _round(s.peak_mb_p99, 1)),
    ("peak_mb_max", "float", "max peak RSS (MB)", lambda s: _round(s.peak_mb_max, 1)),
    ("rows_p50", "float", "median rows per attempt", lambda s: s.rows_p50),
    ("bytes_p50", "float", "median bytes per attempt", lambda s: s.bytes_p50),
    ("loop_items_p50", "float", "median loop items per run (mapped steps)", lambda s: s.loop_items_p50),
    ("loop_items_max", "int", "max loop items per run (mapped steps)", lambda s: s.loop_items_max),
    ("loop_ops_p50", "float", "median body ops per run (items / chunk size)", lambda s: s.loop_ops_p50),
    ("item_p50_s", "float", "median duration per loop item (s)", lambda s: _secs(s.item_p50_ms)),
    ("item_cores_p95", "float", "p95 CPU cores of the loop's body ops", lambda s: _round(s.item_cores_p95)),
]


def stats_table_metadata(stats: list[StepStats]) -> dg.TableMetadataValue:
    """The statistics as a Dagster table (one row per playbook and step), e.g. for asset metadata."""
    schema = dg.TableSchema(columns=[dg.TableColumn(name, kind, description) for name, kind, description, _ in
                                     STATS_COLUMNS])
    records = [dg.TableRecord({name: get(s) for name, _, _, get in STATS_COLUMNS}) for s in stats]
    return dg.MetadataValue.table(records, schema)


class TuningConfig(dg.Config):
    """Run config of the tuning report; the default only proposes."""

    auto_approve: bool = Field(default=False, description="write recommendations within bounds as approved "
                                                          "(default: proposed, for a person to approve)")


def tuning_run_config(auto_approve: bool = False, key: dg.AssetKey = TUNING_REPORT_KEY) -> dict[str, Any]:
    """Run config for the tuning job, e.g. ``job.execute_in_process(run_config=tuning_run_config(True))``."""
    return {"ops": {key.to_python_identifier(): {"config": {"auto_approve": auto_approve}}}}


def step_stats_asset(*, key: dg.AssetKey = STEP_STATS_KEY, group_name: str | None = None) -> dg.AssetsDefinition:
    """The step statistics asset: a list of :class:`StepStats` read from ClickHouse ``step_runs``.

    Example::

        step_stats_asset(key=dg.AssetKey(["ops", "step_stats"]))
    """

    @dg.asset(key=key, group_name=group_name or key.path[0], required_resource_keys={CLICKHOUSE_KEY},
              kinds={"clickhouse"}, retry_policy=STATS_RETRY,
              description="Per playbook and step, from ClickHouse step_runs: runs, failure rates, transient vs "
                          "deterministic failures, p50/p95/p99 durations, CPU, peak memory, rows, bytes, loop items.")
    def _step_stats(context: dg.AssetExecutionContext) -> dg.Output[list[StepStats]]:
        resource: ClickHouseResource = getattr(context.resources, CLICKHOUSE_KEY)
        with resource.session() as sink:  # chdb's folder is held only while reading
            stats = step_stats(sink)
        context.log.info(f"{len(stats)} step(s) of history in step_runs")
        return dg.Output(stats, metadata={
            "stats": stats_table_metadata(stats),
            "dagster/row_count": dg.MetadataValue.int(len(stats)),
            "playbooks": dg.MetadataValue.int(len({s.playbook for s in stats})),
            "runs": dg.MetadataValue.int(max((s.runs for s in stats), default=0)),
        })

    return _step_stats


def tuning_report_asset(*, profiles: str | os.PathLike = "tuning", playbooks: str | os.PathLike | None = None,
                        bounds: TuningBounds | None = None, key: dg.AssetKey = TUNING_REPORT_KEY,
                        stats_key: dg.AssetKey = STEP_STATS_KEY, group_name: str | None = None,
                        similar_failures: bool = False) -> dg.AssetsDefinition:
    """The tuning report asset over the profiles in ``profiles``, fed by the ``stats_key`` asset;
    ``playbooks`` (a folder) gives the steps' declared ``hardware:``; ``bounds`` the recommender's
    safety bounds; ``similar_failures`` requires ``noetl_qdrant``/``noetl_embedder`` for evidence.

    Example::

        tuning_report_asset(profiles="tuning/", bounds=TuningBounds(retry_max_retries=3))
    """
    bounds = bounds or TuningBounds()
    folder = Path(profiles)

    @dg.asset(key=key, group_name=group_name or key.path[0], ins={"stats": dg.AssetIn(stats_key)},
              required_resource_keys={QDRANT_KEY, EMBEDDER_KEY} if similar_failures else set(),
              kinds={"yaml"} | ({"qdrant"} if similar_failures else set()),
              description="Bounded tuning recommendations (retries, timeouts, resources, loop chunk size and "
                          "concurrency) from the step statistics, "
                          f"written to the profiles in {folder}/.")
    def _tuning_report(context: dg.AssetExecutionContext, config: TuningConfig,
                       stats: list[StepStats]) -> dg.MaterializeResult:
        with (evidence_sink(getattr(context.resources, QDRANT_KEY), getattr(context.resources, EMBEDDER_KEY),
                            context.log) if similar_failures else nullcontext()) as qdrant:
            added, written = run_tune(None, folder, apply=config.auto_approve, bounds=bounds,
                                      playbooks_dir=playbooks, stats=stats, qdrant=qdrant)
        approved = sum(1 for r in added if config.auto_approve and r.within_bounds)
        explained = sum(1 for r in added if r.evidence.get("similar_failures"))
        context.log.info(f"{len(stats)} step(s) of history; {len(added)} new recommendation(s), {approved} "
                         f"approved; wrote {', '.join(map(str, written)) or 'nothing'}")
        return dg.MaterializeResult(metadata={
            "report": dg.MetadataValue.md(report_markdown(stats, added, approved=config.auto_approve)),
            "chart": dg.MetadataValue.md(chart_markdown(chart_png(stats))),
            "steps": dg.MetadataValue.int(len(stats)),
            "playbooks": dg.MetadataValue.int(len({s.playbook for s in stats})),
            "new_recommendations": dg.MetadataValue.int(len(added)),
            "approved": dg.MetadataValue.int(approved),
            "with_similar_failures": dg.MetadataValue.int(explained),
            "auto_approve": dg.MetadataValue.bool(config.auto_approve),
            "profiles_written": dg.MetadataValue.json([str(p) for p in written]),
            "profiles_folder": dg.MetadataValue.path(str(folder)),
        })

    return _tuning_report


def tuning_definitions(*, profiles: str | os.PathLike = "tuning", playbooks: str | os.PathLike | None = None,
                       bounds: TuningBounds | None = None, clickhouse: ClickHouseResource | None = None,
                       qdrant: QdrantResource | None = None, embedder: EmbedderResource | None = None,
                       similar_failures: bool | None = None,
                       cron_schedule: str = "0 6 * * *", execution_timezone: str = "UTC",
                       auto_approve: bool = False,
                       default_status: dg.DefaultScheduleStatus = dg.DefaultScheduleStatus.RUNNING
                       ) -> dg.Definitions:
    """The step statistics and tuning report assets, the ``noetl_tuning`` job materializing both
    and its ``noetl_tuning_daily`` schedule.

    ``clickhouse`` is added as the ``noetl_clickhouse`` resource when given; otherwise the
    definitions this is merged with provide it (:func:`~noetl_dagster.export.sensors.export_definitions`
    does). Likewise ``qdrant`` (``noetl_qdrant``) and ``embedder`` (``noetl_embedder``; default
    :class:`EmbedderResource` when ``qdrant`` is given): with them retry recommendations carry
    similar past failures. ``similar_failures`` defaults to ``qdrant is not None``; ``True``
    without ``qdrant`` uses the merged definitions' resources. Pass the same objects to both
    when merging. chdb and Qdrant local mode lock their folders per process and the export
    sensors hold them during a tick: the statistics then retry (``STATS_RETRY``), the report
    goes without the evidence (logged). ``auto_approve`` applies to scheduled runs.

    Example::

        tuning_definitions(profiles="tuning/", playbooks="playbooks/", cron_schedule="0 */6 * * *")
    """
    similar = qdrant is not None if similar_failures is None else similar_failures
    stats = step_stats_asset()
    report = tuning_report_asset(profiles=profiles, playbooks=playbooks, bounds=bounds, stats_key=stats.key,
                                 similar_failures=similar)
    job = dg.define_asset_job(TUNING_JOB, selection=dg.AssetSelection.assets(stats, report),
                              description="Step statistics from run history (ClickHouse step_runs), then "
                                          "recommended retries, timeouts, resources and loop chunking/concurrency "
                                          "in the tuning profiles.")
    schedule = dg.ScheduleDefinition(name=TUNING_SCHEDULE, job=job, cron_schedule=cron_schedule,
                                     execution_timezone=execution_timezone, default_status=default_status,
                                     run_config=tuning_run_config(auto_approve, report.key))
    resources: dict[str, Any] = {CLICKHOUSE_KEY: clickhouse} if clickhouse is not None else {}
    if qdrant is not None:
        resources.update({QDRANT_KEY: qdrant, EMBEDDER_KEY: embedder or EmbedderResource()})
    elif embedder is not None:
        resources[EMBEDDER_KEY] = embedder
    return dg.Definitions(assets=[stats, report], jobs=[job], schedules=[schedule], resources=resources)


__all__ = ["STATS_COLUMNS", "STATS_RETRY", "STEP_STATS_KEY", "TUNING_JOB",
           "TUNING_REPORT_KEY", "TUNING_SCHEDULE", "TuningConfig", "stats_table_metadata", "step_stats_asset",
           "tuning_definitions", "tuning_report_asset", "tuning_run_config"]
