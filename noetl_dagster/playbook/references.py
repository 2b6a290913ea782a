"""Names in templates that no step, workload key or ``set`` can ever provide: warnings with a did-you-mean.

NoETL renders an undefined name as empty, so ``{{ fecth.rows }}`` (for ``fetch``) passes
validation and fails much later, e.g. as a ``TypeError`` inside a python step. This module reads
the root names of every template in a playbook and compares them with every name a run could
give that template: workload keys, step names (their results), ``set`` keys (step, arc, task and
policy ``set``, ``args``), loop iterators, pipeline task names, keychain entries and the
engine's own names (``workload``, ``ctx``, ``output``, ``_index`` ...). A root name that is none
of these is reported when it is used like a step result (``name.field``/``name[...]``) or when it
is close to a known name (then with ``did you mean``). They are warnings: a playbook may still
rely on a name being undefined (``{{ x | default(1) }}``).

Example::

    for issue in undefined_references(load_playbook("playbooks/x.yaml")):
        print(f"warning: {issue}")
    # x.yaml:21:5: step 'total': tool.input.rows: 'fecth' is not a step, workload key or ctx value
    #   on any path (did you mean 'fetch'?)

:func:`undefined_in` does the same for one template against a run's actual scope (used when a
step fails, to name the undefined variable behind the error).
"""

from __future__ import annotations

import difflib
import re
from typing import Any, Iterable, Iterator, Mapping

from noetl_dagster.errors import Issue
from noetl_dagster.playbook.models import Playbook, Step

#: names the engine and MiniJinja provide (and template keywords)
BUILTINS = frozenset({
    "workload", "ctx", "execution_id", "output", "result", "iter", "_index", "_total", "_attempt", "_prev",
    "keychain", "partition_key", "product", "loop", "range", "dict", "namespace", "lipsum", "cycler", "joiner",
    "debug", "true", "false", "none", "True", "False", "None", "and", "or", "not", "in", "is", "if", "else",
    "elif", "endif", "for", "endfor", "set", "endset", "with", "endwith", "without", "recursive", "macro",
    "endmacro", "call", "endcall", "filter", "endfilter", "block", "endblock", "import", "from", "as",
    "include", "extends", "context", "ignore", "missing", "self", "super", "varargs", "kwargs", "caller",
    "env", "job", "data", "error", "status", "secret", "event",
})
_BLOCK = re.compile(r"\{\{(.*?)\}\}|\{%-?(.*?)-?%\}", re.DOTALL)
_STRING = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"")
_FILTER_OR_TEST = re.compile(r"(\|\s*|\bis\s+(?:not\s+)?)[A-Za-z_]\w*(\s*\([^()]*\))?")
_KWARG = re.compile(r"[A-Za-z_]\w*\s*=(?!=)")
_ROOT = re.compile(r"(?<![\w.])([A-Za-z_]\w*)(\s*[.\[(])?")
_LOCALS = re.compile(r"\{%-?\s*(?:for\s+([\w\s,]+?)\s+in|set\s+(\w+)|macro\s+\w+\(([^)]*)\))")


def template_roots(text: str) -> list[tuple[str, bool]]:
    """Root names a template reads, each with whether it is used like a record (``x.a``, ``x[0]``).

    Names the template binds itself (``{% for x in ... %}``, ``{% set x = %}``) are left out."""
    if "{{" not in text and "{%" not in text:
        return []
    bound: set[str] = set()
    for match in _LOCALS.finditer(text):
        for group in match.groups():
            if group:
                bound.update(n.strip().split("=")[0].strip() for n in group.split(",") if n.strip())
    roots: list[tuple[str, bool]] = []
    for match in _BLOCK.finditer(text):
        body = _STRING.sub("''", match.group(1) if match.group(1) is not None else match.group(2))
        body = _KWARG.sub(" ", _FILTER_OR_TEST.sub(" ", body))
        for name_match in _ROOT.finditer(body):
            name, after = name_match.group(1), (name_match.group(2) or "").strip()
            if name in BUILTINS or name in bound or name[0].isdigit() or after == "(":
                continue
            roots.append((name, after in (".", "[")))
    return roots


def _set_keys(mapping: Mapping[str, Any] | None) -> set[str]:
    keys = set()
    for key in (mapping or {}):
        key = str(key)
        key = key[4:] if key.startswith("ctx.") else key
        keys.add(key.split(".")[0])
    return keys


def known_names(playbook: Playbook) -> set[str]:
    """Every name some path of a run can put into a template's scope."""
    names = set(BUILTINS) | {str(k) for k in playbook.workload} | {e.name for e in playbook.keychain}
    for step in playbook.workflow:
        names.add(step.step)
        names |= _set_keys(step.set) | _set_keys(step.args)
        if step.loop is not None:
            names.add(step.loop.iterator)
        for task in step.tool:
            if task.name:
                names.add(task.name)
            names |= _set_keys(task.set)
            for rule in task.rules:
                names |= _set_keys(rule.then.set)
        if step.next is not None:
            for arc in step.next.arcs:
                names |= _set_keys(arc.set) | _set_keys(arc.args)
    return names


def _strings(value: Any, path: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            if key != "line":
                yield from _strings(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _strings(item, f"{path}[{index}]")


def step_templates(step: Step) -> Iterator[tuple[str, str]]:
    """(field path, text) of every string of a step that is rendered as a template."""
    if step.when:
        yield "when", step.when
    if step.loop is not None and step.loop.in_ is not None:
        yield from _strings(step.loop.in_, "loop.in")
    yield from _strings(step.set, "set")
    yield from _strings(step.args, "args")
    for index, task in enumerate(step.tool):
        prefix = "tool" if len(step.tool) == 1 else f"tool[{index}]"
        config = {k: v for k, v in task.config.items() if not (task.kind == "python" and k == "code")}
        yield from _strings(config, prefix)  # python `code` is not a template
        yield from _strings(task.set, f"{prefix}.set")
        for r, rule in enumerate(task.rules):
            if rule.when:
                yield f"{prefix}.rules[{r}].when", rule.when
            yield from _strings(rule.then.set, f"{prefix}.rules[{r}].then.set")
    if step.next is not None:
        for index, arc in enumerate(step.next.arcs):
            if arc.when:
                yield f"next.arcs[{index}].when", arc.when
            yield from _strings(arc.set, f"next.arcs[{index}].set")
            yield from _strings(arc.args, f"next.arcs[{index}].args")


def suggestion(name: str, candidates: Iterable[str]) -> str | None:
    close = difflib.get_close_matches(name, sorted(set(candidates) - BUILTINS), n=1, cutoff=0.75)
    return close[0] if close else None


def undefined_references(playbook: Playbook) -> list[Issue]:
    """Warnings for template names no path of the playbook can define (see the module doc)."""
    known = known_names(playbook)
    issues: list[Issue] = []
    for step in playbook.workflow:
        seen: set[tuple[str, str]] = set()
        for field, text in step_templates(step):
            for name, record in template_roots(text):
                if name in known or (field, name) in seen:
                    continue
                close = suggestion(name, known)
                if close is None and not record:
                    continue
                seen.add((field, name))
                issues.append(Issue(
                    playbook.file, step.line, 1,
                    f"{name!r} is not a step, workload key or ctx value on any path",
                    step.step, field, f"did you mean {close!r}?" if close else "define it with `set:` or in `workload:`"))
    return issues


def undefined_in(step: Step, scope: Mapping[str, Any]) -> list[str]:
    """``field: 'name' is undefined here (did you mean 'x'?)`` for every template of ``step``
    whose root name is not in ``scope`` (a run's actual scope when the step ran)."""
    found: list[str] = []
    for field, text in step_templates(step):
        for name, _ in template_roots(text):
            if name in scope or name in BUILTINS:
                continue
            close = suggestion(name, scope)
            line = f"{field}: {name!r} is undefined here" + (f" (did you mean {close!r}?)" if close else "")
            if line not in found:
                found.append(line)
    return found
