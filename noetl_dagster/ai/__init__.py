"""AI tuning: learn retry policies, op timeouts and resources from run history, close the loop at compile time.

``step_runs`` (ClickHouse) --:func:`step_stats`--> :class:`StepStats` --:func:`recommend`-->
:class:`Recommendation` --> YAML profiles in ``tuning/`` (proposed | approved | rejected) -->
:class:`TunedTranslator` compiles the approved entries into the jobs. In Dagster,
:func:`tuning_definitions` adds the ``observability/tuning_report`` asset (statistics and
recommendations as a markdown table and a PNG chart), its ``noetl_tuning`` job and a daily schedule.
"""

from .assets import (TUNING_JOB, TUNING_REPORT_KEY, TUNING_SCHEDULE, TuningConfig, tuning_definitions,
                     tuning_report_asset, tuning_run_config)
from .cli import run_tune
from .profiles import (ProfileEntry, TuningProfile, apply_recommendations, load_profile, load_profiles,
                       save_profile)
from .recommend import Recommendation, TuningBounds, markdown_table, recommend
from .report import chart_markdown, chart_png, report_markdown, stats_table
from .stats import StepStats, step_stats
from .translator import TIMEOUT_TAG, TunedTranslator

__all__ = ["ProfileEntry", "Recommendation", "StepStats", "TIMEOUT_TAG", "TUNING_JOB", "TUNING_REPORT_KEY",
           "TUNING_SCHEDULE", "TunedTranslator", "TuningBounds", "TuningConfig", "TuningProfile",
           "apply_recommendations", "chart_markdown", "chart_png", "load_profile", "load_profiles", "markdown_table",
           "recommend", "report_markdown", "run_tune", "save_profile", "stats_table", "step_stats",
           "tuning_definitions", "tuning_report_asset", "tuning_run_config"]
