"""Helper steps of bench/rag_vs_finetune.sh (RAG vs LoRA finetuning on CMRC 2018 trial).

    python bench/rag_vs_finetune.py subset --data ../shared/data/cmrc2018-trial --docs 12 \
        --negatives 5 --out WORK  # WORK/docs/*.txt and WORK/qa.jsonl: the first N documents
                              # (sorted by name) and every question about them;
                              # WORK/negatives.jsonl: one question about each of the next 5
                              # documents (not in the knowledge base: refusing is right)
    python bench/rag_vs_finetune.py table WORK/report/summary.json

The split, training and comparison are kbqa commands (see bench/rag_vs_finetune.sh).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path


def subset(data: Path, docs: int, out: Path, negatives: int) -> None:
    names = sorted(p.name for p in (data / "docs").glob("*.txt"))
    chosen = set(names[:docs] if docs > 0 else names)
    target = out / "docs"
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    for name in chosen:
        shutil.copyfile(data / "docs" / name, target / name)
    lines = [
        line
        for line in (data / "qa.jsonl").read_text(encoding="utf-8").splitlines()
        if line.strip() and json.loads(line).get("source") in chosen
    ]
    (out / "qa.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    # off-topic for this knowledge base: the first question of each of the next documents
    others = [n for n in names if n not in chosen][:negatives]
    off_topic = []
    for line in (data / "qa.jsonl").read_text(encoding="utf-8").splitlines():
        record = json.loads(line) if line.strip() else {}
        if record.get("source") in others:
            others.remove(record["source"])
            off_topic.append({"id": f"off-{record['id']}", "question": record["question"]})
    (out / "negatives.jsonl").write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in off_topic), encoding="utf-8"
    )
    print(f"docs={len(chosen)} questions={len(lines)} off_topic={len(off_topic)} out={out}")


def table(summary_path: Path) -> None:
    summary = json.loads(summary_path.read_text(encoding="utf-8"))

    def pct(ci: dict | None) -> str:
        if not ci:
            return "–"
        return f"{100 * ci['mean']:.1f} [{100 * ci['low']:.0f}–{100 * ci['high']:.0f}]"

    def pct_value(value: float | None) -> str:
        return "–" if value is None else f"{100 * value:.0f}"

    print(
        "| system | EM | F1 | ROUGE-L | BLEU-4 | contains | hit@1 | refusal (off-topic) | "
        "wrong refusal | identical | mixed | p50 s | tok/s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, s in summary["systems"].items():
        retrieval = s.get("retrieval") or {}
        stability = s.get("stability") or {}
        hit = retrieval.get("hit@1")
        cells = [
            name,
            *(pct(s.get(m)) for m in ("em", "f1", "rouge_l", "bleu4", "contains")),
            f"{100 * hit['mean']:.0f}" if hit else "–",
            pct_value(s.get("refusal_rate")),
            pct_value(s.get("wrong_refusal_rate")),
            f"{100 * stability['identical']:.0f}" if stability else "–",
            f"{100 * stability['mixed_correctness']:.0f}"
            if stability.get("mixed_correctness") is not None
            else "–",
            f"{s['latency_ms']['p50'] / 1000:.1f}" if s["latency_ms"]["p50"] else "–",
            f"{s['tokens_per_s']:.1f}" if s.get("tokens_per_s") else "–",
        ]
        print("| " + " | ".join(cells) + " |")
    for pair in summary.get("paired", []):
        print(
            f"\n{pair['a']} vs {pair['b']}: {pair['a']} better on {pair['a_wins']}, "
            f"{pair['b']} better on {pair['b_wins']}, ties {pair['ties']} "
            f"(of {pair['questions']}; mean F1 difference {pct(pair['mean_difference'])})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="step", required=True)
    p = sub.add_parser("subset")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--docs", type=int, default=12)
    p.add_argument("--negatives", type=int, default=5)
    p.add_argument("--out", type=Path, required=True)
    p = sub.add_parser("table")
    p.add_argument("summary", type=Path)
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s level=%(levelname)s logger=%(name)s %(message)s"
    )
    if args.step == "subset":
        subset(args.data, args.docs, args.out, args.negatives)
    else:
        table(args.summary)


if __name__ == "__main__":
    sys.exit(main())
