"""/v1/knowledge_bases: create, list, get, delete, search."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import ServicesDep
from app.api.errors import APIError
from app.api.schemas.ingest import (
    KnowledgeBaseCreate,
    KnowledgeBaseList,
    KnowledgeBaseOut,
    SearchHitOut,
    SearchRequest,
    SearchResponse,
)
from app.services.container import Services
from ingest.errors import (
    ConflictError,
    DocumentError,
    FileTooLargeError,
    IngestError,
    InvalidNameError,
    NotFoundError,
    UnsupportedTypeError,
)
from ingest.service import KnowledgeBaseService

router = APIRouter(tags=["knowledge bases"])

_STATUS: list[tuple[type[IngestError], int, str, str]] = [
    (NotFoundError, 404, "not_found_error", "not_found"),
    (ConflictError, 409, "invalid_request_error", "conflict"),
    (UnsupportedTypeError, 415, "invalid_request_error", "unsupported_file_type"),
    (FileTooLargeError, 413, "invalid_request_error", "file_too_large"),
    (InvalidNameError, 400, "invalid_request_error", "invalid_name"),
    (DocumentError, 422, "invalid_request_error", "unreadable_document"),
]


def api_error(exc: IngestError) -> APIError:
    """The status and error shape of an ingest error."""
    for kind, status, type_, code in _STATUS:
        if isinstance(exc, kind):
            return APIError(status, str(exc), type=type_, code=code)
    return APIError(400, str(exc), code="ingest_error")


def kb_service(services: Services) -> KnowledgeBaseService:
    if services.kb is None:
        raise APIError(
            503,
            "knowledge bases are not enabled in this service",
            type="api_error",
            code="kb_disabled",
        )
    return services.kb


@router.post("/knowledge_bases", response_model=KnowledgeBaseOut, status_code=201)
def create_kb(body: KnowledgeBaseCreate, services: ServicesDep) -> KnowledgeBaseOut:
    try:
        return KnowledgeBaseOut.of(kb_service(services).create_kb(body.name))
    except IngestError as exc:
        raise api_error(exc) from exc


@router.get("/knowledge_bases", response_model=KnowledgeBaseList)
def list_kbs(services: ServicesDep) -> KnowledgeBaseList:
    return KnowledgeBaseList(data=[KnowledgeBaseOut.of(k) for k in kb_service(services).list_kbs()])


@router.get("/knowledge_bases/{kb}", response_model=KnowledgeBaseOut)
def get_kb(kb: str, services: ServicesDep) -> KnowledgeBaseOut:
    try:
        return KnowledgeBaseOut.of(kb_service(services).get_kb(kb))
    except IngestError as exc:
        raise api_error(exc) from exc


@router.delete("/knowledge_bases/{kb}")
def delete_kb(kb: str, services: ServicesDep) -> dict:
    try:
        kb_service(services).delete_kb(kb)
    except IngestError as exc:
        raise api_error(exc) from exc
    return {"object": "knowledge_base.deleted", "name": kb, "deleted": True}


@router.post("/knowledge_bases/{kb}/search", response_model=SearchResponse)
def search(kb: str, body: SearchRequest, services: ServicesDep) -> SearchResponse:
    service = kb_service(services)
    try:
        hits = service.search(kb, body.query, body.top_k, body.score_threshold, body.mode)
    except IngestError as exc:
        raise api_error(exc) from exc
    return SearchResponse(
        mode=body.mode or service.retrieval.mode, data=[SearchHitOut.of(h) for h in hits]
    )
