"""``validate`` warnings: templates in shell commands and SQL that cannot be bound.

At run time every ``{{ }}`` in a shell ``command`` is a positional parameter and every ``{{ }}``
in a postgres/duckdb ``query`` a bound placeholder (:mod:`noetl_dagster.core.binding`).
That keeps values from becoming syntax, and it is why a template that must *produce* syntax
needs marking. This module finds, without running anything, the templates that:

* sit where SQL cannot take a placeholder (a table or column name, a whole clause): the SQL
  with that template as ``$1`` no longer parses (DuckDB's parser, PostgreSQL's grammar), or,
  when the SQL does not parse at all, a name position (``FROM``, ``JOIN``, ``INTO``,
  ``UPDATE``, ``TABLE``, ``BY``, next to a ``.``) or the whole query;
* stand alone in ``IN ( )``: bound item by item only when the value is a list (a
  comma-separated string is one value);
* sit inside a dollar-quoted body (``$$ ... $$``): refused at run time;
* are a shell command name (first word of a command), an ``eval``/``sh -c`` argument, or
  inside ``$(( ))``;
* are explicitly marked ``| raw_sql``, ``| sql_identifier`` or ``| raw_shell`` (named, so a
  reviewer sees every place where a value becomes syntax).

Example::

    for issue in binding_warnings("playbooks/x.yaml"):
        print(issue)   # x.yaml:12:7: step 'load': tool.query: `{{ table }}` sits where ...
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterator

from noetl_dagster.errors import Issue
from noetl_dagster.playbook.source import SourceList, SourceMap, load_yaml_text

_EXPR = re.compile(r"\{\{-?(.*?)-?\}\}", re.DOTALL)
_STATEMENT = re.compile(r"\{%.*?%\}|\{#.*?#\}", re.DOTALL)
_MARK = "\ue000"
_MARKED = re.compile(r"\|\s*(raw_sql|sql_identifier|raw_shell)\b")
_NAME_BEFORE = re.compile(r"\b(from|join|into|update|table|by|exists|view|index|schema|on)\s*$",
                          re.IGNORECASE)
_IN_BEFORE = re.compile(r"\bin\s*\(\s*$", re.IGNORECASE)
_COMMAND_BEFORE = re.compile(r"(^|[;&|(\n]|\$\(|\b(then|do|else|exec|time|sudo|xargs|nohup))[ \t]*$")
_EVAL_BEFORE = re.compile(r"\b(eval|(ba|z|da)?sh\s+-c|source|\.)\s+$")
SQL_KINDS = ("postgres", "duckdb")
SHELL_KINDS = ("shell",)


def binding_warnings(path: str | Path) -> list[Issue]:
    """Warnings for one playbook file (an unreadable or invalid file gives none: validate reports it)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return []
    return binding_warnings_in_text(text, str(path))


def binding_warnings_in_text(text: str, file: str = "<string>") -> list[Issue]:
    try:
        raw = load_yaml_text(text, file)
    except Exception:  # noqa: BLE001 - invalid YAML is validate's error, not a warning
        return []
    return binding_issues(raw, file)


def binding_issues(raw: Any, file: str) -> list[Issue]:
    """The warnings of a parsed playbook (the loader adds them to ``Playbook.warnings``)."""
    out: list[Issue] = []
    for step, field, line, col, kind, source in _template_fields(raw):
        finder = sql_findings if kind in SQL_KINDS else shell_findings
        try:
            found = finder(source)
        except Exception:  # noqa: BLE001 - an analysis bug must never fail validation
            continue
        for offset, expr, message, hint in found:
            block = "\n" in source
            where = line + (1 + source[:offset].count("\n") if block else 0)
            out.append(Issue(file, where, col, f"`{{{{{expr}}}}}` {message}", step, field, hint))
    return out


def _template_fields(raw: Any) -> Iterator[tuple[str | None, str, int, int, str, str]]:
    """``(step, field, line, col, kind, text)`` for each command/query holding a template."""
    if not isinstance(raw, SourceMap):
        return
    workflow = raw.get("workflow")
    if isinstance(workflow, SourceList):
        for index, step in enumerate(workflow):
            if isinstance(step, SourceMap):
                name = step.get("step")
                yield from _walk(step, str(name) if name is not None else None, f"workflow[{index}]")
    workbook = raw.get("workbook")
    if isinstance(workbook, SourceList):
        for index, entry in enumerate(workbook):
            if isinstance(entry, SourceMap):
                yield from _walk(entry, None, f"workbook[{index}]")


def _walk(node: Any, step: str | None, path: str) -> Iterator[tuple[str | None, str, int, int, str, str]]:
    if isinstance(node, SourceMap):
        kind = node.get("kind")
        if kind is None and node.get("type") in SQL_KINDS:  # a transfer's source
            kind = node.get("type")
        if kind in SQL_KINDS or kind in SHELL_KINDS:
            keys = ("query", "command", "sql") if kind in SQL_KINDS else ("command", "cmds")
            for key in keys:
                value = node.get(key)
                values = value if isinstance(value, list) else [value]
                for item in values:
                    if isinstance(item, str) and "{{" in item:
                        line, col = node.position(key)
                        yield step, _field(path, key) if step is None else _field(_local(path), key), \
                            line, col, kind, item
        for key, value in node.items():
            if key in ("next", "loop", "when", "set", "args", "input", "case"):
                continue
            yield from _walk(value, step, f"{path}.{key}")
    elif isinstance(node, list):
        for index, item in enumerate(node):
            yield from _walk(item, step, f"{path}[{index}]")


def _local(path: str) -> str:
    """A field path inside a step (``tool.query``), without the ``workflow[i]`` prefix."""
    return re.sub(r"^workflow\[\d+\]\.?", "", path)


def _field(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


# ------------------------------------------------------------------------------------ SQL
def sql_findings(source: str) -> list[tuple[int, str, str, str]]:
    """``(offset, expr, message, hint)`` for each template of ``source`` that needs attention."""
    exprs = list(_EXPR.finditer(source))
    if not exprs:
        return []
    findings: list[tuple[int, str, str, str]] = []
    pieces: list[str] = []
    last = 0
    for m in exprs:  # static text with {% %} blocks dropped, each {{ }} as one marker
        pieces.append(_STATEMENT.sub(" ", source[last:m.start()]))
        pieces.append(_MARK)
        last = m.end()
    pieces.append(_STATEMENT.sub(" ", source[last:]))
    text = "".join(pieces)
    contexts = _sql_contexts(text)
    bindable = [i for i, (ctx, _) in enumerate(contexts) if ctx == "code"
                and not _MARKED.search(exprs[i].group(1))]
    baseline_ok = _parses(_substitute(text, {}))
    for i, m in enumerate(exprs):
        expr = m.group(1)
        ctx, before = contexts[i]
        marked = _MARKED.search(expr)
        if marked:
            findings.append((m.start(), expr, f"produces SQL text (`| {marked.group(1)}`): "
                             "only for trusted values", "prefer a bound value where SQL allows one"))
            continue
        if re.match(r"\s*product\s*\(", expr):
            continue  # product('d/n'): a stored table, rendered as its own read_parquet(...)
        if ctx == "dollar":
            if re.search(r"\|\s*(int|float|length|count|round)\s*(\(|$)", expr.strip()):
                continue  # a number: inlined into the body at run time
            findings.append((m.start(), expr, "sits in the code of a DO/function body ($$ ... $$): "
                             "inlined only when it renders to a number, else the step fails",
                             "quote it ('{{ x }}') for text, add `| int`, or mark trusted SQL `| raw_sql`"))
            continue
        if ctx != "code":
            continue
        if _IN_BEFORE.search(before):
            findings.append((m.start(), expr, "is an IN ( ) list: each item is bound when the value is "
                             "a list; a comma-separated string would be ONE value",
                             "pass a list (e.g. `{{ ids }}` with ids: [1, 2]), or `| raw_sql` for trusted text"))
            continue
        if i not in bindable:
            continue
        if re.search(r"\b(order|group|partition)\s+by\s*$", before, re.IGNORECASE):
            unbindable = True  # parses with $1, but orders/groups by a constant
        elif baseline_ok:
            unbindable = not _parses(_substitute(text, {i: "$1"}))
        else:
            stripped = text.strip()
            unbindable = stripped == _MARK or bool(_NAME_BEFORE.search(before)) \
                or bool(re.search(r"\bvalues\s*$", before, re.IGNORECASE)) \
                or before.rstrip().endswith(".") or _after(text, i).startswith(".")
        if unbindable:
            findings.append((m.start(), expr, "sits where SQL needs a name or SQL text, which a bound "
                             "value cannot be (the query fails, or orders/groups by a constant)",
                             "mark it `| sql_identifier` for a table/column name, `| raw_sql` for "
                             "trusted SQL text"))
    return findings


def _after(text: str, index: int) -> str:
    position = -1
    for _ in range(index + 1):
        position = text.index(_MARK, position + 1)
    return text[position + 1:].lstrip()


def _substitute(text: str, special: dict[int, str]) -> str:
    out, count = [], 0
    for ch in text:
        if ch == _MARK:
            out.append(special.get(count, "noetl_x"))
            count += 1
        else:
            out.append(ch)
    return "".join(out)


def _parses(sql: str) -> bool:
    import duckdb

    try:
        duckdb.extract_statements(sql)
    except Exception:  # noqa: BLE001 - any parser error
        return False
    return True


def _sql_contexts(text: str) -> list[tuple[str, str]]:
    """For each marker: ``code``, ``string``, ``ident``, ``comment`` or ``dollar``, and the text before."""
    out: list[tuple[str, str]] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == _MARK:
            out.append(("code", text[max(0, i - 60):i]))
            i += 1
        elif c in "'\"":
            j = i + 1
            while j < n:
                if text[j] == c:
                    if text.startswith(c * 2, j):
                        j += 2
                        continue
                    break
                if text[j] == _MARK:
                    out.append(("string" if c == "'" else "ident", ""))
                j += 1
            i = j + 1
        elif text.startswith("--", i) or text.startswith("/*", i):
            end = text.find("\n" if text[i + 1] == "-" else "*/", i + 2)
            end = n if end < 0 else end
            out.extend(("comment", "") for _ in range(text.count(_MARK, i, end)))
            i = end + (0 if text[i + 1] == "-" else 2)
        elif c == "$" and re.match(r"\$([A-Za-z_][A-Za-z0-9_]*)?\$", text[i:]):
            tag = re.match(r"\$([A-Za-z_][A-Za-z0-9_]*)?\$", text[i:]).group(0)  # type: ignore[union-attr]
            close = text.find(tag, i + len(tag))
            close = n if close < 0 else close + len(tag)
            if re.search(r"\b(do|as)\s*$", text[max(0, i - 20):i], re.IGNORECASE):  # a code body
                in_string = False
                for ch in text[i + len(tag):close]:
                    if ch == "'":
                        in_string = not in_string
                    elif ch == _MARK:
                        out.append(("string" if in_string else "dollar", ""))
            else:  # a dollar-quoted string: bound like '...'
                out.extend(("string", "") for _ in range(text.count(_MARK, i, close)))
            i = close
        else:
            i += 1
    return out


# ---------------------------------------------------------------------------------- shell
def shell_findings(source: str) -> list[tuple[int, str, str, str]]:
    """``(offset, expr, message, hint)`` for shell templates that need attention."""
    findings = []
    for m in _EXPR.finditer(source):
        expr = m.group(1)
        marked = _MARKED.search(expr)
        if marked:
            findings.append((m.start(), expr, f"is inserted as shell syntax (`| {marked.group(1)}`): "
                             "only for trusted values", "prefer a value: it reaches the shell as an argument"))
            continue
        before = _EXPR.sub("x", _STATEMENT.sub(" ", source[:m.start()]))
        if before.count("'") % 2 == 1 or before.count('"') % 2 == 1:
            continue  # inside quotes: an argument, whatever the quotes
        if _EVAL_BEFORE.search(before):
            findings.append((m.start(), expr, "is given to eval/sh -c/source: its value runs as a "
                             "command", "pass data as arguments or `env:`; `| raw_shell` only for "
                             "trusted commands"))
        elif "$((" in before and "))" not in before[before.rfind("$(("):]:
            findings.append((m.start(), expr, "is inside $(( )): only a number is accepted at run time",
                             "compute the number in a template filter or a python step"))
        elif _COMMAND_BEFORE.search(before):
            findings.append((m.start(), expr, "is a command name: its value is run as ONE word (a "
                             "command with arguments no longer splits)",
                             "write the command in the playbook, or mark a trusted value `| raw_shell`"))
    return findings


__all__ = ["binding_issues", "binding_warnings", "binding_warnings_in_text", "shell_findings", "sql_findings"]
