"""GET /v1/models: the base model and each loaded adapter."""

from __future__ import annotations

import time

from fastapi import APIRouter

from app.api.deps import ServicesDep
from app.api.schemas.chat import ModelCard, ModelList

router = APIRouter(tags=["models"])
_STARTED = int(time.time())


@router.get("/models", response_model=ModelList)
async def list_models(services: ServicesDep) -> ModelList:
    infos = services.llm.models() if services.llm else []
    return ModelList(
        data=[
            ModelCard(id=i.id, created=_STARTED, owned_by=i.owned_by, parent=i.parent)
            for i in infos
        ]
    )
