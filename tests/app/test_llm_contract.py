"""One contract suite for the LLM interface, run against every backend: the in-process
transformers backend (packaged SmolLM2), the in-process llamacpp backend (the packaged Qwen
that is the CPU default), and the openai backend talking to a real kbqa server on 127.0.0.1."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.llm.base import (
    ChatMessage,
    GenerationParams,
    LLMBackend,
    ModelNotFoundError,
    PromptTooLongError,
)
from app.llm.chat import ChatService
from app.llm.gate import GenerationGate
from app.llm.llamacpp_backend import LlamaCppBackend
from app.llm.openai_backend import OpenAIBackend, estimate_tokens
from app.llm.transformers_backend import TransformersBackend
from app.settings import load_settings

QUESTION = [ChatMessage("user", "What is the capital of France?")]


@pytest.fixture(scope="module")
def live(shared_server: Any) -> Any:
    """The shared SmolLM2 server (tests/conftest.py): its transformers backend in-process, and
    the same model behind the OpenAI-compatible API for the openai backend."""
    return shared_server("smollm2")


@pytest.fixture(scope="module")
def llamacpp(models_dir: Path) -> Iterator[LlamaCppBackend]:
    settings = load_settings(
        **{
            "llm.backend": "llamacpp",
            "llm.model": "qwen2.5-coder-0.5b-instruct",
            "models_dir": models_dir,
        }
    )
    llm = LlamaCppBackend.load(settings.llm, settings.resolved_models_dir)
    yield llm
    llm.close()


@pytest.fixture(params=["transformers", "llamacpp", "openai"])
def backend(request: pytest.FixtureRequest, live: Any) -> LLMBackend:
    if request.param == "llamacpp":
        llm: LLMBackend = request.getfixturevalue("llamacpp")
        return llm
    if request.param == "transformers":
        llm = live.app.state.services.llm
        assert isinstance(llm, TransformersBackend)
        return llm
    settings = load_settings(
        **{
            "llm.backend": "openai",
            "llm.openai.base_url": f"{live.url}/v1",
            "llm.openai.api_key": live.api_key,
            "llm.model": "smollm2-135m-instruct",
        }
    )
    remote = OpenAIBackend.from_settings(settings.llm)
    run(remote.start())
    return remote


_LOOP = asyncio.new_event_loop()  # one loop: the openai client's connections are bound to it


def run(coro: Any) -> Any:
    return _LOOP.run_until_complete(coro)


async def collect(backend: LLMBackend, params: GenerationParams) -> tuple[str, Any]:
    parts, last = [], None
    async for chunk in backend.stream(QUESTION, params):
        parts.append(chunk.text)
        last = chunk
    return "".join(parts), last


def test_models_lists_base_first(backend: LLMBackend) -> None:
    assert backend.models()[0].id == backend.name
    assert backend.context_length() > 0
    assert backend.count_tokens("hello world") > 0


def test_complete_and_stream_agree(backend: LLMBackend) -> None:
    params = GenerationParams(max_tokens=20)
    whole = run(backend.complete(QUESTION, params))
    assert "Paris" in whole.text and whole.finish_reason == "stop"
    assert whole.prompt_tokens > 0 and whole.completion_tokens > 0
    text, last = run(collect(backend, params))
    assert text == whole.text
    assert last.finish_reason == "stop" and last.completion_tokens == whole.completion_tokens


def test_length_and_stop(backend: LLMBackend) -> None:
    short = run(backend.complete(QUESTION, GenerationParams(max_tokens=2)))
    assert short.finish_reason == "length" and short.completion_tokens == 2
    cut = run(backend.complete(QUESTION, GenerationParams(max_tokens=20, stop=["France"])))
    assert "France" not in cut.text and cut.finish_reason == "stop"


def test_unknown_model(backend: LLMBackend) -> None:
    with pytest.raises(ModelNotFoundError):
        run(backend.complete(QUESTION, GenerationParams(max_tokens=2), model="no-such-model"))


def test_seeded_sampling_repeats(backend: LLMBackend) -> None:
    params = GenerationParams(max_tokens=12, temperature=1.0, seed=42)
    first = run(backend.complete(QUESTION, params))
    second = run(backend.complete(QUESTION, params))
    assert first.text == second.text


OPEN = [ChatMessage("user", "Write one sentence about anything you like.")]


def test_temperature_seed_and_top_p_are_honoured(backend: LLMBackend) -> None:
    greedy = run(backend.complete(OPEN, GenerationParams(max_tokens=12))).text
    sampled = {
        run(backend.complete(OPEN, GenerationParams(max_tokens=12, temperature=1.5, seed=s))).text
        for s in range(4)
    }
    assert len(sampled) > 1, "different seeds at temperature 1.5 gave one text: not sampling"
    # a nucleus of (almost) zero mass keeps only the most likely token: greedy again
    nucleus = {
        run(
            backend.complete(
                OPEN, GenerationParams(max_tokens=12, temperature=1.5, top_p=1e-6, seed=s)
            )
        ).text
        for s in range(2)
    }
    assert nucleus == {greedy}


def test_remote_refusal_keeps_its_status_on_streams(backend: LLMBackend) -> None:
    """A prompt over the model's context fails before the stream starts, on both backends:
    the openai backend only learns it when the remote server answers, so the stream is
    opened (first chunk awaited) before the response would begin."""
    # over SmolLM2's 8192 tokens, whatever context the openai backend was told of
    long = [ChatMessage("user", "word " * max(20_000, 2 * backend.context_length()))]
    chat = ChatService(backend, GenerationGate(1, 4, 30.0))
    with pytest.raises(PromptTooLongError):
        run(chat.open_stream(long, GenerationParams(max_tokens=4)))
    assert chat.gate.busy == 0  # the slot went back


def test_openai_backend_counts_with_the_remote_models_tokenizer(
    live: Any, models_dir: Path
) -> None:
    """With `llm.openai.tokenizer` the RAG budget counts the remote model's own tokens, chat
    template included, as the local backend does; without it, the estimate."""
    local = live.app.state.services.llm
    overrides = {
        "llm.backend": "openai",
        "llm.openai.base_url": f"{live.url}/v1",
        "llm.openai.api_key": live.api_key,
        "llm.model": "smollm2-135m-instruct",
    }
    exact = OpenAIBackend.from_settings(
        load_settings(**overrides, **{"llm.openai.tokenizer": "smollm2-135m-instruct"}).llm,
        models_dir,
    )
    messages = [
        ChatMessage("system", "Answer briefly."),
        ChatMessage("user", "等级保护 2.0 是什么？"),
    ]
    assert exact.count_prompt_tokens(messages) == local.count_prompt_tokens(messages)
    assert exact.count_tokens("身份鉴别 identity") == local.count_tokens("身份鉴别 identity")
    rough = OpenAIBackend.from_settings(load_settings(**overrides).llm)
    assert rough.tokenizer is None and rough.count_tokens("等级保护") == 4


def test_estimate_tokens_counts_cjk_per_character() -> None:
    assert estimate_tokens("等级保护") == 4
    assert estimate_tokens("hello world") == 3


def test_oversized_messages_are_refused_by_characters_before_tokenizing(
    backend: LLMBackend,
) -> None:
    """A 20 MB message is refused at once (llm.max_chars_per_token x the context window),
    without tokenizing it: the issue's reproduction took 57 s and 3 GB before its 413."""
    counted: list[int] = []
    original = backend.count_prompt_tokens

    def spy(messages: list[ChatMessage]) -> int:
        counted.append(len(messages))
        return original(messages)

    backend.count_prompt_tokens = spy  # type: ignore[method-assign]
    try:
        chat = ChatService(backend, GenerationGate(1, 4, 30.0), max_chars_per_token=16)
        huge = [ChatMessage("user", "x" * 20_000_000)]
        with pytest.raises(PromptTooLongError, match="max_chars_per_token"):
            run(chat.complete(huge, GenerationParams(max_tokens=4)))
        with pytest.raises(PromptTooLongError, match="max_chars_per_token"):
            run(chat.open_stream(huge, GenerationParams(max_tokens=4)))
        assert counted == [] and chat.gate.busy == 0
        fits = [ChatMessage("user", "x" * (backend.context_length() * 16))]
        chat.check_size(fits)  # at the limit: left to the exact, tokenized check
    finally:
        del backend.count_prompt_tokens


COPY = [
    ChatMessage(
        "user",
        "Copy this sentence exactly: The old lighthouse on the northern cliff was rebuilt in "
        "1874 after a storm destroyed its lamp room.",
    )
]


def test_transformers_prompt_lookup_checks_copied_tokens_in_fewer_passes(
    live: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Prompt-lookup decoding (llm.prompt_lookup_tokens, on by default): an answer that copies
    the prompt takes fewer forward passes than it has tokens, since drafted tokens are checked
    several per pass; off, one pass per token. The real model's passes, counted by a hook."""
    llm = live.app.state.services.llm
    assert isinstance(llm, TransformersBackend) and llm.prompt_lookup_tokens > 0
    passes = 0

    def counted(*_: Any) -> None:
        nonlocal passes
        passes += 1

    # one call of the token embedding per forward pass of the model
    hook = llm.model.get_input_embeddings().register_forward_hook(counted)
    try:
        params = GenerationParams(max_tokens=40)
        looked = run(llm.complete(COPY, params))
        assert "lighthouse" in looked.text
        assert 0 < passes < looked.completion_tokens
        monkeypatch.setattr(llm, "prompt_lookup_tokens", 0)
        passes = 0
        plain = run(llm.complete(COPY, params))
    finally:
        hook.remove()
    assert passes == plain.completion_tokens
