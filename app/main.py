"""The FastAPI app factory. Models load in the lifespan handler, never at import time."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from app.api.errors import install_error_handlers
from app.api.limits import BodyLimitMiddleware
from app.api.origin import SameOriginWritesMiddleware
from app.api.router import api_router
from app.api.routes import web
from app.services.container import Services
from app.settings import Settings, load_settings

logger = logging.getLogger(__name__)


def create_app(
    settings: Settings | None = None,
    *,
    services_factory: Callable[[Settings], Services] | None = None,
) -> FastAPI:
    """Build the app. ``services_factory`` lets tests decide what loads."""
    settings = settings or load_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if services_factory is not None:
            services = services_factory(settings)
        else:
            from app.services.factory import build_services

            services = await build_services(settings)
        app.state.services = services
        logger.info("event=started host=%s port=%s", settings.server.host, settings.server.port)
        try:
            yield
        finally:
            services.close()
            logger.info("event=stopped")

    app = FastAPI(
        title="kbqa",
        version="0.1.0",
        description="Knowledge-base QA with an OpenAI-compatible API.",
        lifespan=lifespan,
        # no CDN-loaded /docs or /redoc; /openapi.json is a route behind the API key
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.settings = settings
    if settings.server.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.server.cors_origins,
            allow_methods=["*"],
            allow_headers=["*"],
        )
    # outermost: a body over the limit is refused before anything reads it
    app.add_middleware(
        BodyLimitMiddleware,
        max_body_bytes=settings.server.max_body_bytes,
        max_upload_bytes=settings.server.max_upload_bytes,
    )
    # outermost: a browser's write from another site is refused before anything else
    app.add_middleware(SameOriginWritesMiddleware, allowed_origins=settings.server.cors_origins)
    install_error_handlers(app)
    app.include_router(api_router)
    if settings.server.web:
        app.include_router(web.router)
    return app
