"""Plain data passed between the ingest pieces and to callers (the API, the RAG retriever)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

JobState = Literal["queued", "running", "succeeded", "failed"]


@dataclass
class Segment:
    """One block a loader read: a paragraph, heading, table row or line, in reading order."""

    text: str
    page: int | None = None
    heading_level: int | None = None  # set for headings (1 = top)
    table_row: bool = False


@dataclass
class Chunk:
    """A piece of a document as stored: ``start``/``end`` index the document's joined text."""

    text: str
    index: int
    start: int
    end: int
    page: int | None = None
    heading_path: list[str] = field(default_factory=list)
    # table rows it ends with, one per line, when all of its lines but its headings are rows
    rows: int = 0


def row_lines(text: str, rows: int) -> list[str]:
    """The table rows a chunk's text ends with (``Chunk.rows`` of them, one per line, blank
    lines aside); [] when it has none."""
    if rows <= 0:
        return []
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-rows:]


def with_headings(text: str, heading_path: list[str]) -> str:
    """A chunk's text under its heading path ("a > b" on the line above): what search indexes
    (``ingest.index_headings``) and what the relevance gate's coverage reads."""
    path = " > ".join(p for p in heading_path if p)
    return f"{path}\n{text}" if path else text


@dataclass
class SearchHit:
    """One search result. ``score`` is on one 0-1 scale, higher = more relevant.

    metadata keys: kb, doc_id, filename, page, heading_path, chunk_index, chunk_id,
    start, end (character offsets in the document's extracted text).
    """

    text: str
    score: float
    metadata: dict[str, Any]
    #: the components behind ``score`` (None when that search did not run): cosine
    #: similarity, and bm25/(bm25 + retrieval.keyword_score_half)
    dense_score: float | None = None
    keyword_score: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class KnowledgeBase:
    name: str
    embedding_model: str
    embedding_dim: int
    created_at: float
    documents: int = 0
    chunks: int = 0


@dataclass
class Document:
    kb: str
    doc_id: str
    filename: str
    size: int
    sha256: str
    status: str  # queued | ingesting | ready | failed
    chunks: int
    uploaded_at: float
    error: str | None = None
    path: str | None = None


@dataclass
class Job:
    id: str
    kb: str
    doc_id: str
    filename: str
    state: JobState
    progress_done: int
    progress_total: int
    chunks: int
    error: str | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    attempts: int


@dataclass
class UploadResult:
    """What happened to one uploaded file: a job, a duplicate, or an error."""

    filename: str
    status: Literal["queued", "duplicate", "rejected"]
    doc_id: str | None = None
    job: Job | None = None
    error: str | None = None
    error_kind: str | None = None  # the IngestError subclass name when rejected
    duplicate_of: str | None = None  # a duplicate: the name the same bytes are stored under
