"""Recommendations from step statistics: retry policies, op timeouts, Kubernetes resources, loop chunking.

Pure: ``recommend(stats, bounds, current_profile)`` reads no history and writes nothing. Every
recommendation carries its evidence (numbers, run ids) and expected effect, respects
:class:`TuningBounds`, and is left out when the profile already holds the same value (so a second
pass over unchanged history proposes nothing new).

* **retry_policy** for transient failures (failed attempts that then succeeded on retry, or
  intermittent final failures of a step that succeeds in most runs); for deterministic ones
  (retries exhausted, or the step never succeeds) explicitly none (:data:`NO_RETRY`, flagged
  ``deterministic``). ``max_retries`` is the smallest n with
  ``p^(n+1) <= retry_target_failure_rate`` (p = the step's attempt failure rate), at least what
  history needed to recover.
* **timeout_seconds** from the duration tail: ``p99 x timeout_headroom`` (compiled as the op tag
  ``noetl/timeout_seconds``).
* **resources** (Kubernetes requests/limits): CPU from ``p95(CPU seconds / wall seconds) x
  cpu_headroom``, memory from ``p99 peak RSS x memory_headroom`` - never below that floor.
  A step whose declared hardware is ``over_provision_factor`` x what it uses is flagged
  ``cheaper_hardware_candidate``.
* **loop_chunk_size** (parallel loops): when a body op's per-item p50 is below
  ``loop_chunk_item_max_seconds`` and a run has at least ``loop_chunk_min_items`` items, Dagster's
  per-op overhead dominates: chunk so a body op runs about ``loop_chunk_target_seconds``
  (bounded by the items per run, so the loop keeps at least its concurrency limit of ops, and by
  an approved timeout: ``chunk x per-item p99 x timeout_headroom`` fits in it). Per-item
  durations of chunked history are a chunk op's duration divided by its items.
* **loop_concurrency** (parallel loops, not under the in-process executor): IO-bound body ops
  (p95 cores below ``loop_io_bound_cores``) may all run at once, up to ``loop_concurrency_max``;
  CPU-bound ones get ``loop_cores_available / cores per op``. Compiled as a
  ``tag_concurrency_limits`` entry of the multiprocess/k8s executor.

Each numeric change is at most ``max_change_factor`` x the current value per iteration (the
memory floor wins over that bound: it is the safety invariant).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from noetl_dagster.ai.profiles import TuningProfile
from noetl_dagster.ai.stats import StepStats


@dataclass(frozen=True)
class TuningBounds:
    """Safety bounds and knobs of the recommender (all configuration)."""

    min_runs: int = 5                       # fewer runs of a step: no recommendation
    # retries
    retry_min_retries: int = 1
    retry_max_retries: int = 5
    retry_delay_seconds: float = 1.0
    retry_min_delay_seconds: float = 0.1
    retry_max_delay_seconds: float = 300.0
    retry_backoff: str | None = "exponential"   # exponential | linear | None
    retry_target_failure_rate: float = 0.01
    max_intermittent_rate: float = 0.5      # more final failures than this (no retries tried): not flaky
    # timeouts
    timeout_headroom: float = 2.0
    timeout_min_seconds: int = 30
    timeout_max_seconds: int = 6 * 3600
    # resources
    cpu_headroom: float = 1.5
    cpu_min_cores: float = 0.1
    cpu_max_cores: float = 16.0
    memory_headroom: float = 1.25           # request >= p99 peak x this, always
    memory_limit_headroom: float = 1.5
    memory_min_mb: int = 128
    memory_max_mb: int = 64 * 1024
    over_provision_factor: float = 4.0
    # parallel loops: chunk size and concurrency of the body ops
    loop_chunk_item_max_seconds: float = 0.5    # per-item p50 below this: op overhead dominates, chunk
    loop_chunk_target_seconds: float = 2.0      # a chunked body op should run about this long
    loop_chunk_min_items: int = 20              # fewer items per run (p50): leave the loop alone
    loop_chunk_min: int = 1
    loop_chunk_max: int = 1000
    loop_io_bound_cores: float = 0.25           # p95 cores of a body op below this: IO-bound
    loop_concurrency_min: int = 1
    loop_concurrency_max: int = 32
    loop_cores_available: float = float(os.cpu_count() or 1)  # cores a CPU-bound loop may use
    loop_min_change: float = 1.5                # smaller changes of a loop setting are noise: none
    # iteration
    max_change_factor: float = 4.0          # per step, per parameter, per iteration

    def memory_floor_mb(self, peak_p99_mb: float) -> int:
        return _ceil_to(peak_p99_mb * self.memory_headroom, 64)


@dataclass(frozen=True)
class Recommendation:
    playbook: str
    step: str
    parameter: str                  # retry_policy | timeout_seconds | resources | loop_chunk_size | loop_concurrency
    value: Any
    evidence: dict[str, Any] = field(default_factory=dict)
    expected_effect: str = ""
    within_bounds: bool = True      # False: the evidence asked for more than a hard bound allows
    flags: tuple[str, ...] = ()

    def summary(self) -> str:
        v = self.value
        if self.parameter == "retry_policy":
            if not v["max_retries"]:
                return "no retry"
            return f"max_retries={v['max_retries']}, delay={v['delay']}s, backoff={v['backoff']}"
        if self.parameter == "timeout_seconds":
            return f"{v}s"
        if self.parameter == "resources":
            parts = [f"{kind} " + ", ".join(f"{k}={q}" for k, q in sorted(vals.items())) for kind, vals in v.items()]
            return "; ".join(parts)
        if self.parameter == "loop_chunk_size":
            return f"{v} items per op"
        if self.parameter == "loop_concurrency":
            return f"at most {v} ops at once"
        return str(v)


# -- quantities -------------------------------------------------------------------------------
_MEM_UNITS = {"": 1 / 2**20, "k": 1e3 / 2**20, "m": 1e6 / 2**20, "g": 1e9 / 2**20, "t": 1e12 / 2**20,
              "ki": 1 / 1024, "mi": 1.0, "gi": 1024.0, "ti": 1024.0**2}


def parse_memory_mb(text: Any) -> float | None:
    """``8Gi`` -> 8192.0, ``512Mi`` -> 512.0, ``1G`` -> 953.67; None if not a quantity."""
    if text is None:
        return None
    m = re.fullmatch(r"\s*([0-9.]+)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _MEM_UNITS:
        return None
    return float(m.group(1)) * _MEM_UNITS[m.group(2).lower()]


def parse_cpu(text: Any) -> float | None:
    """``500m`` -> 0.5, ``2`` -> 2.0."""
    if text is None:
        return None
    m = re.fullmatch(r"\s*([0-9.]+)\s*(m?)\s*", str(text))
    if not m:
        return None
    return float(m.group(1)) / (1000 if m.group(2) else 1)


def format_memory(mb: float) -> str:
    return f"{int(mb)}Mi"


def format_cpu(cores: float) -> str:
    return f"{int(round(cores * 1000))}m"


def _ceil_to(value: float, step: int) -> int:
    return int(math.ceil(value / step) * step)


def _limit_change(target: float, current: float | None, factor: float) -> float:
    if not current or current <= 0 or factor <= 1:
        return target
    return min(max(target, current / factor), current * factor)


def _r(x: float | None, digits: int = 3) -> float | None:
    return None if x is None else round(float(x), digits)


# -- the recommender --------------------------------------------------------------------------
def _profile_for(current_profile: Any, playbook: str) -> TuningProfile | None:
    if current_profile is None:
        return None
    if isinstance(current_profile, TuningProfile):
        return current_profile if current_profile.playbook == playbook else None
    if isinstance(current_profile, Mapping):
        return current_profile.get(playbook)
    return None


def recommend(stats: Sequence[StepStats], bounds: TuningBounds | None = None, current_profile: Any = None,
              declared: Mapping[tuple[str, str], Mapping[str, Any]] | None = None,
              skip_statuses: tuple[str, ...] = ("proposed", "approved", "rejected"),
              loops: Mapping[tuple[str, str], Mapping[str, Any]] | None = None) -> list[Recommendation]:
    """Recommendations for every step with enough history, minus what the profile already holds.

    ``current_profile``: a :class:`TuningProfile`, a mapping playbook -> profile, or None.
    ``declared``: ``{(playbook, step): hardware}`` - the steps' ``hardware:`` extension (the
    current resources when the profile has no approved ones). ``skip_statuses``: held entries with
    these statuses suppress an identical recommendation (``tune --apply`` passes approved and
    rejected, so still-pending proposals the evidence supports can be approved). ``loops``:
    ``{(playbook, step): {chunk_size, max_in_flight, executor}}`` of the parallel loops as the
    playbooks declare them (the current values when the profile has no approved ones; without
    it the chunk size history ran with).
    """
    bounds = bounds or TuningBounds()
    out: list[Recommendation] = []
    for s in stats:
        if s.runs < bounds.min_runs:
            continue
        profile = _profile_for(current_profile, s.playbook)
        hardware = (declared or {}).get((s.playbook, s.step)) or {}
        loop = (loops or {}).get((s.playbook, s.step)) or {}
        chunk = _loop_chunk(s, bounds, profile, loop)
        for rec in (_retry(s, bounds), _timeout(s, bounds, profile), _resources(s, bounds, profile, hardware),
                    chunk, _loop_concurrency(s, bounds, profile, loop, chunk)):
            if rec is None:
                continue
            if profile is not None and profile.holds(s.step, rec.parameter, rec.value, skip_statuses):
                continue
            out.append(rec)
    return out


#: the retry policy recommended for deterministic failures: none (retrying only delays the failure)
NO_RETRY = {"max_retries": 0, "delay": 0.0, "backoff": None}


def _retry(s: StepStats, b: TuningBounds) -> Recommendation | None:
    if s.failed_executions == 0 and s.transient_failures == 0:
        return None
    if s.successes == 0 or s.deterministic_failures > s.recovered_executions:
        return _no_retry(s) if s.deterministic_failures else None
    recovered_by_retry = s.transient_failures > 0
    flaky = s.intermittent_failures > 0 and s.failure_rate <= b.max_intermittent_rate
    if not (recovered_by_retry or flaky):
        return None
    p = min(max(s.attempt_failure_rate, 1e-6), 0.99)
    needed = math.ceil(math.log(b.retry_target_failure_rate) / math.log(p)) - 1
    needed = max(needed, s.max_recovery_attempt - 1, 1)
    n = min(max(needed, b.retry_min_retries), b.retry_max_retries)
    delay = min(max(b.retry_delay_seconds, b.retry_min_delay_seconds), b.retry_max_delay_seconds)
    value = {"max_retries": int(n), "delay": float(delay), "backoff": b.retry_backoff}
    expected = p ** (n + 1)
    evidence = {"runs": s.runs, "attempts": s.attempts, "attempt_failure_rate": _r(p, 4),
                "final_failure_rate": _r(s.failure_rate, 4), "transient_failures": s.transient_failures,
                "recovered_executions": s.recovered_executions, "intermittent_failures": s.intermittent_failures,
                "deterministic_failures": s.deterministic_failures, "max_recovery_attempt": s.max_recovery_attempt,
                "run_ids": list(s.transient_run_ids or s.failed_run_ids)}
    effect = (f"transient failures retried: final failure rate {s.failure_rate:.1%} -> about {expected:.2%} "
              f"(per-attempt failure rate {p:.1%}, up to {n} retries)")
    return Recommendation(s.playbook, s.step, "retry_policy", value, evidence, effect, needed <= b.retry_max_retries)


def _no_retry(s: StepStats) -> Recommendation:
    why = ("it never succeeded" if s.successes == 0
           else f"{s.exhausted_executions} execution(s) still failed after retries")
    evidence = {"runs": s.runs, "attempts": s.attempts, "successes": s.successes,
                "final_failure_rate": _r(s.failure_rate, 4), "deterministic_failures": s.deterministic_failures,
                "exhausted_executions": s.exhausted_executions, "recovered_executions": s.recovered_executions,
                "run_ids": list(s.failed_run_ids)}
    effect = f"no retry: the failures are deterministic ({why}); fix the cause instead of retrying"
    return Recommendation(s.playbook, s.step, "retry_policy", dict(NO_RETRY), evidence, effect, True, ("deterministic",))


def _timeout(s: StepStats, b: TuningBounds, profile: TuningProfile | None) -> Recommendation | None:
    if not s.p99_ms or s.successes < b.min_runs:
        return None
    raw = math.ceil(s.p99_ms / 1000.0 * b.timeout_headroom)
    target = min(max(raw, b.timeout_min_seconds), b.timeout_max_seconds)
    current = profile.approved(s.step, "timeout_seconds") if profile else None
    value = int(math.ceil(_limit_change(target, current, b.max_change_factor)))
    value = min(max(value, b.timeout_min_seconds), b.timeout_max_seconds)
    tail = s.tail_ratio
    flags = ("long_tail",) if tail and tail >= 3 else ()
    evidence = {"successes": s.successes, "p50_ms": _r(s.p50_ms, 1), "p95_ms": _r(s.p95_ms, 1),
                "p99_ms": _r(s.p99_ms, 1), "max_ms": _r(s.max_ms, 1), "tail_ratio_p99_p50": _r(tail, 2),
                "headroom": b.timeout_headroom}
    effect = (f"a hung attempt is stopped after {value}s instead of running unbounded; "
              f"p99 {s.p99_ms / 1000:.1f}s leaves x{value / (s.p99_ms / 1000):.1f} headroom")
    return Recommendation(s.playbook, s.step, "timeout_seconds", value, evidence, effect,
                          raw <= b.timeout_max_seconds, flags)


def _resources(s: StepStats, b: TuningBounds, profile: TuningProfile | None,
               hardware: Mapping[str, Any]) -> Recommendation | None:
    if s.peak_mb_p99 is None:
        return None
    approved = (profile.approved(s.step, "resources") if profile else None) or {}
    requests = approved.get("requests") or {}
    cur_mem = parse_memory_mb(requests.get("memory") or hardware.get("memory"))
    cur_cpu = parse_cpu(requests.get("cpu") or hardware.get("cpu"))
    within = True
    # memory: the floor is absolute
    floor = b.memory_floor_mb(s.peak_mb_p99)
    mem = _limit_change(max(floor, b.memory_min_mb), cur_mem, b.max_change_factor)
    mem = max(_ceil_to(min(mem, b.memory_max_mb), 64), floor)
    if floor > b.memory_max_mb:
        within = False
    limit = max(mem, _ceil_to(s.peak_mb_p99 * b.memory_limit_headroom, 64))
    limit = max(min(limit, b.memory_max_mb), mem)
    value: dict[str, Any] = {"requests": {"memory": format_memory(mem)}, "limits": {"memory": format_memory(limit)}}
    cpu = None
    if s.cores_p95 is not None:
        raw_cpu = s.cores_p95 * b.cpu_headroom
        within = within and raw_cpu <= b.cpu_max_cores
        cpu = min(max(raw_cpu, b.cpu_min_cores), b.cpu_max_cores)
        cpu = _limit_change(cpu, cur_cpu, b.max_change_factor)
        cpu = min(max(math.ceil(cpu * 20) / 20, b.cpu_min_cores), b.cpu_max_cores)  # 50m steps
        value["requests"]["cpu"] = format_cpu(cpu)
    over = bool((cur_mem and cur_mem >= b.over_provision_factor * s.peak_mb_p99)
                or (cur_cpu and s.cores_p95 and cur_cpu >= b.over_provision_factor * s.cores_p95))
    flags = ("cheaper_hardware_candidate",) if over else ()
    evidence = {"runs": s.runs, "peak_mb_p50": _r(s.peak_mb_p50, 1), "peak_mb_p99": _r(s.peak_mb_p99, 1),
                "peak_mb_max": _r(s.peak_mb_max, 1), "cores_p95": _r(s.cores_p95), "cpu_seconds_p95": _r(s.cpu_seconds_p95),
                "declared_memory": hardware.get("memory"), "declared_cpu": hardware.get("cpu"),
                "current_memory_mb": _r(cur_mem, 1), "current_cpu": _r(cur_cpu), "memory_floor_mb": floor,
                "over_provisioned": over}
    if over:
        effect = (f"over-provisioned (declared {hardware.get('memory') or format_memory(cur_mem or 0)} vs p99 peak "
                  f"{s.peak_mb_p99:.0f} MB): cheaper hardware candidate, request {format_memory(mem)}"
                  + (f" and {format_cpu(cpu)} CPU" if cpu is not None else ""))
    else:
        effect = (f"requests sized to observed use: memory {format_memory(mem)} (p99 peak {s.peak_mb_p99:.0f} MB)"
                  + (f", CPU {format_cpu(cpu)} (p95 {s.cores_p95:.2f} cores)" if cpu is not None else ""))
    return Recommendation(s.playbook, s.step, "resources", value, evidence, effect, within, flags)


def _current_chunk(s: StepStats, profile: TuningProfile | None, loop: Mapping[str, Any]) -> int:
    approved = profile.approved(s.step, "loop_chunk_size") if profile else None
    return int(approved or loop.get("chunk_size") or s.loop_chunk_max or 1)


def _current_concurrency(s: StepStats, profile: TuningProfile | None, loop: Mapping[str, Any]) -> int | None:
    approved = profile.approved(s.step, "loop_concurrency") if profile else None
    value = approved or loop.get("max_in_flight")
    return int(value) if value else None


def _settled(value: float, current: float | None, b: TuningBounds) -> bool:
    """True if ``value`` is no real change from ``current`` (equal, or within loop_min_change)."""
    if current is None:
        return False
    return value == current or max(value, current) / max(min(value, current), 1e-9) < b.loop_min_change


def _loop_chunk(s: StepStats, b: TuningBounds, profile: TuningProfile | None,
                loop: Mapping[str, Any]) -> Recommendation | None:
    if s.loop_items_p50 is None or not s.item_p50_ms or s.loop_items_p50 < b.loop_chunk_min_items:
        return None
    items, item_s = s.loop_items_p50, s.item_p50_ms / 1000.0
    current = _current_chunk(s, profile, loop)
    concurrency = _current_concurrency(s, profile, loop)
    raw = 1 if item_s >= b.loop_chunk_item_max_seconds else math.ceil(b.loop_chunk_target_seconds / item_s)
    target = min(raw, max(1, int(items)))
    if concurrency:  # keep at least `concurrency` ops per run
        target = min(target, max(1, math.ceil(items / concurrency)))
    timeout = profile.approved(s.step, "timeout_seconds") if profile else None
    fits_timeout = None
    if timeout and s.item_p99_ms:
        fits_timeout = max(1, int(timeout / (s.item_p99_ms / 1000.0 * b.timeout_headroom)))
        target = min(target, fits_timeout)
    target = min(max(target, b.loop_chunk_min), b.loop_chunk_max)
    value = int(round(_limit_change(target, current, b.max_change_factor)))
    value = min(max(value, b.loop_chunk_min), b.loop_chunk_max)
    if _settled(value, current, b):
        return None
    ops_now, ops_next = math.ceil(items / current), math.ceil(items / value)
    evidence = {"runs": s.runs, "loop_items_p50": _r(items, 1), "loop_items_max": s.loop_items_max,
                "body_ops_per_run_p50": _r(s.loop_ops_p50, 1), "item_p50_ms": _r(s.item_p50_ms, 1),
                "item_p99_ms": _r(s.item_p99_ms, 1), "current_chunk_size": current,
                "target_op_seconds": b.loop_chunk_target_seconds, "loop_concurrency": concurrency,
                "chunk_fitting_timeout": fits_timeout, "run_ids": list(s.loop_run_ids)}
    if value > current:
        effect = (f"{value} items per body op instead of {current}: about {ops_next} body ops per run instead of "
                  f"{ops_now}, each running about {value * item_s:.1f}s (per-item p50 {s.item_p50_ms:.0f} ms), so "
                  f"Dagster's per-op overhead is paid {ops_now / ops_next:.1f}x less often; results unchanged")
    else:
        effect = (f"{value} items per body op instead of {current}: per-item p50 {s.item_p50_ms:.0f} ms makes a "
                  f"chunk run {current * item_s:.1f}s; {ops_next} smaller ops per run spread better")
    return Recommendation(s.playbook, s.step, "loop_chunk_size", value, evidence, effect, raw <= b.loop_chunk_max)


def _loop_concurrency(s: StepStats, b: TuningBounds, profile: TuningProfile | None, loop: Mapping[str, Any],
                      chunk: Recommendation | None) -> Recommendation | None:
    if s.loop_items_p50 is None or s.item_cores_p95 is None or loop.get("executor") == "in_process":
        return None
    chunk_size = chunk.value if chunk is not None else _current_chunk(s, profile, loop)
    ops = max(1, math.ceil(s.loop_items_p50 / chunk_size))
    cores = s.item_cores_p95
    io_bound = cores < b.loop_io_bound_cores
    raw = ops if io_bound else max(1, math.floor(b.loop_cores_available / cores))
    target = min(max(min(raw, ops), b.loop_concurrency_min), b.loop_concurrency_max)
    current = _current_concurrency(s, profile, loop)
    value = int(round(_limit_change(target, current, b.max_change_factor)))
    value = min(max(value, b.loop_concurrency_min), b.loop_concurrency_max)
    if _settled(value, current, b):
        return None
    evidence = {"runs": s.runs, "loop_items_p50": _r(s.loop_items_p50, 1), "chunk_size": chunk_size,
                "body_ops_per_run": ops, "item_cores_p95": _r(cores), "io_bound": io_bound,
                "cores_available": b.loop_cores_available, "current_concurrency": current,
                "item_p50_ms": _r(s.item_p50_ms, 1), "run_ids": list(s.loop_run_ids)}
    now = "no limit" if current is None else f"{current}"
    if io_bound:
        effect = (f"IO-bound body ops (p95 {cores:.2f} cores each): at most {value} of the {ops} body ops per run "
                  f"at once instead of {now}, so waiting overlaps (a multiprocess executor without max_concurrent "
                  f"gets it as max_concurrent when it exceeds the CPU count)")
    else:
        effect = (f"CPU-bound body ops (p95 {cores:.2f} cores each): at most {value} at once instead of {now}, "
                  f"about {value * cores:.1f} of {b.loop_cores_available:g} cores busy without oversubscription")
    within = raw <= b.loop_concurrency_max or io_bound
    return Recommendation(s.playbook, s.step, "loop_concurrency", value, evidence, effect, within,
                          ("io_bound",) if io_bound else ("cpu_bound",))


def markdown_table(recommendations: Sequence[Recommendation]) -> str:
    """A markdown table of recommendations (playbook, step, parameter, value, effect, flags)."""
    lines = ["| playbook | step | parameter | value | expected effect | flags |", "|---|---|---|---|---|---|"]
    for r in recommendations:
        cells = [r.playbook, r.step, r.parameter, r.summary(), r.expected_effect,
                 ", ".join(r.flags + (() if r.within_bounds else ("needs_review",)))]
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    if not recommendations:
        lines.append("| | | | nothing new to propose | | |")
    return "\n".join(lines)


__all__ = ["NO_RETRY", "Recommendation", "TuningBounds", "format_cpu", "format_memory", "markdown_table", "parse_cpu",
           "parse_memory_mb", "recommend"]
