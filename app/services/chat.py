"""Plain chat: the LLM behind the bounded generation queue."""

from __future__ import annotations

from collections.abc import AsyncIterator

from app.llm.base import (
    BackendUnavailableError,
    ChatMessage,
    Completion,
    GenerationParams,
    LLMBackend,
    StreamChunk,
)
from app.services.gate import GenerationGate, Slot


class ChatService:
    def __init__(self, llm: LLMBackend | None, gate: GenerationGate) -> None:
        self._llm = llm
        self.gate = gate

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
        await self.llm.check(messages, params, model)
        slot = await self.gate.acquire()
        try:
            return await self.llm.complete(messages, params, model)
        finally:
            slot.release()

    async def open_stream(
        self, messages: list[ChatMessage], params: GenerationParams, model: str | None = None
    ) -> tuple[Slot, AsyncIterator[StreamChunk]]:
        """Check the request and take a slot *before* the response starts, so errors keep
        their status; the caller releases the slot when the stream ends or is abandoned."""
        await self.llm.check(messages, params, model)
        slot = await self.gate.acquire()
        return slot, self._stream(slot, messages, params, model)

    async def _stream(
        self,
        slot: Slot,
        messages: list[ChatMessage],
        params: GenerationParams,
        model: str | None,
    ) -> AsyncIterator[StreamChunk]:
        try:
            async for chunk in self.llm.stream(messages, params, model):
                yield chunk
        finally:
            slot.release()
