"""The catalog on PostgreSQL (``catalog.url``): API replicas and ingest workers on many hosts
share knowledge bases, documents, chunk tokens, uploaded files and the job queue.

- Jobs are claimed with ``SELECT ... FOR UPDATE SKIP LOCKED``: every worker of every host asks
  at once, each job is run once; leases and heartbeats are those of the SQLite queue (a dead
  worker's job goes back to the queue after ``ingest.job_lease_s``).
- Uploaded files are stored in the database (table ``files``), so a worker on another host
  reads what an API replica received.
- Each knowledge base's version (bumped by every commit and delete) is what a replica's keyword
  index compares before a search: a change made through one replica is seen by the others at
  their next search.
- The schema is versioned (``schema_version``) and migrated at start under an advisory lock,
  so replicas starting together migrate once.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from ingest.catalog import SCHEMA_V2, SqlCatalog, schema_v1
from ingest.errors import CatalogUnavailableError

# version 1: the shared tables, and the uploaded files (only the PostgreSQL catalog stores them)
_PG_V1 = [
    *schema_v1("DOUBLE PRECISION", "BIGINT", "\n            seq BIGSERIAL,"),
    """CREATE TABLE IF NOT EXISTS files (
        kb TEXT NOT NULL,
        doc_id TEXT NOT NULL,
        data BYTEA NOT NULL,
        PRIMARY KEY (kb, doc_id)
    )""",
]
# any constant: the advisory lock that serialises migrations of one database
_MIGRATION_LOCK = 0x6B627161


def _pg(sql: str) -> str:
    """The catalog's ``?`` placeholders as psycopg's ``%s`` (no catalog query has a ``%``)."""
    return sql.replace("?", "%s")


class _Tx:
    """A connection inside a transaction, with the ``execute``/``executemany`` the catalog's
    queries call (``?`` placeholders)."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self.conn.execute(_pg(sql), params)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        with self.conn.cursor() as cur:
            cur.executemany(_pg(sql), rows)


class PostgresCatalog(SqlCatalog):
    MIGRATIONS = ((1, _PG_V1), (2, SCHEMA_V2))
    LOCK_ROWS = " FOR UPDATE SKIP LOCKED"
    INSERT_ORDER = "seq"

    def __init__(self, url: str, pool_size: int = 8, connect_timeout_s: float = 10.0) -> None:
        from psycopg.rows import dict_row
        from psycopg_pool import ConnectionPool

        self.where = "the PostgreSQL catalog (catalog.url)"
        self.pool = ConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            kwargs={"autocommit": True, "row_factory": dict_row},
            timeout=connect_timeout_s,
            open=False,
            name="kbqa-catalog",
        )
        try:
            self.pool.open(wait=True, timeout=connect_timeout_s)
        except Exception as exc:
            self.pool.close()
            raise CatalogUnavailableError(
                f"cannot connect to the PostgreSQL catalog (catalog.url): {exc}"
            ) from exc
        with self.connect() as db:
            db.execute("SELECT pg_advisory_xact_lock(?)", (_MIGRATION_LOCK,))
            self._open_schema(db)

    @contextmanager
    def _reachable(self) -> Iterator[None]:
        """PostgreSQL down or unreachable (no connection within ``catalog.connect_timeout_s``,
        or the connection lost): CatalogUnavailableError; the transaction was not committed."""
        from psycopg import OperationalError
        from psycopg_pool import PoolTimeout

        try:
            yield
        except (OperationalError, PoolTimeout) as exc:
            raise CatalogUnavailableError(
                f"the PostgreSQL catalog (catalog.url) is unreachable: {exc}; nothing was "
                "changed, retry later"
            ) from exc

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._reachable(), self.pool.connection() as conn:
            return list(conn.execute(_pg(sql), params).fetchall())

    @contextmanager
    def connect(self) -> Iterator[_Tx]:
        with self._reachable(), self.pool.connection() as conn, conn.transaction():
            yield _Tx(conn)

    @contextmanager
    def snapshot(self) -> Iterator[_Tx]:
        with self._reachable(), self.pool.connection() as conn, conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            yield _Tx(conn)

    def close(self) -> None:
        self.pool.close()

    # uploaded files ------------------------------------------------------------------------
    def put_file(self, kb: str, doc_id: str, data: bytes) -> None:
        with self.connect() as db:
            db.execute(
                "INSERT INTO files (kb, doc_id, data) VALUES (?, ?, ?) "
                "ON CONFLICT (kb, doc_id) DO UPDATE SET data = excluded.data",
                (kb, doc_id, data),
            )

    def read_file(self, kb: str, doc_id: str) -> bytes | None:
        row = self._read_one("SELECT data FROM files WHERE kb = ? AND doc_id = ?", (kb, doc_id))
        return bytes(row["data"]) if row else None

    def delete_file(self, kb: str, doc_id: str) -> None:
        with self.connect() as db:
            db.execute("DELETE FROM files WHERE kb = ? AND doc_id = ?", (kb, doc_id))

    def delete_files(self, kb: str) -> None:
        with self.connect() as db:
            db.execute("DELETE FROM files WHERE kb = ?", (kb,))
