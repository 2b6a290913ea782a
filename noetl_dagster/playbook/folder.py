"""Playbook folders: find the playbook files under paths and parse them all, one broken file never
stopping the others.

Example::

    from noetl_dagster.playbook.folder import load_playbooks
    loaded = load_playbooks("playbooks/")
    [pb.name for pb in loaded.playbooks], [str(issue) for issue in loaded.issues]
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

from noetl_dagster.errors import Issue, PlaybookError
from noetl_dagster.playbook.loader import load_playbook
from noetl_dagster.playbook.models import Playbook

PLAYBOOK_SUFFIXES = (".yaml", ".yml")


def find_playbooks(paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Playbook files under ``paths`` (folders are searched recursively), sorted."""
    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    found: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found.extend(sorted(_walk_playbooks(path)))
        else:
            found.append(path)
    return found


def _walk_playbooks(root: Path) -> Iterator[Path]:
    """``*.yaml``/``*.yml`` files under ``root``; hidden folders (``.venv``, ``.git``,
    ``.dagster_home``) are never entered, hidden files never returned. Linked folders are
    followed once each."""
    seen: set[str] = set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if not name.startswith(".") and name.endswith(PLAYBOOK_SUFFIXES):
                yield Path(folder) / name


@dataclass
class LoadedPlaybooks:
    playbooks: list[Playbook] = field(default_factory=list)
    issues: list[Issue] = field(default_factory=list)


def load_playbooks(paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], strict: bool = False) -> LoadedPlaybooks:
    """Parse every playbook; collect the issues of broken ones (raise them when ``strict``)."""
    loaded = LoadedPlaybooks()
    for path in find_playbooks(paths):
        try:
            loaded.playbooks.append(load_playbook(path))
        except PlaybookError as exc:
            loaded.issues.extend(exc.issues)
    if strict and loaded.issues:
        raise PlaybookError(loaded.issues)
    return loaded
