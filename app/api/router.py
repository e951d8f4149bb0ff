"""All routers, one module per resource."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import AuthDep
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
api_router.include_router(health.router)
api_router.include_router(openapi.router, dependencies=[AuthDep])
api_router.include_router(models.router, prefix="/v1", dependencies=[AuthDep])
api_router.include_router(chat.router, prefix="/v1", dependencies=[AuthDep])
api_router.include_router(knowledge_bases.router, prefix="/v1", dependencies=[AuthDep])
api_router.include_router(kb_chat.router, prefix="/v1", dependencies=[AuthDep])
api_router.include_router(documents.router, prefix="/v1", dependencies=[AuthDep])
api_router.include_router(jobs.router, prefix="/v1", dependencies=[AuthDep])
api_router.include_router(embeddings.router, prefix="/v1", dependencies=[AuthDep])
