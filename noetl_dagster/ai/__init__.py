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

from __future__ import annotations

import importlib
from typing import Any

# eager: the submodule `recommend` would otherwise shadow the function of that name once imported
from noetl_dagster.ai.recommend import NO_RETRY, Recommendation, TuningBounds, markdown_table, recommend

#: public name -> the module of this package that defines it (loaded on first use: importing
#: ``noetl_dagster.ai`` for the translator does not import the report's charts or ClickHouse)
_EXPORTS = {
    "ProfileEntry": ".profiles",
    "STEP_STATS_KEY": ".assets",
    "StepStats": ".stats",
    "TIMEOUT_TAG": ".translator",
    "TUNING_JOB": ".assets",
    "TUNING_REPORT_KEY": ".assets",
    "TUNING_SCHEDULE": ".assets",
    "TunedTranslator": ".translator",
    "TuningConfig": ".assets",
    "TuningProfile": ".profiles",
    "add_similar_failures": ".evidence",
    "apply_recommendations": ".profiles",
    "chart_markdown": ".report",
    "chart_png": ".report",
    "load_profile": ".profiles",
    "load_profiles": ".profiles",
    "report_markdown": ".report",
    "run_tune": ".cli",
    "save_profile": ".profiles",
    "similar_failures": ".evidence",
    "similar_failures_markdown": ".report",
    "stats_table": ".report",
    "stats_table_metadata": ".assets",
    "step_stats": ".stats",
    "step_stats_asset": ".assets",
    "tuning_definitions": ".assets",
    "tuning_report_asset": ".assets",
    "tuning_run_config": ".assets",
}

__all__ = sorted([*_EXPORTS, "NO_RETRY", "Recommendation", "TuningBounds", "markdown_table", "recommend"])


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
