"""POST /v1/chat/completions (OpenAI-compatible; stream or not)."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask

from app.api.deps import ServicesDep, SettingsDep
from app.api.errors import APIError, error_body, from_llm_error
from app.api.kb_answers import kb_chat_completion
from app.api.schemas.chat import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatMessageOut,
    Choice,
    KBChatCompletionResponse,
    Usage,
)
from app.api.sse import sse
from app.llm.base import ChatMessage, GenerationParams, LLMError, StreamChunk
from app.llm.chat import ChatService
from app.settings import Settings

router = APIRouter(tags=["chat"])
logger = logging.getLogger(__name__)


def to_messages(request: ChatCompletionRequest) -> list[ChatMessage]:
    out = []
    for message in request.messages:
        role = "system" if message.role == "developer" else message.role
        out.append(ChatMessage(role, message.text()))
    return out


def to_params(request: ChatCompletionRequest, settings: Settings) -> GenerationParams:
    max_tokens = request.max_tokens or request.max_completion_tokens or settings.llm.max_new_tokens
    if max_tokens > settings.llm.max_new_tokens_limit:
        raise APIError(
            400,
            f"max_tokens {max_tokens} is over this server's limit of "
            f"{settings.llm.max_new_tokens_limit}",
            code="max_tokens_too_large",
            param="max_tokens",
        )
    return GenerationParams(
        max_tokens=max_tokens,
        temperature=request.temperature or 0.0,
        top_p=request.top_p if request.top_p is not None else 1.0,
        stop=request.stop_list(),
        seed=request.seed,
    )


def chat_service(services: Any) -> ChatService:
    if services.chat is None:
        raise APIError(503, "chat is not available on this server", code="backend_unavailable")
    chat: ChatService = services.chat
    return chat


@router.post(
    "/chat/completions",
    response_model=KBChatCompletionResponse | ChatCompletionResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def chat_completions(
    request: ChatCompletionRequest, services: ServicesDep, settings: SettingsDep
) -> Any:
    messages = to_messages(request)
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    if request.knowledge_base is not None:
        return await kb_chat_completion(
            request, messages, services, settings, completion_id, created
        )
    chat = chat_service(services)
    params = to_params(request, settings)
    model_name = request.model or chat.llm.name
    if not request.stream:
        result = await chat.complete(messages, params, request.model)
        return ChatCompletionResponse(
            id=completion_id,
            created=created,
            model=model_name,
            choices=[
                Choice(
                    message=ChatMessageOut(content=result.text), finish_reason=result.finish_reason
                )
            ],
            usage=Usage(
                prompt_tokens=result.prompt_tokens,
                completion_tokens=result.completion_tokens,
                total_tokens=result.prompt_tokens + result.completion_tokens,
            ),
        )
    slot, chunks = await chat.open_stream(messages, params, request.model)
    return StreamingResponse(
        sse_chunks(chunks, completion_id, created, model_name, settings.llm.retry_after_s),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        background=BackgroundTask(slot.release),
    )


async def sse_chunks(
    chunks: AsyncIterator[StreamChunk],
    completion_id: str,
    created: int,
    model: str,
    retry_after_s: int = 5,
    extra_first: dict[str, Any] | None = None,
) -> AsyncIterator[str]:
    """OpenAI chunk objects as SSE, then ``data: [DONE]``; an error mid-stream becomes an
    error event (the status line is already sent)."""
    base = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
    }
    first = {
        **base,
        "choices": [
            {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
        ],
    }
    if extra_first:
        first.update(extra_first)
    yield sse(first)
    try:
        async for chunk in chunks:
            if chunk.text:
                yield sse(
                    {
                        **base,
                        "choices": [
                            {"index": 0, "delta": {"content": chunk.text}, "finish_reason": None}
                        ],
                    }
                )
            if chunk.finish_reason is not None:
                usage = {
                    "prompt_tokens": chunk.prompt_tokens,
                    "completion_tokens": chunk.completion_tokens,
                    "total_tokens": chunk.prompt_tokens + chunk.completion_tokens,
                }
                yield sse(
                    {
                        **base,
                        "choices": [
                            {"index": 0, "delta": {}, "finish_reason": chunk.finish_reason}
                        ],
                        "usage": usage,
                    }
                )
    except LLMError as exc:
        err = from_llm_error(exc, retry_after_s)
        logger.warning("event=stream_error status=%s error=%s", err.status_code, err.message)
        yield sse(error_body(err.message, err.type, err.code))
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()
    yield "data: [DONE]\n\n"
