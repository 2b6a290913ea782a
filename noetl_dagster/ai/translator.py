"""``TunedTranslator``: compiles approved tuning-profile entries into the Dagster job.

* ``retry_policy`` -> the op's ``dagster.RetryPolicy`` (``max_retries``, ``delay``, ``backoff``);
  ``max_retries: 0`` (the *no retry* of deterministic failures) -> none;
* ``resources`` -> merged into the step's ``dagster-k8s/config`` tag
  (``container_config.resources``), over what the ``hardware:`` extension declares;
* ``timeout_seconds`` -> :meth:`get_op_timeout`, which the compiled op enforces
  (:mod:`noetl_dagster.runtime.deadline`; Dagster itself bounds whole runs only) and shows as the
  op tag ``noetl/timeout_seconds``;
* ``loop_chunk_size`` -> :meth:`get_loop_chunk_size` (items per body op of a parallel loop);
* ``loop_concurrency`` -> :meth:`get_loop_concurrency` (the executor's ``tag_concurrency_limits``).

Only ``approved`` entries count; ``proposed`` and ``rejected`` ones change nothing.

Example::

    from noetl_dagster import build_job, load_playbook
    from noetl_dagster.ai import TunedTranslator

    job = build_job(load_playbook("playbooks/risk/score_application.yaml"), TunedTranslator("tuning/"))
"""

from __future__ import annotations

import copy
import os
from typing import Any

import dagster as dg

from noetl_dagster.playbook.models import Playbook, Step
from noetl_dagster.contract import TIMEOUT_TAG
from noetl_dagster.translator.translator import PlaybookTranslator
from noetl_dagster.ai.profiles import TuningProfile, load_profiles

PROFILE_VERSION_TAG = "noetl/tuning_profile_version"

_BACKOFF = {"exponential": dg.Backoff.EXPONENTIAL, "linear": dg.Backoff.LINEAR}


class TunedTranslator(PlaybookTranslator):
    """A :class:`PlaybookTranslator` that applies approved entries of the profiles in ``folder``."""

    def __init__(self, folder: str | os.PathLike = "tuning", profiles: dict[str, TuningProfile] | None = None) -> None:
        self.folder = folder
        self._profiles = profiles

    @property
    def profiles(self) -> dict[str, TuningProfile]:
        if self._profiles is None:
            self._profiles = load_profiles(self.folder)
        return self._profiles

    def reload(self) -> None:
        self._profiles = None

    def _approved(self, playbook: Playbook, step: Step, parameter: str) -> Any:
        profile = self.profiles.get(playbook.metadata.catalog_path)
        return profile.approved(step.step, parameter) if profile else None

    def get_retry_policy(self, playbook: Playbook, step: Step) -> dg.RetryPolicy | None:
        value = self._approved(playbook, step, "retry_policy")
        if not value:
            return super().get_retry_policy(playbook, step)
        if not value.get("max_retries"):  # an approved "no retry": deterministic failures
            return None
        return dg.RetryPolicy(max_retries=int(value["max_retries"]), delay=value.get("delay") or None,
                              backoff=_BACKOFF.get(value.get("backoff") or ""))

    def get_k8s_config(self, playbook: Playbook, step: Step) -> dict[str, Any] | None:
        config = copy.deepcopy(super().get_k8s_config(playbook, step) or {})
        value = self._approved(playbook, step, "resources")
        if value:
            resources = config.setdefault("container_config", {}).setdefault("resources", {})
            for kind in ("requests", "limits"):
                if value.get(kind):
                    resources.setdefault(kind, {}).update({str(k): str(v) for k, v in value[kind].items()})
        return config or None

    def get_loop_chunk_size(self, playbook: Playbook, step: Step) -> int:
        value = self._approved(playbook, step, "loop_chunk_size")
        return int(value) if value else super().get_loop_chunk_size(playbook, step)

    def get_loop_concurrency(self, playbook: Playbook, step: Step) -> int | None:
        value = self._approved(playbook, step, "loop_concurrency")
        return int(value) if value else super().get_loop_concurrency(playbook, step)

    def get_op_timeout(self, playbook: Playbook, step: Step) -> float | None:
        timeout = self._approved(playbook, step, "timeout_seconds")
        return int(timeout) if timeout else super().get_op_timeout(playbook, step)

    def get_op_tags(self, playbook: Playbook, step: Step) -> dict[str, str]:
        tags = super().get_op_tags(playbook, step)
        profile = self.profiles.get(playbook.metadata.catalog_path)
        if profile is not None and profile.steps.get(step.step):
            tags[PROFILE_VERSION_TAG] = str(profile.version)
        return tags


__all__ = ["PROFILE_VERSION_TAG", "TIMEOUT_TAG", "TunedTranslator"]
