"""The OpenAI-compatible API on a real uvicorn server with the packaged SmolLM2 model, on
both in-process backends (transformers, and llamacpp from the same model's GGUF, with the
peft adapter converted to a GGUF LoRA), driven by httpx, the official openai SDK and
LangChain's ChatOpenAI."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
# a request that keeps its slot busy for many tokens (a chat model answers the question above
# in a dozen tokens and ends)
LONG = [{"role": "user", "content": "Write a very long story about a journey around France."}]


# each in-process backend with its model, as shared servers of tests/conftest.py (API key on,
# one slot, no queue, a random adapter "test-lora"): transformers runs the tiny SmolLM2,
# llama.cpp the packaged Qwen-0.5B (the CPU default's family; SmolLM2's Q4 weights on
# llama.cpp answer the question above with something else than transformers' fp32 copy does)
SERVERS = {"transformers": "smollm2", "llamacpp": "qwen-llamacpp"}


@pytest.fixture(scope="module", params=list(SERVERS))
def server(request: pytest.FixtureRequest, shared_server: Any) -> Any:
    return shared_server(SERVERS[request.param])


@pytest.fixture()
def client(server: Any) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=server.url, timeout=300, headers={"Authorization": f"Bearer {server.api_key}"}
    ) as c:
        yield c


def wait_idle(client: httpx.Client, timeout_s: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        extra = client.get("/health").json()["extra"]
        if extra["generating"] == 0 and extra["slots_busy"] == 0:
            return dict(extra)
        if time.monotonic() > deadline:
            raise AssertionError(f"generation still running: {extra}")
        time.sleep(0.1)


def test_health_needs_no_key(server: Any) -> None:
    body = httpx.get(f"{server.url}/health").json()
    assert body["status"] == "ok" and body["model_loaded"] and body["device"] == "cpu"


@pytest.mark.parametrize("header", [None, "Bearer wrong", "Basic abc"])
def test_bad_key_is_401_in_openai_shape(server: Any, header: str | None) -> None:
    headers = {"Authorization": header} if header else {}
    response = httpx.get(f"{server.url}/v1/models", headers=headers)
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"


def test_models_lists_base_and_adapter(client: httpx.Client, server: Any) -> None:
    data = client.get("/v1/models").json()["data"]
    assert [m["id"] for m in data] == [server.model, "test-lora"]
    assert data[1]["parent"] == server.model


def test_chat_non_stream_and_greedy_is_stable(client: httpx.Client) -> None:
    body = {"messages": QUESTION, "max_tokens": 24}
    first = client.post("/v1/chat/completions", json=body).json()
    second = client.post("/v1/chat/completions", json=body).json()
    text = first["choices"][0]["message"]["content"]
    assert "Paris" in text
    assert second["choices"][0]["message"]["content"] == text
    assert first["object"] == "chat.completion"
    usage = first["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0


def test_stream_matches_non_stream(client: httpx.Client) -> None:
    body = {"messages": QUESTION, "max_tokens": 24}
    whole = client.post("/v1/chat/completions", json=body).json()
    pieces, reasons, done = [], [], False
    with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if not line:
                continue
            assert line.startswith("data: ")
            if line == "data: [DONE]":
                done = True
                continue
            chunk = json.loads(line[6:])
            delta = chunk["choices"][0]["delta"]
            pieces.append(delta.get("content") or "")
            if chunk["choices"][0]["finish_reason"]:
                reasons.append(chunk["choices"][0]["finish_reason"])
                assert chunk["usage"]["completion_tokens"] == whole["usage"]["completion_tokens"]
    assert done and reasons == [whole["choices"][0]["finish_reason"]]
    assert "".join(pieces) == whole["choices"][0]["message"]["content"]


def test_max_tokens_gives_length_and_stop_strings_cut(client: httpx.Client) -> None:
    short = client.post("/v1/chat/completions", json={"messages": QUESTION, "max_tokens": 3}).json()
    assert short["choices"][0]["finish_reason"] == "length"
    assert short["usage"]["completion_tokens"] == 3
    cut = client.post(
        "/v1/chat/completions", json={"messages": QUESTION, "max_tokens": 24, "stop": ["Paris"]}
    ).json()
    assert cut["choices"][0]["finish_reason"] == "stop"
    assert "Paris" not in cut["choices"][0]["message"]["content"]
    assert cut["choices"][0]["message"]["content"].strip().startswith("The capital")


def test_adapter_answers_differently(client: httpx.Client) -> None:
    body = {"messages": QUESTION, "max_tokens": 12}
    base = client.post("/v1/chat/completions", json=body).json()
    tuned = client.post("/v1/chat/completions", json={**body, "model": "test-lora"}).json()
    assert tuned["model"] == "test-lora"
    assert tuned["choices"][0]["message"]["content"] != base["choices"][0]["message"]["content"]
    # the base model is still served unchanged after the adapter ran
    again = client.post("/v1/chat/completions", json=body).json()
    assert again["choices"][0]["message"]["content"] == base["choices"][0]["message"]["content"]


def test_errors_in_openai_shape(client: httpx.Client) -> None:
    unknown = client.post("/v1/chat/completions", json={"model": "nope", "messages": QUESTION})
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "model_not_found"

    malformed = client.post(
        "/v1/chat/completions", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert malformed.status_code == 422
    assert malformed.json()["error"]["type"] == "invalid_request_error"

    missing = client.post("/v1/chat/completions", json={"messages": []})
    assert missing.status_code == 422 and "messages" in missing.json()["error"]["message"]

    long_prompt = [{"role": "user", "content": "word " * 3000}]
    too_long = client.post("/v1/chat/completions", json={"messages": long_prompt})
    assert too_long.status_code == 413
    assert too_long.json()["error"]["code"] == "context_length_exceeded"
    too_long_stream = client.post(
        "/v1/chat/completions", json={"messages": long_prompt, "stream": True}
    )
    assert too_long_stream.status_code == 413


def test_bad_text_and_seed_are_422_not_500(client: httpx.Client) -> None:
    """A lone surrogate (valid JSON, not valid Unicode) and a seed beyond 64 bits are refused
    before any backend sees them; the largest 64-bit seed is accepted by the backend."""
    raw = '{"messages": [{"role": "user", "content": "\\ud800 x"}]%s}'
    for tail in ("", ', "stream": true', ', "stop": ["\\udfff"]'):
        bad = client.post(
            "/v1/chat/completions",
            content=(raw % tail).encode(),
            headers={"Content-Type": "application/json"},
        )
        assert bad.status_code == 422, bad.text
        error = bad.json()["error"]
        assert error["type"] == "invalid_request_error" and "surrogate" in error["message"]
    for seed in (99999999999999999999, -(2**63) - 1):
        for stream in (False, True):
            body = {"messages": QUESTION, "seed": seed, "temperature": 0.7, "stream": stream}
            response = client.post("/v1/chat/completions", json=body)
            assert response.status_code == 422 and "seed" in response.text, response.text
    for seed in (2**63 - 1, -1):
        body = {"messages": QUESTION, "seed": seed, "temperature": 0.7, "max_tokens": 2}
        response = client.post("/v1/chat/completions", json=body)
        assert response.status_code == 200, response.text


def test_queue_full_is_503_with_retry_after(client: httpx.Client, server: Any) -> None:
    body = {
        "messages": LONG,
        "max_tokens": 400,
        "stream": True,
        "stop": ["never-appears-xyz"],
        "temperature": 1.0,
        "seed": 1,
    }
    with client.stream("POST", "/v1/chat/completions", json=body) as running:
        lines = running.iter_lines()
        next(lines)  # the slot is held: the generation has started
        busy = httpx.post(
            f"{server.url}/v1/chat/completions",
            json={"messages": QUESTION, "max_tokens": 4},
            headers={"Authorization": f"Bearer {server.api_key}"},
            timeout=60,
        )
        assert busy.status_code == 503
        assert busy.json()["error"]["type"] == "overloaded_error"
        assert int(busy.headers["Retry-After"]) >= 1
    wait_idle(client)


def test_disconnect_stops_generation(client: httpx.Client, server: Any) -> None:
    body = {
        "messages": LONG,
        "max_tokens": 1000,
        "stream": True,
        "temperature": 1.0,
        "seed": 3,
        "stop": ["never-appears-xyz"],
    }
    received = 0
    cancelled_before = client.get("/health").json()["extra"]["cancelled"]
    with (
        httpx.Client(
            base_url=server.url, timeout=60, headers={"Authorization": f"Bearer {server.api_key}"}
        ) as own,
        own.stream("POST", "/v1/chat/completions", json=body) as r,
    ):
        for line in r.iter_lines():
            if line.startswith("data: {"):
                received += 1
            if received >= 4:
                break  # leaving the block closes the connection mid-stream
    # 1000 tokens take over a minute here; a cancelled generation ends within seconds
    wait_idle(client, timeout_s=60)
    # the generation ended because its client left, not on its own (eos or max_tokens)
    assert client.get("/health").json()["extra"]["cancelled"] == cancelled_before + 1
    after = client.post("/v1/chat/completions", json={"messages": QUESTION, "max_tokens": 4})
    assert after.status_code == 200


def test_event_loop_not_blocked_during_generation(client: httpx.Client, server: Any) -> None:
    result: dict[str, Any] = {}

    def generate() -> None:
        result["r"] = client.post(
            "/v1/chat/completions",
            json={"messages": LONG, "max_tokens": 60, "stop": ["never-appears-xyz"]},
        )

    worker = threading.Thread(target=generate)
    worker.start()
    seen_busy = False
    while worker.is_alive():
        health = httpx.get(f"{server.url}/health", timeout=10).json()
        seen_busy |= health["extra"]["generating"] == 1
        time.sleep(0.05)
    worker.join()
    assert result["r"].status_code == 200
    assert seen_busy, "/health never answered while a generation ran"


def test_openai_sdk_stream_and_non_stream(server: Any) -> None:
    from openai import OpenAI

    sdk = OpenAI(base_url=f"{server.url}/v1", api_key=server.api_key)
    whole = sdk.chat.completions.create(model=server.model, messages=QUESTION, max_tokens=24)
    text = whole.choices[0].message.content
    assert text and "Paris" in text
    stream = sdk.chat.completions.create(
        model=server.model, messages=QUESTION, max_tokens=24, stream=True
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert streamed == text
    assert [m.id for m in sdk.models.list()] == [server.model, "test-lora"]
    from openai import AuthenticationError, NotFoundError

    with pytest.raises(NotFoundError):
        sdk.chat.completions.create(model="missing", messages=QUESTION)
    with pytest.raises(AuthenticationError):
        OpenAI(base_url=f"{server.url}/v1", api_key="bad").models.list()


def test_langchain_chat_openai(server: Any) -> None:
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(
        base_url=f"{server.url}/v1",
        api_key=server.api_key,
        model=server.model,
        temperature=0,
        max_tokens=24,
    )
    answer = llm.invoke("What is the capital of France?")
    assert "Paris" in str(answer.content)
    streamed = "".join(str(chunk.content) for chunk in llm.stream("What is the capital of France?"))
    assert streamed == answer.content
