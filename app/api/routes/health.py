"""GET /health: no API key needed (load balancers)."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import ServicesDep, SettingsDep
from app.api.schemas.chat import Health

router = APIRouter(tags=["health"])


@router.get("/health", response_model=Health)
async def health(services: ServicesDep, settings: SettingsDep) -> Health:
    llm = services.llm
    wanted = settings.llm.backend != "none"
    return Health(
        status="ok" if (llm is not None) == wanted else "degraded",
        model_loaded=llm is not None,
        model=llm.name if llm else None,
        backend=getattr(llm, "kind", None) or settings.llm.backend,
        device=llm.device if llm else None,
        extra={
            "generating": getattr(llm, "active", None),
            "cancelled": getattr(llm, "cancelled", None),
            "slots_busy": services.chat.gate.busy if services.chat else 0,
            "waiting": services.chat.gate.waiting if services.chat else 0,
        },
    )
