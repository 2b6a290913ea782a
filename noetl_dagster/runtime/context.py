"""Tokens: the execution context that flows along arcs.

A token carries what the next step may read: the workload, the results of the steps upstream
of it (by name) and ``ctx`` values written by ``set:``, each stamped with the time it was
written so that a join merging several tokens keeps the latest write (NoETL's "latest wins").
An arc's own ``set:`` reaches only that arc's target. Tokens are plain dicts, so any IO manager
can store them; large data travels as references, not inside tokens.

Example::

    ctx = Context.initial({"n": 1}).with_result("start", {"v": 2})
    token = ctx.token(to="next_step", arc_set={"flag": True})
    Context.merge([token]).scope("run-1")["start"]["v"]      # 2
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from noetl_dagster.core.templates import ReadOnlyMap, freeze


def _clock() -> int:
    return time.time_ns()


@dataclass
class Context:
    """The flat NoETL context a step runs in, before it is frozen for templates."""

    workload: dict[str, Any] = field(default_factory=dict)
    results: dict[str, tuple[int, Any]] = field(default_factory=dict)
    ctx: dict[str, tuple[int, Any]] = field(default_factory=dict)
    arc: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def initial(cls, workload: Mapping[str, Any]) -> "Context":
        return cls(workload=dict(workload))

    @classmethod
    def merge(cls, tokens: Iterable[Mapping[str, Any]]) -> "Context":
        """Join tokens: union of results and ctx, the latest write of each name wins."""
        merged = cls()
        for token in tokens:
            if not merged.workload:
                merged.workload = dict(token.get("workload") or {})
            for name, stamped in (token.get("results") or {}).items():
                if name not in merged.results or stamped[0] > merged.results[name][0]:
                    merged.results[name] = (stamped[0], stamped[1])
            for name, stamped in (token.get("ctx") or {}).items():
                if name not in merged.ctx or stamped[0] > merged.ctx[name][0]:
                    merged.ctx[name] = (stamped[0], stamped[1])
            merged.arc.update(token.get("arc") or {})
        return merged

    def with_result(self, step: str, value: Any) -> "Context":
        results = dict(self.results)
        results[step] = (_clock(), value)
        return Context(self.workload, results, self.ctx, {})

    def with_ctx(self, updates: Mapping[str, Any]) -> "Context":
        if not updates:
            return self
        now = _clock()
        ctx = dict(self.ctx)
        ctx.update({k: (now, v) for k, v in updates.items()})
        return Context(self.workload, self.results, ctx, self.arc)

    def without_arc(self) -> "Context":
        return Context(self.workload, self.results, self.ctx, {})

    def result(self, step: str, default: Any = None) -> Any:
        stamped = self.results.get(step)
        return default if stamped is None else stamped[1]

    def token(self, to: str, arc_set: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The token an arc to ``to`` carries (plain, picklable data)."""
        return {
            "to": to,
            "workload": self.workload,
            "results": self.results,
            "ctx": self.ctx,
            "arc": dict(arc_set or {}),
        }

    def scope(self, execution_id: str, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The flat, read-only render scope NoETL templates see.

        Precedence (lowest first): workload keys, step results, ctx values, arc ``set`` values.
        ``workload`` and ``ctx`` are also names of their own (``ctx`` is the whole flat context).
        """
        flat: dict[str, Any] = {k: freeze(v) for k, v in self.workload.items()}
        for name, (_, value) in self.results.items():
            flat[name] = freeze(value, data_alias=True)
        for name, (_, value) in self.ctx.items():
            flat[name] = freeze(value)
        for name, value in self.arc.items():
            flat[name] = freeze(value)
        flat["workload"] = ReadOnlyMap(self.workload)
        flat["ctx"] = ReadOnlyMap(dict(flat))
        flat["execution_id"] = execution_id
        if extra:
            flat.update({k: freeze(v) for k, v in extra.items()})
        return flat
