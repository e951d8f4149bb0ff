"""/v1/knowledge_bases/{kb}/documents: upload (202 + one job per file), list, get, delete,
chunks."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, UploadFile
from fastapi.responses import JSONResponse

from app.api.deps import KbServiceDep
from app.api.errors import APIError
from app.api.schemas.ingest import (
    DocumentList,
    DocumentOut,
    SearchHitOut,
    UploadItem,
    UploadResponse,
)
from ingest.errors import FileTooLargeError, IngestError
from ingest.models import UploadResult
from ingest.service import KnowledgeBaseService

router = APIRouter(tags=["documents"])


def _accept(service: KnowledgeBaseService, kb: str, item: UploadFile) -> UploadResult:
    """Store one file and queue its job (the file is read up to one byte over the limit)."""
    limit = service.ingest_settings.max_file_bytes
    name = item.filename or ""
    service.check_upload(name, item.size)
    data = item.file.read(limit + 1)
    if len(data) > limit:
        raise FileTooLargeError(f"{name}: over the limit of {limit} bytes (ingest.max_file_bytes)")
    return service.upload(kb, name, data)


@router.post(
    "/knowledge_bases/{kb}/documents",
    status_code=202,
    response_model=UploadResponse,
    responses={413: {}, 415: {}, 404: {}},
)
def upload(
    kb: str,
    service: KbServiceDep,
    files: Annotated[list[UploadFile], File(description="One or many files.")],
) -> JSONResponse:
    """Store each file and queue one ingest job per file. A file that cannot be accepted is
    `rejected` with its reason; when every file is rejected the answer is that error's status."""
    if len(files) > service.ingest_settings.max_files_per_request:
        raise APIError(
            413, f"too many files: at most {service.ingest_settings.max_files_per_request}"
        )
    service.open_kb(kb)
    results: list[UploadResult] = []
    errors: list[IngestError] = []
    for item in files:
        try:
            results.append(_accept(service, kb, item))
        except IngestError as exc:  # this file is rejected; the others go on
            errors.append(exc)
            results.append(
                UploadResult(
                    item.filename or "", "rejected", error=str(exc), error_kind=type(exc).__name__
                )
            )
    if errors and len(errors) == len(files):
        raise errors[0]
    body = UploadResponse(data=[UploadItem.of(r) for r in results])
    return JSONResponse(body.model_dump(mode="json"), status_code=202)


@router.get("/knowledge_bases/{kb}/documents", response_model=DocumentList)
def list_documents(kb: str, service: KbServiceDep) -> DocumentList:
    return DocumentList(data=[DocumentOut.of(d) for d in service.list_documents(kb)])


@router.get("/knowledge_bases/{kb}/documents/{doc_id}", response_model=DocumentOut)
def get_document(kb: str, doc_id: str, service: KbServiceDep) -> DocumentOut:
    return DocumentOut.of(service.get_document(kb, doc_id))


@router.delete("/knowledge_bases/{kb}/documents/{doc_id}")
def delete_document(kb: str, doc_id: str, service: KbServiceDep) -> dict:
    service.delete_document(kb, doc_id)
    return {"object": "document.deleted", "id": doc_id, "deleted": True}


@router.get("/knowledge_bases/{kb}/documents/{doc_id}/chunks")
def list_chunks(kb: str, doc_id: str, service: KbServiceDep) -> dict:
    hits = service.list_chunks(kb, doc_id)
    return {
        "object": "list",
        "data": [SearchHitOut.of(h, i).model_dump() for i, h in enumerate(hits, start=1)],
    }
