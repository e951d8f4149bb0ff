"""The catalog and the job queue on a real PostgreSQL (a throwaway server from Debian's
binaries, tests/conftest.py), beside the same queries on SQLite: one schema, versioned; jobs
claimed once by many workers; uploaded files in the database; replicas that see each other's
changes; a worker killed with SIGKILL whose job another worker finishes."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from app.rag.search import KnowledgeBaseSearch
from app.settings import Settings
from ingest.catalog import Catalog, CatalogSchemaError, SqlCatalog
from ingest.embeddings import NamedEmbeddings
from ingest.models import Document
from ingest.service import KnowledgeBaseService


@pytest.fixture(params=["sqlite", "postgres"])
def catalog(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SqlCatalog]:
    if request.param == "sqlite":
        cat: SqlCatalog = Catalog(tmp_path / "ingest.sqlite")
    else:
        from ingest.catalog_pg import PostgresCatalog

        cat = PostgresCatalog(request.getfixturevalue("pg_url"))
    yield cat
    cat.close()


def _doc(kb: str, doc_id: str, filename: str) -> Document:
    return Document(
        kb=kb,
        doc_id=doc_id,
        filename=filename,
        size=3,
        sha256=doc_id,
        status="queued",
        chunks=0,
        uploaded_at=time.time(),
        path=f"ref-{doc_id}",
    )


def test_catalog_queries_on_both_databases(catalog: SqlCatalog) -> None:
    assert catalog.schema_version() == catalog.latest_version == 2
    assert catalog.create_kb("kb", "model", 3) is True
    assert catalog.create_kb("kb", "model", 3) is False  # exists: nothing changes
    start = catalog.kb_version("kb")
    assert start > 0 and catalog.kb_version("nope") == -1
    catalog.add_document(_doc("kb", "d1", "a.txt"))
    catalog.add_document(_doc("kb", "d1", "a.txt"))  # the same upload again: one row
    catalog.add_document(_doc("kb", "d2", "b.txt"))
    rows = [
        (f"d1:{i}", i, f"text {i}", {"chunk_id": f"d1:{i}", "page": None}, f"tok{i} common")
        for i in range(3)
    ]
    catalog.commit_document("kb", "d1", rows, [])
    assert catalog.kb_version("kb") == start + 1
    assert catalog.get_document("kb", "d1").status == "ready"  # type: ignore[union-attr]
    version, ids, tokens = catalog.all_tokens("kb")
    assert (version, ids) == (start + 1, ["d1:0", "d1:1", "d1:2"])  # in insertion order
    assert tokens[2] == ["tok2", "common"]
    # the texts the relevance gate counts term rarity over: all, or the same first ones
    assert catalog.all_texts("kb") == (start + 1, ["text 0", "text 1", "text 2"])
    assert catalog.all_texts("kb", limit=2) == (start + 1, ["text 0", "text 1"])
    assert catalog.all_texts("nope") == (-1, [])
    assert catalog.chunks_of("kb", "d1")[1] == ("d1:1", "text 1", rows[1][3])
    # by position (a list answer's table section around its passage)
    assert [c[0] for c in catalog.chunks_of("kb", "d1", 1, 5)] == ["d1:1", "d1:2"]
    assert [c[0] for c in catalog.chunks_of("kb", "d1", -3, 0)] == ["d1:0"]
    assert set(catalog.chunks_by_id("kb", ["d1:0", "d1:2", "zz"])) == {"d1:0", "d1:2"}
    kb = catalog.get_kb("kb")
    assert kb is not None and (kb.documents, kb.chunks) == (2, 3)
    # a new version of a.txt replaces d1 in the same transaction
    catalog.add_document(_doc("kb", "d3", "a.txt"))
    catalog.commit_document("kb", "d3", [("d3:0", 0, "new", {}, "new")], ["d1"])
    assert [d.doc_id for d in catalog.documents_named("kb", "a.txt")] == ["d3"]
    assert catalog.all_tokens("kb")[1] == ["d3:0"]
    catalog.delete_document("kb", "d3")
    assert catalog.kb_version("kb") == start + 3 and catalog.all_tokens("kb")[1] == []
    # deleted and created again under its name, changed as often: never the old version (what
    # a process keeps per version would be taken for the new KB's)
    catalog.create_kb("again", "model", 3)
    old = catalog.kb_version("again")
    catalog.delete_kb("again")
    catalog.create_kb("again", "model", 3)
    assert catalog.kb_version("again") != old
    catalog.delete_kb("again")
    # jobs
    first = catalog.enqueue("kb", "d2", "b.txt")
    second = catalog.enqueue("kb", "d2", "b.txt")
    assert catalog.queued_count() == 2
    claimed = catalog.claim()
    assert claimed is not None and claimed.id == first.id and claimed.state == "running"
    assert catalog.claim(first.id) is None  # running: not claimable
    catalog.progress(first.id, 1, 4)
    catalog.finish(first.id, 4)
    done = catalog.get_job(first.id)
    assert done is not None and (done.state, done.chunks, done.attempts) == ("succeeded", 4, 1)
    assert catalog.claim(second.id) is not None
    catalog.requeue(second.id)
    assert catalog.get_job(second.id).state == "queued"  # type: ignore[union-attr]
    catalog.claim()
    catalog.fail(second.id, "bad file")
    assert catalog.get_job(second.id).error == "bad file"  # type: ignore[union-attr]
    assert [j.id for j in catalog.list_jobs("kb")] == [second.id, first.id]
    catalog.delete_kb("kb")
    assert catalog.list_kbs() == [] and catalog.list_jobs() == []


def test_each_job_is_claimed_once_by_many_workers(pg_url: str) -> None:
    """Eight workers, each with its own catalog (its own connections, as on other hosts),
    claim from one queue at the same time: every job is taken exactly once."""
    from ingest.catalog_pg import PostgresCatalog

    setup = PostgresCatalog(pg_url)
    setup.create_kb("kb", "model", 3)
    jobs = {setup.enqueue("kb", f"d{i}", f"f{i}.txt").id for i in range(60)}
    claimed: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def worker(n: int) -> None:
        own = PostgresCatalog(pg_url, pool_size=2)
        start.wait()
        while (job := own.claim(owner=f"host{n}:{n}:token{n:08d}")) is not None:
            with lock:
                claimed.append(job.id)
        own.close()

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert sorted(claimed) == sorted(jobs)  # all of them, none twice
    assert {j.attempts for j in setup.list_jobs(limit=100)} == {1}
    setup.close()


def test_a_silent_workers_job_is_taken_over_after_the_lease(pg_url: str) -> None:
    from ingest.catalog_pg import PostgresCatalog

    catalog = PostgresCatalog(pg_url)
    catalog.create_kb("kb", "model", 3)
    job = catalog.enqueue("kb", "d", "f.txt")
    assert catalog.claim(owner="elsewhere:7:abcdef012345") is not None
    assert catalog.requeue_orphans(lease_s=60) == 0  # its heartbeat is fresh
    with catalog.connect() as db:
        db.execute("UPDATE jobs SET heartbeat_at = ? WHERE id = ?", (time.time() - 120, job.id))
    assert catalog.requeue_orphans(lease_s=60) == 1
    again = catalog.claim()
    assert again is not None and again.id == job.id and again.attempts == 2
    catalog.close()


def test_the_schema_is_versioned_and_a_newer_one_is_refused(pg_url: str, tmp_path: Path) -> None:
    from ingest.catalog_pg import PostgresCatalog

    PostgresCatalog(pg_url).close()
    reopened = PostgresCatalog(pg_url)  # a second start migrates nothing
    assert reopened.schema_version() == 2
    with reopened.connect() as db:
        db.execute("UPDATE schema_version SET version = 99")
    reopened.close()
    with pytest.raises(CatalogSchemaError, match="schema version 99, newer than this kbqa"):
        PostgresCatalog(pg_url)
    # a SQLite data dir of an older kbqa (no schema_version, jobs without heartbeat_at) is
    # upgraded in place, its rows kept
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as old:
        old.execute(
            "CREATE TABLE jobs (id TEXT PRIMARY KEY, kb TEXT NOT NULL, doc_id TEXT NOT NULL, "
            "filename TEXT NOT NULL, state TEXT NOT NULL, progress_done INTEGER NOT NULL "
            "DEFAULT 0, progress_total INTEGER NOT NULL DEFAULT 0, chunks INTEGER NOT NULL "
            "DEFAULT 0, error TEXT, created_at REAL NOT NULL, started_at REAL, finished_at REAL, "
            "attempts INTEGER NOT NULL DEFAULT 0, owner TEXT)"
        )
        old.execute(
            "INSERT INTO jobs (id, kb, doc_id, filename, state, created_at) "
            "VALUES ('job-old', 'kb', 'd', 'f.txt', 'queued', 1.0)"
        )
    upgraded = Catalog(path)
    assert upgraded.schema_version() == 2
    with upgraded.connect() as db:  # version 2's index on a document's chunk positions
        names = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    assert "chunks_doc_idx" in names
    job = upgraded.claim()
    assert job is not None and job.id == "job-old"
    with upgraded.connect() as db:
        db.execute("UPDATE schema_version SET version = 3")
    upgraded.close()
    with pytest.raises(CatalogSchemaError, match="newer than this kbqa"):
        Catalog(path)


def _settings(data_dir: Path, pg_url: str, chroma: tuple[str, int], **ingest: Any) -> Settings:
    return Settings.model_validate(
        {
            "data_dir": data_dir,
            "llm": {"backend": "none"},
            "catalog": {"url": pg_url},
            "vectorstore": {"chroma_host": chroma[0], "chroma_port": chroma[1]},
            "ingest": {"chunk_size": 120, "chunk_overlap": 20, "workers": 0, **ingest},
        }
    )


def test_replicas_share_files_chunks_and_changes(
    tmp_path: Path, pg_url: str, chroma_server: tuple[str, int], embeddings: NamedEmbeddings
) -> None:
    """Replica A takes the upload; a worker with another data dir (another host) ingests it
    from the file stored in PostgreSQL; both replicas then return the same hits, and a delete
    through one is seen by the other's keyword index at its next search."""
    a = KnowledgeBaseService.from_settings(
        _settings(tmp_path / "a", pg_url, chroma_server), embeddings
    )
    b = KnowledgeBaseService.from_settings(
        _settings(tmp_path / "b", pg_url, chroma_server), embeddings
    )
    try:
        a.create_kb("shared")
        panda = "大熊猫以竹子为食，主要生活在四川、陕西和甘肃的山林里。".encode()
        result = a.upload("shared", "panda.txt", panda)
        tower = a.upload("shared", "tower.md", b"# Tower\nThe Eiffel Tower is 330 metres tall.")
        assert result.job is not None and tower.job is not None
        assert result.doc_id is not None
        doc = a.get_document("shared", result.doc_id)
        assert doc.path == f"db:shared/{result.doc_id}"
        assert not (tmp_path / "a" / "ingest" / "files").exists()  # nothing on A's disk
        jobs = b.pipeline.run_pending(max_jobs=5)
        assert [j.state for j in jobs] == ["succeeded", "succeeded"]
        for mode in ("keyword", "dense", "hybrid"):
            hits_a = KnowledgeBaseSearch(a).search("shared", "熊猫吃什么", 3, 0.0, mode)
            hits_b = KnowledgeBaseSearch(b).search("shared", "熊猫吃什么", 3, 0.0, mode)
            assert [h.metadata["chunk_id"] for h in hits_a] == [
                h.metadata["chunk_id"] for h in hits_b
            ]
            assert hits_a[0].metadata["filename"] == "panda.txt", mode
        b.delete_document("shared", result.doc_id)
        assert a.catalog.get_document("shared", result.doc_id) is None
        assert b.files.read(doc.path or "") is None  # its stored bytes went with it
        left = KnowledgeBaseSearch(a).search("shared", "熊猫 竹子", 3, 0.0, "keyword")
        assert all(h.metadata["filename"] == "tower.md" for h in left)
        a.delete_kb("shared")
        assert b.list_kbs() == []
    finally:
        a.close()
        b.close()


def test_a_killed_worker_job_is_finished_by_the_other(
    tmp_path: Path,
    pg_url: str,
    chroma_server: tuple[str, int],
    embeddings: NamedEmbeddings,
    started_processes: list[subprocess.Popen[bytes]],
) -> None:
    """Two `kbqa worker` processes on one PostgreSQL and one Chroma server; one is killed
    with SIGKILL mid-job: the other finishes every job, each chunk stored once, as a clean
    ingest of the same files stores them."""
    settings = _settings(tmp_path / "api", pg_url, chroma_server, chunk_size=50, chunk_overlap=0)
    api = KnowledgeBaseService.from_settings(settings, embeddings)
    api.create_kb("crash")
    texts = {
        f"doc{n}.txt": "".join(
            f"第{n}篇第{i}条：这是用于测试中断恢复的句子，内容各不相同。" for i in range(30)
        )
        for n in range(4)
    }
    job_ids = []
    for name, text in texts.items():
        upload = api.upload("crash", name, text.encode())
        assert upload.job is not None
        job_ids.append(upload.job.id)
    env = {
        **os.environ,
        "KBQA_DATA_DIR": str(tmp_path / "worker"),
        "KBQA_CATALOG__URL": pg_url,
        "KBQA_VECTORSTORE__CHROMA_HOST": chroma_server[0],
        "KBQA_VECTORSTORE__CHROMA_PORT": str(chroma_server[1]),
        "KBQA_INGEST__CHUNK_SIZE": "50",
        "KBQA_INGEST__CHUNK_OVERLAP": "0",
        "KBQA_INGEST__BATCH_JOBS": "1",
        "KBQA_EMBEDDINGS__BATCH_SIZE": "1",
        "KBQA_INGEST__POLL_INTERVAL_S": "0.2",
        # the sweep for dead workers' jobs runs every lease/4 seconds
        "KBQA_INGEST__JOB_LEASE_S": "8",
        "KBQA_INGEST__PARSE_TIMEOUT_S": "0",
        "KBQA_LLM__BACKEND": "none",
    }
    cmd = [str(Path(sys.executable).parent / "kbqa"), "worker", "--threads", "1"]

    def wait_for(pred: Callable[[], bool], what: str, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while not pred():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.05)

    def running_of(pid: int) -> list[Any]:
        return [
            j
            for j in api.list_jobs("crash")
            if j.state == "running" and j.progress_done >= 2 and _owner_pid(api, j.id) == pid
        ]

    def start() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        started_processes.append(proc)  # stopped at teardown, whatever the test's outcome
        return proc

    first = start()
    wait_for(lambda: bool(running_of(first.pid)), "the first worker's progress")
    start()
    victim = running_of(first.pid)[0].id
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    wait_for(lambda: all(api.get_job(j).state == "succeeded" for j in job_ids), "every job done")
    assert api.get_job(victim).attempts == 2  # taken over once
    chunks = {j: api.get_job(j).chunks for j in job_ids}
    # a clean single-process ingest of the same files, for the expected counts
    clean = KnowledgeBaseService.from_settings(
        Settings.model_validate(
            {
                "data_dir": tmp_path / "clean",
                "llm": {"backend": "none"},
                "ingest": {"chunk_size": 50, "chunk_overlap": 0, "workers": 0},
            }
        ),
        embeddings,
    )
    try:
        clean.create_kb("crash")
        for name, text in texts.items():
            clean.upload("crash", name, text.encode())
        clean.pipeline.run_pending(max_jobs=10)
        expected = sorted(
            chunk_id
            for d in clean.list_documents("crash")
            for chunk_id, _, _ in clean.catalog.chunks_of("crash", d.doc_id)
        )
    finally:
        clean.close()
    stored = sorted(
        chunk_id
        for d in api.list_documents("crash")
        for chunk_id in api.store.ids_of_doc("crash", d.doc_id)
    )
    assert stored == expected and sum(chunks.values()) == len(expected)
    assert api.get_kb("crash").chunks == len(expected)
    api.close()


def _owner_pid(service: KnowledgeBaseService, job_id: str) -> int | None:
    row = service.catalog._read_one("SELECT owner FROM jobs WHERE id = ?", (job_id,))
    parts = (row["owner"] or "").rsplit(":", 2) if row else []
    return int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else None


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    out = log.open("wb")
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "kbqa"), *args], env=env, stdout=out, stderr=out
    )


def test_two_apis_and_two_workers_share_one_catalog(
    tmp_path: Path,
    pg_url: str,
    chroma_server: tuple[str, int],
    embeddings: NamedEmbeddings,
    started_processes: list[subprocess.Popen[bytes]],
    free_ports: Callable[[], int],
) -> None:
    """Four processes as on four hosts (each its own data dir): two `kbqa serve` replicas and
    two `kbqa worker`s on one PostgreSQL and one Chroma server. Half the files go through each
    replica; every job runs once, every chunk is stored once, both replicas return the same
    hits, and a delete through one is seen through the other."""
    import httpx

    from ingest.store import VectorStore

    base = {
        **os.environ,
        "KBQA_CATALOG__URL": pg_url,
        "KBQA_VECTORSTORE__CHROMA_HOST": chroma_server[0],
        "KBQA_VECTORSTORE__CHROMA_PORT": str(chroma_server[1]),
        "KBQA_VECTORSTORE__COLLECTION_PREFIX": "replicas",
        "KBQA_LLM__BACKEND": "none",
        "KBQA_INGEST__WORKERS": "0",
        "KBQA_INGEST__CHUNK_SIZE": "120",
        "KBQA_INGEST__CHUNK_OVERLAP": "20",
        "KBQA_INGEST__POLL_INTERVAL_S": "0.2",
    }
    ports = [free_ports(), free_ports()]
    procs = started_processes
    for n, port in enumerate(ports):
        env = {**base, "KBQA_DATA_DIR": str(tmp_path / f"api{n}")}
        procs.append(_start(["serve", "--port", str(port)], env, tmp_path / f"api{n}.log"))
    for n in range(2):
        env = {**base, "KBQA_DATA_DIR": str(tmp_path / f"worker{n}")}
        procs.append(_start(["worker"], env, tmp_path / f"worker{n}.log"))
    apis = [httpx.Client(base_url=f"http://127.0.0.1:{p}", timeout=60) for p in ports]
    deadline = time.monotonic() + 120
    for api in apis:
        while True:
            try:
                if api.get("/health").is_success:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "a replica did not start"
            time.sleep(0.3)
    assert apis[0].post("/v1/knowledge_bases", json={"name": "kb"}).status_code == 201
    files = {
        f"doc{n}.txt": (
            f"第{n}号文件。" + "".join(f"第{n}号文件的第{i}句话讲述不同的内容。" for i in range(12))
        )
        for n in range(8)
    }
    job_ids = []
    for n, (name, text) in enumerate(files.items()):
        response = apis[n % 2].post(
            "/v1/knowledge_bases/kb/documents", files=[("files", (name, text.encode()))]
        )
        assert response.status_code == 202, response.text
        job_ids.append(response.json()["data"][0]["job"]["id"])
    deadline = time.monotonic() + 240
    while True:
        jobs = [apis[1].get(f"/v1/jobs/{j}").json() for j in job_ids]
        if all(j["state"] in ("succeeded", "failed") for j in jobs):
            break
        assert time.monotonic() < deadline, jobs
        time.sleep(0.3)
    assert {(j["state"], j["attempts"]) for j in jobs} == {("succeeded", 1)}
    total = sum(j["chunks"] for j in jobs)
    docs = apis[1].get("/v1/knowledge_bases/kb/documents").json()["data"]
    chunk_ids = [
        c["chunk_id"]
        for d in docs
        for c in apis[0].get(f"/v1/knowledge_bases/kb/documents/{d['id']}/chunks").json()["data"]
    ]
    assert len(chunk_ids) == len(set(chunk_ids)) == total
    store = VectorStore.http(*chroma_server, embeddings, prefix="replicas")
    stored = [i for d in docs for i in store.ids_of_doc("kb", d["id"])]
    assert sorted(stored) == sorted(chunk_ids) and store.count("kb") == total
    query = {"query": "第5号文件讲述什么内容", "top_k": 5}
    for mode in ("keyword", "hybrid"):
        hits = [
            api.post("/v1/knowledge_bases/kb/search", json={**query, "mode": mode}).json()
            for api in apis
        ]
        assert [h["chunk_id"] for h in hits[0]["data"]] == [h["chunk_id"] for h in hits[1]["data"]]
        assert hits[0]["data"][0]["filename"] == "doc5.txt", mode
    doc5 = next(d["id"] for d in docs if d["filename"] == "doc5.txt")
    assert apis[1].delete(f"/v1/knowledge_bases/kb/documents/{doc5}").status_code == 200
    after = apis[0].post("/v1/knowledge_bases/kb/search", json={**query, "mode": "keyword"})
    assert all(h["filename"] != "doc5.txt" for h in after.json()["data"])


def test_an_unreachable_catalog_is_503_and_the_service_recovers(
    postgres: Any, tmp_path: Path, embeddings: NamedEmbeddings
) -> None:
    """PostgreSQL stopped under a running service: requests that need the catalog are
    answered 503 with Retry-After and a message naming catalog.url (after
    catalog.connect_timeout_s, not a hang, not a 500); started again, the same service
    answers without a restart."""
    from fastapi.testclient import TestClient

    from app.main import create_app
    from app.services.container import Services

    own = type(postgres)(postgres.bindir)  # a server of this test alone, to stop
    try:
        settings = Settings.model_validate(
            {
                "data_dir": tmp_path / "data",
                "llm": {"backend": "none"},
                "catalog": {"url": own.database(), "connect_timeout_s": 1},
                "ingest": {"workers": 0},
            }
        )
        kb = KnowledgeBaseService.from_settings(settings, embeddings)
        app = create_app(settings, services_factory=lambda s: Services(kb=kb, closables=[kb]))
        with TestClient(app) as client:
            assert client.post("/v1/knowledge_bases", json={"name": "kb"}).status_code == 201
            own.pause()
            for response in (
                client.get("/v1/knowledge_bases"),
                client.post(
                    "/v1/knowledge_bases/kb/documents", files=[("files", ("a.txt", b"text"))]
                ),
                client.post("/v1/knowledge_bases/kb/search", json={"query": "text"}),
            ):
                assert response.status_code == 503, response.text
                assert response.headers["Retry-After"] == "5"
                error = response.json()["error"]
                assert error["code"] == "catalog_unavailable" and "catalog.url" in error["message"]
            own.resume()
            deadline = time.monotonic() + 30
            while (listed := client.get("/v1/knowledge_bases")).status_code == 503:
                assert time.monotonic() < deadline, listed.text
                time.sleep(0.2)
            assert [k["name"] for k in listed.json()["data"]] == ["kb"]
    finally:
        own.stop()
