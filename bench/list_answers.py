"""List questions over the 等保 2.0 requirement tables, through the service's own /ask route
(not a test).

The document (../shared/data/dengbao) lists each control point's requirements as table rows
marked with the levels they apply to ("（适用等级：三级、四级）"). For a sample of (category,
section, control point, level) the question is "安全通用要求中，第三级系统的安全计算环境的访问控制
有哪些要求？" and the gold answer is the point's rows marked with that level, read from the
document's structure (the loader and splitter the service ingests with). Scored per question:
row recall (gold rows the answer holds), row precision (the document's rows in the answer
that are gold), all rows exactly, at least one gold row, and whether the first source is the
asked control point. Three configurations in one run: "before" (chunks indexed by their text
alone, ``ingest.index_headings=false``, and one sentence per answer, ``rag.list_answer_zh``
empty: the previous release), "lists" (the same index, list answers on) and "lists + headings
indexed" (the defaults); ratios are to "before".

    .venv/bin/python bench/list_answers.py [../shared/data] [--questions 24] [--model M]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.main import create_app  # noqa: E402
from app.services.factory import build_services  # noqa: E402
from app.settings import load_settings  # noqa: E402
from ingest.loaders import load, row_marks, row_requirement  # noqa: E402
from ingest.models import row_lines  # noqa: E402
from ingest.splitter import Splitter  # noqa: E402
from tests.conftest import run_server  # noqa: E402

LEVELS = ("二级", "三级", "四级")


def questions(path: Path, count: int, seed: int) -> list[dict[str, Any]]:
    """(question, gold rows, all rows of the point) from the document's structure."""
    settings = load_settings().ingest
    segments = load(path.read_bytes(), path.name)
    _, chunks = Splitter(settings.chunk_size, settings.chunk_overlap).split(segments)
    sections: dict[tuple[str, ...], list[str]] = {}
    for chunk in chunks:
        if chunk.rows < 2 or len(chunk.heading_path) < 3:
            continue
        rows = sections.setdefault(tuple(chunk.heading_path[-3:]), [])
        rows += [r for r in row_lines(chunk.text, chunk.rows) if r not in rows]  # overlaps
    out = []
    for (category, section, point), rows in sections.items():
        for level in LEVELS:
            gold = [r for r in rows if level in row_marks(r)]
            if gold and len(rows) >= 2:
                question = f"{category}中，第{level}系统的{section}的{point}有哪些要求？"
                path = [category, section, point]
                out.append({"question": question, "gold": gold, "rows": rows, "section": path})
    return random.Random(seed).sample(out, min(count, len(out)))


def score(answer: str, item: dict[str, Any]) -> dict[str, float]:
    held = [r for r in item["rows"] if row_requirement(r) in answer]
    gold = [r for r in item["gold"] if row_requirement(r) in answer]
    return {
        "recall": len(gold) / len(item["gold"]),
        "precision": len(gold) / len(held) if held else 0.0,
        "exact": float(set(held) == set(item["gold"])),
        "hit": float(bool(gold)),
    }


def build_kb(data: Path, out: Path, index_headings: bool) -> None:
    settings = load_settings(
        **{
            "data_dir": out,
            "llm.backend": "none",
            "ingest.workers": 0,
            "ingest.index_headings": index_headings,
        }
    )
    services = asyncio.run(build_services(settings))
    kb = services.kb
    assert kb is not None
    try:
        if "dengbao" not in {k.name for k in kb.list_kbs()}:
            kb.create_kb("dengbao")
            for f in sorted((data / "dengbao").glob("*.md")):
                kb.upload("dengbao", f.name, f.read_bytes())
            kb.pipeline.run_pending(max_jobs=10)
    finally:
        services.close()


def answers(
    args: argparse.Namespace, items: list[dict], data_dir: Path, overrides: dict[str, Any]
) -> Iterator[tuple[dict, dict[str, Any], float]]:
    """Each item's question asked greedily through ``/ask`` on the ``dengbao`` KB of
    ``data_dir`` (a real uvicorn server with ``overrides``): (item, response, seconds)."""
    settings = load_settings(
        **{
            "data_dir": data_dir,
            "llm.model": args.model,
            "llm.backend": "auto",  # not the tests' default (tests/conftest.py is imported)
            "ingest.workers": 0,
            **overrides,
        }
    )
    with run_server(create_app(settings)) as server:
        client = httpx.Client(base_url=server.url, timeout=600)
        for n, item in enumerate(items, start=1):
            start = time.perf_counter()
            response = client.post(
                "/v1/knowledge_bases/dengbao/ask",
                json={"question": item["question"], "temperature": 0},
            )
            response.raise_for_status()
            body = response.json()
            yield item, body, time.perf_counter() - start
            if n % 5 == 0 or n == len(items):
                print(f"  {n}/{len(items)} {body['answer'][:50]!r}", flush=True)


def ask_all(
    args: argparse.Namespace, items: list[dict], data_dir: Path, overrides: dict[str, Any]
) -> list[dict]:
    rows = []
    for item, body, seconds in answers(args, items, data_dir, overrides):
        path = body["sources"][0]["heading_path"][-3:] if body["sources"] else []
        rows.append(
            {
                **item,
                "answer": body["answer"],
                "section_found": float(path == item["section"]),
                "seconds": seconds,
                **score(body["answer"], item),
            }
        )
    return rows


def summary(rows: list[dict]) -> dict[str, float]:
    keys = ("recall", "precision", "exact", "hit", "section_found")
    out = {k: float(np.mean([r[k] for r in rows])) for k in keys}
    out["p50_s"] = float(np.percentile([r["seconds"] for r in rows], 50))
    return out


def arguments(doc: str, out: str) -> argparse.ArgumentParser:
    """The arguments of a 等保 bench: the shared data folder, the model, ``--out``."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("data", nargs="?", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--model", default="qwen2.5-coder-1.5b-instruct")
    parser.add_argument("--out", default=str(ROOT / "bench" / "out" / out))
    return parser


def main() -> None:
    parser = arguments(__doc__, "lists")
    parser.add_argument("--questions", type=int, default=24)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    data = Path(args.data)
    items = questions(data / "dengbao" / "grade-protection.md", args.questions, args.seed)
    out = Path(args.out)
    build_kb(data, out / "kb-text", index_headings=False)
    build_kb(data, out / "kb-headings", index_headings=True)
    print(f"questions={len(items)} model={args.model}", flush=True)
    configs = {
        # the previous release: chunks indexed by their text, one sentence per answer
        "before": (out / "kb-text", {"rag.list_answer_zh": ""}),
        "lists": (out / "kb-text", {}),
        "lists + headings indexed": (out / "kb-headings", {}),
    }
    results = {}
    for name, (data_dir, overrides) in configs.items():
        print(name, flush=True)
        rows = ask_all(args, items, data_dir, overrides)
        results[name] = summary(rows)
        path = out / f"answers-{name.replace(' ', '')}.jsonl"
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    old = results["before"]
    for key in ("recall", "precision", "exact", "hit", "section_found", "p50_s"):
        cells = []
        for name, new in results.items():
            ratio = f" ({new[key] / old[key]:.2f}x)" if old[key] and name != "before" else ""
            cells.append(f"{name} {new[key]:.3f}{ratio}")
        print(f"{key:14s}" + "  |  ".join(cells))


if __name__ == "__main__":
    main()
