"""Load a playbook file, validate it, and report every problem at once.

Example::

    issues = validate_file("playbooks/risk/score_application.yaml")   # [] when valid
    playbook = load_playbook("playbooks/risk/score_application.yaml")  # or PlaybookError
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Iterator

from pydantic import BaseModel, ValidationError

from noetl_dagster.errors import Issue, PlaybookError
from noetl_dagster.core.cron import is_valid_cron
from noetl_dagster.core.templates import check_syntax, is_template
from noetl_dagster.playbook.kinds import BASE_DIR_KEY, NOETL_KINDS, check_tool_config, supported_kinds, uses_script
from noetl_dagster.playbook.graph import cyclic_steps, reachable, unguarded_cycles
from noetl_dagster.playbook.extension_models import DagsterMetadata, Hardware, describe_value, known_keys
from noetl_dagster.playbook.extensions import check_extensions
from noetl_dagster.playbook.models import (Playbook, Product, ProductCheck, Step, Task, else_without_then,
                                           never_matches, normalise_tool)
from noetl_dagster.playbook.source import SourceList, SourceMap, YamlError, load_yaml_text

API_VERSION = "noetl.io/v2"
ROOT_KEYS = {"apiVersion", "kind", "metadata", "workload", "keychain", "workbook", "workflow",
             "vars", "executor", "spec", "tracing"}
CASE_HINT = "`case:` blocks were removed from NoETL v2; route with `next: {arcs: [{step, when}]}`"
YAML_HINT = ("check the indentation, and quote values that start with `{`, `[`, `*`, `&` or `!` "
             "(templates too: `when: \"{{ expr }}\"`)")
#: the cron of a daily partitioned schedule: `M H * * *`
_DAILY_CRON = re.compile(r"^\s*([0-5]?\d)\s+([01]?\d|2[0-3])\s+\*\s+\*\s+\*\s*$")
PREVIOUS = ("previous", "prev", "_previous", "@previous")
#: tool kinds a cursor loop's claim may run on
CURSOR_KINDS = ("postgres", "duckdb")
_BROKEN = object()  # a step that uses a broken workbook entry
#: a YAML line that opens a literal block scalar (`code: |`, `- |-`): its content starts on the next line
_LITERAL_BLOCK = re.compile(r"(:|^\s*-)\s+\|[1-9]?[-+]?[1-9]?\s*(#.*)?$")
#: hints for a required field that is missing or has the wrong type, by field name
FIELD_HINTS = {
    "iterator": "name the current element, e.g. `iterator: item`",
    "step": "each arc needs `step: <target step name>`",
    "then": "a rule is `- when: \"{{ ... }}\"` with `then: {do: continue|retry|jump|break|fail}`",
    "do": "one of continue, retry, jump, break, fail",
    "tool": "a tool is `{kind: python, ...}`; a pipeline task is `- {name: t1, kind: python, ...}`",
    "loop": "write `loop: {in: \"{{ workload.items }}\", iterator: item}`",
    "rules": "write `spec: {policy: {rules: [{when: \"{{ ... }}\", then: {do: retry}}]}}`",
    "arcs": "write `arcs: [{step: <name>, when: \"{{ ... }}\"}]`",
    "attempts": "`attempts` is the total number of tries, the first one included",
    "max_in_flight": "at most this many iterations run at once; use 1 or more",
    "chunk_size": "how many consecutive items one op of a parallel loop runs: a whole number, 1 (default) or more",
}
#: extension blocks that refuse unknown keys, by the name of the key that holds them
EXTENSION_BLOCKS: dict[str, type[BaseModel]] = {"dagster": DagsterMetadata, "hardware": Hardware,
                                                "product": Product, "checks": ProductCheck}


class _Issues:
    """Collects issues for one file; positions come from the YAML source maps."""

    def __init__(self, file: str, text: str = "") -> None:
        self.file = file
        self.lines = text.splitlines()
        self.items: list[Issue] = []
        #: accepted, but probably not what the author meant (``Playbook.warnings``; never fail validation)
        self.warnings: list[Issue] = []

    def add(self, node: Any, key: Any, message: str, *, step: str | None = None,
            field: str | None = None, hint: str | None = None, offset: int | None = None) -> None:
        """Report ``message`` at ``key`` (a key or a path) inside ``node``.

        ``offset`` is a 1-based line inside the value (a code or template line): when the value
        is a literal block scalar (``code: |``) the issue points at that very line.
        """
        line, col = _locate(node, key)
        if offset is not None and 0 < line <= len(self.lines) and _LITERAL_BLOCK.search(self.lines[line - 1]):
            target = line + offset
            if target <= len(self.lines):
                text = self.lines[target - 1]
                line, col = target, len(text) - len(text.lstrip()) + 1
        self.items.append(Issue(self.file, line, col, message, step, field, hint))


    def warn(self, node: Any, key: Any, message: str, *, step: str | None = None,
             field: str | None = None, hint: str | None = None) -> None:
        line, col = _locate(node, key)
        self.warnings.append(Issue(self.file, line, col, message, step, field, hint))


def _locate(node: Any, path: Any) -> tuple[int, int]:
    """Position of ``path`` (a key or a tuple of keys) inside ``node``, as deep as it goes."""
    keys = path if isinstance(path, tuple) else (path,)
    pos = node.position() if isinstance(node, (SourceMap, SourceList)) else (1, 1)
    current = node
    for key in keys:
        if key is None:
            continue
        if isinstance(current, SourceMap) and key in current:
            pos = current.position(key)
            current = current[key]
        elif isinstance(current, SourceList) and isinstance(key, int) and key < len(current):
            pos = current.position(key)
            current = current[key]
        # keys the normaliser introduced (tool[0] of a single tool, next.arcs) are skipped
    return pos


def _node_at(node: Any, path: tuple[Any, ...]) -> Any:
    """The raw YAML value at ``path`` inside ``node``; None when the path does not exist."""
    for key in path:
        if isinstance(node, dict) and key in node:
            node = node[key]
        elif isinstance(node, list) and isinstance(key, int) and 0 <= key < len(node):
            node = node[key]
        else:
            return None
    return node


def _close(name: Any, choices: Any) -> str | None:
    """The choice closest to a misspelt ``name``, if any is close enough."""
    if not isinstance(name, str):
        return None
    found = difflib.get_close_matches(name, [c for c in choices if isinstance(c, str)], n=1, cutoff=0.6)
    return found[0] if found else None


def _unquoted_template(value: Any) -> str | None:
    """``{{ x }}`` written without quotes, which YAML reads as a mapping; the text it had, or None."""
    if isinstance(value, dict) and len(value) == 1:
        ((key, inner),) = value.items()
        match = re.fullmatch(r"\{(['\"])(.*)\1: None\}", key) if isinstance(key, str) and inner is None else None
        if match:
            return "{{ " + match.group(2) + " }}"
    return None


def _describe(value: Any) -> str:
    if _unquoted_template(value):
        return f"the unquoted template {_unquoted_template(value)} (YAML reads it as a mapping)"
    return describe_value(value)


def _field_name(loc: tuple[Any, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += ("." if text else "") + str(part)
    return text


def _pydantic_message(err: Any) -> str:
    """A pydantic error as a sentence a playbook author can act on (it names the value given)."""
    kind, value, ctx = err["type"], err.get("input"), err.get("ctx") or {}
    if kind == "literal_error":
        return f"{_describe(value)} is not valid; expected {ctx.get('expected')}"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return f"must be a mapping, got {_describe(value)}"
    if kind == "list_type":
        return f"must be a list, got {_describe(value)}"
    if kind == "string_too_short":
        return f"must not be empty, got {_describe(value)}"
    if kind == "string_type":
        return f"must be a string, got {_describe(value)}"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"must be a whole number, got {_describe(value)}"
    if kind in ("float_type", "float_parsing"):
        return f"must be a number, got {_describe(value)}"
    if kind in ("bool_type", "bool_parsing"):
        return f"must be true or false, got {_describe(value)}"
    if kind == "greater_than_equal":
        return f"must be at least {ctx.get('ge')}, got {_describe(value)}"
    if kind == "greater_than":
        return f"must be greater than {ctx.get('gt')}, got {_describe(value)}"
    if kind == "extra_forbidden":
        return f"unknown key {err['loc'][-1]!r}"
    return str(err["msg"]).removeprefix("Value error, ")


def _unknown_key_hint(loc: tuple[Any, ...]) -> str | None:
    """For an unknown key of an extension block: the closest known key, and the known ones."""
    block = next((p for p in reversed(loc[:-1]) if isinstance(p, str)), None)
    model = EXTENSION_BLOCKS.get(block) if block else None
    if model is None:
        return None
    known = known_keys(model)
    close = _close(loc[-1], known)
    return (f"did you mean {close!r}? " if close else "") + "known: " + ", ".join(known)


def _pydantic_issues(issues: _Issues, raw: Any, exc: ValidationError | list[Any], step: str | None,
                     prefix: tuple[Any, ...] = ()) -> None:
    for err in exc.errors() if isinstance(exc, ValidationError) else exc:
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and "[" in p))
        name = next((p for p in reversed(loc) if isinstance(p, str)), None)
        message = _pydantic_message(err)
        hint = (err.get("ctx") or {}).get("hint") or (FIELD_HINTS.get(name) if name else None)
        if err["type"] == "extra_forbidden":
            hint = _unknown_key_hint(loc)
        if err["type"] == "missing":
            message = f"`{loc[-1]}` is required" if loc else "a required field is missing"
            if name == "kind":
                hint = "add `kind: <tool kind>`; supported kinds: " + ", ".join(supported_kinds())
            loc = loc[:-1] if len(loc) > 1 else loc
        if _unquoted_template(err.get("input")):
            hint = f"quote the template: \"{_unquoted_template(err.get('input'))}\""
        raw_loc = _raw_path(raw, loc)
        key = (err.get("ctx") or {}).get("key")
        node = _node_at(raw, raw_loc)
        field = _field_name(prefix + raw_loc)
        if isinstance(node, dict) and key is not None and key in node:
            raw_loc += (key,)  # the offending key of a mapping (a `set:` key, `spec.next_mode`)
            field += f".{key}"
        issues.add(raw, raw_loc, message, step=step, field=field or None, hint=hint)


def _raw_path(raw: Any, loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """Map a pydantic location in the normalised model back to a path in the raw YAML."""
    path: list[Any] = []
    current = raw
    for part in loc:
        if part == "in_":
            part = "in"
        if part == "then" and isinstance(current, dict) and "then" not in current and \
                isinstance(current.get("else"), dict):
            path.append("else")  # `- else: {then: ...}` policy rule
            current = current["else"]
        if isinstance(current, dict) and part in current:
            path.append(part)
            current = current[part]
        elif isinstance(current, list) and isinstance(part, int) and part < len(current):
            path.append(part)
            current = current[part]
        elif part in ("mode", "max_in_flight", "frame", "rules") and isinstance(current, dict):
            path.append("spec")
            current = current.get("spec")
            if part == "rules" and isinstance(current, dict):
                path.append("policy")
                current = current.get("policy")
            if isinstance(current, dict) and part in current:
                path.append(part)
                current = current[part]
        elif isinstance(current, dict) and len(current) == 1 and isinstance(part, str):
            # nested pipeline item `- label: {kind: ...}`
            (label, body), = current.items()
            if isinstance(body, dict) and part in body:
                path += [label, part]
                current = body[part]
        # otherwise: a key added by normalisation (tool[0], next.arcs); skip it
    return tuple(path)


def validate_file(path: str | Path) -> list[Issue]:
    """Every problem in the playbook at ``path``; an empty list when it is valid."""
    try:
        parse_file(path)
    except PlaybookError as exc:
        return exc.issues
    return []


def load_playbook(path: str | Path) -> Playbook:
    """Parse and validate the playbook at ``path``; raise :class:`PlaybookError` with every issue."""
    return parse_file(path)


def parse_file(path: str | Path) -> Playbook:
    path = Path(path)
    name = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PlaybookError([Issue(name, 1, 1, "file not found")]) from None
    except UnicodeDecodeError as exc:
        raise PlaybookError([Issue(name, 1, 1, f"not UTF-8 text ({exc.reason})")]) from None
    except OSError as exc:
        raise PlaybookError([Issue(name, 1, 1, f"cannot read file: {exc.strerror}")]) from None
    return parse_text(text, name)


def parse_text(text: str, file: str = "<string>") -> Playbook:
    """Parse and validate playbook YAML text; raise :class:`PlaybookError` with every issue."""
    try:
        raw = load_yaml_text(text, file)
    except YamlError as exc:
        problem = exc.problem
        hint = YAML_HINT if problem.message.startswith("YAML syntax error") else None
        raise PlaybookError([Issue(file, problem.line, problem.col, problem.message, hint=hint)]) from None
    issues = _Issues(file, text)
    try:
        playbook = _parse(raw, issues)
    except Exception as exc:  # noqa: BLE001 - a validator bug must still read as an issue, not a traceback
        issues.items.append(Issue(file, 1, 1, f"internal error while validating: {type(exc).__name__}: {exc}",
                                  hint="please report this with the playbook"))
        playbook = None
    if issues.items or playbook is None:
        raise PlaybookError(sorted(issues.items, key=lambda i: (i.line, i.col)))
    playbook.warnings.extend(issues.warnings)
    from noetl_dagster.playbook.bindings import binding_issues  # shell/SQL templates that cannot be bound, or produce syntax

    playbook.warnings.extend(binding_issues(raw, file))
    return playbook


def _parse(raw: Any, issues: _Issues) -> Playbook | None:
    if not isinstance(raw, SourceMap):
        issues.add(raw, None, "a playbook must be a YAML mapping with apiVersion, kind, metadata "
                   f"and workflow, got {_describe(raw)}", hint="start the file with `apiVersion: noetl.io/v2`")
        return None
    _check_root(raw, issues)
    _check_root_model(raw, issues)
    _check_keychain(raw, issues)
    workbook = _parse_workbook(raw, issues)
    steps = _parse_steps(raw, issues, workbook)
    _check_references(raw, steps, issues)  # also when some steps are broken: report everything
    if issues.items:
        return None
    try:
        playbook = Playbook.model_validate({**raw, "workflow": steps,
                                            "workbook": [e for e in workbook.values() if e is not None]})
    except ValidationError as exc:
        _pydantic_issues(issues, raw, exc, None)
        return None
    playbook.file = issues.file
    _note_script_folders(playbook, issues.file)
    _check_cycles(playbook, raw, issues)
    _check_products(playbook, raw, issues)
    check_extensions(playbook, raw, issues)  # extensions and reserved names (playbook/extensions.py)
    return None if issues.items else playbook


def _note_script_folders(playbook: Playbook, file: str) -> None:
    """Python tasks with a ``script:`` source learn the playbook's folder (file sources resolve there)."""
    folder = None
    for step in playbook.workflow:
        for task in step.tool:
            if task.kind in ("python", "script") and uses_script(task.config):
                folder = folder or str(Path(file).resolve().parent)
                extra = task.__pydantic_extra__  # a dict: tool configs allow extra keys
                if extra is not None:
                    extra[BASE_DIR_KEY] = folder


def _missing_root(raw: SourceMap, key: str) -> str:
    """Message for a required root key that is absent (naming a misspelt key when there is one)."""
    typo = _close(key, [k for k in raw if k not in ROOT_KEYS])
    return f"`{key}:` is missing" + (f" (found `{typo}:`; a typo?)" if typo else "")


def _check_root(raw: SourceMap, issues: _Issues) -> None:
    api = raw.get("apiVersion")
    if api != API_VERSION:
        message = (f"apiVersion must be {API_VERSION!r}, got {_describe(api)}" if "apiVersion" in raw
                   else _missing_root(raw, "apiVersion"))
        issues.add(raw, "apiVersion", message, field="apiVersion", hint=f"set `apiVersion: {API_VERSION}`")
    if raw.get("kind") != "Playbook":
        message = (f"kind must be 'Playbook', got {_describe(raw.get('kind'))}" if "kind" in raw
                   else _missing_root(raw, "kind"))
        issues.add(raw, "kind", message, field="kind", hint="set `kind: Playbook`")
    meta = raw.get("metadata")
    if "metadata" not in raw:
        issues.add(raw, "metadata", _missing_root(raw, "metadata"), field="metadata",
                   hint="add `metadata: {name: my_playbook, path: domain/my_playbook}`")
    elif not isinstance(meta, dict):
        issues.add(raw, "metadata", f"metadata must be a mapping with `name:`, got {_describe(meta)}",
                   field="metadata", hint="write `metadata: {name: my_playbook, path: domain/my_playbook}`")
    elif not isinstance(meta.get("name"), str) or not meta.get("name"):
        where = "name" if "name" in meta else None
        issues.add(meta, where, "metadata.name is required (a non-empty string)", field="metadata.name",
                   hint="add `name: my_playbook` under `metadata:`")
    elif "path" in meta and (not isinstance(meta["path"], str) or not meta["path"].strip("/")):
        issues.add(meta, "path", "metadata.path must be a non-empty string like 'risk/score'",
                   field="metadata.path")
    if "workload" in raw and raw["workload"] is not None and not isinstance(raw["workload"], dict):
        issues.add(raw, "workload", f"workload must be a mapping of name: value, got {_describe(raw['workload'])}",
                   field="workload")
    workflow = raw.get("workflow")
    if not isinstance(workflow, list) or not workflow:
        message = ("workflow must be a non-empty list of steps" if "workflow" in raw
                   else _missing_root(raw, "workflow") + "; a playbook needs a list of steps")
        issues.add(raw, "workflow", message, field="workflow",
                   hint="add `workflow: [{step: start, tool: {kind: noop}}]`")


def _check_root_model(raw: SourceMap, issues: _Issues) -> None:
    """Types of the root keys :func:`_check_root` does not cover (metadata.labels, keychain, ...)."""
    try:
        Playbook.model_validate({**raw, "workflow": [], "workbook": []})
    except ValidationError as exc:
        covered = {"apiVersion", "kind", "workflow", "workbook", "workload"}
        errors = [e for e in exc.errors() if e["loc"] and e["loc"][0] not in covered
                  and not (e["loc"][0] == "metadata" and e["loc"][1:2] in ((), ("name",), ("path",)))]
        _pydantic_issues(issues, raw, errors, None)


def _parse_workbook(raw: SourceMap, issues: _Issues) -> dict[str, SourceMap | None]:
    """Workbook entries by name; a broken entry maps to None (already reported, not reported again)."""
    entries = raw.get("workbook") or []
    out: dict[str, SourceMap | None] = {}
    first: dict[str, int] = {}
    if not isinstance(entries, list):
        issues.add(raw, "workbook", f"workbook must be a list of {{name, tool}}, got {_describe(entries)}",
                   field="workbook", hint="write `workbook: [{name: my_task, tool: {kind: python, code: ...}}]`")
        return out
    for i, entry in enumerate(entries):
        if not isinstance(entry, SourceMap) or not isinstance(entry.get("name"), str):
            issues.add(entries, i, "a workbook entry needs `name:` and `tool:`",
                       field=f"workbook[{i}]", hint="write `- {name: my_task, tool: {kind: python, code: ...}}`")
            continue
        name = entry["name"]
        if name in first:
            issues.add(entry, "name", f"duplicate workbook entry {name!r} (first defined at line {first[name]})",
                       field=f"workbook[{i}].name", hint="workbook entry names must be unique")
            continue
        first[name] = entry.position("name")[0]
        out[name] = None
        tool = entry.get("tool")
        if not isinstance(tool, dict) or "kind" not in tool:
            issues.add(entry, "tool", f"workbook entry {name!r} needs `tool: {{kind: ...}}`",
                       field=f"workbook[{i}].tool")
            continue
        bad_input = next((k for k in ("input", "args") if tool.get(k) is not None
                          and not isinstance(tool[k], dict)), None)
        if bad_input:
            issues.add(tool, bad_input, f"must be a mapping of name: value, got {_describe(tool[bad_input])}",
                       field=f"workbook[{i}].tool.{bad_input}")
            continue
        out[name] = entry
    return out


def _resolve_workbook(raw_step: SourceMap, workbook: dict[str, SourceMap | None], issues: _Issues,
                      name: str) -> Any:
    tool = raw_step.get("tool")
    if not (isinstance(tool, SourceMap) and tool.get("kind") == "workbook"):
        return tool
    ref = tool.get("name")
    if "name" not in tool:
        issues.add(tool, "kind", "`kind: workbook` needs `name: <workbook entry>`", step=name,
                   field="tool.name", hint="known entries: " + (", ".join(sorted(workbook)) or "none declared"))
        return tool
    if not isinstance(ref, str):
        issues.add(tool, "name", f"`name:` must be the name of a workbook entry, got {_describe(ref)}",
                   step=name, field="tool.name", hint="known entries: " + (", ".join(sorted(workbook)) or "none declared"))
        return tool
    if ref not in workbook:
        known = ", ".join(sorted(workbook)) or "none declared"
        close = _close(ref, workbook)
        hint = f"did you mean {close!r}?" if close else "declare it under `workbook:` or fix the name"
        issues.add(tool, "name", f"workbook entry {ref!r} does not exist (known: {known})",
                   step=name, field="tool.name", hint=hint)
        return tool
    bad_input = next((k for k in ("input", "args") if tool.get(k) is not None and not isinstance(tool[k], dict)), None)
    if bad_input:
        issues.add(tool, bad_input, f"must be a mapping of name: value (merged over the workbook "
                   f"entry's input), got {_describe(tool[bad_input])}", step=name, field=f"tool.{bad_input}")
        return tool
    entry = workbook[ref]
    if entry is None:
        return _BROKEN  # the entry itself is broken and reported
    base = entry["tool"]
    merged = SourceMap({**base, **{k: v for k, v in tool.items() if k not in ("kind", "name", "input", "args")}})
    merged.line, merged.col = tool.line, tool.col
    merged.key_positions = {**getattr(base, "key_positions", {}), **tool.key_positions}
    base_input = base.get("input", base.get("args")) or {}
    step_input = tool.get("input", tool.get("args")) or {}
    if base_input or step_input:
        merged["input"] = {**base_input, **step_input}
    merged.pop("args", None)
    return merged


def _parse_steps(raw: SourceMap, issues: _Issues, workbook: dict[str, SourceMap | None]) -> list[Step]:
    workflow = raw.get("workflow")
    if not isinstance(workflow, list):
        return []
    steps: list[Step] = []
    seen: dict[str, tuple[int, int]] = {}
    for index, raw_step in enumerate(workflow):
        if not isinstance(raw_step, SourceMap):
            issues.add(workflow, index, "each workflow item must be a mapping with `step:` and `tool:`, "
                       f"got {_describe(raw_step)}", field=f"workflow[{index}]",
                       hint="write `- step: <name>` then `tool: {kind: ...}` indented under it")
            continue
        name = raw_step.get("step")
        if not isinstance(name, str) or not name.strip():
            message = ("`step:` (the step's name) is required" if "step" not in raw_step else
                       f"`step:` (the step's name) must be a non-empty string, got {_describe(name)}")
            issues.add(raw_step, "step", message, field="step", hint="add `step: <name>`")
            continue
        if name in seen:
            issues.add(raw_step, "step", f"duplicate step name (first defined at line {seen[name][0]})",
                       step=name, field="step", hint="step names must be unique")
            continue
        seen[name] = raw_step.position("step")
        if "case" in raw_step:
            issues.add(raw_step, "case", "`case:` is not supported", step=name, field="case", hint=CASE_HINT)
        if "tool" not in raw_step:
            issues.add(raw_step, "step", "`tool:` is required on every step", step=name, field="tool",
                       hint="routing-only steps use `tool: {kind: noop}`")
            continue
        before = len(issues.items)
        tool = _resolve_workbook(raw_step, workbook, issues, name)
        if len(issues.items) > before or tool is _BROKEN:
            continue
        data = SourceMap(raw_step)
        data.line, data.col, data.key_positions = raw_step.line, raw_step.col, raw_step.key_positions
        data["tool"] = tool
        if isinstance(tool, list) and not tool:
            issues.add(raw_step, "tool", "a pipeline needs at least one task", step=name, field="tool",
                       hint="list tasks as `- {name: t1, kind: python, code: ...}`")
            continue
        if not isinstance(tool, (dict, list)):
            hint = f"write `tool: {{kind: {tool}}}`" if isinstance(tool, str) else None
            issues.add(raw_step, "tool", "`tool:` must be a mapping `{kind: ...}` or a pipeline list, "
                       f"got {_describe(tool)}", step=name, field="tool", hint=hint)
            continue
        try:
            step = Step.model_validate(data)
        except ValidationError as exc:
            _pydantic_issues(issues, raw_step, exc, name)
            _check_tasks_of_broken_step(tool, exc, raw_step, issues, name)
            continue
        _check_step(step, raw_step, issues)
        steps.append(step)
    return steps


def _task_path(raw: SourceMap, pipeline: bool, index: int) -> tuple[Any, ...]:
    """Raw path of task ``index``: ``tool``, ``tool[i]`` or the body of a nested ``tool[i].label``."""
    if not pipeline:
        return ("tool",)
    item = _node_at(raw, ("tool", index))
    if isinstance(item, dict) and "kind" not in item and len(item) == 1:
        return ("tool", index, next(iter(item)))
    return ("tool", index)


def _check_tasks(tasks: dict[int, Task], pipeline: bool, raw: SourceMap, issues: _Issues, name: str,
                 labels: list[str] | None = None) -> None:
    """Tool checks of a step's tasks (by index; a task that failed validation is left out)."""
    labels = [t.name for t in tasks.values()] if labels is None else labels
    first_line: dict[str, int] = {}
    for index, task in tasks.items():
        tpath = _task_path(raw, pipeline, index)
        fname = f"tool[{index}]" if pipeline else "tool"
        _check_task(task, raw, tpath, fname, issues, name, labels)
        if pipeline:
            line = _locate(raw, ("tool", index))[0]
            if task.name in first_line:
                issues.add(raw, tpath + ("name",), f"duplicate pipeline task name {task.name!r} (first "
                           f"defined at line {first_line[task.name]})", step=name, field=f"{fname}.name",
                           hint="task names must be unique within the pipeline: results are stored by name")
            first_line.setdefault(task.name, line)


def _check_tasks_of_broken_step(tool: Any, exc: ValidationError, raw: SourceMap, issues: _Issues,
                                name: str) -> None:
    """A step that failed validation still gets its valid tasks checked: every problem, one pass."""
    items, pipeline = normalise_tool(tool)
    broken = {e["loc"][1] if len(e["loc"]) > 1 else None for e in exc.errors() if e["loc"][:1] == ("tool",)}
    if None in broken:
        return
    tasks = {}
    for index, item in enumerate(items):
        if index not in broken:
            try:
                tasks[index] = Task.model_validate(item)
            except ValidationError:
                return
    labels = [str(item.get("name")) for item in items if isinstance(item, dict)]
    _check_tasks(tasks, pipeline, raw, issues, name, labels)


def _check_step(step: Step, raw: SourceMap, issues: _Issues) -> None:
    name = step.step
    _check_tasks(dict(enumerate(step.tool)), step.pipeline, raw, issues, name)
    if step.loop is not None and step.loop.mode != "cursor" and (step.loop.in_ is None or step.loop.in_ == ""):
        issues.add(raw, "loop", "`loop.in` is required (the list to iterate)", step=name,
                   field="loop.in", hint='e.g. `in: "{{ workload.items }}"`')
    if step.loop is not None and step.loop.cursor is not None:
        _check_cursor(step, raw, issues)
    elif step.loop is not None and step.loop.mode == "cursor":
        issues.add(raw, ("loop", "spec", "mode"), "`mode: cursor` needs `loop.cursor` with the `claim:` SQL "
                   "that leases the next rows", step=name, field="loop.cursor",
                   hint="loop: {iterator: row, cursor: {kind: postgres, auth: pg, claim: \"UPDATE ... RETURNING ...\"}, "
                   "spec: {mode: cursor}}")
    if step.when is not None:
        _check_when(step.when, raw, ("when",), "when", issues, name)
    if step.next is not None:
        for i, arc in enumerate(step.next.arcs):
            arc_path = _arc_path(raw, i)
            if arc.when is not None:
                _check_when(arc.when, raw, arc_path + ("when",), f"next.arcs[{i}].when", issues, name)
            _check_set(raw, arc_path + ("set",), f"next.arcs[{i}].set", issues, name)
    _check_set(raw, ("set",), "set", issues, name)
    if step.loop is not None:
        _check_templates(step.loop.in_, raw, ("loop", "in"), "loop.in", issues, name)


def _check_cursor(step: Step, raw: SourceMap, issues: _Issues) -> None:
    """``loop.cursor`` of a cursor loop: a claim in a SQL tool kind, valid template syntax."""
    cursor = step.loop.cursor if step.loop is not None else None
    if cursor is None:
        return
    if cursor.kind not in CURSOR_KINDS:
        issues.add(raw, ("loop", "cursor", "kind"), f"a cursor claim runs on a SQL tool, not {cursor.kind!r}",
                   step=step.step, field="loop.cursor.kind", hint="kind: " + " or ".join(CURSOR_KINDS))
    _check_templates(cursor.claim, raw, ("loop", "cursor", "claim"), "loop.cursor.claim", issues, step.step)
    if step.loop.mode != "cursor":  # type: ignore[union-attr]
        issues.warn(raw, ("loop", "cursor"), "`loop.cursor` is ignored: only `spec.mode: cursor` loops claim rows",
                    step=step.step, field="loop.cursor", hint="set `spec: {mode: cursor}` or remove `cursor:`")


def _arc_path(raw: SourceMap, index: int) -> tuple[Any, ...]:
    nxt = raw.get("next")
    if isinstance(nxt, dict):
        return ("next", "arcs", index)
    return ("next", index)


def _check_set(raw: SourceMap, path: tuple[Any, ...], field: str, issues: _Issues, name: str) -> None:
    """Template syntax of a raw ``set:`` mapping; issues name the key as written (``ctx.total``)."""
    block = _node_at(raw, path)
    if isinstance(block, dict):
        for key, value in block.items():
            _check_templates(value, raw, path + (key,), f"{field}.{key}", issues, name)


def _check_task(task: Task, raw: SourceMap, tpath: tuple[Any, ...], fname: str, issues: _Issues,
                name: str, labels: list[str]) -> None:
    if task.kind not in supported_kinds():
        supported = ", ".join(supported_kinds())
        if task.kind in NOETL_KINDS:
            message = f"tool kind {task.kind!r} is a NoETL kind that noetl_dagster does not run"
        else:
            close = _close(task.kind, supported_kinds())
            message = f"unknown tool kind {task.kind!r}" + (f" (did you mean {close!r}?)" if close else "")
        issues.add(raw, tpath + ("kind",), message, step=name, field=f"{fname}.kind",
                   hint=f"supported kinds: {supported}")
        return
    if task.kind == "workbook":
        issues.add(raw, tpath + ("kind",), "a `kind: workbook` reference inside a pipeline is not "
                   "resolved by NoETL", step=name, field=f"{fname}.kind",
                   hint="copy the workbook tool into the pipeline task")
        return
    config = task.config
    problems = check_tool_config(task.kind, config, Path(issues.file).parent)
    for field, message, hint in problems:
        match = re.search(r"code line (\d+)", message) if field == "code" else None
        issues.add(raw, tpath + (field,), message, step=name, field=f"{fname}.{field}", hint=hint,
                   offset=int(match.group(1)) if match else None)
    for key, value in config.items():
        if key == "code":
            continue
        _check_templates(value, raw, tpath + (key,), f"{fname}.{key}", issues, name)
    _check_set(raw, tpath + ("set",), f"{fname}.set", issues, name)
    for r, rule in enumerate(task.rules):
        rpath = tpath + ("spec", "policy", "rules", r)
        rfield = f"{fname}.spec.policy.rules[{r}]"
        if rule.when is not None:
            _check_when(rule.when, raw, rpath + ("when",), f"{rfield}.when", issues, name)
        then_path = rpath + (("else", "then") if rule.when is None else ("then",))
        _check_set(raw, then_path + ("set",), f"{rfield}.then.set", issues, name)
        if rule.then.do == "jump":
            _check_jump(rule.then.to, raw, then_path, f"{rfield}.then", issues, name, labels)
    raw_rules = _node_at(raw, tpath + ("spec", "policy", "rules"))
    cut = next((i for i, r in enumerate(raw_rules) if else_without_then(r)), None) \
        if isinstance(raw_rules, list) else None
    for index, rule in enumerate(raw_rules if isinstance(raw_rules, list) else []):
        if never_matches(rule) and (cut is None or index < cut):
            issues.warn(raw, tpath + ("spec", "policy", "rules", index),
                        "a rule with neither `when:` nor `else:` never matches (as in NoETL)",
                        step=name, field=f"{fname}.spec.policy.rules[{index}]",
                        hint="add `when: \"{{ ... }}\"`, or write it as `- else: {then: ...}`")
    if cut is not None:
        later = len(raw_rules) - cut - 1
        body = raw_rules[cut]["else"]
        ignored = ", ".join(f"`{k}:`" for k in body) if isinstance(body, dict) and body else ""
        issues.warn(raw, tpath + ("spec", "policy", "rules", cut),
                    "`else:` without `then:` matches every outcome and does nothing (as in NoETL): an error "
                    "result still fails the pipeline, a success continues"
                    + (f"; its {ignored} are ignored (they belong under `then:`)" if ignored else "")
                    + (f"; the {later} rule(s) after it are never reached" if later else ""),
                    step=name, field=f"{fname}.spec.policy.rules[{cut}]",
                    hint="write the action: `- else: {then: {do: continue}}`")


def _check_jump(target: str | None, raw: SourceMap, path: tuple[Any, ...], field: str, issues: _Issues,
                name: str, labels: list[str]) -> None:
    named = [label for label in labels if label]
    tasks = f"(tasks: {', '.join(named)})" if named else "(a single-tool step has no named tasks)"
    if not target:
        issues.add(raw, path + ("do",), "`do: jump` needs `to: <task name>`", step=name, field=f"{field}.to",
                   hint=f"jump to a task of the same pipeline {tasks}, or `to: previous`")
    elif target not in labels and target not in PREVIOUS:
        close = _close(target, labels)
        issues.add(raw, path + ("to",), f"policy jump to unknown task {target!r} {tasks}",
                   step=name, field=f"{field}.to",
                   hint=f"did you mean {close!r}?" if close else "jump to a task of the same pipeline, or `previous`")


def _check_when(when: str, raw: SourceMap, path: tuple[Any, ...], field: str, issues: _Issues,
                name: str) -> None:
    if not when.strip():
        issues.add(raw, path, "`when` must not be empty", step=name, field=field,
                   hint="remove it, or write a condition such as \"{{ output.ok }}\"")
    elif "{" in when and "{{" not in when and "{%" not in when:
        issues.add(raw, path, f"`when` has a single brace: {when!r}", step=name, field=field,
                   hint="write the condition as \"{{ expr }}\"")
    else:
        _check_templates(when if is_template(when) else "{{ " + when + " }}", raw, path, field, issues, name)


def _check_templates(value: Any, raw: SourceMap, path: tuple[Any, ...], field: str, issues: _Issues,
                     name: str) -> None:
    if _unquoted_template(value):
        text = _unquoted_template(value)
        issues.add(raw, path, f"unquoted template {text}: YAML reads it as a mapping", step=name, field=field,
                   hint=f"quote it: \"{text}\"")
    elif isinstance(value, str):
        if is_template(value):
            error = check_syntax(value)
            if error:
                message, offset = _template_error(error)
                issues.add(raw, path, f"template syntax error: {message}", step=name, field=field,
                           hint="templates use Jinja syntax: {{ expr }}, {% if %}...{% endif %}",
                           offset=offset)
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_templates(item, raw, path + (key,), f"{field}.{key}", issues, name)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_templates(item, raw, path + (i,), f"{field}[{i}]", issues, name)


def _template_error(error: str) -> tuple[str, int | None]:
    """MiniJinja's ``syntax error: unexpected `>` (:2)`` as (``unexpected `>` (template line 2)``, 2)."""
    match = re.search(r"\s*\(:(\d+)\)\s*$", error)
    text = error[: match.start()] if match else error
    text = text.removeprefix("syntax error: ")
    if not match:
        return text, None
    line = int(match.group(1))
    return (text + f" (template line {line})" if line > 1 else text), line


def _check_references(raw: SourceMap, steps: list[Step], issues: _Issues) -> None:
    """`start` exists and every arc names a step (a broken step's name still counts as defined)."""
    workflow = raw.get("workflow")
    if not isinstance(workflow, list) or not workflow:
        return
    raw_steps: dict[str, SourceMap] = {}
    for item in workflow:
        if isinstance(item, SourceMap) and isinstance(item.get("step"), str):
            raw_steps.setdefault(item["step"], item)
    if "start" not in raw_steps:
        close = _close("start", raw_steps)
        issues.add(raw, "workflow", "no step named 'start' (the entry point of every playbook)",
                   field="workflow", hint=f"rename {close!r} to `start`" if close else
                   "name the first step `start`")
    for step in steps:
        if step.next is None:
            continue
        for i, arc in enumerate(step.next.arcs):
            if arc.step not in raw_steps:
                close = _close(arc.step, raw_steps)
                hint = (f"did you mean {close!r}?" if close else f"add a step named {arc.step!r} or fix the name"
                        if arc.step.strip() else "write the target step's name")
                issues.add(raw_steps[step.step], _arc_path(raw_steps[step.step], i),
                           f"arc to unknown step {arc.step!r}", step=step.step,
                           field=f"next.arcs[{i}].step", hint=hint)


def _check_cycles(playbook: Playbook, raw: SourceMap, issues: _Issues) -> None:
    raw_steps = {s.get("step"): s for s in raw["workflow"] if isinstance(s, SourceMap)}
    for cycle in unguarded_cycles(playbook):
        first = cycle[0]
        issues.add(raw_steps[first], "next", "cycle " + " -> ".join(cycle + [first]) +
                   " has no guarded exit: every arc around it always fires", step=first,
                   field="next", hint="add a `when:` to the arc that loops back, e.g. a ctx counter")


PRODUCT_CALL = re.compile(r"""product\(\s*['"]([^'"]*)['"]\s*\)""")


def product_references(playbook: Playbook) -> list[str]:
    """Products a playbook reads: ``metadata.uses`` plus every ``product('domain/name')`` in a template."""
    cached = playbook.__dict__.get("_product_references")
    if cached is None:
        cached = playbook.__dict__["_product_references"] = _scan_product_references(playbook)
    return list(cached)


def _scan_product_references(playbook: Playbook) -> list[str]:
    found = list(playbook.metadata.uses)
    for step in playbook.workflow:
        for text in iter_strings(step.model_dump(mode="python", exclude={"line"})):
            found.extend(m.strip("/") for m in PRODUCT_CALL.findall(text))
    return list(dict.fromkeys(found))


def iter_strings(value: Any) -> Iterator[str]:
    """Every string inside a plain value (mappings' values, lists' items), depth first."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from iter_strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from iter_strings(item)


def _check_keychain(raw: SourceMap, issues: _Issues) -> None:
    seen: set[str] = set()
    entries = raw.get("keychain")
    for entry in entries if isinstance(entries, list) else []:
        name = entry.get("name") if isinstance(entry, dict) else None
        if not isinstance(name, str):
            continue
        if name in seen:
            issues.add(entry, "name", f"keychain entry {name!r} is declared twice", field="keychain.name",
                       hint="keychain names are unique per playbook; remove or rename one")
        seen.add(name)


def _check_products(playbook: Playbook, raw: SourceMap, issues: _Issues) -> None:
    raw_steps = {s.get("step"): s for s in raw["workflow"] if isinstance(s, SourceMap)}
    meta = raw.get("metadata")
    schedule = playbook.metadata.schedule
    if schedule is not None and not is_valid_cron(schedule):
        issues.add(meta, "schedule", f"schedule {schedule!r} is not a cron expression", field="metadata.schedule",
                   hint='five fields, e.g. "0 * * * *" for hourly')
    elif schedule is not None and playbook.metadata.partitions and not _DAILY_CRON.match(schedule):
        issues.add(meta, "schedule", f"schedule {schedule!r} of a daily-partitioned playbook must run once a day "
                   "(each tick fills the partition of the day before)", field="metadata.schedule",
                   hint='minute and hour only, e.g. "0 2 * * *"')
    for path in product_references(playbook):
        if len(path.split("/")) != 2:
            issues.add(meta, "uses", f"product reference {path!r} must be `domain/product`",
                       field="metadata.uses", hint="e.g. product('marketing/customer_360')")
    products = [s for s in playbook.workflow if s.product is not None]
    if not products:
        return
    reached, in_cycles = set(reachable(playbook)), cyclic_steps(playbook)
    seen: dict[str, str] = {}
    for step in products:
        assert step.product is not None  # products holds the steps that have one
        name = step.product.name
        raw_step = raw_steps[step.step]
        if name in seen:
            issues.add(raw_step, ("product", "name"), f"product {name!r} is already published by step "
                       f"{seen[name]!r}", step=step.step, field="product.name", hint="product names are unique per playbook")
        seen[name] = step.step
        if step.step not in reached:
            issues.add(raw_step, "product", "this product step is never reached from `start`", step=step.step,
                       field="product", hint="route an arc to it, or remove `product:`")
        elif step.step in in_cycles:
            issues.add(raw_step, "product", "a product step cannot be part of a cycle", step=step.step,
                       field="product", hint="publish the product from a step after the cycle")
