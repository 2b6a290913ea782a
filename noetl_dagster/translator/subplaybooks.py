"""Who runs the child of a ``kind: playbook`` step: the sub-playbook runner the adapter hands to steps.

A step's tools run inside the adapter's ops, but running a playbook to its report (compile it,
execute the job in process, read the report) is :func:`noetl_dagster.run.run_playbook`, a layer
above the adapter. The package installs it here when it is imported (``noetl_dagster/__init__.py``
imports ``run.py`` only when a child first runs), and the adapter passes :func:`runner` to every
step as ``RunInfo.run_playbook`` / ``ToolContext.run_playbook``. A host that embeds the runtime
itself passes its own runner in its ``RunInfo``; without one a sub-playbook step fails with a
:class:`~noetl_dagster.errors.ToolError`.
"""

from __future__ import annotations

from typing import Any, Callable

_RUNNER: Callable[..., Any] | None = None


def set_runner(runner: Callable[..., Any] | None) -> Callable[..., Any] | None:
    """Install ``runner`` (``run_playbook``'s signature); returns the previous one."""
    global _RUNNER
    previous, _RUNNER = _RUNNER, runner
    return previous


def runner() -> Callable[..., Any] | None:
    """The installed sub-playbook runner (``None`` before the package installed one)."""
    return _RUNNER
