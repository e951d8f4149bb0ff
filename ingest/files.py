"""Where uploaded files wait for their ingest job: a folder under the data dir (SQLite
catalog), or the PostgreSQL catalog's ``files`` table, which a worker on another host can
read. A document row's ``path`` is the file's reference in its store."""

from __future__ import annotations

import shutil
from pathlib import Path, PurePosixPath
from typing import Protocol

from ingest.catalog import SqlCatalog
from ingest.catalog_pg import PostgresCatalog

_DB = "db:"  # reference of a file in the database: db:<kb>/<doc_id>


class FileStore(Protocol):
    def put(self, kb: str, doc_id: str, filename: str, data: bytes) -> str:
        """Store the file; returns its reference."""

    def read(self, ref: str) -> bytes | None:
        """The file's bytes; None when it is gone."""

    def delete(self, ref: str) -> None: ...

    def delete_kb(self, kb: str) -> None: ...


class LocalFiles:
    """Files under ``root/<kb>/<doc_id><suffix>``; a reference is the file's path."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def put(self, kb: str, doc_id: str, filename: str, data: bytes) -> str:
        folder = self.root / kb
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{doc_id}{PurePosixPath(filename.lower()).suffix}"
        tmp = path.with_suffix(path.suffix + ".part")
        tmp.write_bytes(data)
        tmp.replace(path)
        return str(path)

    def read(self, ref: str) -> bytes | None:
        path = Path(ref)
        return path.read_bytes() if path.is_file() else None

    def delete(self, ref: str) -> None:
        Path(ref).unlink(missing_ok=True)

    def delete_kb(self, kb: str) -> None:
        shutil.rmtree(self.root / kb, ignore_errors=True)


class DatabaseFiles:
    """Files in the PostgreSQL catalog; a reference is ``db:<kb>/<doc_id>``."""

    def __init__(self, catalog: PostgresCatalog) -> None:
        self.catalog = catalog

    def put(self, kb: str, doc_id: str, filename: str, data: bytes) -> str:
        self.catalog.put_file(kb, doc_id, data)
        return f"{_DB}{kb}/{doc_id}"

    @staticmethod
    def _key(ref: str) -> tuple[str, str] | None:
        if not ref.startswith(_DB):
            return None
        kb, _, doc_id = ref[len(_DB) :].partition("/")
        return kb, doc_id

    def read(self, ref: str) -> bytes | None:
        key = self._key(ref)
        return self.catalog.read_file(*key) if key else None

    def delete(self, ref: str) -> None:
        key = self._key(ref)
        if key:
            self.catalog.delete_file(*key)

    def delete_kb(self, kb: str) -> None:
        self.catalog.delete_files(kb)


def file_store(catalog: SqlCatalog, files_dir: Path) -> FileStore:
    """The database for a PostgreSQL catalog, else the folder."""
    if isinstance(catalog, PostgresCatalog):
        return DatabaseFiles(catalog)
    return LocalFiles(files_dir)
