"""Checks of the DSL extensions and of names that would otherwise be accepted silently.

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
from noetl_dagster.playbook.models import Playbook, strip_scope

#: names every template sees; a step, iterator or `set:` key so named would be shadowed or shadow them
RESERVED_NAMES = ("workload", "ctx", "execution_id", "output", "keychain", "partition_key", "product")
DAGSTER_NAME = re.compile(r"^[A-Za-z0-9_]+$")
_QUANTITY = re.compile(r"^\d+(\.\d+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_TAG_KEY = re.compile(r"^([A-Za-z0-9_.-]+/)?[A-Za-z0-9_.-]{1,63}$")
HARDWARE_KEYS = ("cpu", "memory", "gpu", "cpu_limit", "memory_limit", "node_selector", "tolerations")


def check_extensions(playbook: Playbook, raw: Any, issues: Any) -> None:
    """Report every problem of ``playbook``'s extensions and reserved names into ``issues``."""
    meta = raw.get("metadata")
    _check_dagster_block(meta, issues)
    _check_metadata(playbook, meta, issues)
    raw_steps = {s.get("step"): s for s in raw.get("workflow") or [] if isinstance(s, dict)}
    loops = {s.step for s in playbook.workflow if s.loop is not None}
    for step in playbook.workflow:
        _check_step(playbook, step, raw_steps.get(step.step) or raw, loops, issues)


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _check_dagster_block(meta: Any, issues: Any) -> None:
    if not isinstance(meta, dict) or "dagster" not in meta:
        return
    block = meta["dagster"]
    if not isinstance(block, dict):
        issues.add(meta, "dagster", f"metadata.dagster must be a mapping, got {describe_value(block)}",
                   field="metadata.dagster", hint="e.g. `dagster: {executor: multiprocess, max_concurrent: 4}`")
        return
    for key, value in block.items():
        field = f"metadata.dagster.{key}"
        if key in ("max_concurrent", "max_iterations", "max_loop_items") and not _positive_int(value):
            issues.add(block, key, f"must be a whole number of at least 1, got {describe_value(value)}", field=field)
        elif key == "automation" and value not in ("eager", None):
            issues.add(block, key, f"unknown automation {describe_value(value)}", field=field, hint="use `automation: eager`")
        elif key == "tags":
            _check_tags(block, value, issues)


def _check_tags(block: dict, tags: Any, issues: Any) -> None:
    field = "metadata.dagster.tags"
    if not isinstance(tags, dict):
        issues.add(block, "tags", f"must be a mapping of tag: value, got {describe_value(tags)}", field=field,
                   hint="e.g. `tags: {team: ml}`")
        return
    for key, value in tags.items():
        if not isinstance(key, str) or not _TAG_KEY.match(key):
            issues.add(tags, key, f"tag key {key!r} is not valid (letters, digits, `_ . -`, an optional "
                       "`prefix/`, at most 63 characters)", field=f"{field}.{key}")
        elif not isinstance(value, (str, int, float, bool)) or isinstance(value, str) and len(value) > 4096:
            issues.add(tags, key, f"tag value must be a short text or number, got {describe_value(value)}",
                       field=f"{field}.{key}")
        elif key.startswith(("noetl/", "dagster/")):
            issues.add(tags, key, f"tag key {key!r} is reserved (noetl/ and dagster/ tags are set by the job)",
                       field=f"{field}.{key}", hint="use your own prefix, e.g. `team/owner`")


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
        if not _owner(owner):
            issues.add(meta, "owners", f"owner {owner!r} must be an email address or `team:<name>`",
                       field="metadata.owners")
    part = playbook.metadata.partitions
    if part is not None:
        start = part["daily"]["start"]
        if not isinstance(start, _dt.date) and not (isinstance(start, str) and _date(start)):
            issues.add(meta, "partitions", f"partitions.daily.start must be a date YYYY-MM-DD, got {describe_value(start)}",
                       field="metadata.partitions.daily.start", hint="e.g. `start: 2026-01-01`")


def _owner(owner: Any) -> bool:
    return isinstance(owner, str) and (bool(_EMAIL.match(owner)) or
                                       (owner.startswith("team:") and DAGSTER_NAME.match(owner[5:]) is not None))


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
    if "hardware" in raw_step:
        _check_hardware(raw_step, issues, name)
    product = step.product
    if product is not None:
        raw_product = raw_step.get("product")
        if product.name == f"{playbook.metadata.name}__outcome":
            issues.add(raw_product, "name", f"product name {product.name!r} is the key of the playbook's run "
                       "outcome asset", step=name, field="product.name", hint="rename the product")
        for owner in product.owners:
            if not _owner(owner):
                issues.add(raw_product, "owners", f"owner {owner!r} must be an email address or `team:<name>`",
                           step=name, field="product.owners")
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


def _check_hardware(raw_step: Any, issues: Any, name: str) -> None:
    hardware = raw_step["hardware"]
    if not isinstance(hardware, dict):
        issues.add(raw_step, "hardware", f"hardware must be a mapping, got {describe_value(hardware)}", step=name,
                   field="hardware", hint='e.g. `hardware: {cpu: "2", memory: 4Gi}`')
        return
    for key, value in hardware.items():
        field = f"hardware.{key}"
        if key not in HARDWARE_KEYS:
            issues.add(hardware, key, f"unknown key {key!r}", step=name, field=field,
                       hint="known: " + ", ".join(HARDWARE_KEYS))
        elif key in ("cpu", "memory", "cpu_limit", "memory_limit"):
            text = str(value) if isinstance(value, (int, float, str)) and not isinstance(value, bool) else None
            if text is None or not _QUANTITY.match(text):
                issues.add(hardware, key, f"{key} must be a Kubernetes quantity, got {describe_value(value)}", step=name,
                           field=field, hint='e.g. "500m", "2", "4Gi"')
        elif key == "gpu" and not _positive_int(value):
            issues.add(hardware, key, f"gpu must be a whole number of at least 1, got {describe_value(value)}", step=name,
                       field=field)
        elif key == "node_selector" and not (isinstance(value, dict) and all(
                isinstance(k, str) and isinstance(v, (str, int, float, bool)) for k, v in value.items())):
            issues.add(hardware, key, f"node_selector must be a mapping of label: value, got {describe_value(value)}",
                       step=name, field=field)
        elif key == "tolerations" and not (isinstance(value, list) and all(isinstance(t, dict) for t in value)):
            issues.add(hardware, key, f"tolerations must be a list of mappings, got {describe_value(value)}", step=name,
                       field=field, hint="e.g. `[{key: gpu, operator: Exists}]`")


def describe_value(value: Any) -> str:
    """How an error message names a bad value: its kind for containers, else a short repr."""
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "nothing (null)"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
