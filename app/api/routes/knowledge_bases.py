"""/v1/knowledge_bases: create, list, get, delete, search."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import KbServiceDep, SearchDep
from app.api.schemas.ingest import (
    KnowledgeBaseCreate,
    KnowledgeBaseList,
    KnowledgeBaseOut,
    SearchHitOut,
    SearchRequest,
    SearchResponse,
)

router = APIRouter(tags=["knowledge bases"])


@router.post("/knowledge_bases", response_model=KnowledgeBaseOut, status_code=201)
def create_kb(body: KnowledgeBaseCreate, service: KbServiceDep) -> KnowledgeBaseOut:
    return KnowledgeBaseOut.of(service.create_kb(body.name))


@router.get("/knowledge_bases", response_model=KnowledgeBaseList)
def list_kbs(service: KbServiceDep) -> KnowledgeBaseList:
    return KnowledgeBaseList(data=[KnowledgeBaseOut.of(k) for k in service.list_kbs()])


@router.get("/knowledge_bases/{kb}", response_model=KnowledgeBaseOut)
def get_kb(kb: str, service: KbServiceDep) -> KnowledgeBaseOut:
    return KnowledgeBaseOut.of(service.get_kb(kb))


@router.delete("/knowledge_bases/{kb}")
def delete_kb(kb: str, service: KbServiceDep) -> dict:
    service.delete_kb(kb)
    return {"object": "knowledge_base.deleted", "name": kb, "deleted": True}


@router.post("/knowledge_bases/{kb}/search", response_model=SearchResponse)
def search(kb: str, body: SearchRequest, searcher: SearchDep) -> SearchResponse:
    hits = searcher.search(kb, body.query, body.top_k, body.score_threshold, body.mode)
    return SearchResponse(
        mode=body.mode or searcher.default_mode,
        data=[SearchHitOut.of(h, i) for i, h in enumerate(hits, start=1)],
    )
