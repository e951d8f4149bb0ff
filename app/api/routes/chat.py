"""POST /v1/chat/completions (OpenAI-compatible; stream or not): the plain model, or with
``knowledge_base`` an answer from knowledge bases (app/api/kb_answers.py)."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

from fastapi import APIRouter
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask

from app.api.deps import ServicesDep, SettingsDep, base_model, chat_service, rag_service
from app.api.kb_answers import kb_chat_completion
from app.api.params import generation_params
from app.api.schemas.chat import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatMessageOut,
    Choice,
    KBChatCompletionResponse,
    Usage,
)
from app.api.sse import HEADERS, Piece, chat_chunks, usage
from app.llm.base import ChatMessage, StreamChunk

router = APIRouter(tags=["chat"])


def to_messages(request: ChatCompletionRequest) -> list[ChatMessage]:
    out = []
    for message in request.messages:
        role = "system" if message.role == "developer" else message.role
        out.append(ChatMessage(role, message.text()))
    return out


async def chat_pieces(chunks: AsyncIterator[StreamChunk]) -> AsyncIterator[Piece]:
    """A backend's stream as chunk pieces (app/api/sse.py): the opening, then its text."""
    try:
        yield Piece(role=True)
        async for chunk in chunks:
            if chunk.text:
                yield Piece(chunk.text)
            if chunk.finish_reason is not None:
                extra = {"usage": usage(chunk.prompt_tokens, chunk.completion_tokens)}
                yield Piece(finish_reason=chunk.finish_reason, extra=extra)
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()


@router.post(
    "/chat/completions",
    response_model=KBChatCompletionResponse | ChatCompletionResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def chat_completions(
    request: ChatCompletionRequest, services: ServicesDep, settings: SettingsDep
) -> ChatCompletionResponse | StreamingResponse:
    # the chat service answers, or the RAG service when the request names a knowledge base
    # (each is a 503 only on its own path when this server does not run it); no docstring:
    # it would become the operation's description in the OpenAPI schema
    messages = to_messages(request)
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    if request.knowledge_base is not None:
        rag = rag_service(services)
        return await kb_chat_completion(
            request, messages, rag, base_model(services), settings, completion_id, created
        )
    chat = chat_service(services)
    params = generation_params(request, settings, knowledge_base=False)
    model_name = request.model or chat.llm.name
    if request.stream:
        slot, chunks = await chat.open_stream(messages, params, request.model)
        return StreamingResponse(
            chat_chunks(
                chat_pieces(chunks), completion_id, created, model_name, settings.llm.retry_after_s
            ),
            media_type="text/event-stream",
            headers=HEADERS,
            background=BackgroundTask(slot.release),
        )
    result = await chat.complete(messages, params, request.model)
    return ChatCompletionResponse(
        id=completion_id,
        created=created,
        model=model_name,
        choices=[
            Choice(message=ChatMessageOut(content=result.text), finish_reason=result.finish_reason)
        ],
        usage=Usage(**usage(result.prompt_tokens, result.completion_tokens)),
    )
