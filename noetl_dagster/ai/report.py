"""The tuning report: per-step statistics and recommendations as markdown, durations and failure
rates as a PNG chart. Shared by ``noetl-dagster tune`` (prints :func:`report_markdown`) and the
``observability/tuning_report`` asset (shows both in the Dagster UI).

Example::

    from noetl_dagster.ai.report import chart_markdown, chart_png, report_markdown

    stats = step_stats(sink)
    print(report_markdown(stats, recommendations))
    dg.MetadataValue.md(chart_markdown(chart_png(stats)))   # an inline data:image/png
"""

from __future__ import annotations

import base64
import io
from typing import Sequence

from noetl_dagster.ai.recommend import Recommendation, markdown_table
from noetl_dagster.ai.stats import StepStats

#: the chart shows at most this many steps (the slowest and the failing ones first)
CHART_MAX_STEPS = 30
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _seconds(ms: float | None) -> str:
    return "" if ms is None else f"{ms / 1000:.2f}s"


def _cell(value: object) -> str:
    return str(value).replace("|", "\\|")


def stats_table(stats: Sequence[StepStats]) -> str:
    """A markdown table, one row per (playbook, step): runs, failures, durations, CPU, memory."""
    lines = ["| playbook | step | runs | failure rate | attempt failure rate | transient + intermittent | deterministic "
             "| p50 | p95 | p99 | CPU cores p95 | peak MB p99 |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s in stats:
        cells = [s.playbook, s.step, s.runs, f"{s.failure_rate:.1%}", f"{s.attempt_failure_rate:.1%}",
                 s.transient_failures + s.intermittent_failures, s.deterministic_failures,
                 _seconds(s.p50_ms), _seconds(s.p95_ms), _seconds(s.p99_ms),
                 "" if s.cores_p95 is None else f"{s.cores_p95:.2f}",
                 "" if s.peak_mb_p99 is None else f"{s.peak_mb_p99:.0f}"]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    if not stats:
        lines.append("| | no run history in step_runs yet | | | | | | | | | | |")
    return "\n".join(lines)


def similar_failures_markdown(recommendations: Sequence[Recommendation]) -> str:
    """A list per recommendation with ``similar_failures`` evidence (from Qdrant); "" if none has any."""
    lines = []
    for r in recommendations:
        hits = r.evidence.get("similar_failures") or []
        if not hits:
            continue
        lines.append(f"- **{_cell(r.playbook)} / {_cell(r.step)}** ({r.parameter}: {_cell(r.summary())})")
        for h in hits:
            outcome = (f"a later run `{str(h['resolved_by_run'])[:8]}` of the step succeeded"
                       if h.get("later_succeeded") else "no later run of the step succeeded")
            message = " ".join(str(h.get("message") or "").split())[:300]
            lines.append(f"  - run `{str(h['run_id'])[:8]}` step {h.get('step') or '?'} of {h.get('playbook') or '?'} "
                         f"(similarity {float(h.get('score') or 0):.2f}): {message} -> {outcome}")
    return "\n".join(lines)


def report_markdown(stats: Sequence[StepStats], recommendations: Sequence[Recommendation],
                    approved: bool = False) -> str:
    """Step statistics, this pass's new recommendations (``approved``: written as approved) and
    the similar past failures that explain them (when Qdrant evidence is present)."""
    verb = "approved within bounds" if approved else "proposed"
    text = (f"### Step statistics\n\n{stats_table(stats)}\n\n"
            f"### New recommendations ({len(recommendations)} {verb})\n\n{markdown_table(recommendations)}")
    similar = similar_failures_markdown(recommendations)
    return text + (f"\n\n### Similar past failures\n\n{similar}" if similar else "")


def _chart_steps(stats: Sequence[StepStats], limit: int) -> list[StepStats]:
    ranked = sorted(stats, key=lambda s: (-s.failure_rate, -(s.p95_ms or 0.0)))[:limit]
    order = {id(s): i for i, s in enumerate(stats)}
    return sorted(ranked, key=lambda s: order[id(s)])  # keep (playbook, step) order for reading


def chart_png(stats: Sequence[StepStats], max_steps: int = CHART_MAX_STEPS, dpi: int = 80) -> bytes:
    """PNG bytes: p50/p95 duration of successful attempts (left) and final / per-attempt failure
    rate (right) per step. Rendered with matplotlib's Agg canvas (no display, no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    steps = _chart_steps(stats, max_steps)
    playbooks = {s.playbook for s in steps}
    labels = [s.step if len(playbooks) == 1 else f"{s.playbook} · {s.step}" for s in steps]
    fig = Figure(figsize=(11, 1.6 + 0.32 * max(len(steps), 3)), dpi=dpi)
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2, sharey=True, gridspec_kw={"width_ratios": [3, 2]})
    if not steps:
        left.text(0.5, 0.5, "no run history yet", ha="center", va="center", transform=left.transAxes)
    ys = list(range(len(steps)))
    up = [y - 0.2 for y in ys]
    down = [y + 0.2 for y in ys]
    left.barh(up, [(s.p50_ms or 0) / 1000 for s in steps], height=0.4, label="p50", color="#4c78a8")
    left.barh(down, [(s.p95_ms or 0) / 1000 for s in steps], height=0.4, label="p95", color="#f58518")
    left.set_xlabel("duration of successful attempts (s)")
    left.set_yticks(ys, labels)
    left.invert_yaxis()
    left.grid(axis="x", alpha=0.3)
    right.barh(up, [100 * s.failure_rate for s in steps], height=0.4, label="final (run failed)", color="#e45756")
    right.barh(down, [100 * s.attempt_failure_rate for s in steps], height=0.4, label="per attempt",
               color="#bab0ac")
    right.set_xlabel("failure rate (%)")
    right.set_xlim(0, 100)
    right.grid(axis="x", alpha=0.3)
    if steps:
        left.legend(loc="lower right", fontsize="small")
        right.legend(loc="lower right", fontsize="small")
    title = next(iter(playbooks)) if len(playbooks) == 1 else f"{len(playbooks)} playbooks"
    fig.suptitle(f"Step durations and failure rates - {title}")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def chart_markdown(png: bytes, alt: str = "step durations and failure rates") -> str:
    """Markdown embedding ``png`` inline (how the Dagster UI shows a plot in metadata)."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode('ascii')})"


__all__ = ["CHART_MAX_STEPS", "PNG_MAGIC", "chart_markdown", "chart_png", "report_markdown",
           "similar_failures_markdown", "stats_table"]
