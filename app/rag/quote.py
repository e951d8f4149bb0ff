"""The source's own words as the answer.

A small model asked to copy the passage sentence that answers a question often copies it
nearly: a word dropped, the subject repeated, a clause reordered. For a compliance question
the user wants the document's text, so a sentence answer is replaced by the passage text it
matches best (one sentence, or two adjacent ones), verbatim, when the two overlap enough
(bag-of-characters F1 for Chinese, of words otherwise). Below ``min_overlap`` the model's
answer stays: it combined passages, or said something the passages do not.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

from app.rag.focus import GAP, sentences_of

_CJK = "\u3400-\u9fff\uf900-\ufaff"
# one CJK character, or a run of other letters/digits (a word or a number)
_UNIT = re.compile(rf"[{_CJK}]|(?:(?![{_CJK}])[^\W_])+", re.UNICODE)


def units(text: str) -> Counter[str]:
    """CJK characters and lower-cased words/numbers; punctuation and spaces ignored."""
    return Counter(u.lower() for u in _UNIT.findall(text))


_WORDY = re.compile(r"[^\W\d_]", re.UNICODE)


def has_words(text: str) -> bool:
    """Whether the text has a letter or a CJK character: "03." or "(2)" alone names a list
    item of the passage, it does not answer a question that wants a sentence."""
    return bool(_WORDY.search(text))


def overlap(answer: str, candidate: str) -> float:
    """Bag-of-units F1 of two texts."""
    a, c = units(answer), units(candidate)
    common = sum((a & c).values())
    if not common:
        return 0.0
    precision = common / sum(a.values())
    recall = common / sum(c.values())
    return 2 * precision * recall / (precision + recall)


def candidates(passage: str, max_run: int = 2) -> list[str]:
    """Sentences of a passage (lines apart, " … " gaps dropped) and runs of up to ``max_run``
    adjacent ones."""
    sentences: list[str] = []
    for block in passage.split(GAP):
        for line in block.splitlines():
            sentences.extend(s for s in sentences_of(line) if s)
    runs = []
    for start in range(len(sentences)):
        for length in range(1, max_run + 1):
            if start + length <= len(sentences):
                runs.append("".join(sentences[start : start + length]))
    return runs


def quote(answer: str, passages: Iterable[str], min_overlap: float) -> str | None:
    """The passage text the answer matches best, or None when nothing reaches
    ``min_overlap``. An answer without words ("03.") names a list item: its sentence."""
    passages = list(passages)
    if not has_words(answer):
        return labelled(answer, passages)
    best, best_score = None, 0.0
    for passage in passages:
        for candidate in candidates(passage):
            score = overlap(answer, candidate)
            if score > best_score:
                best, best_score = candidate, score
    return best if best is not None and best_score >= min_overlap else None


def labelled(label: str, passages: Iterable[str]) -> str | None:
    """The passage sentence that starts with ``label`` ("03." for the list item the model
    named instead of quoting it), or None."""
    label = label.strip()
    if not label:
        return None
    for passage in passages:
        for sentence in candidates(passage, max_run=1):
            if sentence.strip().startswith(label) and units(sentence) != units(label):
                return sentence.strip()
    return None
