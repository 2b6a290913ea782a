"""Dagster event records -> NoETL-style rows (pure functions, no I/O).

* :func:`map_record`: one ``EventLogRecord`` -> one :class:`EventRow` (ClickHouse ``noetl_events``);
* :func:`build_step_runs`: a run's records -> one :class:`StepRun` per step attempt (``step_runs``);
* :func:`build_run_summary`: a run's records -> :class:`RunSummary` with its :class:`StepFailure`s
  (Qdrant ``runs`` and ``failures``).

The identity of an event is ``(run id, storage id)``: storage ids restart per run on SQLite and
are global on Postgres, so the pair is unique on both. Texts (errors, log messages) go through
:func:`noetl_dagster.core.secrets.redact`; only chosen metadata keys are copied, never
arbitrary values, so secrets do not reach the rows.

Example::

    ctx = RunContext(run_id=rid, job_name="risk__score", playbook="risk/score", domain="risk")
    rows = [map_record(rec, ctx) for rec in instance.get_records_for_run(rid).records]
    rows[0].event_type   # 'playbook_started'
"""

from __future__ import annotations

import json
import re
from bisect import bisect_left
from functools import lru_cache
from dataclasses import dataclass, field
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from noetl_dagster.contract import (CPU_SECONDS_KEY, DOMAIN_TAG, ERROR_KEY, FAILED_STEP_KEY, PEAK_RSS_KEY, PLAYBOOK_TAG,
                        RESULT_OUTPUT, STATUS_KEY, STEPS_KEY, TOOL_KEY, parse_step_key)
from noetl_dagster.core.secrets import redact

#: Dagster event type value -> (NoETL event type, status)
EVENT_TYPES: dict[str, tuple[str, str]] = {
    "PIPELINE_ENQUEUED": ("playbook.queued", "QUEUED"),
    "PIPELINE_DEQUEUED": ("playbook.dequeued", "QUEUED"),
    "PIPELINE_STARTING": ("playbook.starting", "STARTING"),
    "PIPELINE_START": ("playbook_started", "STARTED"),
    "PIPELINE_SUCCESS": ("playbook.completed", "COMPLETED"),
    "PIPELINE_FAILURE": ("playbook.failed", "FAILED"),
    "PIPELINE_CANCELING": ("playbook.cancelling", "CANCELLING"),
    "PIPELINE_CANCELED": ("playbook.cancelled", "CANCELLED"),
    "STEP_START": ("step.enter", "ENTERED"),
    "STEP_SUCCESS": ("command.completed", "COMPLETED"),
    "STEP_FAILURE": ("command.failed", "FAILED"),
    "STEP_SKIPPED": ("step.skipped", "SKIPPED"),
    "STEP_UP_FOR_RETRY": ("command.retry", "RETRYING"),
    "STEP_RESTARTED": ("command.restarted", "STARTED"),
    "STEP_OUTPUT": ("step.output", "COMPLETED"),
    "ASSET_MATERIALIZATION": ("asset.materialized", "COMPLETED"),
    "ASSET_MATERIALIZATION_PLANNED": ("asset.planned", "PENDING"),
    "ASSET_FAILED_TO_MATERIALIZE": ("asset.failed", "FAILED"),
    "ASSET_OBSERVATION": ("asset.observed", "COMPLETED"),
    "ASSET_CHECK_EVALUATION": ("check.evaluated", "PASSED"),
    "ASSET_CHECK_EVALUATION_PLANNED": ("check.planned", "PENDING"),
}
_OUTPUT_TYPE, _SUCCESS_TYPE = EVENT_TYPES["STEP_OUTPUT"], EVENT_TYPES["STEP_SUCCESS"]
RUN_TERMINAL = {"PIPELINE_SUCCESS": "success", "PIPELINE_FAILURE": "failure", "PIPELINE_CANCELED": "canceled"}
#: the op output that carries a step's result and usage metadata
_SKIP_LOG = re.compile(r"^Dependencies for step (\S+) (?:failed|were not executed)")
_LEVELS = {10: "DEBUG", 20: "INFO", 30: "WARNING", 40: "ERROR", 50: "CRITICAL"}
_JSON = json.JSONEncoder(separators=(",", ":"), default=str)
_MAKE_ENCODER = getattr(json.encoder, "c_make_encoder", None)  # CPython's C encoder, when built
_C_ENCODER = (_MAKE_ENCODER(None, str, json.encoder.encode_basestring_ascii, None, ":", ",", False, False, True)
              if _MAKE_ENCODER else None)


def _json_text(value: Any) -> str:
    """Compact JSON (``_JSON.encode``), through the C encoder directly when there is one (no
    circular check: metadata values come from JSON)."""
    if _C_ENCODER is None or not isinstance(value, dict):
        return _JSON.encode(value)
    return "".join(_C_ENCODER(value, 0))


_MESSAGE_TYPES = frozenset({"ENGINE_EVENT", "STEP_WORKER_STARTING", "STEP_WORKER_STARTED", "RUN_CANCELING",
                            "PIPELINE_CANCELING", "LOG"})
#: event types whose data, metadata or message map_record reads (the others need only the basics)
_DETAILED = frozenset({"STEP_OUTPUT", "STEP_SUCCESS", "STEP_FAILURE", "STEP_UP_FOR_RETRY", "PIPELINE_SUCCESS",
                       "PIPELINE_FAILURE", "PIPELINE_CANCELED", "ASSET_MATERIALIZATION", "ASSET_OBSERVATION",
                       "ASSET_FAILED_TO_MATERIALIZE", "ASSET_CHECK_EVALUATION", "ENGINE_EVENT",
                       "STEP_WORKER_STARTING", "STEP_WORKER_STARTED", "RUN_CANCELING", "PIPELINE_CANCELING", "LOG"})
_STEP_TYPES = frozenset({"STEP_START", "STEP_RESTARTED", "STEP_OUTPUT", "STEP_SUCCESS", "STEP_FAILURE",
                         "STEP_UP_FOR_RETRY", "STEP_SKIPPED"})
_SUMMARY_TYPES = frozenset({"STEP_OUTPUT", "STEP_FAILURE", "STEP_SUCCESS", "STEP_START", "STEP_SKIPPED",
                            "PIPELINE_SUCCESS", "PIPELINE_FAILURE", "PIPELINE_CANCELED"})
_RELEVANT = _STEP_TYPES | _SUMMARY_TYPES
MAX_TEXT = 4000
_FAILURE_PREFIX = "dagster._core.definitions.events.Failure: "
#: Dagster exceptions that wrap the user's error (its ``cause``)
_WRAPPERS = {"RetryRequestedFromPolicy", "DagsterExecutionStepExecutionError", "DagsterUserCodeExecutionError"}
#: metadata keys copied into the row's metadata map, under the name on the right
_NUMERIC_KEYS = {
    CPU_SECONDS_KEY: "cpu_seconds", PEAK_RSS_KEY: "peak_rss_mb",
    "noetl/rows": "rows", "dagster/row_count": "rows", "row_count": "rows", "rows": "rows",
    "noetl/bytes": "bytes", "bytes": "bytes", "size_bytes": "bytes",
}
_TEXT_KEYS = {FAILED_STEP_KEY: "failed_step", TOOL_KEY: "tool", "noetl/worker": "worker",
              STATUS_KEY: "status", ERROR_KEY: "error",
              "dagster-k8s/pod": "pod", "Kubernetes Job name": "k8s_job", "pod_name": "pod"}


@dataclass(frozen=True)
class RunContext:
    """What the rows of one run share: run id, job, playbook path, domain, op tool kinds.

    Example::

        RunContext.of(dagster_run)          # from a DagsterRun (tags noetl/playbook, noetl/domain)
    """

    run_id: str
    job_name: str = ""
    playbook: str = ""
    domain: str = ""
    tools: Mapping[str, str] = field(default_factory=dict)  # op (node) name -> tool kind
    start_time: float | None = None
    end_time: float | None = None
    status: str = ""  # DagsterRunStatus value

    @classmethod
    def of(cls, run: Any, tools: Mapping[str, str] | None = None, start_time: float | None = None,
           end_time: float | None = None) -> "RunContext":
        tags = dict(getattr(run, "tags", None) or {})
        playbook = tags.get(PLAYBOOK_TAG, "")
        domain = tags.get(DOMAIN_TAG) or (playbook.strip("/").split("/")[0] if playbook else "")
        status = getattr(getattr(run, "status", None), "value", "") or ""
        return cls(run.run_id, run.job_name or "", playbook, domain, dict(tools or {}), start_time, end_time, status)

    @property
    def is_playbook(self) -> bool:
        return bool(self.playbook)


class EventRow(NamedTuple):
    """One row of ``noetl_events`` (NoETL's columns plus ours), in table order.

    A tuple, so that a batch transposes into columns with ``zip(*rows)``; treat ``metadata`` as
    read-only (rows of one step may share it).
    """

    timestamp: float
    event_id: int
    execution_id: str
    event_type: str
    status: str
    step_name: str
    node_name: str
    playbook_path: str
    duration_ms: int
    error_message: str
    metadata: dict[str, str]
    domain: str
    job_name: str
    attempt: int
    dagster_event_type: str
    level: str
    message: str
    steps: dict[str, Any] | None = None  # ``noetl/steps`` as reported (not a column; Metadata has its JSON)


EVENT_FIELDS = [f for f in EventRow._fields if f != "steps"]


class StepRun(NamedTuple):
    """One step attempt (``step_runs``): status success | error | failed | retried | skipped | incomplete
    (``error``: the step completed with an error result, NoETL's ``command.completed`` in error)."""

    execution_id: str
    step_key: str
    attempt: int
    playbook_path: str
    domain: str
    job_name: str
    step_name: str
    tool_kind: str
    status: str
    started_at: float
    finished_at: float
    duration_ms: int
    retries: int
    rows: int | None
    bytes: int | None
    cpu_seconds: float | None
    peak_rss_mb: float | None
    error_message: str
    worker: str


STEP_RUN_FIELDS = list(StepRun._fields)


@dataclass
class StepFailure:
    """A step that failed for good, or completed with an error result, in a run (what the
    ``failures`` collection stores)."""

    run_id: str
    playbook: str
    domain: str
    step: str
    step_key: str
    tool: str
    attempt: int
    error: str
    timestamp: float

    def text(self) -> str:
        """The text embedded for similarity search: the error first, then its context."""
        where = f"step {self.step}" + (f" ({self.tool})" if self.tool else "")
        return f"{self.error} | {where} of playbook {self.playbook or '?'}"


@dataclass
class RunSummary:
    """A finished run: status, timing, per-step outcomes and failures."""

    run_id: str
    playbook: str
    domain: str
    job_name: str
    status: str  # success | failure | canceled
    started_at: float
    finished_at: float
    duration_ms: int
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)  # step -> {status, runs, tool?, error?}
    failures: list[StepFailure] = field(default_factory=list)
    error: str = ""

    @property
    def steps_ok(self) -> list[str]:
        return sorted(s for s, v in self.steps.items() if v.get("status") == "success")

    def text(self) -> str:
        """The text embedded for the ``runs`` collection."""
        parts = []
        for name, info in self.steps.items():
            item = f"{name} {info.get('status', '?')}"
            if info.get("error"):
                item += f": {info['error']}"
            parts.append(item)
        text = f"playbook {self.playbook or self.job_name} run {self.status}. steps: " + "; ".join(parts)
        if self.error and not self.failures:
            text += f". error: {self.error}"
        return text[:MAX_TEXT]


def step_parts(step_key: str) -> tuple[str, str, str]:
    """``(step, op, mapping key)`` of a Dagster step key (:func:`~noetl_dagster.contract.parse_step_key`).
    The op keeps the graph prefix of a product playbook's asset job (its node path); the step does not.

    Example: ``step_parts("price[i00003]") == ("price", "price", "i00003")``,
    ``step_parts("risk__x__playbook.score") == ("score", "risk__x__playbook.score", "")``
    """
    parsed = parse_step_key(step_key or "")
    return parsed.step, parsed.op, parsed.mapping_key


def step_name_of(step_key: str | None) -> str:
    """The NoETL step of a Dagster step key: ``price[i00003]``/``price__fan_out`` -> ``price``."""
    return step_parts(step_key)[0] if step_key else ""


def op_name_of(step_key: str | None) -> str:
    """The op (node) name of a step key: the key without its mapping key."""
    return step_parts(step_key)[1] if step_key else ""


_TYPES: dict[str, tuple[str, str]] = dict(EVENT_TYPES)


def _event_type(dtype: str) -> tuple[str, str]:
    """``(NoETL event type, status)`` of a Dagster event type value (unmapped: ``dagster.<type>``)."""
    found = _TYPES.get(dtype)
    if found is None:
        found = _TYPES[dtype] = ("dagster." + dtype.lower(), "INFO")
    return found


@lru_cache(maxsize=4096)
def _worker(pid: int) -> str:
    return f"pid:{pid}"


def _text(value: Any) -> str:
    if value is None:
        return ""
    text = redact(str(value).strip())
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"


def _meta_value(value: Any) -> Any:
    """The plain value inside a Dagster MetadataValue (every kind has ``.value``), or the value."""
    return getattr(value, "value", value)


def _copy_metadata(metadata: Mapping[str, Any] | None, out: dict[str, str]) -> dict[str, Any] | None:
    """Copy the chosen keys into ``out``; returns the ``noetl/steps`` mapping when present."""
    steps = None
    if not metadata:
        return steps
    for key, value in metadata.items():
        if key in _NUMERIC_KEYS:
            plain = getattr(value, "value", value)
            kind = type(plain)
            if kind is float:
                out[_NUMERIC_KEYS[key]] = repr(plain)
            elif kind is int:
                out[_NUMERIC_KEYS[key]] = str(plain)
        elif key in _TEXT_KEYS:
            out[_TEXT_KEYS[key]] = _text(getattr(value, "value", value))[:200]
        elif key == STEPS_KEY:
            plain = getattr(value, "value", value)
            if isinstance(plain, dict):
                steps = plain
                out["steps"] = _json_text(plain)[:MAX_TEXT]
    return steps


def _error_message(error: Any) -> str:
    """``SerializableErrorInfo`` -> its message (the exception line), without the stack;
    a ``dagster.Failure`` keeps only its description."""
    if error is None:
        return ""
    while getattr(error, "cls_name", None) in _WRAPPERS and getattr(error, "cause", None) is not None:
        error = error.cause
    message = (getattr(error, "message", "") or "").strip()
    if message.startswith(_FAILURE_PREFIX):
        message = message[len(_FAILURE_PREFIX):]
    return _text(message)


def failure_error(failure_data: Any) -> str:
    """The error of a ``StepFailureData``: the ``Failure`` description, else the exception message."""
    user = getattr(failure_data, "user_failure_data", None)
    if user is not None and user.description:
        return _text(user.description)
    return _error_message(getattr(failure_data, "error", None))


def _details(entry: Any, event: Any, dtype: str, ctx: RunContext
             ) -> tuple[str, str, dict[str, str], str, int, str, dict[str, Any] | None]:
    """What an event of a detailed type adds: (event type, status, metadata, error, duration,
    message, ``noetl/steps``); step outputs and successes are mapped inline by :func:`map_records`."""
    etype, status = _event_type(dtype)
    data = event.event_specific_data
    meta: dict[str, str] = {}
    error, duration, message, steps = "", 0, "", None
    if dtype == "STEP_FAILURE":
        error = failure_error(data)
        if data.user_failure_data is not None:
            steps = _copy_metadata(data.user_failure_data.metadata, meta)
        if data.error is not None and data.error.cls_name:
            meta["error_class"] = data.error.cls_name
    elif dtype == "STEP_UP_FOR_RETRY":
        error = _error_message(getattr(data, "error", None))
        if getattr(data, "seconds_to_wait", None) is not None:
            meta["seconds_to_wait"] = str(data.seconds_to_wait)
    elif dtype in RUN_TERMINAL:
        if ctx.start_time:
            duration = max(0, int(round((entry.timestamp - ctx.start_time) * 1000)))
        if dtype == "PIPELINE_FAILURE":
            error = _error_message(getattr(data, "error", None)) or _text(entry.user_message)
            reason = getattr(getattr(data, "failure_reason", None), "value", None)
            if reason:
                meta["failure_reason"] = str(reason)
    elif dtype in ("ASSET_MATERIALIZATION", "ASSET_OBSERVATION"):
        asset = getattr(data, "materialization", None) or getattr(data, "asset_observation", None)
        if asset is not None:
            meta["asset_key"] = asset.asset_key.to_user_string()
            if asset.partition:
                meta["partition"] = str(asset.partition)
            _copy_metadata(asset.metadata, meta)
    elif dtype == "ASSET_FAILED_TO_MATERIALIZE":
        failed = getattr(data, "asset_materialization_failure", None)
        if failed is not None:
            meta["asset_key"] = failed.asset_key.to_user_string()
            error = _error_message(getattr(failed, "error", None))
    elif dtype == "ASSET_CHECK_EVALUATION":
        meta["asset_key"] = data.asset_key.to_user_string()
        meta["check"] = data.check_name
        if not data.passed:
            status = "FAILED"
        if data.severity is not None:
            meta["severity"] = str(getattr(data.severity, "value", data.severity))
        _copy_metadata(data.metadata, meta)
    elif dtype == "ENGINE_EVENT" and data is not None:
        _copy_metadata(getattr(data, "metadata", None), meta)
        error = _error_message(getattr(data, "error", None))
    if dtype in _MESSAGE_TYPES:
        message = _text(entry.user_message or event.message)
    return etype, status, meta, error, duration, message, steps


def _step_parts(key: tuple[str, int | None], tools: Mapping[str, str]
                ) -> tuple[str, str, dict[str, str], int, str]:
    """What every event of one step (and worker) shares: (step name, node name, base metadata,
    attempt, mapping key); run-level events (no step key) have node ``playbook``, attempt 0."""
    step_key, pid = key
    meta: dict[str, str] = {} if pid is None else {"worker": _worker(pid)}
    if not step_key:
        return "", "playbook", meta, 0, ""
    name, node, mapping_key = step_parts(step_key)
    tool = tools.get(node)
    if tool:
        meta["tool"] = tool
    if mapping_key:
        meta["mapping_key"] = mapping_key
    return name, step_key, meta, 1, mapping_key


def map_record(record: Any, ctx: RunContext, attempt: int = 1) -> EventRow:
    """One Dagster ``EventLogRecord`` as a NoETL-style row (``attempt``: of its step).

    Example::

        map_record(rec, ctx).event_type   # 'command.failed' for a STEP_FAILURE
    """
    row = map_records((record,), ctx)[0]
    return row if not row.attempt or attempt == 1 else row._replace(attempt=attempt)


def map_records(records: Sequence[Any], ctx: RunContext,
                retries: Iterable[tuple[int, str]] = ()) -> list[EventRow]:
    """A run's records (in storage order) as NoETL-style rows.

    ``retries``: ``(storage id, step key)`` of the run's earlier ``STEP_UP_FOR_RETRY`` events, for
    the attempt numbers (see :func:`attempts_of`). Per-step parts (names, worker, tool) are worked
    out once per step; only detailed types (outputs, failures, run ends, ...) read event data.

    Example: ``rows = map_records(instance.get_records_for_run(run_id).records, ctx)``
    """
    out: list[EventRow] = []
    append = out.append
    new = tuple.__new__
    run_id, playbook, domain, job = ctx.run_id, ctx.playbook, ctx.domain, ctx.job_name
    tools = ctx.tools
    detailed = _DETAILED
    types = _TYPES.get
    levels = _LEVELS.get
    steps: dict[tuple[str, int | None], tuple[str, str, dict[str, str], int, str]] = {}
    outputs: dict[tuple[Any, str], dict[str, str]] = {}  # metadata of outputs without metadata of their own
    retried = False
    last_key: tuple[str, int | None] | None = None
    parts: tuple[str, str, dict[str, Any], int, str] = ("", "", {}, 0, "")
    for record in records:
        entry = record.event_log_entry
        event = entry.dagster_event
        if event is None:
            append(_log_row(record, ctx))
            continue
        dtype = event.event_type_value
        key = (entry.step_key or event.step_key or "", event.pid)
        if key == last_key:  # events of one step mostly come in a row
            pass
        elif (found := steps.get(key)) is not None:
            last_key, parts = key, found
        else:
            parts = steps[key] = _step_parts(key, tools)
            last_key = key
        meta, error, duration, message, reported = parts[2], "", 0, "", None
        if dtype not in detailed:
            etype, status = types(dtype) or _event_type(dtype)
        elif dtype == "STEP_OUTPUT":  # the most frequent detailed types, inline
            etype, status = _OUTPUT_TYPE
            data = event.event_specific_data
            handle = data.step_output_handle
            output = handle.output_name
            if output == RESULT_OUTPUT:
                etype = "call.done"
            item = handle.mapping_key if not parts[4] else None  # a fan-out's dynamic output item
            if data.metadata or item:
                meta = {**meta, "output": output}
                if item:
                    meta["mapping_key"] = item
                if data.metadata:
                    reported = _copy_metadata(data.metadata, meta)
                    if meta.get("status") == "error":  # the step completed with an error result
                        status, error = "ERROR", meta.get("error", "")
            else:
                meta = outputs.get((key, output)) or outputs.setdefault((key, output), {**parts[2], "output": output})
        elif dtype == "STEP_SUCCESS":
            etype, status = _SUCCESS_TYPE
            duration = int(round(event.event_specific_data.duration_ms or 0))
        else:
            etype, status, extra, error, duration, message, reported = _details(entry, event, dtype, ctx)
            if extra:
                meta = {**meta, **extra}
                if parts[4]:
                    meta["mapping_key"] = parts[4]
            retried = retried or dtype == "STEP_UP_FOR_RETRY"
        append(new(EventRow, (
            entry.timestamp, record.storage_id, run_id or entry.run_id, etype, status, parts[0], parts[1],
            playbook, duration, error, meta, domain, job or entry.job_name or "",
            parts[3] if etype != "step.skipped" else 0, dtype, levels(entry.level) or str(entry.level), message,
            reported)))
    retries = tuple(retries)
    if retries or retried:
        out = [row if row.attempt == (new_attempt := attempt if row.attempt else 0)
               else row._replace(attempt=new_attempt) for row, attempt in zip(out, attempts_of(records, retries))]
    return out


def _log_row(record: Any, ctx: RunContext) -> EventRow:
    """A plain log message (no Dagster event); "Dependencies for step X failed" is a skipped step."""
    entry = record.event_log_entry
    step_key = entry.step_key or ""
    message = _text(entry.user_message)
    skipped = _SKIP_LOG.match(entry.user_message or "")
    if skipped:
        etype, status = "step.skipped", "SKIPPED"
        step_key = step_key or skipped.group(1)
    else:
        etype, status = "log", _LEVELS.get(entry.level, str(entry.level))
    error = _error_message(entry.error_info) if entry.error_info is not None else ""
    name, node, meta, attempt, _ = _step_parts((step_key, None), ctx.tools)
    return EventRow(
        entry.timestamp, record.storage_id, ctx.run_id or entry.run_id, etype, status, name, node,
        ctx.playbook, 0, error, meta, ctx.domain, ctx.job_name or entry.job_name or "",
        attempt if etype != "step.skipped" else 0, "", _LEVELS.get(entry.level) or str(entry.level), message)


def attempts_of(records: Sequence[Any], retries: Iterable[tuple[int, str]] = ()) -> list[int]:
    """The attempt number of each record: 1 + the step's ``STEP_UP_FOR_RETRY`` events before it
    (0 for run-level records).

    ``retries`` holds ``(storage_id, step_key)`` of the run's retry events (fetched once per run);
    retry events among ``records`` are counted too.
    """
    found = set(retries)
    if not found and not any(r.event_log_entry.dagster_event is not None
                             and r.event_log_entry.dagster_event.event_type_value == "STEP_UP_FOR_RETRY"
                             for r in records):
        return [1 if r.event_log_entry.step_key else 0 for r in records]
    for rec in records:
        event = rec.event_log_entry.dagster_event
        if event is not None and event.event_type_value == "STEP_UP_FOR_RETRY" and rec.event_log_entry.step_key:
            found.add((rec.storage_id, rec.event_log_entry.step_key))
    by_step: dict[str, list[int]] = {}
    for storage_id, key in sorted(found):
        by_step.setdefault(key, []).append(storage_id)
    out = []
    for rec in records:
        key = rec.event_log_entry.step_key
        out.append(1 + bisect_left(by_step.get(key, ()), rec.storage_id) if key else 0)
    return out


def _number(meta: Mapping[str, str], key: str, kind: type) -> Any:
    raw = meta.get(key)
    if raw is None:
        return None
    try:
        return kind(float(raw)) if kind is int else kind(raw)
    except ValueError:
        return None


def relevant_rows(rows: Sequence[EventRow]) -> list[EventRow]:
    """The rows :func:`build_step_runs` and :func:`build_run_summary` look at (a shortcut)."""
    return [r for r in rows if r.dagster_event_type in _RELEVANT or r.event_type == "step.skipped"]


def build_step_runs(rows: Sequence[EventRow]) -> list[StepRun]:
    """One :class:`StepRun` per step attempt, from a whole run's rows (in storage order).

    Example::

        [s.status for s in build_step_runs(rows)]   # ['success', 'failed', 'skipped', ...]
    """
    open_: dict[tuple[str, int], tuple[float, dict[str, str]]] = {}  # (step key, attempt) -> (start, meta)
    done: list[StepRun] = []
    skipped: set[str] = set()
    new = tuple.__new__

    def close(key: tuple[str, int], row: EventRow, status: str, duration: int | None) -> None:
        state = open_.pop(key, None)
        if state is None:
            started, meta = row.timestamp, row.metadata
        else:
            started, meta = state[0], {**state[1], **row.metadata}
        error = row.error_message
        if status == "success" and meta.get("status") == "error":  # completed with an error result
            status, error = "error", meta.get("error", "")
        done.append(new(StepRun, (
            row.execution_id, key[0], key[1], row.playbook_path, row.domain, row.job_name, row.step_name,
            meta.get("tool", ""), status, started, row.timestamp,
            duration if duration else max(0, int(round((row.timestamp - started) * 1000))), max(0, key[1] - 1),
            _number(meta, "rows", int), _number(meta, "bytes", int), _number(meta, "cpu_seconds", float),
            _number(meta, "peak_rss_mb", float), error, meta.get("worker", ""))))

    for row in rows:
        dtype = row.dagster_event_type
        if dtype == "STEP_START" or dtype == "STEP_RESTARTED":
            open_[(row.node_name, row.attempt)] = (row.timestamp, row.metadata)  # rows' metadata is read-only
        elif dtype == "STEP_OUTPUT":
            if row.metadata.get("output") == RESULT_OUTPUT:  # usage (rows, bytes, CPU, memory) of the attempt
                key = (row.node_name, row.attempt)
                started, meta = open_.get(key) or (row.timestamp, {})
                open_[key] = (started, {**meta, **row.metadata})
        elif dtype == "STEP_SUCCESS":
            close((row.node_name, row.attempt), row, "success", row.duration_ms)
        elif dtype == "STEP_FAILURE":
            close((row.node_name, row.attempt), row, "failed", None)
        elif dtype == "STEP_UP_FOR_RETRY":
            close((row.node_name, row.attempt), row, "retried", None)
        elif row.event_type == "step.skipped" and row.node_name != "playbook" and row.node_name not in skipped:
            skipped.add(row.node_name)
            done.append(_skipped_step(row))
    for key, (started, meta) in open_.items():  # started, never finished (crashed worker, canceled run)
        last = rows[-1]
        done.append(StepRun(
            execution_id=last.execution_id, step_key=key[0], attempt=key[1], playbook_path=last.playbook_path,
            domain=last.domain, job_name=last.job_name, step_name=step_name_of(key[0]),
            tool_kind=meta.get("tool", ""), status="incomplete", started_at=started, finished_at=started,
            duration_ms=0, retries=max(0, key[1] - 1), rows=None, bytes=None, cpu_seconds=None, peak_rss_mb=None,
            error_message="", worker=meta.get("worker", "")))
    return done


def _skipped_step(row: EventRow) -> StepRun:
    return StepRun(
        execution_id=row.execution_id, step_key=row.node_name, attempt=0, playbook_path=row.playbook_path,
        domain=row.domain, job_name=row.job_name, step_name=row.step_name, tool_kind=row.metadata.get("tool", ""),
        status="skipped", started_at=row.timestamp, finished_at=row.timestamp, duration_ms=0, retries=0, rows=None,
        bytes=None, cpu_seconds=None, peak_rss_mb=None, error_message="", worker="")


def build_run_summary(rows: Sequence[EventRow], ctx: RunContext) -> RunSummary:
    """A finished run's summary from its rows: step statuses (``noetl/steps``) and failures."""
    steps: dict[str, dict[str, Any]] = {}
    failures: list[StepFailure] = []
    status, error = "", ""
    started = ctx.start_time or (rows[0].timestamp if rows else 0.0)
    finished = ctx.end_time or (rows[-1].timestamp if rows else started)
    for row in rows:
        dtype = row.dagster_event_type
        if dtype not in _SUMMARY_TYPES and row.event_type != "step.skipped":
            continue
        if dtype in ("STEP_OUTPUT", "STEP_FAILURE") and row.metadata.get("steps"):
            reported = row.steps
            if reported is None:
                try:
                    reported = json.loads(row.metadata["steps"])
                except ValueError:
                    reported = {}
            for name, info in reported.items():
                if isinstance(info, Mapping):
                    steps.setdefault(name, {}).update(
                        {"status": str(info.get("status", "")), "runs": int(info.get("runs", 0) or 0)})
                    if info.get("status") == "error":  # completed with an error result: a failure to learn from
                        steps[name]["error"] = str(info.get("error", ""))
                        failures.append(StepFailure(
                            run_id=row.execution_id, playbook=row.playbook_path, domain=row.domain, step=name,
                            step_key=row.node_name, tool=row.metadata.get("tool", ""), attempt=row.attempt,
                            error=steps[name]["error"], timestamp=row.timestamp))
        if row.step_name and dtype in ("STEP_SUCCESS", "STEP_START") and row.step_name not in steps:
            steps[row.step_name] = {"status": "success" if dtype == "STEP_SUCCESS" else "started", "runs": 1}
        if row.metadata.get("tool") and row.step_name in steps:
            steps[row.step_name].setdefault("tool", row.metadata["tool"])
        if dtype == "STEP_FAILURE":
            name = row.metadata.get("failed_step") or row.step_name
            info = steps.setdefault(name, {"runs": 1})
            info["status"] = "failed"
            info["error"] = row.error_message
            failures.append(StepFailure(
                run_id=row.execution_id, playbook=row.playbook_path, domain=row.domain, step=name,
                step_key=row.node_name, tool=row.metadata.get("tool", ""), attempt=row.attempt,
                error=row.error_message, timestamp=row.timestamp))
        elif row.event_type == "step.skipped" and row.step_name:
            steps.setdefault(row.step_name, {"status": "skipped", "runs": 0})
        elif dtype in RUN_TERMINAL:
            status = RUN_TERMINAL[dtype]
            finished = row.timestamp
            if dtype == "PIPELINE_FAILURE":
                error = row.error_message
    if not status:
        status = {"SUCCESS": "success", "FAILURE": "failure", "CANCELED": "canceled"}.get(ctx.status, ctx.status.lower())
    if status == "failure" and not failures:
        failures.append(StepFailure(ctx.run_id, ctx.playbook, ctx.domain, "", "", "", 0,
                                    error or "run failed", finished))
    return RunSummary(
        run_id=ctx.run_id, playbook=ctx.playbook, domain=ctx.domain, job_name=ctx.job_name, status=status,
        started_at=started, finished_at=finished, duration_ms=max(0, int(round((finished - started) * 1000))),
        steps=steps, failures=failures, error=error)


__all__ = ["EVENT_FIELDS", "EVENT_TYPES", "EventRow", "RunContext", "RunSummary", "STEP_RUN_FIELDS",
           "StepFailure", "StepRun", "attempts_of", "build_run_summary", "build_step_runs", "map_record", "map_records",
           "op_name_of", "step_name_of"]
