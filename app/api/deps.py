"""FastAPI dependencies as ``Annotated`` aliases; tests override them with
``app.dependency_overrides``."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Request

from app.api.errors import APIError
from app.services.container import Services
from app.settings import Settings
from ingest.service import KnowledgeBaseService


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def kb_service(services: Services) -> KnowledgeBaseService:
    if services.kb is None:
        raise APIError(
            503,
            "knowledge bases are not enabled in this service",
            type="api_error",
            code="kb_disabled",
        )
    return services.kb


SettingsDep = Annotated[Settings, Depends(get_settings)]
ServicesDep = Annotated[Services, Depends(get_services)]


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
