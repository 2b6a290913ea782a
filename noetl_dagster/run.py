"""Run a playbook in process through its compiled Dagster job: :func:`run_playbook`.

Example::

    from noetl_dagster import run_playbook
    report = run_playbook("playbooks/risk/score_application.yaml", workload={"threshold": 0.7})
    report.status, report.steps["score"].result
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import dagster as dg

from noetl_dagster.errors import Issue, PlaybookError
from noetl_dagster.io.manager import ArrowRefIOManager
from noetl_dagster.planner import Net, plan
from noetl_dagster.playbook.catalog import PlaybookCatalog, calls_playbooks, catalog_for, catalog_root
from noetl_dagster.playbook.loader import load_playbook, product_references
from noetl_dagster.playbook.models import Playbook
from noetl_dagster.report import RunReport, build_report
from noetl_dagster.translator.emit import (build_definitions, build_job, default_resources, has_products,
                                           workload_run_config)
from noetl_dagster.translator.guard import compiling, deep_enough
from noetl_dagster.translator.translator import PlaybookTranslator, product_asset_keys


def run_playbook(playbook: str | Path | Playbook, workload: Mapping[str, Any] | None = None, *,
                 instance: dg.DagsterInstance | None = None,
                 translator: PlaybookTranslator | None = None, log_level: str = "INFO",
                 resources: Mapping[str, Any] | None = None, catalog: PlaybookCatalog | None = None,
                 tags: Mapping[str, str] | None = None, run_id: str | None = None,
                 partition_key: str | None = None, on_error: str | None = None) -> RunReport:
    """Compile and execute a playbook in process; ``workload`` overrides top-level keys.

    ``catalog`` holds the playbooks it may call (default: the playbooks of its own folder tree).
    A partitioned playbook (``metadata.partitions``) runs ``partition_key`` (``YYYY-MM-DD``), by
    default its last partition, as its schedule would. ``on_error`` (``complete``: NoETL's error
    results complete their step; ``fail``: strict) overrides the playbook's
    ``metadata.dagster.on_error``.
    """
    if not isinstance(playbook, Playbook):
        playbook = load_playbook(playbook)
    net, job = compile_run_job(playbook, getattr(instance, "root_directory", None), translator=translator,
                               resources=resources, catalog=catalog, on_error=on_error)
    run_config = {**workload_run_config(playbook, net, translator, workload or {}),
                  "loggers": {"console": {"config": {"log_level": log_level.upper()}}}}
    partition_key = _partition_key(playbook, job, partition_key)
    with deep_enough(playbook):
        result = job.execute_in_process(run_config=run_config, instance=instance, raise_on_error=False,
                                        tags=dict(tags or {}), run_id=run_id, partition_key=partition_key)
    return build_report(net, result)


def _partition_key(playbook: Playbook, job: dg.JobDefinition, key: str | None) -> str | None:
    """``key`` checked against the job's partitions (the last one by default); None if unpartitioned."""
    partitions = job.partitions_def
    if partitions is None:
        if key is not None:
            raise PlaybookError([Issue(playbook.file, playbook.metadata.line or 1, 1,
                                       f"partition {key!r} given, but the playbook is not partitioned",
                                       field="metadata.partitions",
                                       hint="add `partitions: {daily: {start: YYYY-MM-DD}}` under metadata")])
        return None
    if key is None:
        key = partitions.get_last_partition_key()
        if key is None:
            start = playbook.metadata.partitions["daily"]["start"]
            raise PlaybookError([Issue(playbook.file, playbook.metadata.line or 1, 1,
                                       f"no daily partition is complete yet (they start on {start})",
                                       field="metadata.partitions", hint="pass a partition key, or wait a day")])
        return key
    if not partitions.has_partition_key(key):
        start = playbook.metadata.partitions["daily"]["start"]
        raise PlaybookError([Issue(playbook.file, playbook.metadata.line or 1, 1,
                                   f"partition {key!r} is not one of the playbook's daily partitions "
                                   f"(from {start} to yesterday)", field="metadata.partitions",
                                   hint="pass a date YYYY-MM-DD inside that range")])
    return key


def compile_run_job(playbook: Playbook, home: str | None, *, translator: PlaybookTranslator | None = None,
                    resources: Mapping[str, Any] | None = None, catalog: PlaybookCatalog | None = None,
                    on_error: str | None = None) -> tuple[Net, dg.JobDefinition]:
    """The plan and the job a run of ``playbook`` executes (what ``run --resume`` reconstructs too).

    A playbook with products, or reading them (``uses:``, ``product('domain/name')``), runs its
    asset job, its products stored as Parquet under ``<home>/noetl_data`` (where `dagster dev`
    finds them); the products it reads resolve to the keys ``translator`` gives their producers
    (:func:`run_product_keys`). The catalog of sub-playbooks is read only when a step can call
    one. A compile failure is a PlaybookError naming the playbook.
    """
    if catalog is None:
        catalog = catalog_around(playbook) if calls_playbooks(playbook) else PlaybookCatalog.of([playbook])
    with compiling(playbook):
        net = plan(playbook)
        if has_products(playbook) or product_references(playbook):
            products = ArrowRefIOManager(base_uri=os.path.join(home, "noetl_data")) if home else ArrowRefIOManager()
            resources = {"io_manager": products, **(resources or {})}
            keys = run_product_keys(playbook, translator, catalog)
            defs = dg.Definitions.merge(build_definitions(playbook, translator, net, on_error, product_keys=keys),
                                        dg.Definitions(resources=default_resources(resources, catalog)))
            return net, defs.resolve_job_def((translator or PlaybookTranslator()).get_job_name(playbook))
        return net, build_job(playbook, translator, net, resources, catalog, on_error)


def run_product_keys(playbook: Playbook, translator: PlaybookTranslator | None,
                     catalog: PlaybookCatalog | None = None) -> dict[str, dg.AssetKey]:
    """The asset keys of the products ``playbook`` reads, as ``translator`` keys their producers
    (what :func:`~noetl_dagster.load_playbook_definitions` resolves for a whole folder).

    A run of one playbook has no folder of definitions around it: the producers are looked up in
    ``catalog`` and the playbooks of the catalog root (read once, bounded, only when a reference
    is not the playbook's own product). With a translator that keeps the plain ``[domain, name]``
    keys nothing is read. A reference no playbook produces keeps ``[domain, name]``.
    """
    references = product_references(playbook)
    translator = translator or PlaybookTranslator()
    if not references or _plain_keys(translator):
        return {}
    keys = product_asset_keys([playbook], translator)  # a step may read its own product
    for pool in (catalog, catalog_around(playbook)):  # the run's catalog first, its folder if needed
        missing = {ref.split("/")[0] for ref in references if ref not in keys}
        if not missing or pool is None:
            continue
        for producer in pool.scan():
            if producer.metadata.domain not in missing or producer is playbook:
                continue
            try:
                found = product_asset_keys([producer], translator)
            except Exception:  # noqa: BLE001 - the translator failing on an unrelated playbook
                continue
            keys.update({ref: key for ref, key in found.items() if ref not in keys})
    return {ref: keys[ref] for ref in references if ref in keys}


def _plain_keys(translator: PlaybookTranslator) -> bool:
    """True when ``translator`` keys every product ``[domain, name]`` (neither method overridden)."""
    cls = type(translator)
    return (cls.get_asset_key is PlaybookTranslator.get_asset_key
            and cls.get_domain is PlaybookTranslator.get_domain)


def playbook_root(playbook: Playbook) -> Path:
    """The folder a playbook's sub-playbooks are looked up in (see :func:`catalog_root`)."""
    return catalog_root(playbook)


def catalog_around(*playbooks: Playbook) -> PlaybookCatalog:
    """``playbooks`` plus the playbooks of their catalog root, read on demand (bounded)."""
    return catalog_for(*playbooks)
