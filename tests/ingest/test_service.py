"""The knowledge-base service end to end: real embedder, real Chroma, real files."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import huge_docx, make_docx, make_pdf, make_settings, merged_table_docx

from app.rag.search import KnowledgeBaseSearch, rrf
from app.settings.base import SearchMode
from ingest.catalog import Catalog
from ingest.embeddings import NamedEmbeddings
from ingest.errors import DocumentError, EmbeddingMismatchError, InvalidNameError, NotFoundError
from ingest.models import Job
from ingest.service import KnowledgeBaseService
from ingest.worker import Worker

DOC_A = "北京是中华人民共和国的首都，也是政治和文化中心。\n熊猫主要以竹子为食，生活在四川。"
DOC_B = "8.1.4.1 身份鉴别\n应对登录的用户进行身份标识和鉴别，身份标识具有唯一性。"


def _ingest(service: KnowledgeBaseService, kb: str, name: str, data: bytes) -> str:
    result = service.upload(kb, name, data)
    assert result.status == "queued" and result.job is not None
    [job] = service.pipeline.run_pending(result.job.id)
    assert job.state == "succeeded", job
    assert result.doc_id is not None
    return result.doc_id


def test_ingest_and_search_modes(service: KnowledgeBaseService) -> None:
    service.create_kb("kb1")
    _ingest(service, "kb1", "a.txt", DOC_A.encode("gbk"))
    _ingest(service, "kb1", "std.docx", make_docx([("p", line) for line in DOC_B.split("\n")]))
    modes: tuple[SearchMode, ...] = ("dense", "keyword", "hybrid")
    for mode in modes:
        hits = KnowledgeBaseSearch(service).search("kb1", "大熊猫吃什么", top_k=2, mode=mode)
        assert hits, mode
        assert "竹子" in hits[0].text, mode
        assert all(0.0 <= h.score <= 1.0 for h in hits)
        assert hits == sorted(hits, key=lambda h: -h.score)
    hit = KnowledgeBaseSearch(service).search("kb1", "身份鉴别 唯一性", top_k=1)[0]
    assert hit.metadata["heading_path"] == ["8.1.4.1 身份鉴别"]
    assert hit.metadata["filename"] == "std.docx"
    assert set(hit.metadata) >= {
        "kb", "doc_id", "filename", "page", "heading_path", "chunk_index", "chunk_id", "start",
        "end",
    }  # fmt: skip
    assert KnowledgeBaseSearch(service).search("kb1", "身份鉴别", score_threshold=1.01 - 1e-9) == []
    kb = service.get_kb("kb1")
    assert (kb.documents, kb.chunks) == (2, 2)


SECTIONS = (
    "# 安全计算环境\n## 身份鉴别\n应对用户进行身份鉴别。\n"
    "## 访问控制\n应对登录的用户分配账户和权限。\n"
    "# 安全区域边界\n## 身份鉴别\n应对网络设备进行鉴别。\n"
    "## 访问控制\n应在网络边界根据策略设置规则。\n"
)


@pytest.mark.parametrize("indexed", [True, False])
def test_headings_are_searched_with_their_chunks(
    tmp_path: Path, embeddings: NamedEmbeddings, indexed: bool
) -> None:
    """``ingest.index_headings``: the chunk's heading path is embedded and keyword-indexed
    above its text, so the section a question names is found although the chunk's text
    ("## 访问控制 ...") does not name it; the stored text is the chunk's own."""
    settings = make_settings(tmp_path / "data", index_headings=indexed)
    service = KnowledgeBaseService.from_settings(settings, embeddings)
    try:
        service.create_kb("k")
        _ingest(service, "k", "std.md", SECTIONS.encode())
        search = KnowledgeBaseSearch(service)
        modes: tuple[SearchMode, ...] = ("keyword", "dense", "hybrid")
        for mode in modes:
            found = []
            for section, text in (("安全区域边界", "网络边界"), ("安全计算环境", "分配账户")):
                hits = search.search("k", f"{section}的访问控制有哪些要求", 1, mode=mode)
                found.append(text in hits[0].text)
                assert hits[0].metadata["heading_path"][-1] in {"访问控制", "身份鉴别"}
            if indexed:
                assert all(found), mode
            elif mode == "keyword":
                assert not all(found)  # the section's name is in no text of its 访问控制
        chunks = [h.text for h in service.list_chunks("k", service.list_documents("k")[0].doc_id)]
        assert chunks[1] == "## 访问控制\n应对登录的用户分配账户和权限。"  # stored as it was
    finally:
        service.close()


def test_duplicate_replace_delete(service: KnowledgeBaseService) -> None:
    service.create_kb("kb2")
    first = _ingest(service, "kb2", "notes.md", "# 说明\n旧版本：苹果是红色的。".encode())
    again = service.upload("kb2", "again.md", "# 说明\n旧版本：苹果是红色的。".encode())
    assert (again.status, again.duplicate_of) == ("duplicate", "notes.md")
    # empty files are refused at upload: they would all share one (content) id
    for name in ("empty.txt", "zero.pdf"):
        with pytest.raises(DocumentError, match=f"{name}: the file is empty"):
            service.upload("kb2", name, b"")
    second = _ingest(service, "kb2", "notes.md", "# 说明\n新版本：香蕉是黄色的。".encode())
    docs = service.list_documents("kb2")
    assert [d.doc_id for d in docs] == [second]
    modes: tuple[SearchMode, ...] = ("dense", "keyword")
    texts = [
        h.text
        for m in modes
        for h in KnowledgeBaseSearch(service).search("kb2", "苹果 香蕉", 10, mode=m)
    ]
    assert texts and all("旧版本" not in t for t in texts)
    assert service.store.count("kb2") == 1
    with pytest.raises(NotFoundError):
        service.get_document("kb2", first)
    service.delete_document("kb2", second)
    assert KnowledgeBaseSearch(service).search("kb2", "香蕉") == []
    assert service.store.count("kb2") == 0


def test_delete_kb_removes_everything(service: KnowledgeBaseService) -> None:
    service.create_kb("gone")
    _ingest(service, "gone", "a.txt", DOC_A.encode())
    assert (service.files_dir / "gone").is_dir()
    service.delete_kb("gone")
    assert not (service.files_dir / "gone").exists()
    with pytest.raises(NotFoundError):
        KnowledgeBaseSearch(service).search("gone", "熊猫")
    service.create_kb("gone")  # a fresh, empty collection, and no jobs of the old one
    assert service.store.count("gone") == 0
    assert service.list_jobs("gone") == [] and service.list_documents("gone") == []


def test_names_and_unknown_kb(service: KnowledgeBaseService) -> None:
    for bad in ["", "a b", "x" * 65, "../x", "名字"]:
        with pytest.raises(InvalidNameError):
            service.create_kb(bad)
    with pytest.raises(NotFoundError):
        service.upload("nope", "a.txt", b"x")


def test_embedding_model_mismatch_is_an_error(service: KnowledgeBaseService) -> None:
    service.catalog.create_kb("other", "sentence-transformers:some/model", 768)
    with pytest.raises(EmbeddingMismatchError, match="some/model"):
        KnowledgeBaseSearch(service).search("other", "x")
    with pytest.raises(EmbeddingMismatchError):
        service.upload("other", "a.txt", b"hello")


def test_job_rerun_is_idempotent(service: KnowledgeBaseService) -> None:
    service.create_kb("idem")
    result = service.upload("idem", "a.txt", DOC_A.encode())
    assert result.job is not None
    [first] = service.pipeline.run_pending(result.job.id)
    with service.catalog.connect() as db:  # as if the job had been interrupted and requeued
        db.execute("UPDATE jobs SET state = 'queued' WHERE id = ?", (result.job.id,))
    [second] = service.pipeline.run_pending(result.job.id)
    assert second.state == "succeeded" and second.attempts == 2
    assert (
        second.chunks
        == first.chunks
        == service.store.count("idem")
        == service.get_kb("idem").chunks
    )


def test_bad_file_fails_only_its_job(service: KnowledgeBaseService) -> None:
    service.create_kb("mixed")
    bad = service.upload("mixed", "fake.docx", b"not a zip at all")
    good = service.upload("mixed", "a.txt", DOC_A.encode())
    worker = Worker(service.pipeline, threads=1, poll_interval_s=0.1).start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            states = {service.get_job(r.job.id).state for r in (bad, good) if r.job}
            if states <= {"succeeded", "failed"}:
                break
            time.sleep(0.1)
    finally:
        worker.close()
    assert bad.job is not None and good.job is not None
    failed = service.get_job(bad.job.id)
    assert failed.state == "failed" and "not a valid DOCX" in (failed.error or "")
    assert service.get_job(good.job.id).state == "succeeded"
    failed_doc = service.get_document("mixed", bad.doc_id or "")
    assert failed_doc.status == "failed" and failed_doc.filename == "fake.docx"
    # a failed document's stored bytes are removed; the good one's stay
    stored = sorted(p.name for p in (service.files_dir / "mixed").iterdir())
    assert stored == [f"{good.doc_id}.txt"]


def _run_worker_until_done(
    service: KnowledgeBaseService, job_ids: list[str], timeout_s: float
) -> list[Job]:
    """Run a worker thread until every job is finished (or the timeout); the final jobs."""
    worker = Worker(service.pipeline, threads=1, poll_interval_s=0.1).start()
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(service.get_job(j).state in ("succeeded", "failed") for j in job_ids):
                break
            time.sleep(0.1)
    finally:
        worker.close()
    return [service.get_job(j) for j in job_ids]


def test_docx_with_huge_xml_fails_with_the_reason_and_the_next_upload_succeeds(
    service: KnowledgeBaseService,
) -> None:
    """The report: a 45 MB document.xml in a small DOCX held the only worker for minutes.
    Now its job fails at once on the XML budget and the upload queued behind it is ingested."""
    service.create_kb("budget")
    big = service.upload("budget", "huge.docx", huge_docx(45 * 1024 * 1024))
    small = service.upload("budget", "a.txt", DOC_A.encode())
    assert big.job is not None and small.job is not None
    failed, done = _run_worker_until_done(service, [big.job.id, small.job.id], 120)
    assert failed.state == "failed", failed
    assert "ingest.max_xml_bytes" in (failed.error or "")
    assert "word/document.xml alone 45.0 MB" in (failed.error or "")
    assert done.state == "succeeded" and done.chunks > 0
    assert service.get_document("budget", big.doc_id or "").status == "failed"


def test_parse_over_the_time_limit_fails_the_job_and_the_worker_goes_on(
    tmp_path: Path, embeddings: NamedEmbeddings
) -> None:
    """A 60 KB DOCX whose merged table takes minutes to read (about 150 s on this 2-core
    machine, ~1.4 s already at a tenth of its rows) against a 2 s limit: the parse process is
    killed, the job fails with the reason, and the next upload is ingested by a new one."""
    settings = make_settings(tmp_path / "data", parse_timeout_s=2)
    service = KnowledgeBaseService.from_settings(settings, embeddings)
    try:
        service.create_kb("slow")
        slow = service.upload("slow", "merged.docx", merged_table_docx(2000))
        small = service.upload("slow", "a.txt", DOC_A.encode())
        assert slow.job is not None and small.job is not None
        failed, done = _run_worker_until_done(service, [slow.job.id, small.job.id], 90)
    finally:
        service.close()
    assert failed.state == "failed", failed
    assert "longer than the limit of 2 s (setting ingest.parse_timeout_s)" in (failed.error or "")
    assert failed.started_at is not None and failed.finished_at is not None
    assert failed.finished_at - failed.started_at < 30  # stopped near 2 s, not after minutes
    assert done.state == "succeeded" and done.chunks > 0


def test_worker_stopped_during_a_parse_queues_the_job_again(
    tmp_path: Path, embeddings: NamedEmbeddings, caplog: pytest.LogCaptureFixture
) -> None:
    """Stopping the worker kills a long parse at once (no waiting for the time limit) and
    the job goes back to the queue instead of failing."""
    caplog.set_level(logging.INFO, logger="ingest.parse")
    service = KnowledgeBaseService.from_settings(make_settings(tmp_path / "data"), embeddings)
    try:
        service.create_kb("stop")
        result = service.upload("stop", "merged.docx", merged_table_docx(2000))
        assert result.job is not None
        job_id = result.job.id
        worker = Worker(service.pipeline, threads=1, poll_interval_s=0.1).start()
        deadline = time.monotonic() + 60
        while "event=parse_process_started" not in caplog.text:
            assert time.monotonic() < deadline, "the parse did not start"
            time.sleep(0.1)
        time.sleep(1.0)  # inside the parse (minutes long)
        assert service.get_job(job_id).state == "running"
        stopped = time.monotonic()
        worker.close()
        assert time.monotonic() - stopped < 30  # the parse process was killed, not awaited
        job = service.get_job(job_id)
        assert job.state == "queued" and job.error is None
    finally:
        service.close()


def test_parse_time_limit_must_stay_below_the_job_lease(tmp_path: Path) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="parse_timeout_s must be smaller than"):
        make_settings(tmp_path, parse_timeout_s=600, job_lease_s=600)
    assert make_settings(tmp_path, parse_timeout_s=0, job_lease_s=60).ingest.parse_timeout_s == 0


def test_rrf_normalised() -> None:
    fused = rrf([[("a", 0.9), ("b", 0.5)], [("a", 3.0), ("c", 1.0)]], k=60)
    assert fused[0] == ("a", pytest.approx(1.0))
    assert dict(fused)["b"] == pytest.approx((1 / 62) / (2 / 61))


def test_worker_killed_mid_job_then_restarted(tmp_path: Path, embeddings: NamedEmbeddings) -> None:
    data_dir = tmp_path / "data"
    settings = make_settings(data_dir, chunk_size=50, chunk_overlap=0)
    service = KnowledgeBaseService.from_settings(settings, embeddings)
    service.create_kb("crash")
    text = "".join(f"第{i}条：这是用于测试中断恢复的第{i}个句子，内容各不相同。" for i in range(40))
    result = service.upload("crash", "long.txt", text.encode())
    assert result.job is not None
    job_id = result.job.id
    service.close()
    env = {
        **os.environ,
        "KBQA_DATA_DIR": str(data_dir),
        "KBQA_INGEST__CHUNK_SIZE": "50",
        "KBQA_INGEST__CHUNK_OVERLAP": "0",
        "KBQA_EMBEDDINGS__BATCH_SIZE": "1",
        "KBQA_INGEST__POLL_INTERVAL_S": "0.2",
        "KBQA_LLM__BACKEND": "none",
    }
    cmd = [str(Path(sys.executable).parent / "kbqa"), "worker"]
    catalog = Catalog(data_dir / "ingest" / "ingest.sqlite")

    def wait_for(pred: Callable[[], bool], what: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not pred():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.05)

    first = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: catalog.get_job(job_id).progress_done >= 2, "progress")  # type: ignore[union-attr]
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
    job = catalog.get_job(job_id)
    assert job is not None and job.state == "running" and job.progress_done < job.progress_total
    second = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: catalog.get_job(job_id).state == "succeeded", "success")  # type: ignore[union-attr]
    finally:
        second.terminate()
        second.wait(timeout=60)
    done = catalog.get_job(job_id)
    assert done is not None and done.attempts == 2
    reopened = KnowledgeBaseService.from_settings(settings, embeddings)
    try:
        assert reopened.store.count("crash") == done.chunks == reopened.get_kb("crash").chunks
        assert len(set(reopened.store.ids_of_doc("crash", done.doc_id))) == done.chunks
    finally:
        reopened.close()


def _running_job(catalog: Catalog, owner: str, beat_age_s: float) -> str:
    catalog.create_kb("lease", "model", 3)
    job = catalog.enqueue("lease", f"doc-{owner}", "f.txt")
    claimed = catalog.claim(job.id, owner=owner)
    assert claimed is not None and claimed.state == "running"
    with catalog.connect() as db:
        db.execute(
            "UPDATE jobs SET heartbeat_at = ? WHERE id = ?", (time.time() - beat_age_s, job.id)
        )
    return job.id


def test_jobs_of_dead_or_silent_workers_are_queued_again(tmp_path: Path) -> None:
    """The restart and lease rules, on the real SQLite queue: a container restarted with the
    same hostname and pid (1) is not its previous self; another host's worker is given up
    only when it has been silent for the lease."""
    import socket

    from ingest.catalog import process_owner

    catalog = Catalog(tmp_path / "ingest.sqlite")
    host, pid = socket.gethostname(), os.getpid()
    mine = _running_job(catalog, process_owner(), beat_age_s=10_000)
    reborn = _running_job(catalog, f"{host}:{pid}:previous0001", beat_age_s=1)
    old_format = _running_job(catalog, f"{host}:{pid}", beat_age_s=1)
    other_fresh = _running_job(catalog, "elsewhere:42:abcdef012345", beat_age_s=5)
    other_silent = _running_job(catalog, "elsewhere:43:abcdef012345", beat_age_s=700)

    assert catalog.requeue_orphans() == 2  # no lease: only what this host can tell is dead
    assert catalog.requeue_orphans(lease_s=600) == 1
    state = {j: catalog.get_job(j).state for j in (mine, reborn, old_format)}  # type: ignore[union-attr]
    assert state == {mine: "running", reborn: "queued", old_format: "queued"}
    assert catalog.get_job(other_fresh).state == "running"  # type: ignore[union-attr]
    assert catalog.get_job(other_silent).state == "queued"  # type: ignore[union-attr]
    catalog.progress(other_fresh, 1, 2)  # progress renews the lease
    assert catalog.requeue_orphans(lease_s=4) == 0


def test_service_on_a_chroma_server_keeps_headings_and_pages(
    tmp_path: Path, embeddings: NamedEmbeddings, chroma_server: tuple[str, int]
) -> None:
    """The whole service with `vectorstore.chroma_host` set (Chroma's HttpClient to a real
    `chroma run`): a DOCX's heading styles become the heading path, a PDF's page numbers are
    kept, and deleting a document removes its vectors from the server."""

    host, port = chroma_server
    settings = make_settings(tmp_path / "data").model_copy(
        update={
            "vectorstore": make_settings(tmp_path).vectorstore.model_copy(
                update={"chroma_host": host, "chroma_port": port}
            )
        }
    )
    service = KnowledgeBaseService.from_settings(settings, embeddings)
    try:
        assert type(service.store.client).__name__ != "PersistentClient"
        service.create_kb("served")
        docx_id = _ingest(
            service,
            "served",
            "manual.docx",
            make_docx(
                [
                    ("h1", "Network security"),
                    ("h2", "Access control"),
                    ("p", "Default accounts must be renamed or removed before go-live."),
                ]
            ),
        )
        pdf_id = _ingest(
            service,
            "served",
            "guide.pdf",
            make_pdf(
                [
                    [
                        "This guide describes the operations of the data centre.",
                        "It is written for the operators on duty and their managers.",
                        "Read it once before the first shift and keep it at hand.",
                    ],
                    ["Backups are restored and tested every quarter."],
                ]
            ),
        )
        [docx_hit] = KnowledgeBaseSearch(service).search(
            "served", "renamed default accounts", top_k=1, mode="dense"
        )
        assert docx_hit.metadata["doc_id"] == docx_id
        assert docx_hit.metadata["heading_path"] == ["Network security", "Access control"]
        [pdf_hit] = KnowledgeBaseSearch(service).search(
            "served", "how often are backups tested", top_k=1, mode="dense"
        )
        assert pdf_hit.metadata["doc_id"] == pdf_id and pdf_hit.metadata["page"] == 2
        before = service.store.count("served")
        service.delete_document("served", pdf_id)
        assert service.store.count("served") < before
        assert service.store.ids_of_doc("served", pdf_id) == []
    finally:
        service.delete_kb("served")
        service.close()


def test_keyword_index_is_built_before_the_job_succeeds(service: KnowledgeBaseService) -> None:
    service.create_kb("warm")
    _ingest(service, "warm", "a.txt", DOC_A.encode())

    def built() -> tuple[int, tuple]:
        cached = service.keyword._cache.peek("warm", None)
        assert cached is not None
        return cached

    assert built()[0] == service.catalog.kb_version("warm") and built()[1][1] is not None
    doc_b = _ingest(service, "warm", "b.txt", DOC_B.encode())
    assert built()[0] == service.catalog.kb_version("warm")
    service.delete_document("warm", doc_b)
    assert built()[0] == service.catalog.kb_version("warm")
    assert KnowledgeBaseSearch(service).search("warm", "身份鉴别", mode="keyword") == []


def test_embedding_limits_are_checked_before_any_work(service: KnowledgeBaseService) -> None:
    """embeddings.max_inputs / max_input_chars: 100,000 inputs, an over-long input, an
    over-long search query are refused at once (413 at the API), not embedded first."""
    from ingest.errors import InputTooLargeError

    started = time.perf_counter()
    with pytest.raises(InputTooLargeError, match=r"embeddings\.max_inputs"):
        service.embedder.embed(["x"] * 100_000)
    with pytest.raises(InputTooLargeError, match="input 1 has 250000 characters"):
        service.embedder.embed(["ok", "a " * 125_000])
    service.create_kb("limits")
    with pytest.raises(InputTooLargeError, match="query has 5000000 characters"):
        KnowledgeBaseSearch(service).search("limits", "a " * 2_500_000)
    assert time.perf_counter() - started < 5
    limit = service.embedder.limits.max_input_chars
    assert len(service.embedder.embed(["字" * limit], "passage")) == 1  # at the limit: embedded


def test_a_client_that_leaves_stops_its_embedding_work(service: KnowledgeBaseService) -> None:
    from ingest.errors import RequestCancelledError

    checks: list[int] = []

    def cancelled() -> bool:
        checks.append(1)
        return len(checks) > 2  # the client leaves after two inputs

    with pytest.raises(RequestCancelledError, match="after 2 of 50"):
        service.embedder.embed([f"文本 {i}" for i in range(50)], cancelled=cancelled)
    assert len(checks) == 3


def test_the_embedding_lock_is_first_come_first_served() -> None:
    """A thread that releases and asks again at once (a large request's next batch) queues
    behind the thread already waiting (a search's query); threading.Lock would let it win."""
    import threading

    from ingest.embeddings import FairLock

    lock = FairLock()
    lock.acquire()
    got: list[str] = []

    def other() -> None:
        with lock:
            got.append("waiting thread")

    thread = threading.Thread(target=other)
    thread.start()
    deadline = time.monotonic() + 10
    while lock.waiting == 0:
        assert time.monotonic() < deadline
        time.sleep(0.001)
    lock.release()
    with lock:  # asks again at once
        got.append("releasing thread")
    thread.join(10)
    assert got == ["waiting thread", "releasing thread"]


def test_a_search_runs_while_a_large_embedding_request_is_still_going(
    service: KnowledgeBaseService,
) -> None:
    import threading

    batches: list[int] = []
    texts = [f"第{i}段文字，关于熊猫和竹子。" for i in range(30 * service.embeddings.batch_size)]

    def large() -> None:
        service.embedder.embed(texts, "passage", cancelled=lambda: bool(batches.append(1)))

    thread = threading.Thread(target=large)
    thread.start()
    deadline = time.monotonic() + 60
    while len(batches) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    service.embedder.embed(["熊猫吃什么？"])  # a search's query
    done_when = len(batches)
    thread.join(300)
    assert done_when < 30, f"the query waited for {done_when} of 30 batches"


def _table(point: str, rows: list[str]) -> str:
    cells = "".join(f"<tr><td>{row}</td><td>√</td><td>√</td></tr>" for row in rows)
    return (
        f"<table><tr><th>控制点</th><th>要求</th><th>二级</th><th>三级</th></tr>"
        f'<tr><td rowspan="{len(rows) + 1}"><h5>{point}</h5></td></tr>{cells}</table>\n'
    )


def test_a_table_section_is_read_around_its_passage_within_the_bound(
    service: KnowledgeBaseService,
) -> None:
    """A list answer's table section is the run of chunks under the passage's headings,
    read by position from the catalog: at most ``rag.list_max_chunks`` on each side."""
    from langchain_core.documents import Document as LcDocument

    from app.services.rag import table_sections

    rows = [f"应满足第{n}项访问控制要求，并记录第{n}项的执行情况。" for n in range(1, 15)]
    text = (
        "# 安全计算环境\n" + _table("访问控制", rows) + _table("安全审计", ["应启用安全审计功能。"])
    )
    service.create_kb("tables")
    doc_id = _ingest(service, "tables", "std.md", text.encode())
    chunks = service.list_chunks("tables", doc_id)
    under = [c for c in chunks if (c.metadata.get("heading_path") or [])[-1:] == ["访问控制"]]
    assert len(under) >= 5 and all(c.metadata.get("rows") for c in under)  # spans chunks
    hit = KnowledgeBaseSearch(service).search("tables", "第8项访问控制要求", 1, mode="keyword")[0]
    passage = LcDocument(page_content=hit.text, metadata=hit.metadata)
    at = [c.metadata["chunk_id"] for c in under].index(hit.metadata["chunk_id"])

    def read(reach: int) -> list[str]:
        [section] = table_sections(service.catalog, [passage], reach)
        return [row.split("。")[0] + "。" for row in section.rows]

    assert read(40) == rows  # the whole section, in order, the next section's row not in it
    near = read(1)
    assert near == [r for r in rows if r in near] and len(near) < len(rows)
    own = {
        r.split("。")[0] + "。" for c in under[max(0, at - 1) : at + 2] for r in c.text.splitlines()
    }
    assert set(near) <= own  # only rows of the passage's chunk and its two neighbours
    assert set(read(0)) <= {r.split("。")[0] + "。" for r in hit.text.splitlines()}
