"""Errors in OpenAI's shape: ``{"error": {"message", "type", "code", "param"}}`` with the right
status.

The one place a domain error gets its HTTP status: services raise their own errors
(``LLMError`` from app.llm, ``IngestError`` from ingest) and the handlers installed here map
each family to its status and body, so routes never translate them. ``APIError`` is for what
only the HTTP layer knows (a missing API key, a service this server does not run, a request
field out of the server's limits).

Statuses: LLM errors: unknown model 404, prompt too long 413, queue full 503 (server_busy),
backend unavailable 503, anything else 500. Ingest errors: not found 404, conflict 409,
unsupported file type 415, file too large 413, invalid name 400, unreadable document 422,
anything else 400.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.llm.base import (
    BackendUnavailableError,
    LLMError,
    ModelNotFoundError,
    OverloadedError,
    PromptTooLongError,
)
from ingest.errors import (
    CatalogUnavailableError,
    ConflictError,
    DocumentError,
    FileTooLargeError,
    IngestError,
    InputTooLargeError,
    InvalidNameError,
    NotFoundError,
    RequestCancelledError,
    UnsupportedTypeError,
)

logger = logging.getLogger(__name__)


class APIError(Exception):
    """An error the HTTP layer raises itself; domain errors have their own handlers below."""

    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = headers


class ErrorDetail(BaseModel):
    message: str
    type: str
    code: str | None = None
    param: str | None = None


class ErrorResponse(BaseModel):
    """Every error of the API: OpenAI's shape."""

    error: ErrorDetail


_DECLARED = {
    400: "Bad request: a value the service cannot use (the message says which).",
    401: "Missing or invalid API key (`Authorization: Bearer <key>`).",
    403: "A browser's write from another site (`Origin` not allowed).",
    404: "Unknown knowledge base, document, job or model.",
    409: "Already exists, or a knowledge base built with another embedding model.",
    413: "Over a limit: request body, file, inputs, characters, context window.",
    415: "A file type no loader reads.",
    422: "The request does not match the schema, or a file cannot be read.",
    503: "The service needed is not running here, all generation slots are busy, or the "
    "catalog's database is unreachable (with Retry-After).",
}
# the statuses every /v1 route may answer besides its success, declared in the OpenAPI spec
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": text} for status, text in _DECLARED.items()
}


def error_body(message: str, type: str, code: str | None, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "code": code, "param": param}}


def _response(exc: APIError) -> JSONResponse:
    return JSONResponse(
        error_body(exc.message, exc.type, exc.code, exc.param),
        status_code=exc.status_code,
        headers=exc.headers,
    )


_STATUS_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "overloaded_error",
}


def from_llm_error(exc: LLMError, retry_after_s: int = 5) -> APIError:
    """The status and OpenAI error type of a backend error."""
    if isinstance(exc, ModelNotFoundError):
        return APIError(
            404, str(exc), type="not_found_error", code="model_not_found", param="model"
        )
    if isinstance(exc, PromptTooLongError):
        return APIError(413, str(exc), code="context_length_exceeded", param="messages")
    if isinstance(exc, OverloadedError):
        return APIError(
            503,
            str(exc),
            type="overloaded_error",
            code="server_busy",
            headers={"Retry-After": str(retry_after_s)},
        )
    if isinstance(exc, BackendUnavailableError):
        return APIError(
            503,
            str(exc),
            type="api_error",
            code="backend_unavailable",
            headers={"Retry-After": str(retry_after_s)},
        )
    return APIError(500, str(exc), type="api_error", code="llm_error")


_INGEST_STATUS: list[tuple[type[IngestError], int, str, str]] = [
    (NotFoundError, 404, "not_found_error", "not_found"),
    (ConflictError, 409, "invalid_request_error", "conflict"),
    (UnsupportedTypeError, 415, "invalid_request_error", "unsupported_file_type"),
    (FileTooLargeError, 413, "invalid_request_error", "file_too_large"),
    (InputTooLargeError, 413, "invalid_request_error", "input_too_large"),
    (RequestCancelledError, 499, "invalid_request_error", "client_closed_request"),
    (InvalidNameError, 400, "invalid_request_error", "invalid_name"),
    (DocumentError, 422, "invalid_request_error", "unreadable_document"),
    (CatalogUnavailableError, 503, "api_error", "catalog_unavailable"),
]


def from_ingest_error(exc: IngestError, retry_after_s: int = 5) -> APIError:
    """The status and error shape of an ingest error (a 503 says when to retry)."""
    for kind, status, type_, code in _INGEST_STATUS:
        if isinstance(exc, kind):
            headers = {"Retry-After": str(retry_after_s)} if status == 503 else None
            return APIError(status, str(exc), type=type_, code=code, headers=headers)
    return APIError(400, str(exc), code="ingest_error")


def install_error_handlers(app: FastAPI) -> None:
    """Every error family's handler, on one app (a subclass takes its family's handler)."""

    @app.exception_handler(LLMError)
    async def _llm_error(request: Request, exc: LLMError) -> JSONResponse:
        settings = getattr(request.app.state, "settings", None)
        retry = settings.llm.retry_after_s if settings is not None else 5
        return _response(from_llm_error(exc, retry))

    @app.exception_handler(IngestError)
    async def _ingest_error(request: Request, exc: IngestError) -> JSONResponse:
        settings = getattr(request.app.state, "settings", None)
        retry = settings.catalog.retry_after_s if settings is not None else 5
        return _response(from_ingest_error(exc, retry))

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return _response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors: list[Any] = list(exc.errors())
        parts = []
        for err in errors[:5]:
            loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
            parts.append(f"{loc or 'body'}: {err.get('msg')}")
        param = ".".join(str(p) for p in errors[0].get("loc", ())) if errors else None
        return JSONResponse(
            error_body(
                "; ".join(parts) or "invalid request",
                "invalid_request_error",
                "invalid_request",
                param,
            ),
            status_code=422,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = _STATUS_TYPES.get(exc.status_code, "api_error")
        return JSONResponse(
            error_body(str(exc.detail), kind, str(exc.status_code)),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        logger.exception("event=unhandled_error error=%r", exc)
        return JSONResponse(
            error_body(f"internal error: {type(exc).__name__}", "api_error", "internal_error"),
            status_code=500,
        )
