"""The tool interface: what a step's ``tool: {kind: ...}`` runs.

A tool receives its raw (unrendered) config and a :class:`ToolContext`; it renders what it
needs with ``ctx.render`` and returns the step's result data. Raise :class:`ToolError` with a
message a user can act on; any other exception also fails the step with its message.

Example, a custom tool registered for ``kind: echo``::

    class EchoTool(Tool):
        kind = "echo"

        def run(self, config, ctx):
            return {"said": ctx.render(config.get("text", ""))}

    register_tool(EchoTool())
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Mapping

from noetl_dagster.core.templates import render_value
from noetl_dagster.errors import ToolError
from noetl_dagster.playbook.kinds import RESULT_FORMATS, register_kind, result_format, supported_kinds

__all__ = ["RESULT_FORMATS", "ErrorResult", "Tool", "ToolContext", "ToolError", "get_tool", "register_tool",
           "result_format", "supported_kinds"]


@dataclass
class ErrorResult:
    """NoETL's *error result* (``ToolStatus::Error``): the tool ran and its outcome is an error.

    The step still completes: ``data`` is what templates see as the step's result (NoETL's
    ``ToolResult.data``, e.g. ``{stdout, stderr}`` for a python exception, ``{status_code,
    headers, data, body}`` for an HTTP non-2xx), its ``set:`` and arcs are evaluated, and its
    status is ``error``. ``message`` is NoETL's ``ToolResult.error``. In strict mode
    (``metadata.dagster.on_error: fail``) an error result fails the step instead.

    Examples:
        A custom tool reporting a failed remote job without failing the step::

            class JobTool(Tool):
                kind = "job"

                def run(self, config, ctx):
                    answer = submit(ctx.render(config))
                    if answer["state"] == "FAILED":
                        return ErrorResult(answer, f"job {answer['id']} failed")
                    return answer
    """

    data: Any
    message: str


@dataclass
class ToolContext:
    """What a tool may use: the render scope, the step's identity, resources and a logger."""

    step: str
    execution_id: Any  # NoETL's numeric execution id (an int in runs; tests may pass text)
    scope: Mapping[str, Any]
    log: logging.Logger | Any = field(default_factory=lambda: logging.getLogger("noetl_dagster"))
    resources: Mapping[str, Any] = field(default_factory=dict)
    #: the step's legacy ``args:`` (used by tools that take arguments when they have none)
    step_args: Mapping[str, Any] = field(default_factory=dict)
    #: loop iteration variables (``<iterator>``, ``_index``, ``_total``), empty outside loops
    iteration: Mapping[str, Any] = field(default_factory=dict)
    #: the Dagster run id (what sub-playbook runs are tagged with)
    run_id: str = ""
    #: what the host provides (the Dagster adapter sets both; ``None`` when the runtime runs on
    #: its own, and the tools that need them fail with a ToolError):
    #: ``run_playbook(child, workload, *, instance, tags, catalog, resources, log_level)`` runs a
    #: sub-playbook to its end and returns its report (``status``, ``run_id``, ``steps``)
    run_playbook: Callable[..., Any] | None = None
    #: ``run_k8s_job(execute_k8s_job kwargs, log)`` runs a Kubernetes Job and returns
    #: ``{job_name, namespace, pod, logs}`` (``kind: container``)
    run_k8s_job: Callable[[dict[str, Any], Any], dict[str, Any]] | None = None

    def credential(self, alias: str) -> dict[str, Any]:
        """The fields of credential ``alias`` (from the ``noetl_credentials`` resource).

        Raises :class:`ToolError` naming the alias when it is unknown. The values are secrets:
        never put them in results, logs or error messages.
        """
        resolver = self.resources.get("credentials")
        if resolver is None:
            raise ToolError(f"credential {alias!r} requested but no credentials resource is configured")
        return resolver.resolve(alias)

    def render(self, value: Any, extra: Mapping[str, Any] | None = None) -> Any:
        """Render templates in ``value`` against the step's scope (plus ``extra`` names)."""
        scope = {**self.scope, **extra} if extra else self.scope
        return render_value(value, scope)


class Tool:
    """Base class of tool kinds. Override :meth:`run`; set ``kind``."""

    kind: ClassVar[str] = ""

    def run(self, config: dict[str, Any], ctx: ToolContext) -> Any:  # pragma: no cover
        raise NotImplementedError

    def validate(self, config: Mapping[str, Any]) -> list[tuple[str, str, str | None]]:
        """Problems of a config found before running: ``(field, message, hint)`` tuples.

        Override it in a custom tool: :func:`register_tool` hands it to the DSL, so ``noetl-dagster
        validate`` and every load report each problem at the line of its field (``config`` is the
        unrendered task config: leave templated values to :meth:`run`). The built-in kinds' checks
        live in :mod:`noetl_dagster.playbook.kinds`; a tool registered for a built-in kind without
        its own ``validate`` keeps them.

        Examples:
            A custom ``kind: echo`` that needs ``text:``::

                class EchoTool(Tool):
                    kind = "echo"

                    def validate(self, config):
                        if "text" not in config:
                            return [("text", "an echo tool needs `text:`", "text: hello")]
                        return []

                    def run(self, config, ctx):
                        return {"said": ctx.render(config["text"])}

                register_tool(EchoTool())
        """
        return []


_REGISTRY: dict[str, Tool] = {}


def register_tool(tool: Tool) -> Tool:
    """Make ``tool`` available as ``tool: {kind: <tool.kind>}`` in every playbook.

    Its own :meth:`Tool.validate` (when the class defines one) becomes the kind's load-time check.
    """
    _REGISTRY[tool.kind] = tool
    own = type(tool).validate is not Tool.validate
    register_kind(tool.kind, tool.validate if own else None)
    return tool


def get_tool(kind: str) -> Tool:
    return _REGISTRY[kind]

