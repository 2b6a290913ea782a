"""Similar past failures from Qdrant as evidence of retry recommendations.

A retry policy (or an explicit *no retry*) for a step is explained by the failures behind it:
the step's latest failure message (from ClickHouse, :attr:`StepStats.last_error`) is searched
in the Qdrant ``failures`` collection with the failure hints' own search
(:func:`noetl_dagster.export.hints.find_similar`), and the best matches are added to the
recommendation's evidence as ``similar_failures``: run id, playbook, step, message, similarity
and whether a later run of that step succeeded (``later_succeeded``, ``resolved_by_run``).
Many failures later resolved by plain re-runs support a retry; an unresolved identical error
supports *no retry*.

Qdrant is optional: without a sink the recommendations are returned unchanged, and a search
error (server down, local folder locked by another process) is logged once and leaves them
unchanged too.

Example::

    from noetl_dagster.export.embedder import EmbedderResource
    from noetl_dagster.export.qdrant import QdrantResource

    sink = QdrantResource().sink(EmbedderResource().get())
    recs = add_similar_failures(recommend(stats), stats, sink, limit=3)
    recs[0].evidence["similar_failures"][0]["run_id"]
"""

from __future__ import annotations

import dataclasses
import logging
import time
from contextlib import ExitStack, contextmanager
from typing import Any, Iterator, Sequence

from noetl_dagster.ai.recommend import Recommendation
from noetl_dagster.ai.stats import StepStats

log = logging.getLogger("noetl_dagster.ai")

#: recommendations whose evidence gets similar past failures
EXPLAINED_PARAMETERS = ("retry_policy",)


@contextmanager
def evidence_sink(qdrant: Any, embedder: Any, logger: Any = None) -> Iterator[Any]:
    """The :class:`~noetl_dagster.export.qdrant.QdrantSink` of these resources for a ``with``
    block (local mode's folder is released after it), or None with a warning on ``logger``
    (default: this module's) when it cannot be opened - a server down, or local mode's folder held
    by another process (an export sensor's tick)."""
    with ExitStack() as stack:
        try:
            sink = stack.enter_context(qdrant.session(embedder.get()))
        except Exception as exc:  # noqa: BLE001 - optional evidence
            (logger or log).warning(f"Qdrant unavailable, recommendations get no similar-failure evidence: "
                                    f"{type(exc).__name__}: {exc}")
            sink = None
        yield sink


def similar_failures(sink: Any, stats: StepStats, limit: int = 3, min_score: float | None = None,
                     now: float | None = None) -> list[dict[str, Any]]:
    """The failures in Qdrant most similar to ``stats``' latest failure (any run, up to ``now``), best first."""
    from noetl_dagster.export.hints import DEFAULT_MIN_SCORE, find_similar
    from noetl_dagster.export.mapping import StepFailure

    if not stats.last_error:
        return []
    probe = StepFailure(run_id="", playbook=stats.playbook, domain="", step=stats.step, step_key=stats.step,
                        tool=stats.tool, attempt=0, error=stats.last_error,
                        timestamp=time.time() if now is None else now)
    hints = find_similar(sink, [probe], limit, DEFAULT_MIN_SCORE if min_score is None else min_score)
    return [{"run_id": h.run_id, "playbook": h.playbook, "step": h.step, "message": h.error, "score": h.score,
             "later_succeeded": bool(h.resolved_by_run), "resolved_by_run": h.resolved_by_run} for h in hints]


def add_similar_failures(recommendations: Sequence[Recommendation], stats: Sequence[StepStats], sink: Any,
                         limit: int = 3, min_score: float | None = None) -> list[Recommendation]:
    """``recommendations`` with ``evidence["similar_failures"]`` on the retry ones that have matches.

    ``sink``: a :class:`~noetl_dagster.export.qdrant.QdrantSink`, or None (nothing added).
    """
    if sink is None:
        return list(recommendations)
    by_step = {(s.playbook, s.step): s for s in stats}
    out: list[Recommendation] = []
    for i, rec in enumerate(recommendations):
        step = by_step.get((rec.playbook, rec.step))
        if rec.parameter not in EXPLAINED_PARAMETERS or step is None:
            out.append(rec)
            continue
        try:
            hits = similar_failures(sink, step, limit, min_score)
        except Exception as exc:  # noqa: BLE001 - evidence is optional; recommendations stand without it
            log.warning("similar past failures unavailable (%s: %s); recommendations have no Qdrant evidence",
                        type(exc).__name__, exc)
            return out + list(recommendations[i:])
        out.append(dataclasses.replace(rec, evidence={**rec.evidence, "similar_failures": hits}) if hits else rec)
    return out


__all__ = ["EXPLAINED_PARAMETERS", "add_similar_failures", "evidence_sink", "similar_failures"]
