"""``noetl-dagster tune``: learn from run history in ClickHouse, write tuning profiles.

    noetl-dagster tune                         # propose: print the table, write proposed entries
    noetl-dagster tune --apply                 # approve recommendations within bounds
    noetl-dagster tune --profiles tuning/ --playbooks playbooks/ --json
    noetl-dagster tune --similar-failures      # retry recommendations explained by similar past failures

History comes from the configured ClickHouse (``NOETL_CLICKHOUSE_DSN``, embedded chdb at
``$DAGSTER_HOME/noetl_clickhouse`` by default). ``--playbooks`` supplies the steps' declared
``hardware:`` (the baseline for over-provisioning) and the parallel loops' ``chunk_size``,
``max_in_flight`` and executor. ``--similar-failures`` searches the Qdrant
the export writes to (``NOETL_QDRANT_URL``/``NOETL_QDRANT_PATH``, ``NOETL_EMBEDDER``); unavailable,
it warns and recommends as without. Wire with ``add_commands(subparsers)``.
"""

from __future__ import annotations

import argparse
import os
from contextlib import nullcontext
import json
import sys
from pathlib import Path
from typing import Any, Sequence

from noetl_dagster.ai.evidence import add_similar_failures, evidence_sink
from noetl_dagster.ai.profiles import apply_recommendations, load_profiles, save_profile
from noetl_dagster.ai.recommend import TuningBounds, recommend
from noetl_dagster.ai.report import report_markdown
from noetl_dagster.ai.stats import StepStats, step_stats


def declared(folder: str | os.PathLike[str] | None) -> tuple[dict[tuple[str, str], dict[str, Any]],
                                                  dict[tuple[str, str], dict[str, Any]]]:
    """What the playbooks under ``folder`` declare, read once (broken ones skipped):
    ``{(playbook path, step): hardware}`` and, for parallel loops,
    ``{(playbook path, step): {chunk_size, max_in_flight, executor}}``."""
    hardware: dict[tuple[str, str], dict[str, Any]] = {}
    loops: dict[tuple[str, str], dict[str, Any]] = {}
    if not folder or not Path(folder).exists():
        return hardware, loops
    from noetl_dagster.playbook.folder import find_playbooks, load_playbooks

    for pb in load_playbooks(find_playbooks([Path(folder)])).playbooks:
        executor = pb.metadata.dagster.executor or "in_process"
        for step in pb.workflow:
            key = (pb.metadata.catalog_path, step.step)
            if step.hardware is not None:
                hardware[key] = step.hardware.declared()
            if step.loop is not None and step.loop.mode == "parallel":
                loops[key] = {"chunk_size": step.loop.chunk_size, "max_in_flight": step.loop.max_in_flight,
                              "executor": executor}
    return hardware, loops


def run_tune(client: Any, profiles_dir: str | Path, apply: bool = False, bounds: TuningBounds | None = None,
             playbooks_dir: str | os.PathLike[str] | None = None, stats: Sequence[StepStats] | None = None,
             qdrant: Any = None) -> tuple[list, list[Path]]:
    """Stats -> recommendations -> profiles; returns (recommendations added, files written).

    ``stats``: already read (the ``observability/step_stats`` asset); else read from ``client``.
    ``qdrant``: a :class:`~noetl_dagster.export.qdrant.QdrantSink` whose similar past failures
    become evidence of retry recommendations (:mod:`.evidence`); None: no such evidence.
    """
    if stats is None:
        stats = step_stats(client)
    profiles = load_profiles(profiles_dir)
    skip = ("approved", "rejected") if apply else ("proposed", "approved", "rejected")
    hardware, loops = declared(playbooks_dir)
    recs = recommend(stats, bounds or TuningBounds(), profiles, hardware, skip, loops)
    recs = add_similar_failures(recs, stats, qdrant)
    added = apply_recommendations(profiles, recs, auto_approve=apply)
    written = [save_profile(profiles[p], profiles_dir) for p in sorted({r.playbook for r in added})]
    return added, written


def cmd_tune(args: argparse.Namespace) -> int:
    from noetl_dagster.export.clickhouse import ClickHouseResource

    playbooks = args.playbooks or ("playbooks" if Path("playbooks").is_dir() else None)
    from noetl_dagster.export.embedder import EmbedderResource
    from noetl_dagster.export.qdrant import QdrantResource

    sink = ClickHouseResource().sink()
    stats = step_stats(sink)
    with evidence_sink(QdrantResource(), EmbedderResource()) if args.similar_failures else nullcontext() as qdrant:
        added, written = run_tune(sink, args.profiles, args.apply, playbooks_dir=playbooks, stats=stats,
                                  qdrant=qdrant)
    if args.json:
        print(json.dumps([{"playbook": r.playbook, "step": r.step, "parameter": r.parameter, "value": r.value,
                           "evidence": r.evidence, "expected_effect": r.expected_effect,
                           "within_bounds": r.within_bounds, "flags": list(r.flags)} for r in added], default=str))
    else:
        from noetl_dagster.ai.terminal import summary, write_report

        verb = "approved (within bounds)" if args.apply else "proposed"
        markdown = report_markdown(stats, added, approved=args.apply)
        report = write_report(args.report or Path(args.profiles) / "tuning_report.md", markdown)
        if sys.stdout.isatty():  # a terminal: a short summary, the full report in the file
            summary(stats, added, report, verb=verb)
        else:
            print(markdown)
        print(f"\n{len(added)} recommendation(s) {verb}; wrote {', '.join(map(str, written)) or 'nothing'}",
              file=sys.stderr)
    return 0


def add_commands(subparsers: Any) -> None:
    """Register ``tune`` on the ``noetl-dagster`` argparse sub-parsers."""
    tune = subparsers.add_parser("tune", help="recommend retries, timeouts, resources and loop chunking/concurrency from run history")
    tune.add_argument("--apply", action="store_true", help="approve recommendations within bounds (default: propose)")
    tune.add_argument("--profiles", default="tuning", help="folder of tuning profiles (default ./tuning)")
    tune.add_argument("--playbooks", help="playbooks folder for declared hardware (default ./playbooks if present)")
    tune.add_argument("--similar-failures", action="store_true",
                      help="explain retry recommendations with similar past failures from Qdrant "
                           "(NOETL_QDRANT_URL, else local mode under $DAGSTER_HOME)")
    tune.add_argument("--json", action="store_true", help="print the added recommendations as JSON")
    tune.add_argument("--report", help="where to write the full markdown report (default <profiles>/tuning_report.md)")
    tune.set_defaults(func=cmd_tune)


__all__ = ["add_commands", "cmd_tune", "declared", "run_tune"]
