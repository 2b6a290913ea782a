"""Load a folder of playbooks as Dagster ``Definitions``; one broken playbook never hides the rest.

Example::

    defs = load_playbook_definitions("playbooks/")
    defs = dg.Definitions.merge(my_defs, load_playbook_definitions(["a.yaml", "b.yaml"]))
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import dagster as dg

from ..errors import Issue, PlaybookError
from ..playbook.loader import load_playbook
from ..playbook.models import Playbook
from ..playbook.catalog import PlaybookCatalog
from .emit import build_job
from .translator import PlaybookTranslator

logger = logging.getLogger("noetl_dagster")
PLAYBOOK_SUFFIXES = (".yaml", ".yml")


def find_playbooks(paths: str | Path | Sequence[str | Path]) -> list[Path]:
    """Playbook files under ``paths`` (folders are searched recursively), sorted."""
    items = [paths] if isinstance(paths, (str, Path)) else list(paths)
    found: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found.extend(p for p in sorted(path.rglob("*")) if p.suffix in PLAYBOOK_SUFFIXES and p.is_file()
                         and not any(part.startswith(".") for part in p.relative_to(path).parts))
        else:
            found.append(path)
    return found


@dataclass
class LoadedPlaybooks:
    playbooks: list[Playbook] = field(default_factory=list)
    issues: list[Issue] = field(default_factory=list)


def load_playbooks(paths: str | Path | Sequence[str | Path], strict: bool = False) -> LoadedPlaybooks:
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


def load_playbook_definitions(paths: str | Path | Sequence[str | Path], *,
                              translator: PlaybookTranslator | None = None,
                              resources: Mapping[str, Any] | None = None,
                              strict: bool = False) -> dg.Definitions:
    """Compile every playbook under ``paths`` into jobs.

    A broken playbook is logged with every issue and left out, unless ``strict=True``, which
    raises :class:`~noetl_dagster.PlaybookError` instead. Two playbooks with the same job name
    are an error for the second one. ``resources`` configure the jobs, e.g.
    ``{"noetl_credentials": CredentialsResource(credentials={"pg": {...}})}``.
    """
    translator = translator or PlaybookTranslator()
    loaded = load_playbooks(paths, strict=strict)
    catalog = PlaybookCatalog.of(loaded.playbooks)
    jobs: dict[str, dg.JobDefinition] = {}
    duplicates: list[Issue] = []
    for playbook in loaded.playbooks:
        missing = catalog.missing_references(playbook)
        if missing:
            duplicates.extend(missing)
            continue
        name = translator.get_job_name(playbook)
        if name in jobs:
            duplicates.append(Issue(playbook.file, 1, 1, f"job name {name!r} is already used by another "
                                    "playbook", field="metadata.path", hint="give each playbook its own path"))
            continue
        jobs[name] = build_job(playbook, translator, resources=resources, catalog=catalog)
    issues = loaded.issues + duplicates  # broken, unknown sub-playbooks, duplicate names
    if strict and issues:
        raise PlaybookError(issues)
    for issue in issues:
        logger.warning("playbook skipped: %s", issue)
    return dg.Definitions(jobs=list(jobs.values()))

