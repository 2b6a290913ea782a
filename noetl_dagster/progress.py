"""Per-step progress of `noetl-dagster run` on a terminal (rich, on stderr).

The run executes in this process, so Dagster hands every event of the run to the instance's
listeners as it happens (:meth:`DagsterInstance.add_event_listener`): a spinner names the steps
running, and each finished step prints one line — status, step, duration and the summary its op
logged (tool, target, rows, arcs fired; see :mod:`noetl_dagster.translator.observe`). Nothing is
shown with ``--json`` or when stderr is not a terminal, so piped output stays exactly as before.

Example::

    with step_progress(instance, run_id, enabled=sys.stderr.isatty()):
        report = run_playbook(path, instance=instance, run_id=run_id)
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Any, Iterator

from noetl_dagster.contract import parse_step_key

#: how much of an op's step line the progress line shows
SUMMARY_CHARS = 150
_MARKS = {"success": ("[green]✔[/]", "ok"), "error": ("[yellow]![/]", "error result"),
          "failed": ("[red]✘[/]", "failed"), "skipped": ("[dim]-[/]", "skipped")}


#: how many lines of the last result `run` prints on a terminal
RESULT_LINES = 40


def pretty_result(value: Any, lines: int = RESULT_LINES) -> str:
    """A result as indented JSON, cut after ``lines`` lines (``--json`` prints it whole)."""
    import json

    text = json.dumps(value, default=str, indent=2, ensure_ascii=False).splitlines()
    if len(text) <= lines:
        return "\n".join(text)
    return "\n".join(text[:lines] + [f"... ({len(text) - lines} more lines; --json prints all of it)"])


def new_run_id() -> str:
    from noetl_dagster.compat import make_new_run_id

    return make_new_run_id()


def _step_name(step_key: str) -> str:
    """``risk__x__playbook.score[i00001]`` -> ``score[i00001]`` (the graph prefix of asset jobs)."""
    key = parse_step_key(step_key)
    return f"{key.node}[{key.mapping_key}]" if key.mapping_key else key.node


class StepProgress:
    """Receives the run's events (``on_event``) and draws them on ``console``."""

    def __init__(self, console: Any) -> None:
        self.console = console
        self.running: dict[str, float] = {}
        self.summaries: dict[str, str] = {}
        self.errors: set[str] = set()
        self.done = 0
        self.status: Any = None

    def on_event(self, entry: Any) -> None:
        try:
            self._on_event(entry)
        except Exception:  # noqa: BLE001 - progress must never break a run
            pass

    def _on_event(self, entry: Any) -> None:
        event = entry.dagster_event
        if event is None:  # a user log line: keep an op's step summary for its finished line
            message = entry.user_message or ""
            if message.startswith("step ") and entry.step_key:
                head, _, summary = message.partition(" | ")
                self.summaries[entry.step_key] = summary.rsplit(" | result ", 1)[0]
                if head.endswith(": error"):  # completed with an error result (the op itself succeeded)
                    self.errors.add(entry.step_key)
            return
        kind, key = event.event_type_value, event.step_key
        if kind == "STEP_START" and key:
            self.running[key] = time.monotonic()
        elif kind in ("STEP_SUCCESS", "STEP_FAILURE", "STEP_SKIPPED") and key:
            started = self.running.pop(key, None)
            status = {"STEP_SUCCESS": "success", "STEP_FAILURE": "failed"}.get(kind, "skipped")
            if status == "success" and key in self.errors:
                status = "error"
            self._finished(key, status, None if started is None else time.monotonic() - started, event)
        elif kind in ("RUN_SUCCESS", "RUN_FAILURE"):
            self.running.clear()
        self._refresh()

    def _finished(self, key: str, status: str, seconds: float | None, event: Any) -> None:
        from rich.markup import escape

        self.done += 1
        mark, _ = _MARKS[status]
        line = f"{mark} {escape(_step_name(key))}"
        if seconds is not None:
            line += f" [dim]{seconds:.2f}s[/]"
        summary = self.summaries.pop(key, "")
        if status == "failed":
            error = getattr(getattr(event, "event_specific_data", None), "error", None)
            message = getattr(error, "message", "") or ""
            summary = message.strip().splitlines()[0] if message.strip() else summary
        if summary:
            summary = summary if len(summary) <= SUMMARY_CHARS else summary[:SUMMARY_CHARS - 3] + "..."
            line += f"  [dim]{escape(summary)}[/]"
        self.console.print(line, highlight=False)

    def _refresh(self) -> None:
        if self.status is None:
            return
        from rich.spinner import Spinner

        names = ", ".join(_step_name(k) for k in self.running) or "..."
        self.status.update(Spinner("dots", f"{self.done} step(s) done; running {names}"), refresh=True)


@contextmanager
def step_progress(instance: Any, run_id: str, *, enabled: bool, title: str = "") -> Iterator[StepProgress | None]:
    """Show the progress of run ``run_id`` on stderr while the block runs (when ``enabled``)."""
    if not enabled:
        yield None
        return
    import os
    import sys

    from rich.console import Console

    # the terminal itself (a duplicate of stderr's descriptor taken before the run): Dagster
    # captures each step's stdout/stderr (compute logs) by redirecting the descriptors, and lines
    # written there would go through its mirror, which may drop the last ones when the run ends
    sys.stderr.flush()
    terminal = os.fdopen(os.dup(sys.stderr.fileno()), "w", buffering=1, encoding="utf-8", errors="replace")
    console = Console(file=terminal)
    progress = StepProgress(console)
    instance.add_event_listener(run_id, progress.on_event)
    if title:
        console.print(f"[bold]{title}[/] [dim]run {run_id}[/]", highlight=False)
    from rich.live import Live
    from rich.spinner import Spinner

    try:  # refreshed on each event from the thread running the steps (no refresh thread)
        with Live(Spinner("dots", "starting"), console=console, auto_refresh=False, transient=True,
                  redirect_stdout=False, redirect_stderr=False) as live:
            progress.status = live
            try:
                yield progress
            finally:
                progress.status = None
    finally:
        terminal.close()
