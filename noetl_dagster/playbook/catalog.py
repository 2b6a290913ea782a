"""The playbooks a run can call as sub-playbooks (``tool: {kind: playbook, path: ...}``), by path.

Example::

    catalog = PlaybookCatalog.of(load_playbooks("playbooks/").playbooks)
    catalog.get("marketing/attribution_model")
"""

from __future__ import annotations

import difflib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from noetl_dagster.errors import Issue, PlaybookError
from noetl_dagster.core.templates import is_template
from noetl_dagster.playbook.models import Playbook
from noetl_dagster.playbook.loader import load_playbook

logger = logging.getLogger("noetl_dagster")
#: the configured catalog root (a folder of playbooks laid out by metadata.path)
CATALOG_ROOT_ENV = "NOETL_CATALOG_ROOT"
#: most playbook files a catalog scan reads; past it the scan stops (and says so)
MAX_CATALOG_FILES = int(os.environ.get("NOETL_MAX_CATALOG_FILES", 2_000))
#: folders a scan never enters (besides hidden ones)
SKIPPED_FOLDERS = frozenset({"node_modules", "site-packages", "__pycache__", "venv", "noetl_data"})
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

    def scan(self) -> list[Playbook]:
        """Every playbook the catalog holds (a folder catalog reads its folder first)."""
        return list(self.playbooks.values())

    def missing_references(self, playbook: Playbook) -> list[Issue]:
        """Sub-playbook paths in ``playbook`` that name no playbook of this catalog."""
        issues = []
        for step in playbook.workflow:
            for index, task in enumerate(step.tool):
                path = task.config.get("path")
                if task.kind != "playbook" or not isinstance(path, str) or is_template(path):
                    continue
                field = f"tool[{index}].path" if step.pipeline else "tool.path"
                if self.get(path) is None:
                    issues.append(Issue(playbook.file, task.line or step.line, 1,
                                        f"sub-playbook {path!r} is not among the loaded playbooks",
                                        step.step, field, self.closest_hint(path)))
                    continue
                cycle = self._cycle(playbook.metadata.catalog_path.strip("/"), path.strip("/"))
                if cycle:
                    issues.append(Issue(playbook.file, task.line or step.line, 1,
                                        "sub-playbook calls form a cycle: " + " -> ".join(cycle)
                                        + " (each run would start the next without end)", step.step, field,
                                        "break the cycle; runs are also stopped past NOETL_MAX_SUBPLAYBOOK_DEPTH"))
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

    def _cycle(self, origin: str, first: str) -> list[str] | None:
        """The static call path ``origin -> first -> ... -> origin``, or None (templated paths end it)."""
        stack: list[tuple[str, list[str]]] = [(first, [origin, first])]
        seen: set[str] = set()
        while stack:
            current, trail = stack.pop()
            if current == origin:
                return trail
            if current in seen or len(seen) > 500:
                continue
            seen.add(current)
            callee = self.get(current)
            for path in calls_of(callee) if callee is not None else []:
                stack.append((path, trail + [path]))
        return None


def calls_of(playbook: Playbook) -> list[str]:
    """The literal ``path`` of every ``kind: playbook`` task of ``playbook``."""
    return [str(task.config["path"]).strip("/") for step in playbook.workflow for task in step.tool
            if task.kind == "playbook" and isinstance(task.config.get("path"), str)
            and not is_template(task.config["path"])]


class FolderCatalog(PlaybookCatalog):
    """The playbooks under one folder, read on demand.

    ``get("a/b")`` reads ``<root>/a/b.yaml`` (or ``.yml``) first; only a path not laid out that
    way makes it scan the folder, once, bounded: at most :data:`MAX_CATALOG_FILES` files, hidden
    folders (``.venv``, ``.git``) and :data:`SKIPPED_FOLDERS` never entered, links not followed.
    A broken file is skipped (``validate`` of that file reports it).
    """

    def __init__(self, root: str | Path, playbooks: Iterable[Playbook] = ()) -> None:
        super().__init__({p.metadata.catalog_path.strip("/"): p for p in playbooks})
        self.root = Path(root)
        self.scanned = False

    def get(self, path: str) -> Playbook | None:
        key = str(path).strip("/")
        found = self.playbooks.get(key)
        if found is not None or not key:
            return found
        if ".." not in key.split("/"):
            for suffix in (".yaml", ".yml"):
                candidate = self.root / (key + suffix)
                playbook = _load(candidate) if candidate.is_file() else None
                if playbook is not None:
                    self.playbooks.setdefault(playbook.metadata.catalog_path.strip("/"), playbook)
                    if playbook.metadata.catalog_path.strip("/") == key:
                        return playbook
        self.scan()
        return self.playbooks.get(key)

    def scan(self) -> list[Playbook]:
        """Every playbook under the folder (read once, bounded; broken files skipped)."""
        if not self.scanned:
            self.scanned = True
            for file in _walk(self.root):
                playbook = _load(file)
                if playbook is not None:
                    self.playbooks.setdefault(playbook.metadata.catalog_path.strip("/"), playbook)
        return list(self.playbooks.values())


def _load(file: Path) -> Playbook | None:
    try:
        return load_playbook(file)
    except PlaybookError:
        return None


def _walk(root: Path) -> Iterator[Path]:
    count = 0
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in SKIPPED_FOLDERS)
        for name in sorted(files):
            if name.startswith(".") or not name.endswith((".yaml", ".yml")):
                continue
            count += 1
            if count > MAX_CATALOG_FILES:
                logger.warning("sub-playbook catalog: stopped after %d files under %s (%s=... to point "
                               "at the playbooks' folder)", MAX_CATALOG_FILES, root, CATALOG_ROOT_ENV)
                return
            yield Path(folder) / name


def catalog_root(playbook: Playbook) -> Path:
    """The folder a playbook's sub-playbooks are looked up in.

    ``NOETL_CATALOG_ROOT`` when set; else the folder ``metadata.path`` is relative to, when the
    file really lies there (``playbooks/risk/score.yaml`` with ``path: risk/score`` ->
    ``playbooks/``); else the playbook's own folder (a path deeper than the file's folders never
    sends the scan up to ``/``).
    """
    configured = os.environ.get(CATALOG_ROOT_ENV)
    if configured:
        return Path(configured).resolve()
    folder = Path(playbook.file).resolve().parent
    segments = playbook.metadata.catalog_path.strip("/").split("/")[:-1]
    root = folder
    for segment in reversed(segments):
        if root.name != segment or root.parent == root:
            return folder
        root = root.parent
    return folder if root.parent == root else root


def catalog_for(*playbooks: Playbook) -> PlaybookCatalog:
    """``playbooks`` plus, on demand, the playbooks under their catalog roots (one root: lazy)."""
    roots = sorted({catalog_root(p) for p in playbooks if Path(p.file).is_file()})
    if len(roots) == 1:
        return FolderCatalog(roots[0], playbooks)
    return _Several([FolderCatalog(root, playbooks) for root in roots], playbooks)


class _Several(PlaybookCatalog):
    """Several folder catalogs (``validate`` of files from different trees), looked up in turn."""

    def __init__(self, parts: list[FolderCatalog], playbooks: Iterable[Playbook]) -> None:
        super().__init__({p.metadata.catalog_path.strip("/"): p for p in playbooks})
        self.parts = parts

    def get(self, path: str) -> Playbook | None:
        found = self.playbooks.get(str(path).strip("/"))
        for part in self.parts:
            if found is not None:
                break
            found = part.get(path)
        return found

    def scan(self) -> list[Playbook]:
        return list({id(p): p for part in [PlaybookCatalog(self.playbooks), *self.parts] for p in part.scan()}.values())
