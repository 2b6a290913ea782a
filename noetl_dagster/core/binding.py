"""Templates in shell commands and SQL: values travel as arguments and bound parameters.

NoETL renders ``{{ }}`` straight into ``sh -c`` strings and SQL text, so a workload value
carrying ``;``, a quote, ``$(...)`` or ``UNION`` becomes code. Here the command or query is
rendered with a finalizer that *captures* each ``{{ }}`` value and leaves a marker in the
text; the markers are then replaced according to where they sit in the shell or SQL text:

* **shell**: each value is a positional parameter of ``sh -c script noetl-shell v1 v2 ...``
  and the marker becomes ``"${1}"`` (unquoted), ``${1}`` (inside ``"..."``), ``'"${1}"'``
  (inside ``'...'``: the quote is closed and reopened), ``${1}`` in a here-document with an
  unquoted delimiter, the text itself in a quoted here-document (refused if it would end it),
  and inside ``$(( ))`` only a number is accepted;
* **SQL** (postgres, duckdb): a value outside quotes becomes a placeholder (``$3``) bound by
  the driver with its type; a list directly inside ``IN ( )`` becomes one placeholder per
  item; a value inside ``'...'`` becomes the literal rebuilt as ``('a' || CAST($3 AS text)
  || 'b')`` (just ``$3`` bound as text when it is the whole literal; ``DATE '...'``-style
  typed literals become ``CAST(... AS DATE)``); inside ``"..."`` (a quoted identifier) the
  value is inlined with ``"`` doubled; in a comment it is dropped; an ``ArrowRef`` (``{{ product('d/n')
  }}``, a stored table) is its own ``read_parquet('<uri>')`` expression; inside a dollar-quoted
  body (``$$ ... $$``, function code) it is refused.

Authors who need a template to produce syntax opt in explicitly, and ``validate`` names each
such place:

* ``{{ x | raw_shell }}``: inserted into the command as shell syntax, unquoted;
* ``{{ x | raw_sql }}``: inserted into the SQL as text (a column list, an ``ORDER BY``);
* ``{{ x | sql_identifier }}``: a table/column name (``schema.table`` allowed, a list gives a
  comma-separated list): simple names (letters, digits, ``_``) are inserted as they are,
  anything else is double-quoted, so it can never become other syntax.

Example::

    text, values = render_shell("echo {{ msg }} > '{{ out }}.txt'", {"msg": "a; rm -rf /", "out": "x"})
    # text   == 'echo "${1}" > \\'\\'"${2}"\\'.txt\\''   values == ["a; rm -rf /", "x"]
    sql, params = render_sql("SELECT * FROM t WHERE name = '{{ n }}' AND id = {{ i }}",
                             {"n": "x' OR 1=1 --", "i": 7}, first=1)
    # sql == "SELECT * FROM t WHERE name = $1 AND id = $2"   params == ["x' OR 1=1 --", 7]
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from typing import Any

import minijinja

from noetl_dagster.core.templates import Raw, TemplateFailure, _finalize, _make_env, _message, plain_text, sql_identifier, thaw

_OPEN, _CLOSE = "\ue000", "\ue001"
_MARKER = re.compile(_OPEN + r"(\d+)" + _CLOSE)


# ------------------------------------------------------------------------ capturing renderer
_CAPTURE = threading.local()


def _capture(value: Any) -> Any:
    values = getattr(_CAPTURE, "values", None)
    if values is None:  # not capturing (never happens with _BOUND_ENV): plain rendering
        return _finalize(value)
    if value is None:  # undefined or none: nothing to bind, renders empty
        return ""
    if isinstance(value, Raw):
        _CAPTURE.raw.append(value)
        return value.text
    values.append(thaw(value) if not isinstance(value, minijinja.Markup) else str(value))
    return f"{_OPEN}{len(values) - 1}{_CLOSE}"


def _bound_env() -> minijinja.Environment:
    env = _make_env()
    env.finalizer = _capture
    return env


def install_filters(env: minijinja.Environment, capturing: bool) -> None:
    """``raw_shell``, ``raw_sql``, ``sql_identifier`` (outside shell/SQL they render plain text)."""
    if capturing:
        env.add_filter("raw_shell", lambda v: Raw(plain_text(v), "shell"))
        env.add_filter("raw_sql", lambda v: Raw(plain_text(v), "sql"))
        env.add_filter("sql_identifier", lambda v: Raw(sql_identifier(v), "sql"))
    else:
        env.add_filter("raw_shell", plain_text)
        env.add_filter("raw_sql", plain_text)
        env.add_filter("sql_identifier", sql_identifier)


_ENV = _bound_env()
install_filters(_ENV, capturing=True)
_TEMPLATES: dict[str, str] = {}
_ENV_LOCK = threading.Lock()


def render_captured(source: str, scope: Mapping[str, Any],
                    raw_out: list[Raw] | None = None) -> tuple[str, list[Any]]:
    """``source`` rendered with a marker in place of each ``{{ }}`` value, and the values.

    Values an author marked as syntax (``| raw_sql``...) are inserted and appended to ``raw_out``.
    Text without ``{{``/``{%`` is returned as it is (``${#arr[@]}`` is shell, not a comment).
    """
    if "{{" not in source and "{%" not in source:
        return source, []
    name = _TEMPLATES.get(source)
    if name is None:
        import hashlib

        name = "b" + hashlib.blake2b(source.encode(), digest_size=10).hexdigest()
        try:
            with _ENV_LOCK:
                _ENV.add_template(name, source)
        except Exception as exc:  # noqa: BLE001 - a syntax error
            raise TemplateFailure(_message(exc)) from None
        _TEMPLATES[source] = name
    previous = getattr(_CAPTURE, "values", None), getattr(_CAPTURE, "raw", None)
    values: list[Any] = []
    raw: list[Raw] = []
    _CAPTURE.values, _CAPTURE.raw = values, raw
    try:
        text = _ENV.render_template(name, **scope)
    except TemplateFailure:
        raise
    except Exception as exc:  # noqa: BLE001
        raise TemplateFailure(_message(exc)) from None
    finally:
        _CAPTURE.values, _CAPTURE.raw = previous
    if raw_out is not None:
        raw_out.extend(raw)
    return text, values


# ----------------------------------------------------------------------------------- shell
_HEREDOC = re.compile(r"<<(-?)\s*(?:'([^'\n]+)'|\"([^\"\n]+)\"|\\?([A-Za-z_][A-Za-z0-9_]*))")
_NUMBER = re.compile(r"^\s*[-+]?\d+(\.\d+)?\s*$")


def render_shell(source: str | list[Any], scope: Mapping[str, Any]) -> tuple[str, list[str]]:
    """A shell script whose ``{{ }}`` values are positional parameters, and those values.

    Run it as ``[shell, "-c", script, "noetl-shell", *values]``. A list of commands is joined
    with ``set -e``. Raises :class:`TemplateFailure` for a value that cannot be placed safely.
    """
    if isinstance(source, list):
        pieces = [str(c) for c in source if c is not None]
        source = "set -e\n" + "\n".join(pieces)
    text, values = render_captured(str(source), scope)
    if not values:
        return text, []
    return _place_shell(text, [plain_text(v) for v in values])


def _place_shell(text: str, values: list[str]) -> tuple[str, list[str]]:
    out: list[str] = []
    used: list[str] = []
    stack = ["none"]  # none | single | double | subst (in $( )) | arith (in $(( )))
    depth: list[int] = []
    heredocs: list[tuple[str, bool, bool]] = []  # pending (delimiter, quoted, strip_tabs)
    i, n = 0, len(text)

    def ref(index: int) -> str:
        used.append(values[index])
        return "${" + str(len(used)) + "}"

    while i < n:
        m = _MARKER.match(text, i)
        state = stack[-1]
        if m:
            index = int(m.group(1))
            if state == "single":
                out.append("'\"" + ref(index) + "\"'")
            elif state == "double":
                out.append(ref(index))
            elif state == "arith":
                if not _NUMBER.match(values[index]):
                    raise TemplateFailure("shell: a template inside $(( )) must render to a number")
                out.append(values[index].strip())
            else:
                out.append('"' + ref(index) + '"')
            i = m.end()
            continue
        c = text[i]
        if state == "single":
            if c == "'":
                stack.pop()
            out.append(c)
            i += 1
            continue
        if c == "\\" and i + 1 < n:
            if _MARKER.match(text, i + 1):  # `\{{ v }}`: a literal backslash, then the value
                out.append("\\\\" if state == "double" else "'\\'")
                i += 1
            else:
                out.append(text[i:i + 2])
                i += 2
            continue
        opened = _open_substitution(text, i, stack, depth, out)
        if state == "double":
            if opened:
                i += opened
                continue
            if c == '"':
                stack.pop()
            out.append(c)
            i += 1
            continue
        # none, subst, arith
        if c == "'" and state != "arith":
            stack.append("single")
        elif c == '"':
            stack.append("double")
        elif c == "#" and state != "arith" and (i == 0 or text[i - 1] in " \t\n;|&("):
            end = text.find("\n", i)
            end = n if end < 0 else end
            out.append(_MARKER.sub("", text[i:end]))  # a value in a comment is dropped
            i = end
            continue
        elif opened:
            i += opened
            continue
        elif state == "arith" and text.startswith("))", i):
            stack.pop()
            out.append("))")
            i += 2
            continue
        elif state == "subst" and c == "(":
            depth[-1] += 1
        elif state == "subst" and c == ")":
            if depth[-1] == 0:
                stack.pop()
                depth.pop()
            else:
                depth[-1] -= 1
        elif c == "<" and text.startswith("<<", i) and not text.startswith("<<<", i):
            h = _HEREDOC.match(text, i)
            if h:
                delimiter = h.group(2) or h.group(3) or h.group(4)
                quoted = h.group(4) is None or text[h.start(4) - 1] == "\\"
                heredocs.append((delimiter, quoted, h.group(1) == "-"))
                out.append(h.group(0))
                i = h.end()
                continue
        elif c == "\n" and heredocs:
            out.append(c)
            i = _heredoc_bodies(text, i + 1, heredocs, values, out, ref)
            heredocs = []
            continue
        out.append(c)
        i += 1
    return "".join(out), used


def _open_substitution(text: str, i: int, stack: list[str], depth: list[int], out: list[str]) -> int:
    """At ``$((`` or ``$(`` (outside single quotes): enter arithmetic or command substitution;
    returns how many characters were copied (0 when none starts here)."""
    if text.startswith("$((", i):
        stack.append("arith")
        out.append("$((")
        return 3
    if text.startswith("$(", i):
        stack.append("subst")
        depth.append(0)
        out.append("$(")
        return 2
    return 0


def _heredoc_bodies(text, i, heredocs, values, out, ref):  # type: ignore[no-untyped-def]
    """Copy the bodies of pending here-documents from ``i``; returns the index after them."""
    n = len(text)
    for delimiter, quoted, strip_tabs in heredocs:
        while i < n:
            end = text.find("\n", i)
            end = n if end < 0 else end
            line = text[i:end]
            bare = line.lstrip("\t") if strip_tabs else line
            if bare == delimiter:
                out.append(line + ("\n" if end < n else ""))
                i = end + 1
                break

            def place(m: re.Match) -> str:
                value = values[int(m.group(1))]
                if not quoted:
                    return ref(int(m.group(1)))
                for body_line in value.split("\n"):
                    if (body_line.lstrip("\t") if strip_tabs else body_line) == delimiter:
                        raise TemplateFailure(f"shell: a value would end the here-document {delimiter}")
                return value

            if not quoted:  # unquoted body: the value is expanded from its parameter, not re-read
                pieces = []
                last = 0
                for m in _MARKER.finditer(line):
                    pieces.append(line[last:m.start()])
                    pieces.append(place(m))
                    last = m.end()
                pieces.append(line[last:])
                out.append("".join(pieces))
            else:
                out.append(_MARKER.sub(place, line))
            out.append("\n" if end < n else "")
            i = end + 1
    return i


# ------------------------------------------------------------------------------------- SQL
_TYPED_LITERAL = re.compile(
    r"\b(date|time|timestamp|timestamptz|interval|json|jsonb|uuid|numeric|decimal|inet|cidr|"
    r"bytea|text|varchar|boolean|bool|bigint|integer|int|smallint|real|float|double)\s*$",
    re.IGNORECASE)
_IN_BEFORE = re.compile(r"\bin\s*\(\s*$", re.IGNORECASE)


def render_sql(source: str | list[Any], scope: Mapping[str, Any], first: int = 1,
               text_type: str = "text", joiner: str = ";\n",
               script: bool = False) -> tuple[str, list[Any]]:
    """SQL whose ``{{ }}`` values are ``$N`` placeholders (from ``first``), and their values.

    Raises :class:`TemplateFailure` for a value in a place it cannot be bound safely, and for a
    ``| raw_sql`` value holding several statements unless ``script`` (the tool's ``script:
    true``) declares that the query may be a multi-statement script.
    """
    if isinstance(source, list):
        source = joiner.join(str(q).strip().rstrip(";") for q in source if q is not None)
    raw: list[Raw] = []
    text, values = render_captured(str(source), scope, raw)
    if not script:

        for value in raw:
            if len(split_statements(value.text + " x")) > 1:
                raise TemplateFailure("a `| raw_sql` value holds a statement separator (;): set "
                                      "`script: true` on the tool if the query is a script")
    if not values:
        return text, []
    return _place_sql(text, values, first, text_type)


def _place_sql(text: str, values: list[Any], first: int, text_type: str) -> tuple[str, list[Any]]:
    out: list[str] = []
    params: list[Any] = []

    def bind(value: Any) -> str:
        params.append(value)
        return f"${first + len(params) - 1}"

    i, n = 0, len(text)
    while i < n:
        m = _MARKER.match(text, i)
        if m:
            value = values[int(m.group(1))]
            before = "".join(out[-40:])
            if callable(getattr(value, "duckdb_sql", None)):  # an ArrowRef/product(): our own SQL
                out.append(value.duckdb_sql())
            elif isinstance(value, list) and _IN_BEFORE.search(before) and re.match(r"\s*\)", text[m.end():]):
                out.append(", ".join(bind(v) for v in value) if value else "NULL")
            else:
                out.append(bind(value))
            i = m.end()
            continue
        c = text[i]
        if c == "'" or (c in "eE" and text.startswith("'", i + 1)
                        and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_"))):
            escape = c in "eE"
            start = i + 1 if escape else i
            j = start + 1
            pieces: list[tuple[str, Any]] = []
            current: list[str] = []
            while j < n:
                mm = _MARKER.match(text, j)
                if mm:
                    pieces.append(("text", "".join(current)))
                    pieces.append(("value", values[int(mm.group(1))]))
                    current = []
                    j = mm.end()
                    continue
                ch = text[j]
                if escape and ch == "\\" and j + 1 < n:
                    current.append(text[j:j + 2])
                    j += 2
                    continue
                if ch == "'":
                    if text.startswith("''", j):
                        current.append("''")
                        j += 2
                        continue
                    break
                current.append(ch)
                j += 1
            pieces.append(("text", "".join(current)))
            literal_end = j + 1
            if not any(kind == "value" for kind, _ in pieces):
                out.append(text[i:literal_end])
            else:
                prefix = "E" if escape else ""
                parts = []
                only = [v for kind, v in pieces if kind == "value"]
                texts = [t for kind, t in pieces if kind == "text"]
                if len(only) == 1 and not "".join(texts):
                    parts.append(bind(plain_text(only[0])))
                else:
                    for kind, piece in pieces:
                        if kind == "text":
                            if piece:
                                parts.append(f"{prefix}'{piece}'")
                        else:
                            parts.append(f"CAST({bind(plain_text(piece))} AS {text_type})")
                head = "".join(out)
                typed = _TYPED_LITERAL.search(head)
                if typed and not head[:typed.start()].rstrip().endswith("::"):
                    out[:] = [head[:typed.start()]]
                    out.append(f"CAST({' || '.join(parts)} AS {typed.group(1)})")
                elif len(parts) == 1:
                    out.append(parts[0])
                else:
                    out.append("(" + " || ".join(parts) + ")")
            i = literal_end
            continue
        if c == '"':
            j = i + 1
            quoted: list[str] = []
            while j < n:
                mm = _MARKER.match(text, j)
                if mm:
                    quoted.append(plain_text(values[int(mm.group(1))]).replace('"', '""'))
                    j = mm.end()
                    continue
                if text[j] == '"':
                    if text.startswith('""', j):
                        quoted.append('""')
                        j += 2
                        continue
                    break
                quoted.append(text[j])
                j += 1
            out.append('"' + "".join(quoted) + '"')
            i = j + 1
            continue
        end = _comment_end(text, i)
        if end >= 0:
            out.append(_MARKER.sub("", text[i:end]))
            i = end
            continue
        if c == "$":
            quote = _dollar_quote(text, i)
            if quote:
                mark, close = quote
                if not _MARKER.search(text, i, close):
                    out.append(text[i:close])
                elif _BODY_BEFORE.search("".join(out[-40:])):  # DO $$ / AS $$: code, not a string
                    body = text[i + len(mark):close - len(mark)]
                    out.append(mark + _inline_body(body, values, mark) + mark)
                else:  # a dollar-quoted string: the same as '...'
                    body = text[i + len(mark):close - len(mark)]
                    pieces, last = [], 0
                    for mm in _MARKER.finditer(body):
                        pieces.append(("text", body[last:mm.start()]))
                        pieces.append(("value", values[int(mm.group(1))]))
                        last = mm.end()
                    pieces.append(("text", body[last:]))
                    texts = [t for kind, t in pieces if kind == "text"]
                    found = [v for kind, v in pieces if kind == "value"]
                    if len(found) == 1 and not "".join(texts):
                        out.append(bind(plain_text(found[0])))
                    else:
                        parts = [mark + t + mark if kind == "text" else f"CAST({bind(plain_text(t))} AS {text_type})"
                                 for kind, t in pieces if kind == "value" or t]
                        out.append("(" + " || ".join(parts) + ")")
                i = close
                continue
        out.append(c)
        i += 1
    return "".join(out), params


_BODY_BEFORE = re.compile(r"\b(do|as)\s*$", re.IGNORECASE)
_NUMERIC = re.compile(r"^\s*-?\d+(\.\d+)?([eE][-+]?\d+)?\s*$")


def _inline_body(body: str, values: list[Any], mark: str) -> str:
    """A function/DO body with its values inlined where that is safe, else a TemplateFailure.

    A body is code: nothing can be bound inside it. A value inside one of the body's own
    ``'...'`` literals is inlined with ``'`` doubled; elsewhere only a number is accepted. A
    value holding the body's dollar tag is refused (it would end the body).
    """
    out: list[str] = []
    in_string = False
    i, n = 0, len(body)
    while i < n:
        m = _MARKER.match(body, i)
        if m:
            value = values[int(m.group(1))]
            text = plain_text(value)
            if mark in text:
                raise TemplateFailure(f"a template value would end the dollar-quoted body ({mark}) it sits in")
            if in_string:
                out.append(text.replace("'", "''"))
            elif isinstance(value, (int, float)) and not isinstance(value, bool) or _NUMERIC.match(text):
                out.append(text.strip())
            else:
                raise TemplateFailure("a template inside a DO/function body ($$ ... $$) outside a quoted "
                                      "string must render to a number; quote it ('{{ x }}') for text, "
                                      "or mark trusted SQL `| raw_sql`")
            i = m.end()
            continue
        c = body[i]
        if c == "'":
            if in_string and body.startswith("''", i):
                out.append("''")
                i += 2
                continue
            in_string = not in_string
        out.append(c)
        i += 1
    return "".join(out)


def has_markers(text: str) -> bool:
    return bool(_MARKER.search(text))


__all__ = ["Raw", "render_captured", "render_shell", "render_sql", "sql_identifier"]


_DOLLAR_TAG = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)?\$")


def _comment_end(text: str, i: int) -> int:
    """Where the SQL comment (``--`` to the line's end, ``/* */``) starting at ``i`` ends; -1: none starts there."""
    if text.startswith("--", i):
        end = text.find("\n", i)
        return len(text) if end < 0 else end
    if text.startswith("/*", i):
        end = text.find("*/", i + 2)
        return len(text) if end < 0 else end + 2
    return -1


def _dollar_quote(text: str, i: int) -> tuple[str, int] | None:
    """The tag (``$$``, ``$body$``) of a dollar quote opening at ``i`` and where it closes (the text's end if never)."""
    tag = _DOLLAR_TAG.match(text, i)
    if tag is None:
        return None
    mark = tag.group(0)
    close = text.find(mark, i + len(mark))
    return mark, len(text) if close < 0 else close + len(mark)


def split_statements(sql: str) -> list[str]:
    """Top-level statements of ``sql`` (quotes, dollar quotes and comments respected)."""
    statements: list[str] = []
    current: list[str] = []
    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        if c == "'" or c == '"':
            j = i + 1
            while j < n:
                if sql[j] == c:
                    if j + 1 < n and sql[j + 1] == c:
                        j += 2
                        continue
                    break
                j += 1
            current.append(sql[i:j + 1])
            i = j + 1
        elif c in "-/" and (j := _comment_end(sql, i)) >= 0:
            current.append(sql[i:j])
            i = j
        elif c == "$" and (quote := _dollar_quote(sql, i)):
            j = quote[1]
            current.append(sql[i:j])
            i = j
        elif c == ";":
            stmt = "".join(current).strip()
            if stmt:
                statements.append(stmt)
            current = []
            i += 1
        else:
            current.append(c)
            i += 1
    stmt = "".join(current).strip()
    if stmt:
        statements.append(stmt)
    return statements
