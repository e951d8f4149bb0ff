"""Embedding on request, bounded: the work of ``POST /v1/embeddings`` and of every search's
query, and the check that a knowledge base is read with the model it was built with.

Every request's size is checked before any work (``embeddings.max_inputs``,
``embeddings.max_input_chars``); the work runs one embedding batch at a time (other requests'
queries go in between) and stops as soon as the client is gone.
"""

from __future__ import annotations

from collections.abc import Callable

from app.settings.ingest import EmbeddingsSettings
from ingest.embeddings import NamedEmbeddings
from ingest.errors import EmbeddingMismatchError, InputTooLargeError, RequestCancelledError
from ingest.models import KnowledgeBase


def check_built_with(kb: KnowledgeBase, embeddings: NamedEmbeddings) -> KnowledgeBase:
    """``kb``, or EmbeddingMismatchError when it was built with another embedding model."""
    if kb.embedding_model != embeddings.name or kb.embedding_dim != embeddings.dim:
        raise EmbeddingMismatchError(
            f"knowledge base {kb.name!r} was built with embedding model {kb.embedding_model} "
            f"(dim {kb.embedding_dim}) but this service uses {embeddings.name} "
            f"(dim {embeddings.dim}); configure the same model (embeddings.backend / "
            "embeddings.model) or re-ingest into a new knowledge base"
        )
    return kb


class Embedder:
    """The embedding model behind the request limits."""

    def __init__(self, embeddings: NamedEmbeddings, limits: EmbeddingsSettings) -> None:
        self.embeddings = embeddings
        self.limits = limits  # max_inputs, max_input_chars

    def check_text(self, text: str, what: str) -> None:
        """A text to embed within ``embeddings.max_input_chars``, or InputTooLargeError."""
        limit = self.limits.max_input_chars
        if len(text) > limit:
            raise InputTooLargeError(
                f"the {what} has {len(text)} characters, over the limit of {limit} "
                "(embeddings.max_input_chars); shorten it"
            )

    def embed(
        self,
        texts: list[str],
        input_type: str = "query",
        cancelled: Callable[[], bool] | None = None,
    ) -> list[list[float]]:
        """Vectors of ``texts``. The limits are checked before any work; the work runs one
        embedding batch at a time (other requests' queries go in between), and stops with
        RequestCancelledError as soon as ``cancelled()`` says the client went away."""
        if len(texts) > self.limits.max_inputs:
            raise InputTooLargeError(
                f"{len(texts)} inputs in one request, over the limit of "
                f"{self.limits.max_inputs} (embeddings.max_inputs); send them in several requests"
            )
        for index, text in enumerate(texts):
            self.check_text(text, f"input {index}" if len(texts) > 1 else "input")
        step = max(1, self.embeddings.batch_size) if input_type == "passage" else 1
        vectors: list[list[float]] = []
        for start in range(0, len(texts), step):
            if cancelled is not None and cancelled():
                raise RequestCancelledError(
                    f"embedding stopped after {start} of {len(texts)} inputs: the client left"
                )
            if input_type == "passage":
                vectors.extend(self.embeddings.embed_documents(texts[start : start + step]))
            else:
                vectors.append(self.embeddings.embed_query(texts[start]))
        return vectors
