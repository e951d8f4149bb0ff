"""The ingest database: knowledge bases, documents, chunks (text, metadata and keyword tokens)
and the persistent job queue.

:class:`SqlCatalog` holds every query, written once for both databases; its two subclasses
bring the connections, the schema and the row lock:

- :class:`Catalog`: SQLite under the data dir (the embedded default). One file shared by the
  API's worker threads and any ``kbqa worker`` process of the same host; WAL mode and
  ``BEGIN IMMEDIATE`` make claiming a job atomic across processes.
- :class:`ingest.catalog_pg.PostgresCatalog` (``catalog.url``): API replicas and workers on
  many hosts share one catalog and one queue; jobs are claimed with
  ``SELECT ... FOR UPDATE SKIP LOCKED``.

The schema is versioned (table ``schema_version``): a database written by an older kbqa is
upgraded at start, one written by a newer kbqa is refused.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ingest.errors import DocumentError, NotFoundError
from ingest.models import Document, Job, KnowledgeBase

# version 2: a document's chunks read by position (a list answer's table section around its
# passage, not the whole document)
SCHEMA_V2 = ["CREATE INDEX IF NOT EXISTS chunks_doc_idx ON chunks (kb, doc_id, idx)"]


def schema_v1(real: str, big: str, seq: str) -> list[str]:
    """Version 1 of the schema in one database's types: ``real`` a float of 8 bytes, ``big``
    an integer of 8 bytes, ``seq`` a first column of ``chunks`` that numbers rows in insertion
    order ("" where the database has its own: SQLite's rowid). CREATE ... IF NOT EXISTS: on
    SQLite it also upgrades a data dir written before the schema had a version."""
    return [
        f"""CREATE TABLE IF NOT EXISTS kbs (
            name TEXT PRIMARY KEY,
            embedding_model TEXT NOT NULL,
            embedding_dim INTEGER NOT NULL,
            created_at {real} NOT NULL,
            version {big} NOT NULL DEFAULT 0
        )""",
        f"""CREATE TABLE IF NOT EXISTS documents (
            kb TEXT NOT NULL,
            doc_id TEXT NOT NULL,
            filename TEXT NOT NULL,
            size {big} NOT NULL,
            status TEXT NOT NULL,
            chunks INTEGER NOT NULL DEFAULT 0,
            uploaded_at {real} NOT NULL,
            error TEXT,
            path TEXT,
            PRIMARY KEY (kb, doc_id)
        )""",
        f"""CREATE TABLE IF NOT EXISTS chunks ({seq}
            kb TEXT NOT NULL,
            chunk_id TEXT NOT NULL,
            doc_id TEXT NOT NULL,
            idx INTEGER NOT NULL,
            text TEXT NOT NULL,
            meta TEXT NOT NULL,
            tokens TEXT NOT NULL,
            PRIMARY KEY (kb, chunk_id)
        )""",
        "CREATE INDEX IF NOT EXISTS chunks_doc ON chunks (kb, doc_id)",
        f"""CREATE TABLE IF NOT EXISTS jobs (
            id TEXT PRIMARY KEY,
            kb TEXT NOT NULL,
            doc_id TEXT NOT NULL,
            filename TEXT NOT NULL,
            state TEXT NOT NULL,
            progress_done INTEGER NOT NULL DEFAULT 0,
            progress_total INTEGER NOT NULL DEFAULT 0,
            chunks INTEGER NOT NULL DEFAULT 0,
            error TEXT,
            created_at {real} NOT NULL,
            started_at {real},
            finished_at {real},
            attempts INTEGER NOT NULL DEFAULT 0,
            owner TEXT,
            heartbeat_at {real}
        )""",
        "CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, created_at)",
        "CREATE INDEX IF NOT EXISTS jobs_kb ON jobs (kb, created_at)",
    ]


class CatalogSchemaError(RuntimeError):
    """The database's schema is not one this kbqa can use (written by a newer kbqa)."""


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


class SqlCatalog:
    """Every catalog query, in SQL both databases run (placeholders ``?``; the PostgreSQL
    subclass rewrites them). Subclasses give the connections (``_read``, ``connect``,
    ``snapshot``), the schema (``MIGRATIONS``) and the lock a claim takes on a queued job."""

    # the clause that locks the rows a claim or a requeue selects; PostgreSQL: FOR UPDATE
    # SKIP LOCKED (workers on other hosts pass over a job being claimed); SQLite: nothing,
    # the whole database is locked by BEGIN IMMEDIATE
    LOCK_ROWS = ""
    # the column that orders chunks as they were inserted (the keyword index's row order)
    INSERT_ORDER = "rowid"
    # (version, statements): applied in order to a database below that version
    MIGRATIONS: Sequence[tuple[int, Sequence[str]]] = ()
    where = "the catalog"  # how error messages name the database

    # connections (subclasses) --------------------------------------------------------------
    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """Rows of one read, outside any transaction."""
        raise NotImplementedError

    @contextmanager
    def connect(self) -> Iterator[Any]:
        """A write transaction; the object has ``execute`` and ``executemany``."""
        raise NotImplementedError
        yield

    @contextmanager
    def snapshot(self) -> Iterator[Any]:
        """A read transaction: its reads see one state of the database."""
        raise NotImplementedError
        yield

    def close(self) -> None:
        raise NotImplementedError

    def _read_one(self, sql: str, params: Sequence[Any] = ()) -> Any:
        rows = self._read(sql, params)
        return rows[0] if rows else None

    # schema --------------------------------------------------------------------------------
    @property
    def latest_version(self) -> int:
        return max((version for version, _ in self.MIGRATIONS), default=0)

    def _open_schema(self, db: Any) -> None:
        """Create the version table if missing, then migrate what is older than this kbqa
        (inside ``db``'s transaction, which holds the lock against another process opening
        the same database at the same time)."""
        db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = db.execute("SELECT version FROM schema_version").fetchone()
        current = int(row["version"]) if row else 0
        if current != self.latest_version:
            self._migrate(db, current)

    def _migrate(self, db: Any, current: int) -> int:
        """Bring a database at schema ``current`` to the latest (inside ``db``'s transaction,
        which holds the lock against another process migrating at the same time)."""
        if current > self.latest_version:
            raise CatalogSchemaError(
                f"{self.where} has schema version {current}, newer than this kbqa knows "
                f"({self.latest_version}): it was written by a newer kbqa; upgrade kbqa (or "
                "point catalog.url at another database)"
            )
        for version, statements in self.MIGRATIONS:
            if version > current:
                for statement in statements:
                    db.execute(statement)
                self._after_migration(db, version)
                current = version
        db.execute("DELETE FROM schema_version")
        db.execute("INSERT INTO schema_version (version) VALUES (?)", (current,))
        return current

    def _after_migration(self, db: Any, version: int) -> None:
        """Fix-ups a migration needs beyond its statements (none by default)."""

    def schema_version(self) -> int:
        row = self._read_one("SELECT version FROM schema_version")
        return int(row["version"]) if row else 0

    # knowledge bases -------------------------------------------------------------------
    def create_kb(self, name: str, model: str, dim: int) -> bool:
        """A new knowledge base's version starts at the time in microseconds, not 0: what a
        process keeps per version (the BM25 index, the gate's term counts) must never take a
        KB deleted and created again under its name, changed as often, for the old one."""
        with self.connect() as db:
            cur = db.execute(
                "INSERT INTO kbs (name, embedding_model, embedding_dim, created_at, version) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (name, model, dim, time.time(), time.time_ns() // 1000),
            )
            return bool(cur.rowcount == 1)

    _KB_COLUMNS = (
        "SELECT k.*, (SELECT COUNT(*) FROM documents d WHERE d.kb = k.name) AS ndocs, "
        "(SELECT COUNT(*) FROM chunks c WHERE c.kb = k.name) AS nchunks FROM kbs k"
    )

    def get_kb(self, name: str, counts: bool = True) -> KnowledgeBase | None:
        """The knowledge base; ``counts=False``: without its document and chunk counts (0),
        one row read instead of two counts (every search checks its knowledge base)."""
        sql = (
            f"{self._KB_COLUMNS} WHERE k.name = ?"
            if counts
            else "SELECT k.*, 0 AS ndocs, 0 AS nchunks FROM kbs k WHERE k.name = ?"
        )
        row = self._read_one(sql, (name,))
        return _kb(row) if row else None

    def require_kb(self, name: str, counts: bool = True) -> KnowledgeBase:
        """The knowledge base, or NotFoundError (404) saying how to make it."""
        kb = self.get_kb(name, counts)
        if kb is None:
            raise NotFoundError(f"knowledge base {name!r} not found; create it first")
        return kb

    def list_kbs(self) -> list[KnowledgeBase]:
        return [_kb(r) for r in self._read(f"{self._KB_COLUMNS} ORDER BY k.name")]

    def delete_kb(self, name: str) -> None:
        with self.connect() as db:
            # its jobs go with it: a knowledge base created later under the same name starts
            # with none (a worker still running one finds the job gone and drops its result)
            for table in ("chunks", "documents", "jobs"):
                db.execute(f"DELETE FROM {table} WHERE kb = ?", (name,))
            db.execute("DELETE FROM kbs WHERE name = ?", (name,))

    def kb_version(self, name: str) -> int:
        row = self._read_one("SELECT version FROM kbs WHERE name = ?", (name,))
        return int(row["version"]) if row else -1

    # documents -------------------------------------------------------------------------
    def add_document(self, doc: Document) -> None:
        with self.connect() as db:
            db.execute(
                "INSERT INTO documents (kb, doc_id, filename, size, status, chunks, "
                "uploaded_at, error, path) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (kb, doc_id) DO UPDATE SET filename = excluded.filename, "
                "size = excluded.size, status = excluded.status, chunks = excluded.chunks, "
                "uploaded_at = excluded.uploaded_at, error = excluded.error, "
                "path = excluded.path",
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
        row = self._read_one("SELECT * FROM documents WHERE kb = ? AND doc_id = ?", (kb, doc_id))
        return _doc(row) if row else None

    def documents_named(self, kb: str, filename: str) -> list[Document]:
        rows = self._read("SELECT * FROM documents WHERE kb = ? AND filename = ?", (kb, filename))
        return [_doc(r) for r in rows]

    def list_documents(self, kb: str) -> list[Document]:
        rows = self._read(
            "SELECT * FROM documents WHERE kb = ? ORDER BY uploaded_at, filename", (kb,)
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

    def chunks_of(
        self, kb: str, doc_id: str, first: int | None = None, last: int | None = None
    ) -> list[tuple[str, str, dict]]:
        """(chunk id, text, metadata) of a document's chunks in order; only those at positions
        ``first`` to ``last`` (both included) when given."""
        sql = "SELECT chunk_id, text, meta FROM chunks WHERE kb = ? AND doc_id = ?"
        params: list[object] = [kb, doc_id]
        if first is not None:
            sql += " AND idx >= ?"
            params.append(first)
        if last is not None:
            sql += " AND idx <= ?"
            params.append(last)
        rows = self._read(sql + " ORDER BY idx", tuple(params))
        return [(r["chunk_id"], r["text"], json.loads(r["meta"])) for r in rows]

    def chunks_by_id(self, kb: str, ids: list[str]) -> dict[str, tuple[str, dict]]:
        out: dict[str, tuple[str, dict]] = {}
        for i in range(0, len(ids), 500):
            part = ids[i : i + 500]
            marks = ",".join("?" * len(part))
            for r in self._read(
                f"SELECT chunk_id, text, meta FROM chunks WHERE kb = ? AND chunk_id IN ({marks})",
                (kb, *part),
            ):
                out[r["chunk_id"]] = (r["text"], json.loads(r["meta"]))
        return out

    def all_tokens(self, kb: str) -> tuple[int, list[str], list[list[str]]]:
        """(version, chunk ids, token lists) of a KB, read in one transaction."""
        with self.snapshot() as db:
            row = db.execute("SELECT version FROM kbs WHERE name = ?", (kb,)).fetchone()
            version = int(row["version"]) if row else -1
            rows = db.execute(
                f"SELECT chunk_id, tokens FROM chunks WHERE kb = ? ORDER BY {self.INSERT_ORDER}",
                (kb,),
            ).fetchall()
        return version, [r["chunk_id"] for r in rows], [r["tokens"].split(" ") for r in rows]

    def all_texts(self, kb: str, limit: int | None = None) -> tuple[int, list[str]]:
        """(version, chunk texts) of a KB, read in one transaction; with ``limit``, at most
        that many, the same ones every time (by chunk id: whole documents, in the order of
        their content hashes, a sample that favours none)."""
        with self.snapshot() as db:
            row = db.execute("SELECT version FROM kbs WHERE name = ?", (kb,)).fetchone()
            version = int(row["version"]) if row else -1
            sql = "SELECT text FROM chunks WHERE kb = ? ORDER BY chunk_id"
            params: tuple[object, ...] = (kb,)
            if limit is not None:
                sql += " LIMIT ?"
                params = (kb, limit)
            rows = db.execute(sql, params).fetchall()
        return version, [r["text"] for r in rows]

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
        """Take the oldest queued job (or the given one) and mark it running; None if none.
        Each job is claimed once, however many workers ask at the same time."""
        owner = owner or process_owner()
        with self.connect() as db:
            if job_id is None:
                row = db.execute(
                    "SELECT id FROM jobs WHERE state = 'queued' ORDER BY created_at LIMIT 1"
                    + self.LOCK_ROWS
                ).fetchone()
            else:
                row = db.execute(
                    "SELECT id FROM jobs WHERE id = ? AND state = 'queued'" + self.LOCK_ROWS,
                    (job_id,),
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
                + self.LOCK_ROWS
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
        row = self._read_one("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return _job(row) if row else None

    def list_jobs(self, kb: str | None = None, limit: int = 100) -> list[Job]:
        if kb is None:
            rows = self._read("SELECT * FROM jobs ORDER BY created_at DESC LIMIT ?", (limit,))
        else:
            rows = self._read(
                "SELECT * FROM jobs WHERE kb = ? ORDER BY created_at DESC LIMIT ?", (kb, limit)
            )
        return [_job(r) for r in rows]

    def queued_count(self) -> int:
        row = self._read_one("SELECT COUNT(*) AS n FROM jobs WHERE state = 'queued'")
        return int(row["n"])


class Catalog(SqlCatalog):
    """The catalog in one SQLite file (the embedded default)."""

    MIGRATIONS = ((1, schema_v1("REAL", "INTEGER", "")), (2, SCHEMA_V2))

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.where = f"the catalog {path}"
        self._local = threading.local()
        with self.connect() as db:
            self._open_schema(db)

    def _after_migration(self, db: Any, version: int) -> None:
        if version == 1:  # a data dir from before job leases: CREATE IF NOT EXISTS kept jobs
            columns = {row["name"] for row in db.execute("PRAGMA table_info(jobs)")}
            if "heartbeat_at" not in columns:
                db.execute("ALTER TABLE jobs ADD COLUMN heartbeat_at REAL")

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
        return conn

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        return self._conn().execute(sql, params).fetchall()

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

    @contextmanager
    def snapshot(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        conn.execute("BEGIN")
        try:
            yield conn
        finally:
            conn.execute("COMMIT")

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


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
