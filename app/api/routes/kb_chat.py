"""POST /v1/knowledge_bases/{kb}/ask: a question over knowledge bases, in a plain JSON shape
(the machinery, shared with the RAG path of /v1/chat/completions, is app/api/kb_answers.py)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from app.api.deps import ServicesDep, SettingsDep
from app.api.kb_answers import collect, kb_params, prime, rag_options, rag_service
from app.api.schemas.chat import AskRequest, AskResponse
from app.llm.base import ChatMessage

router = APIRouter(tags=["knowledge-base answers"])


@router.post("/knowledge_bases/{kb}/ask", response_model=AskResponse)
async def ask(kb: str, body: AskRequest, services: ServicesDep, settings: SettingsDep) -> Any:
    """A question over a knowledge base (plus `knowledge_bases`), in a plain JSON shape."""
    rag = rag_service(services)
    history = [
        ChatMessage("user" if m.role == "user" else "assistant", m.text())
        for m in body.history
        if m.role in ("user", "assistant")
    ]
    params = kb_params(body.max_tokens, body.temperature, None, [], body.seed, settings)
    options = rag_options(body)
    events = rag.stream(
        body.question,
        [kb, *[k for k in body.knowledge_bases if k != kb]],
        history=history,
        options=options,
        params=params,
        model=body.model,
    )
    head = await prime(events)
    answer = await collect(head, events)
    return AskResponse(
        answer=answer.text,
        sources=answer.sources,  # type: ignore[arg-type]
        refused=answer.refused,
        grounded=answer.grounded,
        model=body.model or (services.llm.name if services.llm else "kbqa"),
        finish_reason=answer.finish,
        timings=answer.timings,  # type: ignore[arg-type]
        usage=answer.usage,
    )
