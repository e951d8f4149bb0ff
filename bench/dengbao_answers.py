"""A compliance user's questions over the 等保 2.0 document, through the service's own /ask
route (not a test).

``bench/questions/dengbao.jsonl`` holds 38 questions a user of the 等保 document asks (what the
standards are called, which control points a part has, what a requirement says), each with
the document's own words as its gold answer(s) and, where an answer names several things,
the ``terms`` it must hold all of. 15 are marked ``dev``: they were asked while the
answer steps of the release that added this bench were designed; the 23 ``held_out`` ones
were written before that and not used to design them, but for one: reading numbered
headings with their siblings was added after the first run's miss of
"安全通用要求中的管理要求包括哪些？". 4 more, ``variant``, ask four of them as users say it,
with 等保 for the document's 等级保护 (written with ``retrieval.query_synonyms``, reported
apart: "all" is the 38). 10 more, ``off_topic``, ask what the document does not say (other
laws and standards, fees, products), in the document's own field: each should be refused
(reported as the share refused; written with ``rag.dense_alone_margin``, where two of them
were closer to a passage than any on-topic question needs). The gold answers quote the
document (HummerRisk-docs, GPL-2.0, as ../shared/data/README.md says). The document
(../shared/data/dengbao) is uploaded once; every question is asked greedily through
``POST /v1/knowledge_bases/dengbao/ask`` on a real uvicorn server, under two configurations
in one run:

- ``before``: the previous release, as far as settings reach (no dense similarity passing
  the gate alone, ``rag.min_dense_score_alone`` 0; the release's new name cues in
  ``rag.short_answer_zh`` match none of these questions);
- ``defaults``: this release.

Scored per answer with the eval's own metrics (contains, CMRC F1, best over the gold
answers) and ``complete`` (every term named; without terms, contains), by split; ratios
are to ``before``.

    .venv/bin/python bench/dengbao_answers.py [../shared/data] [--model M] [--only defaults]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from list_answers import answers, arguments, build_kb  # noqa: E402

from eval.metrics import score_answer  # noqa: E402

QA = ROOT / "bench" / "questions" / "dengbao.jsonl"
CONFIGS: dict[str, dict[str, Any]] = {
    "before": {"rag.min_dense_score_alone": 0.0},
    "defaults": {},
}
KEYS = ("contains", "f1", "complete")


def score(answer: str, item: dict[str, Any]) -> dict[str, float]:
    if not item["answers"]:  # off-topic: the document does not answer it
        return {}
    scores = score_answer(answer, item["answers"], "zh")
    terms = item.get("terms")
    complete = all(t in answer for t in terms) if terms else bool(scores["contains"])
    return {"contains": scores["contains"], "f1": scores["f1"], "complete": float(complete)}


def ask_all(
    args: argparse.Namespace, items: list[dict], data_dir: Path, overrides: dict[str, Any]
) -> list[dict]:
    rows = []
    for item, body, seconds in answers(args, items, data_dir, overrides):
        answer = body["answer"]
        rows.append(
            {
                **item,
                "answer": answer,
                "refused": body["refused"],
                "seconds": seconds,
                **score(answer, item),
            }
        )
    return rows


def summary(rows: list[dict]) -> dict[str, float]:
    out: dict[str, float] = {}
    for split in ("all", "dev", "held_out", "variant"):
        sel = [
            r
            for r in rows
            if r["split"] == split or (split == "all" and r["split"] in ("dev", "held_out"))
        ]
        for key in KEYS:
            out[f"{split} {key}"] = float(np.mean([r[key] for r in sel]))
    answerable = [r for r in rows if r["split"] in ("dev", "held_out")]
    out["all refused"] = float(np.mean([r["refused"] for r in answerable]))
    off = [r for r in rows if r["split"] == "off_topic"]
    if off:
        out["off_topic refused"] = float(np.mean([r["refused"] for r in off]))
    out["p50_s"] = float(np.percentile([r["seconds"] for r in rows], 50))
    return out


def main() -> None:
    parser = arguments(__doc__, "dengbao")
    parser.add_argument("--only", choices=sorted(CONFIGS), help="one configuration")
    args = parser.parse_args()
    items = [json.loads(line) for line in QA.read_text().splitlines() if line.strip()]
    out = Path(args.out)
    build_kb(Path(args.data), out / "kb", index_headings=True)
    print(f"questions={len(items)} model={args.model}", flush=True)
    results = {}
    for name, overrides in CONFIGS.items():
        if args.only and name != args.only:
            continue
        print(name, flush=True)
        rows = ask_all(args, items, out / "kb", overrides)
        results[name] = summary(rows)
        path = out / f"answers-{name}.jsonl"
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    old = results.get("before")
    for key in next(iter(results.values())):
        cells = []
        for name, new in results.items():
            ratio = (
                f" ({new[key] / old[key]:.2f}x)" if old and old[key] and name != "before" else ""
            )
            cells.append(f"{name} {new[key]:.3f}{ratio}")
        print(f"{key:18s}" + "  |  ".join(cells))


if __name__ == "__main__":
    main()
