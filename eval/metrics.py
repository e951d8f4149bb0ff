"""Answer metrics, each with its tokenization stated.

- Exact match and token F1: CMRC 2018 rules for Chinese answers (per CJK character, the
  official ``cmrc2018_evaluate.py``: lower-case, CJK characters and punctuation one token
  each, other runs split into words; EM after removing its punctuation list; F1 on the
  longest common *substring* of the token lists), SQuAD v1.1 rules otherwise (lower-case,
  punctuation and articles a/an/the removed, whitespace words; F1 on the bag of words).
- ROUGE-L and BLEU-4 as ChatGLM3's ``finetune_demo`` reports them: jieba tokens for Chinese,
  whitespace words (lower-cased) for English; ROUGE-L is the LCS F-measure (beta 1),
  BLEU-4 is NLTK's ``sentence_bleu`` with uniform weights and smoothing ``method3``.
- "Contains": the normalized answer occurs inside the normalized prediction.

With several accepted answers every metric takes the best one (as CMRC and SQuAD do).
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

Lang = Literal["zh", "en"]

_CJK = re.compile(r"[\u4e00-\u9fa5]")
# the punctuation list of cmrc2018_evaluate.py
CMRC_PUNCT = frozenset(
    [
        "-", ":", "_", "*", "^", "/", "\\", "~", "`", "+", "=",
        "，", "。", "：", "？", "！", "“", "”", "；", "’", "《", "》", "……", "·", "、",
        "「", "」", "（", "）", "－", "～", "『", "』",
    ]
)  # fmt: skip
_WORD = re.compile(r"\w+|[^\w\s]")
_CITATION = re.compile(r"\s*\[\d+(?:\s*[,，]\s*\d+)*\]")
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = frozenset(string.punctuation)


def language(*texts: str) -> Lang:
    """``zh`` when any text has a CJK character (the CMRC rule), else ``en``."""
    return "zh" if any(_CJK.search(t) for t in texts) else "en"


def strip_citations(text: str) -> str:
    """Remove ``[1]``, ``[1, 2]`` citation markers the RAG prompt asks for."""
    return _CITATION.sub("", text).strip()


# ----------------------------------------------------------------------------- CMRC 2018


def cmrc_segments(text: str, remove_punct: bool = True) -> list[str]:
    """CMRC 2018 ``mixed_segmentation``: CJK characters and punctuation one token each,
    other runs split into words (regex ``\\w+|[^\\w\\s]`` in place of NLTK's tokenizer)."""
    out: list[str] = []
    run = ""
    for char in str(text).lower().strip():
        if remove_punct and char in CMRC_PUNCT:
            continue
        if _CJK.match(char) or char in CMRC_PUNCT:
            if run:
                out.extend(_WORD.findall(run))
                run = ""
            out.append(char)
        else:
            run += char
    if run:
        out.extend(_WORD.findall(run))
    return out


def cmrc_normalize(text: str) -> str:
    """CMRC 2018 ``remove_punctuation`` (used for EM)."""
    return "".join(c for c in str(text).lower().strip() if c not in CMRC_PUNCT)


def _longest_common_substring(a: Sequence[str], b: Sequence[str]) -> int:
    best = 0
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0] * (len(b) + 1)
        for j, y in enumerate(b, start=1):
            if x == y:
                current[j] = previous[j - 1] + 1
                best = max(best, current[j])
        previous = current
    return best


def cmrc_f1(prediction: str, answer: str) -> float:
    pred = cmrc_segments(prediction)
    gold = cmrc_segments(answer)
    common = _longest_common_substring(gold, pred)
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(gold)
    return 2 * precision * recall / (precision + recall)


# ----------------------------------------------------------------------------- SQuAD


def squad_normalize(text: str) -> str:
    """SQuAD v1.1 ``normalize_answer``: lower, drop punctuation and articles, fix spaces."""
    text = "".join(c for c in text.lower() if c not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def squad_f1(prediction: str, answer: str) -> float:
    pred = squad_normalize(prediction).split()
    gold = squad_normalize(answer).split()
    if not pred or not gold:
        return float(pred == gold)
    common = sum((Counter(pred) & Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(gold)
    return 2 * precision * recall / (precision + recall)


# ----------------------------------------------------------------------------- generation


@lru_cache(maxsize=1)
def _jieba() -> object:
    import logging

    import jieba

    jieba.setLogLevel(logging.WARNING)
    jieba.initialize()
    return jieba


def gen_tokens(text: str, lang: Lang) -> list[str]:
    """Tokens of ROUGE-L and BLEU-4: jieba words for Chinese (whitespace tokens dropped),
    lower-cased whitespace words for English."""
    if lang == "zh":
        jieba = _jieba()
        return [t for t in jieba.cut(text) if t.strip()]  # type: ignore[attr-defined]
    return text.lower().split()


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    if not a or not b:
        return 0
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b, start=1):
            current.append(previous[j - 1] + 1 if x == y else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def rouge_l(pred_tokens: Sequence[str], ref_tokens: Sequence[str]) -> float:
    """ROUGE-L F-measure (beta 1): LCS / len for precision and recall."""
    lcs = _lcs_length(pred_tokens, ref_tokens)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(pred_tokens), lcs / len(ref_tokens)
    return 2 * precision * recall / (precision + recall)


def _ngrams(tokens: Sequence[str], n: int) -> Counter[tuple[str, ...]]:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def bleu4(pred_tokens: Sequence[str], ref_tokens: Sequence[str]) -> float:
    """Sentence BLEU-4 against one reference, NLTK ``sentence_bleu`` semantics with
    ``SmoothingFunction().method3``: an n-gram order without a match counts
    1 / (2^k x its n-gram count), k = 1, 2, ... per such order; no unigram match gives 0."""
    if not pred_tokens or not ref_tokens:
        return 0.0
    numerators: list[int] = []
    denominators: list[int] = []
    for n in range(1, 5):
        pred_grams = _ngrams(pred_tokens, n)
        ref_grams = _ngrams(ref_tokens, n)
        numerators.append(sum(min(c, ref_grams[g]) for g, c in pred_grams.items()))
        denominators.append(max(1, sum(pred_grams.values())))
    if numerators[0] == 0:
        return 0.0
    precisions: list[float] = []
    k = 1
    for num, den in zip(numerators, denominators, strict=True):
        if num == 0:
            precisions.append(1 / (2**k * den))
            k += 1
        else:
            precisions.append(num / den)
    c, r = len(pred_tokens), len(ref_tokens)
    brevity = 1.0 if c > r else math.exp(1 - r / c)
    return brevity * math.exp(sum(0.25 * math.log(p) for p in precisions))


# ----------------------------------------------------------------------------- per answer


def exact_match(prediction: str, answer: str, lang: Lang) -> float:
    if lang == "zh":
        return float(cmrc_normalize(prediction) == cmrc_normalize(answer))
    return float(squad_normalize(prediction) == squad_normalize(answer))


def token_f1(prediction: str, answer: str, lang: Lang) -> float:
    return cmrc_f1(prediction, answer) if lang == "zh" else squad_f1(prediction, answer)


def contains(prediction: str, answer: str, lang: Lang) -> float:
    if lang == "zh":
        gold, pred = cmrc_normalize(answer), cmrc_normalize(prediction)
        gold, pred = "".join(gold.split()), "".join(pred.split())
    else:
        gold, pred = squad_normalize(answer), squad_normalize(prediction)
        gold, pred = f" {gold} ", f" {pred} "
    return float(bool(gold.strip()) and gold in pred)


ANSWER_METRICS = ("em", "f1", "rouge_l", "bleu4", "contains")


def score_answer(prediction: str, answers: Sequence[str], lang: Lang) -> dict[str, float]:
    """Every answer metric of one prediction, the best over the accepted answers."""
    if not answers:
        return {}
    pred_tokens = gen_tokens(prediction, lang)
    best = dict.fromkeys(ANSWER_METRICS, 0.0)
    for answer in answers:
        ref_tokens = gen_tokens(answer, lang)
        values = {
            "em": exact_match(prediction, answer, lang),
            "f1": token_f1(prediction, answer, lang),
            "rouge_l": rouge_l(pred_tokens, ref_tokens),
            "bleu4": bleu4(pred_tokens, ref_tokens),
            "contains": contains(prediction, answer, lang),
        }
        for key, value in values.items():
            best[key] = max(best[key], value)
    return best


def similarity(a: str, b: str, lang: Lang) -> float:
    """Symmetric similarity of two answers (stability): the token F1 of the language."""
    if a.strip() == b.strip():
        return 1.0
    return token_f1(a, b, lang)


def is_refusal(text: str, patterns: Sequence[str]) -> bool:
    """An answer that declines: it contains one of the (case-insensitive) patterns."""
    lowered = text.lower()
    return any(p.lower() in lowered for p in patterns if p)


# ----------------------------------------------------------------------------- retrieval


def gold_rank(sources: Sequence[dict], gold: str) -> int | None:
    """1-based rank of the gold document among the distinct retrieved documents."""
    seen: list[str] = []
    gold_name = gold.rsplit("/", 1)[-1]
    for source in sources:
        name = str(source.get("filename") or source.get("doc_id") or "")
        if name in seen:
            continue
        seen.append(name)
        if name == gold or name.rsplit("/", 1)[-1] == gold_name:
            return len(seen)
    return None


# ----------------------------------------------------------------------------- statistics


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear-interpolated percentile (numpy's default), None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low, high = math.floor(pos), math.ceil(pos)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


@dataclass
class Interval:
    mean: float
    low: float
    high: float

    def to_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "low": self.low, "high": self.high}


def bootstrap_ci(
    values: Sequence[float], samples: int = 1000, level: float = 0.95, seed: int = 0
) -> Interval | None:
    """Percentile bootstrap interval of the mean (questions resampled with replacement)."""
    if not values:
        return None
    import numpy as np

    data = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, len(data), size=(samples, len(data)))].mean(axis=1)
    alpha = (1 - level) / 2
    return Interval(
        float(data.mean()),
        float(np.quantile(means, alpha)),
        float(np.quantile(means, 1 - alpha)),
    )
