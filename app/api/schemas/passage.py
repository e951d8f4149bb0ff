"""The public shape of a passage: the same flat fields in /search hits and in the ``sources``
of /ask and knowledge-base chat (``app.rag.passage.Passage`` is the typed value behind them)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class PassageOut(BaseModel):
    index: int = Field(
        description="1-based: a source's number, cited in the answer as [index]; a search "
        "hit's rank; a document chunk's position."
    )
    kb: str
    doc_id: str = Field(description="Document id (sha256 of its bytes).")
    filename: str
    page: int | None = Field(None, description="PDF page (1-based) of the passage.")
    heading_path: list[str] = Field(default_factory=list, description="Headings above it.")
    chunk_id: str
    chunk_index: int | None = None
    score: float = Field(
        description="0-1, higher = more relevant. dense: cosine similarity; keyword: "
        "bm25/(bm25+retrieval.keyword_score_half); hybrid: reciprocal-rank fusion divided by "
        "its maximum (1 = first in both lists); the reranker's score when it is on."
    )
    dense_score: float | None = Field(
        None, description="Cosine similarity of the dense search (null when it did not run)."
    )
    keyword_score: float | None = Field(
        None,
        description="bm25/(bm25+retrieval.keyword_score_half) of the keyword search (null when "
        "it did not run; 0 when the chunk was outside its candidates).",
    )
    text: str = Field(description="The passage's text.")
    start: int | None = Field(None, description="Character offset in the document's text.")
    end: int | None = None
