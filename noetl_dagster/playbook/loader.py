"""Load a playbook file, validate it, and report every problem at once.

Example::

    issues = validate_file("playbooks/risk/score_application.yaml")   # [] when valid
    playbook = load_playbook("playbooks/risk/score_application.yaml")  # or PlaybookError
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ..errors import Issue, PlaybookError
from ..runtime.templates import check_syntax, is_template
from ..runtime.tools import NOETL_KINDS, get_tool, supported_kinds
from .models import Playbook, Step, Task
from .source import SourceList, SourceMap, YamlError, load_yaml_text

API_VERSION = "noetl.io/v2"
ROOT_KEYS = {"apiVersion", "kind", "metadata", "workload", "keychain", "workbook", "workflow",
             "vars", "executor", "spec", "tracing"}
CASE_HINT = "`case:` blocks were removed from NoETL v2; route with `next: {arcs: [{step, when}]}`"


class _Issues:
    """Collects issues for one file; positions come from the YAML source maps."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.items: list[Issue] = []

    def add(self, node: Any, key: Any, message: str, *, step: str | None = None,
            field: str | None = None, hint: str | None = None) -> None:
        line, col = _locate(node, key)
        self.items.append(Issue(self.file, line, col, message, step, field, hint))


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


def _field_name(loc: tuple[Any, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += ("." if text else "") + str(part)
    return text


def _pydantic_issues(issues: _Issues, raw: Any, exc: ValidationError, step: str | None,
                     prefix: tuple[Any, ...] = ()) -> None:
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and "[" in p))
        raw_loc = _raw_path(raw, loc)
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "missing":
            message = f"`{loc[-1]}` is required" if loc else "a required field is missing"
            loc = loc[:-1] if len(loc) > 1 else loc
            raw_loc = _raw_path(raw, loc)
        issues.add(raw, raw_loc, message, step=step, field=_field_name(prefix + raw_loc) or None)


def _raw_path(raw: Any, loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """Map a pydantic location in the normalised model back to a path in the raw YAML."""
    path: list[Any] = []
    current = raw
    for part in loc:
        if part == "in_":
            part = "in"
        if isinstance(current, dict) and part in current:
            path.append(part)
            current = current[part]
        elif isinstance(current, list) and isinstance(part, int) and part < len(current):
            path.append(part)
            current = current[part]
        elif part in ("mode", "max_in_flight", "rules") and isinstance(current, dict):
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
        raise PlaybookError([Issue(file, exc.problem.line, exc.problem.col, exc.problem.message)]) from None
    issues = _Issues(file)
    playbook = _parse(raw, issues)
    if issues.items or playbook is None:
        raise PlaybookError(sorted(issues.items, key=lambda i: (i.line, i.col)))
    return playbook


def _parse(raw: Any, issues: _Issues) -> Playbook | None:
    if not isinstance(raw, SourceMap):
        issues.add(raw, None, "a playbook must be a YAML mapping with apiVersion, kind, metadata "
                   "and workflow", hint="start the file with `apiVersion: noetl.io/v2`")
        return None
    _check_root(raw, issues)
    workbook = _parse_workbook(raw, issues)
    steps = _parse_steps(raw, issues, workbook)
    if issues.items:
        return None
    try:
        playbook = Playbook.model_validate({**raw, "workflow": steps, "workbook": list(workbook.values())})
    except ValidationError as exc:
        _pydantic_issues(issues, raw, exc, None)
        return None
    playbook.file = issues.file
    _check_graph(playbook, raw, issues)
    return None if issues.items else playbook


def _check_root(raw: SourceMap, issues: _Issues) -> None:
    api = raw.get("apiVersion")
    if api != API_VERSION:
        issues.add(raw, "apiVersion", f"apiVersion must be {API_VERSION!r}, got {api!r}",
                   field="apiVersion", hint=f"set `apiVersion: {API_VERSION}`")
    if raw.get("kind") != "Playbook":
        issues.add(raw, "kind", f"kind must be 'Playbook', got {raw.get('kind')!r}", field="kind",
                   hint="set `kind: Playbook`")
    meta = raw.get("metadata")
    if not isinstance(meta, dict) or not isinstance(meta.get("name"), str) or not meta.get("name"):
        issues.add(raw, "metadata", "metadata.name is required", field="metadata.name",
                   hint="add `metadata: {name: my_playbook, path: domain/my_playbook}`")
    elif "path" in meta and (not isinstance(meta["path"], str) or not meta["path"].strip("/")):
        issues.add(meta, "path", "metadata.path must be a non-empty string like 'risk/score'",
                   field="metadata.path")
    if "workload" in raw and raw["workload"] is not None and not isinstance(raw["workload"], dict):
        issues.add(raw, "workload", "workload must be a mapping of name: value", field="workload")
    workflow = raw.get("workflow")
    if not isinstance(workflow, list) or not workflow:
        issues.add(raw, "workflow", "workflow must be a non-empty list of steps", field="workflow",
                   hint="add `workflow: [{step: start, tool: {kind: noop}}]`")


def _parse_workbook(raw: SourceMap, issues: _Issues) -> dict[str, dict[str, Any]]:
    entries = raw.get("workbook") or []
    out: dict[str, dict[str, Any]] = {}
    if not isinstance(entries, list):
        issues.add(raw, "workbook", "workbook must be a list of {name, tool}", field="workbook")
        return out
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            issues.add(entries, i, "a workbook entry needs `name:` and `tool:`",
                       field=f"workbook[{i}]")
            continue
        if not isinstance(entry.get("tool"), dict) or "kind" not in entry["tool"]:
            issues.add(entry, "tool", f"workbook entry {entry['name']!r} needs `tool: {{kind: ...}}`",
                       field=f"workbook[{i}].tool")
            continue
        if entry["name"] in out:
            issues.add(entry, "name", f"duplicate workbook entry {entry['name']!r}",
                       field=f"workbook[{i}].name")
        out[entry["name"]] = entry
    return out


def _resolve_workbook(raw_step: SourceMap, workbook: dict[str, dict[str, Any]], issues: _Issues,
                      name: str) -> Any:
    tool = raw_step.get("tool")
    if not (isinstance(tool, dict) and tool.get("kind") == "workbook"):
        return tool
    ref = tool.get("name")
    if ref not in workbook:
        known = ", ".join(sorted(workbook)) or "none declared"
        issues.add(tool, "name", f"workbook entry {ref!r} does not exist (known: {known})",
                   step=name, field="tool.name", hint="declare it under `workbook:` or fix the name")
        return tool
    base = workbook[ref]["tool"]
    merged = SourceMap({**base, **{k: v for k, v in tool.items() if k not in ("kind", "name", "input", "args")}})
    merged.line, merged.col = tool.line, tool.col
    merged.key_positions = {**getattr(base, "key_positions", {}), **tool.key_positions}
    base_input = base.get("input", base.get("args")) or {}
    step_input = tool.get("input", tool.get("args")) or {}
    if base_input or step_input:
        merged["input"] = {**base_input, **step_input}
    merged.pop("args", None)
    return merged


def _parse_steps(raw: SourceMap, issues: _Issues, workbook: dict[str, dict[str, Any]]) -> list[Step]:
    workflow = raw.get("workflow")
    if not isinstance(workflow, list):
        return []
    steps: list[Step] = []
    seen: dict[str, tuple[int, int]] = {}
    for index, raw_step in enumerate(workflow):
        if not isinstance(raw_step, SourceMap):
            issues.add(workflow, index, "each workflow item must be a mapping with `step:` and `tool:`",
                       field=f"workflow[{index}]")
            continue
        name = raw_step.get("step")
        if not isinstance(name, str) or not name.strip():
            issues.add(raw_step, "step", "`step:` (the step's name) is required and must be a string",
                       field="step", hint="add `step: <name>`")
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
        if len(issues.items) > before:
            continue
        data = SourceMap(raw_step)
        data.line, data.col, data.key_positions = raw_step.line, raw_step.col, raw_step.key_positions
        data["tool"] = tool
        if isinstance(tool, list) and not tool:
            issues.add(raw_step, "tool", "a pipeline needs at least one task", step=name, field="tool",
                       hint="list tasks as `- {name: t1, kind: python, code: ...}`")
            continue
        if not isinstance(tool, (dict, list)):
            issues.add(raw_step, "tool", "`tool:` must be a mapping `{kind: ...}` or a pipeline list",
                       step=name, field="tool")
            continue
        try:
            step = Step.model_validate(data)
        except ValidationError as exc:
            _pydantic_issues(issues, raw_step, exc, name)
            continue
        except ValueError as exc:
            issues.add(raw_step, None, str(exc), step=name)
            continue
        _check_step(step, raw_step, issues)
        steps.append(step)
    return steps


def _check_step(step: Step, raw: SourceMap, issues: _Issues) -> None:
    name = step.step
    raw_tool = raw.get("tool")
    for index, task in enumerate(step.tool):
        tpath: tuple[Any, ...] = ("tool", index) if step.pipeline else ("tool",)
        fname = f"tool[{index}]" if step.pipeline else "tool"
        _check_task(task, raw, tpath, fname, issues, name, step)
    if step.pipeline:
        labels = [t.name for t in step.tool]
        for index, task in enumerate(step.tool):
            if labels.count(task.name) > 1:
                issues.add(raw, ("tool", index), f"duplicate pipeline task name {task.name!r}",
                           step=name, field=f"tool[{index}].name")
            for r, rule in enumerate(task.rules):
                if rule.then.do == "jump":
                    target = rule.then.to
                    if target not in labels and target not in ("previous", "prev", "_previous", "@previous"):
                        issues.add(raw, ("tool", index), f"policy jump to unknown task {target!r} "
                                   f"(tasks: {', '.join(labels)})", step=name,
                                   field=f"tool[{index}].spec.policy.rules[{r}].then.to")
    elif raw_tool is not None and step.tool[0].rules:
        pass  # single-tool policies are accepted and run like a one-task pipeline
    if step.loop is not None:
        loop = step.loop
        if loop.mode == "cursor":
            issues.add(raw, ("loop", "spec"), "loop mode 'cursor' is not supported",
                       step=name, field="loop.spec.mode", hint="use sequential or parallel")
        elif loop.in_ is None or loop.in_ == "":
            issues.add(raw, "loop", "`loop.in` is required (the list to iterate)", step=name,
                       field="loop.in", hint='e.g. `in: "{{ workload.items }}"`')
    if step.when is not None:
        _check_when(step.when, raw, ("when",), "when", issues, name)
    if step.next is not None:
        for i, arc in enumerate(step.next.arcs):
            arc_path = _arc_path(raw, i)
            if arc.when is not None:
                _check_when(arc.when, raw, arc_path + ("when",), f"next.arcs[{i}].when", issues, name)
            for key, value in arc.set.items():
                _check_templates(value, raw, arc_path + ("set",), f"next.arcs[{i}].set.{key}", issues, name)
    for key, value in step.set.items():
        _check_templates(value, raw, ("set",), f"set.{key}", issues, name)
    if step.loop is not None:
        _check_templates(step.loop.in_, raw, ("loop", "in"), "loop.in", issues, name)


def _arc_path(raw: SourceMap, index: int) -> tuple[Any, ...]:
    nxt = raw.get("next")
    if isinstance(nxt, dict):
        return ("next", "arcs", index)
    return ("next", index)


def _check_task(task: Task, raw: SourceMap, tpath: tuple[Any, ...], fname: str, issues: _Issues,
                name: str, step: Step) -> None:
    if task.kind not in supported_kinds():
        supported = ", ".join(supported_kinds())
        if task.kind in NOETL_KINDS:
            message = f"tool kind {task.kind!r} is a NoETL kind that noetl_dagster does not run"
        else:
            message = f"unknown tool kind {task.kind!r}"
        issues.add(raw, tpath + ("kind",), message, step=name, field=f"{fname}.kind",
                   hint=f"supported kinds: {supported}")
        return
    if task.kind == "workbook":
        issues.add(raw, tpath + ("kind",), "a `kind: workbook` reference inside a pipeline is not "
                   "resolved by NoETL", step=name, field=f"{fname}.kind",
                   hint="copy the workbook tool into the pipeline task")
        return
    config = task.config
    for field, message, hint in get_tool(task.kind).validate(config):
        issues.add(raw, tpath + (field,), message, step=name, field=f"{fname}.{field}", hint=hint)
    for key, value in config.items():
        if key == "code":
            continue
        _check_templates(value, raw, tpath + (key,), f"{fname}.{key}", issues, name)
    for key, value in task.set.items():
        _check_templates(value, raw, tpath + ("set",), f"{fname}.set.{key}", issues, name)
    for r, rule in enumerate(task.rules):
        rpath = tpath + ("spec", "policy", "rules", r)
        if rule.when is not None:
            _check_when(rule.when, raw, rpath + ("when",), f"{fname}.spec.policy.rules[{r}].when", issues, name)
        for key, value in rule.then.set.items():
            _check_templates(value, raw, rpath, f"{fname}.spec.policy.rules[{r}].then.set.{key}", issues, name)


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
    if isinstance(value, str):
        if is_template(value):
            error = check_syntax(value)
            if error:
                issues.add(raw, path, f"template syntax error: {error}", step=name, field=field,
                           hint="templates use Jinja syntax: {{ expr }}, {% if %}...{% endif %}")
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_templates(item, raw, path + (key,), f"{field}.{key}", issues, name)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_templates(item, raw, path + (i,), f"{field}[{i}]", issues, name)


def _check_graph(playbook: Playbook, raw: SourceMap, issues: _Issues) -> None:
    from ..translator.plan import unguarded_cycles

    steps = playbook.steps
    raw_steps = {s.get("step"): s for s in raw["workflow"] if isinstance(s, SourceMap)}
    if "start" not in steps:
        issues.add(raw, "workflow", "no step named 'start' (the entry point of every playbook)",
                   field="workflow", hint="name the first step `start`")
    for step in playbook.workflow:
        if step.next is None:
            continue
        for i, arc in enumerate(step.next.arcs):
            if arc.step not in steps:
                close = [s for s in steps if s.lower() == arc.step.lower() or s.startswith(arc.step[:3])]
                hint = f"did you mean {close[0]!r}?" if close else "add the step or fix the name"
                issues.add(raw_steps[step.step], _arc_path(raw_steps[step.step], i),
                           f"arc to unknown step {arc.step!r}", step=step.step,
                           field=f"next.arcs[{i}].step", hint=hint)
    if issues.items:
        return
    for cycle in unguarded_cycles(playbook):
        first = cycle[0]
        issues.add(raw_steps[first], "next", "cycle " + " -> ".join(cycle + [first]) +
                   " has no guarded exit: every arc around it always fires", step=first,
                   field="next", hint="add a `when:` to the arc that loops back, e.g. a ctx counter")
