"""HTTP server settings."""

from __future__ import annotations

from pydantic import Field

from app.settings.base import Section


class ServerSettings(Section):
    host: str = Field("127.0.0.1", description="Interface to bind; 0.0.0.0 exposes the service.")
    port: int = Field(8000, ge=1, le=65535, description="TCP port.")
    log_level: str = Field("info", description="Log level (debug, info, warning, error).")
    cors_origins: list[str] = Field(
        default_factory=list,
        description="Origins allowed by CORS (empty: same origin only). These are also the "
        "only other sites whose pages may change data (POST, PUT, PATCH, DELETE) through a "
        "visitor's browser: any other `Origin` is refused with 403 (requests without an "
        "Origin, e.g. curl and SDKs, are not affected).",
    )
    max_body_bytes: int = Field(
        8 * 1024 * 1024,
        ge=1024,
        description="Largest request body of every route but uploads (bytes): a declared "
        "Content-Length over it is refused (413) before the body is read, a chunked body as "
        "soon as it passes it. 8 MiB holds any chat or embedding request within the other "
        "limits.",
    )
    max_upload_bytes: int = Field(
        512 * 1024 * 1024,
        ge=1024,
        description="Largest multipart (upload) request body (bytes), all files together; each "
        "file is also held to `ingest.max_file_bytes`.",
    )
    web: bool = Field(
        True,
        description="Serve the web page (chat with sources, knowledge bases, uploads) at `/`. "
        "The page is static; its API calls need the API key like any other client.",
    )
