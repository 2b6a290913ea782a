"""`noetl-dagster tune` on a terminal: a capped summary table and the full report in a file."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from rich.console import Console

from noetl_dagster.ai.recommend import Recommendation
from noetl_dagster.ai.terminal import summary, write_report


def _stats(i: int) -> SimpleNamespace:
    return SimpleNamespace(playbook="ops/big", step=f"step_{i:03d}", runs=10, failure_rate=(i % 7) / 10,
                           p50_ms=100.0 * i, p95_ms=150.0 * i, peak_mb_p99=None if i % 2 else 64.0 + i)


def test_summary_is_capped_and_points_at_the_full_report(tmp_path: Path) -> None:
    stats = [_stats(i) for i in range(100)]
    recs = [Recommendation("ops/big", f"step_{i:03d}", "retry_policy",
                           {"max_retries": 2, "delay": 1.0, "backoff": "exponential"}) for i in range(30)]
    report = write_report(tmp_path / "tuning" / "tuning_report.md", "### Step statistics\n\n| ... |")
    console = Console(record=True, width=160, force_terminal=False)
    summary(stats, recs, report, verb="proposed", console=console, rows=12)
    text = console.export_text()
    assert "Steps needing attention (12 of 100)" in text and "New recommendations (30 proposed)" in text
    assert text.count("ops/big") == 24  # 12 steps + 12 recommendations, not 130 rows
    first = text.split("New recommendations")[0]
    assert "step_097" in first and "60.0%" in first and "│   0.0%" not in first  # worst failure rate, then slowest
    assert "max_retries=2, delay=1.0s, backoff=exponential" in text
    assert f"Full report (106 more rows): {report}" in text.replace("\n", "")
    assert report.read_text().startswith("### Step statistics")


def test_no_recommendations_says_so(tmp_path: Path) -> None:
    console = Console(record=True, width=120)
    summary([_stats(1)], [], tmp_path / "r.md", verb="proposed", console=console)
    assert "nothing new to propose" in console.export_text()
