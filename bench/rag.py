"""RAG latency and the relevance gate, measured on cmrc2018-trial (not a test).

1. Latency breakdown of a knowledge-base answer (retrieval, prompt build, time to first token,
   generation) vs the bare LLM answering the same question without retrieval, same run and
   settings. Target: retrieval + prompt build add <= 15% to the time to first token at the
   default top_k (overhead / (ttft - overhead)).
2. ``--calibrate``: the relevance gate. On-topic questions (their passage is in the KB) and
   off-topic ones (cmrc questions whose passage is left out of the KB, and English questions
   from ARAGOG when present, and every on-topic question again with its own file left out of
   the search and the term counts): share kept / refused for a grid of
   (rag.min_dense_score, rag.min_keyword_score, rag.min_question_coverage), coverage counted
   flat and by rarity (rag.coverage_by_rarity); then, at the settings' values, a grid of the
   dense similarity that passes alone (rag.min_dense_score_alone) by its margin over the
   question's reference chunk (rag.dense_alone_margin).

    .venv/bin/python bench/rag.py [../shared/data] [--questions 20] [--calibrate]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.llm.base import ChatMessage, GenerationParams  # noqa: E402
from app.rag.focus import TermRarity, coverage  # noqa: E402
from app.rag.search import KnowledgeBaseSearch  # noqa: E402
from app.services.factory import build_services  # noqa: E402
from app.services.rag import RagOptions  # noqa: E402
from app.settings import load_settings  # noqa: E402
from app.settings.rag import RagSettings  # noqa: E402
from ingest.models import with_headings  # noqa: E402
from ingest.service import KnowledgeBaseService  # noqa: E402


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


async def bare_ttft(
    services: object, question: str, params: GenerationParams
) -> tuple[float, float]:
    """(time to first token, whole answer) in ms of the plain model on the bare question."""
    chat = services.chat  # type: ignore[attr-defined]
    start = time.perf_counter()
    first = None
    slot, pieces = await chat.open_stream([ChatMessage("user", question)], params)
    try:
        async for piece in pieces:
            if piece.text and first is None:
                first = time.perf_counter()
    finally:
        slot.release()
    end = time.perf_counter()
    return ((first or end) - start) * 1000, (end - start) * 1000


async def run(args: argparse.Namespace) -> None:
    base = Path(args.data) / "cmrc2018-trial"
    files = sorted((base / "docs").glob("*.txt"))
    qa = [json.loads(line) for line in (base / "qa.jsonl").read_text().splitlines() if line]
    held_out = set()
    if args.calibrate:
        held_out = {f.name for f in files[len(files) - args.held_out :]}
        files = [f for f in files if f.name not in held_out]
    workdir = Path(args.data_dir or tempfile.mkdtemp(prefix="kbqa-bench-rag-"))
    settings = load_settings(
        **{
            "data_dir": workdir,
            "llm.model": args.model,
            "llm.max_new_tokens": args.max_tokens,
            "ingest.workers": 0,
            "rag.min_dense_score": 0.0 if args.calibrate else None,
            "rag.min_keyword_score": 0.0 if args.calibrate else None,
        }
    )
    services = await build_services(settings)
    kb, rag = services.kb, services.rag
    assert kb is not None and rag is not None and services.llm is not None
    try:
        if "cmrc" not in {k.name for k in kb.list_kbs()}:
            kb.create_kb("cmrc")
            for f in files:
                kb.upload("cmrc", f.name, f.read_bytes())
            started = time.perf_counter()
            kb.pipeline.run_pending(max_jobs=len(files) + 1)
            print(f"ingested files={len(files)} seconds={time.perf_counter() - started:.1f}")
        print(
            f"model={services.llm.name} device={services.llm.device} embedder="
            f"{kb.embeddings.name} top_k={rag.default_top_k} max_tokens={args.max_tokens}"
        )
        if args.calibrate:
            # the gate as configured (the services above run without it)
            gate = load_settings(**{"data_dir": workdir}).rag
            calibrate(kb, qa, held_out, Path(args.data), gate)
            return
        known = {f.name for f in files}
        questions = [q["question"] for q in qa if q["source"] in known][: args.questions]
        params = GenerationParams(max_tokens=args.max_tokens)
        await rag.answer(questions[0], ["cmrc"], params=params)  # warm up
        await bare_ttft(services, questions[0], params)
        rows: dict[str, list[float]] = {
            k: [] for k in ("retrieval", "prompt", "ttft", "generation", "total", "bare_ttft")
        }
        rows["bare_total"] = []
        rows["prompt_tokens"] = []
        for question in questions:
            answer = await rag.answer(question, ["cmrc"], params=params, options=RagOptions())
            t = answer.timings
            rows["retrieval"].append(t["retrieval_ms"])
            rows["prompt"].append(t["prompt_ms"])
            rows["ttft"].append(t.get("ttft_ms", t["total_ms"]))
            rows["generation"].append(t["generation_ms"])
            rows["total"].append(t["total_ms"])
            rows["prompt_tokens"].append(answer.prompt_tokens)
            ttft, total = await bare_ttft(services, question, params)
            rows["bare_ttft"].append(ttft)
            rows["bare_total"].append(total)
        for name, values in rows.items():
            unit = "" if name == "prompt_tokens" else "ms"
            print(f"{name:>13}: p50={pct(values, 50):8.1f}{unit} p95={pct(values, 95):8.1f}{unit}")
        overhead = [r + p for r, p in zip(rows["retrieval"], rows["prompt"], strict=True)]
        share = [o / max(t - o, 1e-9) for o, t in zip(overhead, rows["ttft"], strict=True)]
        print(
            f"retrieval+prompt overhead p50={pct(overhead, 50):.1f}ms = "
            f"{100 * pct(share, 50):.1f}% of the LLM's own time to first token "
            f"(target <= 15%); rag ttft / bare ttft p50 ratio = "
            f"{pct(rows['ttft'], 50) / pct(rows['bare_ttft'], 50):.2f}x "
            f"(the rest is prefill of the passages); questions={len(questions)}"
        )
        print(
            f"retrieval+prompt overhead p50 / bare LLM ttft p50 = "
            f"{100 * pct(overhead, 50) / pct(rows['bare_ttft'], 50):.1f}% (target <= 15%)"
        )
    finally:
        services.close()


class _Without(TermRarity):
    """A KB's term rarity as if one file's chunks were not in it (leave-one-out)."""

    def __init__(self, whole: TermRarity, left_out: Counter[str], chunks: int) -> None:
        self.chunks = whole.chunks - chunks
        self.prior_chunks = whole.prior_chunks
        self.frequency = whole.frequency - left_out


def calibrate(
    kb: KnowledgeBaseService, qa: list[dict], held_out: set[str], data: Path, rag: RagSettings
) -> None:
    """On-topic: every question whose passage is in the KB. Off-topic: the held-out passages'
    questions, ARAGOG's English ones, and leave-one-out: every on-topic question asked with its
    own file's chunks taken out of the search and of the term counts (a large set of questions
    whose passage is missing from a KB of neighbouring topics; the threshold is chosen on it and
    the on-topic set, then read on the others)."""
    on = [q for q in qa if q["source"] not in held_out and q["question"].strip()]
    off_zh = [q for q in qa if q["source"] in held_out]
    aragog = data / "aragog" / "qa.jsonl"
    off_en = (
        [json.loads(line) for line in aragog.read_text().splitlines() if line][:50]
        if aragog.exists()
        else []
    )
    search = KnowledgeBaseSearch(kb)
    whole = search.rarity("cmrc", rag.rarity_max_chunks, rag.rarity_prior_chunks)
    by_file: dict[str, list[str]] = {}
    for doc in kb.catalog.list_documents("cmrc"):
        by_file[doc.filename] = [t for _, t, _ in kb.catalog.chunks_of("cmrc", doc.doc_id)]
    left_out: dict[str, str | None] = {"file": None}
    dense, keyword = search.dense, search.keyword

    def without(hits: list[tuple[str, float]], k: int) -> list[tuple[str, float]]:
        if left_out["file"] is None:
            return hits[:k]
        rows = kb.catalog.chunks_by_id("cmrc", [c for c, _ in hits])
        return [
            (c, s) for c, s in hits if c in rows and rows[c][1]["filename"] != left_out["file"]
        ][:k]

    extra = 60  # candidates fetched beyond k, so k remain without the left-out file's chunks
    search.dense = lambda name, q, k: without(dense(name, q, k + extra), k)  # type: ignore[method-assign]
    search.keyword = lambda name, q, k: without(keyword(name, q, k + extra), k)  # type: ignore[method-assign]
    # per question, per hit (top 3, as rag.top_k): (dense, keyword, coverage, rarity coverage,
    # the question's reference similarity: rag.dense_reference_rank)
    Row = list[tuple[float, float, float, float, float]]
    scores: dict[str, list[Row]] = {}
    sets = (("on", on, False), ("off_zh", off_zh, False), ("off_en", off_en, False))
    for label, items, loo in (*sets, ("loo", on, True)):
        rows = []
        for item in items:
            rarity = whole
            if loo:
                left_out["file"] = item["source"]
                chunks = by_file.get(item["source"], [])
                rarity = _Without(whole, TermRarity(chunks).frequency, len(chunks))
            hits = search.search("cmrc", item["question"], 3, 0.0, "hybrid")
            nearest = search.dense("cmrc", item["question"], rag.dense_reference_rank)
            reference = nearest[-1][1] if nearest else 1.0
            left_out["file"] = None
            question = item["question"]
            texts = [
                with_headings(h.text, list(h.metadata.get("heading_path") or [])) for h in hits
            ]
            rows.append(
                [
                    (
                        h.dense_score or 0.0,
                        h.keyword_score or 0.0,
                        coverage(text, question),
                        coverage(text, question, rarity),
                        reference,
                    )
                    for h, text in zip(hits, texts, strict=True)
                ]
            )
        scores[label] = rows
        print(f"{label:>6} n={len(rows)}", flush=True)

    def kept(
        rows: list[Row],
        md: float,
        mk: float,
        mc: float,
        by_rarity: bool,
        alone: float = 0.0,
        margin: float = 0.0,
    ) -> float:
        if not rows:
            return float("nan")
        return float(
            np.mean(
                [
                    any(
                        (0 < alone <= d and d - ref >= margin)
                        or ((d >= md or k >= mk) and (r if by_rarity else c) >= mc)
                        for d, k, c, r, ref in hits
                    )
                    for hits in rows
                ]
            )
        )

    print(
        "coverage weights  min_dense min_keyword min_coverage  on-topic kept  "
        "leave-one-out refused  held-out zh refused  en refused  off-topic (zh+en) refused"
    )
    off_all = scores["off_zh"] + scores["off_en"]
    for by_rarity, grid in (
        (False, (0.4, 0.45, 0.5)),
        (True, (0.32, 0.33, 0.34, 0.35, 0.36, 0.37, 0.38)),
    ):
        for md in (0.86, 0.87):
            for mk in (0.5, 0.55):
                for mc in grid:
                    print(
                        f"{'rarity' if by_rarity else 'flat':>16} {md:10.2f} {mk:11.2f} "
                        f"{mc:12.2f}  {kept(scores['on'], md, mk, mc, by_rarity):13.3f}  "
                        f"{1 - kept(scores['loo'], md, mk, mc, by_rarity):21.3f}  "
                        f"{1 - kept(scores['off_zh'], md, mk, mc, by_rarity):19.3f}  "
                        f"{1 - kept(scores['off_en'], md, mk, mc, by_rarity):10.3f}  "
                        f"{1 - kept(off_all, md, mk, mc, by_rarity):25.3f}"
                    )
    md, mk, mc, by = (
        rag.min_dense_score,
        rag.min_keyword_score,
        rag.min_question_coverage,
        rag.coverage_by_rarity,
    )
    print(
        f"\nwith the settings' gate ({md}/{mk}/{mc}), a dense similarity that passes alone "
        "(rag.min_dense_score_alone, 0: off) when it stands a margin above the question's "
        f"{rag.dense_reference_rank}th nearest chunk (rag.dense_alone_margin, "
        "rag.dense_reference_rank):"
    )
    print(
        "dense alone  margin  on-topic kept  leave-one-out refused  held-out zh refused  "
        "en refused  off-topic (zh+en) refused"
    )
    for alone, margin in (
        (0.0, 0.0),
        *((a, 0.0) for a in (0.88, 0.885, 0.89, 0.895, 0.9, 0.91)),
        *((a, m) for a in (0.885, 0.89, 0.895) for m in (0.02, 0.03, 0.035, 0.04, 0.05)),
    ):
        print(
            f"{alone:11.3f}  {margin:6.3f}  "
            f"{kept(scores['on'], md, mk, mc, by, alone, margin):13.3f}  "
            f"{1 - kept(scores['loo'], md, mk, mc, by, alone, margin):21.3f}  "
            f"{1 - kept(scores['off_zh'], md, mk, mc, by, alone, margin):19.3f}  "
            f"{1 - kept(scores['off_en'], md, mk, mc, by, alone, margin):10.3f}  "
            f"{1 - kept(off_all, md, mk, mc, by, alone, margin):25.3f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("data", nargs="?", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--questions", type=int, default=20)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--data-dir", help="reuse a data dir (the KB is ingested once)")
    parser.add_argument("--calibrate", action="store_true", help="relevance gate table")
    parser.add_argument(
        "--held-out", type=int, default=100, help="--calibrate: passages left out of the KB"
    )
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
