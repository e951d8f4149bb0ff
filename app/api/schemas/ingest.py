"""Schemas of the knowledge-base, document, job, search and embeddings routes."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Literal

from pydantic import BaseModel, Field

from app.api.schemas.passage import PassageOut
from app.api.schemas.text import Text
from app.settings.base import SearchMode
from ingest.models import Document, Job, KnowledgeBase, SearchHit, UploadResult


class KnowledgeBaseCreate(BaseModel):
    name: str = Field(
        description="1-64 letters, digits, `-` or `_`.",
        examples=["dengbao"],
        pattern=r"^[A-Za-z0-9_-]{1,64}$",
    )


class KnowledgeBaseOut(BaseModel):
    object: Literal["knowledge_base"] = "knowledge_base"
    name: str = Field(description="The knowledge base name.")
    embedding_model: str = Field(description="Embedding model the KB was built with.")
    embedding_dim: int = Field(description="Dimension of its vectors.")
    created_at: float = Field(description="Unix time of creation.")
    documents: int = Field(description="Number of documents.")
    chunks: int = Field(description="Number of searchable chunks.")

    @classmethod
    def of(cls, kb: KnowledgeBase) -> KnowledgeBaseOut:
        return cls(**asdict(kb))


class KnowledgeBaseList(BaseModel):
    object: Literal["list"] = "list"
    data: list[KnowledgeBaseOut]


class DocumentOut(BaseModel):
    object: Literal["document"] = "document"
    id: str = Field(description="Document id: the sha256 of its bytes.")
    kb: str
    filename: str
    size: int = Field(description="Bytes.")
    sha256: str = Field(description="Content hash.")
    status: str = Field(description="queued, ingesting, ready or failed.")
    chunks: int = Field(description="Chunks indexed.")
    uploaded_at: float = Field(description="Unix time of the upload.")
    error: str | None = Field(None, description="Why ingestion failed.")

    @classmethod
    def of(cls, doc: Document) -> DocumentOut:
        data = asdict(doc)
        data.pop("path", None)
        data["id"] = data.pop("doc_id")
        return cls(**data)


class DocumentList(BaseModel):
    object: Literal["list"] = "list"
    data: list[DocumentOut]


class JobOut(BaseModel):
    object: Literal["job"] = "job"
    id: str
    kb: str
    doc_id: str
    filename: str
    state: Literal["queued", "running", "succeeded", "failed"]
    progress_done: int = Field(description="Chunks embedded so far.")
    progress_total: int = Field(description="Chunks of the document (0 until split).")
    chunks: int = Field(description="Chunks indexed when the job succeeded.")
    error: str | None = Field(None, description="Why the job failed.")
    created_at: float
    started_at: float | None
    finished_at: float | None
    attempts: int = Field(description="Times a worker started this job.")

    @classmethod
    def of(cls, job: Job) -> JobOut:
        return cls(**asdict(job))


class JobList(BaseModel):
    object: Literal["list"] = "list"
    data: list[JobOut]


class UploadItem(BaseModel):
    filename: str
    status: Literal["queued", "duplicate", "rejected"] = Field(
        description="`queued`: a job was created; `duplicate`: the same bytes are in the KB "
        "already (nothing changed); `rejected`: see `error`."
    )
    doc_id: str | None = None
    job: JobOut | None = None
    error: str | None = None
    duplicate_of: str | None = Field(
        None,
        description="`duplicate`: the file name the same bytes are in the knowledge base under "
        "(the document list shows that name).",
    )

    @classmethod
    def of(cls, result: UploadResult) -> UploadItem:
        return cls(
            filename=result.filename,
            status=result.status,
            doc_id=result.doc_id,
            job=JobOut.of(result.job) if result.job else None,
            error=result.error,
            duplicate_of=result.duplicate_of,
        )


class UploadResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[UploadItem]


class SearchRequest(BaseModel):
    query: Text = Field(min_length=1, examples=["等级保护有几个级别？"])
    top_k: int | None = Field(None, ge=1, le=100, description="Default: retrieval.top_k.")
    score_threshold: float | None = Field(
        None, ge=0, le=1, description="Minimum score (0-1). Default: retrieval.score_threshold."
    )
    mode: SearchMode | None = Field(None, description="Default: retrieval.mode (hybrid).")


class SearchHitOut(PassageOut):
    """A search hit: the passage's fields (as in an answer's ``sources``) and, as before,
    its chunk metadata nested (the same values, kept for existing clients)."""

    metadata: dict[str, Any] = Field(
        description="kb, doc_id, filename, page, heading_path, chunk_index, chunk_id, start, "
        "end (the same values as the flat fields)."
    )

    @classmethod
    def of(cls, hit: SearchHit, index: int) -> SearchHitOut:
        meta = hit.metadata
        return cls(
            index=index,
            kb=meta["kb"],
            doc_id=meta["doc_id"],
            filename=meta["filename"],
            page=meta.get("page"),
            heading_path=list(meta.get("heading_path") or []),
            chunk_id=meta["chunk_id"],
            chunk_index=meta.get("chunk_index"),
            score=hit.score,
            dense_score=hit.dense_score,
            keyword_score=hit.keyword_score,
            text=hit.text,
            start=meta.get("start"),
            end=meta.get("end"),
            metadata=meta,
        )


class SearchResponse(BaseModel):
    object: Literal["list"] = "list"
    mode: str
    data: list[SearchHitOut]


class EmbeddingsRequest(BaseModel):
    input: Text | list[Text] = Field(description="Text or texts to embed.", examples=["你好"])
    model: str | None = Field(None, description="Ignored: the service's embedding model is used.")
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="`float` lists, or `base64` of little-endian float32 (OpenAI SDK)."
    )
    input_type: Literal["query", "passage"] = Field(
        "query",
        description="kbqa extension: `query` for questions, `passage` for documents "
        "(e5 models embed them differently).",
    )


class EmbeddingItem(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingsUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingItem]
    model: str
    usage: EmbeddingsUsage
