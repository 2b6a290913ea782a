"""Event-log export sensors: Dagster runs of playbooks -> ClickHouse and Qdrant, live and incremental.

Three sensors, each with its own cursor (a sink that is down holds back only itself):

* ``noetl_export_clickhouse``: every event of every playbook run -> ``noetl_events``; each step
  attempt of a finished run -> ``step_runs`` (:mod:`noetl_dagster.export.clickhouse`);
* ``noetl_export_qdrant``: finished runs -> ``runs`` and ``failures``; the playbook folder ->
  ``playbooks`` when its files change (:mod:`noetl_dagster.export.qdrant`);
* ``noetl_failure_hints``: a failed playbook run gets its most similar past failures in its log
  and the ``noetl/similar_failures`` tag (:mod:`.hints`).

Example (``definitions.py``)::

    import dagster as dg
    from noetl_dagster import load_playbook_definitions
    from noetl_dagster.export.sensors import export_definitions

    defs = dg.Definitions.merge(load_playbook_definitions("playbooks/"),
                                export_definitions(playbooks="playbooks/"))
"""

import hashlib
import os
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import dagster as dg

from noetl_dagster.export.clickhouse import ClickHouseResource
from noetl_dagster.export.embedder import EmbedderResource
from noetl_dagster.export.qdrant import QdrantResource
from noetl_dagster.export.held import quiet_native_stderr
from noetl_dagster.export.exporter import ExportBatch, ExportCursor, Exporter, ExportStats, default_lag
from noetl_dagster.export.hints import HINT_TAG, find_similar, hint_pass, record_hints
from noetl_dagster.export.mapping import EventRow, RunContext, RunSummary, StepFailure, StepRun, map_record

#: resource keys the sensors use
CLICKHOUSE_KEY = "noetl_clickhouse"
QDRANT_KEY = "noetl_qdrant"
EMBEDDER_KEY = "noetl_embedder"
DEFAULT_BUDGET_SECONDS = 40.0  # under the daemon's 60 s sensor gRPC timeout


def register_env_secrets() -> None:
    """Teach :func:`redact` the secrets of ``NOETL_CREDENTIAL_*`` in this process (the sensor
    daemon's process has not resolved them, but messages may quote them)."""
    from noetl_dagster.core.secrets import ENV_PREFIX
    from noetl_dagster.resources.credentials import CredentialsResource

    aliases = {name[len(ENV_PREFIX):].split("__")[0] for name in os.environ if name.startswith(ENV_PREFIX)}
    resource = CredentialsResource()
    for alias in aliases:
        if alias:
            try:
                resource.resolve(alias)
            except Exception:  # noqa: BLE001 - a malformed variable only loses its redaction
                pass


def playbook_fingerprint(folder: str | Path) -> str:
    """Changes when a playbook file under ``folder`` is added, removed or edited."""
    from noetl_dagster.playbook.folder import find_playbooks

    digest = hashlib.sha1()
    for path in find_playbooks(folder):
        st = path.stat()
        digest.update(f"{path}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def index_playbooks(sink: Any, folder: str | Path) -> int:
    """Upsert the valid playbooks under ``folder`` into the ``playbooks`` collection."""
    from noetl_dagster.playbook.folder import load_playbooks

    return sink.index_playbooks(load_playbooks(folder).playbooks)


def _summary(stats: ExportStats) -> str:
    state = "caught up" if stats.caught_up else "more to do"
    reopened = f", {stats.reopened} reopened for late events" if stats.reopened else ""
    return (f"exported {stats.events} events, {stats.step_runs} step runs, {stats.runs} runs "
            f"({stats.failures} failures{reopened}) in {stats.batches} batches, {stats.seconds:.1f}s; {state}")


#: at most this many finished runs are reported back to per tick (the rest are exported all the same)
MAX_REACTIONS = 100


def finished_this_tick(before: ExportCursor, after: ExportCursor) -> list[str]:
    """Runs whose export completed for the first time in a tick (not runs reopened for late events)."""
    seen = set(before.done) | set(before.tail)
    return [run_id for run_id in {**after.done, **after.tail} if run_id not in seen and run_id not in after.active]


#: the asset each sink's exports are observed on (the UI shows a tick's counts there)
EXPORT_ASSETS = {"clickhouse": ("observability", "noetl_events"), "qdrant": ("observability", "noetl_search_index")}


def export_asset_specs() -> list[dg.AssetSpec]:
    """The exported stores as external assets, observed by every export tick that wrote."""
    return [
        dg.AssetSpec(key=list(EXPORT_ASSETS["clickhouse"]), group_name="observability", kinds={"clickhouse"},
                     description="Every playbook-run event (noetl_events) and step attempt (step_runs), exported "
                                 "by the noetl_export_clickhouse sensor; each tick that wrote is an observation "
                                 "with its counts."),
        dg.AssetSpec(key=list(EXPORT_ASSETS["qdrant"]), group_name="observability", kinds={"qdrant"},
                     description="Playbooks, run summaries and failures embedded for semantic search, exported "
                                 "by the noetl_export_qdrant sensor; each tick that wrote is an observation."),
    ]


def observe_export(instance: dg.DagsterInstance, sink_name: str, stats: ExportStats) -> None:
    """Record what a tick exported as an observation of the sink's asset (visible in the UI)."""
    key = EXPORT_ASSETS.get(sink_name)
    if key is None:
        return
    metadata = {"events": stats.events, "step_runs": stats.step_runs, "runs": stats.runs,
                "failures": stats.failures, "reopened": stats.reopened, "seconds": round(stats.seconds, 2),
                "caught_up": stats.caught_up}
    try:
        instance.report_runless_asset_event(dg.AssetObservation(asset_key=list(key), metadata=metadata))
    except Exception:  # noqa: BLE001 - the export itself succeeded; the observation is a courtesy
        pass


def export_tick(context: dg.SensorEvaluationContext, sink: Any, *, budget_seconds: float | None,
                lag_seconds: float | None = None, before: Callable[[ExportCursor], None] | None = None,
                react: bool = True) -> Any:
    """One sensor tick for ``sink``: export from the stored cursor, return the advanced cursor.

    A tick that finished exporting runs reports back to them (``react``): Dagster's tick is then
    "Success" with those runs as its targeted runs, each run's log says which sensor acted on it,
    and the tick's log has the counts. A tick that finished none is "Skipped" with the counts as
    its reason. A sink error propagates: the tick fails (visible in the UI), the cursor stays put.
    """
    register_env_secrets()
    cursor = ExportCursor.from_json(context.cursor)
    if before is not None:
        before(cursor)
    new_cursor, stats = Exporter(context.instance, sink, lag_seconds=lag_seconds).export(
        cursor, budget_seconds=budget_seconds)
    message = f"{sink.name}: {_summary(stats)}"
    context.log.info(message)
    if stats.events or stats.runs or stats.step_runs:
        observe_export(context.instance, sink.name, stats)
    finished = finished_this_tick(cursor, new_cursor) if react else []
    if finished:
        from noetl_dagster.compat import DagsterRunReaction

        runs = context.instance.get_runs(dg.RunsFilter(run_ids=finished[:MAX_REACTIONS]))
        if runs:
            context.log.info(f"reporting back to {len(runs)} of the {len(finished)} run(s) finished in this tick")
            context.update_cursor(new_cursor.to_json())
            return [DagsterRunReaction(dagster_run=run, run_status=run.status) for run in runs]
    return dg.SensorResult(cursor=new_cursor.to_json(), skip_reason=dg.SkipReason(message))


def clickhouse_export_sensor(*, name: str = "noetl_export_clickhouse", minimum_interval_seconds: int = 30,
                             budget_seconds: float = DEFAULT_BUDGET_SECONDS, lag_seconds: float | None = None,
                             default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.RUNNING
                             ) -> dg.SensorDefinition:
    """The sensor exporting events and step attempts to the ``noetl_clickhouse`` resource."""

    @dg.sensor(name=name, minimum_interval_seconds=minimum_interval_seconds, default_status=default_status,
               description="Exports playbook-run events to ClickHouse (noetl_events, step_runs).")
    def _sensor(context: dg.SensorEvaluationContext, noetl_clickhouse: ClickHouseResource):
        with clickhouse_session(noetl_clickhouse) as sink:
            if isinstance(sink, dg.SkipReason):
                return sink
            return export_tick(context, sink, budget_seconds=budget_seconds, lag_seconds=lag_seconds)

    return _sensor


def qdrant_export_sensor(*, name: str = "noetl_export_qdrant", playbooks: str | Path | None = None,
                         minimum_interval_seconds: int = 30, budget_seconds: float = DEFAULT_BUDGET_SECONDS,
                         lag_seconds: float | None = None,
                         default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.RUNNING
                         ) -> dg.SensorDefinition:
    """The sensor exporting finished runs, failures and the ``playbooks`` folder to Qdrant."""

    @dg.sensor(name=name, minimum_interval_seconds=minimum_interval_seconds, default_status=default_status,
               description="Exports run summaries, failures and playbooks to Qdrant for semantic search.")
    def _sensor(context: dg.SensorEvaluationContext, noetl_qdrant: QdrantResource,
                noetl_embedder: EmbedderResource):
        with qdrant_session(noetl_qdrant, noetl_embedder) as sink:
            if isinstance(sink, dg.SkipReason):
                return sink

            def reindex(cursor: ExportCursor) -> None:
                if playbooks is None or not Path(playbooks).is_dir():
                    return
                fingerprint = f"{sink.embedder.model_id}:{playbook_fingerprint(playbooks)}"
                if cursor.extra.get("playbooks") != fingerprint:
                    count = index_playbooks(sink, playbooks)
                    context.log.info(f"indexed {count} playbook/step points from {playbooks}")
                    cursor.extra["playbooks"] = fingerprint

            return export_tick(context, sink, budget_seconds=budget_seconds, lag_seconds=lag_seconds,
                               before=reindex)

    return _sensor


@contextmanager
def tick_sink(open_session: Callable[[], Any], held: type[Exception], marker: str, what: str) -> Iterator[Any]:
    """The sink of ``open_session()`` (a resource's ``session``) for one sensor tick, or a
    ``SkipReason`` when opening it raised ``held`` with ``marker`` in the message: the embedded
    folder is locked by another process (``noetl-dagster export``, a tuning run). The cursor then
    stays and the next tick retries; the skip reason quotes the error."""
    with ExitStack() as stack:
        try:
            with quiet_native_stderr():  # chdb prints its lock error on fd 2: the skip reason says it
                sink = stack.enter_context(open_session())
        except held as exc:
            if marker not in str(exc):
                raise
            sink = dg.SkipReason(f"{what} is open in another process (e.g. `noetl-dagster export` or a tuning "
                                 f"run); the cursor stays, the next tick retries ({type(exc).__name__}: {exc})")
        yield sink


def clickhouse_session(clickhouse: ClickHouseResource) -> Any:
    """:func:`tick_sink` of the ClickHouse resource (chdb's folder)."""
    from clickhouse_connect.driver.exceptions import ProgrammingError

    return tick_sink(clickhouse.session, ProgrammingError, "Unable to open the chdb engine", "the chdb folder")


def qdrant_session(qdrant: QdrantResource, embedder: EmbedderResource) -> Any:
    """:func:`tick_sink` of the Qdrant resource (local mode's folder)."""
    return tick_sink(lambda: qdrant.session(embedder.get()), RuntimeError, "already accessed by another instance",
                     "the Qdrant local-mode folder")


def failure_hints_sensor(*, name: str = "noetl_failure_hints", minimum_interval_seconds: int = 30,
                         budget_seconds: float = DEFAULT_BUDGET_SECONDS, limit: int = 3,
                         default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.RUNNING
                         ) -> dg.SensorDefinition:
    """The sensor recording similar past failures on newly failed playbook runs."""

    @dg.sensor(name=name, minimum_interval_seconds=minimum_interval_seconds, default_status=default_status,
               description="Adds the most similar past failures (and their fixes) to failed playbook runs.")
    def _sensor(context: dg.SensorEvaluationContext, noetl_qdrant: QdrantResource,
                noetl_embedder: EmbedderResource):
        with qdrant_session(noetl_qdrant, noetl_embedder) as sink:
            if isinstance(sink, dg.SkipReason):
                return sink
            cursor, handled = hint_pass(context.instance, sink, context.cursor, limit=limit,
                                        budget_seconds=budget_seconds)
        return dg.SensorResult(cursor=cursor, skip_reason=dg.SkipReason(f"hinted {handled} failed run(s)"))

    return _sensor


def export_definitions(*, playbooks: str | Path | None = None, clickhouse: ClickHouseResource | None = None,
                       qdrant: QdrantResource | None = None, embedder: EmbedderResource | None = None,
                       minimum_interval_seconds: int = 30, budget_seconds: float = DEFAULT_BUDGET_SECONDS,
                       hints: bool = True, lag_seconds: float | None = None,
                       default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.RUNNING) -> dg.Definitions:
    """The export sensors and their resources (embedded defaults unless given), ready to merge.

    Example::

        dg.Definitions.merge(playbook_defs, export_definitions(playbooks="playbooks/"))
    """
    common: dict[str, Any] = {"minimum_interval_seconds": minimum_interval_seconds,
                              "budget_seconds": budget_seconds, "default_status": default_status}
    sensors = [clickhouse_export_sensor(lag_seconds=lag_seconds, **common),
               qdrant_export_sensor(playbooks=playbooks, lag_seconds=lag_seconds, **common)]
    if hints:
        sensors.append(failure_hints_sensor(**common))
    return dg.Definitions(sensors=sensors, assets=export_asset_specs(), resources={
        CLICKHOUSE_KEY: clickhouse or ClickHouseResource(),
        QDRANT_KEY: qdrant or QdrantResource(),
        EMBEDDER_KEY: embedder or EmbedderResource(),
    })


__all__ = ["CLICKHOUSE_KEY", "EMBEDDER_KEY", "EXPORT_ASSETS", "export_asset_specs", "observe_export", "EventRow", "ExportBatch", "ExportCursor", "ExportStats", "Exporter",
           "HINT_TAG", "QDRANT_KEY", "RunContext", "RunSummary", "StepFailure", "StepRun",
           "clickhouse_export_sensor", "clickhouse_session", "default_lag", "export_definitions", "export_tick",
           "finished_this_tick",
           "failure_hints_sensor", "find_similar", "hint_pass", "index_playbooks", "map_record",
           "playbook_fingerprint", "qdrant_export_sensor", "qdrant_session", "record_hints", "register_env_secrets",
           "tick_sink"]
