"""``kbqa eval compare``: ask every question N times per system, score, append, resume.

``DIR/results.jsonl`` gets one line per (question, system, repeat, run) as soon as it is
answered (run ``main``: the ``--repeats`` answers at ``--temperature``; run ``sampled``: the
optional sampled run after it, ``--sampling-repeats`` answers at ``--sampling-temperature``);
a re-run reads it and asks only what is missing (failed answers, and ids whose question text
changed, are asked again); reused answers are scored again with the current accepted answers
and scoring options. The run's
answer-changing options are kept in ``DIR/run.json``; a re-run with different ones stops
instead of mixing two experiments in one file. Sampled answers are reused only at the same
sampling temperature and top-p (they are stored with them).

Two more instruments, each with its own resumable file:

- ``DIR/likelihood.jsonl``: per (answerable question, system) the teacher-forced likelihood of
  the accepted answer under the system's own prompt (eval/likelihood.py; in-process only);
  recomputed when the question or its accepted answers change. With the probe, also its
  questions under base and lora (rows marked ``probe: true``).
- ``DIR/probe.jsonl``: the forgetting probe, general questions unrelated to the knowledge base
  asked of base and lora (greedy) when a lora system runs.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from app.settings.base import SearchMode
from eval import metrics
from eval.data import QAItem, fingerprint
from eval.systems import LORA_SYSTEMS, RAG_SYSTEMS, Ask, Runner, slim_sources

logger = logging.getLogger(__name__)

RESULTS = "results.jsonl"
RUN = "run.json"
LIKELIHOOD = "likelihood.jsonl"
PROBE = "probe.jsonl"
MAIN, SAMPLED = "main", "sampled"  # the runs of results.jsonl
PROBE_SYSTEMS = ("base", "lora")
QA_SET, PROBE_SET = "qa", "probe"  # the questions a likelihood row scores
DEFAULT_PROBE = Path(__file__).with_name("forgetting_probe.jsonl")


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
    # gold-answer likelihood of every answerable question under each system's prompt
    likelihood: bool = False
    # the sampled run after the main one (0: none)
    sampling_temperature: float = 0.0
    sampling_repeats: int = 0
    probe_file: str | None = None  # recorded in run.json (the probe items are passed apart)

    @property
    def sampled(self) -> bool:
        return self.sampling_temperature > 0 and self.sampling_repeats > 0

    def run_temperature(self, run: str) -> float:
        return self.sampling_temperature if run == SAMPLED else self.temperature

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
    likelihood_rows: list[dict[str, Any]] = field(default_factory=list)
    probe_rows: list[dict[str, Any]] = field(default_factory=list)
    probe_items: list[QAItem] = field(default_factory=list)
    # instruments that did not run, and why (likelihood with --server, probe without lora)
    notes: dict[str, str] = field(default_factory=dict)
    probe_asked: int = 0  # probe answers asked in this call (not in ``asked``)
    likelihood_scored: int = 0  # likelihood rows computed in this call


def run_of(row: dict[str, Any]) -> str:
    """The run of a results row (rows written before sampled runs existed are ``main``)."""
    return str(row.get("run") or MAIN)


def key(row: dict[str, Any]) -> tuple[str, str, int, str]:
    return (str(row["id"]), str(row["system"]), int(row["repeat"]), run_of(row))


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
    probe_items: list[QAItem] | None = None,
    on_start: Callable[[int, int], None] | None = None,
    on_answer: Callable[[dict[str, Any]], None] | None = None,
) -> CompareRun:
    """Ask what is missing from ``out/results.jsonl`` (and the likelihood and probe files);
    return every row of this comparison.

    ``probe_items``: the forgetting probe, asked of base and lora when a lora system runs.
    ``on_start(total, done)`` is called once the systems are known, ``on_answer(row)`` after
    each answer or score (progress).
    """
    check_run(out, options, restart)
    if restart:
        for name in (LIKELIHOOD, PROBE):
            (out / name).unlink(missing_ok=True)
    for name in (RESULTS, LIKELIHOOD, PROBE):
        drop_torn_tail(out / name)
    comparison = _Comparison(items, list(probe_items or []), runner, options, out, on_answer)
    started = time.perf_counter()
    try:
        skipped = await runner.start(options.systems)
        meta = runner.describe()  # while the runner is open (it names the loaded device)
        for system, reason in skipped.items():
            logger.warning("event=system_skipped system=%s reason=%r", system, reason)
        systems = [s for s in options.systems if s not in skipped]
        comparison.plan_answers(systems)
        comparison.plan_probe(systems, skipped)
        await comparison.plan_likelihood(systems)
        if on_start:
            on_start(*comparison.progress())
        await comparison.ask_answers()
        await comparison.ask_probe()
        await comparison.score_likelihood()
    finally:
        await runner.close()
    wall = time.perf_counter() - started
    logger.info(
        "event=compare_done questions=%d systems=%s asked=%d reused=%d failed=%d wall_s=%.1f",
        len(items),
        ",".join(systems),
        comparison.counts["asked"],
        comparison.reused,
        comparison.counts["failed"],
        wall,
    )
    return comparison.result(skipped, wall, meta)


AnswerKey = tuple[str, str, int, str]  # (question id, system, repeat, run)
ProbeKey = tuple[str, str]  # (question id, system)
LikelihoodKey = tuple[str, str, str]  # (question id, system, question set)


class _Comparison:
    """One call of :func:`run_compare`: what is wanted, what is reused, and the asking.

    Each ``plan_*`` lists the wanted keys of one file and loads what that file already holds;
    each ``ask_*``/``score_*`` fills in the rest, appending a line per answer or score.
    """

    def __init__(
        self,
        items: list[QAItem],
        probe_items: list[QAItem],
        runner: Runner,
        options: CompareOptions,
        out: Path,
        on_answer: Callable[[dict[str, Any]], None] | None,
    ) -> None:
        self.items, self.probe_items = items, probe_items
        self.runner, self.options, self.out, self.on_answer = runner, options, out, on_answer
        self.done: dict[AnswerKey, dict[str, Any]] = {
            key(r): r for r in load_results(out / RESULTS) if _reusable(r, options)
        }
        self.wanted: list[tuple[QAItem, str, int, str]] = []
        self.reused = 0
        self.probe_wanted: list[tuple[QAItem, str]] = []
        self.probe_done: dict[ProbeKey, dict[str, Any]] = {}
        self.lik_wanted: list[tuple[QAItem, str, str]] = []
        self.lik_done: dict[LikelihoodKey, dict[str, Any]] = {}
        self.notes: dict[str, str] = {}  # instruments that did not run, and why
        self.counts = {"asked": 0, "failed": 0, "probe": 0, "likelihood": 0}

    def plan_answers(self, systems: list[str]) -> None:
        """Every (question, system, repeat, run) of the main and sampled runs; the ones
        already answered are scored again with today's accepted answers and options."""
        options = self.options
        runs = [(MAIN, options.repeats)] + ([(SAMPLED, options.sampling_repeats)] * options.sampled)
        self.wanted = [
            (item, system, repeat, run)
            for run, repeats in runs
            for item in self.items
            for system in systems
            for repeat in range(repeats)
        ]
        for item, system, repeat, run in self.wanted:
            old = self.done.get((item.id, system, repeat, run))
            if old is None:
                continue
            if old.get("question") != item.question:  # the id now means another question
                del self.done[(item.id, system, repeat, run)]
                continue
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
        self.reused = sum(1 for i, s, r, n in self.wanted if (i.id, s, r, n) in self.done)

    def plan_probe(self, systems: list[str], skipped: dict[str, str]) -> None:
        """The forgetting probe: base and lora on general questions, greedy."""
        if not self.probe_items:
            return
        missing = _probe_missing(systems, skipped)
        if missing:
            self.notes["probe"] = missing
            return
        self.probe_wanted = [(i, s) for i in self.probe_items for s in PROBE_SYSTEMS]
        self.probe_done = _reuse_probe(self.out / PROBE, self.probe_items, self.options)

    async def plan_likelihood(self, systems: list[str]) -> None:
        """The likelihood of the accepted answers under each system's prompt, and of the
        probe's answers under base and lora (what the adapter does to answers it was not
        trained on, e.g. learning the short-answer format alone)."""
        if not self.options.likelihood:
            return
        wanted = [(i, s, QA_SET) for i in self.items if i.answerable for s in systems]
        wanted += [(i, s, PROBE_SET) for i, s in self.probe_wanted]
        self.lik_done = _reuse_likelihood(self.out / LIKELIHOOD, self.items, self.probe_items)
        if any((i.id, s, n) not in self.lik_done for i, s, n in wanted):
            unavailable = await self.runner.prepare_likelihood()
            if unavailable:
                self.notes["likelihood"] = unavailable
                logger.warning("event=likelihood_skipped reason=%r", unavailable)
                wanted = [w for w in wanted if (w[0].id, w[1], w[2]) in self.lik_done]
        self.lik_wanted = wanted

    def progress(self) -> tuple[int, int]:
        """(everything wanted, what is already there)."""
        total = len(self.wanted) + len(self.probe_wanted) + len(self.lik_wanted)
        there = (
            self.reused
            + sum(1 for i, s in self.probe_wanted if (i.id, s) in self.probe_done)
            + sum(1 for i, s, n in self.lik_wanted if (i.id, s, n) in self.lik_done)
        )
        return total, there

    async def _answer(
        self, item: QAItem, system: str, temperature: float, seed: int | None, count: str
    ) -> Any:
        """The system's answer, or the error as text (counted as failed)."""
        options = self.options
        how = Ask(
            max_tokens=options.max_tokens,
            temperature=temperature,
            top_p=options.top_p,
            seed=seed,
            top_k=options.top_k,
            search_mode=options.search_mode,
        )
        try:
            output = await self.runner.ask(system, item.question, how)
        except Exception as exc:
            self.counts["failed"] += 1
            logger.warning(
                "event=answer_failed id=%s system=%s error=%r", item.id, system, str(exc)[:300]
            )
            return f"{type(exc).__name__}: {exc}"[:500]
        self.counts[count] += 1
        return output

    async def ask_answers(self) -> None:
        options = self.options
        with (self.out / RESULTS).open("a", encoding="utf-8") as handle:
            for item, system, repeat, run in self.wanted:
                if (item.id, system, repeat, run) in self.done:
                    continue
                temperature = options.run_temperature(run)
                seed = options.seed + repeat if temperature > 0 else None
                row: dict[str, Any] = {
                    **item.to_dict(),
                    "system": system,
                    "repeat": repeat,
                    "run": run,
                    "seed": seed,
                }
                if run == SAMPLED:
                    row.update(temperature=temperature, top_p=options.top_p)
                output = await self._answer(item, system, temperature, seed, "asked")
                if isinstance(output, str):
                    row["error"] = output
                else:
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
                    self.done[(item.id, system, repeat, run)] = row
                _append(handle, row, self.on_answer)

    async def ask_probe(self) -> None:
        with (self.out / PROBE).open("a", encoding="utf-8") as handle:
            for item, system in self.probe_wanted:
                if (item.id, system) in self.probe_done:
                    continue
                row = {**item.to_dict(), "system": system}
                output = await self._answer(item, system, 0.0, None, "probe")
                if isinstance(output, str):
                    row["error"] = output
                else:
                    row.update(answer=output.answer, timings=output.timings)
                    row.update(score_row(item, system, 0, output.answer, None, [], self.options))
                    self.probe_done[(item.id, system)] = row
                _append(handle, row, self.on_answer)

    async def score_likelihood(self) -> None:
        options = self.options
        how = Ask(
            max_tokens=options.max_tokens, top_k=options.top_k, search_mode=options.search_mode
        )
        with (self.out / LIKELIHOOD).open("a", encoding="utf-8") as handle:
            for item, system, part in self.lik_wanted:
                if (item.id, system, part) in self.lik_done:
                    continue
                row = {**item.to_dict(), "system": system}
                if part == PROBE_SET:
                    row["probe"] = True
                try:
                    row.update(
                        await self.runner.likelihood(system, item.question, item.answers, how)
                    )
                except Exception as exc:
                    self.counts["failed"] += 1
                    logger.warning(
                        "event=likelihood_failed id=%s system=%s error=%r",
                        item.id,
                        system,
                        str(exc)[:300],
                    )
                    row["error"] = f"{type(exc).__name__}: {exc}"[:500]
                else:
                    self.counts["likelihood"] += 1
                    self.lik_done[(item.id, system, part)] = row
                _append(handle, row, self.on_answer)

    def result(self, skipped: dict[str, str], wall: float, meta: dict[str, Any]) -> CompareRun:
        meta["qa_fingerprint"] = fingerprint(self.items)
        return CompareRun(
            self.out,
            [
                self.done[(i.id, s, r, n)]
                for i, s, r, n in self.wanted
                if (i.id, s, r, n) in self.done
            ],
            skipped,
            self.counts["asked"],
            self.reused,
            self.counts["failed"],
            wall,
            meta,
            likelihood_rows=[
                self.lik_done[(i.id, s, n)]
                for i, s, n in self.lik_wanted
                if (i.id, s, n) in self.lik_done
            ],
            probe_rows=[
                self.probe_done[(i.id, s)]
                for i, s in self.probe_wanted
                if (i.id, s) in self.probe_done
            ],
            probe_items=list(self.probe_items) if self.probe_wanted else [],
            notes=self.notes,
            probe_asked=self.counts["probe"],
            likelihood_scored=self.counts["likelihood"],
        )


def _reusable(row: dict[str, Any], options: CompareOptions) -> bool:
    """An answer of this experiment: not failed; a sampled one at today's sampling options."""
    if row.get("error"):
        return False
    if run_of(row) == SAMPLED:
        return bool(
            row.get("temperature") == options.sampling_temperature
            and row.get("top_p") == options.top_p
        )
    return True


def _probe_missing(systems: list[str], skipped: dict[str, str]) -> str | None:
    """Why the forgetting probe cannot run (it needs the adapter and the base model)."""
    if not any(s in LORA_SYSTEMS for s in systems):
        return "no lora system runs (the probe compares base and lora answers)"
    if "base" in skipped:
        return f"base: {skipped['base']}"
    return None


def _reuse_probe(
    path: Path, probe_items: list[QAItem], options: CompareOptions
) -> dict[tuple[str, str], dict[str, Any]]:
    """Probe answers already in ``path`` for today's questions, scored again."""
    by_id = {i.id: i for i in probe_items}
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for row in load_results(path):
        item = by_id.get(str(row.get("id")))
        if row.get("error") or item is None or row.get("question") != item.question:
            continue
        row.update(item.to_dict())
        row.update(score_row(item, row["system"], 0, row["answer"], None, [], options))
        found[(item.id, str(row["system"]))] = row
    return found


def likelihood_set(row: dict[str, Any]) -> str:
    """Which questions a likelihood row scores: the comparison's, or the probe's."""
    return PROBE_SET if row.get("probe") else QA_SET


def _reuse_likelihood(
    path: Path, items: list[QAItem], probe_items: list[QAItem]
) -> dict[tuple[str, str, str], dict[str, Any]]:
    """Likelihood rows already in ``path`` for today's questions and accepted answers."""
    by_set = {QA_SET: {i.id: i for i in items}, PROBE_SET: {i.id: i for i in probe_items}}
    found: dict[tuple[str, str, str], dict[str, Any]] = {}
    for row in load_results(path):
        part = likelihood_set(row)
        item = by_set[part].get(str(row.get("id")))
        if row.get("error") or item is None:
            continue
        if row.get("question") == item.question and row.get("answers") == item.answers:
            found[(item.id, str(row["system"]), part)] = row
    return found


def _append(
    handle: Any, row: dict[str, Any], on_answer: Callable[[dict[str, Any]], None] | None
) -> None:
    handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    handle.flush()
    if on_answer:
        on_answer(row)
