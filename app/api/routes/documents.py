"""/v1/knowledge_bases/{kb}/documents: upload (202 + one job per file), list, get, delete,
chunks."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, UploadFile
from fastapi.responses import JSONResponse

from app.api.deps import ServicesDep, kb_service
from app.api.errors import APIError, api_error
from app.api.schemas.ingest import (
    DocumentList,
    DocumentOut,
    SearchHitOut,
    UploadItem,
    UploadResponse,
)
from ingest.errors import FileTooLargeError, IngestError
from ingest.models import UploadResult

router = APIRouter(tags=["documents"])


@router.post(
    "/knowledge_bases/{kb}/documents",
    status_code=202,
    response_model=UploadResponse,
    responses={413: {}, 415: {}, 404: {}},
)
def upload(
    kb: str,
    services: ServicesDep,
    files: Annotated[list[UploadFile], File(description="One or many files.")],
) -> JSONResponse:
    """Store each file and queue one ingest job per file. A file that cannot be accepted is
    `rejected` with its reason; when every file is rejected the answer is that error's status."""
    service = kb_service(services)
    limit = service.ingest_settings.max_file_bytes
    if len(files) > service.ingest_settings.max_files_per_request:
        raise APIError(
            413, f"too many files: at most {service.ingest_settings.max_files_per_request}"
        )
    try:
        service.open_kb(kb)
    except IngestError as exc:
        raise api_error(exc) from exc
    results: list[UploadResult] = []
    errors: list[IngestError] = []
    for item in files:
        name = item.filename or ""
        try:
            service.check_upload(name, item.size)
            data = item.file.read(limit + 1)
            if len(data) > limit:
                raise FileTooLargeError(
                    f"{name}: over the limit of {limit} bytes (ingest.max_file_bytes)"
                )
            results.append(service.upload(kb, name, data))
        except IngestError as exc:
            errors.append(exc)
            results.append(
                UploadResult(name, "rejected", error=str(exc), error_kind=type(exc).__name__)
            )
    if errors and len(errors) == len(files):
        raise api_error(errors[0])
    body = UploadResponse(data=[UploadItem.of(r) for r in results])
    return JSONResponse(body.model_dump(mode="json"), status_code=202)


@router.get("/knowledge_bases/{kb}/documents", response_model=DocumentList)
def list_documents(kb: str, services: ServicesDep) -> DocumentList:
    try:
        docs = kb_service(services).list_documents(kb)
    except IngestError as exc:
        raise api_error(exc) from exc
    return DocumentList(data=[DocumentOut.of(d) for d in docs])


@router.get("/knowledge_bases/{kb}/documents/{doc_id}", response_model=DocumentOut)
def get_document(kb: str, doc_id: str, services: ServicesDep) -> DocumentOut:
    try:
        return DocumentOut.of(kb_service(services).get_document(kb, doc_id))
    except IngestError as exc:
        raise api_error(exc) from exc


@router.delete("/knowledge_bases/{kb}/documents/{doc_id}")
def delete_document(kb: str, doc_id: str, services: ServicesDep) -> dict:
    try:
        kb_service(services).delete_document(kb, doc_id)
    except IngestError as exc:
        raise api_error(exc) from exc
    return {"object": "document.deleted", "id": doc_id, "deleted": True}


@router.get("/knowledge_bases/{kb}/documents/{doc_id}/chunks")
def list_chunks(kb: str, doc_id: str, services: ServicesDep) -> dict:
    try:
        hits = kb_service(services).list_chunks(kb, doc_id)
    except IngestError as exc:
        raise api_error(exc) from exc
    return {"object": "list", "data": [SearchHitOut.of(h).model_dump() for h in hits]}
