"""One retrieved passage, typed: what an answer's ``sources`` hold.

The RAG service yields ``Passage`` objects; the API turns them into its ``Source`` model (the
same fields), the SSE stream and the eval write ``to_dict()``. The search route's hits carry
the same flat fields (``app/api/schemas/ingest.py`` ``SearchHitOut``): one public shape of a
passage across /search, /ask and knowledge-base chat.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from langchain_core.documents import Document


@dataclass(frozen=True, kw_only=True)
class Passage:
    # the field order is the JSON's key order (the API's, unchanged since sources were dicts)
    index: int | None = None  # 1-based: the answer cites it as [index]
    kb: str | None = None
    doc_id: str | None = None  # sha256 of the document's bytes
    filename: str | None = None
    page: int | None = None  # PDF page (1-based)
    heading_path: list[str] = field(default_factory=list)
    chunk_id: str | None = None
    chunk_index: int | None = None
    score: float | None = None  # the search's 0-1 score (the reranker's when on)
    dense_score: float | None = None
    keyword_score: float | None = None
    text: str  # the passage as given to the model
    start: int | None = None  # character offsets in the document's text
    end: int | None = None
    truncated: bool = False  # cut at a sentence end to fit the context
    relevant: bool | None = None  # answer_mode=passages: passes the relevance gate?

    @classmethod
    def of(cls, doc: Document) -> Passage:
        """A retrieved LangChain document (metadata from search, numbering and fitting)."""
        meta = doc.metadata
        return cls(
            text=doc.page_content,
            kb=meta.get("kb"),
            doc_id=meta.get("doc_id"),
            filename=meta.get("filename"),
            chunk_id=meta.get("chunk_id"),
            index=meta.get("index"),
            page=meta.get("page"),
            heading_path=list(meta.get("heading_path") or []),
            chunk_index=meta.get("chunk_index"),
            score=meta.get("score"),
            dense_score=meta.get("dense_score"),
            keyword_score=meta.get("keyword_score"),
            start=meta.get("start"),
            end=meta.get("end"),
            truncated=bool(meta.get("truncated", False)),
            relevant=meta.get("relevant"),
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape (``relevant`` only when known)."""
        data = asdict(self)
        if data["relevant"] is None:
            del data["relevant"]
        return data
