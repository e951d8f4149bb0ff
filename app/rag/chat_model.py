"""kbqa's LLM backends as a LangChain chat model.

``KbqaChatModel`` goes through a :class:`~app.llm.base.ChatGenerator` (the app's
:class:`~app.llm.chat.ChatService`), so a chain's generation waits in the same bounded queue
as every other request and holds one generation slot while it runs. Generation parameters
come from the instance and can be overridden per call with
``.bind(max_tokens=..., temperature=..., model=...)``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Annotated, Any

from langchain_core.callbacks import (
    AsyncCallbackManagerForLLMRun,
    CallbackManagerForLLMRun,
)
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import ConfigDict, Field, PlainValidator

from app.llm.base import ChatGenerator, ChatMessage, GenerationParams, LLMBackend

_ROLES = {"human": "user", "ai": "assistant", "system": "system"}


@dataclass
class GenerationStats:
    """What one generation reported: filled in while the chat model streams."""

    started: float = 0.0
    first_token: float | None = None
    finished: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None
    messages: list[ChatMessage] = field(default_factory=list)  # as sent
    text: str = ""  # as generated so far

    def cut(self, llm: LLMBackend) -> None:
        """Counts for a generation stopped before its last chunk (the consumer closed the
        stream: a loop cut short), which would have carried them: the prompt's from the chat
        template, the answer's from the text generated until then."""
        if not self.started or self.finish_reason is not None:
            return
        self.finish_reason = "stop"
        self.finished = self.finished or time.perf_counter()
        self.prompt_tokens = llm.count_prompt_tokens(self.messages)
        self.completion_tokens = llm.count_tokens(self.text)


def to_chat_messages(messages: list[BaseMessage]) -> list[ChatMessage]:
    out = []
    for message in messages:
        role = _ROLES.get(message.type)
        if role is None:
            raise ValueError(f"message type {message.type!r} is not supported by kbqa backends")
        out.append(ChatMessage(role, message.text))  # type: ignore[arg-type]
    return out


def _chat_generator(value: Any) -> ChatGenerator:
    """A protocol is not an ``isinstance`` target: check the method the model calls."""
    if not callable(getattr(value, "open_stream", None)):
        raise ValueError(
            f"chat must be a ChatGenerator (a ChatService), not {type(value).__name__}"
        )
    generator: ChatGenerator = value
    return generator


class KbqaChatModel(BaseChatModel):
    """A LangChain chat model over kbqa's chat service (transformers or openai backend)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    chat: Annotated[ChatGenerator, PlainValidator(_chat_generator)] = Field(
        description="The chat service (backend + generation queue)."
    )
    model: str | None = Field(None, description="Adapter name; None: the base model.")
    max_tokens: int = Field(256, ge=1)
    temperature: float = Field(0.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int | None = None
    stats: GenerationStats | None = Field(
        None, description="Filled with timings and token counts of the last generation."
    )

    @property
    def _llm_type(self) -> str:
        return "kbqa"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model": self.model or self.chat.llm.name, "temperature": self.temperature}

    def _params(self, stop: list[str] | None, kwargs: dict[str, Any]) -> GenerationParams:
        return GenerationParams(
            max_tokens=int(kwargs.get("max_tokens", self.max_tokens)),
            temperature=float(kwargs.get("temperature", self.temperature)),
            top_p=float(kwargs.get("top_p", self.top_p)),
            stop=list(stop or kwargs.get("stop") or []),
            seed=kwargs.get("seed", self.seed),
        )

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        stats = self.stats if self.stats is not None else GenerationStats()
        stats.started = time.perf_counter()
        model = kwargs.get("model", self.model)
        stats.messages = to_chat_messages(messages)
        slot, pieces = await self.chat.open_stream(
            stats.messages, self._params(stop, kwargs), model
        )
        try:
            async for piece in pieces:
                stats.text += piece.text
                if piece.text and stats.first_token is None:
                    stats.first_token = time.perf_counter()
                info: dict[str, Any] = {}
                usage = None
                if piece.finish_reason is not None:
                    stats.finish_reason = piece.finish_reason
                    stats.prompt_tokens = piece.prompt_tokens
                    stats.completion_tokens = piece.completion_tokens
                    info = {"finish_reason": piece.finish_reason}
                    usage = {
                        "input_tokens": piece.prompt_tokens,
                        "output_tokens": piece.completion_tokens,
                        "total_tokens": piece.prompt_tokens + piece.completion_tokens,
                    }
                message = AIMessageChunk(
                    content=piece.text,
                    response_metadata=info,
                    usage_metadata=usage,  # type: ignore[arg-type]
                )
                chunk = ChatGenerationChunk(message=message, generation_info=info or None)
                if run_manager is not None and piece.text:
                    await run_manager.on_llm_new_token(piece.text, chunk=chunk)
                yield chunk
        finally:
            stats.finished = time.perf_counter()
            await pieces.aclose()  # type: ignore[attr-defined]
            slot.release()

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        # one code path for streamed and whole answers: the text is the same by construction
        text: list[str] = []
        info: dict[str, Any] = {}
        usage = None
        async for chunk in self._astream(messages, stop, run_manager, **kwargs):
            text.append(chunk.text)
            if chunk.generation_info:
                info = chunk.generation_info
                usage = getattr(chunk.message, "usage_metadata", None)
        message = AIMessage(content="".join(text), response_metadata=info, usage_metadata=usage)
        return ChatResult(generations=[ChatGeneration(message=message, generation_info=info)])

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        """Synchronous use (outside an event loop): runs the async path to completion."""
        return asyncio.run(self._agenerate(messages, stop, None, **kwargs))

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        result = self._generate(messages, stop, run_manager, **kwargs)
        generation = result.generations[0]
        yield ChatGenerationChunk(
            message=AIMessageChunk(content=generation.message.text),
            generation_info=generation.generation_info,
        )
