"""The tuning report asset, its job and a daily schedule: the tuning loop inside Dagster.

``observability/tuning_report`` reads step statistics from ClickHouse (the ``noetl_clickhouse``
resource the export sensors write through), writes new recommendations to the tuning profiles
(:func:`~noetl_dagster.ai.cli.run_tune`, as ``noetl-dagster tune`` does) and shows, as
materialization metadata, a markdown table of per-step statistics and the new recommendations
plus a PNG chart of durations (p50/p95) and failure rates per step.

Recommendations are **proposed** by default; approving those within bounds is the explicit run
config ``auto_approve: true`` (or ``tuning_definitions(auto_approve=True)`` for the schedule).
Approved entries are compiled in by :class:`~noetl_dagster.ai.TunedTranslator` when the code
location next loads (reload it in the UI, or restart ``dagster dev``).

Example (``definitions.py``)::

    ch = ClickHouseResource()      # one resource object shared with the export sensors
    defs = dg.Definitions.merge(
        load_playbook_definitions("playbooks/", translator=TunedTranslator("tuning/")),
        export_definitions(playbooks="playbooks/", clickhouse=ch),
        tuning_definitions(profiles="tuning/", playbooks="playbooks/", clickhouse=ch),
    )
"""

import os
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field

from ..resources.clickhouse import ClickHouseResource
from .cli import run_tune
from .recommend import TuningBounds
from .report import chart_markdown, chart_png, report_markdown
from .stats import step_stats

TUNING_REPORT_KEY = dg.AssetKey(["observability", "tuning_report"])
TUNING_JOB = "noetl_tuning"
TUNING_SCHEDULE = "noetl_tuning_daily"
#: the resource key of the export sensors (:data:`noetl_dagster.sensors.CLICKHOUSE_KEY`)
CLICKHOUSE_KEY = "noetl_clickhouse"


class TuningConfig(dg.Config):
    """Run config of the tuning report; the default only proposes."""

    auto_approve: bool = Field(default=False, description="write recommendations within bounds as approved "
                                                          "(default: proposed, for a person to approve)")


def tuning_run_config(auto_approve: bool = False, key: dg.AssetKey = TUNING_REPORT_KEY) -> dict[str, Any]:
    """Run config for the tuning job, e.g. ``job.execute_in_process(run_config=tuning_run_config(True))``."""
    return {"ops": {key.to_python_identifier(): {"config": {"auto_approve": auto_approve}}}}


def tuning_report_asset(*, profiles: str | os.PathLike = "tuning", playbooks: str | os.PathLike | None = None,
                        bounds: TuningBounds | None = None, key: dg.AssetKey = TUNING_REPORT_KEY,
                        group_name: str | None = None) -> dg.AssetsDefinition:
    """The tuning report asset over the profiles in ``profiles``; ``playbooks`` (a folder) gives the
    steps' declared ``hardware:``; ``bounds`` the recommender's safety bounds.

    Example::

        tuning_report_asset(profiles="tuning/", bounds=TuningBounds(retry_max_retries=3))
    """
    bounds = bounds or TuningBounds()
    folder = Path(profiles)

    @dg.asset(key=key, group_name=group_name or key.path[0], required_resource_keys={CLICKHOUSE_KEY},
              kinds={"clickhouse"},
              description="Step statistics from ClickHouse step_runs and bounded tuning recommendations "
                          f"(retries, timeouts, resources), written to the profiles in {folder}/.")
    def _tuning_report(context: dg.AssetExecutionContext, config: TuningConfig) -> dg.MaterializeResult:
        resource: ClickHouseResource = getattr(context.resources, CLICKHOUSE_KEY)
        sink = resource.sink()
        stats = step_stats(sink)
        added, written = run_tune(sink, folder, apply=config.auto_approve, bounds=bounds,
                                  playbooks_dir=playbooks, stats=stats)
        approved = sum(1 for r in added if config.auto_approve and r.within_bounds)
        context.log.info(f"{len(stats)} step(s) of history; {len(added)} new recommendation(s), {approved} "
                         f"approved; wrote {', '.join(map(str, written)) or 'nothing'}")
        return dg.MaterializeResult(metadata={
            "report": dg.MetadataValue.md(report_markdown(stats, added, approved=config.auto_approve)),
            "chart": dg.MetadataValue.md(chart_markdown(chart_png(stats))),
            "steps": dg.MetadataValue.int(len(stats)),
            "playbooks": dg.MetadataValue.int(len({s.playbook for s in stats})),
            "new_recommendations": dg.MetadataValue.int(len(added)),
            "approved": dg.MetadataValue.int(approved),
            "auto_approve": dg.MetadataValue.bool(config.auto_approve),
            "profiles_written": dg.MetadataValue.json([str(p) for p in written]),
            "profiles_folder": dg.MetadataValue.path(str(folder)),
        })

    return _tuning_report


def tuning_definitions(*, profiles: str | os.PathLike = "tuning", playbooks: str | os.PathLike | None = None,
                       bounds: TuningBounds | None = None, clickhouse: ClickHouseResource | None = None,
                       cron_schedule: str = "0 6 * * *", execution_timezone: str = "UTC",
                       auto_approve: bool = False,
                       default_status: dg.DefaultScheduleStatus = dg.DefaultScheduleStatus.RUNNING
                       ) -> dg.Definitions:
    """The tuning report asset, the ``noetl_tuning`` job and its ``noetl_tuning_daily`` schedule.

    ``clickhouse`` is added as the ``noetl_clickhouse`` resource when given; otherwise the
    definitions this is merged with provide it (:func:`~noetl_dagster.sensors.export_definitions`
    does). Pass the same object to both when merging. ``auto_approve`` applies to scheduled runs.

    Example::

        tuning_definitions(profiles="tuning/", playbooks="playbooks/", cron_schedule="0 */6 * * *")
    """
    asset = tuning_report_asset(profiles=profiles, playbooks=playbooks, bounds=bounds)
    job = dg.define_asset_job(TUNING_JOB, selection=dg.AssetSelection.assets(asset),
                              description="Learn retries, timeouts and resources from run history "
                                          "(ClickHouse step_runs) and update the tuning profiles.")
    schedule = dg.ScheduleDefinition(name=TUNING_SCHEDULE, job=job, cron_schedule=cron_schedule,
                                     execution_timezone=execution_timezone, default_status=default_status,
                                     run_config=tuning_run_config(auto_approve, asset.key))
    resources = {CLICKHOUSE_KEY: clickhouse} if clickhouse is not None else {}
    return dg.Definitions(assets=[asset], jobs=[job], schedules=[schedule], resources=resources)


__all__ = ["CLICKHOUSE_KEY", "TUNING_JOB", "TUNING_REPORT_KEY", "TUNING_SCHEDULE", "TuningConfig",
           "tuning_definitions", "tuning_report_asset", "tuning_run_config"]
