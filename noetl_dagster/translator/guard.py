"""Compiling one playbook never takes others down: every failure becomes an :class:`Issue`.

Validation catches what it knows; Dagster's own definition checks, a translator override that
raises, or a chain of steps deep enough to exhaust Python's recursion limit in Dagster's graph
building would otherwise escape as a raw exception and lose a whole folder of playbooks.

Example::

    with compiling(playbook):
        defs = build_definitions(playbook, translator)   # raises PlaybookError, never anything else
"""

from __future__ import annotations

import contextlib
import re
import sys
from typing import Any, Iterator

from noetl_dagster.errors import Issue, PlaybookError
from noetl_dagster.playbook.models import Playbook
from noetl_dagster.translator.emit import build_definitions

#: Python frames Dagster needs per op when it walks a graph recursively (with headroom)
FRAMES_PER_STEP = 4
#: never raise the recursion limit past this (the C stack of the main thread stays safe)
MAX_RECURSION_LIMIT = 60_000
_FIRST_LINE = re.compile(r"^[^\n]*")


@contextlib.contextmanager
def deep_enough(playbook: Playbook) -> Iterator[None]:
    """Raise the recursion limit for a long chain of steps (Dagster walks graphs recursively)."""
    before = sys.getrecursionlimit()
    wanted = min(MAX_RECURSION_LIMIT, 2_000 + FRAMES_PER_STEP * 3 * len(playbook.workflow))
    if wanted > before:
        sys.setrecursionlimit(wanted)
    try:
        yield
    finally:
        if wanted > before:
            sys.setrecursionlimit(before)


@contextlib.contextmanager
def compiling(playbook: Playbook) -> Iterator[None]:
    """Run a compile step of ``playbook``; any failure is re-raised as a :class:`PlaybookError`."""
    try:
        with deep_enough(playbook):
            yield
    except PlaybookError:
        raise
    except RecursionError:
        raise PlaybookError([Issue(
            playbook.file, 1, 1, f"the workflow is too deep to compile ({len(playbook.workflow)} steps)",
            field="workflow", hint="split it into sub-playbooks (`tool: {kind: playbook}`)")]) from None
    except MemoryError:
        raise PlaybookError([Issue(playbook.file, 1, 1, "ran out of memory while compiling the playbook",
                                   field="workflow")]) from None
    except Exception as exc:  # noqa: BLE001 - a compile failure is this playbook's problem only
        raise PlaybookError([compile_issue(playbook, exc)]) from None


def compile_issue(playbook: Playbook, exc: BaseException) -> Issue:
    """``exc`` as an issue of ``playbook``, pointing at the step its message names, if any."""
    text = _FIRST_LINE.match(str(exc).strip()).group(0)  # type: ignore[union-attr]
    if len(text) > 300:
        text = text[:297] + "..."
    line, step = 1, None
    for candidate in playbook.workflow:
        if re.search(r"(?<![\w-])" + re.escape(candidate.step) + r"(?![\w-])", text):
            line, step = candidate.line or 1, candidate.step
            break
    return Issue(playbook.file, line, 1, f"cannot be compiled into Dagster definitions: {type(exc).__name__}: "
                 f"{text}", step, "workflow" if step is None else "step",
                 "please report this with the playbook if the message does not say what to change")


def compile_issues(playbooks: list[Playbook], translator: Any = None) -> list[Issue]:
    """The issues of ``playbooks`` that pass validation but cannot be compiled (``validate`` runs this)."""
    found: list[Issue] = []
    for playbook in playbooks:
        try:
            with compiling(playbook):
                build_definitions(playbook, translator)
        except PlaybookError as exc:
            found.extend(exc.issues)
    return found


def clashes(playbook: Playbook, defs: Any, taken: dict[str, str]) -> list[Issue]:
    """Issues for names in ``defs`` that another playbook's definitions already use (asset keys,
    asset check keys, schedules); otherwise ``taken`` records this playbook's names.

    Two playbooks with the same domain and ``metadata.name`` under different paths, for instance,
    would both define the run-outcome asset ``[domain, name__outcome]``: Dagster then refuses the
    whole code location, so the second playbook is left out instead.
    """
    names: list[str] = []
    for asset in defs.assets or []:
        names += [f"asset {key.to_user_string()}" for key in getattr(asset, "keys", [])]
        names += [f"asset check {key.asset_key.to_user_string()}:{key.name}"
                  for key in getattr(asset, "check_keys", [])]
    for check in defs.asset_checks or []:
        names += [f"asset check {key.asset_key.to_user_string()}:{key.name}" for key in getattr(check, "check_keys", [])]
    names += [f"schedule {schedule.name}" for schedule in defs.schedules or []]
    owner = playbook.metadata.catalog_path
    found = [Issue(playbook.file, playbook.metadata.line or 1, 1, f"{name} is already defined by playbook "
                   f"{taken[name]!r}", field="metadata.name", hint="give the playbooks different names or domains")
             for name in dict.fromkeys(names) if name in taken and taken[name] != owner]
    if not found:
        taken.update({name: owner for name in names})
    return found
