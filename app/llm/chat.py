"""Plain chat: the LLM behind the bounded generation queue."""

from __future__ import annotations

from collections.abc import AsyncIterator

from app.llm.base import (
    BackendUnavailableError,
    ChatMessage,
    Completion,
    GenerationParams,
    LLMBackend,
    PromptTooLongError,
    StreamChunk,
)
from app.llm.gate import GenerationGate, Slot


class ChatService:
    def __init__(
        self, llm: LLMBackend | None, gate: GenerationGate, max_chars_per_token: int = 16
    ) -> None:
        self._llm = llm
        self.gate = gate
        self.max_chars_per_token = max_chars_per_token

    def check_size(self, messages: list[ChatMessage]) -> None:
        """Refuse messages that cannot fit the context window, by their characters alone
        (``llm.max_chars_per_token``), before any tokenizing."""
        context = self.llm.context_length()
        limit = context * self.max_chars_per_token
        size = sum(len(m.content) for m in messages)
        if size > limit:
            raise PromptTooLongError(
                f"the messages have {size} characters; the model's context window is {context} "
                f"tokens, which never holds more than {limit} characters "
                "(llm.max_chars_per_token); shorten them"
            )

    @property
    def llm(self) -> LLMBackend:
        if self._llm is None:
            raise BackendUnavailableError(
                "this service runs without an LLM (llm.backend=none); set KBQA_LLM__BACKEND"
            )
        return self._llm

    async def complete(
        self, messages: list[ChatMessage], params: GenerationParams, model: str | None = None
    ) -> Completion:
        self.check_size(messages)
        await self.llm.check(messages, params, model)
        slot = await self.gate.acquire()
        try:
            return await self.llm.complete(messages, params, model)
        finally:
            slot.release()

    async def open_stream(
        self, messages: list[ChatMessage], params: GenerationParams, model: str | None = None
    ) -> tuple[Slot, AsyncIterator[StreamChunk]]:
        """Check the request, take a slot and wait for the first chunk *before* the response
        starts, so errors keep their status: a remote server's refusal (prompt over its
        context, overloaded) arrives only when its stream opens. The caller releases the slot
        when the stream ends or is abandoned."""
        self.check_size(messages)
        await self.llm.check(messages, params, model)
        slot = await self.gate.acquire()
        pieces = aiter(self.llm.stream(messages, params, model))
        try:
            first = await anext(pieces)
        except StopAsyncIteration:
            slot.release()
            return slot, _empty()
        except BaseException:
            slot.release()
            await _aclose(pieces)
            raise
        return slot, self._stream(slot, first, pieces)

    async def _stream(
        self, slot: Slot, first: StreamChunk, pieces: AsyncIterator[StreamChunk]
    ) -> AsyncIterator[StreamChunk]:
        try:
            yield first
            async for chunk in pieces:
                yield chunk
        finally:
            await _aclose(pieces)
            slot.release()


async def _empty() -> AsyncIterator[StreamChunk]:
    return
    yield  # pragma: no cover - makes this an async generator


async def _aclose(pieces: AsyncIterator[StreamChunk]) -> None:
    close = getattr(pieces, "aclose", None)
    if close is not None:
        await close()
