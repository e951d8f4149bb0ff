"""GET /openapi.json behind the API key (like every route but /health).

FastAPI's own /docs and /redoc are off: they load Swagger UI and ReDoc from a CDN (which fails
offline and breaks the no-external-requests rule of the web page), and they would have shown
the API to anyone without a key. Load the spec into a local tool instead
(`curl -H "Authorization: Bearer $KEY" http://127.0.0.1:8000/openapi.json`).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

router = APIRouter()


@router.get("/openapi.json", include_in_schema=False)
def openapi(request: Request) -> dict[str, Any]:
    spec: dict[str, Any] = request.app.openapi()
    return spec
