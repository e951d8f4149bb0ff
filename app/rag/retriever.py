"""The knowledge-base retriever as a LangChain ``BaseRetriever``.

Dense, keyword or hybrid search over one or more knowledge bases (each searched with
``app.rag.search``, merged by score), then optionally reranked by a cross-encoder, then the
relevance gate: a passage is kept only when its dense similarity reaches ``min_dense_score``
or its keyword score reaches ``min_keyword_score``, and it has (with its heading path) at
least ``min_coverage`` of the question's terms, each weighted by how rare it is among the
knowledge base's chunks (a passage on a neighbouring topic scores high on both, and shares
the question's common terms, yet lacks the name the question asks about); or when its dense
similarity reaches ``dense_score_alone`` and stands ``dense_alone_margin`` above that of the
query's ``dense_reference_rank``-th nearest chunk, a closeness in meaning that neighbouring
topics do not reach, whatever words it shares. Passages of equal
score (fusion ties a document's two chunks that the two searches rank in opposite orders) go
in order of that coverage: the model reads the first passage most. An empty result
means "nothing in the knowledge bases answers this": the chain then refuses (or falls back)
without the LLM.
"""

from __future__ import annotations

import asyncio

from langchain_core.callbacks import (
    AsyncCallbackManagerForRetrieverRun,
    CallbackManagerForRetrieverRun,
)
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict, Field, PrivateAttr

from app.rag.focus import TermRarity, coverage
from app.rag.reranker import CrossEncoderReranker
from app.rag.search import KnowledgeBaseSearch
from app.settings.base import SearchMode
from ingest.models import SearchHit, with_headings


def hit_to_document(hit: SearchHit) -> Document:
    metadata = dict(hit.metadata)
    metadata.update(score=hit.score, dense_score=hit.dense_score, keyword_score=hit.keyword_score)
    return Document(page_content=hit.text, metadata=metadata, id=metadata.get("chunk_id"))


def question_coverage(doc: Document, query: str, rarity: TermRarity | None = None) -> float:
    """The share of the question's terms the passage has (``app.rag.focus.coverage``), its
    headings counted with it (search indexed them with it); ``rarity`` weighs each term by how
    rare it is in the knowledge base (None: as ``relevance``). A retry's query is the earlier
    question(s) and this one, a line each: the passage must cover one of them."""
    lines = [line for line in query.splitlines() if line.strip()] or [query]
    text = with_headings(doc.page_content, list(doc.metadata.get("heading_path") or []))
    return max(coverage(text, line, rarity) for line in lines)


def relevant(
    doc: Document,
    query: str,
    *,
    min_dense_score: float = 0.0,
    min_keyword_score: float = 0.0,
    min_coverage: float = 0.0,
    rarity: TermRarity | None = None,
    dense_score_alone: float = 0.0,
    dense_alone_margin: float = 0.0,
    dense_reference: float | None = None,
) -> bool:
    """The relevance gate (all thresholds 0: every passage passes); ``rarity``: see
    ``question_coverage``; ``dense_score_alone`` (0: never): a dense similarity that passes
    without the other checks when it is also ``dense_alone_margin`` above ``dense_reference``
    (the similarity of the KB's ordinary passages to the query: in a KB on one topic every
    passage is that close to any question on it)."""
    dense = doc.metadata.get("dense_score")
    if (
        dense_score_alone > 0
        and dense is not None
        and dense >= dense_score_alone
        and (
            dense_alone_margin <= 0
            or (dense_reference is not None and dense - dense_reference >= dense_alone_margin)
        )
    ):
        return True
    if min_coverage > 0 and question_coverage(doc, query, rarity) < min_coverage:
        return False
    if min_dense_score <= 0 and min_keyword_score <= 0:
        return True
    keyword = doc.metadata.get("keyword_score")
    return (dense is not None and min_dense_score > 0 and dense >= min_dense_score) or (
        keyword is not None and min_keyword_score > 0 and keyword >= min_keyword_score
    )


class KnowledgeBaseRetriever(BaseRetriever):
    """Chunks of one or more knowledge bases for a query, best first."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    search: KnowledgeBaseSearch = Field(description="the search of each knowledge base")
    knowledge_bases: list[str] = Field(min_length=1)
    top_k: int = Field(5, ge=1)
    score_threshold: float = Field(0.0, ge=0, le=1)
    search_mode: SearchMode = "hybrid"
    min_dense_score: float = Field(0.0, ge=0, le=1)
    min_keyword_score: float = Field(0.0, ge=0, le=1)
    min_coverage: float = Field(0.0, ge=0, le=1)
    dense_score_alone: float = Field(0.0, ge=0, le=1)
    dense_alone_margin: float = Field(0.0, ge=0, le=1)
    dense_reference_rank: int = Field(10, ge=1)
    coverage_by_rarity: bool = True
    rarity_max_chunks: int = Field(20000, ge=1)
    rarity_prior_chunks: int = Field(100, ge=0)
    reranker: CrossEncoderReranker | None = None
    rerank_candidates: int = Field(20, ge=1)
    _references: dict[tuple[str, str, int], float | None] = PrivateAttr(default_factory=dict)

    def relevant(self, doc: Document, query: str) -> bool:
        """The relevance gate with this retriever's thresholds (the query in the documents'
        words: ``KnowledgeBaseSearch.expand``)."""
        query = self.search.expand(query)
        dense = doc.metadata.get("dense_score")
        reference = None
        if (
            self.dense_score_alone > 0
            and self.dense_alone_margin > 0
            and dense is not None
            and dense >= self.dense_score_alone
            and "kb" in doc.metadata
        ):
            reference = self.dense_reference(doc.metadata["kb"], query)
        return relevant(
            doc,
            query,
            min_dense_score=self.min_dense_score,
            min_keyword_score=self.min_keyword_score,
            min_coverage=self.min_coverage,
            rarity=self.rarity_of(doc) if self.min_coverage > 0 else None,
            dense_score_alone=self.dense_score_alone,
            dense_alone_margin=self.dense_alone_margin,
            dense_reference=reference,
        )

    def dense_reference(self, kb: str, query: str) -> float | None:
        """The dense similarity of the query's ``dense_reference_rank``-th nearest chunk in
        ``kb`` (the farthest one in a smaller KB): how close its ordinary passages come. One
        extra nearest-neighbour query (the query embedded again) per KB and question, made only
        for a passage that could pass alone, and kept for the retriever's life (one request)."""
        key = (kb, query, self.dense_reference_rank)
        if key not in self._references:
            hits = self.search.dense(kb, query, self.dense_reference_rank)
            self._references[key] = hits[-1][1] if hits else None
        return self._references[key]

    def rarity_of(self, doc: Document) -> TermRarity | None:
        """The term rarity of the passage's knowledge base (None: terms counted flat)."""
        if not self.coverage_by_rarity or "kb" not in doc.metadata:
            return None
        return self.search.rarity(
            doc.metadata["kb"], self.rarity_max_chunks, self.rarity_prior_chunks
        )

    def ordered(self, docs: list[Document], query: str) -> list[Document]:
        """Best first: by score, and passages of equal score by how much of the question they
        cover (``question_coverage``). Fusion gives two chunks the same score when one search
        ranks them 1st and 2nd and the other 2nd and 1st, often a document's two chunks; the
        search order then put the dense search's first in front, whatever the question asks
        (on cmrc2018-trial, 23 of 952 questions change their first passage, and the gold answer
        is in the first passage for 896 instead of 883)."""
        if len({float(d.metadata["score"]) for d in docs}) == len(docs):
            return docs  # no ties
        covered = {id(d): question_coverage(d, query, self.rarity_of(d)) for d in docs}
        return sorted(docs, key=lambda d: (-float(d.metadata["score"]), -covered[id(d)]))

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun
    ) -> list[Document]:
        query = self.search.expand(query)  # the documents' words, for the gate and the order
        take = max(self.top_k, self.rerank_candidates) if self.reranker else self.top_k
        docs: list[Document] = []
        for kb in dict.fromkeys(self.knowledge_bases):
            hits = self.search.search(kb, query, take, self.score_threshold, self.search_mode)
            docs.extend(hit_to_document(h) for h in hits)
        docs.sort(key=lambda d: -float(d.metadata["score"]))
        if self.reranker is not None and docs:
            docs = docs[:take]
            for doc, score in zip(
                docs, self.reranker.scores(query, [d.page_content for d in docs]), strict=True
            ):
                doc.metadata["retrieval_score"] = doc.metadata["score"]
                doc.metadata["score"] = round(score, 6)
            docs.sort(key=lambda d: -float(d.metadata["score"]))
        return self.ordered([d for d in docs if self.relevant(d, query)], query)[: self.top_k]

    async def _aget_relevant_documents(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun
    ) -> list[Document]:
        # search is blocking (embedding, SQLite, Chroma): keep it off the event loop
        return await asyncio.to_thread(
            self._get_relevant_documents, query, run_manager=run_manager.get_sync()
        )
