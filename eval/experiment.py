"""One RAG-vs-finetune experiment from its settings: the questions, the runner, the comparison,
the summary and the reports (``kbqa eval compare`` and ``kbqa eval report`` are thin wrappers).

``run_experiment`` is what ``kbqa eval compare`` does; ``rebuild_report`` what ``kbqa eval
report`` does (the summary and reports again from the files of an earlier run, e.g. after an
interrupt). Both take their defaults from ``settings.eval`` alone.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.settings import Settings
from app.settings.eval import EvalSettings
from eval.compare import (
    DEFAULT_PROBE,
    LIKELIHOOD,
    PROBE,
    RESULTS,
    RUN,
    SAMPLED,
    CompareOptions,
    CompareRun,
    likelihood_set,
    load_results,
    run_compare,
    run_of,
)
from eval.data import QAItem, read_qa
from eval.report import write_reports
from eval.summary import SummaryOptions, summarize
from eval.systems import HttpRunner, InProcessRunner, Runner


class ExperimentError(RuntimeError):
    """An experiment that cannot be run or reported (the message says why)."""


@dataclass
class Experiment:
    """What one comparison asks: the questions, where the answers come from, where they go."""

    qa: Path
    out: Path
    kb: str | None = None
    model: str | None = None  # None: llm.model (in process) or the served model (--server)
    adapter: str | None = None  # a folder in process, a served model name with a server
    server: str | None = None  # a running kbqa to evaluate instead of loading the model
    negatives: Path | None = None  # off-topic questions: refusing is right
    limit: int | None = None  # only the first N questions of ``qa``
    restart: bool = False  # discard earlier answers in ``out`` instead of resuming


@dataclass
class ExperimentResult:
    run: CompareRun
    summary: dict[str, Any]
    paths: dict[str, Path]


def load_questions(
    experiment: Experiment, probe_path: Path | None
) -> tuple[list[QAItem], list[QAItem]]:
    """(test questions + off-topic ones, the forgetting probe's questions)."""
    items = read_qa(experiment.qa)
    if experiment.limit is not None:
        items = items[: experiment.limit]
    if experiment.negatives is not None:
        items += read_qa(experiment.negatives, negative=True)
    probe_items = read_qa(probe_path) if probe_path is not None else []
    return items, probe_items


def open_runner(settings: Settings, experiment: Experiment) -> tuple[Runner, dict[str, Any]]:
    """The runner that asks the systems, and the identity of what it asks (kept in run.json:
    a resumed run with another model, adapter, server or KB stops)."""
    ev = settings.eval
    runner: Runner
    if experiment.server:
        key = ev.api_key.get_secret_value() if ev.api_key else None
        runner = HttpRunner(
            experiment.server,
            kb=experiment.kb,
            adapter=experiment.adapter,
            model=experiment.model,
            api_key=key,
            timeout_s=ev.server_timeout_s,
        )
        identity: dict[str, Any] = {
            "server": experiment.server,
            "model": experiment.model,
            "adapter": experiment.adapter,
        }
    else:
        adapter_dir = Path(experiment.adapter).resolve() if experiment.adapter else None
        run_settings = InProcessRunner.settings_for(
            settings, model=experiment.model, adapter=adapter_dir, adapter_name=ev.adapter_name
        )
        runner = InProcessRunner(
            run_settings, kb=experiment.kb, adapter=adapter_dir, adapter_name=ev.adapter_name
        )
        identity = {
            "server": None,
            "model": run_settings.llm.model,
            "adapter": str(adapter_dir) if adapter_dir else None,
        }
    identity["kb"] = experiment.kb
    return runner, identity


def compare_options(
    ev: EvalSettings, identity: dict[str, Any], probe_path: Path | None
) -> CompareOptions:
    return CompareOptions(
        systems=list(ev.systems),
        repeats=ev.repeats,
        max_tokens=ev.max_tokens,
        temperature=ev.temperature,
        top_p=ev.top_p,
        seed=ev.seed,
        top_k=ev.top_k,
        search_mode=ev.search_mode,
        strip_citations=ev.strip_citations,
        refusal_patterns=list(ev.refusal_patterns),
        identity=identity,
        likelihood=ev.likelihood,
        sampling_temperature=ev.sampling_temperature,
        sampling_repeats=ev.sampling_repeats if ev.sampling_temperature > 0 else 0,
        probe_file=str(probe_path) if probe_path is not None else None,
    )


def summary_options(ev: EvalSettings) -> SummaryOptions:
    return SummaryOptions(
        samples=ev.bootstrap_samples,
        level=ev.confidence,
        seed=ev.seed,
        tie_margin=ev.tie_margin,
        disagreements=ev.disagreements,
    )


async def run_experiment(
    settings: Settings,
    experiment: Experiment,
    *,
    on_start: Callable[[int, int], None] | None = None,
    on_answer: Callable[[dict[str, Any]], None] | None = None,
) -> ExperimentResult:
    """Ask what is missing, summarize every answer of the experiment, write the reports.

    Raises ``QAError`` (unreadable questions), ``CompareError`` (a resumed run with other
    options), ``OSError`` and, with a server, ``httpx.HTTPError``."""
    ev = settings.eval
    probe_path = (ev.probe_file or DEFAULT_PROBE) if ev.probe else None
    items, probe_items = load_questions(experiment, probe_path)
    runner, identity = open_runner(settings, experiment)
    options = compare_options(ev, identity, probe_path)
    run = await run_compare(
        items,
        runner,
        options,
        experiment.out,
        restart=experiment.restart,
        probe_items=probe_items,
        on_start=on_start,
        on_answer=on_answer,
    )
    meta = {
        **run.runner,
        "adapter": identity.get("adapter"),
        "kb": experiment.kb,
        "qa": str(experiment.qa),
        "repeats": options.repeats,
        "temperature": options.temperature,
        "max_tokens": options.max_tokens,
        "sampling_temperature": options.sampling_temperature if options.sampled else None,
        "sampling_repeats": options.sampling_repeats if options.sampled else None,
        "probe": options.probe_file if run.probe_rows else None,
        "wall_s": round(run.wall_s, 1),
    }
    summary = summarize(
        run.rows,
        items,
        options.systems,
        summary_options(ev),
        skipped=run.skipped,
        meta=meta,
        likelihood_rows=run.likelihood_rows,
        probe_rows=run.probe_rows,
        notes=run.notes,
    )
    return ExperimentResult(run, summary, write_reports(summary, experiment.out))


def rebuild_report(ev: EvalSettings, out: Path) -> tuple[dict[str, Any], dict[str, Path]]:
    """The summary and reports again from ``out``'s files: the last answer of each
    (question, system, repeat, run), the sampled ones at the last run's sampling options."""
    rows = [r for r in load_results(out / RESULTS) if not r.get("error")]
    if not rows:
        raise ExperimentError(f"{out / RESULTS} holds no answers")
    items: dict[str, QAItem] = {}
    for row in rows:
        items.setdefault(
            row["id"],
            QAItem(
                row["id"], row["question"], row["answers"], row.get("source"), row["answerable"]
            ),
        )
    run = json.loads((out / RUN).read_text(encoding="utf-8")) if (out / RUN).is_file() else {}
    opts = run.get("options", {})
    systems = [s for s in opts.get("systems", []) if s] or sorted({r["system"] for r in rows})
    wanted_t, wanted_p = opts.get("sampling_temperature"), opts.get("top_p")
    latest: dict[tuple[str, str, int, str], dict[str, Any]] = {}
    for row in rows:
        sampled = run_of(row) == SAMPLED
        if sampled and (row.get("temperature"), row.get("top_p")) != (wanted_t, wanted_p):
            continue
        latest[(row["id"], row["system"], int(row["repeat"]), run_of(row))] = row

    def last_per_question(name: str) -> list[dict[str, Any]]:
        found = {
            (r["id"], r["system"], likelihood_set(r)): r
            for r in load_results(out / name)
            if not r.get("error")
        }
        return list(found.values())

    summary = summarize(
        list(latest.values()),
        list(items.values()),
        systems,
        summary_options(ev),
        meta={k: v for k, v in run.get("fixed", {}).items() if v is not None},
        likelihood_rows=last_per_question(LIKELIHOOD),
        probe_rows=last_per_question(PROBE),
    )
    return summary, write_reports(summary, out)
