"""Keyword (BM25) search per knowledge base: jieba tokens for Chinese, lower-cased words else.

The tokens of every chunk are persisted in the ingest database next to the chunk, in the same
transaction that adds, replaces or deletes it, so the keyword index never drifts from Chroma.
The BM25 matrix (bm25s) is built in memory from them: by the worker right after a change (before
its job is marked succeeded), and otherwise on the first search after a change (the KB's version
number in the database says when), e.g. in an API process when a ``kbqa worker`` process made
the change, or after a restart.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Any

from ingest.catalog import SqlCatalog
from ingest.versioned import PerKbCache

logger = logging.getLogger(__name__)

_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
_WORD = re.compile(r"[\w\u3400-\u9fff]+", re.UNICODE)
_STOP_WORDS = (
    "的 了 是 在 和 与 及 或 等 也 就 都 而 之 于 为 对 以 其 中 上 下 "
    "a an the of to in on and or is are was were be by for with as at it this that"
)
_STOP = frozenset(_STOP_WORDS.split())


class Tokenizer:
    """jieba (search mode) for CJK runs, lower-cased words otherwise; stop words dropped."""

    def __init__(self) -> None:
        import jieba

        jieba.setLogLevel(logging.WARNING)  # jieba logs its dictionary load at DEBUG
        self._jieba = jieba.Tokenizer()
        self._lock = threading.Lock()
        self._ready = False

    def tokens(self, text: str) -> list[str]:
        out: list[str] = []
        for run in _WORD.findall(text.lower()):
            if _CJK.search(run):
                with self._lock:
                    if not self._ready:
                        self._jieba.initialize()
                        self._ready = True
                pieces = self._jieba.lcut_for_search(run)
                out.extend(p for p in pieces if p.strip() and p not in _STOP)
            elif run not in _STOP:
                out.append(run)
        return out


class KeywordIndex:
    def __init__(self, catalog: SqlCatalog, tokenizer: Tokenizer) -> None:
        logging.getLogger("bm25s").setLevel(logging.WARNING)  # it logs every index build
        self.catalog = catalog
        self.tokenizer = tokenizer
        self._cache: PerKbCache[tuple[list[str], Any]] = PerKbCache(catalog.kb_version)

    def _index(self, kb: str) -> tuple[list[str], Any]:
        return self._cache.get(kb, None, lambda: self._build(kb))

    def _build(self, kb: str) -> tuple[int, tuple[list[str], Any]]:
        version, ids, corpus = self.catalog.all_tokens(kb)
        retriever = None
        if ids:
            import bm25s

            retriever = bm25s.BM25()
            retriever.index([t if t != [""] else [] for t in corpus], show_progress=False)
        return version, (ids, retriever)

    def search(self, kb: str, query: str, k: int) -> list[tuple[str, float]]:
        """(chunk id, BM25 score) best first; only chunks sharing a token with the query."""
        ids, retriever = self._index(kb)
        if retriever is None:
            return []
        tokens = [t for t in self.tokenizer.tokens(query) if t in retriever.vocab_dict]
        if not tokens:
            return []
        docs, scores = retriever.retrieve(
            [tokens], k=min(k, len(ids)), show_progress=False, n_threads=1
        )
        return [(ids[int(d)], float(s)) for d, s in zip(docs[0], scores[0], strict=True) if s > 0]

    def warm(self, kb: str) -> None:
        """Build the index of ``kb`` now if it changed (after an ingest or a delete). A failure
        is logged, not raised: the change is already committed, and the next search builds it."""
        try:
            self._index(kb)
        except Exception:
            logger.exception("event=keyword_warm_failed kb=%s", kb)

    def forget(self, kb: str) -> None:
        self._cache.forget(kb)
