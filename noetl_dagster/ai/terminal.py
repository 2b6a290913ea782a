"""`noetl-dagster tune` on a terminal: a short summary table; the full report goes to a file.

The markdown report (every step's statistics, every recommendation, similar past failures) can
run to hundreds of rows; a terminal gets the steps that need attention (highest failure rate,
then slowest p95) and the new recommendations, at most ``rows`` each, in ``rich`` tables, and
the path of the full report. Off a terminal, ``tune`` prints the markdown as before.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

#: rows per table on a terminal
SUMMARY_ROWS = 12


def write_report(path: str | Path, markdown: str) -> Path:
    """Write the full markdown report (creating its folder)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(markdown + "\n", encoding="utf-8")
    return target


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value / 1000:.1f}s" if value >= 1000 else f"{value:.0f}ms"


def summary(stats: Sequence[Any], recommendations: Sequence[Any], report: Path, *, verb: str,
            console: Any = None, rows: int = SUMMARY_ROWS) -> None:
    """Print the terminal summary of a tuning pass on ``console`` (stdout by default)."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    ranked = sorted(stats, key=lambda s: (-s.failure_rate, -(s.p95_ms or 0.0)))
    table = Table(title=f"Steps needing attention ({min(rows, len(ranked))} of {len(ranked)})", title_justify="left")
    for column, justify in (("playbook", "left"), ("step", "left"), ("runs", "right"), ("failed", "right"),
                            ("p50", "right"), ("p95", "right"), ("peak MB p99", "right")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for s in ranked[:rows]:
        table.add_row(s.playbook, s.step, str(s.runs), f"{100 * s.failure_rate:.1f}%", _ms(s.p50_ms), _ms(s.p95_ms),
                      "-" if s.peak_mb_p99 is None else f"{s.peak_mb_p99:.0f}")
    console.print(table)
    if recommendations:
        recs = Table(title=f"New recommendations ({len(recommendations)} {verb})", title_justify="left")
        for column in ("playbook", "step", "parameter", "value", "flags"):
            recs.add_column(column)
        for r in recommendations[:rows]:
            recs.add_row(r.playbook, r.step, r.parameter, r.summary(), ", ".join(r.flags))
        console.print(recs)
    else:
        console.print("No new recommendations: nothing new to propose.")
    more = max(len(ranked) - rows, 0) + max(len(recommendations) - rows, 0)
    console.print(f"Full report{f' ({more} more rows)' if more else ''}: {report}", highlight=False)
