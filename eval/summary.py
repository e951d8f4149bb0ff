"""From the rows of ``results.jsonl`` to ``summary.json``: per-system metrics with bootstrap
intervals, retrieval, refusals, stability, latency, paired comparisons, disagreements; and the
three instruments: gold-answer likelihood (``likelihood.jsonl``), the sampled run next to the
main one (``run: sampled`` rows), the forgetting probe (``probe.jsonl``).

Every answer metric is first averaged over a question's repeats, then over questions; the
bootstrap resamples questions (the unit that varies between test sets).
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import mean
from typing import Any

from eval import metrics
from eval.compare import MAIN, PROBE_SET, SAMPLED, likelihood_set, run_of
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
    "nll": "Gold-answer likelihood: teacher-forced mean negative log-likelihood per token "
    "(nats) of the accepted answer after the exact prompt the system sends (base: the "
    "question; rag: the question with its retrieved passages; lora / rag+lora: the same with "
    "the adapter), rendered with the chat template with the assistant turn opened; the answer "
    "tokenized alone, no end-of-turn token; the lowest over the accepted answers. Lower: the "
    "model finds the answer more likely. Questions the rag gate refuses send no prompt and "
    "are left out (counted as `refused`). In-process runs only.",
    "perplexity": "exp(mean NLL) of the system (the interval is exp of the NLL interval).",
    "sampled": "The sampled run next to the main one: every question asked again "
    "`sampling_repeats` times at `sampling_temperature` (seed = eval.seed + repeat); "
    "identical / pairwise similarity / mixed right-wrong as for the main run, over the "
    "sampled answers.",
    "forgetting": "Forgetting probe: general questions unrelated to the knowledge base, asked "
    "of base and lora (greedy). changed: share of questions whose lora answer is not identical "
    "to the base answer; similarity: mean token F1 between the two answers (language of the "
    "question and answers); contains: probe accuracy of each; nll: gold-answer NLL of base "
    "and lora on the probe (with likelihood on): a drop here is what the adapter does to "
    "answers it was not trained on (e.g. the short-answer format), the control for the NLL "
    "drop on the knowledge-base questions.",
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
    stable = stability(questions, items, opts)
    if stable:
        out["stability"] = stable
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


def stability(
    questions: dict[str, list[dict]], items: dict[str, QAItem], opts: SummaryOptions
) -> dict[str, Any] | None:
    """Identical answers, mean pairwise similarity and "sometimes right, sometimes wrong"
    (some repeats contain the answer, others do not) over the questions asked at least twice;
    each share also with its bootstrap interval (``*_ci``)."""
    repeated = {q: a for q, a in questions.items() if len(a) >= 2}
    if not repeated:
        return None
    identical, similar, mixed = [], [], []
    for q, answers in repeated.items():
        texts = [r["scored_answer"] for r in answers]
        lang = answers[0]["lang"]
        identical.append(float(len({t.strip() for t in texts}) == 1))
        pairs = list(itertools.combinations(texts, 2))
        similar.append(mean(metrics.similarity(a, b, lang) for a, b in pairs))
        if items[q].answerable:
            mixed.append(mixed_correctness(answers))
    return {
        "questions": len(repeated),
        "repeats": max(len(a) for a in repeated.values()),
        "identical": _round(mean(identical)),
        "pairwise_similarity": _round(mean(similar)),
        "mixed_correctness": _round(mean(mixed)) if mixed else None,
        "mixed_questions": int(sum(mixed)),
        "identical_ci": _ci(identical, opts),
        "pairwise_similarity_ci": _ci(similar, opts),
        "mixed_correctness_ci": _ci(mixed, opts),
    }


def mixed_correctness(answers: list[dict]) -> float:
    """1.0 when some of a question's answers contain the accepted answer and others do not."""
    hits = {bool(r["scores"].get("contains")) for r in answers}
    return float(len(hits) > 1)


def likelihood_summary(rows: list[dict[str, Any]], opts: SummaryOptions) -> dict[str, Any]:
    """Mean gold-answer NLL of one system over its questions, with the bootstrap interval;
    perplexity = exp of it (and of the interval's ends)."""
    values = [float(r["nll"]) for r in rows if r.get("nll") is not None]
    nll = _ci(values, opts)
    perplexity = {k: round(math.exp(v), 4) for k, v in nll.items()} if nll else None
    tokens = [int(r["answer_tokens"]) for r in rows if r.get("nll") is not None]
    return {
        "questions": len(rows),
        "scored": len(values),
        "refused": sum(1 for r in rows if r.get("nll") is None),
        "nll": nll,
        "perplexity": perplexity,
        "answer_tokens_mean": _round(mean(tokens), 2) if tokens else None,
    }


def sampled_summary(
    questions: dict[str, list[dict]], items: dict[str, QAItem], opts: SummaryOptions
) -> dict[str, Any]:
    """The sampled run of one system: its stability and answer quality."""
    rows = [r for answers in questions.values() for r in answers]
    out: dict[str, Any] = {
        "temperature": rows[0].get("temperature") if rows else None,
        "top_p": rows[0].get("top_p") if rows else None,
        **(stability(questions, items, opts) or {}),
    }
    answerable = [q for q in questions if items[q].answerable]
    for name in ("f1", "contains"):
        values = [_per_question(questions[q], name) for q in answerable]
        out[name] = _ci([v for v in values if v is not None], opts)
    return out


def forgetting(
    rows: list[dict[str, Any]],
    opts: SummaryOptions,
    examples: int = 5,
    likelihood_rows: list[dict[str, Any]] | None = None,
) -> dict[str, Any] | None:
    """How much the adapter changed answers that should not change: base vs lora on the
    probe's general questions (one greedy answer each); with ``likelihood_rows`` (the probe's
    rows of likelihood.jsonl) also the gold-answer NLL of base and lora on them."""
    pairs: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for row in rows:
        if not row.get("error"):
            pairs[str(row["id"])][str(row["system"])] = row
    both = {q: p for q, p in pairs.items() if "base" in p and "lora" in p}
    if not both:
        return None
    changed, similar, base_hit, lora_hit = [], [], [], []
    shown: list[dict[str, Any]] = []
    for qid, pair in both.items():
        base, lora = pair["base"]["scored_answer"], pair["lora"]["scored_answer"]
        lang = metrics.language(base, lora, pair["base"]["question"], *pair["base"]["answers"])
        differs = base.strip() != lora.strip()
        changed.append(float(differs))
        similar.append(metrics.similarity(base, lora, lang))
        base_hit.append(float(pair["base"]["scores"].get("contains", 0.0)))
        lora_hit.append(float(pair["lora"]["scores"].get("contains", 0.0)))
        if differs and len(shown) < examples:
            shown.append(
                {"id": qid, "question": pair["base"]["question"], "base": base, "lora": lora}
            )
    nll: dict[str, dict[str, float]] = defaultdict(dict)
    for row in likelihood_rows or []:
        if row.get("nll") is not None and str(row["id"]) in both:
            nll[str(row["system"])][str(row["id"])] = float(row["nll"])
    paired_nll = sorted(set(nll["base"]) & set(nll["lora"]))
    return {
        "questions": len(both),
        "nll": {s: _ci(list(nll[s].values()), opts) for s in ("base", "lora")}
        if paired_nll
        else None,
        "nll_difference": _ci([nll["lora"][q] - nll["base"][q] for q in paired_nll], opts),
        "changed": _ci(changed, opts),
        "changed_questions": int(sum(changed)),
        "similarity": _ci(similar, opts),
        "contains": {"base": _ci(base_hit, opts), "lora": _ci(lora_hit, opts)},
        "contains_difference": _ci([b - a for a, b in zip(base_hit, lora_hit, strict=True)], opts),
        "examples": shown,
    }


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
    na, nb = systems[a]["_per_question"]["nll"], systems[b]["_per_question"]["nll"]
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
        "nll_difference": _ci([na[q] - nb[q] for q in sorted(set(na) & set(nb))], opts),
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
    likelihood_rows: list[dict[str, Any]] | None = None,
    probe_rows: list[dict[str, Any]] | None = None,
    notes: dict[str, str] | None = None,
) -> dict[str, Any]:
    """``rows``: results.jsonl (main and sampled runs); ``likelihood_rows``: likelihood.jsonl;
    ``probe_rows``: probe.jsonl; ``notes``: instruments that did not run, and why."""
    by_id = {i.id: i for i in items}
    mine = [r for r in rows if r["id"] in by_id and not r.get("error")]
    grouped = _by_system_question([r for r in mine if run_of(r) == MAIN])
    sampled = _by_system_question([r for r in mine if run_of(r) == SAMPLED])
    nll_rows: dict[str, list[dict[str, Any]]] = defaultdict(list)
    probe_nll = [r for r in likelihood_rows or [] if likelihood_set(r) == PROBE_SET]
    for row in likelihood_rows or []:
        if likelihood_set(row) == PROBE_SET:
            continue
        item = by_id.get(str(row.get("id")))
        if item is not None and item.answerable and not row.get("error"):
            nll_rows[str(row["system"])].append(row)
    present = [s for s in systems if s in grouped]
    per_system = {s: system_summary(grouped[s], by_id, opts) for s in present}
    for name, summary in per_system.items():
        summary["_per_question"]["nll"] = {
            str(r["id"]): float(r["nll"])
            for r in nll_rows.get(name, [])
            if r.get("nll") is not None
        }
        if nll_rows.get(name):
            summary["likelihood"] = likelihood_summary(nll_rows[name], opts)
        if name in sampled:
            summary["sampled"] = sampled_summary(sampled[name], by_id, opts)
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
        "forgetting": forgetting(probe_rows or [], opts, likelihood_rows=probe_nll),
        "notes": notes or {},
        "metrics": METRIC_DOCS,
    }
