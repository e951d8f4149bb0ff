"""Answer quality through the service's own /ask route, on cmrc2018-trial (not a test).

The knowledge base holds the cmrc2018-trial passages minus ``--held-out`` of them. On-topic
questions (a fixed-seed sample of those whose passage is in the KB) are asked greedily through
``POST /v1/knowledge_bases/cmrc/ask`` on a real uvicorn server and scored with the eval's own
metrics (CMRC F1, contains); the first ``--repeat-questions`` are asked ``--repeats`` times
(identical answers?). Off-topic questions (those of the held-out passages, and ARAGOG's
English ones when present) must be refused. Targets (issue 12): contains >= 0.65, F1 >= 0.65,
answerable wrongly refused <= 5%, marker-only answers 0, identical over repeats 100%,
off-topic refused >= 95%, KB answer latency p50 <= 8 s.

    .venv/bin/python bench/answer_quality.py [../shared/data] --model qwen2.5-coder-0.5b-instruct
        [--questions 300] [--repeats 3] [--repeat-questions 300] [--out bench/out/quality]

Resumable: answers are appended to ``<out>/<model>/answers.jsonl`` and skipped on a re-run;
the KB is built once under ``<out>/kb`` and shared by every model.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from langchain_core.documents import Document

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.main import create_app  # noqa: E402
from app.rag.chain import Prompts, question_language  # noqa: E402
from app.rag.quote import candidates, clauses_of, finish_for, lines_of  # noqa: E402
from app.services.factory import build_services  # noqa: E402
from app.services.rag import extractive_answer  # noqa: E402
from app.settings import load_settings  # noqa: E402
from app.settings.eval import REFUSAL_PATTERNS  # noqa: E402
from eval.metrics import is_refusal, score_answer  # noqa: E402
from tests.conftest import run_server  # noqa: E402

_MARKERS = re.compile(r"\[\d+\]|[\s\W_]")


def marker_only(text: str) -> bool:
    return bool(text.strip()) and not _MARKERS.sub("", text)


def build_kb(data: Path, out: Path, held_out: int) -> tuple[list[dict], list[dict]]:
    """(on-topic questions, off-topic questions); the KB is ingested once."""
    base = data / "cmrc2018-trial"
    files = sorted((base / "docs").glob("*.txt"))
    left_out = {f.name for f in files[len(files) - held_out :]}
    qa = [json.loads(line) for line in (base / "qa.jsonl").read_text().splitlines() if line]
    settings = load_settings(**{"data_dir": out / "kb", "llm.backend": "none", "ingest.workers": 0})
    services = asyncio.run(build_services(settings))
    kb = services.kb
    assert kb is not None
    try:
        if "cmrc" not in {k.name for k in kb.list_kbs()}:
            kb.create_kb("cmrc")
            for f in files:
                if f.name not in left_out:
                    kb.upload("cmrc", f.name, f.read_bytes())
            started = time.perf_counter()
            kb.pipeline.run_pending(max_jobs=len(files) + 1)
            print(
                f"ingested files={len(files) - len(left_out)} "
                f"seconds={time.perf_counter() - started:.1f}",
                flush=True,
            )
    finally:
        services.close()
    on = [q for q in qa if q["source"] not in left_out]
    off = [{**q, "lang": "zh"} for q in qa if q["source"] in left_out][:100]
    aragog = data / "aragog" / "qa.jsonl"
    if aragog.exists():
        lines = aragog.read_text().splitlines()
        off += [{**json.loads(line), "lang": "en"} for line in lines if line][:50]
    return on, off


def granularity_ceiling(rows: list[dict]) -> dict[str, float]:
    """Contains and F1 of two answers no reader writes, from each row's passages as sent: the
    passage sentence holding a gold answer (with the next one when it runs over) and the
    shortest run of clauses holding it (``clauses_of``); "" when the passages hold none. An
    exactly right sentence is the most a sentence-quoting answer can be: where its F1 is below
    the target, only answers shorter than a sentence reach it."""
    sentence, clause = [], []
    for row in rows:
        passages = row["passages"] or []
        text = "".join(passages)
        gold = next((a for a in row["answers"] if a and a in text), "")
        by_sentence = next(
            (c for n in (1, 2) for p in passages for c in candidates(p, n) if gold and gold in c),
            "",
        )
        by_clause = ""
        for line in lines_of(passages):
            at = line.find(gold)
            if gold and at >= 0:
                spans = clauses_of(line)
                start = max((a for a, _ in spans if a <= at), default=0)
                end = min((b for _, b in spans if b >= at + len(gold)), default=len(line))
                by_clause = line[start:end]
                break
        sentence.append(score_answer(by_sentence, row["answers"], "zh"))
        clause.append(score_answer(by_clause, row["answers"], "zh"))
    return {
        "sentence_contains": float(np.mean([s["contains"] for s in sentence])),
        "sentence_f1": float(np.mean([s["f1"] for s in sentence])),
        "clause_contains": float(np.mean([s["contains"] for s in clause])),
        "clause_f1": float(np.mean([s["f1"] for s in clause])),
    }


def draw(on: list[dict], n: int, seed: int) -> list[dict]:
    """``n`` questions in a fixed-seed order of all of them, skipping the set's two empty ones.
    The order's first 300 are ``random.Random(seed).sample(on, 300)``: earlier releases drew
    that and dropped the empty question among them (299 questions); now it is 300."""
    ordered = random.Random(seed).sample(on, len(on))
    return [q for q in ordered if q["question"].strip()][:n]


def ask(client: httpx.Client, question: str) -> tuple[dict[str, Any], float]:
    start = time.perf_counter()
    response = client.post(
        "/v1/knowledge_bases/cmrc/ask", json={"question": question, "temperature": 0}
    )
    response.raise_for_status()
    return response.json(), time.perf_counter() - start


def run_model(args: argparse.Namespace, on: list[dict], off: list[dict]) -> dict[str, Any]:
    out = Path(args.out) / (args.model.replace("/", "_") + (f"-{args.tag}" if args.tag else ""))
    out.mkdir(parents=True, exist_ok=True)
    path = out / "answers.jsonl"
    done = {}
    if path.exists():
        for line in path.read_text().splitlines():
            row = json.loads(line)
            done[(row["kind"], row["id"], row["repeat"])] = row
    sample = draw(on, args.questions, args.seed)
    jobs = [("on", q, r) for r in range(args.repeats) for q in sample[: args.repeat_questions]]
    jobs = [("on", q, 0) for q in sample[args.repeat_questions :]] + jobs
    off = off[: args.off_topic] if args.off_topic is not None else off
    jobs += [("off", q, 0) for q in off]
    overrides = {
        "data_dir": Path(args.out) / "kb",
        "llm.model": args.model,
        "llm.backend": args.backend,
        "ingest.workers": 0,
        **dict(kv.split("=", 1) for kv in args.set),
    }
    settings = load_settings(**overrides)
    with run_server(create_app(settings)) as server, path.open("a") as sink:
        client = httpx.Client(base_url=server.url, timeout=600)
        todo = [j for j in jobs if (j[0], j[1]["id"], j[2]) not in done]
        print(
            f"model={args.model} backend={args.backend} questions={len(sample)} "
            f"off_topic={len(off)} todo={len(todo)}",
            flush=True,
        )
        for n, (kind, q, repeat) in enumerate(todo, start=1):
            body, seconds = ask(client, q["question"])
            row = {
                "kind": kind,
                "id": q["id"],
                "repeat": repeat,
                "question": q["question"],
                "answers": q.get("answers", []),
                "answer": body["answer"],
                "refused": body["refused"],
                "seconds": seconds,
                "sources": [s["filename"] for s in body["sources"]],
                "passages": [s["text"] for s in body["sources"]],
                "gold": q.get("source"),
                "prompt_tokens": body.get("usage", {}).get("prompt_tokens"),
            }
            done[(kind, q["id"], repeat)] = row
            sink.write(json.dumps(row, ensure_ascii=False) + "\n")
            sink.flush()
            if n % 10 == 0 or n == len(todo):
                print(f"  {n}/{len(todo)} last={seconds:.1f}s {row['answer'][:40]!r}", flush=True)
    return summarize(args, sample, off, done, out)


def finish_rows(args: argparse.Namespace, on: list[dict], off: list[dict]) -> dict[str, Any]:
    """``--finish-from TAG``: no question asked; the raw answers of a run made with
    ``--set rag.quote_answers=false`` (its rows keep the passages as sent) finished by the
    service's own step (app.rag.quote.finish_for, the settings with this run's ``--set``), as
    ``/ask`` would have sent them. Only the finishing can differ from a run through ``/ask``."""
    settings = load_settings(**dict(kv.split("=", 1) for kv in args.set)).rag
    model = args.model.replace("/", "_")
    source = Path(args.out) / f"{model}-{args.finish_from}" / "answers.jsonl"
    out = Path(args.out) / (model + (f"-{args.tag}" if args.tag else "-finished"))
    out.mkdir(parents=True, exist_ok=True)
    done = {}
    with (out / "answers.jsonl").open("w") as sink:
        for line in source.read_text().splitlines():
            row = json.loads(line)
            if row["passages"] and not row["refused"]:
                prompts = Prompts.of(
                    settings, question_language(row["question"], settings.zh_ratio), row["question"]
                )
                row["answer"] = (
                    finish_for(
                        settings,
                        row["answer"],
                        row["question"],
                        row["passages"],
                        short=prompts.short,
                        language=prompts.language,
                        file_names=row["sources"],
                    )
                    # None: what /ask sends instead, the first passage's best sentence
                    or extractive_answer(row["question"], [Document(row["passages"][0])])
                )
            done[(row["kind"], row["id"], row["repeat"])] = row
            sink.write(json.dumps(row, ensure_ascii=False) + "\n")
    sample = draw(on, args.questions, args.seed)
    off = [q for q in off if ("off", q["id"], 0) in done]
    return summarize(args, sample, off, done, out)


def summarize(
    args: argparse.Namespace, sample: list[dict], off: list[dict], done: dict, out: Path
) -> dict[str, Any]:
    patterns = REFUSAL_PATTERNS
    first = [done[("on", q["id"], 0)] for q in sample]
    scores = [score_answer(r["answer"], r["answers"], "zh") for r in first]
    refused = [r["refused"] or is_refusal(r["answer"], patterns) for r in first]
    repeated = [
        [done[("on", q["id"], k)]["answer"] for k in range(args.repeats)]
        for q in sample[: args.repeat_questions]
    ]
    off_rows = [done[("off", q["id"], 0)] for q in off]
    off_refused = [r["refused"] or is_refusal(r["answer"], patterns) for r in off_rows]
    seconds = [r["seconds"] for r in first]
    summary = {
        "model": args.model,
        "tag": args.tag,
        "settings": args.set,
        "backend": args.backend,
        "questions": len(first),
        "contains": float(np.mean([s["contains"] for s in scores])),
        "f1": float(np.mean([s["f1"] for s in scores])),
        "em": float(np.mean([s["em"] for s in scores])),
        "wrongly_refused": float(np.mean(refused)),
        "marker_only": sum(marker_only(r["answer"]) for r in first),
        "identical_over_repeats": float(np.mean([len(set(a)) == 1 for a in repeated]))
        if repeated
        else None,
        "repeats": args.repeats,
        "repeat_questions": len(repeated),
        "off_topic": len(off_rows),
        "off_topic_refused": float(np.mean(off_refused)) if off_rows else None,
        "latency_p50_s": float(np.percentile(seconds, 50)),
        "latency_p95_s": float(np.percentile(seconds, 95)),
        "gold_in_sources": float(np.mean([r["gold"] in r["sources"] for r in first])),
        "gold_in_prompt": float(
            np.mean([any(a in "".join(r["passages"]) for a in r["answers"]) for r in first])
        ),
        # the most a right answer of a sentence or a clause run scores (the metric's ceiling
        # for answers of that length)
        "ceiling": granularity_ceiling(first),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False))
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", nargs="?", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--questions", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--repeat-questions", type=int, default=300)
    parser.add_argument("--held-out", type=int, default=16, help="passages left out (off-topic)")
    parser.add_argument(
        "--off-topic", type=int, default=None, help="ask only the first N off-topic questions"
    )
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument("--out", default=str(ROOT / "bench" / "out" / "quality"))
    parser.add_argument("--set", action="append", default=[], help="setting override k=v")
    parser.add_argument("--tag", default="", help="a name for this configuration's results")
    parser.add_argument(
        "--finish-from",
        default="",
        help="TAG of a run made with --set rag.quote_answers=false: finish its answers offline "
        "(app.rag.quote.finish) instead of asking",
    )
    args = parser.parse_args()
    on, off = build_kb(Path(args.data), Path(args.out), args.held_out)
    summary = finish_rows(args, on, off) if args.finish_from else run_model(args, on, off)
    print(json.dumps(summary, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
