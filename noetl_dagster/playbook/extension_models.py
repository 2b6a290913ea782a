"""Typed models of the DSL extensions: ``metadata.dagster`` and a step's ``hardware:``.

NoETL ignores keys it does not know, so these blocks keep a playbook valid NoETL; here they are
checked when the playbook loads, like every other field: a bad value or an unknown key is an
:class:`~noetl_dagster.errors.Issue` naming file:line and the field (``metadata.dagster.tags``,
``hardware.cpu``), and the compiler reads typed attributes (``playbook.metadata.dagster.tags``,
``step.hardware.cpu``) instead of looking keys up in a dict.

Validators raise :class:`PydanticCustomError` with the whole sentence in ``message`` and an
optional ``hint``; the loader turns each error into an Issue (``loader._pydantic_issues``), and
an unknown key into ``unknown key 'x'`` with the closest known key as the hint (:data:`KNOWN_KEYS`).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Callable, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo, model_validator
from pydantic_core import PydanticCustomError

from noetl_dagster.playbook.source import SourceMap

DAGSTER_NAME = re.compile(r"^[A-Za-z0-9_]+$")
QUANTITY = re.compile(r"^\d+(\.\d+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
TAG_KEY = re.compile(r"^([A-Za-z0-9_.-]+/)?[A-Za-z0-9_.-]{1,63}$")
EXECUTORS = ("in_process", "multiprocess", "k8s", "kubernetes")
ON_ERROR = ("complete", "fail")


def describe_value(value: Any) -> str:
    """How an error message names a bad value: its kind for containers, else a short repr."""
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "nothing (null)"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def problem(message: str, hint: str | None = None) -> PydanticCustomError:
    """A validation error whose text is ``message`` (braces included) and whose Issue gets ``hint``."""
    return PydanticCustomError("noetl_extension", "{message}", {"message": message, "hint": hint})


def is_owner(owner: Any) -> bool:
    """An owner is an email address or ``team:<name>``."""
    return isinstance(owner, str) and (bool(EMAIL.match(owner)) or
                                       (owner.startswith("team:") and DAGSTER_NAME.match(owner[5:]) is not None))


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _count(prefix: bool) -> Callable[[Any, ValidationInfo], Any]:
    """A whole number >= 1 (explicit null refused); ``prefix`` names the field in the message."""
    def check(value: Any, info: ValidationInfo) -> Any:
        if not _positive_int(value):
            name = f"{info.field_name} " if prefix else ""
            raise problem(f"{name}must be a whole number of at least 1, got {describe_value(value)}")
        return value
    return check


def _choice(what: str, choices: tuple[str, ...], hint: str, message: str = "unknown {what} {shown}"
            ) -> Callable[[Any], Any]:
    """One of ``choices`` or null (the default)."""
    def check(value: Any) -> Any:
        if value is not None and value not in choices:
            raise problem(message.format(what=what, shown=describe_value(value)), hint)
        return value
    return check


def mapping(message: str, hint: str | None = None) -> Callable[[Any], Any]:
    """A block that must be a mapping (explicit null refused)."""
    def check(value: Any) -> Any:
        if not isinstance(value, dict):
            raise problem(message.format(shown=describe_value(value)), hint)
        return value
    return check


def _tag_key(key: Any) -> Any:
    if not isinstance(key, str) or not TAG_KEY.match(key):
        raise problem(f"tag key {key!r} is not valid (letters, digits, `_ . -`, an optional `prefix/`, "
                      "at most 63 characters)")
    if key.startswith(("noetl/", "dagster/")):
        raise problem(f"tag key {key!r} is reserved (noetl/ and dagster/ tags are set by the job)",
                      "use your own prefix, e.g. `team/owner`")
    return key


def _tag_value(value: Any) -> Any:
    if not isinstance(value, (str, int, float, bool)) or isinstance(value, str) and len(value) > 4096:
        raise problem(f"tag value must be a short text or number, got {describe_value(value)}")
    return value


def _k8s(value: Any) -> Any:
    if value is not None and not isinstance(value, dict):
        raise problem("`k8s` must be a mapping of k8s_job_executor settings",
                      "e.g. `k8s: {job_namespace: etl, max_concurrent: 4}`")
    return value


class ExtensionModel(BaseModel):
    """An extension block: unknown keys are errors (``extra_forbidden``), ``line`` is its YAML line."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    line: int = Field(default=0, exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _keep_line(cls, data: Any) -> Any:
        if isinstance(data, SourceMap) and "line" not in data:
            return {**data, "line": data.line}
        return data


class DagsterMetadata(ExtensionModel):
    """``metadata.dagster``: how the playbook's job runs on Dagster.

    ``executor`` in_process (default), multiprocess or k8s; ``max_concurrent`` ops at once
    (multiprocess, k8s); ``max_iterations`` step executions inside one cycle; ``automation: eager``
    refreshes products when an upstream product changed; ``tags`` on the job and its runs;
    ``on_error`` complete (NoETL) or fail (strict); ``k8s`` the k8s_job_executor's own settings
    (checked against its schema by the Dagster adapter).
    """

    executor: Annotated[Literal["in_process", "multiprocess", "k8s", "kubernetes"] | None, BeforeValidator(
        _choice("executor", EXECUTORS, "use in_process (default), multiprocess or k8s"))] = None
    max_concurrent: Annotated[int | None, BeforeValidator(_count(False))] = None
    max_iterations: Annotated[int | None, BeforeValidator(_count(False))] = None
    automation: Annotated[Literal["eager"] | None, BeforeValidator(
        _choice("automation", ("eager",), "use `automation: eager`"))] = None
    tags: Annotated[dict[Annotated[Any, BeforeValidator(_tag_key)], Annotated[Any, BeforeValidator(_tag_value)]],
                    BeforeValidator(mapping("must be a mapping of tag: value, got {shown}",
                                            "e.g. `tags: {team: ml}`"))] = Field(default_factory=dict)
    on_error: Annotated[Literal["complete", "fail"] | None, BeforeValidator(
        _choice("on_error", ON_ERROR, "complete (NoETL: an error result completes the step) or fail (strict)",
                "on_error {shown} is not `complete` or `fail`"))] = None
    k8s: Annotated[dict[str, Any] | None, BeforeValidator(_k8s)] = None


def _quantity(value: Any, info: ValidationInfo) -> str:
    text = str(value) if isinstance(value, (int, float, str)) and not isinstance(value, bool) else None
    if text is None or not QUANTITY.match(text):
        raise problem(f"{info.field_name} must be a Kubernetes quantity, got {describe_value(value)}",
                      'e.g. "500m", "2", "4Gi"')
    return text


def _node_selector(value: Any) -> Any:
    if not (isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, (str, int, float, bool))
                                            for k, v in value.items())):
        raise problem(f"node_selector must be a mapping of label: value, got {describe_value(value)}")
    return value


def _tolerations(value: Any) -> Any:
    if not (isinstance(value, list) and all(isinstance(t, dict) for t in value)):
        raise problem(f"tolerations must be a list of mappings, got {describe_value(value)}",
                      "e.g. `[{key: gpu, operator: Exists}]`")
    return value


Quantity = Annotated[str | None, BeforeValidator(_quantity)]


class Hardware(ExtensionModel):
    """A step's ``hardware:``: its pod's requests (``cpu``, ``memory``, ``gpu``), limits
    (``cpu_limit``, ``memory_limit``) and placement (``node_selector``, ``tolerations``) under the
    Kubernetes executor (``PlaybookTranslator.get_k8s_config``); quantities are kept as text."""

    cpu: Quantity = None
    memory: Quantity = None
    gpu: Annotated[int | None, BeforeValidator(_count(True))] = None
    cpu_limit: Quantity = None
    memory_limit: Quantity = None
    node_selector: Annotated[dict[str, Any] | None, BeforeValidator(_node_selector)] = None
    tolerations: Annotated[list[dict[str, Any]] | None, BeforeValidator(_tolerations)] = None

    def declared(self) -> dict[str, Any]:
        """The keys the playbook set, as written (quantities as text)."""
        return self.model_dump(exclude_none=True, exclude={"line"})


def known_keys(model: type[BaseModel]) -> list[str]:
    return [name for name in model.model_fields if name != "line"]
