"""Bounds on what one run may build from its inputs, each with a clear error instead of a hang.

* :data:`MAX_LOOP_ITEMS` (``NOETL_MAX_LOOP_ITEMS``, default 100 000): the items one loop step may
  iterate; ``loop.in`` evaluating to more fails the step naming ``loop.in``.
* :data:`MAX_RENDERED_CHARS` (``NOETL_MAX_RENDERED_CHARS``, default 64 MiB): the size of one
  rendered template (text, or the JSON of a lone expression's value).
* :data:`MAX_SUBPLAYBOOK_DEPTH` (``NOETL_MAX_SUBPLAYBOOK_DEPTH``, default 8): how deep
  sub-playbook calls may nest (a playbook calling itself is refused past it).
"""

from __future__ import annotations

import os


def _env_int(name: str, default: int) -> int:
    try:
        value = int(os.environ.get(name, default))
    except ValueError:
        return default
    return value if value >= 1 else default


MAX_LOOP_ITEMS = _env_int("NOETL_MAX_LOOP_ITEMS", 100_000)
MAX_RENDERED_CHARS = _env_int("NOETL_MAX_RENDERED_CHARS", 64 * 1024 * 1024)
MAX_SUBPLAYBOOK_DEPTH = _env_int("NOETL_MAX_SUBPLAYBOOK_DEPTH", 8)


def too_many_items(count: int) -> str | None:
    """The error for a loop over ``count`` items, or None when within :data:`MAX_LOOP_ITEMS`."""
    if count <= MAX_LOOP_ITEMS:
        return None
    return (f"loop.in has {count:,} items, more than the limit of {MAX_LOOP_ITEMS:,} "
            "(NOETL_MAX_LOOP_ITEMS); split the work, e.g. loop over batches")


def too_large(chars: int) -> str | None:
    """The error for a rendered value of ``chars`` characters, or None when within bounds."""
    if chars <= MAX_RENDERED_CHARS:
        return None
    return (f"the template rendered {chars:,} characters, more than the limit of {MAX_RENDERED_CHARS:,} "
            "(NOETL_MAX_RENDERED_CHARS)")
