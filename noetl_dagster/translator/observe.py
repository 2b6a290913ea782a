"""What an op tells the operator: its step's own memory and one legible log line per step.

* :func:`measured` wraps an op's compute generator: the clock, CPU time and the memory high-water
  mark are taken while the op's own code runs (never while Dagster stores an output).
  Memory is the process's RSS high-water mark, reset when the op starts (Linux
  ``/proc/self/clear_refs``), so ``noetl/peak_rss_mb`` is the highest RSS *while this step ran*
  (what a per-step pod needs) and ``noetl/step_rss_mb`` how far the step itself raised it over
  the RSS it started with (what the step allocated at its peak; a cheap step reads ~0). A
  subprocess the step started (shell, a sub-playbook run) is reported as ``noetl/child_rss_mb``,
  the largest child's peak RSS. Without ``clear_refs`` (not Linux, or refused) a thread samples
  the RSS every 5 ms instead; ``noetl/memory_method`` says which (``rss_hwm`` | ``rss_sampled``).
* :func:`step_line` is the line an op logs for its step: tool, rendered target (URL, SQL head,
  command head, file), rows/bytes of the result, duration, the arcs that fired and why (their
  ``when``), the arcs that did not, and a short result preview, secrets redacted.
"""

from __future__ import annotations

import json
import os
import resource
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping

from noetl_dagster.core.secrets import redact
from noetl_dagster.playbook.references import undefined_in
from noetl_dagster.runtime.context import Context

_PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024 if hasattr(os, "sysconf") else 4
#: how much of a target / a result the log line shows
TARGET_CHARS = 120
PREVIEW_CHARS = 160


def _status_kb(field_name: str) -> int | None:
    return _status_kbs(field_name)[0]


def _status_kbs(*field_names: str) -> list[int | None]:
    """Fields of ``/proc/self/status`` in kB, from one read (None when missing)."""
    try:
        with open("/proc/self/status", "rb") as f:
            text = f.read()
    except OSError:
        return [None] * len(field_names)
    values: list[int | None] = []
    for name in field_names:
        start = text.find(b"\n" + name.encode() + b":")
        values.append(None if start < 0 else int(text[start:text.find(b"\n", start + 1)].split()[1]))
    return values


def _rss_kb() -> int:
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE_KB
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


_HWM_WORKS: bool | None = None  # can this process reset and read its RSS high-water mark?


def _reset_hwm() -> bool:
    """Reset the process's RSS high-water mark to its current RSS (Linux >= 4.0)."""
    global _HWM_WORKS
    if _HWM_WORKS is False:
        return False
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        _HWM_WORKS = False
        return False
    if _HWM_WORKS is None:  # checked once per process
        _HWM_WORKS = _status_kb("VmHWM") is not None
    return _HWM_WORKS


class _Sampler(threading.Thread):
    def __init__(self) -> None:
        super().__init__(name="noetl-rss-sampler", daemon=True)
        self.peak_kb = _rss_kb()
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.005):
            self.peak_kb = max(self.peak_kb, _rss_kb())


@dataclass
class Usage:
    """One op's measurement (see the module doc)."""

    started: float = field(default_factory=time.monotonic)
    cpu_start: float = field(default_factory=time.process_time)
    rss_start_kb: int = field(default_factory=_rss_kb)
    children_start_kb: int = field(default_factory=lambda: resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    method: str = "rss_hwm"
    #: the highest RSS seen by ops nested in this one (a sub-playbook run in process resets the mark)
    nested_peak_kb: int = 0
    sampler: _Sampler | None = None
    paused: float = 0.0  # seconds spent outside the op's code (Dagster storing outputs)
    reported: dict[str, Any] | None = None  # the measurement its log line showed (:meth:`report`)
    _pause_start: float | None = None

    def start(self) -> None:
        if not _reset_hwm():
            self.method = "rss_sampled"
            self.sampler = _Sampler()
            self.sampler.start()

    def peak_kb(self) -> int:
        if self.sampler is not None:
            return max(self.sampler.peak_kb, self.nested_peak_kb, _rss_kb())
        hwm, rss = _status_kbs("VmHWM", "VmRSS")  # one read of /proc/self/status
        rss = rss or _rss_kb()
        return max(hwm or rss, self.nested_peak_kb, rss)

    def seconds(self) -> float:
        return time.monotonic() - self.started - self.paused

    def metadata(self) -> dict[str, Any]:
        peak = self.peak_kb()
        meta: dict[str, Any] = {
            "noetl/cpu_seconds": round(time.process_time() - self.cpu_start, 4),
            "noetl/peak_rss_mb": round(peak / 1024, 1),
            "noetl/step_rss_mb": round(max(peak - self.rss_start_kb, 0) / 1024, 1),
            "noetl/memory_method": self.method,
        }
        children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        if children > self.children_start_kb:
            meta["noetl/child_rss_mb"] = round(children / 1024, 1)
        return meta

    def report(self) -> dict[str, Any]:
        """:meth:`metadata` taken once the step's work is done: the step's log line and its
        output metadata show the same measurement (and the process is read once, not twice)."""
        self.reported = self.metadata()
        return self.reported

    def stop(self) -> None:
        if self.sampler is not None:
            self.sampler.done.set()


_LOCAL = threading.local()


def _stack() -> list[Usage]:
    stack = getattr(_LOCAL, "stack", None)
    if stack is None:
        stack = _LOCAL.stack = []
    return stack


def current() -> Usage | None:
    """The measurement of the op running in this thread (None outside a measured op)."""
    stack = _stack()
    return stack[-1] if stack else None


def measured(fn: Callable[..., Iterator[Any]],
             diagnose: Callable[[Any, Mapping[str, Any]], list[str]] | None = None) -> Callable[..., Iterator[Any]]:
    """``fn`` (an op's compute generator) with its step measured while its own code runs.

    When the op fails and ``diagnose(context, inputs)`` names undefined template variables of
    its step (:func:`diagnoser`), they are logged and added to the failure's description: the
    real cause of a ``TypeError`` on ``None`` is usually a misspelt name rendered empty."""

    def compute(context, inputs):  # type: ignore[no-untyped-def]
        usage, stack = Usage(), _stack()
        stack.append(usage)
        usage.start()
        try:
            for output in fn(context, inputs):
                paused = time.monotonic()
                yield output
                usage.paused += time.monotonic() - paused
        except Exception as exc:
            _explain(exc, diagnose, context, inputs)
            raise
        finally:
            usage.stop()
            stack.pop()
            if stack:  # a nested op (a sub-playbook run in process) reset the mark: keep its peak
                stack[-1].nested_peak_kb = max(stack[-1].nested_peak_kb, usage.peak_kb())

    compute.__wrapped__ = fn  # type: ignore[attr-defined]
    return compute


def _explain(exc: Exception, diagnose: Any, context: Any, inputs: Mapping[str, Any]) -> None:
    if diagnose is None:
        return
    try:
        found = diagnose(context, inputs)
    except Exception:  # noqa: BLE001 - a diagnosis never hides the failure itself
        return
    if not found:
        return
    note = "undefined template variable(s): " + "; ".join(found)
    try:
        context.log.error(note)
    except Exception:  # noqa: BLE001
        pass
    description = getattr(exc, "description", None)
    if isinstance(description, str) and note not in description:
        exc.description = f"{description} [{note}]"  # type: ignore[attr-defined]


def with_undefined(step: Any, error: str | None, scope: Mapping[str, Any]) -> str | None:
    """An error result's message, plus the step's undefined template variables if any."""
    try:
        names = {**scope, **({step.loop.iterator: None} if step.loop is not None else {}),
                 **{t.name: None for t in step.tool if t.name}}
        found = undefined_in(step, names)
    except Exception:  # noqa: BLE001 - a diagnosis never hides the error itself
        return error
    if not found:
        return error
    return f"{error or 'error result'} [undefined template variable(s): {'; '.join(found)}]"


def diagnoser(step: Any, start: Callable[[Any, Mapping[str, Any]], Any]) -> Callable[[Any, Mapping[str, Any]], list[str]]:
    """``diagnose(context, inputs)`` for :func:`measured`: the undefined names of ``step``'s
    templates in the scope its op had (``start(context, inputs)`` gives the op's input Context;
    loop ops carry theirs in ``work``/``loop_context``)."""

    def diagnose(context: Any, inputs: Mapping[str, Any]) -> list[str]:
        carried = inputs.get("work") or inputs.get("loop_context")
        start_ctx = Context.merge([carried["token"]]) if carried else start(context, inputs)
        scope = start_ctx.scope(context.run_id)
        if step.loop is not None:
            scope[step.loop.iterator] = None
        for task in step.tool:  # a pipeline's tasks see the earlier tasks' results by name
            if task.name:
                scope[task.name] = None
        return undefined_in(step, scope)

    return diagnose


def workload_config(workload: Mapping[str, Any], fallback: Any) -> Any:
    """The entry op's config schema, defaulting to the playbook's own workload so the Launchpad
    shows (and a run without config uses) it; ``fallback`` (default ``{}``) when the workload is
    not plain JSON (YAML dates, ...). Overrides still merge key by key over the playbook's."""
    import dagster as dg

    try:
        default = json.loads(json.dumps(workload, allow_nan=False))
    except (TypeError, ValueError):
        return fallback
    return {"workload": dg.Field(dg.Permissive(), is_required=False, default_value=default,
                                 description=fallback["workload"].description)}


def usage_metadata(cpu_start: float) -> dict[str, Any]:
    """The op's usage metadata: CPU seconds and memory (see the module doc)."""
    usage = current()
    if usage is not None:
        if usage.reported is not None:  # measured for the step's line just before: the same figures
            meta, usage.reported = usage.reported, None
            return meta
        return usage.metadata()
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # unmeasured: the process's peak
    return {"noetl/cpu_seconds": round(time.process_time() - cpu_start, 4),
            "noetl/peak_rss_mb": round(peak_kb / 1024, 1), "noetl/memory_method": "process_peak"}


# ----------------------------------------------------------------------------- the step line

#: the config key naming what a tool works on, by kind (first present wins)
_TARGET_KEYS: Mapping[str, tuple[str, ...]] = {
    "http": ("url", "endpoint"),
    "postgres": ("query", "command", "sql"),
    "duckdb": ("query", "command", "sql"),
    "shell": ("command", "cmd"),
    "python": ("code",),
    "playbook": ("path",),
    "workbook": ("name", "workbook"),
    "container": ("image",),
    "transfer": ("source",),
}
_GENERIC_KEYS = ("url", "query", "command", "path", "file", "image", "db_path", "name")


def _one_line(text: str, limit: int) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[:limit - 3] + "..."


def target_of(kind: str, config: Mapping[str, Any], render: Callable[[Any], Any] | None = None) -> str:
    """What a tool works on, rendered when ``render`` is given (else the template), one line."""
    for key in (*_TARGET_KEYS.get(kind, ()), *_GENERIC_KEYS):
        value = config.get(key)
        if value in (None, ""):
            continue
        if kind == "python" and key == "code":
            lines = [ln for ln in str(value).splitlines() if ln.strip()]
            return f"code ({len(lines)} line{'' if len(lines) == 1 else 's'})"
        if kind == "transfer" and isinstance(value, Mapping):
            target = config.get("target") or {}
            return (f"{value.get('kind', value.get('tool', '?'))} -> "
                    f"{target.get('kind', target.get('tool', '?')) if isinstance(target, Mapping) else '?'}")
        if render is not None and isinstance(value, str) and "{{" in value:
            try:
                value = render(value)
            except Exception:  # noqa: BLE001 - the line shows the template then
                pass
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        prefix = f"{str(config.get('method', 'GET')).upper()} " if kind == "http" else ""
        return prefix + _one_line(redact(text), TARGET_CHARS)
    return ""


def size_of(value: Any) -> str:
    """Rows and bytes of a result, when it says (``row_count``, Arrow tables and refs...)."""
    if value is None:
        return ""
    num_rows = getattr(value, "num_rows", None)
    if isinstance(num_rows, int):
        nbytes = getattr(value, "num_bytes", None) or getattr(value, "nbytes", None)
        return f"{num_rows} rows" + (f", {_bytes(nbytes)}" if isinstance(nbytes, int) else "")
    if isinstance(value, Mapping):
        for key, unit in (("row_count", "rows"), ("rows_transferred", "rows"), ("affected_rows", "rows affected")):
            if isinstance(value.get(key), int):
                return f"{value[key]} {unit}"
        if isinstance(value.get("rows"), list):
            return f"{len(value['rows'])} rows"
        if isinstance(value.get("status_code"), int):
            body = value.get("body")
            return f"HTTP {value['status_code']}" + (f", {_bytes(len(body))}" if isinstance(body, (str, bytes)) else "")
        if isinstance(value.get("exit_code"), int):
            return f"exit {value['exit_code']}"
    if isinstance(value, list):
        return f"{len(value)} items"
    return ""


def _bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"


def preview(value: Any) -> str:
    """The start of a result as one line of JSON (tables by their shape), secrets redacted."""
    if value is None:
        return "null"
    if hasattr(value, "num_rows") and hasattr(value, "schema"):
        return f"<table {value.num_rows} rows: {', '.join(list(value.schema.names)[:8])}>"
    try:
        text = json.dumps(value, default=lambda v: f"<{type(v).__name__}>", ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return _one_line(redact(text), PREVIEW_CHARS)


def arcs_text(step: Any, fired: list[tuple[int, Any, Mapping[str, Any]]]) -> str:
    """``-> a (when {{ x > 1 }}), -> b (always); not fired: c`` for a step's ``next``."""
    arcs = list(step.next.arcs) if getattr(step, "next", None) is not None else []
    if not arcs:
        return "no next arcs"
    fired_idx = {index for index, _, _ in fired}
    parts = [f"-> {arc.step} ({'when ' + _one_line(arc.when, 60) if arc.when else 'always'})"
             for index, arc, _ in fired]
    text = ", ".join(parts) if parts else "no arc fired"
    missed = [arcs[i].step for i in range(len(arcs)) if i not in fired_idx]
    if missed:
        text += f"; not fired: {', '.join(missed)}"
    return text


def step_line(step: Any, status: str, result: Any, fired: list[tuple[int, Any, Mapping[str, Any]]], *,
              runs: int = 1, render: Callable[[Any], Any] | None = None) -> str:
    """The one line an op logs for ``step`` (see the module doc)."""
    task = step.tool[0]
    kind = "pipeline" if len(step.tool) > 1 else task.kind
    target = "" if kind == "pipeline" else target_of(task.kind, task.config, render if status == "success" else None)
    if kind == "pipeline":
        target = " > ".join(t.name or t.kind for t in step.tool)
    usage = current()
    parts = [f"step {step.step}: {status}", f"tool {kind}" + (f" {target}" if target else "")]
    if step.loop is not None:
        parts.append(f"{runs} iterations")
    size = size_of(result) if status == "success" else ""
    if size:
        parts.append(size)
    if usage is not None:
        meta = usage.report()
        parts.append(f"{usage.seconds():.3f}s, +{meta['noetl/step_rss_mb']:.0f} MB")
    parts.append(arcs_text(step, fired))
    if status == "success":
        parts.append(f"result {preview(result)}")
    return " | ".join(parts)


def region_lines(members: Mapping[str, Any], records: Mapping[str, Any], exits: list[tuple[str, int]]) -> list[str]:
    """The lines a cycle's op logs: one per member step (tool, target template, runs, rows of the
    latest result), then the arcs leaving the cycle that fired, with the op's duration."""
    lines = []
    for name, record in records.items():
        step = members[name]
        task = step.tool[0]
        kind = "pipeline" if len(step.tool) > 1 else task.kind
        target = "" if kind == "pipeline" else target_of(task.kind, task.config)
        parts = [f"step {name}: {record.status}", f"tool {kind}" + (f" {target}" if target else ""),
                 f"{record.runs} run(s) in the cycle"]
        size = size_of(record.result) if record.status == "success" else ""
        if size:
            parts.append(f"latest {size}")
        if record.status == "success":
            parts.append(f"result {preview(record.result)}")
        lines.append(" | ".join(parts))
    usage = current()
    leaving = ", ".join(f"{source} -> {_arc_target(members.get(source), index)}" for source, index in exits) or "none"
    timing = f" | {usage.seconds():.3f}s, +{usage.metadata()['noetl/step_rss_mb']:.0f} MB" if usage else ""
    lines.append(f"cycle {', '.join(records)}: arcs leaving the cycle fired: {leaving}{timing}")
    return lines


def _arc_target(step: Any, index: int) -> str:
    try:
        return str(step.next.arcs[index].step)
    except (AttributeError, IndexError, TypeError):
        return f"arc {index}"
