"""Errors that name the file, line, step and field of a problem, and what to do about it.

Every exception this package raises on purpose is a :class:`NoetlDagsterError`: catch that one
class to handle them all (``except NoetlDagsterError``), or a subclass for one kind.
"""

from __future__ import annotations

from dataclasses import dataclass


class NoetlDagsterError(Exception):
    """The root of this package's errors."""


@dataclass(frozen=True)
class Issue:
    """One problem in a playbook.

    ``str(issue)`` is ``file:line:col: step 'x': field: message (hint)``; parts that do not
    apply are left out.
    """

    file: str
    line: int
    col: int
    message: str
    step: str | None = None
    field: str | None = None
    hint: str | None = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.col}:"
        parts = [where]
        if self.step is not None:
            parts.append(f"step '{self.step}':")
        if self.field:
            parts.append(f"{self.field}:")
        text = " ".join(parts) + " " + self.message
        if self.hint:
            text += f" ({self.hint})"
        return text


class PlaybookError(NoetlDagsterError):
    """A playbook that cannot be compiled; carries every :class:`Issue` found at once."""

    def __init__(self, issues: list[Issue]) -> None:
        self.issues = list(issues)
        super().__init__("\n".join(str(i) for i in self.issues))


class StepFailed(NoetlDagsterError):
    """A step's tool failed at run time; the message names the step and what went wrong."""

    def __init__(self, step: str, message: str, *, kind: str | None = None) -> None:
        self.step = step
        self.kind = kind
        self.reason = message
        prefix = f"step '{step}'" + (f" ({kind})" if kind else "")
        super().__init__(f"{prefix}: {message}")


class ToolError(NoetlDagsterError):
    """A tool failed in a way the user can fix; the message is shown as is.

    Raising it *fails* the step (NoETL's ``command.failed``: no arc fires). A tool that ran and
    reports a failure as data returns an :class:`~noetl_dagster.runtime.tools.base.ErrorResult`
    instead.
    """


class CredentialNotFound(ToolError):
    """An ``auth:`` alias that no configuration or environment variable defines."""
