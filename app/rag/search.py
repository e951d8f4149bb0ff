"""Search over one knowledge base: dense, keyword or hybrid, fused and thresholded.

The retrieval layer's first step (the RAG retriever, the search route and ``kbqa search`` all
call it): it reads what the ingest layer stored (vectors in the store, BM25 tokens in the
keyword index, chunk text in the catalog) and never writes. Defaults (``retrieval.top_k``,
``score_threshold``, ``mode``, ``candidates``, ``rrf_k``, ``keyword_score_half``) are resolved
here, once, from the ``retrieval`` settings.

Score scale (one 0-1 scale, higher = more relevant):
- dense: cosine similarity of the L2-normalised query and chunk vectors, negatives clipped to 0;
- keyword: BM25 score ``s`` mapped to ``s / (s + keyword_score_half)`` (0.5 at that score);
- hybrid: reciprocal-rank fusion ``sum 1/(rrf_k + rank)`` over the dense and keyword candidate
  lists, divided by its maximum ``2/(rrf_k + 1)``: 1.0 = first in both lists, 0.5 = first in
  one list and absent from the other.
"""

from __future__ import annotations

import re

from app.rag.focus import TermRarity
from app.settings.base import SearchMode
from ingest.errors import InvalidNameError
from ingest.models import SearchHit
from ingest.service import KnowledgeBaseService
from ingest.versioned import PerKbCache

MODES: tuple[SearchMode, ...] = ("dense", "keyword", "hybrid")


def synonym_pattern(synonyms: dict[str, str]) -> re.Pattern[str] | None:
    """One pattern of the words to replace, the longest first (None: no words)."""
    words = sorted(synonyms, key=len, reverse=True)
    return re.compile("|".join(map(re.escape, words))) if words else None


def expand(query: str, synonyms: dict[str, str], pattern: re.Pattern[str] | None = None) -> str:
    """The query with the documents' words in place of the users' (``synonyms``: word ->
    replacement): "等保2.0的技术要求" -> "等级保护2.0的技术要求". One pass, the longest word
    first; no replacement contains a replaced word (the setting is checked), so a second pass
    changes nothing."""
    pattern = pattern or synonym_pattern(synonyms)
    if pattern is None:
        return query
    return pattern.sub(lambda found: synonyms[found.group()], query)


class KnowledgeBaseSearch:
    """Chunks of a knowledge base for a query, best first (see the module for the scores)."""

    def __init__(self, kb: KnowledgeBaseService) -> None:
        self.kb = kb
        self.settings = kb.retrieval
        self._rarity: PerKbCache[TermRarity] = PerKbCache(lambda name: kb.catalog.kb_version(name))
        self._synonyms = synonym_pattern(self.settings.query_synonyms)

    def expand(self, query: str) -> str:
        """The query in the documents' words (``retrieval.query_synonyms``, ``expand``)."""
        return expand(query, self.settings.query_synonyms, self._synonyms)

    def rarity(self, kb: str, max_chunks: int = 20000, prior_chunks: int = 100) -> TermRarity:
        """How rare each term is among ``kb``'s chunks (the relevance gate's coverage weights),
        counted once per change of the KB (its version number), like the keyword index (one
        count at a time per KB; a deleted KB's counts are dropped), over at most
        ``max_chunks`` of them (``all_texts``' sample: the count's time is bounded,
        ~0.1-0.2 ms a chunk on 2 cores); ``prior_chunks``: see ``TermRarity``."""

        def build() -> tuple[int, TermRarity]:
            version, texts = self.kb.catalog.all_texts(kb, max_chunks)
            return version, TermRarity(texts, prior_chunks)

        return self._rarity.get(kb, (max_chunks, prior_chunks), build)

    @property
    def default_mode(self) -> SearchMode:
        return self.settings.mode

    def search(
        self,
        kb: str,
        query: str,
        top_k: int | None = None,
        score_threshold: float | None = None,
        mode: SearchMode | None = None,
    ) -> list[SearchHit]:
        """NotFoundError for an unknown knowledge base, InputTooLargeError for a query over
        ``embeddings.max_input_chars``, InvalidNameError for an unknown mode."""
        self.kb.embedder.check_text(query, "query")
        query = self.expand(query)
        self.kb.open_kb(kb)
        k = top_k or self.settings.top_k
        threshold = self.settings.score_threshold if score_threshold is None else score_threshold
        mode = mode or self.settings.mode
        if mode not in MODES:
            raise InvalidNameError(f"unknown search mode {mode!r}: dense, keyword or hybrid")
        candidates = max(self.settings.candidates, k)
        dense = self.dense(kb, query, candidates) if mode != "keyword" else []
        keyword = self.keyword(kb, query, candidates) if mode != "dense" else []
        if mode == "dense":
            scored = dense
        elif mode == "keyword":
            scored = keyword
        else:
            scored = rrf([dense, keyword], self.settings.rrf_k)
        scored = [(cid, s) for cid, s in scored if s >= threshold][:k]
        rows = self.kb.catalog.chunks_by_id(kb, [cid for cid, _ in scored])
        dense_of, keyword_of = dict(dense), dict(keyword)
        return [
            SearchHit(
                rows[cid][0],
                round(score, 6),
                rows[cid][1],
                dense_score=_component(dense_of, cid, mode != "keyword"),
                keyword_score=_component(keyword_of, cid, mode != "dense"),
            )
            for cid, score in scored
            if cid in rows
        ]

    def dense(self, kb: str, query: str, k: int) -> list[tuple[str, float]]:
        """(chunk id, cosine similarity clipped to 0-1) of the ``k`` nearest chunks."""
        vector = self.kb.embeddings.embed_query(query)
        hits = self.kb.store.query(kb, vector, k)
        # only chunks committed to the catalog: a document being (re-)ingested stays invisible
        known = self.kb.catalog.chunks_by_id(kb, [h[0] for h in hits])
        return [(cid, max(0.0, min(1.0, sim))) for cid, _, _, sim in hits if cid in known]

    def keyword(self, kb: str, query: str, k: int) -> list[tuple[str, float]]:
        """(chunk id, BM25 score mapped to 0-1) of the ``k`` best keyword matches."""
        half = self.settings.keyword_score_half
        return [(cid, s / (s + half)) for cid, s in self.kb.keyword.search(kb, query, k)]


def _component(scores: dict[str, float], cid: str, searched: bool) -> float | None:
    """A hit's score in one component search: 0 when it was outside its candidates."""
    if not searched:
        return None
    return round(scores.get(cid, 0.0), 6)


def rrf(lists: list[list[tuple[str, float]]], k: int) -> list[tuple[str, float]]:
    """Reciprocal-rank fusion, normalised to 0-1 by its maximum ``len(lists)/(k + 1)``."""
    fused: dict[str, float] = {}
    for ranked in lists:
        for rank, (cid, _) in enumerate(ranked, start=1):
            fused[cid] = fused.get(cid, 0.0) + 1.0 / (k + rank)
    best = len(lists) / (k + 1)
    return sorted(((cid, s / best) for cid, s in fused.items()), key=lambda x: -x[1])
