"""``kbqa eval compare``: ask every question N times per system, score, append, resume.

``DIR/results.jsonl`` gets one line per (question, system, repeat) as soon as it is answered;
a re-run reads it and asks only what is missing (failed answers, and ids whose question text
changed, are asked again); reused answers are scored again with the current accepted answers
and scoring options. The run's
answer-changing options are kept in ``DIR/run.json``; a re-run with different ones stops
instead of mixing two experiments in one file.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from eval import metrics
from eval.data import QAItem, fingerprint
from eval.systems import RAG_SYSTEMS, Ask, Runner, slim_sources
from ingest.models import SearchMode

logger = logging.getLogger(__name__)

RESULTS = "results.jsonl"
RUN = "run.json"


class CompareError(RuntimeError):
    """A comparison that cannot start (e.g. a re-run with different options)."""


@dataclass
class CompareOptions:
    systems: list[str]
    repeats: int
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    top_k: int | None = None
    search_mode: SearchMode | None = None
    strip_citations: bool = True
    refusal_patterns: list[str] = field(default_factory=list)
    # what identifies the experiment (model, adapter, kb, server): recorded, checked on resume
    identity: dict[str, Any] = field(default_factory=dict)

    def fixed(self) -> dict[str, Any]:
        """Options that change answers: a resumed run must keep them."""
        return {
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p if self.temperature > 0 else None,
            "seed": self.seed if self.temperature > 0 else None,
            "top_k": self.top_k,
            "search_mode": self.search_mode,
            **self.identity,
        }


@dataclass
class CompareRun:
    out: Path
    rows: list[dict[str, Any]]
    skipped: dict[str, str]
    asked: int
    reused: int
    failed: int
    wall_s: float
    runner: dict[str, Any]


def key(row: dict[str, Any]) -> tuple[str, str, int]:
    return (str(row["id"]), str(row["system"]), int(row["repeat"]))


def load_results(path: Path) -> list[dict[str, Any]]:
    """Rows of a results file; a torn last line (killed run) is ignored."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            logger.warning("event=results_line_ignored reason=invalid_json file=%s", path)
    return rows


def drop_torn_tail(path: Path) -> None:
    """Cut an incomplete last line (a run killed mid-write) so appends start on a new line."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    if data.endswith(b"\n"):
        return
    with path.open("r+b") as handle:
        handle.truncate(data.rfind(b"\n") + 1)
    logger.warning("event=results_torn_line_dropped file=%s", path)


def check_run(out: Path, options: CompareOptions, restart: bool) -> None:
    """Record the run's options, or refuse to resume a run made with other ones."""
    out.mkdir(parents=True, exist_ok=True)
    run_file, results = out / RUN, out / RESULTS
    fixed = options.fixed()
    if restart:
        results.unlink(missing_ok=True)
    elif run_file.is_file() and results.is_file():
        before = json.loads(run_file.read_text(encoding="utf-8")).get("fixed", {})
        changed = {k: (before.get(k), v) for k, v in fixed.items() if before.get(k) != v}
        if changed:
            detail = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
            raise CompareError(
                f"{out} holds results made with other options ({detail}); use another --out, "
                "or --restart to discard them"
            )
    run_file.write_text(
        json.dumps({"fixed": fixed, "options": asdict(options)}, indent=2, ensure_ascii=False),
        encoding="utf-8",
    )


def score_row(
    item: QAItem,
    system: str,
    repeat: int,
    output_answer: str,
    refused_flag: bool | None,
    sources: list[dict[str, Any]],
    options: CompareOptions,
) -> dict[str, Any]:
    """Scores of one answer: answer metrics, refusal, retrieval of the gold document."""
    lang = metrics.language(*item.answers) if item.answers else metrics.language(item.question)
    scored = (
        metrics.strip_citations(output_answer) if options.strip_citations else output_answer
    ).strip()
    refused = bool(refused_flag) or metrics.is_refusal(scored, options.refusal_patterns)
    scores: dict[str, Any] = {"refused": refused}
    if item.answerable:
        scores.update(metrics.score_answer(scored, item.answers, lang))
    if system in RAG_SYSTEMS and item.source:
        rank = metrics.gold_rank(sources, item.source)
        scores["gold_rank"] = rank
        scores["hit@1"] = float(rank == 1)
        scores["hit@k"] = float(rank is not None)
        scores["rr"] = 1 / rank if rank else 0.0
        scores["k"] = len({str(s.get("filename") or s.get("doc_id")) for s in sources})
    return {"lang": lang, "scored_answer": scored, "scores": scores}


async def run_compare(
    items: list[QAItem],
    runner: Runner,
    options: CompareOptions,
    out: Path,
    *,
    restart: bool = False,
    on_start: Callable[[int, int], None] | None = None,
    on_answer: Callable[[dict[str, Any]], None] | None = None,
) -> CompareRun:
    """Ask what is missing from ``out/results.jsonl``; return every row of this comparison.

    ``on_start(total, done)`` is called once the systems are known, ``on_answer(row)`` after
    each answer (progress).
    """
    check_run(out, options, restart)
    results_path = out / RESULTS
    drop_torn_tail(results_path)
    previous = load_results(results_path)
    done = {key(r): r for r in previous if not r.get("error")}
    started = time.perf_counter()
    try:
        skipped = await runner.start(options.systems)
        meta = runner.describe()
        for system, reason in skipped.items():
            logger.warning("event=system_skipped system=%s reason=%r", system, reason)
        systems = [s for s in options.systems if s not in skipped]
        wanted = [
            (item, system, repeat)
            for item in items
            for system in systems
            for repeat in range(options.repeats)
        ]
        for item, system, repeat in wanted:
            old = done.get((item.id, system, repeat))
            if old is None:
                continue
            if old.get("question") != item.question:  # the id now means another question
                del done[(item.id, system, repeat)]
                continue
            # scored again with today's accepted answers and scoring options
            old.update(item.to_dict())
            old.update(
                score_row(
                    item,
                    system,
                    repeat,
                    old["answer"],
                    old.get("refused_flag"),
                    old.get("sources") or [],
                    options,
                )
            )
        reused = sum(1 for i, s, r in wanted if (i.id, s, r) in done)
        if on_start:
            on_start(len(wanted), reused)
        asked = failed = 0
        with results_path.open("a", encoding="utf-8") as handle:
            for item, system, repeat in wanted:
                if (item.id, system, repeat) in done:
                    continue
                seed = options.seed + repeat if options.temperature > 0 else None
                how = Ask(
                    max_tokens=options.max_tokens,
                    temperature=options.temperature,
                    top_p=options.top_p,
                    seed=seed,
                    top_k=options.top_k,
                    search_mode=options.search_mode,
                )
                row: dict[str, Any] = {
                    **item.to_dict(),
                    "system": system,
                    "repeat": repeat,
                    "seed": seed,
                }
                try:
                    output = await runner.ask(system, item.question, how)
                except Exception as exc:
                    failed += 1
                    logger.warning(
                        "event=answer_failed id=%s system=%s repeat=%d error=%r",
                        item.id,
                        system,
                        repeat,
                        str(exc)[:300],
                    )
                    row["error"] = f"{type(exc).__name__}: {exc}"[:500]
                else:
                    asked += 1
                    row.update(
                        answer=output.answer,
                        refused_flag=output.refused,
                        grounded=output.grounded,
                        finish_reason=output.finish_reason,
                        model=output.model,
                        sources=slim_sources(output.sources),
                        timings=output.timings,
                    )
                    row.update(
                        score_row(
                            item,
                            system,
                            repeat,
                            output.answer,
                            output.refused,
                            output.sources,
                            options,
                        )
                    )
                    done[(item.id, system, repeat)] = row
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
                handle.flush()
                if on_answer:
                    on_answer(row)
    finally:
        await runner.close()
    rows = [done[(i.id, s, r)] for i, s, r in wanted if (i.id, s, r) in done]
    wall = time.perf_counter() - started
    logger.info(
        "event=compare_done questions=%d systems=%s asked=%d reused=%d failed=%d wall_s=%.1f",
        len(items),
        ",".join(systems),
        asked,
        reused,
        failed,
        wall,
    )
    meta["qa_fingerprint"] = fingerprint(items)
    return CompareRun(out, rows, skipped, asked, reused, failed, wall, meta)
