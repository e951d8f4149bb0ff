"""The one interface every LLM backend implements (transformers in-process, openai remote)."""

from __future__ import annotations

import abc
import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Literal, Protocol


class LLMError(Exception):
    """Base of the errors a backend raises; the API maps each to a status."""


class ModelNotFoundError(LLMError):
    """The requested model (or adapter) name is not served here."""


class PromptTooLongError(LLMError):
    """Prompt plus answer budget exceed the model's context window."""


class OverloadedError(LLMError):
    """No generation slot became free in time, or the wait queue is full."""


class BackendUnavailableError(LLMError):
    """The backend cannot answer (remote server down, model failed to load)."""


@dataclass
class ChatMessage:
    role: Literal["system", "user", "assistant"]
    content: str


@dataclass
class GenerationParams:
    max_tokens: int = 256
    temperature: float = 0.0  # 0 = greedy decoding
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None


@dataclass
class Completion:
    text: str
    finish_reason: Literal["stop", "length"]
    prompt_tokens: int
    completion_tokens: int


@dataclass
class StreamChunk:
    """A piece of a streamed answer; the last one carries finish_reason and the counts."""

    text: str
    finish_reason: Literal["stop", "length"] | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class ModelInfo:
    id: str
    owned_by: str = "kbqa"
    parent: str | None = None  # the base model of an adapter


class LLMBackend(abc.ABC):
    """A chat LLM. Implementations must never block the event loop."""

    #: name of the base model as listed by /v1/models
    name: str
    #: where it runs (cuda, mps, cpu, or the remote URL)
    device: str
    #: which backend this is (transformers, llamacpp, openai)
    kind: str = "llm"

    @abc.abstractmethod
    def models(self) -> list[ModelInfo]:
        """The base model first, then each loaded adapter."""

    @abc.abstractmethod
    def context_length(self) -> int:
        """Context window in tokens."""

    @abc.abstractmethod
    def count_tokens(self, text: str) -> int:
        """Tokens of a plain text in the model's own tokenizer (an estimate for remote ones)."""

    def count_prompt_tokens(self, messages: list[ChatMessage]) -> int:
        """Tokens of ``messages`` as the model sees them, chat template included. This
        default estimates the template's cost per message; local backends render it."""
        return sum(self.count_tokens(m.content) + 4 for m in messages) + 3

    @abc.abstractmethod
    async def complete(
        self, messages: list[ChatMessage], params: GenerationParams, model: str | None = None
    ) -> Completion:
        """The whole answer."""

    @abc.abstractmethod
    def stream(
        self, messages: list[ChatMessage], params: GenerationParams, model: str | None = None
    ) -> AsyncIterator[StreamChunk]:
        """The answer piece by piece; closing the iterator stops the generation."""

    async def check(
        self, messages: list[ChatMessage], params: GenerationParams, model: str | None = None
    ) -> None:
        """Raise the errors a request would hit (unknown model, prompt too long) before any
        response is started; backends that cannot tell cheaply only check the model name."""
        self.resolve_model(model)

    def resolve_model(self, model: str | None) -> str | None:
        """Map a requested model name to an adapter name (None = base); raise if unknown."""
        if model is None or model == self.name:
            return None
        known = {info.id for info in self.models()}
        if model not in known:
            raise ModelNotFoundError(
                f"model {model!r} is not served here; available: {sorted(known)}"
            )
        return model

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources."""


class Releasable(Protocol):
    """Something held until given back, such as a generation slot; ``release`` is idempotent."""

    def release(self) -> None: ...


class ChatGenerator(Protocol):
    """What generating over a backend takes: the backend, and a stream that holds a generation
    slot while it runs. :class:`app.llm.chat.ChatService` is the implementation; the RAG chat
    model (``app.rag.chat_model``) takes this, so it needs nothing above this layer."""

    @property
    def llm(self) -> LLMBackend: ...

    async def open_stream(
        self, messages: list[ChatMessage], params: GenerationParams, model: str | None = None
    ) -> tuple[Releasable, AsyncIterator[StreamChunk]]: ...


class InProcessBackend(LLMBackend):
    """A backend whose generation runs in its own worker threads (transformers, llama.cpp):
    ``_generate`` produces the answer synchronously, calling ``emit`` with each piece of text
    and stopping soon after ``cancel`` is set; this class bridges it to the event loop."""

    _executor: ThreadPoolExecutor

    @abc.abstractmethod
    def _generate(
        self,
        messages: list[ChatMessage],
        params: GenerationParams,
        model: str | None,
        emit: Callable[[str], None],
        cancel: threading.Event,
    ) -> StreamChunk:
        """Generate, emitting text; return the final chunk (finish reason and counts)."""

    async def complete(
        self, messages: list[ChatMessage], params: GenerationParams, model: str | None = None
    ) -> Completion:
        parts: list[str] = []
        last = StreamChunk("")
        async for chunk in self.stream(messages, params, model):
            parts.append(chunk.text)
            last = chunk
        return Completion(
            "".join(parts), last.finish_reason or "stop", last.prompt_tokens, last.completion_tokens
        )

    async def stream(
        self, messages: list[ChatMessage], params: GenerationParams, model: str | None = None
    ) -> AsyncIterator[StreamChunk]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[StreamChunk | BaseException] = asyncio.Queue()
        cancel = threading.Event()

        def emit(text: str) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, StreamChunk(text))

        def work() -> None:
            try:
                final = self._generate(messages, params, model, emit, cancel)
                loop.call_soon_threadsafe(queue.put_nowait, final)
            except BaseException as exc:
                loop.call_soon_threadsafe(queue.put_nowait, exc)

        future = loop.run_in_executor(self._executor, work)
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finish_reason is not None:
                    break
        finally:
            cancel.set()  # a consumer that stops early (client gone) stops the generation
            if future.done():
                future.exception()

    def generate_text(
        self, messages: list[ChatMessage], params: GenerationParams, model: str | None = None
    ) -> Completion:
        """Synchronous whole answer (CLI, finetune checks, eval in-process)."""
        parts: list[str] = []
        final = self._generate(messages, params, model, parts.append, threading.Event())
        return Completion(
            "".join(parts),
            final.finish_reason or "stop",
            final.prompt_tokens,
            final.completion_tokens,
        )

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
