"""FastAPI dependencies as ``Annotated`` aliases (the pattern of full-stack-fastapi-template's
``api/deps.py``).

A route names the service it needs (``KbServiceDep``, ``RagServiceDep``) and gets it typed;
the dependency itself answers 503 when this server does not run that service, so no route
null-checks ``Services``. The plain functions behind them (``kb_service``, ``rag_service``,
``chat_service``) take the ``Services`` too, for the one route that needs a service only on
one of its paths (/v1/chat/completions: the chat service for a plain answer, the RAG service
with ``knowledge_base``).

Tests replace any of them with ``app.dependency_overrides[get_services] = ...`` (or
``[kb_service]``, ...) instead of building real services (tests/app/test_api_routes.py).
"""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Request

from app.api.errors import APIError
from app.llm.chat import ChatService
from app.rag.search import KnowledgeBaseSearch
from app.services.container import Services
from app.services.rag import RagService
from app.settings import Settings
from ingest.service import KnowledgeBaseService


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


SettingsDep = Annotated[Settings, Depends(get_settings)]
ServicesDep = Annotated[Services, Depends(get_services)]


def kb_service(services: ServicesDep) -> KnowledgeBaseService:
    """The knowledge-base service; 503 when this server runs none."""
    if services.kb is None:
        raise APIError(
            503,
            "knowledge bases are not enabled in this service",
            type="api_error",
            code="kb_disabled",
        )
    return services.kb


def rag_service(services: ServicesDep) -> RagService:
    """The knowledge-base answer service; 503 when this server runs none."""
    if services.rag is None:
        raise APIError(
            503, "knowledge-base answers are not enabled on this server", code="rag_disabled"
        )
    return services.rag


def chat_service(services: ServicesDep) -> ChatService:
    """The chat service (generation gate + backend); 503 when this server runs none. A chat
    service without an LLM (llm.backend=none) is still returned: its own error says why."""
    if services.chat is None:
        raise APIError(503, "chat is not available on this server", code="backend_unavailable")
    return services.chat


def base_model(services: ServicesDep) -> str:
    """The name an answer is labelled with when the request names no model ("kbqa" on a
    server without an LLM, whose knowledge-base answers are passages)."""
    return services.llm.name if services.llm else "kbqa"


KbServiceDep = Annotated[KnowledgeBaseService, Depends(kb_service)]
RagServiceDep = Annotated[RagService, Depends(rag_service)]


def search_service(kb: KbServiceDep) -> KnowledgeBaseSearch:
    """Search over the knowledge-base service's stores; 503 when this server runs none."""
    return KnowledgeBaseSearch(kb)


SearchDep = Annotated[KnowledgeBaseSearch, Depends(search_service)]
BaseModelDep = Annotated[str, Depends(base_model)]


def require_api_key(request: Request, settings: SettingsDep) -> None:
    """Every route but /health needs ``Authorization: Bearer <key>`` when keys are set."""
    if not settings.api_keys:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise APIError(
            401,
            "missing API key: send `Authorization: Bearer <key>`",
            type="authentication_error",
            code="missing_api_key",
        )
    given = token.strip().encode()
    ok = False
    for key in settings.api_keys:
        # compare against every key so timing does not reveal which one matched
        ok |= secrets.compare_digest(given, key.get_secret_value().encode())
    if not ok:
        raise APIError(401, "invalid API key", type="authentication_error", code="invalid_api_key")


AuthDep = Depends(require_api_key)
