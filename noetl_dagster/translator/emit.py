"""Wire a planned net into Dagster: a job, or a graph-backed multi-asset with its checks.

The op bodies are in :mod:`.ops`; this module only connects them:

* a job is a ``GraphDefinition`` built from explicit dependencies (no traced ``@graph``): every
  node takes a fan-in list ``tokens`` of its inbound arcs (``MultiDependencyDefinition``), so an
  unfired branch is skipped without blocking a join and the join runs once (skipped when no arc
  fired); a parallel loop is ``<step>__fan_out`` -> ``<step>`` mapped per item (or per chunk of
  ``loop.chunk_size`` items) -> ``<step>__collect`` (``DynamicCollectDependencyDefinition``);
* a playbook with ``product:`` steps becomes a graph-backed multi-asset keyed ``[domain, name]``
  (other steps stay ops inside it), with its checks as asset checks and an asset job;
* a ``metadata.schedule`` becomes a schedule of that job.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping

import dagster as dg

from noetl_dagster.compat import DynamicCollectDependencyDefinition
from noetl_dagster.contract import (COLLECT_SUFFIX, FAN_OUT_SUFFIX, LOOP_CONTEXT_OUTPUT, LOOP_ITEMS_OUTPUT,
                                    PLAYBOOK_TAG, RESULT_OUTPUT, ROLE_TAG, RUN_OUTCOME, asset_graph_name)
from noetl_dagster.io.manager import ArrowRefIOManager
from noetl_dagster.planner import Net, plan
from noetl_dagster.playbook.catalog import PlaybookCatalog
from noetl_dagster.playbook.models import Playbook, Step
from noetl_dagster.resources.credentials import CredentialsResource
from noetl_dagster.translator.ops import (CATALOG, CREDENTIALS, RESOURCE_KEYS, WORKLOAD_CONFIG, OpFactory,
                                          _check_definition, _outcome, steps_metadata, usage_metadata)
from noetl_dagster.translator.translator import PlaybookTranslator, code_reference, reference_key

__all__ = ["CATALOG", "CREDENTIALS", "RESOURCE_KEYS", "WORKLOAD_CONFIG", "build_definitions", "build_job",
           "default_resources", "has_products", "product_key", "steps_metadata", "usage_metadata",
           "workload_run_config"]


def default_resources(resources: Mapping[str, Any] | None = None,
                      catalog: PlaybookCatalog | None = None, *, io_manager: bool = False) -> dict[str, Any]:
    """The resources playbook ops use: ``noetl_credentials`` (env-backed by default),
    ``noetl_catalog`` (the playbooks a step may call as sub-playbooks) and, with ``io_manager``,
    an :class:`ArrowRefIOManager` (Arrow tables stored once as Parquet, passed by reference)."""
    defaults: dict[str, Any] = {
        CREDENTIALS: CredentialsResource(),
        CATALOG: dg.ResourceDefinition.hardcoded_resource(catalog or PlaybookCatalog(), "sub-playbooks")}
    if io_manager:
        defaults["io_manager"] = ArrowRefIOManager()
    return {**defaults, **(resources or {})}


def build_job(playbook: Playbook, translator: PlaybookTranslator | None = None,
              net: Net | None = None, resources: Mapping[str, Any] | None = None,
              catalog: PlaybookCatalog | None = None, on_error: str | None = None) -> dg.JobDefinition:
    """Compile a validated playbook into a standalone Dagster job (products are not assets here).

    ``resources`` replace the defaults of :func:`default_resources`, e.g.
    ``{"noetl_credentials": CredentialsResource(credentials={...})}``. ``on_error`` (``complete`` or
    ``fail``) overrides :meth:`PlaybookTranslator.get_on_error`.
    """
    emitter = _Emitter(playbook, translator or PlaybookTranslator(), net or plan(playbook), on_error)
    return emitter.job(default_resources(resources, catalog or PlaybookCatalog.of([playbook])))


def has_products(playbook: Playbook) -> bool:
    return any(step.product is not None for step in playbook.workflow)


def build_definitions(playbook: Playbook, translator: PlaybookTranslator | None = None,
                      net: Net | None = None, on_error: str | None = None,
                      product_keys: Mapping[str, dg.AssetKey] | None = None) -> dg.Definitions:
    """One playbook as definitions: a job, or (with products) assets, checks and an asset job,
    plus a schedule for ``metadata.schedule``. Resources are the caller's (see
    :func:`default_resources`). ``product_keys`` resolves the products it reads (``uses:``,
    ``product('domain/name')``) to their producers' asset keys
    (:func:`~noetl_dagster.translator.translator.product_asset_keys`); unknown ones are
    ``[domain, name]``."""
    translator = translator or PlaybookTranslator()
    emitter = _Emitter(playbook, translator, net or plan(playbook), on_error, product_keys)
    if not has_products(playbook):
        job: Any = emitter.job()
        return dg.Definitions(jobs=[job], schedules=_schedules(playbook, translator, job))
    assets = emitter.asset_graph()
    checks = [c for step in playbook.workflow if step.product for c in _checks(playbook, step, translator)]
    job = dg.define_asset_job(
        name=emitter.name,
        selection=dg.AssetSelection.assets(assets) | dg.AssetSelection.checks(*checks),
        description=translator.get_job_description(playbook),
        tags=translator.get_job_tags(playbook),
        metadata=translator.get_job_metadata(playbook),
        executor_def=translator.get_executor(playbook),
    )  # partitioned like its assets
    return dg.Definitions(assets=[assets], asset_checks=checks, jobs=[job],
                          schedules=_schedules(playbook, translator, job))


def workload_run_config(playbook: Playbook, net: Net, translator: PlaybookTranslator | None,
                        workload: Mapping[str, Any]) -> dict[str, Any]:
    """Run config that passes ``workload`` overrides to the entry op of the playbook's job."""
    entry = next(n for n in net.nodes if n.is_entry)
    op_name = f"{entry.name}{FAN_OUT_SUFFIX}" if entry.kind == "loop" else entry.name
    config: dict[str, Any] = {op_name: {"config": {"workload": dict(workload)}}}
    if has_products(playbook):
        config = {asset_graph_name((translator or PlaybookTranslator()).get_job_name(playbook)): {"ops": config}}
    return {"ops": config}


def _schedules(playbook: Playbook, translator: PlaybookTranslator, job: Any) -> list[Any]:
    cron = playbook.metadata.schedule
    if not cron:
        return []
    name = f"{translator.get_job_name(playbook)}__schedule"
    partitions = translator.get_partitions_def(playbook)
    stopped = dg.DefaultScheduleStatus.STOPPED
    if isinstance(partitions, dg.TimeWindowPartitionsDefinition):
        if playbook.metadata.partitions:  # daily: the loader checked the cron is `M H * * *`
            minute, hour = (int(field) for field in cron.split()[:2])
            return [dg.build_schedule_from_partitioned_job(job, name=name, minute_of_hour=minute, hour_of_day=hour,
                                                           default_status=stopped)]
        # a translator's time partitions: one run per new partition, at the partitions' cadence
        return [dg.build_schedule_from_partitioned_job(job, name=name, default_status=stopped)]
    if partitions is not None:  # a translator's static partitions: every partition at each cron tick
        keys = partitions

        def every_partition(context):  # type: ignore[no-untyped-def]
            return [dg.RunRequest(run_key=f"{context.scheduled_execution_time}:{key}", partition_key=key)
                    for key in keys.get_partition_keys(
                dynamic_partitions_store=context.instance)]

        return [dg.schedule(job=job, cron_schedule=cron, name=name, default_status=stopped)(every_partition)]
    return [dg.ScheduleDefinition(name=name, job=job, cron_schedule=cron,
                                  default_status=dg.DefaultScheduleStatus.STOPPED)]


def product_key(playbook: Playbook, step: Step, translator: PlaybookTranslator | None = None) -> dg.AssetKey:
    """The asset key of a product step (:meth:`PlaybookTranslator.get_asset_key`)."""
    return (translator or PlaybookTranslator()).get_asset_key(playbook, step)


def _checks(playbook: Playbook, step: Step, translator: PlaybookTranslator) -> list[dg.AssetChecksDefinition]:
    """The product's checks, each from :meth:`PlaybookTranslator.get_asset_check_spec`."""
    return [_check_definition(translator.get_asset_check_spec(playbook, step, check), check)
            for check in step.product.checks]  # type: ignore[union-attr]


def _with_params(fn: Callable[..., Any], names: list[str]) -> Callable[..., Any]:
    """Give ``fn(**kwargs)`` an explicit signature: Dagster reads graph inputs from it."""
    fn.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in names])
    return fn


class _Emitter:
    """Wires the ops of one playbook (:class:`~.ops.OpFactory`): graph nodes keep the step
    names, op definitions are named ``<job>__<node>``."""

    def __init__(self, playbook: Playbook, translator: PlaybookTranslator, net: Net,
                 on_error: str | None = None, product_keys: Mapping[str, dg.AssetKey] | None = None) -> None:
        self.factory = OpFactory(playbook, translator, net, on_error, product_keys)
        self.playbook, self.translator, self.net = playbook, translator, net
        self.name, self.uses, self.product_keys = self.factory.name, self.factory.uses, self.factory.product_keys
        self.ops = self.factory.ops

    def job(self, resource_defs: Mapping[str, Any] | None = None) -> dg.JobDefinition:
        description = self.translator.get_job_description(self.playbook)
        # Dagster walks the graph recursively: a chain of thousands of steps compiles inside
        # `guard.compiling` / `guard.deep_enough`, as `run_playbook` and the loader do
        graph = dg.GraphDefinition(name=self.name, description=description, node_defs=self._node_defs(),
                                   dependencies=self._dependencies())
        return graph.to_job(name=self.name, description=description,
                            tags=self.translator.get_job_tags(self.playbook),
                            metadata=self.translator.get_job_metadata(self.playbook),
                            executor_def=self.translator.get_executor(self.playbook),
                            partitions_def=self.translator.get_partitions_def(self.playbook),
                            resource_defs=dict(resource_defs or {}))

    def _node_defs(self) -> list[dg.OpDefinition]:
        return [op for ops in self.ops.values() for op in ops]

    def _dependencies(self) -> dict[dg.NodeInvocation, dict[str, Any]]:
        """Explicit dependencies: each node's ``tokens`` fan in from the outputs of its arcs."""
        exits = {n.name: f"{n.name}{COLLECT_SUFFIX}" if n.kind == "loop" else n.name for n in self.net.nodes}
        deps: dict[dg.NodeInvocation, dict[str, Any]] = {}
        for node in self.net.nodes:
            inputs: dict[str, Any] = {}
            if node.inbound:
                inputs["tokens"] = dg.MultiDependencyDefinition(
                    [dg.DependencyDefinition(exits[self.net.node_of_step[a.source]], a.output) for a in node.inbound])
            ops = self.ops[node.name]
            if node.kind != "loop":
                deps[dg.NodeInvocation(ops[0].name, node.name)] = inputs
                continue
            fan_out, body, collect = ops
            fan_name = f"{node.name}{FAN_OUT_SUFFIX}"
            deps[dg.NodeInvocation(fan_out.name, fan_name)] = inputs
            deps[dg.NodeInvocation(body.name, node.name)] = {
                "work": dg.DependencyDefinition(fan_name, LOOP_ITEMS_OUTPUT)}
            deps[dg.NodeInvocation(collect.name, exits[node.name])] = {
                LOOP_CONTEXT_OUTPUT: dg.DependencyDefinition(fan_name, LOOP_CONTEXT_OUTPUT),
                "results": DynamicCollectDependencyDefinition(node.name, RESULT_OUTPUT)}
        return deps

    def asset_graph(self) -> dg.AssetsDefinition:
        products = [s for s in self.playbook.workflow if s.product is not None]
        domain = self.translator.get_domain(self.playbook)
        partitions = self.translator.get_partitions_def(self.playbook)
        outs, groups = {}, {}
        for step in products:
            assert step.product is not None
            spec = self.translator.get_asset_spec(self.playbook, step)
            # the graph's inputs carry the products it reads, and its partitions are the playbook's
            outs[step.product.name] = dg.AssetOut.from_spec(spec.replace_attributes(deps=[], partitions_def=None),
                                                            is_required=False)
            groups[spec.key] = spec.group_name
        ins = {f"uses_{i}": dg.AssetIn(key=reference_key(path, self.product_keys), dagster_type=dg.Nothing)
               for i, path in enumerate(self.uses)}

        product_nodes = {self.net.node_of_step[s.step] for s in products}
        leaves = [n.name for n in self.net.nodes if not n.outbound and n.name not in product_nodes]
        if leaves:  # Dagster wants every leaf of an asset graph to produce an asset: the run outcome
            outs[RUN_OUTCOME] = dg.AssetOut(
                key=dg.AssetKey([domain, f"{self.playbook.metadata.name}__outcome"]),
                description=f"What the final steps of {self.playbook.metadata.catalog_path} "
                            f"({', '.join(leaves)}) returned in the latest run.",
                kinds={"noetl"}, is_required=False,
                metadata={**code_reference(self.playbook.file, 1, "playbook"),
                          PLAYBOOK_TAG: self.playbook.metadata.catalog_path})
            groups[outs[RUN_OUTCOME].key] = domain  # type: ignore[index]  # the spec above has its key
            outcome = self.factory._op(RUN_OUTCOME, _outcome, ins={"results": dg.In(list)},
                               outs={RESULT_OUTPUT: dg.Out(is_required=False)},
                               description="Collects the results of the playbook's final steps.",
                               tags={ROLE_TAG: "outcome"}).alias(RUN_OUTCOME)

        def compose(**uses: Any) -> dict[str, Any]:
            handles = self._wire(uses)
            assets = {s.product.name: handles[self.net.node_of_step[s.step]][RESULT_OUTPUT]  # type: ignore[union-attr]
                      for s in products}
            if leaves:
                assets[RUN_OUTCOME] = outcome(results=[handles[name][RESULT_OUTPUT] for name in leaves])
            return assets

        shared = set(groups.values())
        assets = dg.graph_multi_asset(name=asset_graph_name(self.name), outs=outs, ins=ins,
                                      group_name=shared.pop() if len(shared) == 1 else None,
                                      partitions_def=partitions)(_with_params(compose, list(ins)))
        if len(set(groups.values())) > 1:  # a graph-backed multi-asset takes one group: set each spec's
            assets = assets.map_asset_specs(lambda spec: spec.replace_attributes(group_name=groups[spec.key]))
        return assets

    def _wire(self, uses: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        """Inside the asset graph's traced composition: the same wiring as :meth:`_dependencies`."""
        handles: dict[str, dict[str, Any]] = {}
        for node in self.net.nodes:
            kwargs: dict[str, Any] = {}
            inputs = [handles[self.net.node_of_step[a.source]][a.output] for a in node.inbound]
            if inputs:
                kwargs["tokens"] = inputs
            if node.is_entry:
                kwargs.update(uses)
            ops = self.ops[node.name]
            if node.kind == "loop":
                fan_out, body, collect = ops
                fan_out, body = fan_out.alias(f"{node.name}{FAN_OUT_SUFFIX}"), body.alias(node.name)
                collect = collect.alias(f"{node.name}{COLLECT_SUFFIX}")
                context, items = fan_out(**kwargs)
                outs = collect(loop_context=context, results=items.map(body).collect())
            else:
                outs = ops[0].alias(node.name)(**kwargs)
            handles[node.name] = outs._asdict() if hasattr(outs, "_asdict") else {RESULT_OUTPUT: outs}
        return handles
