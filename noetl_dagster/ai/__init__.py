"""AI tuning: learn retry policies, op timeouts and resources from run history, close the loop at compile time.

``step_runs`` (ClickHouse) --:func:`step_stats`--> :class:`StepStats` --:func:`recommend`-->
:class:`Recommendation` --> YAML profiles in ``tuning/`` (proposed | approved | rejected) -->
:class:`TunedTranslator` compiles the approved entries into the jobs.
"""

from .profiles import (ProfileEntry, TuningProfile, apply_recommendations, load_profile, load_profiles,
                       save_profile)
from .recommend import Recommendation, TuningBounds, markdown_table, recommend
from .stats import StepStats, step_stats
from .translator import TIMEOUT_TAG, TunedTranslator

__all__ = ["ProfileEntry", "Recommendation", "StepStats", "TIMEOUT_TAG", "TunedTranslator", "TuningBounds",
           "TuningProfile", "apply_recommendations", "load_profile", "load_profiles", "markdown_table", "recommend",
           "save_profile", "step_stats"]
