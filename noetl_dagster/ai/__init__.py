"""AI tuning: learn retry policies, op timeouts, resources and parallel loops' chunk size and
concurrency from run history, close the loop at compile time.

``step_runs`` (ClickHouse) --:func:`step_stats`--> :class:`StepStats` --:func:`recommend`-->
:class:`Recommendation` (+ similar past failures from Qdrant, :func:`add_similar_failures`) -->
YAML profiles in ``tuning/`` (proposed | approved | rejected) --> :class:`TunedTranslator`
compiles the approved entries into the jobs. In Dagster, :func:`tuning_definitions` adds the
``observability/step_stats`` asset (statistics as a table) feeding ``observability/tuning_report``
(statistics and recommendations as a markdown table and a PNG chart), their ``noetl_tuning`` job
and a daily schedule.
"""

from .assets import (STEP_STATS_KEY, TUNING_JOB, TUNING_REPORT_KEY, TUNING_SCHEDULE, TuningConfig,
                     stats_table_metadata, step_stats_asset, tuning_definitions, tuning_report_asset,
                     tuning_run_config)
from .cli import run_tune
from .evidence import add_similar_failures, similar_failures
from .profiles import (ProfileEntry, TuningProfile, apply_recommendations, load_profile, load_profiles,
                       save_profile)
from .recommend import NO_RETRY, Recommendation, TuningBounds, markdown_table, recommend
from .report import chart_markdown, chart_png, report_markdown, similar_failures_markdown, stats_table
from .stats import StepStats, step_stats
from .translator import TIMEOUT_TAG, TunedTranslator

__all__ = ["NO_RETRY", "ProfileEntry", "Recommendation", "STEP_STATS_KEY", "StepStats", "TIMEOUT_TAG", "TUNING_JOB",
           "TUNING_REPORT_KEY", "TUNING_SCHEDULE", "TunedTranslator", "TuningBounds", "TuningConfig",
           "TuningProfile", "add_similar_failures", "apply_recommendations", "chart_markdown", "chart_png",
           "load_profile", "load_profiles", "markdown_table", "recommend", "report_markdown", "run_tune",
           "save_profile", "similar_failures", "similar_failures_markdown", "stats_table", "stats_table_metadata",
           "step_stats", "step_stats_asset", "tuning_definitions", "tuning_report_asset", "tuning_run_config"]
