"""Knowledge-base answers over HTTP: what /v1/chat/completions (with ``knowledge_base``) and
/knowledge_bases/{kb}/ask share. Route modules import this, never each other.

Streaming order (documented in the README): the first chunk (``delta.role``) carries
``sources``, ``refused`` and ``grounded``, before any token; the last chunk before
``data: [DONE]`` carries ``finish_reason``, ``usage`` and ``timings``. Every error a request
can hit (unknown knowledge base or model, overload, prompt too long) is raised before the
response starts, so it keeps its HTTP status: the stream is primed up to its first token.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi.responses import StreamingResponse

from app.api.errors import APIError, api_error, error_body, from_llm_error
from app.api.schemas.chat import (
    AskRequest,
    ChatCompletionRequest,
    ChatMessageOut,
    Choice,
    KBChatCompletionResponse,
    Usage,
)
from app.api.sse import sse
from app.llm.base import ChatMessage, GenerationParams, LLMError
from app.services.container import Services
from app.services.rag import RagEvent, RagOptions, RagService
from app.settings import Settings
from ingest.errors import IngestError

# the name it logged under as part of the route module (log lines stay the same)
logger = logging.getLogger("app.api.routes.kb_chat")


def rag_service(services: Services) -> RagService:
    if services.rag is None:
        raise APIError(
            503, "knowledge-base answers are not enabled on this server", code="rag_disabled"
        )
    return services.rag


def rag_options(body: ChatCompletionRequest | AskRequest) -> RagOptions:
    """The knowledge-base knobs of a request (both request shapes name them alike)."""
    return RagOptions(
        top_k=body.top_k,
        score_threshold=body.score_threshold,
        search_mode=body.search_mode,
        answer_mode=body.answer_mode,
        return_sources=body.return_sources,
    )


def kb_params(
    max_tokens: int | None,
    temperature: float | None,
    top_p: float | None,
    stop: list[str],
    seed: int | None,
    settings: Settings,
) -> GenerationParams:
    budget = max_tokens or settings.rag.max_tokens or settings.llm.max_new_tokens
    if budget > settings.llm.max_new_tokens_limit:
        raise APIError(
            400,
            f"max_tokens {budget} is over this server's limit of "
            f"{settings.llm.max_new_tokens_limit}",
            code="max_tokens_too_large",
            param="max_tokens",
        )
    return GenerationParams(
        max_tokens=budget,
        temperature=temperature or 0.0,
        top_p=top_p if top_p is not None else 1.0,
        stop=stop,
        seed=seed,
    )


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


async def prime(events: AsyncIterator[RagEvent]) -> list[RagEvent]:
    """Run the answer up to its first token (or its end); errors keep their status."""
    head: list[RagEvent] = []
    try:
        while not head or head[-1].kind == "sources":
            head.append(await anext(events))
    except StopAsyncIteration:
        pass
    except IngestError as exc:
        raise api_error(exc) from exc
    except ValueError as exc:
        raise APIError(400, str(exc), code="invalid_request") from exc
    return head


async def replay(head: list[RagEvent], events: AsyncIterator[RagEvent]) -> AsyncIterator[RagEvent]:
    """The primed events, then the rest of the answer."""
    for event in head:
        yield event
    async for event in events:
        yield event


async def kb_sse(
    head: list[RagEvent],
    events: AsyncIterator[RagEvent],
    completion_id: str,
    created: int,
    model: str,
    retry_after_s: int,
) -> AsyncIterator[str]:
    base = {"id": completion_id, "object": "chat.completion.chunk", "created": created}
    base["model"] = model

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return sse({**base, "choices": [choice], **extra})

    try:
        async for event in replay(head, events):
            if event.kind == "sources":
                yield chunk(
                    {"role": "assistant", "content": ""},
                    sources=event.sources,
                    refused=event.refused,
                    grounded=event.grounded,
                )
            elif event.kind == "token":
                yield chunk({"content": event.text})
            else:
                usage = {
                    "prompt_tokens": event.prompt_tokens,
                    "completion_tokens": event.completion_tokens,
                    "total_tokens": event.prompt_tokens + event.completion_tokens,
                }
                yield chunk({}, event.finish_reason, usage=usage, timings=event.timings)
    except LLMError as exc:
        err = from_llm_error(exc, retry_after_s)
        logger.warning("event=stream_error status=%s error=%s", err.status_code, err.message)
        yield sse(error_body(err.message, err.type, err.code))
    finally:
        await events.aclose()  # type: ignore[attr-defined]
    yield "data: [DONE]\n\n"


async def kb_chat_completion(
    request: ChatCompletionRequest,
    messages: list[ChatMessage],
    services: Services,
    settings: Settings,
    completion_id: str,
    created: int,
) -> Any:
    rag = rag_service(services)
    knowledge_bases = request.knowledge_bases()
    if not knowledge_bases:
        raise APIError(400, "knowledge_base is empty", param="knowledge_base")
    question, history, system = split_conversation(messages)
    params = kb_params(
        request.max_tokens or request.max_completion_tokens,
        request.temperature,
        request.top_p,
        request.stop_list(),
        request.seed,
        settings,
    )
    options = rag_options(request)
    events = rag.stream(
        question,
        knowledge_bases,
        history=history,
        options=options,
        params=params,
        model=request.model,
        system_prompt=system,
    )
    head = await prime(events)
    model_name = request.model or (services.llm.name if services.llm else "kbqa")
    if request.stream:
        return StreamingResponse(
            kb_sse(head, events, completion_id, created, model_name, settings.llm.retry_after_s),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    answer = await collect(head, events)
    return KBChatCompletionResponse(
        id=completion_id,
        created=created,
        model=model_name,
        choices=[Choice(message=ChatMessageOut(content=answer.text), finish_reason=answer.finish)],
        usage=answer.usage,
        sources=answer.sources,  # type: ignore[arg-type]
        refused=answer.refused,
        grounded=answer.grounded,
        timings=answer.timings,  # type: ignore[arg-type]
    )


class _Collected:
    def __init__(self) -> None:
        self.text = ""
        self.sources: list[dict[str, Any]] = []
        self.refused = False
        self.grounded = True
        self.finish: Any = "stop"
        self.usage = Usage(prompt_tokens=0, completion_tokens=0, total_tokens=0)
        self.timings: dict[str, float] = {}


async def collect(head: list[RagEvent], events: AsyncIterator[RagEvent]) -> _Collected:
    out = _Collected()
    pieces: list[str] = []

    async for event in replay(head, events):
        if event.kind == "sources":
            out.sources, out.refused, out.grounded = event.sources, event.refused, event.grounded
        elif event.kind == "token":
            pieces.append(event.text)
        else:
            out.finish = event.finish_reason
            out.timings = event.timings
            out.usage = Usage(
                prompt_tokens=event.prompt_tokens,
                completion_tokens=event.completion_tokens,
                total_tokens=event.prompt_tokens + event.completion_tokens,
            )
    out.text = "".join(pieces)
    return out
