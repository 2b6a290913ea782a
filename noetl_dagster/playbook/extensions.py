"""Checks of the DSL extensions and of names that would otherwise be accepted silently.

The values of ``metadata.dagster``, ``hardware:`` and ``product:`` are typed and checked by their
models (:mod:`noetl_dagster.playbook.extension_models`, ``Product`` in
:mod:`noetl_dagster.playbook.models`); what is checked here needs the whole playbook (a domain
that names products, a product named like the outcome asset, duplicate check names) or the raw
YAML (reserved and generated names, template hazards).

Each of these used to pass validation and then either fail while compiling (losing the
playbook with a Dagster traceback) or run with a surprise (a step named ``workload`` whose result
no template can reach). They are reported at validate time, naming file:line, step and field.

Called by :func:`noetl_dagster.playbook.loader.parse_text` on a playbook that passed the model
checks; ``issues`` is the loader's collector (``issues.add(node, key, message, step=, field=, hint=)``).
"""

from __future__ import annotations

import datetime as _dt
import re
from typing import Any

from noetl_dagster.contract import GENERATED_SUFFIXES
from noetl_dagster.playbook.extension_models import DAGSTER_NAME, describe_value, is_owner
from noetl_dagster.playbook.models import Playbook, strip_scope

__all__ = ["RESERVED_NAMES", "DAGSTER_NAME", "check_extensions", "describe_value"]

#: names every template sees; a step, iterator or `set:` key so named would be shadowed or shadow them
RESERVED_NAMES = ("workload", "ctx", "execution_id", "output", "keychain", "partition_key", "product")


def check_extensions(playbook: Playbook, raw: Any, issues: Any) -> None:
    """Report every problem of ``playbook``'s extensions and reserved names into ``issues``."""
    meta = raw.get("metadata")
    _check_metadata(playbook, meta, issues)
    raw_steps = {s.get("step"): s for s in raw.get("workflow") or [] if isinstance(s, dict)}
    loops = {s.step for s in playbook.workflow if s.loop is not None}
    for step in playbook.workflow:
        _check_step(playbook, step, raw_steps.get(step.step) or raw, loops, issues)


def _check_metadata(playbook: Playbook, meta: Any, issues: Any) -> None:
    if not isinstance(meta, dict):
        return
    segments = playbook.metadata.catalog_path.strip("/").split("/")
    if any(s in ("", ".", "..") for s in segments):
        issues.add(meta, "path" if "path" in meta else "name", f"metadata.path {playbook.metadata.catalog_path!r} "
                   "has an empty, `.` or `..` segment", field="metadata.path", hint="e.g. `risk/score_application`")
    products = [s for s in playbook.workflow if s.product is not None]
    if (products or playbook.metadata.uses) and not DAGSTER_NAME.match(playbook.metadata.domain):
        issues.add(meta, "path" if "path" in meta else "name", f"domain {playbook.metadata.domain!r} (the first "
                   "segment of metadata.path) must be letters, digits and `_` in a playbook with products",
                   field="metadata.path", hint="it names the products' asset group and key prefix")
    for path in playbook.metadata.uses:
        if not all(DAGSTER_NAME.match(part) for part in path.split("/")):
            issues.add(meta, "uses", f"uses entry {path!r} must be `domain/product` made of letters, digits "
                       "and `_`", field="metadata.uses", hint="e.g. marketing/customer_360")
    for owner in playbook.metadata.owners:
        if not is_owner(owner):
            issues.add(meta, "owners", f"owner {owner!r} must be an email address or `team:<name>`",
                       field="metadata.owners")
    part = playbook.metadata.partitions
    if part is not None:
        start = part["daily"]["start"]
        if not isinstance(start, _dt.date) and not (isinstance(start, str) and _date(start)):
            issues.add(meta, "partitions", f"partitions.daily.start must be a date YYYY-MM-DD, got {describe_value(start)}",
                       field="metadata.partitions.daily.start", hint="e.g. `start: 2026-01-01`")


def _date(text: str) -> bool:
    try:
        _dt.date.fromisoformat(text)
    except ValueError:
        return False
    return len(text) == 10


def _check_step(playbook: Playbook, step: Any, raw_step: Any, loops: set[str], issues: Any) -> None:
    name = step.step
    if name in RESERVED_NAMES:
        issues.add(raw_step, "step", f"step name {name!r} is reserved: templates read `{name}` as the "
                   "run's own value, so this step's result could never be reached", step=name, field="step",
                   hint="rename the step")
    for suffix in GENERATED_SUFFIXES:
        base = name[: -len(suffix)] if name.endswith(suffix) else None
        if base is not None:
            issues.add(raw_step, "step", f"step name {name!r} ends in {suffix!r}, which names the ops of a "
                       "parallel loop" + (f" (step {base!r} loops)" if base in loops else ""), step=name,
                       field="step", hint="rename the step")
    # `product` may name an iterator (NoETL reserves nothing): inside that loop it is the item
    if step.loop is not None and step.loop.iterator in RESERVED_NAMES and step.loop.iterator != "product":
        issues.add(raw_step, ("loop", "iterator"), f"iterator {step.loop.iterator!r} is a reserved name",
                   step=name, field="loop.iterator", hint="use a plain name such as `item`")
    _check_set_keys(raw_step, ("set",), "set", issues, name)
    nxt = raw_step.get("next")
    if isinstance(nxt, dict) and "arcs" in nxt and not isinstance(nxt["arcs"], list):
        issues.add(nxt, "arcs", f"`arcs:` must be a list of {{step, when}}, got {describe_value(nxt['arcs'])}",
                   step=name, field="next.arcs", hint="remove `next:` for a final step")
    arcs = nxt.get("arcs") if isinstance(nxt, dict) else nxt
    for i, arc in enumerate(arcs if isinstance(arcs, list) else []):
        if isinstance(arc, dict):
            path = ("next", "arcs", i, "set") if isinstance(nxt, dict) else ("next", i, "set")
            _check_set_keys(raw_step, path, f"next.arcs[{i}].set", issues, name)
    for path, field, text in _template_strings(raw_step, (), ""):
        growing = _self_growing(text)
        if growing:
            issues.add(raw_step, path, f"`{{% set {growing} = ... %}}` uses {growing} more than once: repeated "
                       "in a loop it doubles each time and can exhaust memory (MiniJinja's fuel does not bound "
                       "memory)", step=name, field=field, hint="build the value once, e.g. with a filter or "
                       "in a python step")
        if _PRIVATE_ATTR.search(text):
            issues.add(raw_step, path, "a template reads a dunder "
                       "attribute (such as `__class__`), which templates can never reach", step=name,
                       field=field, hint="templates see plain data only; read keys of results and workload")
    product = step.product
    if product is not None:
        raw_product = raw_step.get("product")
        if product.name == f"{playbook.metadata.name}__outcome":
            issues.add(raw_product, "name", f"product name {product.name!r} is the key of the playbook's run "
                       "outcome asset", step=name, field="product.name", hint="rename the product")
        seen: dict[str, int] = {}
        raw_checks = raw_product.get("checks") if isinstance(raw_product, dict) else None
        for i, check in enumerate(product.checks):
            field = f"product.checks[{i}]"
            node = raw_checks[i] if isinstance(raw_checks, list) and i < len(raw_checks) else raw_product
            if not DAGSTER_NAME.match(check.check_name):
                issues.add(node, check.kind if check.name is None else "name", f"check name {check.check_name!r} "
                           "must be letters, digits and `_`", step=name, field=field,
                           hint="give the check a `name:`" if check.name is None else None)
            elif check.check_name in seen:
                issues.add(node, check.kind, f"check {check.check_name!r} is declared twice (first as "
                           f"checks[{seen[check.check_name]}])", step=name, field=field,
                           hint="remove one, or give it its own `name:`")
            seen.setdefault(check.check_name, i)


#: `x.__class__`, `x['__dict__']` inside `{{ }}` or `{% %}` (`iter._index` is NoETL's: single `_` is fine)
_PRIVATE_ATTR = re.compile(r"(\{\{|\{%)(?:(?!\}\}|%\}).)*?(\.\s*__\w*|\[\s*['\"]__)", re.DOTALL)


_SET = re.compile(r"\{%-?\s*set\s+([A-Za-z_][\w.]*)\s*=(.*?)-?%\}", re.DOTALL)


def _self_growing(text: str) -> str | None:
    """The target of a ``{% set x = ... %}`` whose expression reads ``x`` twice or more (x + x, [x, x])."""
    for match in _SET.finditer(text):
        target, expr = match.group(1), match.group(2)
        if len(re.findall(r"(?<![\w.])" + re.escape(target) + r"(?![\w])", expr)) >= 2:
            return target
    return None


def _template_strings(value: Any, path: tuple[Any, ...], field: str) -> Any:
    """(path, field, text) of every template string in a raw step, python `code:` left out."""
    if isinstance(value, str):
        if "{{" in value or "{%" in value:
            yield path, field, value
    elif isinstance(value, dict):
        for key, item in value.items():
            if key != "code":
                yield from _template_strings(item, path + (key,), f"{field}.{key}" if field else str(key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _template_strings(item, path + (i,), f"{field}[{i}]")


def _check_set_keys(raw_step: Any, path: tuple[Any, ...], field: str, issues: Any, name: str) -> None:
    block: Any = raw_step
    for key in path:
        if isinstance(block, dict) and key in block:
            block = block[key]
        elif isinstance(block, list) and isinstance(key, int) and key < len(block):
            block = block[key]
        else:
            return
    if not isinstance(block, dict):
        return
    for key in block:
        if not isinstance(key, str):
            continue
        plain = strip_scope(key)
        if not plain.strip() or not plain.replace(".", "_").isidentifier():
            issues.add(block, key, f"set key {key!r} must name a value, such as `ctx.total`", step=name,
                       field=f"{field}.{key}")
        elif plain in RESERVED_NAMES:
            issues.add(block, key, f"set key {key!r} is a reserved name", step=name, field=f"{field}.{key}",
                       hint="templates read `" + plain + "` as the run's own value; pick another name")
