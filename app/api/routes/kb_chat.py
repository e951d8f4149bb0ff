"""POST /v1/knowledge_bases/{kb}/ask: a question over knowledge bases, in a plain JSON shape
(the machinery, shared with the RAG path of /v1/chat/completions, is app/api/kb_answers.py)."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import BaseModelDep, RagServiceDep, SettingsDep
from app.api.kb_answers import answer_usage, collect, prime
from app.api.params import generation_params, rag_options
from app.api.schemas.chat import AskRequest, AskResponse, Source, Timings
from app.llm.base import ChatMessage

router = APIRouter(tags=["knowledge-base answers"])


@router.post("/knowledge_bases/{kb}/ask", response_model=AskResponse)
async def ask(
    kb: str, body: AskRequest, rag: RagServiceDep, settings: SettingsDep, base_model: BaseModelDep
) -> AskResponse:
    """A question over a knowledge base (plus `knowledge_bases`), in a plain JSON shape."""
    history = [
        ChatMessage("user" if m.role == "user" else "assistant", m.text())
        for m in body.history
        if m.role in ("user", "assistant")
    ]
    events = await prime(
        rag.stream(
            body.question,
            [kb, *[k for k in body.knowledge_bases if k != kb]],
            history=history,
            options=rag_options(body),
            params=generation_params(body, settings, knowledge_base=True),
            model=body.model,
        )
    )
    answer = await collect(events, body.model or base_model)
    return AskResponse(
        answer=answer.answer,
        sources=[Source.of(p) for p in answer.sources],
        refused=answer.refused,
        grounded=answer.grounded,
        model=answer.model,
        finish_reason=answer.finish_reason,
        timings=Timings.model_validate(answer.timings),
        usage=answer_usage(answer),
    )
