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
from noetl_dagster.playbook.loader import load_playbook
from noetl_dagster.playbook.models import Playbook
from noetl_dagster.report import RunReport, build_report
from noetl_dagster.translator.emit import (build_definitions, build_job, default_resources, has_products,
                                           workload_run_config)
from noetl_dagster.translator.guard import compiling, deep_enough
from noetl_dagster.translator.translator import PlaybookTranslator


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

    A playbook with products runs its asset job, its products stored as Parquet under
    ``<home>/noetl_data`` (where `dagster dev` finds them); the catalog of sub-playbooks is read
    only when a step can call one. A compile failure is a PlaybookError naming the playbook.
    """
    if catalog is None:
        catalog = catalog_around(playbook) if calls_playbooks(playbook) else PlaybookCatalog.of([playbook])
    with compiling(playbook):
        net = plan(playbook)
        if has_products(playbook):
            products = ArrowRefIOManager(base_uri=os.path.join(home, "noetl_data")) if home else ArrowRefIOManager()
            resources = {"io_manager": products, **(resources or {})}
            defs = dg.Definitions.merge(build_definitions(playbook, translator, net, on_error),
                                        dg.Definitions(resources=default_resources(resources, catalog)))
            return net, defs.resolve_job_def((translator or PlaybookTranslator()).get_job_name(playbook))
        return net, build_job(playbook, translator, net, resources, catalog, on_error)


def playbook_root(playbook: Playbook) -> Path:
    """The folder a playbook's sub-playbooks are looked up in (see :func:`catalog_root`)."""
    return catalog_root(playbook)


def catalog_around(*playbooks: Playbook) -> PlaybookCatalog:
    """``playbooks`` plus the playbooks of their catalog root, read on demand (bounded)."""
    return catalog_for(*playbooks)
