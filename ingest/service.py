"""The knowledge-base service: knowledge bases, uploads, documents and jobs as the API and
the CLI see them, over the stores (vectors, keyword tokens, catalog).

It holds the two other parts of the ingest layer, built on the same stores: ``pipeline``
(:class:`ingest.pipeline.IngestPipeline`, queued jobs to searchable chunks, run by the
workers) and ``embedder`` (:class:`ingest.embedder.Embedder`, bounded embedding requests).
The retrieval layer above (``app.rag.search``) reads what they stored. Collaborators come in
through the constructor; ``from_settings`` wires the defaults.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from pathlib import Path

from app.settings import Settings
from app.settings.ingest import EmbeddingsSettings, IngestSettings, RetrievalSettings
from ingest.catalog import Catalog, SqlCatalog
from ingest.embedder import Embedder, check_built_with
from ingest.embeddings import NamedEmbeddings, build_embeddings
from ingest.errors import (
    ConflictError,
    DocumentError,
    FileTooLargeError,
    InvalidNameError,
    NotFoundError,
    UnsupportedTypeError,
)
from ingest.files import file_store
from ingest.keyword import KeywordIndex, Tokenizer
from ingest.loaders import ACCEPTED_TYPES, check_filename, file_type
from ingest.models import Document, Job, KnowledgeBase, SearchHit, UploadResult
from ingest.pipeline import IngestPipeline
from ingest.store import VectorStore

logger = logging.getLogger(__name__)

_KB_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def open_catalog(settings: Settings) -> SqlCatalog:
    """The catalog of ``catalog.url`` (PostgreSQL), or SQLite under the data dir."""
    cat = settings.catalog
    if cat.url is not None:
        from ingest.catalog_pg import PostgresCatalog

        return PostgresCatalog(cat.url.get_secret_value(), cat.pool_size, cat.connect_timeout_s)
    return Catalog(settings.data_dir / "ingest" / "ingest.sqlite")


def check_kb_name(name: str) -> str:
    if not _KB_NAME.match(name or ""):
        raise InvalidNameError(
            f"invalid knowledge base name {name!r}: use 1-64 letters, digits, `-` or `_`"
        )
    return name


class KnowledgeBaseService:
    def __init__(
        self,
        catalog: SqlCatalog,
        store: VectorStore,
        keyword: KeywordIndex,
        embeddings: NamedEmbeddings,
        files_dir: Path,
        ingest: IngestSettings,
        retrieval: RetrievalSettings,
        limits: EmbeddingsSettings | None = None,
    ) -> None:
        self.catalog = catalog
        self.store = store
        self.keyword = keyword
        self.embeddings = embeddings
        self.files_dir = files_dir
        self.files = file_store(catalog, files_dir)
        self.ingest_settings = ingest
        self.retrieval = retrieval
        self.pipeline = IngestPipeline(catalog, store, keyword, embeddings, self.files, ingest)
        self.embedder = Embedder(embeddings, limits or EmbeddingsSettings.model_validate({}))

    @classmethod
    def from_settings(
        cls, settings: Settings, embeddings: NamedEmbeddings | None = None
    ) -> KnowledgeBaseService:
        root = settings.data_dir / "ingest"
        embeddings = embeddings or build_embeddings(settings.embeddings)
        vs = settings.vectorstore
        if vs.chroma_host:
            store = VectorStore.http(
                vs.chroma_host,
                vs.chroma_port,
                embeddings,
                ssl=vs.chroma_ssl,
                token=vs.chroma_token.get_secret_value() if vs.chroma_token else None,
                prefix=vs.collection_prefix,
                add_batch_size=vs.add_batch_size,
            )
        else:
            store = VectorStore.persistent(
                vs.path or settings.data_dir / "chroma",
                embeddings,
                prefix=vs.collection_prefix,
                add_batch_size=vs.add_batch_size,
            )
        catalog = open_catalog(settings)
        logger.info(
            "event=kb_service_ready embedder=%s dim=%d store=%s catalog=%s",
            embeddings.name,
            embeddings.dim,
            "http" if vs.chroma_host else "persistent",
            "postgresql" if settings.catalog.url else "sqlite",
        )
        return cls(
            catalog,
            store,
            KeywordIndex(catalog, Tokenizer()),
            embeddings,
            root / "files",
            settings.ingest,
            settings.retrieval,
            settings.embeddings,
        )

    # knowledge bases -------------------------------------------------------------------
    def create_kb(self, name: str, exist_ok: bool = False) -> KnowledgeBase:
        check_kb_name(name)
        created = self.catalog.create_kb(name, self.embeddings.name, self.embeddings.dim)
        if not created and not exist_ok:
            raise ConflictError(f"knowledge base {name!r} exists already")
        kb = self.get_kb(name)
        self.store.collection(name)
        return kb

    def get_kb(self, name: str, counts: bool = True) -> KnowledgeBase:
        """The knowledge base (NotFoundError when missing); ``counts=False`` when only its
        existence matters: no count of its documents and chunks."""
        return self.catalog.require_kb(name, counts)

    def open_kb(self, name: str) -> KnowledgeBase:
        """The KB (without its counts), checked to be built with this service's embedding
        model."""
        return check_built_with(self.get_kb(name, counts=False), self.embeddings)

    def list_kbs(self) -> list[KnowledgeBase]:
        return self.catalog.list_kbs()

    def delete_kb(self, name: str) -> None:
        self.get_kb(name, counts=False)
        self.catalog.delete_kb(name)
        self.store.drop(name)
        self.keyword.forget(name)
        self.files.delete_kb(name)
        logger.info("event=kb_deleted kb=%s", name)

    # uploads ---------------------------------------------------------------------------
    def check_upload(self, filename: str, size: int | None = None) -> str:
        """Validate name, type and size before reading a file; returns the clean filename."""
        clean = check_filename(filename)
        file_type(clean)
        if size is not None and size > self.ingest_settings.max_file_bytes:
            raise FileTooLargeError(
                f"{clean}: {size} bytes is over the limit of "
                f"{self.ingest_settings.max_file_bytes} bytes (ingest.max_file_bytes)"
            )
        return clean

    def upload(self, kb: str, filename: str, data: bytes) -> UploadResult:
        """Store one file and queue its job; the same bytes again are a duplicate."""
        self.open_kb(kb)
        clean = self.check_upload(filename, len(data))
        if not data:  # nothing to ingest, and every empty file has the same (content) id
            raise DocumentError(f"{clean}: the file is empty (0 bytes); nothing to ingest")
        doc_id = hashlib.sha256(data).hexdigest()
        existing = self.catalog.get_document(kb, doc_id)
        if existing is not None and existing.status != "failed":
            return UploadResult(clean, "duplicate", doc_id=doc_id, duplicate_of=existing.filename)
        ref = self.files.put(kb, doc_id, clean, data)
        self.catalog.add_document(
            Document(
                kb=kb,
                doc_id=doc_id,
                filename=clean,
                size=len(data),
                sha256=doc_id,
                status="queued",
                chunks=0,
                uploaded_at=time.time(),
                path=ref,
            )
        )
        job = self.catalog.enqueue(kb, doc_id, clean)
        self.pipeline.notify()
        logger.info("event=upload kb=%s file=%s doc=%s job=%s", kb, clean, doc_id[:12], job.id)
        return UploadResult(clean, "queued", doc_id=doc_id, job=job)

    # documents -------------------------------------------------------------------------
    def list_documents(self, kb: str) -> list[Document]:
        self.get_kb(kb, counts=False)
        return self.catalog.list_documents(kb)

    def get_document(self, kb: str, doc_id: str) -> Document:
        self.get_kb(kb, counts=False)
        doc = self.catalog.get_document(kb, doc_id)
        if doc is None:
            raise NotFoundError(f"document {doc_id!r} not found in knowledge base {kb!r}")
        return doc

    def delete_document(self, kb: str, doc_id: str) -> None:
        doc = self.get_document(kb, doc_id)
        self.catalog.delete_document(kb, doc_id)
        self.store.delete_doc(kb, doc_id)
        self.keyword.warm(kb)
        if doc.path:
            self.files.delete(doc.path)

    def list_chunks(self, kb: str, doc_id: str) -> list[SearchHit]:
        self.get_document(kb, doc_id)
        return [SearchHit(t, 1.0, m) for _, t, m in self.catalog.chunks_of(kb, doc_id)]

    # jobs ------------------------------------------------------------------------------
    def get_job(self, job_id: str) -> Job:
        job = self.catalog.get_job(job_id)
        if job is None:
            raise NotFoundError(f"job {job_id!r} not found")
        return job

    def list_jobs(self, kb: str | None = None, limit: int = 100) -> list[Job]:
        return self.catalog.list_jobs(kb, limit)

    @property
    def accepted_types(self) -> tuple[str, ...]:
        return ACCEPTED_TYPES

    def close(self) -> None:
        self.pipeline.close()
        self.catalog.close()


__all__ = ["KnowledgeBaseService", "UnsupportedTypeError", "check_kb_name"]
