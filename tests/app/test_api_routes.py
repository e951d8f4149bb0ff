"""The HTTP layer alone, with fake services (no model, no embeddings, no store): every domain
error's status and body from the app's handlers (app/api/errors.py), the 503 of a service the
server does not run (app/api/deps.py), and the one SSE encoder (app/api/sse.py).

Fakes go in through ``app.dependency_overrides``: ``kb_service`` and ``rag_service`` for routes
that take them as dependencies, ``get_services`` for /v1/chat/completions (which needs the chat
or the RAG service depending on the request).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.api.deps import get_services, kb_service, rag_service
from app.llm.base import (
    BackendUnavailableError,
    Completion,
    LLMError,
    ModelNotFoundError,
    OverloadedError,
    PromptTooLongError,
    StreamChunk,
)
from app.main import create_app
from app.rag.passage import Passage
from app.services.container import Services
from app.services.rag import RagEvent
from app.settings import load_settings
from app.settings.ingest import RetrievalSettings
from ingest.errors import (
    ConflictError,
    DocumentError,
    EmbeddingMismatchError,
    FileTooLargeError,
    IngestError,
    InputTooLargeError,
    InvalidNameError,
    NotFoundError,
    ParseTimeoutError,
    RequestCancelledError,
    UnsupportedTypeError,
)
from ingest.models import UploadResult

RETRY_AFTER = 7
Q = [{"role": "user", "content": "How tall is the tower?"}]


def error(message: str, type_: str, code: str | None, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "code": code, "param": param}}


class FakeKbService:
    """A knowledge-base service whose every call raises ``error`` (when given)."""

    def __init__(self, error: IngestError | None = None) -> None:
        self.error = error
        self.ingest_settings = SimpleNamespace(max_file_bytes=100, max_files_per_request=3)
        self.retrieval = RetrievalSettings()  # the real defaults (search reads them)
        self.embeddings = SimpleNamespace(name="fake-embeddings")
        self.embedder = SimpleNamespace(check_text=self._fail, embed=self._fail)

    def _fail(self, *_: Any, **__: Any) -> Any:
        if self.error is not None:
            raise self.error
        return []

    create_kb = get_kb = delete_kb = list_kbs = open_kb = _fail
    list_documents = get_document = delete_document = list_chunks = _fail
    list_jobs = get_job = _fail

    def check_upload(self, name: str, size: int | None) -> None:
        if name.endswith(".bad"):
            raise UnsupportedTypeError(f"unsupported file type for {name!r}")

    def upload(self, kb: str, name: str, data: bytes) -> UploadResult:
        return UploadResult(name, "duplicate", doc_id="d1")


class FakeLLM:
    name = "fake-model"


class FakeSlot:
    def __init__(self) -> None:
        self.released = False

    def release(self) -> None:
        self.released = True


class FakeChatService:
    """Answers "Hi there" in two chunks, or raises ``error`` (``mid_stream``: after a chunk)."""

    def __init__(self, error: LLMError | None = None, mid_stream: bool = False) -> None:
        self.error = error
        self.mid_stream = mid_stream
        self.llm = FakeLLM()
        self.slot = FakeSlot()
        self.closed = False

    async def complete(self, messages: Any, params: Any, model: Any = None) -> Completion:
        if self.error is not None:
            raise self.error
        return Completion("Hi there", "stop", prompt_tokens=5, completion_tokens=2)

    async def open_stream(self, messages: Any, params: Any, model: Any = None) -> Any:
        if self.error is not None and not self.mid_stream:
            raise self.error
        return self.slot, self._chunks()

    async def _chunks(self) -> AsyncIterator[StreamChunk]:
        try:
            yield StreamChunk("Hi")
            if self.error is not None:
                raise self.error
            yield StreamChunk(" there", "stop", prompt_tokens=5, completion_tokens=2)
        finally:
            self.closed = True


SOURCE = {"index": 1, "kb": "en", "doc_id": "d1", "filename": "a.md", "chunk_id": "d1:0"}
SOURCE |= {"score": 0.9, "text": "It is 330 metres tall."}
TIMINGS = {"retrieval_ms": 1.0, "prompt_ms": 0.5, "generation_ms": 2.0, "total_ms": 4.0}
TIMINGS |= {"tokens_per_s": 3.0}


class FakeRagService:
    """Yields sources, two tokens and done; or raises ``error`` before the first event."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.calls: list[dict[str, Any]] = []

    async def stream(self, question: str, knowledge_bases: list[str], **kw: Any) -> Any:
        self.calls.append({"question": question, "knowledge_bases": knowledge_bases, **kw})
        if self.error is not None:
            raise self.error
        yield RagEvent("sources", sources=[Passage(**SOURCE)], refused=False, grounded=True)
        yield RagEvent("token", text="330 metres")
        yield RagEvent("token", text=" [1]")
        yield RagEvent("done", prompt_tokens=9, completion_tokens=3, timings=TIMINGS)


@pytest.fixture()
def app(tmp_path: Path) -> FastAPI:
    settings = load_settings(
        None,
        **{"data_dir": tmp_path, "llm.backend": "none", "llm.retry_after_s": RETRY_AFTER},
    )
    return create_app(settings, services_factory=lambda s: Services())


@pytest.fixture()
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as c:
        yield c


KB_ROUTES = [
    ("post", "/v1/knowledge_bases", {"json": {"name": "en"}}),
    ("get", "/v1/knowledge_bases", {}),
    ("get", "/v1/knowledge_bases/en", {}),
    ("delete", "/v1/knowledge_bases/en", {}),
    ("post", "/v1/knowledge_bases/en/search", {"json": {"query": "tall"}}),
    ("get", "/v1/knowledge_bases/en/documents", {}),
    ("get", "/v1/knowledge_bases/en/documents/d1", {}),
    ("delete", "/v1/knowledge_bases/en/documents/d1", {}),
    ("get", "/v1/knowledge_bases/en/documents/d1/chunks", {}),
    ("post", "/v1/knowledge_bases/en/documents", {"files": [("files", ("a.txt", b"x"))]}),
    ("get", "/v1/jobs", {}),
    ("get", "/v1/jobs/j1", {}),
    ("post", "/v1/embeddings", {"json": {"input": "x"}}),
]

INGEST_ERRORS = [
    (NotFoundError("knowledge base 'en' not found"), 404, "not_found_error", "not_found"),
    (ConflictError("knowledge base 'en' exists already"), 409, "invalid_request_error", "conflict"),
    (EmbeddingMismatchError("built with another model"), 409, "invalid_request_error", "conflict"),
    (
        UnsupportedTypeError("'.exe' is not read"),
        415,
        "invalid_request_error",
        "unsupported_file_type",
    ),
    (FileTooLargeError("over the limit"), 413, "invalid_request_error", "file_too_large"),
    (InputTooLargeError("too many texts"), 413, "invalid_request_error", "input_too_large"),
    (RequestCancelledError("gone"), 499, "invalid_request_error", "client_closed_request"),
    (InvalidNameError("bad name"), 400, "invalid_request_error", "invalid_name"),
    (DocumentError("cannot read it"), 422, "invalid_request_error", "unreadable_document"),
    (ParseTimeoutError("took too long"), 422, "invalid_request_error", "unreadable_document"),
    (IngestError("something else"), 400, "invalid_request_error", "ingest_error"),
]


@pytest.mark.parametrize(("exc", "status", "type_", "code"), INGEST_ERRORS)
def test_each_ingest_error_has_its_status_on_every_route(
    app: FastAPI, client: TestClient, exc: IngestError, status: int, type_: str, code: str
) -> None:
    app.dependency_overrides[kb_service] = lambda: FakeKbService(exc)
    for method, url, kwargs in KB_ROUTES:
        response = client.request(method.upper(), url, **kwargs)
        assert response.status_code == status, (method, url)
        assert response.json() == error(str(exc), type_, code), (method, url)


def test_every_knowledge_base_route_is_503_without_the_service(client: TestClient) -> None:
    body = error("knowledge bases are not enabled in this service", "api_error", "kb_disabled")
    for method, url, kwargs in KB_ROUTES:
        response = client.request(method.upper(), url, **kwargs)
        assert (response.status_code, response.json()) == (503, body), (method, url)
    # the dependency answers before the body is validated: 503 whatever the request holds
    invalid = client.post("/v1/knowledge_bases", json={"name": "a b"})
    assert (invalid.status_code, invalid.json()) == (503, body)


def test_upload_rejects_files_one_by_one(app: FastAPI, client: TestClient) -> None:
    app.dependency_overrides[kb_service] = lambda: FakeKbService()
    url = "/v1/knowledge_bases/en/documents"
    mixed = [
        ("files", ("a.bad", b"x")),
        ("files", ("b.txt", b"y")),
        ("files", ("c.txt", b"z" * 101)),
    ]
    response = client.post(url, files=mixed)
    assert response.status_code == 202
    items = response.json()["data"]
    assert [(i["filename"], i["status"]) for i in items] == [
        ("a.bad", "rejected"),
        ("b.txt", "duplicate"),
        ("c.txt", "rejected"),
    ]
    assert items[2]["error"] == "c.txt: over the limit of 100 bytes (ingest.max_file_bytes)"
    # every file rejected: the first one's error, with its status
    response = client.post(url, files=[mixed[0], mixed[2]])
    assert response.status_code == 415
    assert response.json() == error(
        "unsupported file type for 'a.bad'", "invalid_request_error", "unsupported_file_type"
    )
    too_many = client.post(url, files=[("files", (f"{i}.txt", b"x")) for i in range(4)])
    assert too_many.status_code == 413
    assert too_many.json() == error("too many files: at most 3", "invalid_request_error", None)


LLM_ERRORS = [
    (
        ModelNotFoundError("model 'x' is not served"),
        404,
        "not_found_error",
        "model_not_found",
        "model",
    ),
    (
        PromptTooLongError("prompt is too long"),
        413,
        "invalid_request_error",
        "context_length_exceeded",
        "messages",
    ),
    (OverloadedError("queue is full"), 503, "overloaded_error", "server_busy", None),
    (BackendUnavailableError("no LLM"), 503, "api_error", "backend_unavailable", None),
    (LLMError("it broke"), 500, "api_error", "llm_error", None),
]


@pytest.mark.parametrize(("exc", "status", "type_", "code", "param"), LLM_ERRORS)
def test_each_llm_error_has_its_status(
    app: FastAPI,
    client: TestClient,
    exc: LLMError,
    status: int,
    type_: str,
    code: str,
    param: str | None,
) -> None:
    chat = FakeChatService(exc)
    rag = FakeRagService(exc)
    app.dependency_overrides[get_services] = lambda: Services(chat=chat, rag=rag)
    requests = [
        {"messages": Q},
        {"messages": Q, "stream": True},
        {"messages": Q, "knowledge_base": "en"},
        {"messages": Q, "knowledge_base": "en", "stream": True},
    ]
    for body in requests:
        response = client.post("/v1/chat/completions", json=body)
        assert response.status_code == status, body
        assert response.json() == error(str(exc), type_, code, param), body
        retry = response.headers.get("retry-after")
        assert retry == (str(RETRY_AFTER) if status == 503 else None)
    response = client.post("/v1/knowledge_bases/en/ask", json={"question": "How tall?"})
    assert (response.status_code, response.json()) == (status, error(str(exc), type_, code, param))


def test_chat_needs_only_the_service_of_its_path(app: FastAPI, client: TestClient) -> None:
    chat_off = error(
        "chat is not available on this server", "invalid_request_error", "backend_unavailable"
    )
    rag_off = error(
        "knowledge-base answers are not enabled on this server",
        "invalid_request_error",
        "rag_disabled",
    )
    assert client.post("/v1/chat/completions", json={"messages": Q}).json() == chat_off
    kb = {"messages": Q, "knowledge_base": "en"}
    response = client.post("/v1/chat/completions", json=kb)
    assert (response.status_code, response.json()) == (503, rag_off)
    response = client.post("/v1/knowledge_bases/en/ask", json={"question": "q"})
    assert (response.status_code, response.json()) == (503, rag_off)
    # a server with chat but no RAG answers the plain model; one with RAG only the KB path
    app.dependency_overrides[get_services] = lambda: Services(chat=FakeChatService())
    assert client.post("/v1/chat/completions", json={"messages": Q}).status_code == 200
    assert client.post("/v1/chat/completions", json=kb).json() == rag_off
    app.dependency_overrides[get_services] = lambda: Services(rag=FakeRagService())
    assert client.post("/v1/chat/completions", json=kb).status_code == 200
    assert client.post("/v1/chat/completions", json={"messages": Q}).json() == chat_off


def test_ingest_and_value_errors_of_an_answer(app: FastAPI, client: TestClient) -> None:
    missing = NotFoundError("knowledge base 'nope' not found; create it first")
    app.dependency_overrides[rag_service] = lambda: FakeRagService(missing)
    response = client.post("/v1/knowledge_bases/nope/ask", json={"question": "q"})
    assert response.status_code == 404
    assert response.json() == error(str(missing), "not_found_error", "not_found")
    app.dependency_overrides[rag_service] = lambda: FakeRagService(
        ValueError("the question is empty")
    )
    response = client.post("/v1/knowledge_bases/en/ask", json={"question": " "})
    assert response.status_code == 400
    assert response.json() == error(
        "the question is empty", "invalid_request_error", "invalid_request"
    )


def test_request_limits_are_400(app: FastAPI, client: TestClient) -> None:
    app.dependency_overrides[get_services] = lambda: Services(
        chat=FakeChatService(), rag=FakeRagService()
    )
    too_many = error(
        "max_tokens 1000000 is over this server's limit of 2048",
        "invalid_request_error",
        "max_tokens_too_large",
        "max_tokens",
    )
    for extra in ({}, {"knowledge_base": "en"}):
        response = client.post(
            "/v1/chat/completions", json={"messages": Q, "max_tokens": 10**6, **extra}
        )
        assert (response.status_code, response.json()) == (400, too_many)
    empty = client.post("/v1/chat/completions", json={"messages": Q, "knowledge_base": []})
    assert empty.json() == error(
        "knowledge_base is empty", "invalid_request_error", None, "knowledge_base"
    )
    last = client.post(
        "/v1/chat/completions",
        json={"messages": [*Q, {"role": "assistant", "content": "x"}], "knowledge_base": "en"},
    )
    assert last.json()["error"]["code"] == "invalid_messages"


def _events(text: str) -> list[Any]:
    assert text.endswith("data: [DONE]\n\n")
    blocks = text.split("\n\n")
    assert all(b.startswith("data: ") for b in blocks if b)
    return [json.loads(b[6:]) for b in blocks if b and b != "data: [DONE]"]


def test_plain_stream_chunks_and_a_mid_stream_error(app: FastAPI, client: TestClient) -> None:
    chat = FakeChatService()
    app.dependency_overrides[get_services] = lambda: Services(chat=chat)
    response = client.post("/v1/chat/completions", json={"messages": Q, "stream": True})
    assert response.headers["cache-control"] == "no-cache"
    events = _events(response.text)
    assert [e["choices"][0]["delta"] for e in events] == [
        {"role": "assistant", "content": ""},
        {"content": "Hi"},
        {"content": " there"},
        {},
    ]
    assert events[-1]["choices"][0]["finish_reason"] == "stop"
    assert events[-1]["usage"] == {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
    assert list(events[0]) == ["id", "object", "created", "model", "choices"]
    assert events[0]["model"] == "fake-model" and chat.closed and chat.slot.released

    broken = FakeChatService(OverloadedError("queue is full"), mid_stream=True)
    app.dependency_overrides[get_services] = lambda: Services(chat=broken)
    response = client.post("/v1/chat/completions", json={"messages": Q, "stream": True})
    assert response.status_code == 200  # the status line was sent before the error
    events = _events(response.text)
    assert events[-1] == error("queue is full", "overloaded_error", "server_busy")
    assert broken.closed and broken.slot.released


def test_knowledge_base_stream_and_whole_answer(app: FastAPI, client: TestClient) -> None:
    rag = FakeRagService()
    app.dependency_overrides[get_services] = lambda: Services(rag=rag)
    body = {"messages": [{"role": "system", "content": "Be brief."}, *Q], "knowledge_base": "en"}
    whole = client.post("/v1/chat/completions", json={**body, "top_k": 2}).json()
    assert whole["model"] == "kbqa"  # no LLM on this server
    assert whole["choices"][0]["message"]["content"] == "330 metres [1]"
    assert whole["usage"] == {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}
    assert whole["sources"][0]["filename"] == "a.md" and whole["timings"]["total_ms"] == 4.0
    call = rag.calls[-1]
    assert call["system_prompt"] == "Be brief." and call["options"].top_k == 2
    assert call["params"].max_tokens > 0 and call["params"].temperature == 0.0

    events = _events(client.post("/v1/chat/completions", json={**body, "stream": True}).text)
    assert list(events[0]) == [
        "id",
        "object",
        "created",
        "model",
        "choices",
        "sources",
        "refused",
        "grounded",
    ]
    assert (
        "".join(e["choices"][0]["delta"].get("content", "") for e in events)
        == whole["choices"][0]["message"]["content"]
    )
    assert list(events[-1]) == ["id", "object", "created", "model", "choices", "usage", "timings"]
    assert events[-1]["usage"] == whole["usage"]

    ask = client.post(
        "/v1/knowledge_bases/en/ask", json={"question": "How tall?", "knowledge_bases": ["en", "b"]}
    ).json()
    assert ask["answer"] == "330 metres [1]" and ask["model"] == "kbqa"
    assert rag.calls[-1]["knowledge_bases"] == ["en", "b"]


def test_chat_request_composes_the_rag_fields() -> None:
    """One declaration of the knowledge-base knobs (RagFields) for both request shapes; on
    /v1/chat/completions they come last and say they need ``knowledge_base``."""
    from app.api.schemas.chat import AskRequest, ChatCompletionRequest, RagFields

    chat = ChatCompletionRequest.model_json_schema()["properties"]
    ask = AskRequest.model_json_schema()["properties"]
    rag = list(RagFields.model_fields)
    assert list(chat)[-len(rag) - 1 :] == ["knowledge_base", *rag]
    for name in rag:
        assert "(knowledge_base)" in chat[name]["description"]
        assert {**chat[name], "description": ""} == {**ask[name], "description": ""}
