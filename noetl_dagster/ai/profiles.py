"""Versioned, human-readable YAML tuning profiles: one file per playbook in a folder.

``tuning/<domain>__<name>.yaml`` (the job name)::

    playbook: risk/score_application
    version: 3                     # bumped by every save that changed something
    steps:
      fetch_bureau:
        - parameter: retry_policy
          value: {max_retries: 3, delay: 1.0, backoff: exponential}
          status: proposed         # proposed | approved | rejected (edit by hand to approve)
          evidence: {transient_failures: 12, run_ids: [...]}
          expected_effect: final failure rate 30.0% -> 0.8%
      enrich:
        - parameter: loop_chunk_size     # also: timeout_seconds, resources, loop_concurrency
          value: 4
          status: approved

The latest ``approved`` entry of a parameter is what :class:`~noetl_dagster.ai.TunedTranslator`
compiles in. A malformed profile is logged (file and reason) and ignored; loading never raises.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from noetl_dagster.planner import op_safe

log = logging.getLogger("noetl_dagster.ai")

STATUSES = ("proposed", "approved", "rejected")
PARAMETERS = ("retry_policy", "timeout_seconds", "resources", "loop_chunk_size", "loop_concurrency")


@dataclass
class ProfileEntry:
    parameter: str
    value: Any
    status: str = "proposed"
    evidence: dict[str, Any] = field(default_factory=dict)
    expected_effect: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"parameter": self.parameter, "value": self.value, "status": self.status,
                "evidence": self.evidence, "expected_effect": self.expected_effect}


@dataclass
class TuningProfile:
    playbook: str
    version: int = 0
    steps: dict[str, list[ProfileEntry]] = field(default_factory=dict)

    # -- reading ---------------------------------------------------------------------------
    def entries(self, step: str, parameter: str | None = None) -> list[ProfileEntry]:
        return [e for e in self.steps.get(step, []) if parameter is None or e.parameter == parameter]

    def approved(self, step: str, parameter: str) -> Any:
        """The latest approved value of ``parameter`` for ``step`` (None if none)."""
        for entry in reversed(self.entries(step, parameter)):
            if entry.status == "approved":
                return entry.value
        return None

    def holds(self, step: str, parameter: str, value: Any, statuses: tuple[str, ...] = STATUSES) -> bool:
        """True if an entry with one of ``statuses`` (default: any) already has exactly this value."""
        return any(e.value == value and e.status in statuses for e in self.entries(step, parameter))

    # -- writing ---------------------------------------------------------------------------
    def add(self, step: str, entry: ProfileEntry) -> bool:
        """Add an entry unless an identical value is already held; a still-``proposed`` entry of
        the same parameter is replaced (superseded by newer evidence); an identical ``proposed``
        entry is promoted when ``entry`` is approved. Returns True if the profile changed."""
        for held in self.entries(step, entry.parameter):
            if held.value == entry.value:
                if held.status == "proposed" and entry.status == "approved":
                    held.status, held.evidence, held.expected_effect = "approved", entry.evidence, entry.expected_effect
                    return True
                return False
        entries = self.steps.setdefault(step, [])
        entries[:] = [e for e in entries if not (e.parameter == entry.parameter and e.status == "proposed")]
        entries.append(entry)
        return True

    def to_dict(self) -> dict[str, Any]:
        return {"playbook": self.playbook, "version": self.version,
                "steps": {s: [e.to_dict() for e in es] for s, es in sorted(self.steps.items())}}


class ProfileError(ValueError):
    pass


def profile_filename(playbook: str) -> str:
    """``risk/score_application`` -> ``risk__score_application.yaml``."""
    return op_safe(playbook) + ".yaml"


def parse_profile(data: Any) -> TuningProfile:
    """A profile from its YAML data; :class:`ProfileError` names what is wrong."""
    if not isinstance(data, Mapping):
        raise ProfileError("top level must be a mapping with playbook, version, steps")
    playbook = data.get("playbook")
    if not isinstance(playbook, str) or not playbook:
        raise ProfileError("`playbook` must be a non-empty string (the playbook's metadata.path)")
    version = data.get("version", 0)
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise ProfileError(f"`version` must be a non-negative integer, got {version!r}")
    steps = data.get("steps") or {}
    if not isinstance(steps, Mapping):
        raise ProfileError("`steps` must map step names to lists of entries")
    profile = TuningProfile(playbook, version)
    for step, entries in steps.items():
        if not isinstance(entries, list):
            raise ProfileError(f"steps.{step} must be a list of entries")
        out = []
        for i, raw in enumerate(entries):
            where = f"steps.{step}[{i}]"
            if not isinstance(raw, Mapping):
                raise ProfileError(f"{where} must be a mapping")
            parameter, status = raw.get("parameter"), raw.get("status", "proposed")
            if parameter not in PARAMETERS:
                raise ProfileError(f"{where}.parameter must be one of {', '.join(PARAMETERS)}, got {parameter!r}")
            if status not in STATUSES:
                raise ProfileError(f"{where}.status must be one of {', '.join(STATUSES)}, got {status!r}")
            if "value" not in raw:
                raise ProfileError(f"{where} has no value")
            _check_value(parameter, raw["value"], where)
            evidence = raw.get("evidence") or {}
            if not isinstance(evidence, Mapping):
                raise ProfileError(f"{where}.evidence must be a mapping")
            out.append(ProfileEntry(parameter, raw["value"], status, dict(evidence), str(raw.get("expected_effect") or "")))
        profile.steps[str(step)] = out
    return profile


def _check_value(parameter: str, value: Any, where: str) -> None:
    if parameter == "retry_policy":
        if not isinstance(value, Mapping) or not isinstance(value.get("max_retries"), int) or value["max_retries"] < 0:
            raise ProfileError(f"{where}.value must be {{max_retries: int >= 0, delay: seconds, backoff: ...}}")
        if value.get("backoff") not in (None, "linear", "exponential"):
            raise ProfileError(f"{where}.value.backoff must be linear, exponential or null")
        if not isinstance(value.get("delay", 0), (int, float)):
            raise ProfileError(f"{where}.value.delay must be a number of seconds")
    elif parameter == "timeout_seconds":
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
            raise ProfileError(f"{where}.value must be a positive number of seconds")
    elif parameter == "resources":
        if not isinstance(value, Mapping) or not set(value) <= {"requests", "limits"} or not all(
                isinstance(v, Mapping) for v in value.values()):
            raise ProfileError(f"{where}.value must be {{requests: {{cpu, memory}}, limits: {{memory}}}}")
    elif parameter in ("loop_chunk_size", "loop_concurrency"):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            what = "items per body op" if parameter == "loop_chunk_size" else "body ops at once"
            raise ProfileError(f"{where}.value must be a whole number >= 1 ({what}), got {value!r}")


def load_profile(path: str | os.PathLike) -> TuningProfile | None:
    """The profile at ``path``; None (with an error logged naming the file and reason) if malformed."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
        return parse_profile(data)
    except (OSError, yaml.YAMLError, ProfileError) as exc:
        reason = str(exc).replace("\n", " ")
        log.error("tuning profile %s is malformed and ignored: %s", path, reason)
        return None


def load_profiles(folder: str | os.PathLike) -> dict[str, TuningProfile]:
    """Every well-formed ``*.yaml`` profile in ``folder``, by playbook path (missing folder: empty)."""
    out: dict[str, TuningProfile] = {}
    root = Path(folder)
    if not root.is_dir():
        return out
    for path in sorted([*root.glob("*.yaml"), *root.glob("*.yml")]):
        profile = load_profile(path)
        if profile is not None:
            if profile.playbook in out:
                log.error("tuning profile %s is ignored: playbook %s already has a profile", path, profile.playbook)
                continue
            out[profile.playbook] = profile
    return out


def save_profile(profile: TuningProfile, folder: str | os.PathLike) -> Path:
    """Write the profile as ``<folder>/<domain>__<name>.yaml`` (atomically); returns the path."""
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    path = root / profile_filename(profile.playbook)
    tmp = path.with_suffix(".yaml.tmp")
    tmp.write_text(yaml.safe_dump(profile.to_dict(), sort_keys=False, default_flow_style=False), encoding="utf-8")
    os.replace(tmp, path)
    return path


def apply_recommendations(profiles: dict[str, TuningProfile], recommendations: Iterable[Any],
                          auto_approve: bool = False) -> list[Any]:
    """Write recommendations into ``profiles`` (created as needed) as ``proposed`` entries, or
    ``approved`` with ``auto_approve`` when the recommendation is within bounds. Bumps each changed
    profile's version; returns the recommendations actually added."""
    added = []
    changed: set[str] = set()
    for rec in recommendations:
        profile = profiles.setdefault(rec.playbook, TuningProfile(rec.playbook))
        status = "approved" if auto_approve and rec.within_bounds else "proposed"
        entry = ProfileEntry(rec.parameter, rec.value, status, dict(rec.evidence), rec.expected_effect)
        if profile.add(rec.step, entry):
            added.append(rec)
            changed.add(rec.playbook)
    for playbook in changed:
        profiles[playbook].version += 1
    return added


__all__ = ["PARAMETERS", "STATUSES", "ProfileEntry", "ProfileError", "TuningProfile", "apply_recommendations",
           "load_profile", "load_profiles", "parse_profile", "profile_filename", "save_profile"]
