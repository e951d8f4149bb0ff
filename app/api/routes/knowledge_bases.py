"""/v1/knowledge_bases: create, list, get, delete, search."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import ServicesDep, kb_service
from app.api.errors import api_error
from app.api.schemas.ingest import (
    KnowledgeBaseCreate,
    KnowledgeBaseList,
    KnowledgeBaseOut,
    SearchHitOut,
    SearchRequest,
    SearchResponse,
)
from ingest.errors import IngestError

router = APIRouter(tags=["knowledge bases"])


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
