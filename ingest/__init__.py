"""Ingestion and retrieval primitives: loaders, splitter, embeddings, Chroma store, keyword index,
job queue, worker and the knowledge-base service. Knows nothing of FastAPI or HTTP."""

from ingest.errors import IngestError
from ingest.models import SearchHit

__all__ = ["IngestError", "SearchHit"]
