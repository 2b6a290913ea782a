"""Pydantic models of a NoETL playbook (``apiVersion: noetl.io/v2``), normalised.

Every form the NoETL engine accepts is read and normalised to one shape:

* ``next`` (a name, a list of names, legacy ``[{step, when}]`` targets, or the router
  ``{spec: {mode}, arcs: [...]}``) becomes :class:`Next` with ordered :class:`Arc` s;
* ``tool`` (one spec, or a pipeline list of flat ``{name, kind, ...}`` or nested
  ``{label: {kind, ...}}`` items) becomes a list of :class:`Task` plus ``pipeline=True|False``;
* ``set`` keys lose their ``ctx.``/``iter.``/``step.`` scope prefix.

Each model keeps ``line`` (1-based) of the YAML it came from.
"""

from __future__ import annotations

from functools import cached_property
from typing import Annotated, Any, Literal

from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, ValidationInfo, field_validator,
                      model_validator)
from pydantic_core import PydanticCustomError

from noetl_dagster.playbook.extension_models import DagsterMetadata, Hardware, is_owner, mapping, problem
from noetl_dagster.playbook.source import SourceMap

SCOPE_PREFIXES = ("ctx.", "iter.", "step.")


def strip_scope(key: str) -> str:
    """``ctx.page`` -> ``page``: NoETL writes every scope into one flat context."""
    for prefix in SCOPE_PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix) :]
    return key


def _line_of(data: Any) -> int:
    return data.line if isinstance(data, SourceMap) else 0


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True, frozen=False)
    line: int = Field(default=0, exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _keep_line(cls, data: Any) -> Any:
        if isinstance(data, SourceMap) and "line" not in data:
            copy = dict(data)
            copy["line"] = data.line
            return copy
        return data


def _normalise_set(value: Any, strip: bool = True) -> dict[str, Any]:
    """A ``set:`` block checked; step and arc keys lose their scope prefix (NoETL's flat context),
    pipeline task and rule keys keep it (``ctx.x`` nests inside the pipeline, ``set_nested_var``)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError('must be a mapping of `name: template`, e.g. `ctx.total: "{{ output.n }}"`')
    out: dict[str, Any] = {}
    for key, template in value.items():
        if not isinstance(key, str) or not key.strip():
            # ``key`` in the context lets the loader point at the offending key's line
            raise PydanticCustomError(
                "set_key", "set key {shown} must be a non-empty name such as `ctx.total`",
                {"key": key, "shown": repr(key)})
        out[strip_scope(key) if strip else key] = template
    return out


V1_NEXT = ("the v1 form `next: [{when, then: [...], else: [...]}]` is not supported; "
           "use `next: {spec: {mode: exclusive}, arcs: [{step, when}]}`")


class Arc(_Model):
    """One outgoing arc: fires ``step`` when ``when`` is true (or always without ``when``)."""

    step: str
    when: str | None = None
    set: dict[str, Any] = Field(default_factory=dict)
    args: dict[str, Any] = Field(default_factory=dict)

    _set = field_validator("set", mode="before")(lambda cls, v: _normalise_set(v))

    @model_validator(mode="before")
    @classmethod
    def _v1_form(cls, data: Any) -> Any:
        if isinstance(data, dict) and "step" not in data and ("then" in data or "else" in data):
            raise ValueError(V1_NEXT)
        return data

    @field_validator("when", mode="before")
    @classmethod
    def _when_text(cls, value: Any) -> Any:
        if isinstance(value, bool):
            return "true" if value else "false"
        return value


class Next(_Model):
    """Normalised routing: ``exclusive`` fires the first matching arc, ``inclusive`` all."""

    mode: Literal["exclusive", "inclusive"] = "exclusive"
    arcs: list[Arc] = Field(default_factory=list)


class RuleThen(_Model):
    do: Literal["continue", "retry", "jump", "break", "fail"]
    attempts: int = Field(default=3, ge=1)
    #: ``linear``, ``exponential``; any other value (``none``, ``fixed``, ...) is a constant delay
    backoff: str = Field(default="none", min_length=1)
    delay: float = Field(default=1.0, ge=0)
    to: str | None = None
    set: dict[str, Any] = Field(default_factory=dict)

    _set = field_validator("set", mode="before")(lambda cls, v: _normalise_set(v, strip=False))


class Rule(_Model):
    """A pipeline policy rule; ``when is None`` is the ``else`` rule (always matches)."""

    when: str | None = None
    then: RuleThen

    @model_validator(mode="before")
    @classmethod
    def _else_form(cls, data: Any) -> Any:
        if isinstance(data, dict) and "else" in data:
            # an `else:` without `then:` never gets here: Task drops it (see `else_without_then`)
            return {"then": data["else"]["then"], "line": _line_of(data)}
        return data

    @field_validator("when", mode="before")
    @classmethod
    def _when_bool(cls, value: Any) -> Any:
        # NoETL's task_sequence reads a YAML boolean `when: true` as that boolean
        if isinstance(value, bool):
            return "true" if value else "false"
        return value


def never_matches(rule: Any) -> bool:
    """A policy rule with neither ``when:`` nor ``else:``: NoETL's task_sequence never matches it."""
    return isinstance(rule, dict) and "when" not in rule and "else" not in rule


def else_without_then(rule: Any) -> bool:
    """A policy rule ``- else:`` without ``then:``: NoETL matches it and applies no action, so the
    task's outcome decides (an error result fails the pipeline, a success continues)."""
    return (isinstance(rule, dict) and "when" not in rule and "else" in rule
            and not (isinstance(rule["else"], dict) and "then" in rule["else"]))


class Task(_Model):
    """One tool invocation: a single-tool step has one task, a pipeline several."""

    name: str = ""
    kind: str
    set: dict[str, Any] = Field(default_factory=dict)
    rules: list[Rule] = Field(default_factory=list)

    _set = field_validator("set", mode="before")(lambda cls, v: _normalise_set(v, strip=False))

    @model_validator(mode="before")
    @classmethod
    def _nested_keys(cls, data: Any) -> Any:
        if (isinstance(data, dict) and "kind" not in data and len(data) > 1
                and all(isinstance(v, dict) for k, v in data.items() if k != "line")):
            keys = [str(k) for k in data if k != "line"]
            if len(keys) > 1:
                raise ValueError(
                    f"a nested pipeline item needs exactly one `label: {{kind: ...}}` key, this one has "
                    f"{len(keys)}: {', '.join(keys)}")
        return data

    @model_validator(mode="before")
    @classmethod
    def _policy(cls, data: Any) -> Any:
        if isinstance(data, dict):
            spec = data.get("spec")
            if isinstance(spec, dict) and isinstance(spec.get("policy"), dict):
                rules = spec["policy"].get("rules")
                if isinstance(rules, list):
                    # rules after an `else:` without `then:` are never reached: it always matches
                    # and leaves the default action; dropping it and them is the same behaviour
                    cut = next((i for i, r in enumerate(rules) if else_without_then(r)), None)
                    rules = rules if cut is None else rules[:cut]
                    # a rule with neither `when:` nor `else:` never matches in NoETL
                    rules = [{**r, "when": False} if never_matches(r) else r for r in rules]
                if rules is not None:
                    data = {**data, "rules": rules, "line": _line_of(data)}
        return data

    @model_validator(mode="before")
    @classmethod
    def _credential_alias(cls, data: Any) -> Any:
        # NoETL's worker (auth_alias.rs) reads the alias from `auth:`, else from `credential:`
        if isinstance(data, dict) and "credential" in data and data.get("auth") is None:
            alias, line = data["credential"], _line_of(data) or data.get("line", 0)
            data = {k: v for k, v in data.items() if k != "credential"}
            data.update(auth=alias, line=line)
        return data

    @property
    def config(self) -> dict[str, Any]:
        """The tool's own fields (everything but name, kind, set and policy)."""
        return {k: v for k, v in (self.model_extra or {}).items() if k != "spec"}


class CursorClaim(_Model):
    """``loop.cursor`` of a ``mode: cursor`` loop: the SQL that leases a frame of work rows.

    ``claim`` runs with the tool ``kind`` (default postgres) and ``auth``; its returned rows are
    the items (``iter.<iterator>`` is one row). ``{{ __frame_max_rows }}`` is ``frame.max_rows``.
    """

    kind: str = "postgres"
    auth: str | None = None
    claim: str = Field(min_length=1)


class Frame(_Model):
    """``loop.spec.frame`` (cursor mode): ``max_rows`` caps each claim (default 1);
    ``row_concurrency`` is NoETL's per-frame parallelism (rows run in order here); the lease,
    heartbeat, byte and time fields are advisory in NoETL too (the claim SQL reclaims stale rows).
    """

    max_rows: int | None = Field(default=None, ge=1)
    max_seconds: float | None = None
    max_bytes: int | None = None
    lease_seconds: float | None = None
    heartbeat_seconds: float | None = None
    row_concurrency: int | None = Field(default=None, ge=1)
    process: str | None = None


class Loop(_Model):
    """``loop: {in, iterator, chunk_size, spec: {mode, max_in_flight, frame}, cursor}``.

    ``chunk_size`` (an extension, default 1) groups a parallel loop's items: one mapped op runs
    that many consecutive items in order. ``max_in_flight`` is NoETL's concurrency hint; here it
    is the default of ``PlaybookTranslator.get_loop_concurrency``. ``mode: cursor`` takes its
    items from repeated ``cursor.claim`` queries instead of ``in:`` (see
    :mod:`noetl_dagster.runtime.cursor`).
    """

    in_: Any = Field(alias="in", default=None)
    iterator: str
    mode: Literal["sequential", "parallel", "cursor"] = "sequential"
    max_in_flight: int | None = Field(default=None, ge=1)
    chunk_size: int = Field(default=1, ge=1, strict=True)
    frame: Frame | None = None
    cursor: CursorClaim | None = None

    @model_validator(mode="before")
    @classmethod
    def _spec(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("spec"), dict):
            spec = data["spec"]
            data = {**{k: v for k, v in data.items() if k != "spec"}, "line": _line_of(data)}
            for key in ("mode", "max_in_flight", "frame"):
                if key in spec:
                    data[key] = spec[key]
        return data

    @field_validator("mode", mode="before")
    @classmethod
    def _mode(cls, value: Any) -> Any:
        if value not in ("sequential", "parallel", "cursor"):
            raise ValueError(f"loop mode {value!r} is not valid; use sequential, parallel or cursor")
        return value

    @field_validator("iterator")
    @classmethod
    def _iterator_name(cls, value: str) -> str:
        if not value.isidentifier():
            raise ValueError(f"iterator {value!r} must be a plain name such as `item`")
        return value


CHECK_KINDS = ("columns", "not_null", "unique", "row_count", "sql")


class ProductCheck(_Model):
    """One data-quality check of a product; exactly one of the check kinds is set.

    ``{columns: {id: int64}}``, ``{not_null: score}``, ``{unique: [id]}``,
    ``{row_count: {min: 1, max: 1000}}``, ``{sql: "SELECT count(*) FROM product WHERE x < 0",
    expect: 0}``; optional ``name``, ``description`` and ``blocking``. Unknown keys are errors.
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    columns: dict[str, str] | None = None
    not_null: str | list[str] | None = None
    unique: str | list[str] | None = None
    row_count: dict[str, int] | None = None
    sql: str | None = None
    expect: Any = 0
    name: str | None = None
    description: str | None = None
    blocking: bool = False

    @model_validator(mode="after")
    def _one_kind(self) -> "ProductCheck":
        kinds = [k for k in CHECK_KINDS if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError(f"a check needs exactly one of {', '.join(CHECK_KINDS)} (got {len(kinds)})")
        if self.row_count is not None and not set(self.row_count) <= {"min", "max"}:
            raise ValueError("row_count takes `min` and/or `max`")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in CHECK_KINDS if getattr(self, k) is not None)

    @property
    def columns_list(self) -> list[str]:
        value = self.not_null if self.kind == "not_null" else self.unique
        return [value] if isinstance(value, str) else list(value or [])

    @property
    def check_name(self) -> str:
        """A stable check name: ``name``, else the kind and its columns (``not_null_score``)."""
        if self.name:
            return self.name
        if self.kind in ("not_null", "unique"):
            return f"{self.kind}_" + "_".join(self.columns_list)
        return self.kind


class Product(_Model):
    """The ``product:`` step extension: the step's result is published as a data product.

    ``owners`` are email addresses or ``team:<name>``; unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str
    kind: Literal["table", "file", "features", "embeddings"] = "table"
    description: str | None = None
    owners: list[str] = Field(default_factory=list)
    checks: list[ProductCheck] = Field(default_factory=list)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not value.replace("_", "a").isalnum() or value[0].isdigit():
            raise ValueError(f"product name {value!r} must be a plain name such as `application_scores`")
        return value

    @field_validator("owners")
    @classmethod
    def _owners(cls, value: list[str]) -> list[str]:
        for owner in value:
            if not is_owner(owner):
                raise problem(f"owner {owner!r} must be an email address or `team:<name>`")
        return value


class Step(_Model):
    """One workflow step (a Petri-net transition)."""

    step: str
    desc: str | None = None
    tool: list[Task]
    pipeline: bool = False
    #: declared before ``next`` so that ``spec.next_mode`` is known when ``next`` is validated
    spec: dict[str, Any] = Field(default_factory=dict)
    next: Next | None = None
    loop: Loop | None = None
    set: dict[str, Any] = Field(default_factory=dict)
    when: str | None = None
    args: dict[str, Any] = Field(default_factory=dict)
    product: Product | None = None
    #: the ``hardware:`` extension (pod resources under the k8s executor)
    hardware: Annotated[Hardware | None, BeforeValidator(mapping(
        "hardware must be a mapping, got {shown}", 'e.g. `hardware: {cpu: "2", memory: 4Gi}`'))] = None

    _set = field_validator("set", mode="before")(lambda cls, v: _normalise_set(v))

    @field_validator("spec", mode="before")
    @classmethod
    def _next_mode(cls, value: Any) -> Any:
        if isinstance(value, dict) and "next_mode" in value and value["next_mode"] not in ("exclusive", "inclusive"):
            raise PydanticCustomError(
                "next_mode", "spec.next_mode {shown} is not valid; use exclusive or inclusive",
                {"key": "next_mode", "shown": repr(value["next_mode"])})
        return value

    @field_validator("next", mode="before")
    @classmethod
    def _next(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None:
            return None
        spec = info.data.get("spec") or {}
        return _normalise_next(value, spec.get("next_mode"))

    @model_validator(mode="before")
    @classmethod
    def _normalise(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data, line=_line_of(data)) if isinstance(data, SourceMap) else dict(data)
        tool = data.get("tool")
        if isinstance(tool, (list, dict)):
            data["tool"], data["pipeline"] = normalise_tool(tool)
        return data

    @property
    def description(self) -> str | None:
        return self.desc or (self.model_extra or {}).get("description")


def normalise_tool(tool: list[Any] | dict[str, Any]) -> tuple[list[Any], bool]:
    """``tool:`` as (task specs, is_pipeline): one spec, or the pipeline's items, each with a name."""
    if isinstance(tool, list):
        return [_pipeline_item(item, i) for i, item in enumerate(tool)], True
    return [tool], False


def _pipeline_item(item: Any, index: int) -> Any:
    if not isinstance(item, dict):
        return item
    if "kind" not in item and len(item) == 1:
        ((label, body),) = item.items()
        if isinstance(body, dict):
            merged = dict(body)
            merged["name"] = str(label)
            merged["line"] = _line_of(item)
            return merged
    if "kind" not in item and len(item) > 1 and all(isinstance(v, dict) for v in item.values()):
        return item  # several `label: {...}` keys: rejected by Task with the item's position
    if not item.get("name"):
        return dict(item, name=f"task_{index + 1}", line=_line_of(item))
    return item


def _normalise_next(value: Any, next_mode: Any) -> Any:
    if isinstance(value, str):
        return {"mode": "exclusive", "arcs": [{"step": value}]}
    if isinstance(value, list):
        if all(isinstance(v, str) for v in value):
            return {"mode": "inclusive", "arcs": [{"step": v, "line": 0} for v in value],
                    "line": _line_of(value)}
        # legacy targets `[{step, when}]`; a v1 `{when, then}` item is rejected by Arc
        arcs = [{"step": item} if isinstance(item, str) else item for item in value]
        mode = next_mode if next_mode in ("exclusive", "inclusive") else "exclusive"
        return {"mode": mode, "arcs": arcs}
    if isinstance(value, dict):
        if "arcs" not in value:
            raise ValueError(
                "a mapping `next:` needs `arcs: [{step, when, set}]` (router form); "
                "for one target write `next: <step>`"
            )
        spec = value.get("spec") or {}
        mode = spec.get("mode", "exclusive") if isinstance(spec, dict) else spec
        arcs = value.get("arcs")
        return {"mode": mode, "arcs": [] if arcs is None else arcs, "line": _line_of(value)}
    raise ValueError(f"must be a step name, a list of step names, or `{{spec: {{mode}}, arcs: [...]}}`, "
                     f"got {value!r}")


class Metadata(_Model):
    name: str
    path: str | None = None
    description: str | None = None
    labels: dict[str, Any] = Field(default_factory=dict)
    #: extensions: a cron schedule, upstream products read, owners, daily partitions
    schedule: str | None = None
    uses: list[str] = Field(default_factory=list)
    owners: list[str] = Field(default_factory=list)
    partitions: dict[str, Any] | None = None
    #: the ``metadata.dagster`` extension block (executor, tags, ...)
    dagster: Annotated[DagsterMetadata, BeforeValidator(mapping(
        "metadata.dagster must be a mapping, got {shown}",
        "e.g. `dagster: {executor: multiprocess, max_concurrent: 4}`"))] = Field(default_factory=DagsterMetadata)

    @field_validator("uses")
    @classmethod
    def _uses(cls, value: list[str]) -> list[str]:
        for path in value:
            if len(path.strip("/").split("/")) != 2:
                raise ValueError(f"uses entry {path!r} must be `domain/product`, e.g. marketing/customer_360")
        return [p.strip("/") for p in value]

    @field_validator("partitions")
    @classmethod
    def _partitions(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is None:
            return None
        if set(value) != {"daily"} or not isinstance(value["daily"], dict) or "start" not in value["daily"]:
            raise ValueError("partitions must be `{daily: {start: YYYY-MM-DD}}`")
        return value

    @property
    def domain(self) -> str:
        return self.catalog_path.strip("/").split("/")[0]

    @property
    def catalog_path(self) -> str:
        """``metadata.path``, falling back to ``name`` as NoETL's catalog does."""
        return self.path or self.name


class KeychainEntry(_Model):
    """One ``keychain:`` entry; see :mod:`noetl_dagster.runtime.keychain` for how it resolves."""

    name: str = Field(min_length=1)
    kind: str | None = None
    credential: str | None = None
    provider: str | None = None
    map: dict[str, Any] | None = None


class WorkbookEntry(_Model):
    name: str
    tool: dict[str, Any]


class Playbook(_Model):
    """A parsed, normalised and validated playbook."""

    api_version: str = Field(alias="apiVersion")
    kind: str
    metadata: Metadata
    workload: dict[str, Any] = Field(default_factory=dict)
    keychain: list[KeychainEntry] = Field(default_factory=list)
    workbook: list[WorkbookEntry] = Field(default_factory=list)
    workflow: list[Step]
    file: str = Field(default="<string>", exclude=True)
    #: accepted forms that probably do not do what the author meant (``noetl-dagster validate`` prints them)
    _warnings: list[Any] = PrivateAttr(default_factory=list)

    @property
    def warnings(self) -> list[Any]:
        return self._warnings

    def step(self, name: str) -> Step:
        for step in self.workflow:
            if step.step == name:
                return step
        raise KeyError(name)

    @cached_property
    def steps(self) -> dict[str, Step]:
        """Steps by name (built once; a playbook is not changed after validation)."""
        return {step.step: step for step in self.workflow}
