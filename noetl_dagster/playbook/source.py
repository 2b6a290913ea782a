"""Read playbook YAML while keeping the line and column of every mapping key.

Every mapping is loaded as a :class:`SourceMap` (a ``dict`` subclass) that remembers where it
started and where each of its keys stands, so that any later error can name ``file:line:col``.

Example::

    doc = load_yaml_text("workflow:\\n  - step: start\\n", "pb.yaml")
    doc["workflow"][0].position("step")   # -> (2, 5)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import yaml

_BaseLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class SourceMap(dict):
    """A mapping from YAML that knows its own position and the position of each key."""

    __slots__ = ("line", "col", "key_positions")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.line = 0
        self.col = 0
        self.key_positions: dict[Any, tuple[int, int]] = {}

    def position(self, key: Any = None) -> tuple[int, int]:
        """(line, col) of ``key``, or of the mapping itself when the key is absent."""
        return self.key_positions.get(key, (self.line, self.col))


class SourceList(list):
    """A YAML sequence that knows its own position and the position of each item."""

    __slots__ = ("line", "col", "item_positions")

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.line = 0
        self.col = 0
        self.item_positions: list[tuple[int, int]] = []

    def position(self, index: Any = None) -> tuple[int, int]:
        if isinstance(index, int) and 0 <= index < len(self.item_positions):
            return self.item_positions[index]
        return (self.line, self.col)


@dataclass(frozen=True)
class YamlProblem:
    """A YAML document that could not be read (syntax, duplicate key, ...)."""

    line: int
    col: int
    message: str


class _DuplicateKey(Exception):
    def __init__(self, key: Any, line: int, col: int, first: tuple[int, int]) -> None:
        super().__init__(key)
        self.key, self.line, self.col, self.first = key, line, col, first


class _BadKey(Exception):
    def __init__(self, line: int, col: int) -> None:
        super().__init__(line)
        self.line, self.col = line, col


class _SourceLoader(_BaseLoader):  # type: ignore[misc, valid-type]
    pass


def _mark(node: yaml.Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


def _small(value: Any, budget: int = 64) -> bool:
    """Whether ``value`` holds at most ``budget`` values (aliases counted each time they appear)."""
    stack = [value]
    while stack:
        item = stack.pop()
        budget -= 1
        if budget < 0:
            return False
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return True


def _construct_map(loader: _SourceLoader, node: yaml.MappingNode):  # type: ignore[no-untyped-def]
    data = SourceMap()
    data.line, data.col = _mark(node)
    yield data
    loader.flatten_mapping(node)
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:  # a mapping or list as a key: `{{ x }}` unquoted reads as one, so keep its text
            if not (isinstance(key, dict) and len(key) == 1 and None in key.values() and _small(key)):
                raise _BadKey(*_mark(key_node)) from None  # any other (maybe huge) key is never stringified
            key = str(key)
        if key in data:
            raise _DuplicateKey(key, *_mark(key_node), data.key_positions[key])
        data[key] = loader.construct_object(value_node, deep=False)
        data.key_positions[key] = _mark(key_node)


def _construct_seq(loader: _SourceLoader, node: yaml.SequenceNode):  # type: ignore[no-untyped-def]
    data = SourceList()
    data.line, data.col = _mark(node)
    yield data
    for item in node.value:
        data.append(loader.construct_object(item, deep=False))
        data.item_positions.append(_mark(item))


_SourceLoader.add_constructor("tag:yaml.org,2002:map", _construct_map)
_SourceLoader.add_constructor("tag:yaml.org,2002:seq", _construct_seq)


#: largest playbook file read (bytes of text); a bigger one is refused before parsing
MAX_DOCUMENT_CHARS = int(os.environ.get("NOETL_MAX_PLAYBOOK_BYTES", 4_000_000))
#: most values a document may hold once its aliases are expanded (a "billion laughs" is refused)
MAX_EXPANDED_VALUES = int(os.environ.get("NOETL_MAX_PLAYBOOK_VALUES", 250_000))


def load_yaml_text(text: str, filename: str = "<string>") -> Any:
    """Parse one YAML document; raise :class:`YamlError` with a position on bad input.

    Bounded: at most :data:`MAX_DOCUMENT_CHARS` characters, and at most
    :data:`MAX_EXPANDED_VALUES` values counting every alias expansion (aliases are shared
    objects here, but everything downstream would expand them).
    """
    if len(text) > MAX_DOCUMENT_CHARS:
        raise YamlError(filename, YamlProblem(1, 1, f"the file has {len(text):,} characters, more than the "
                                              f"limit of {MAX_DOCUMENT_CHARS:,} (NOETL_MAX_PLAYBOOK_BYTES)"))
    try:
        data = yaml.load(text, Loader=_SourceLoader)  # noqa: S506 - a safe loader subclass
        _check_expansion(data, filename)
        return data
    except RecursionError:
        raise YamlError(filename, YamlProblem(1, 1, "the document is nested too deeply")) from None
    except _BadKey as exc:
        raise YamlError(filename, YamlProblem(exc.line, exc.col, "a mapping key must be a plain value, "
                                              "not a mapping or a list")) from None
    except _DuplicateKey as exc:
        raise YamlError(
            filename,
            YamlProblem(
                exc.line,
                exc.col,
                f"duplicate key {exc.key!r} (first defined at line {exc.first[0]}); "
                "keep one of them",
            ),
        ) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problem = exc.problem or exc.context or "invalid YAML"
        opened = exc.context_mark
        if exc.problem and exc.context and opened is not None and mark is not None and opened.line != mark.line:
            problem += f" ({exc.context} at line {opened.line + 1})"
        raise YamlError(filename, YamlProblem(line, col, f"YAML syntax error: {problem}")) from None
    except yaml.YAMLError as exc:
        raise YamlError(filename, YamlProblem(1, 1, f"YAML error: {exc}")) from None


def _check_expansion(data: Any, filename: str) -> None:
    """Refuse a document whose aliases expand past :data:`MAX_EXPANDED_VALUES` values."""
    budget = MAX_EXPANDED_VALUES
    stack = [data]
    line = col = 1
    while stack:
        value = stack.pop()
        budget -= 1
        if isinstance(value, (SourceMap, SourceList)):
            line, col = value.line, value.col
        if budget < 0:
            raise YamlError(filename, YamlProblem(max(line, 1), max(col, 1), "the document expands to more than "
                                                  f"{MAX_EXPANDED_VALUES:,} values (YAML aliases `*x` repeating "
                                                  "large anchors?); refused")) from None
        if isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)


class YamlError(Exception):
    """The file is not valid YAML."""

    def __init__(self, filename: str, problem: YamlProblem) -> None:
        super().__init__(f"{filename}:{problem.line}:{problem.col}: {problem.message}")
        self.filename = filename
        self.problem = problem


def position_of(node: Any, key: Any = None) -> tuple[int, int] | None:
    """Position of ``key`` inside ``node`` (or of ``node``) when it came from YAML."""
    if isinstance(node, (SourceMap, SourceList)):
        return node.position(key)
    return None
