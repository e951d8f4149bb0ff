"""Knowledge-base answers over HTTP: what /v1/chat/completions (with ``knowledge_base``) and
/knowledge_bases/{kb}/ask share. Route modules import this, never each other.

Streaming order (documented in the README): the first chunk (``delta.role``) carries
``sources``, ``refused`` and ``grounded``, before any token; the last chunk before
``data: [DONE]`` carries ``finish_reason``, ``usage`` and ``timings``. Every error a request
can hit (unknown knowledge base or model, overload, prompt too long) is raised before the
response starts, so it keeps its HTTP status: the answer is primed up to its first token
(``prime``) and the app's handlers give each domain error its status (app/api/errors.py).

Why not ``RagService.answer`` for the whole answers: the route primes the events itself (one
path for stream and non-stream), and ``answer`` names the model ``chat.llm.name``, which is a
503 on a server without an LLM, where ``answer_mode=passages`` answers with the model "kbqa".
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi.responses import StreamingResponse

from app.api.errors import APIError
from app.api.params import generation_params, rag_options
from app.api.schemas.chat import (
    ChatCompletionRequest,
    ChatMessageOut,
    Choice,
    KBChatCompletionResponse,
    Source,
    Timings,
    Usage,
)
from app.api.sse import HEADERS, Piece, chat_chunks, usage
from app.llm.base import ChatMessage
from app.services.rag import RagAnswer, RagEvent, RagService
from app.settings import Settings


def split_conversation(
    messages: list[ChatMessage],
) -> tuple[str, list[ChatMessage], str | None]:
    """(question, history, system prompt) of an OpenAI message list."""
    if not messages or messages[-1].role != "user":
        raise APIError(
            400,
            "with knowledge_base, the last message must be the user's question",
            code="invalid_messages",
            param="messages",
        )
    system = [m.content for m in messages[:-1] if m.role == "system"]
    history = [m for m in messages[:-1] if m.role != "system"]
    return messages[-1].content, history, "\n".join(system) if system else None


async def prime(events: AsyncIterator[RagEvent]) -> AsyncIterator[RagEvent]:
    """The answer's events, run up to its first token (or its end) before this returns, so
    its errors are raised while the HTTP status can still say so. ``RagService.stream``
    raises ``ValueError`` for a request it cannot answer (an empty question): 400."""
    head: list[RagEvent] = []
    try:
        while not head or head[-1].kind == "sources":
            head.append(await anext(events))
    except StopAsyncIteration:
        pass
    except ValueError as exc:
        raise APIError(400, str(exc), code="invalid_request") from exc
    return _replay(head, events)


async def _replay(head: list[RagEvent], events: AsyncIterator[RagEvent]) -> AsyncIterator[RagEvent]:
    """The primed events, then the rest of the answer; closing this closes the answer."""
    try:
        for event in head:
            yield event
        async for event in events:
            yield event
    finally:
        await events.aclose()  # type: ignore[attr-defined]


async def collect(events: AsyncIterator[RagEvent], model: str) -> RagAnswer:
    """A whole answer from its events (what ``RagService.answer`` does, on primed events)."""
    first = RagEvent("sources")
    done = RagEvent("done")
    pieces: list[str] = []
    async for event in events:
        if event.kind == "sources":
            first = event
        elif event.kind == "token":
            pieces.append(event.text)
        else:
            done = event
    return RagAnswer(
        answer="".join(pieces),
        sources=first.sources,
        refused=first.refused,
        grounded=first.grounded,
        finish_reason=done.finish_reason,
        model=model,
        timings=done.timings,
        prompt_tokens=done.prompt_tokens,
        completion_tokens=done.completion_tokens,
    )


def answer_usage(answer: RagAnswer) -> Usage:
    return Usage(**usage(answer.prompt_tokens, answer.completion_tokens))


async def kb_pieces(events: AsyncIterator[RagEvent]) -> AsyncIterator[Piece]:
    """The events of an answer as chunk pieces (app/api/sse.py)."""
    try:
        async for event in events:
            if event.kind == "sources":
                yield Piece(
                    role=True,
                    extra={
                        "sources": [p.to_dict() for p in event.sources],
                        "refused": event.refused,
                        "grounded": event.grounded,
                    },
                )
            elif event.kind == "token":
                yield Piece(event.text)
            else:
                extra = {
                    "usage": usage(event.prompt_tokens, event.completion_tokens),
                    "timings": event.timings,
                }
                yield Piece(finish_reason=event.finish_reason, extra=extra)
    finally:
        await events.aclose()  # type: ignore[attr-defined]


async def kb_chat_completion(
    request: ChatCompletionRequest,
    messages: list[ChatMessage],
    rag: RagService,
    base_model: str,
    settings: Settings,
    completion_id: str,
    created: int,
) -> KBChatCompletionResponse | StreamingResponse:
    """/v1/chat/completions with ``knowledge_base``: streamed as chunks, or whole."""
    knowledge_bases = request.knowledge_bases()
    if not knowledge_bases:
        raise APIError(400, "knowledge_base is empty", param="knowledge_base")
    question, history, system = split_conversation(messages)
    events = await prime(
        rag.stream(
            question,
            knowledge_bases,
            history=history,
            options=rag_options(request),
            params=generation_params(request, settings, knowledge_base=True),
            model=request.model,
            system_prompt=system,
        )
    )
    model_name = request.model or base_model
    if request.stream:
        return StreamingResponse(
            chat_chunks(
                kb_pieces(events), completion_id, created, model_name, settings.llm.retry_after_s
            ),
            media_type="text/event-stream",
            headers=HEADERS,
        )
    answer = await collect(events, model_name)
    return KBChatCompletionResponse(
        id=completion_id,
        created=created,
        model=answer.model,
        choices=[
            Choice(
                message=ChatMessageOut(content=answer.answer),
                finish_reason=answer.finish_reason,  # type: ignore[arg-type]
            )
        ],
        usage=answer_usage(answer),
        sources=[Source.of(p) for p in answer.sources],
        refused=answer.refused,
        grounded=answer.grounded,
        timings=Timings.model_validate(answer.timings),
    )
