"""From the rows of ``results.jsonl`` to ``summary.json``: per-system metrics with bootstrap
intervals, retrieval, refusals, stability, latency, paired comparisons, disagreements.

Every answer metric is first averaged over a question's repeats, then over questions; the
bootstrap resamples questions (the unit that varies between test sets).
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import mean
from typing import Any

from eval import metrics
from eval.data import QAItem

MAIN_METRICS = ("em", "f1", "rouge_l", "bleu4", "contains")
PAIRS = (("rag", "lora"), ("rag+lora", "rag"), ("rag+lora", "lora"), ("lora", "base"))

METRIC_DOCS: dict[str, str] = {
    "em": "Exact match after normalization. Chinese answers: CMRC 2018 rules (lower-case, "
    "CMRC punctuation removed); others: SQuAD v1.1 rules (lower-case, punctuation and "
    "articles removed, whitespace collapsed).",
    "f1": "Token F1. Chinese: CMRC 2018 (one token per CJK character and punctuation mark, "
    "other runs as words; F1 of the longest common substring); others: SQuAD v1.1 "
    "(normalized whitespace words, bag-of-words overlap).",
    "rouge_l": "ROUGE-L F-measure (LCS, beta 1) on jieba tokens for Chinese, lower-cased "
    "whitespace words for English (as ChatGLM3 finetune_demo).",
    "bleu4": "Sentence BLEU-4 (uniform weights, NLTK smoothing method3) on the same tokens "
    "as ROUGE-L (as ChatGLM3 finetune_demo).",
    "contains": "The normalized accepted answer occurs in the normalized answer (same "
    "normalization as EM).",
    "hit@1": "Retrieval (rag systems, questions with a `source`): the gold document is the "
    "first distinct retrieved document.",
    "hit@k": "The gold document is among the retrieved documents (k = passages retrieved).",
    "mrr": "Mean reciprocal rank of the gold document among distinct retrieved documents "
    "(0 when not retrieved).",
    "refusal_rate": "Unanswerable / off-topic questions answered with a refusal (the RAG "
    "service's flag, or a refusal phrase from eval.refusal_patterns).",
    "wrong_refusal_rate": "Answerable questions answered with a refusal.",
    "identical": "Stability: share of questions whose repeated answers are all identical.",
    "pairwise_similarity": "Stability: mean over questions of the mean token F1 between every "
    "two of its repeated answers.",
    "mixed_correctness": "Share of answerable questions where some repeats contain the answer "
    "and others do not ('sometimes right, sometimes wrong').",
    "latency": "Wall time per answer (ms) as the system reports it (total_ms), p50 and p95.",
    "tokens_per_s": "Completion tokens / generation seconds over all answers.",
}


@dataclass
class SummaryOptions:
    samples: int = 1000
    level: float = 0.95
    seed: int = 0
    tie_margin: float = 0.0
    disagreements: int = 10


def _by_system_question(rows: list[dict[str, Any]]) -> dict[str, dict[str, list[dict]]]:
    grouped: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        grouped[row["system"]][row["id"]].append(row)
    for questions in grouped.values():
        for answers in questions.values():
            answers.sort(key=lambda r: r["repeat"])
    return grouped


def _per_question(answers: list[dict], name: str) -> float | None:
    values = [r["scores"][name] for r in answers if r["scores"].get(name) is not None]
    return mean(float(v) for v in values) if values else None


def _ci(values: Sequence[float], opts: SummaryOptions) -> dict[str, float] | None:
    interval = metrics.bootstrap_ci(values, opts.samples, opts.level, opts.seed)
    return interval.to_dict() if interval else None


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def system_summary(
    questions: dict[str, list[dict]], items: dict[str, QAItem], opts: SummaryOptions
) -> dict[str, Any]:
    answerable = [q for q in questions if items[q].answerable]
    unanswerable = [q for q in questions if not items[q].answerable]
    out: dict[str, Any] = {
        "questions": len(questions),
        "answerable": len(answerable),
        "unanswerable": len(unanswerable),
        "answers": sum(len(a) for a in questions.values()),
    }
    per_q: dict[str, dict[str, float]] = {}
    for name in MAIN_METRICS:
        values = {q: _per_question(questions[q], name) for q in answerable}
        clean = {q: v for q, v in values.items() if v is not None}
        per_q[name] = clean
        out[name] = _ci(list(clean.values()), opts)
    # retrieval
    hit_questions = [q for q in questions if "hit@1" in questions[q][0]["scores"]]
    if hit_questions:
        retrieval: dict[str, Any] = {"questions": len(hit_questions)}
        for name, key in (("hit@1", "hit@1"), ("hit@k", "hit@k"), ("mrr", "rr")):
            found = [_per_question(questions[q], key) for q in hit_questions]
            retrieval[name] = _ci([v for v in found if v is not None], opts)
        retrieval["k"] = max(int(questions[q][0]["scores"].get("k", 0)) for q in hit_questions)
        out["retrieval"] = retrieval

    # refusals
    def refusal_share(ids: list[str]) -> float | None:
        values = [_per_question(questions[q], "refused") for q in ids]
        clean = [v for v in values if v is not None]
        return _round(mean(clean)) if clean else None

    out["refusal_rate"] = refusal_share(unanswerable)
    out["wrong_refusal_rate"] = refusal_share(answerable)
    # stability over repeats
    repeated = {q: a for q, a in questions.items() if len(a) >= 2}
    if repeated:
        identical, similar, mixed = [], [], []
        for q, answers in repeated.items():
            texts = [r["scored_answer"] for r in answers]
            lang = answers[0]["lang"]
            identical.append(float(len({t.strip() for t in texts}) == 1))
            pairs = list(itertools.combinations(texts, 2))
            similar.append(mean(metrics.similarity(a, b, lang) for a, b in pairs))
            if items[q].answerable:
                hits = {r["scores"].get("contains") for r in answers}
                mixed.append(float(len(hits) > 1))
        out["stability"] = {
            "questions": len(repeated),
            "repeats": max(len(a) for a in repeated.values()),
            "identical": _round(mean(identical)),
            "pairwise_similarity": _round(mean(similar)),
            "mixed_correctness": _round(mean(mixed)) if mixed else None,
        }
    # latency and throughput
    rows = [r for answers in questions.values() for r in answers]
    totals = [float(r["timings"]["total_ms"]) for r in rows if "total_ms" in r.get("timings", {})]
    tokens = sum(int(r.get("timings", {}).get("completion_tokens") or 0) for r in rows)
    gen_ms = sum(
        float(r["timings"].get("generation_ms") or r["timings"].get("total_ms") or 0)
        for r in rows
        if r.get("timings")
    )
    out["latency_ms"] = {
        "p50": _round(metrics.percentile(totals, 50), 1),
        "p95": _round(metrics.percentile(totals, 95), 1),
        "mean": _round(mean(totals), 1) if totals else None,
    }
    out["tokens_per_s"] = _round(tokens / (gen_ms / 1000), 2) if gen_ms > 0 and tokens else None
    out["completion_tokens_mean"] = _round(tokens / len(rows), 1) if rows else None
    out["_per_question"] = per_q
    return out


def paired(
    a: str, b: str, systems: dict[str, dict[str, Any]], opts: SummaryOptions
) -> dict[str, Any] | None:
    """Which of two systems wins on how many questions (mean F1 over repeats), and the
    bootstrap interval of the mean difference."""
    fa, fb = systems[a]["_per_question"]["f1"], systems[b]["_per_question"]["f1"]
    common = sorted(set(fa) & set(fb))
    if not common:
        return None
    diffs = [fa[q] - fb[q] for q in common]
    ca, cb = systems[a]["_per_question"]["contains"], systems[b]["_per_question"]["contains"]
    return {
        "a": a,
        "b": b,
        "metric": "f1",
        "questions": len(common),
        "a_wins": sum(d > opts.tie_margin for d in diffs),
        "b_wins": sum(d < -opts.tie_margin for d in diffs),
        "ties": sum(abs(d) <= opts.tie_margin for d in diffs),
        "mean_difference": _ci(diffs, opts),
        "contains_difference": _ci([ca[q] - cb[q] for q in common if q in ca and q in cb], opts),
    }


def disagreements(
    grouped: dict[str, dict[str, list[dict]]],
    systems: list[str],
    items: dict[str, QAItem],
    limit: int,
) -> list[dict[str, Any]]:
    """The answerable questions whose per-system mean F1 spread most."""
    found: list[dict[str, Any]] = []
    for qid, item in items.items():
        if not item.answerable:
            continue
        per = {s: grouped[s][qid] for s in systems if qid in grouped.get(s, {})}
        if len(per) < 2:
            continue
        f1 = {s: _per_question(a, "f1") or 0.0 for s, a in per.items()}
        contains = {s: _per_question(a, "contains") or 0.0 for s, a in per.items()}
        spread = max(f1.values()) - min(f1.values())
        spread_c = max(contains.values()) - min(contains.values())
        if spread <= 0 and spread_c <= 0:
            continue
        found.append(
            {
                "id": qid,
                "question": item.question,
                "answers": item.answers,
                "spread": round(spread, 4),
                "systems": {
                    s: {
                        "answer": a[0]["scored_answer"],
                        "f1": round(f1[s], 4),
                        "contains": round(contains[s], 4),
                        "distinct_answers": len({r["scored_answer"] for r in a}),
                    }
                    for s, a in per.items()
                },
            }
        )
    found.sort(key=lambda d: (-float(d["spread"]), str(d["id"])))
    return found[:limit]


def summarize(
    rows: list[dict[str, Any]],
    items: list[QAItem],
    systems: list[str],
    opts: SummaryOptions,
    *,
    skipped: dict[str, str] | None = None,
    meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    by_id = {i.id: i for i in items}
    grouped = _by_system_question([r for r in rows if r["id"] in by_id])
    present = [s for s in systems if s in grouped]
    per_system = {s: system_summary(grouped[s], by_id, opts) for s in present}
    pairs = [
        p
        for a, b in PAIRS
        if a in per_system and b in per_system
        if (p := paired(a, b, per_system, opts))
    ]
    for summary in per_system.values():
        summary.pop("_per_question")
    return {
        "meta": meta or {},
        "questions": len(items),
        "answerable": sum(i.answerable for i in items),
        "systems": per_system,
        "skipped": skipped or {},
        "paired": pairs,
        "disagreements": disagreements(grouped, present, by_id, opts.disagreements),
        "bootstrap": {"samples": opts.samples, "level": opts.level, "seed": opts.seed},
        "metrics": METRIC_DOCS,
    }
