"""Passages cut to what matters for the question, for small models.

A 0.5B model answers best from a short context: every passage token costs prefill time on a
CPU (~130 tokens/s), and long passages bury the answer sentence. A passage longer than
``rag.passage_max_chars`` keeps its sentence that shares the most with the question (character
bigrams for Chinese, words otherwise), grown by its neighbours, nearest first, while the
budget allows; the kept sentences stay in document order, with " … " where text between them
was left out.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable

from ingest.splitter import split_sentences

_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
_WORD = re.compile(r"[A-Za-z0-9]+")
_STOP = frozenset("的了是在和与及或吗呢什么哪些哪个多少怎么如何为何为什么谁几请问")
GAP = " … "
# a "sentence" that is only a bracketed aside: a table row's marks after its full stop
_ASIDE = re.compile(r"^\s*[（(][^（）()]*[）)]\s*$")


def _features(text: str) -> set[str]:
    chars = [c for c in _CJK.findall(text) if c not in _STOP]
    terms = set(map(str.__add__, chars, chars[1:]))  # bigrams of the kept characters
    terms.update(chars)
    terms.update(w.lower() for w in _WORD.findall(text))
    return terms


def _weight(feature: str) -> float:
    """A CJK bigram counts double (a shared bigram is a shared term)."""
    return 2.0 if len(feature) == 2 and _CJK.match(feature[0]) else 1.0


def relevance(sentence: str, question: str) -> float:
    """Shared features, bigrams counting double (a shared bigram is a shared term)."""
    return sum(_weight(f) for f in _features(question) & _features(sentence))


class DistinctiveRelevance:
    """``relevance`` against a set of sentences, a shared term weighted by how few of them
    have it (log((n + 1) / sentences with it)): the name a question is about is in most of
    them and tells them apart poorly; "体长" or "为食" marks the one that answers."""

    def __init__(self, sentences: list[str], question: str) -> None:
        self.terms = _features(question)
        shared = [_features(s) & self.terms for s in sentences]
        frequency = {t: sum(t in s for s in shared) for t in self.terms}
        self.weight = {
            t: _weight(t) * math.log((len(sentences) + 1) / frequency[t])
            for t in self.terms
            if frequency[t]
        }

    def __call__(self, text: str) -> float:
        return sum(self.weight.get(t, 0.0) for t in _features(text) & self.terms)


class TermRarity:
    """How rare each term (a CJK character or bigram, or a word) is among a knowledge base's
    chunks: BM25's inverse document frequency ``log(1 + (n - df + 0.5) / (df + 0.5))``, ``df``
    of the chunks having the term, times the bigram's double weight. A term in no chunk weighs
    most, one in every chunk least: "神学院" tells a seminary from a school that "学院" and
    "位于" do not. ``n`` is the chunks counted plus ``prior_chunks`` imagined ones without the
    term: in a KB of a few chunks on one topic, every term would otherwise be in all of them
    or in none, and the name asked about, in every chunk, would weigh nothing."""

    def __init__(self, texts: Iterable[str], prior_chunks: int = 0) -> None:
        self.chunks = 0
        self.prior_chunks = prior_chunks
        self.frequency: Counter[str] = Counter()
        for text in texts:
            self.chunks += 1
            self.frequency.update(_features(text))

    def weight(self, term: str) -> float:
        df = self.frequency.get(term, 0)
        n = self.chunks + self.prior_chunks
        return _weight(term) * math.log(1 + (n - df + 0.5) / (df + 0.5))


def coverage(text: str, question: str, rarity: TermRarity | None = None) -> float:
    """The share of the question's terms that ``text`` has: weighted as in ``relevance``, or,
    with ``rarity``, by how rare each term is in the knowledge base (a passage on a
    neighbouring topic shares the common terms, not the name asked about); 1.0 for a question
    without terms."""
    if rarity is None:
        whole = relevance(question, question)
        return relevance(text, question) / whole if whole else 1.0
    terms = _features(question)
    whole = sum(rarity.weight(t) for t in terms)
    shared = sum(rarity.weight(t) for t in terms & _features(text))
    return shared / whole if whole else 1.0


def sentences_of(text: str) -> list[str]:
    return [text[a:b].strip() for a, b in split_sentences(text)]


def _best(sentences: list[str], question: str) -> int:
    return max(range(len(sentences)), key=lambda i: relevance(sentences[i], question))


def best_sentence(text: str, question: str) -> str:
    """The sentence of ``text`` that shares most with the question; a sentence never spans
    two lines (a heading and the text under it are not one sentence), and neither a Markdown
    heading, a line whose words are all in the question (a heading naming what is asked
    about) nor a bracketed aside alone ("（适用等级：三级）") answers it."""
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    sentences = [s for line in lines or text.splitlines() for s in sentences_of(line)]
    asked = _features(question)
    answers = [s for s in sentences if not _features(s) <= asked and not _ASIDE.match(s)]
    sentences = answers or sentences or [text]
    return sentences[_best(sentences, question)]


def focus(text: str, question: str, max_chars: int) -> str:
    """``text`` if it is short enough, else its most relevant sentences within ``max_chars``."""
    if max_chars <= 0 or len(text) <= max_chars:
        return text
    spans = split_sentences(text)
    sentences = [text[a:b] for a, b in spans]
    if len(sentences) < 2:
        return text[:max_chars]
    best = _best(sentences, question)
    kept = {best}
    used = len(sentences[best])
    for step in range(1, len(sentences)):
        for index in (best + step, best - step):  # the next sentence first, then the one before
            if 0 <= index < len(sentences) and used + len(sentences[index]) <= max_chars:
                kept.add(index)
                used += len(sentences[index])
    # runs of adjacent sentences as they stand in the text (the space between two English
    # sentences kept), " … " between runs
    runs: list[tuple[int, int]] = []
    for index in sorted(kept):
        if runs and index == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], index)
        else:
            runs.append((index, index))
    return GAP.join(text[spans[first][0] : spans[last][1]] for first, last in runs)
