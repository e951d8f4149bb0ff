"""Request -> service parameters: the one builder of ``GenerationParams`` and ``RagOptions``
for /v1/chat/completions (plain or with ``knowledge_base``) and /knowledge_bases/{kb}/ask."""

from __future__ import annotations

from app.api.errors import APIError
from app.api.schemas.chat import AskRequest, ChatCompletionRequest, RagFields
from app.llm.base import GenerationParams
from app.services.rag import RagOptions
from app.settings import Settings


def generation_params(
    request: ChatCompletionRequest | AskRequest, settings: Settings, *, knowledge_base: bool
) -> GenerationParams:
    """The request's sampling knobs, with the server's defaults and its token limit.

    The answer budget is the request's ``max_tokens`` (or ``max_completion_tokens``), else
    ``rag.max_tokens`` for a knowledge-base answer, else ``llm.max_new_tokens``; over
    ``llm.max_new_tokens_limit`` it is a 400. /ask has no ``top_p`` or ``stop``."""
    chat = request if isinstance(request, ChatCompletionRequest) else None
    asked = request.max_tokens or (chat.max_completion_tokens if chat else None)
    default = settings.rag.max_tokens if knowledge_base else None
    budget = asked or default or settings.llm.max_new_tokens
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
        temperature=request.temperature or 0.0,
        top_p=chat.top_p if chat is not None and chat.top_p is not None else 1.0,
        stop=chat.stop_list() if chat is not None else [],
        seed=request.seed,
    )


def rag_options(request: RagFields) -> RagOptions:
    """The knowledge-base knobs of a request (both request shapes compose ``RagFields``)."""
    return RagOptions(
        top_k=request.top_k,
        score_threshold=request.score_threshold,
        search_mode=request.search_mode,
        answer_mode=request.answer_mode,
        return_sources=request.return_sources,
    )
