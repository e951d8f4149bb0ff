"""The ingest database (SQLite under the data dir): knowledge bases, documents, chunks (text,
metadata and keyword tokens) and the persistent job queue.

One file shared by the API's worker threads and any ``kbqa worker`` process; WAL mode and
``BEGIN IMMEDIATE`` make claiming a job atomic across processes.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ingest.errors import DocumentError
from ingest.models import Document, Job, KnowledgeBase

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kbs (
    name TEXT PRIMARY KEY,
    embedding_model TEXT NOT NULL,
    embedding_dim INTEGER NOT NULL,
    created_at REAL NOT NULL,
    version INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS documents (
    kb TEXT NOT NULL,
    doc_id TEXT NOT NULL,
    filename TEXT NOT NULL,
    size INTEGER NOT NULL,
    status TEXT NOT NULL,
    chunks INTEGER NOT NULL DEFAULT 0,
    uploaded_at REAL NOT NULL,
    error TEXT,
    path TEXT,
    PRIMARY KEY (kb, doc_id)
);
CREATE TABLE IF NOT EXISTS chunks (
    kb TEXT NOT NULL,
    chunk_id TEXT NOT NULL,
    doc_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    text TEXT NOT NULL,
    meta TEXT NOT NULL,
    tokens TEXT NOT NULL,
    PRIMARY KEY (kb, chunk_id)
);
CREATE INDEX IF NOT EXISTS chunks_doc ON chunks (kb, doc_id);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    kb TEXT NOT NULL,
    doc_id TEXT NOT NULL,
    filename TEXT NOT NULL,
    state TEXT NOT NULL,
    progress_done INTEGER NOT NULL DEFAULT 0,
    progress_total INTEGER NOT NULL DEFAULT 0,
    chunks INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    owner TEXT,
    heartbeat_at REAL
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, created_at);
CREATE INDEX IF NOT EXISTS jobs_kb ON jobs (kb, created_at);
"""


# One token per process: a restarted container has the same hostname and often the same pid
# (1), so host and pid alone would make the dead process's jobs look like ours.
_PROCESS_TOKEN = uuid.uuid4().hex[:12]


def process_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{_PROCESS_TOKEN}"


def _owner_alive(owner: str | None) -> bool | None:
    """True/False when this host can tell; None for another host's worker (the lease decides)."""
    if not owner:
        return False
    parts = owner.rsplit(":", 2)
    if len(parts) == 3 and parts[1].isdigit():
        host, pid, token = parts
    else:  # written before tokens existed: host:pid
        (host, _, pid), token = owner.rpartition(":"), ""
    if host != socket.gethostname():
        return None
    if token == _PROCESS_TOKEN:
        return True
    if pid == str(os.getpid()):
        return False  # our pid, another token: a previous process that had the same pid
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


class Catalog:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._local = threading.local()
        conn = self._conn()
        conn.executescript(_SCHEMA)
        columns = {row["name"] for row in conn.execute("PRAGMA table_info(jobs)")}
        if "heartbeat_at" not in columns:  # a data dir from before job leases
            conn.execute("ALTER TABLE jobs ADD COLUMN heartbeat_at REAL")

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
        return conn

    @contextmanager
    def connect(self) -> Iterator[sqlite3.Connection]:
        """A transaction (BEGIN IMMEDIATE ... COMMIT) on this thread's connection."""
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # knowledge bases -------------------------------------------------------------------
    def create_kb(self, name: str, model: str, dim: int) -> bool:
        with self.connect() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO kbs (name, embedding_model, embedding_dim, created_at) "
                "VALUES (?, ?, ?, ?)",
                (name, model, dim, time.time()),
            )
            return cur.rowcount == 1

    def get_kb(self, name: str) -> KnowledgeBase | None:
        row = (
            self._conn()
            .execute(
                "SELECT k.*, (SELECT COUNT(*) FROM documents d WHERE d.kb = k.name) AS ndocs, "
                "(SELECT COUNT(*) FROM chunks c WHERE c.kb = k.name) AS nchunks "
                "FROM kbs k WHERE k.name = ?",
                (name,),
            )
            .fetchone()
        )
        return _kb(row) if row else None

    def list_kbs(self) -> list[KnowledgeBase]:
        rows = (
            self._conn()
            .execute(
                "SELECT k.*, (SELECT COUNT(*) FROM documents d WHERE d.kb = k.name) AS ndocs, "
                "(SELECT COUNT(*) FROM chunks c WHERE c.kb = k.name) AS nchunks "
                "FROM kbs k ORDER BY k.name"
            )
            .fetchall()
        )
        return [_kb(r) for r in rows]

    def delete_kb(self, name: str) -> None:
        with self.connect() as db:
            # its jobs go with it: a knowledge base created later under the same name starts
            # with none (a worker still running one finds the job gone and drops its result)
            for table in ("chunks", "documents", "jobs"):
                db.execute(f"DELETE FROM {table} WHERE kb = ?", (name,))
            db.execute("DELETE FROM kbs WHERE name = ?", (name,))

    def kb_version(self, name: str) -> int:
        row = self._conn().execute("SELECT version FROM kbs WHERE name = ?", (name,)).fetchone()
        return int(row["version"]) if row else -1

    # documents -------------------------------------------------------------------------
    def add_document(self, doc: Document) -> None:
        with self.connect() as db:
            db.execute(
                "INSERT OR REPLACE INTO documents (kb, doc_id, filename, size, status, chunks, "
                "uploaded_at, error, path) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    doc.kb,
                    doc.doc_id,
                    doc.filename,
                    doc.size,
                    doc.status,
                    doc.chunks,
                    doc.uploaded_at,
                    doc.error,
                    doc.path,
                ),
            )

    def get_document(self, kb: str, doc_id: str) -> Document | None:
        row = (
            self._conn()
            .execute("SELECT * FROM documents WHERE kb = ? AND doc_id = ?", (kb, doc_id))
            .fetchone()
        )
        return _doc(row) if row else None

    def documents_named(self, kb: str, filename: str) -> list[Document]:
        rows = (
            self._conn()
            .execute("SELECT * FROM documents WHERE kb = ? AND filename = ?", (kb, filename))
            .fetchall()
        )
        return [_doc(r) for r in rows]

    def list_documents(self, kb: str) -> list[Document]:
        rows = (
            self._conn()
            .execute("SELECT * FROM documents WHERE kb = ? ORDER BY uploaded_at, filename", (kb,))
            .fetchall()
        )
        return [_doc(r) for r in rows]

    def set_document_status(
        self, kb: str, doc_id: str, status: str, chunks: int | None = None, error: str | None = None
    ) -> None:
        with self.connect() as db:
            db.execute(
                "UPDATE documents SET status = ?, chunks = COALESCE(?, chunks), error = ? "
                "WHERE kb = ? AND doc_id = ?",
                (status, chunks, error, kb, doc_id),
            )

    def delete_document(self, kb: str, doc_id: str) -> None:
        with self.connect() as db:
            db.execute("DELETE FROM chunks WHERE kb = ? AND doc_id = ?", (kb, doc_id))
            db.execute("DELETE FROM documents WHERE kb = ? AND doc_id = ?", (kb, doc_id))
            db.execute("UPDATE kbs SET version = version + 1 WHERE name = ?", (kb,))

    # chunks ----------------------------------------------------------------------------
    def commit_document(
        self,
        kb: str,
        doc_id: str,
        rows: list[tuple[str, int, str, dict, str]],
        replaces: list[str],
    ) -> None:
        """Make a document searchable and drop the versions it replaces, in one transaction:
        search never sees old and new chunks of one filename together."""
        with self.connect() as db:
            if (
                db.execute(
                    "SELECT 1 FROM documents WHERE kb = ? AND doc_id = ?", (kb, doc_id)
                ).fetchone()
                is None
            ):
                raise DocumentError(
                    f"document {doc_id[:12]} was deleted (or its knowledge base) while ingesting"
                )
            for old in [doc_id, *replaces]:
                db.execute("DELETE FROM chunks WHERE kb = ? AND doc_id = ?", (kb, old))
            for old in replaces:
                db.execute("DELETE FROM documents WHERE kb = ? AND doc_id = ?", (kb, old))
            db.executemany(
                "INSERT INTO chunks (kb, chunk_id, doc_id, idx, text, meta, tokens) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (kb, cid, doc_id, idx, text, json.dumps(meta, ensure_ascii=False), tokens)
                    for cid, idx, text, meta, tokens in rows
                ],
            )
            db.execute(
                "UPDATE documents SET status = 'ready', chunks = ?, error = NULL "
                "WHERE kb = ? AND doc_id = ?",
                (len(rows), kb, doc_id),
            )
            db.execute("UPDATE kbs SET version = version + 1 WHERE name = ?", (kb,))

    def chunks_of(self, kb: str, doc_id: str) -> list[tuple[str, str, dict]]:
        rows = (
            self._conn()
            .execute(
                "SELECT chunk_id, text, meta FROM chunks WHERE kb = ? AND doc_id = ? ORDER BY idx",
                (kb, doc_id),
            )
            .fetchall()
        )
        return [(r["chunk_id"], r["text"], json.loads(r["meta"])) for r in rows]

    def chunks_by_id(self, kb: str, ids: list[str]) -> dict[str, tuple[str, dict]]:
        out: dict[str, tuple[str, dict]] = {}
        conn = self._conn()
        for i in range(0, len(ids), 500):
            part = ids[i : i + 500]
            marks = ",".join("?" * len(part))
            for r in conn.execute(
                f"SELECT chunk_id, text, meta FROM chunks WHERE kb = ? AND chunk_id IN ({marks})",
                (kb, *part),
            ):
                out[r["chunk_id"]] = (r["text"], json.loads(r["meta"]))
        return out

    def all_tokens(self, kb: str) -> tuple[int, list[str], list[list[str]]]:
        """(version, chunk ids, token lists) of a KB, read in one transaction."""
        conn = self._conn()
        conn.execute("BEGIN")
        try:
            version = self.kb_version(kb)
            rows = conn.execute(
                "SELECT chunk_id, tokens FROM chunks WHERE kb = ? ORDER BY rowid", (kb,)
            ).fetchall()
        finally:
            conn.execute("COMMIT")
        return version, [r["chunk_id"] for r in rows], [r["tokens"].split(" ") for r in rows]

    # jobs ------------------------------------------------------------------------------
    def enqueue(self, kb: str, doc_id: str, filename: str) -> Job:
        job_id = "job-" + uuid.uuid4().hex[:20]
        with self.connect() as db:
            db.execute(
                "INSERT INTO jobs (id, kb, doc_id, filename, state, created_at) "
                "VALUES (?, ?, ?, ?, 'queued', ?)",
                (job_id, kb, doc_id, filename, time.time()),
            )
        job = self.get_job(job_id)
        assert job is not None
        return job

    def claim(self, job_id: str | None = None, owner: str | None = None) -> Job | None:
        """Take the oldest queued job (or the given one) and mark it running; None if none."""
        owner = owner or process_owner()
        with self.connect() as db:
            if job_id is None:
                row = db.execute(
                    "SELECT id FROM jobs WHERE state = 'queued' ORDER BY created_at LIMIT 1"
                ).fetchone()
            else:
                row = db.execute(
                    "SELECT id FROM jobs WHERE id = ? AND state = 'queued'", (job_id,)
                ).fetchone()
            if row is None:
                return None
            now = time.time()
            db.execute(
                "UPDATE jobs SET state = 'running', started_at = ?, heartbeat_at = ?, "
                "attempts = attempts + 1, owner = ?, error = NULL WHERE id = ?",
                (now, now, owner, row["id"]),
            )
        return self.get_job(row["id"])

    def requeue_orphans(self, lease_s: float | None = None) -> int:
        """Running jobs whose worker is gone go back to the queue: a dead process of this host
        (after a crash or a container restart), or, with ``lease_s``, any worker (another
        host's too) that has written no progress for that long."""
        stale_before = time.time() - lease_s if lease_s else None
        with self.connect() as db:
            rows = db.execute(
                "SELECT id, owner, heartbeat_at, started_at FROM jobs WHERE state = 'running'"
            ).fetchall()
            orphans = []
            for r in rows:
                ours = (r["owner"] or "").endswith(":" + _PROCESS_TOKEN)
                beat = r["heartbeat_at"] or r["started_at"] or 0.0
                stale = stale_before is not None and beat < stale_before and not ours
                if stale or _owner_alive(r["owner"]) is False:
                    orphans.append(r["id"])
            for job_id in orphans:
                db.execute("UPDATE jobs SET state = 'queued', owner = NULL WHERE id = ?", (job_id,))
        return len(orphans)

    def requeue(self, job_id: str) -> None:
        with self.connect() as db:
            db.execute(
                "UPDATE jobs SET state = 'queued', owner = NULL WHERE id = ? AND state = 'running'",
                (job_id,),
            )

    def progress(self, job_id: str, done: int, total: int) -> None:
        with self.connect() as db:
            db.execute(
                "UPDATE jobs SET progress_done = ?, progress_total = ?, heartbeat_at = ? "
                "WHERE id = ?",
                (done, total, time.time(), job_id),
            )

    def finish(self, job_id: str, chunks: int) -> None:
        with self.connect() as db:
            db.execute(
                "UPDATE jobs SET state = 'succeeded', chunks = ?, progress_done = ?, "
                "progress_total = ?, finished_at = ?, error = NULL WHERE id = ?",
                (chunks, chunks, chunks, time.time(), job_id),
            )

    def fail(self, job_id: str, error: str) -> None:
        with self.connect() as db:
            db.execute(
                "UPDATE jobs SET state = 'failed', error = ?, finished_at = ? WHERE id = ?",
                (error, time.time(), job_id),
            )

    def get_job(self, job_id: str) -> Job | None:
        row = self._conn().execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _job(row) if row else None

    def list_jobs(self, kb: str | None = None, limit: int = 100) -> list[Job]:
        if kb is None:
            rows = (
                self._conn()
                .execute("SELECT * FROM jobs ORDER BY created_at DESC LIMIT ?", (limit,))
                .fetchall()
            )
        else:
            rows = (
                self._conn()
                .execute(
                    "SELECT * FROM jobs WHERE kb = ? ORDER BY created_at DESC LIMIT ?",
                    (kb, limit),
                )
                .fetchall()
            )
        return [_job(r) for r in rows]

    def queued_count(self) -> int:
        row = self._conn().execute("SELECT COUNT(*) AS n FROM jobs WHERE state = 'queued'")
        return int(row.fetchone()["n"])


def _kb(row: Any) -> KnowledgeBase:
    return KnowledgeBase(
        name=row["name"],
        embedding_model=row["embedding_model"],
        embedding_dim=row["embedding_dim"],
        created_at=row["created_at"],
        documents=row["ndocs"],
        chunks=row["nchunks"],
    )


def _doc(row: Any) -> Document:
    return Document(
        kb=row["kb"],
        doc_id=row["doc_id"],
        filename=row["filename"],
        size=row["size"],
        sha256=row["doc_id"],
        status=row["status"],
        chunks=row["chunks"],
        uploaded_at=row["uploaded_at"],
        error=row["error"],
        path=row["path"],
    )


def _job(row: Any) -> Job:
    return Job(
        id=row["id"],
        kb=row["kb"],
        doc_id=row["doc_id"],
        filename=row["filename"],
        state=row["state"],
        progress_done=row["progress_done"],
        progress_total=row["progress_total"],
        chunks=row["chunks"],
        error=row["error"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        attempts=row["attempts"],
    )
