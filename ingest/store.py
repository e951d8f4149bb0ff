"""The Chroma vector store: one collection per knowledge base, cosine space.

Embedded (``PersistentClient`` under the data dir) or a Chroma server (``HttpClient``). The
same ``VectorStore`` methods run against both (see tests/ingest/test_store.py).
"""

from __future__ import annotations

import hashlib
import logging
import threading
from pathlib import Path
from typing import Any

from ingest.embeddings import ChromaEmbeddingFunction, NamedEmbeddings

logger = logging.getLogger(__name__)


def collection_name(prefix: str, kb: str) -> str:
    """Chroma names are 3-63 chars of [a-zA-Z0-9._-]: hash the KB name."""
    return f"{prefix}-{hashlib.sha256(kb.encode()).hexdigest()[:24]}"


class VectorStore:
    def __init__(
        self,
        client: Any,
        embeddings: NamedEmbeddings,
        prefix: str = "kbqa",
        add_batch_size: int = 1000,
    ) -> None:
        self.client = client
        self.embeddings = embeddings
        self.prefix = prefix
        max_batch = None
        try:
            max_batch = int(client.get_max_batch_size())
        except Exception:  # older servers do not say
            max_batch = None
        self.add_batch_size = min(add_batch_size, max_batch) if max_batch else add_batch_size
        self._function = ChromaEmbeddingFunction(embeddings)
        self._collections: dict[str, Any] = {}
        self._lock = threading.Lock()

    @classmethod
    def persistent(cls, path: Path, embeddings: NamedEmbeddings, **kwargs: Any) -> VectorStore:
        import chromadb
        from chromadb.config import Settings as ChromaSettings

        path.mkdir(parents=True, exist_ok=True)
        client = chromadb.PersistentClient(
            path=str(path), settings=ChromaSettings(anonymized_telemetry=False)
        )
        return cls(client, embeddings, **kwargs)

    @classmethod
    def http(
        cls,
        host: str,
        port: int,
        embeddings: NamedEmbeddings,
        ssl: bool = False,
        token: str | None = None,
        **kwargs: Any,
    ) -> VectorStore:
        import chromadb
        from chromadb.config import Settings as ChromaSettings

        headers = {"Authorization": f"Bearer {token}"} if token else None
        client = chromadb.HttpClient(
            host=host,
            port=port,
            ssl=ssl,
            headers=headers,
            settings=ChromaSettings(anonymized_telemetry=False),
        )
        return cls(client, embeddings, **kwargs)

    def collection(self, kb: str) -> Any:
        with self._lock:
            found = self._collections.get(kb)
            if found is None:
                found = self.client.get_or_create_collection(
                    collection_name(self.prefix, kb),
                    embedding_function=self._function,
                    metadata={
                        "hnsw:space": "cosine",
                        "kb": kb,
                        "embedding_model": self.embeddings.name,
                        "embedding_dim": self.embeddings.dim,
                    },
                )
                self._collections[kb] = found
            return found

    def upsert(
        self,
        kb: str,
        ids: list[str],
        texts: list[str],
        vectors: list[list[float]],
        metadatas: list[dict[str, Any]],
    ) -> None:
        collection = self.collection(kb)
        for i in range(0, len(ids), self.add_batch_size):
            end = i + self.add_batch_size
            collection.upsert(
                ids=ids[i:end],
                documents=texts[i:end],
                embeddings=vectors[i:end],
                metadatas=[_clean(m) for m in metadatas[i:end]],
            )

    def delete_doc(self, kb: str, doc_id: str) -> None:
        self.collection(kb).delete(where={"doc_id": doc_id})

    def delete_ids(self, kb: str, ids: list[str]) -> None:
        if ids:
            self.collection(kb).delete(ids=ids)

    def count(self, kb: str) -> int:
        return int(self.collection(kb).count())

    def ids_of_doc(self, kb: str, doc_id: str) -> list[str]:
        return list(self.collection(kb).get(where={"doc_id": doc_id}, include=[])["ids"])

    def query(self, kb: str, vector: list[float], k: int) -> list[tuple[str, str, dict, float]]:
        """(id, text, metadata, cosine similarity) best first."""
        collection = self.collection(kb)
        n = collection.count()
        if n == 0:
            return []
        result = collection.query(
            query_embeddings=[vector],
            n_results=min(k, n),
            include=["documents", "metadatas", "distances"],
        )
        ids = result["ids"][0]
        docs = (result.get("documents") or [[]])[0]
        metas = (result.get("metadatas") or [[]])[0]
        dists = (result.get("distances") or [[]])[0]
        return [
            (i, d or "", dict(m or {}), 1.0 - float(dist))
            for i, d, m, dist in zip(ids, docs, metas, dists, strict=True)
        ]

    def drop(self, kb: str) -> None:
        with self._lock:
            self._collections.pop(kb, None)
        try:
            self.client.delete_collection(collection_name(self.prefix, kb))
        except Exception as exc:  # absent already
            logger.info("event=drop_collection kb=%s note=%r", kb, exc)

    def heartbeat(self) -> int:
        return int(self.client.heartbeat())


def _clean(meta: dict[str, Any]) -> dict[str, Any]:
    """Chroma metadata values must be str/int/float/bool: drop None, join lists."""
    out: dict[str, Any] = {}
    for key, value in meta.items():
        if value is None:
            continue
        if isinstance(value, list):
            value = " > ".join(str(v) for v in value)
        out[key] = value
    return out
