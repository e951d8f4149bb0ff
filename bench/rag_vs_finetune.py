"""Helper steps of bench/rag_vs_finetune.sh (RAG vs LoRA finetuning on CMRC 2018 trial).

    python bench/rag_vs_finetune.py subset --data ../shared/data/cmrc2018-trial --docs 12 \
        --negatives 5 --out WORK  # WORK/docs/*.txt and WORK/qa.jsonl: the first N documents
                              # (sorted by name) and every question about them;
                              # WORK/negatives.jsonl: one question about each of the next 5
                              # documents (not in the knowledge base: refusing is right)
    python bench/rag_vs_finetune.py negatives --data ../shared/data/cmrc2018-trial --count 10 \
        --out WORK/negatives.jsonl  # off-topic questions for a knowledge base of other things
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


def negatives(data: Path, count: int, out: Path) -> None:
    """Off-topic questions for a knowledge base about something else (the 等保 recipe): the
    first question of each of the first ``count`` cmrc2018-trial passages."""
    seen: set[str] = set()
    rows: list[dict[str, str]] = []
    for line in (data / "qa.jsonl").read_text(encoding="utf-8").splitlines():
        record = json.loads(line) if line.strip() else {}
        if record.get("source") and record["source"] not in seen and len(rows) < count:
            seen.add(record["source"])
            rows.append({"id": f"off-{record['id']}", "question": record["question"]})
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8"
    )
    print(f"off_topic={len(rows)} out={out}")


def table(summary_path: Path) -> None:
    """The README table of a run: answer metrics, gold-answer NLL, retrieval, refusals,
    greedy and sampled stability, latency; then the paired counts and the forgetting probe."""
    summary = json.loads(summary_path.read_text(encoding="utf-8"))

    def pct(ci: dict | None) -> str:
        if not ci:
            return "–"
        return f"{100 * ci['mean']:.1f} [{100 * ci['low']:.0f}–{100 * ci['high']:.0f}]"

    def num(ci: dict | None) -> str:
        if not ci:
            return "–"
        return f"{ci['mean']:.2f} [{ci['low']:.2f}–{ci['high']:.2f}]"

    def pct_value(value: float | None) -> str:
        return "–" if value is None else f"{100 * value:.0f}"

    print(
        "| system | EM | F1 | ROUGE-L | contains | gold NLL | hit@1 | refusal (off-topic) | "
        "wrong refusal | identical (greedy) | sometimes right, sometimes wrong (sampled) | "
        "forgetting (probe answers changed) | p50 s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    forgetting = summary.get("forgetting")
    for name, s in summary["systems"].items():
        retrieval = s.get("retrieval") or {}
        stability = s.get("stability") or {}
        sampled = s.get("sampled") or {}
        hit = retrieval.get("hit@1")
        cells = [
            name,
            *(pct(s.get(m)) for m in ("em", "f1", "rouge_l", "contains")),
            num((s.get("likelihood") or {}).get("nll")),
            f"{100 * hit['mean']:.0f}" if hit else "–",
            pct_value(s.get("refusal_rate")),
            pct_value(s.get("wrong_refusal_rate")),
            pct(stability.get("identical_ci"))
            if stability.get("identical_ci")
            else pct_value(stability.get("identical")),
            pct(sampled.get("mixed_correctness_ci"))
            if sampled.get("mixed_correctness_ci")
            else pct_value(sampled.get("mixed_correctness")),
            # the probe asks base and lora: the adapter's change, on the lora row
            pct(forgetting["changed"]) if forgetting and name == "lora" else "–",
            f"{s['latency_ms']['p50'] / 1000:.1f}" if s["latency_ms"]["p50"] else "–",
        ]
        print("| " + " | ".join(cells) + " |")
    for pair in summary.get("paired", []):
        print(
            f"\n{pair['a']} vs {pair['b']}: {pair['a']} better on {pair['a_wins']}, "
            f"{pair['b']} better on {pair['b_wins']}, ties {pair['ties']} "
            f"(of {pair['questions']}; mean F1 difference {pct(pair['mean_difference'])})"
        )
    if forgetting:
        contains = forgetting.get("contains") or {}
        print(
            f"\nforgetting probe ({forgetting['questions']} general questions): the adapter "
            f"changed {forgetting['changed_questions']} answers ({pct(forgetting['changed'])}), "
            f"similarity to base {pct(forgetting['similarity'])}, contains base "
            f"{pct(contains.get('base'))} vs lora {pct(contains.get('lora'))}"
            + (
                f", gold NLL lora - base {num(forgetting['nll_difference'])}"
                if forgetting.get("nll_difference")
                else ""
            )
        )
    generated = summary_path.parent.parent / "train.generate-qa.json"
    if generated.is_file():
        report = json.loads(generated.read_text(encoding="utf-8"))
        dropped = ", ".join(f"{k} {v}" for k, v in report["dropped"].items() if v)
        print(
            f"\ngenerated QA pairs: asked {report['asked']}, kept {report['kept']}"
            + (f" (dropped: {dropped})" if dropped else "")
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="step", required=True)
    p = sub.add_parser("subset")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--docs", type=int, default=12)
    p.add_argument("--negatives", type=int, default=5)
    p.add_argument("--out", type=Path, required=True)
    p = sub.add_parser("negatives")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--count", type=int, default=10)
    p.add_argument("--out", type=Path, required=True)
    p = sub.add_parser("table")
    p.add_argument("summary", type=Path)
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s level=%(levelname)s logger=%(name)s %(message)s"
    )
    if args.step == "subset":
        subset(args.data, args.docs, args.out, args.negatives)
    elif args.step == "negatives":
        negatives(args.data, args.count, args.out)
    else:
        table(args.summary)


if __name__ == "__main__":
    sys.exit(main())
