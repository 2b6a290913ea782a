"""Load a folder of playbooks as Dagster ``Definitions``; one broken playbook never hides the rest.

Example::

    defs = load_playbook_definitions("playbooks/")
    defs = dg.Definitions.merge(my_defs, load_playbook_definitions(["a.yaml", "b.yaml"]))
"""

from __future__ import annotations

import gc
import logging
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import dagster as dg

from noetl_dagster.errors import Issue, PlaybookError
from noetl_dagster.playbook.folder import load_playbooks
from noetl_dagster.playbook.loader import product_references
from noetl_dagster.playbook.models import Playbook
from noetl_dagster.playbook.catalog import PlaybookCatalog
from noetl_dagster.translator.guard import clashes, compiling
from noetl_dagster.translator.emit import build_definitions, default_resources
from noetl_dagster.translator.translator import PlaybookTranslator, product_asset_keys, reference_key

logger = logging.getLogger("noetl_dagster")
def playbook_asset_specs(paths_or_playbooks: str | os.PathLike | Playbook | Iterable[str | os.PathLike | Playbook],
                         translator: PlaybookTranslator | None = None) -> list[dg.AssetSpec]:
    """The products of playbooks as :class:`~dagster.AssetSpec` objects, for composition: with other
    assets' ``deps``, ``dg.Definitions(assets=...)`` as external assets, or an ``@multi_asset``
    of your own. Each spec is :meth:`PlaybookTranslator.get_asset_spec` with ``deps`` on the
    products its playbook reads (``uses:``, ``product('...')``), resolved through the translator
    across the playbooks given. Files and folders are loaded (a broken playbook raises
    :class:`~noetl_dagster.PlaybookError`).

    Examples:
        A dbt-style downstream asset depending on a playbook's product::

            specs = playbook_asset_specs("playbooks/")
            scores = next(s for s in specs if s.key == dg.AssetKey(["risk", "application_scores"]))

            @dg.asset(deps=[scores])
            def risk_dashboard(): ...
    """
    translator = translator or PlaybookTranslator()
    items = [paths_or_playbooks] if isinstance(paths_or_playbooks, (str, os.PathLike, Playbook)) \
        else list(paths_or_playbooks)
    playbooks = [item for item in items if isinstance(item, Playbook)]
    paths = [item for item in items if not isinstance(item, Playbook)]
    if paths:
        playbooks += load_playbooks(paths, strict=True).playbooks
    keys = product_asset_keys(playbooks, translator)
    specs = []
    for playbook in playbooks:
        deps = [reference_key(ref, keys) for ref in product_references(playbook)]
        for step in playbook.workflow:
            if step.product is not None:
                spec = translator.get_asset_spec(playbook, step)
                extra = [key for key in deps if key != spec.key]  # a step reading its own product is no dep
                specs.append(spec.replace_attributes(deps=[*spec.deps, *extra]) if extra else spec)
    return specs


def load_playbook_definitions(paths: str | Path | Sequence[str | Path], *,
                              translator: PlaybookTranslator | None = None,
                              resources: Mapping[str, Any] | None = None,
                              strict: bool = False, on_error: str | None = None,
                              executor: dg.ExecutorDefinition | None = dg.in_process_executor) -> dg.Definitions:
    """Compile every playbook under ``paths`` into jobs.

    A broken playbook is logged with every issue and left out, unless ``strict=True``, which
    raises :class:`~noetl_dagster.PlaybookError` instead. Two playbooks with the same job name
    are an error for the second one. ``resources`` configure the jobs, e.g.
    ``{"noetl_credentials": CredentialsResource(credentials={"pg": {...}})}`` or
    ``{"io_manager": ArrowRefIOManager(base_uri="s3://lake/noetl")}`` (the default io_manager is
    an ArrowRefIOManager under ``$DAGSTER_HOME/noetl_data``). ``on_error="fail"`` makes every
    error result fail its op (strict mode) whatever the playbooks' ``metadata.dagster.on_error``
    says; by default each playbook's choice applies (``complete``, as NoETL, unless it says so).

    ``executor`` is the definitions' default executor: in process, like every playbook job, so
    "Materialize all" (Dagster's global asset job) does not spawn a process per step. Each
    playbook's own job keeps the executor its ``metadata.dagster.executor`` asks for. Merging
    with definitions that set another default executor: pass ``executor=None``.
    """
    translator = translator or PlaybookTranslator()
    threshold = gc.get_threshold()
    gc.set_threshold(50_000, 20, 20)  # compiling many playbooks makes many small objects: collect less often
    try:
        return _load_definitions(paths, translator, resources, strict, on_error, executor)
    finally:
        gc.set_threshold(*threshold)


def _load_definitions(paths: str | Path | Sequence[str | Path], translator: PlaybookTranslator,
                      resources: Mapping[str, Any] | None, strict: bool,
                      on_error: str | None = None,
                      executor: dg.ExecutorDefinition | None = None) -> dg.Definitions:
    loaded = load_playbooks(paths, strict=strict)
    catalog = PlaybookCatalog.of(loaded.playbooks)
    product_keys: dict[str, dg.AssetKey] = {}  # `uses:`/`product()` references -> the producers' keys
    for playbook in loaded.playbooks:
        try:
            product_keys.update(product_asset_keys([playbook], translator))
        except Exception:  # noqa: BLE001 - a translator failing on one playbook: that playbook's issue below
            continue
    parts: dict[str, dg.Definitions] = {}
    products: dict[tuple[str, ...], str] = {}
    problems: list[Issue] = []
    taken: dict[str, str] = {}  # asset keys, check keys and schedule names -> the playbook defining them
    for playbook in loaded.playbooks:
        name = translator.get_job_name(playbook)
        found = catalog.missing_references(playbook)
        if name in parts:
            found.append(Issue(playbook.file, 1, 1, f"job name {name!r} is already used by another playbook",
                               field="metadata.path", hint="give each playbook its own path"))
        try:
            keys = {s.step: _product_key(playbook, s, translator) for s in playbook.workflow if s.product}
        except PlaybookError as exc:  # the translator's get_asset_key failed on this playbook
            problems.extend(exc.issues)
            continue
        for step in playbook.workflow:
            key = keys.get(step.step)
            if key in products:
                found.append(Issue(playbook.file, step.line, 1, f"product {'/'.join(key)} is already published "
                                   f"by {products[key]}", step.step, "product.name", "rename one of them"))
        if found:
            problems.extend(found)
            continue
        products.update({key: playbook.metadata.catalog_path for key in keys.values()})
        try:
            with compiling(playbook):  # any compile failure is this playbook's issue only
                built = build_definitions(playbook, translator, on_error=on_error, product_keys=product_keys)
                claimed = clashes(playbook, built, taken)  # names another playbook already defines
                if claimed:
                    raise PlaybookError(claimed)
                parts[name] = built
        except PlaybookError as exc:  # e.g. an unknown metadata.dagster.executor
            problems.extend(exc.issues)
            continue
    issues = loaded.issues + problems
    if strict and issues:
        raise PlaybookError(issues)
    for issue in issues:
        logger.warning("playbook skipped: %s", issue)
    for playbook in loaded.playbooks:
        for warning in playbook.warnings:
            logger.warning("playbook warning: %s", warning)
    resources_defs = dg.Definitions(resources=default_resources(resources, catalog, io_manager=True),
                                    executor=executor)
    return dg.Definitions.merge(resources_defs, *parts.values())


def _product_key(playbook: Playbook, step: Any, translator: PlaybookTranslator) -> tuple[str, ...]:
    """The product's asset key path; a translator raising becomes this playbook's issue."""
    with compiling(playbook):
        return tuple(translator.get_asset_key(playbook, step).path)
