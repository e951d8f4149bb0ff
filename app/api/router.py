"""All routers, one module per resource."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from app.api.deps import AuthDep
from app.api.errors import ERROR_RESPONSES
from app.api.routes import (
    chat,
    documents,
    embeddings,
    health,
    jobs,
    kb_chat,
    knowledge_bases,
    models,
    openapi,
)

api_router = APIRouter()
# every /v1 route: the API key, and the error statuses it may answer, declared in the spec
V1: dict[str, Any] = {"prefix": "/v1", "dependencies": [AuthDep], "responses": ERROR_RESPONSES}
api_router.include_router(health.router)
api_router.include_router(openapi.router, dependencies=[AuthDep])
api_router.include_router(models.router, **V1)
api_router.include_router(chat.router, **V1)
api_router.include_router(knowledge_bases.router, **V1)
api_router.include_router(kb_chat.router, **V1)
api_router.include_router(documents.router, **V1)
api_router.include_router(jobs.router, **V1)
api_router.include_router(embeddings.router, **V1)
