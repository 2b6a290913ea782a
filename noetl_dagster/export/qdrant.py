"""Qdrant sink and semantic search: playbooks and steps, run summaries, failures.

Three collections (names ``<prefix>playbooks``, ``<prefix>runs``, ``<prefix>failures``; prefix
``noetl_``), cosine distance, vectors from an :class:`~noetl_dagster.export.embedder.Embedder`.
Point ids are UUIDv5 of the point's identity plus the embedder's model id, so replays overwrite
instead of adding, and two embedders can share a collection (searches filter on ``embedder``).

A failure point records how it was resolved: the first later run of the same playbook in which
the same step succeeded (``resolved_by_run``, ``resolved_at``), set from either side, whichever
is exported last.

Embedded default: Qdrant local mode under ``$DAGSTER_HOME/noetl_qdrant`` (one process per
folder); production: ``url`` + ``api_key``.

Example::

    from noetl_dagster.export.qdrant import QdrantResource
    from noetl_dagster.export.embedder import EmbedderResource

    sink = QdrantResource(path=":memory:").sink(EmbedderResource(kind="hashing").get())
    hits = sink.search("failures", "division by zero in the divide step", limit=3)
    hits[0].payload["run_id"], hits[0].score
"""

from __future__ import annotations

import hashlib
import os
import uuid
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import dagster as dg
from pydantic import Field

from noetl_dagster.core.secrets import is_secret_field, redact, register_connection_secret, register_secret
from noetl_dagster.export.pool import ClientPool
from noetl_dagster.export.clickhouse import default_home

ENV_URL = "NOETL_QDRANT_URL"
ENV_API_KEY = "NOETL_QDRANT_API_KEY"
ENV_PATH = "NOETL_QDRANT_PATH"
COLLECTIONS = ("playbooks", "runs", "failures")
_NAMESPACE = uuid.UUID("5b0c6f8e-3c1d-4f57-9f1e-6e6f65746c21")
#: tool fields whose text is worth embedding (never credentials)
_TOOL_TEXT = ("code", "query", "sql", "command", "cmd", "url", "endpoint", "method", "path", "playbook",
              "workbook", "script")
_MAX_TEXT = 2000

#: local-mode clients are released after the last sensor tick borrowing them (see ``pool``)
_POOL = ClientPool(releasable=lambda key: not key[0] and key[1] != ":memory:")


def point_id(model_id: str, *parts: Any) -> str:
    """Deterministic point id: UUIDv5 of the embedder's model id and the point's identity."""
    return str(uuid.uuid5(_NAMESPACE, "|".join([model_id, *(str(p) for p in parts)])))


def default_path() -> str:
    return os.environ.get(ENV_PATH) or str(default_home() / "noetl_qdrant")


def get_client(url: str | None = None, api_key: str | None = None, path: str | None = None) -> Any:
    """A ``QdrantClient`` shared per URL/path in this process, kept open for the process's life
    (local mode locks its folder meanwhile: long-lived processes use :func:`client_session`)."""
    return _POOL.get((url, path), lambda: _create(url, api_key, path))


@contextmanager
def client_session(url: str | None = None, api_key: str | None = None, path: str | None = None) -> Iterator[Any]:
    """The shared client for a ``with`` block. A local-mode client is closed when the last
    session using it ends (and no :func:`get_client` caller holds it), which releases the folder
    lock so that another process (``noetl-dagster export``, a tuning run) can open it between
    sensor ticks. Opening a folder another process holds raises (qdrant-client's RuntimeError)."""
    with _POOL.session((url, path), lambda: _create(url, api_key, path)) as client:
        yield client


def _create(url: str | None, api_key: str | None, path: str | None) -> Any:
    from qdrant_client import QdrantClient

    if url:
        return QdrantClient(url=url, api_key=api_key)
    if path == ":memory:":
        return QdrantClient(location=":memory:")
    Path(path or default_path()).mkdir(parents=True, exist_ok=True)
    return QdrantClient(path=path or default_path())


@dataclass
class Hit:
    """One search result: score (cosine), payload, and the collection it came from."""

    score: float
    payload: dict[str, Any]
    collection: str


def _clip(text: str, limit: int = _MAX_TEXT) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def playbook_documents(playbook: Any) -> list[dict[str, Any]]:
    """Payloads for a playbook and each of its steps (pure; texts redacted, no secret fields).

    Example::

        [d["kind"] for d in playbook_documents(load_playbook("p.yaml"))]   # ['playbook', 'step', ...]
    """
    meta = playbook.metadata
    path = meta.catalog_path
    domain = meta.domain
    file = str(getattr(playbook, "file", "") or "")
    docs = []
    step_names = [s.step for s in playbook.workflow]
    docs.append({
        "kind": "playbook", "playbook": path, "domain": domain, "step": "", "tool": "", "file": file,
        "description": meta.description or "",
        "text": _clip(redact(f"playbook {path} ({meta.name}): {meta.description or ''}. "
                             f"steps: {', '.join(step_names)}")),
    })
    for step in playbook.workflow:
        kinds = [t.kind for t in step.tool]
        details = []
        for task in step.tool:
            config = task.config if hasattr(task, "config") else {}
            for key in _TOOL_TEXT:
                value = config.get(key)
                if isinstance(value, str) and value.strip() and not is_secret_field(key):
                    details.append(f"{key}: {value}")
        loop = " loop" if getattr(step, "loop", None) else ""
        text = f"step {step.step} of playbook {path}{loop}: {step.desc or ''}. tool {'/'.join(kinds)}. " + " ".join(details)
        docs.append({
            "kind": "step", "playbook": path, "domain": domain, "step": step.step, "tool": "/".join(kinds),
            "file": file, "description": step.desc or "", "text": _clip(redact(text)),
        })
    return docs


class QdrantSink:
    """Writes run summaries and failures, indexes playbooks, and searches; idempotent upserts.

    Example::

        sink = QdrantSink(get_client(path=":memory:"), HashingEmbedder())
        sink.write(batch)                      # batch.runs: RunSummary list
        sink.search("failures", "zero division", limit=3)
    """

    name = "qdrant"
    wants_events = False
    wants_runs = True
    #: where the sink writes, without credentials (set by the resource; names the export cursor)
    destination = ""

    def __init__(self, client: Any, embedder: Any, prefix: str = "noetl_") -> None:
        self.client = client
        self.embedder = embedder
        self.prefix = prefix
        self._lock = _POOL.lock_for(client)

    def collection(self, name: str) -> str:
        if name not in COLLECTIONS:
            raise ValueError(f"unknown collection {name!r}: choose one of {', '.join(COLLECTIONS)}")
        return self.prefix + name

    def ensure_collections(self) -> None:
        """Create the three collections (cosine, the embedder's size); check existing sizes."""
        from qdrant_client import models

        with self._lock:
            for name in COLLECTIONS:
                full = self.collection(name)
                if _POOL.marked(self.client, full):
                    continue
                if self.client.collection_exists(full):
                    info = self.client.get_collection(full)
                    size = _vector_size(info)
                    if size is not None and size != self.embedder.dim:
                        raise ValueError(
                            f"Qdrant collection {full} holds {size}-d vectors but embedder "
                            f"{self.embedder.model_id} makes {self.embedder.dim}-d ones; use another prefix")
                else:
                    self.client.create_collection(
                        full, vectors_config=models.VectorParams(size=self.embedder.dim,
                                                                 distance=models.Distance.COSINE))
                    with warnings.catch_warnings():  # local mode: "payload indexes have no effect"
                        warnings.simplefilter("ignore")
                        for key in ("embedder", "playbook", "step", "run_id", "kind", "status"):
                            try:
                                self.client.create_payload_index(full, key, models.PayloadSchemaType.KEYWORD)
                            except Exception:  # noqa: BLE001 - optional speed-up only
                                pass
                _POOL.mark(self.client, full)

    # -- writes --------------------------------------------------------------------------
    def _upsert(self, name: str, ids: Sequence[str], payloads: Sequence[dict[str, Any]]) -> None:
        from qdrant_client import models

        if not ids:
            return
        vectors = self.embedder.embed([p["text"] for p in payloads])
        points = [models.PointStruct(id=i, vector=v.tolist(), payload={**p, "embedder": self.embedder.model_id})
                  for i, v, p in zip(ids, vectors, payloads)]
        self.client.upsert(self.collection(name), points=points, wait=True)

    def _model_filter(self, *must: Any, must_not: Sequence[Any] = ()) -> Any:
        from qdrant_client import models

        return models.Filter(
            must=[models.FieldCondition(key="embedder", match=models.MatchValue(value=self.embedder.model_id)),
                  *must],
            must_not=list(must_not) or None)

    def write_runs(self, runs: Sequence[Any]) -> None:
        """Upsert run summaries and their failures; link failures and later successes."""
        if not runs:
            return
        with self._lock:
            self.ensure_collections()
            model = self.embedder.model_id
            run_payloads = [{
                "kind": "run", "run_id": r.run_id, "playbook": r.playbook, "domain": r.domain,
                "job_name": r.job_name, "status": r.status, "started_at": r.started_at,
                "finished_at": r.finished_at, "duration_ms": r.duration_ms, "steps": r.steps,
                "steps_ok": r.steps_ok, "failed_steps": [f.step for f in r.failures], "error": r.error,
                "text": r.text(),
            } for r in runs]
            self._upsert("runs", [point_id(model, "run", r.run_id) for r in runs], run_payloads)
            failures = [f for r in runs for f in r.failures]
            payloads = []
            for f in failures:
                payload = {"kind": "failure", "run_id": f.run_id, "playbook": f.playbook, "domain": f.domain,
                           "step": f.step, "step_key": f.step_key, "tool": f.tool, "attempt": f.attempt,
                           "error": f.error, "timestamp": f.timestamp, "text": _clip(f.text())}
                payload.update(self._resolution_for(f))
                payloads.append(payload)
            self._upsert("failures", [point_id(model, "failure", f.run_id, f.step_key, f.attempt) for f in failures],
                         payloads)
            for run in sorted(runs, key=lambda r: r.finished_at):
                self._resolve_earlier(run)

    def _resolution_for(self, failure: Any) -> dict[str, Any]:
        """The first exported later run of the same playbook where the failed step succeeded."""
        from qdrant_client import models

        if not failure.step:
            return {}
        flt = self._model_filter(
            models.FieldCondition(key="playbook", match=models.MatchValue(value=failure.playbook)),
            models.FieldCondition(key="steps_ok", match=models.MatchAny(any=[failure.step])),
            models.FieldCondition(key="finished_at", range=models.Range(gt=failure.timestamp)))
        found, best = None, None
        offset = None
        while True:
            points, offset = self.client.scroll(self.collection("runs"), scroll_filter=flt, limit=256,
                                                offset=offset, with_payload=["run_id", "finished_at"])
            for p in points:
                if best is None or p.payload["finished_at"] < best:
                    best, found = p.payload["finished_at"], p.payload["run_id"]
            if offset is None:
                break
        return {"resolved_by_run": found, "resolved_at": best} if found else {}

    def _resolve_earlier(self, run: Any) -> None:
        """Mark earlier failures of the steps that succeeded in ``run`` as resolved by it."""
        from qdrant_client import models

        ok = set(run.steps_ok)
        if not ok:
            return
        flt = models.Filter(
            must=[
                models.FieldCondition(key="embedder", match=models.MatchValue(value=self.embedder.model_id)),
                models.FieldCondition(key="playbook", match=models.MatchValue(value=run.playbook)),
                models.FieldCondition(key="timestamp", range=models.Range(lt=run.finished_at)),
            ],
            should=[
                models.IsEmptyCondition(is_empty=models.PayloadField(key="resolved_by_run")),
                models.FieldCondition(key="resolved_at", range=models.Range(gt=run.finished_at)),
            ],
            must_not=[models.FieldCondition(key="run_id", match=models.MatchValue(value=run.run_id))],
        )
        ids: list[Any] = []
        offset = None
        while True:
            points, offset = self.client.scroll(self.collection("failures"), scroll_filter=flt, limit=256,
                                                offset=offset, with_payload=["step"])
            ids.extend(p.id for p in points if (p.payload or {}).get("step") in ok)
            if offset is None:
                break
        if ids:
            self.client.set_payload(self.collection("failures"),
                                    payload={"resolved_by_run": run.run_id, "resolved_at": run.finished_at},
                                    points=ids, wait=True)

    def write(self, batch: Any) -> None:
        """Write an :class:`~noetl_dagster.export.exporter.ExportBatch` (its finished runs)."""
        self.write_runs(batch.runs)

    def index_playbooks(self, playbooks: Iterable[Any]) -> int:
        """Upsert playbook and step points; drop steps that left a playbook. Returns points written."""
        from qdrant_client import models

        with self._lock:
            self.ensure_collections()
            model = self.embedder.model_id
            total = 0
            for playbook in playbooks:
                docs = playbook_documents(playbook)
                fingerprint = hashlib.sha1(repr([d["text"] for d in docs]).encode()).hexdigest()
                for d in docs:
                    d["fingerprint"] = fingerprint
                path = docs[0]["playbook"]
                self._upsert("playbooks", [point_id(model, "playbook", path, d["step"]) for d in docs], docs)
                stale = self._model_filter(
                    models.FieldCondition(key="playbook", match=models.MatchValue(value=path)),
                    must_not=[models.FieldCondition(key="fingerprint", match=models.MatchValue(value=fingerprint))])
                self.client.delete(self.collection("playbooks"), points_selector=models.FilterSelector(filter=stale))
                total += len(docs)
            return total

    # -- reads ---------------------------------------------------------------------------
    def search(self, collection: str, text: str, limit: int = 5, *, exclude_run: str | None = None,
               where: Mapping[str, Any] | None = None, min_score: float | None = None,
               before: float | None = None) -> list[Hit]:
        """Points of ``collection`` nearest to ``text`` (same embedder only), best first.

        ``before``: only failures earlier than this time (``timestamp``) / runs finished before it.
        """
        from qdrant_client import models

        with self._lock:
            self.ensure_collections()
            must = [models.FieldCondition(key=k, match=models.MatchValue(value=v)) for k, v in (where or {}).items()]
            if before is not None:
                key = "finished_at" if collection == "runs" else "timestamp"
                if collection != "playbooks":
                    must.append(models.FieldCondition(key=key, range=models.Range(lt=before)))
            must_not = ([models.FieldCondition(key="run_id", match=models.MatchValue(value=exclude_run))]
                        if exclude_run else [])
            vector = self.embedder.embed([text])[0].tolist()
            result = self.client.query_points(self.collection(collection), query=vector,
                                              query_filter=self._model_filter(*must, must_not=must_not),
                                              limit=limit, with_payload=True, score_threshold=min_score)
            return [Hit(float(p.score), dict(p.payload or {}), collection) for p in result.points]

    def count(self, collection: str) -> int:
        with self._lock:
            self.ensure_collections()
            return int(self.client.count(self.collection(collection), count_filter=self._model_filter(),
                                         exact=True).count)


def _vector_size(info: Any) -> int | None:
    vectors = getattr(getattr(getattr(info, "config", None), "params", None), "vectors", None)
    if vectors is None:
        return None
    if hasattr(vectors, "size"):
        return int(vectors.size)
    if isinstance(vectors, Mapping) and vectors:
        first = next(iter(vectors.values()))
        return int(getattr(first, "size", 0)) or None
    return None


class QdrantResource(dg.ConfigurableResource):
    """Where run summaries, failures and playbooks go: Qdrant local mode by default, or a server.

    Unset fields read ``NOETL_QDRANT_URL`` / ``NOETL_QDRANT_API_KEY`` / ``NOETL_QDRANT_PATH``;
    without them: local mode under ``$DAGSTER_HOME/noetl_qdrant``. ``path=":memory:"`` for tests.

    Example::

        QdrantResource()                                                   # local mode
        QdrantResource(url="https://qdrant.internal:6333", api_key=dg.EnvVar("QDRANT_API_KEY"))
    """

    url: str | None = Field(default=None, description="server URL (production)")
    api_key: str | None = Field(default=None, description="give as dagster.EnvVar")
    path: str | None = Field(default=None, description="local-mode folder, or ':memory:'")
    prefix: str = Field(default="noetl_", description="collection name prefix")

    def _where(self) -> dict[str, Any]:
        url = self.url or os.environ.get(ENV_URL)
        if url:
            api_key = self.api_key or os.environ.get(ENV_API_KEY)
            register_secret(api_key)  # masked in any error or log that quotes it
            register_connection_secret(url)
            return {"url": url, "api_key": api_key}
        return {"path": self.path or default_path()}

    def client(self) -> Any:
        """The client, kept open for the life of the process (see :meth:`session` for sensors)."""
        return get_client(**self._where())

    def sink(self, embedder: Any) -> QdrantSink:
        sink = QdrantSink(self.client(), embedder, self.prefix)
        sink.destination = self.destination()
        return sink

    def destination(self) -> str:
        """Where points go, without credentials: ``qdrant:<url or path>/<prefix>`` (export cursors belong to it)."""
        from noetl_dagster.export.destination import without_credentials

        where = self._where()
        return f"qdrant:{without_credentials(str(where.get('url') or where.get('path')))}/{self.prefix}"

    @contextmanager
    def session(self, embedder: Any) -> Iterator[QdrantSink]:
        """A sink for one ``with`` block; local mode releases its folder lock afterwards.

        Example (what the export sensors do each tick)::

            with QdrantResource().session(EmbedderResource().get()) as sink:
                sink.search("failures", "connection refused")
        """
        with client_session(**self._where()) as client:
            sink = QdrantSink(client, embedder, self.prefix)
            sink.destination = self.destination()
            yield sink


__all__ = ["COLLECTIONS", "Hit", "QdrantResource", "QdrantSink", "client_session", "get_client", "playbook_documents",
           "point_id"]
