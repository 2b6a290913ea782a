"""The playbooks a run can call as sub-playbooks (``tool: {kind: playbook, path: ...}``), by path.

Example::

    catalog = PlaybookCatalog.of(load_playbooks("playbooks/").playbooks)
    catalog.get("marketing/attribution_model")
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Iterable

from ..errors import Issue
from ..runtime.templates import is_template
from .models import Playbook

#: how many loaded paths an unknown sub-playbook path's hint lists at most
MAX_LISTED = 5


def calls_playbooks(playbook: Playbook) -> bool:
    """Whether ``playbook`` has a ``kind: playbook`` task (only then does a run need a catalog)."""
    return any(task.kind == "playbook" for step in playbook.workflow for task in step.tool)


@dataclass
class PlaybookCatalog:
    playbooks: dict[str, Playbook] = field(default_factory=dict)

    @classmethod
    def of(cls, playbooks: Iterable[Playbook]) -> "PlaybookCatalog":
        return cls({p.metadata.catalog_path.strip("/"): p for p in playbooks})

    def get(self, path: str) -> Playbook | None:
        return self.playbooks.get(str(path).strip("/"))

    def missing_references(self, playbook: Playbook) -> list[Issue]:
        """Sub-playbook paths in ``playbook`` that name no playbook of this catalog."""
        issues = []
        for step in playbook.workflow:
            for index, task in enumerate(step.tool):
                path = task.config.get("path")
                if task.kind != "playbook" or not isinstance(path, str) or is_template(path):
                    continue
                if self.get(path) is None:
                    field = f"tool[{index}].path" if step.pipeline else "tool.path"
                    issues.append(Issue(playbook.file, task.line or step.line, 1,
                                        f"sub-playbook {path!r} is not among the loaded playbooks",
                                        step.step, field, self.closest_hint(path)))
        return issues

    def closest_hint(self, path: str) -> str:
        """What to say about an unknown ``path``: the few closest loaded paths, not all of them."""
        known = sorted(self.playbooks)
        if not known:
            return "no playbooks are loaded"
        if len(known) <= MAX_LISTED:
            return "known: " + ", ".join(known)
        wanted = str(path).strip("/")
        close = difflib.get_close_matches(wanted, known, n=MAX_LISTED, cutoff=0.5)
        # a path whose last segment matches (the playbook moved to another folder) is close too
        tail = wanted.rsplit("/", 1)[-1]
        close += [k for k in known if k.rsplit("/", 1)[-1] == tail and k not in close]
        if close:
            return f"closest of {len(known)} loaded: " + ", ".join(close[:MAX_LISTED])
        return f"none of the {len(known)} loaded playbooks has a similar path"
