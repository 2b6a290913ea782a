"""NoETL's template dialect, rendered by MiniJinja (the engine NoETL's own server uses).

Why MiniJinja and not Jinja2's sandbox: attribute access on a mapping returns the *key*
(``{{ workload.items }}`` is the workload key ``items``, not ``dict.items``), exactly as NoETL
behaves; it renders 5-8x faster; dunder and ``_private`` access is blocked. MiniJinja does run
public methods of passed Python objects (``d.pop``), so templates only ever see read-only views
(:class:`ReadOnlyMap`, :class:`ReadOnlyList`) of plain data, and the environment runs with
``debug=False`` so error messages never echo variable values.

Rules (NoETL's):

* undefined values are chainable: ``{{ a.b.c }}`` renders ``""`` and works with ``default``;
* a string that is exactly one ``{{ expr }}`` yields the value with its type;
  text around it yields a string;
* a condition is false when it renders (lowercased, trimmed) to ``"" false 0 no none null
  off {} []``.

Example::

    render({"n": "{{ x + 1 }}", "s": "x={{ x }}"}, {"x": 1})   # {'n': 2, 's': 'x=1'}
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

import minijinja

from noetl_dagster.core.limits import too_large
from noetl_dagster.core.secrets import redact

_LONE_EXPR = re.compile(r"^\s*\{\{(?P<expr>(?:(?!\{\{|\}\}).)*)\}\}\s*$", re.DOTALL)
_FALSY = frozenset({"", "false", "0", "no", "none", "null", "off", "{}", "[]"})
#: MiniJinja's instruction budget per render: stops runaway loops in templates.
FUEL = 2_000_000


class TemplateFailure(Exception):
    """A template that failed to parse or render; ``message`` never contains variable values."""


class ReadOnlyMap(Mapping):
    """A read-only, lazily wrapped view of a mapping for templates.

    With ``data_alias=True`` (step results) ``.data`` resolves to the mapping itself when it has
    no ``data`` key, so ``{{ s.field }}`` and ``{{ s.data.field }}`` both work, as in NoETL.
    """

    __slots__ = ("_data", "_alias")

    def __init__(self, data: Mapping, data_alias: bool = False) -> None:
        self._data = data
        self._alias = data_alias

    def __getitem__(self, key: Any) -> Any:
        try:
            return freeze(self._data[key])
        except KeyError:
            if self._alias and key == "data":
                return self
            raise

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"ReadOnlyMap({self._data!r})"


class ReadOnlyList(Sequence):
    """A read-only, lazily wrapped view of a list for templates."""

    __slots__ = ("_data",)

    def __init__(self, data: Sequence) -> None:
        self._data = data

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return ReadOnlyList(self._data[index])
        return freeze(self._data[index])

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"ReadOnlyList({self._data!r})"


def freeze(value: Any, data_alias: bool = False) -> Any:
    """Wrap containers in read-only views; scalars pass through."""
    if isinstance(value, (ReadOnlyMap, ReadOnlyList)):
        return value
    if isinstance(value, Mapping):
        return ReadOnlyMap(value, data_alias)
    if isinstance(value, (list, tuple)):
        return ReadOnlyList(value)
    return value


class Unserialisable:
    """Marker base: a mapping templates may index but never dump whole (the keychain)."""

    __slots__ = ()
    #: the message of the error raised when a template tries to serialise the object
    refusal = "this value cannot be serialised as a whole"


def thaw(value: Any) -> Any:
    """Plain ``dict``/``list`` copies of views (and of anything MiniJinja hands back)."""
    if isinstance(value, Unserialisable):
        raise TemplateFailure(value.refusal)
    if isinstance(value, ReadOnlyMap):
        if isinstance(value._data, Unserialisable):
            raise TemplateFailure(value._data.refusal)
        return {k: thaw(v) for k, v in value._data.items()}
    if isinstance(value, ReadOnlyList):
        return [thaw(v) for v in value._data]
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [thaw(v) for v in value]
    if isinstance(value, minijinja.Markup):
        return str(value)
    return value


def _to_json(value: Any) -> str:
    return json.dumps(thaw(value), default=str)


def _finalize(value: Any) -> Any:
    if isinstance(value, (Mapping, Sequence)) and not isinstance(value, (str, bytes)):
        return _to_json(value)
    return NotImplemented


def _b64encode(value: Any) -> str:
    data = value if isinstance(value, bytes) else str(value).encode()
    return base64.b64encode(data).decode()


def _b64decode(value: Any) -> str:
    return base64.b64decode(str(value)).decode()


def _fromjson(value: Any) -> Any:
    if value is None or value == "":
        return None
    return json.loads(value) if isinstance(value, str) else value


class Raw:
    """A value an author marked as syntax (``| raw_shell``, ``| raw_sql``)."""

    __slots__ = ("text", "kind")

    def __init__(self, text: str, kind: str) -> None:
        self.text, self.kind = text, kind

    def __str__(self) -> str:
        return self.text


_SIMPLE_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def sql_identifier(value: Any) -> str:
    """``value`` as SQL identifier text: simple names as they are, others double-quoted.

    ``a.b`` is two names; a list gives ``a, b``. Raises :class:`TemplateFailure` for an empty
    name or a NUL character.
    """
    value = thaw(value)
    if isinstance(value, (list, tuple)):
        if not value:
            raise TemplateFailure("sql_identifier: an empty list is not a column list")
        return ", ".join(sql_identifier(v) for v in value)
    text = "" if value is None else str(value)
    parts = text.split(".") if text else [""]
    out = []
    for part in parts:
        if not part or "\x00" in part:
            raise TemplateFailure("sql_identifier: a name part is empty or holds a NUL character")
        out.append(part if _SIMPLE_IDENT.match(part) else '"' + part.replace('"', '""') + '"')
    return ".".join(out)


def plain_text(value: Any) -> str:
    """The text a value renders to in a template (containers as JSON, None as empty)."""
    if value is None:
        return ""
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, minijinja.Markup):
        return str(value)
    if isinstance(value, (Mapping, Sequence)) and not isinstance(value, (str, bytes)):
        return json.dumps(thaw(value), default=str)
    return str(value)


def _make_env(typed: bool = False) -> minijinja.Environment:
    """The text environment, or (``typed``) the one that evaluates lone expressions.

    MiniJinja's Python binding hands integral floats back as ints (``2.0`` -> ``2``), so the typed
    environment serialises the value with MiniJinja's own ``tojson`` and parses it in Python.
    """
    env = minijinja.Environment(
        undefined_behavior="chainable", debug=False, finalizer=_finalize, fuel=FUEL
    )
    env.remove_global("debug")  # it dumps the whole context, secrets included
    if not typed:
        env.add_filter("tojson", lambda v, indent=None: json.dumps(thaw(v), default=str, indent=indent))
    env.add_filter("fromjson", _fromjson)
    # outside shell commands and SQL (core/binding.py) these only render text
    env.add_filter("raw_shell", lambda v: plain_text(v))
    env.add_filter("raw_sql", lambda v: plain_text(v))
    env.add_filter("sql_identifier", lambda v: sql_identifier(v))
    env.add_filter("b64encode", _b64encode)
    env.add_filter("b64decode", _b64decode)
    env.add_filter("len", lambda v: 0 if v is None else len(v))
    env.add_filter("keys", lambda v: list(v.keys()) if isinstance(v, Mapping) else [])
    env.add_filter("values", lambda v: [thaw(x) for x in v.values()] if isinstance(v, Mapping) else [])
    env.add_filter("get", lambda v, k, d=None: v.get(k, d) if isinstance(v, Mapping) else d)
    return env


_ENV = _make_env()
_TYPED_ENV = _make_env(typed=True)
_TEMPLATES: dict[str, str] = {}
_PATH = re.compile(r"""^\s*([A-Za-z_]\w*)((?:\.[A-Za-z_]\w*|\[\d+\]|\['[^'\]]*'\]|\["[^"\]]*"\])*)\s*$""")
_PATH_PART = re.compile(r"""\.([A-Za-z_]\w*)|\[(\d+)\]|\['([^'\]]*)'\]|\["([^"\]]*)"\]""")
_MISSING = object()
_LITERALS = frozenset({"true", "false", "none", "True", "False", "None"})


def _resolve_path(expr: str, scope: Mapping[str, Any]) -> Any:
    """``a.b[0]['c']`` looked up directly (types and objects kept); ``_MISSING`` if not a plain path."""
    match = _PATH.match(expr)
    if match is None or match.group(1) in _LITERALS:
        return _MISSING
    value: Any = scope.get(match.group(1))
    for part in _PATH_PART.finditer(match.group(2)):
        if value is None:
            return None
        attr, index, key1, key2 = part.groups()
        if isinstance(value, Mapping):
            value = value.get(attr if attr is not None else (key1 if key1 is not None else key2 if key2 is not None else int(index)))
        elif isinstance(value, Sequence) and not isinstance(value, str) and index is not None:
            position = int(index)
            value = value[position] if position < len(value) else None
        else:
            return _MISSING
    return value


_QUOTED_NAME = re.compile(r"(template|include|import|extends)([^']*)'[^']*'", re.IGNORECASE)


def _message(exc: Exception) -> str:
    """The error of ``exc`` without values: names of missing templates are dropped, secrets masked."""
    if isinstance(exc, TemplateFailure):
        return redact(str(exc))
    if isinstance(exc, minijinja.TemplateError):
        text = exc.message.replace(" (in <string>", " (").replace(" (in ", " (")
        text = _QUOTED_NAME.sub(r"\1\2<value>", text)  # `{% include x %}` names a rendered value
        return redact(text)
    return redact(f"{type(exc).__name__}: {exc}")


def _template_name(source: str) -> str:
    name = _TEMPLATES.get(source)
    if name is None:
        name = "t" + hashlib.blake2b(source.encode(), digest_size=10).hexdigest()
        try:
            _ENV.add_template(name, source)
        except Exception as exc:  # noqa: BLE001 - a syntax error, reported as TemplateFailure
            raise TemplateFailure(_message(exc)) from None
        _TEMPLATES[source] = name
    return name


def is_template(value: Any) -> bool:
    return isinstance(value, str) and ("{{" in value or "{%" in value)


def check_syntax(source: str) -> str | None:
    """The syntax error of ``source`` as text, or None when it parses."""
    try:
        _ENV.undeclared_variables_in_str(source)
    except Exception as exc:  # noqa: BLE001
        return _message(exc)
    return None


def render_text(source: str, scope: Mapping[str, Any]) -> str:
    """Render ``source`` to text."""
    try:
        text = _ENV.render_template(_template_name(source), **scope)
    except TemplateFailure:
        raise
    except Exception as exc:  # noqa: BLE001
        raise TemplateFailure(_message(exc)) from None
    if too_large(len(text)):
        raise TemplateFailure(too_large(len(text)) or "")
    return text


_WHOLE_KEYCHAIN = re.compile(r"\bkeychain\b(?!\s*[.\[])")


def evaluate(expr: str, scope: Mapping[str, Any]) -> Any:
    """Evaluate one Jinja expression to a plain Python value (None when undefined)."""
    direct = _resolve_path(expr, scope)
    if direct is not _MISSING:
        return thaw(direct)
    if "keychain" in expr and _WHOLE_KEYCHAIN.search(expr):  # MiniJinja's tojson would give {}
        raise TemplateFailure("the keychain cannot be listed or serialised as a whole; "
                              "use `keychain.<name>.<field>`")
    try:
        text = str(_TYPED_ENV.eval_expr(f"({expr}) | tojson", **scope))
    except Exception as exc:  # noqa: BLE001
        raise TemplateFailure(_message(exc)) from None
    if too_large(len(text)):
        raise TemplateFailure(too_large(len(text)) or "")
    try:
        return json.loads(text)
    except ValueError as exc:
        raise TemplateFailure(_message(exc)) from None


def render_value(value: Any, scope: Mapping[str, Any]) -> Any:
    """Render every string inside ``value``; a lone ``{{ expr }}`` keeps the value's type."""
    if isinstance(value, str):
        if "{{" not in value and "{%" not in value:
            return value
        lone = _LONE_EXPR.match(value)
        if lone and "{%" not in value:
            return evaluate(lone.group("expr"), scope)
        return render_text(value, scope)
    if isinstance(value, Mapping):
        return {k: render_value(v, scope) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [render_value(v, scope) for v in value]
    return value


render = render_value


def is_true(value: Any) -> bool:
    """NoETL's truthiness of a rendered condition."""
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, (Mapping, Sequence)) and not isinstance(value, str):
        return len(value) > 0
    if isinstance(value, (int, float)):
        return value != 0
    return str(value).strip().lower() not in _FALSY


def condition(source: str | None, scope: Mapping[str, Any]) -> bool:
    """Evaluate a ``when``: a bare expression is wrapped in ``{{ }}``; no ``when`` is true."""
    if source is None:
        return True
    text = source if is_template(source) else "{{ " + source + " }}"
    return is_true(render_value(text, scope))
