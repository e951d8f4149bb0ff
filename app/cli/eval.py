"""``kbqa eval``: compare RAG and finetuning on the same questions."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from app.cli.common import ConfigOpt, DataDirOpt, progress_bar, settings_or_exit, setup_logging

if TYPE_CHECKING:
    from eval.experiment import ExperimentResult

eval_app = typer.Typer(
    help="Measure which answers better on your documents: retrieval or finetuning.",
    no_args_is_help=True,
)


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code)


_QaOpt = Annotated[
    Path,
    typer.Option(help="Test questions, JSONL: {id, question, answers, source?, answerable?}."),
]
_OutOpt = Annotated[
    Path, typer.Option(help="Output folder (results.jsonl, summary.json, reports).")
]
_KbOpt = Annotated[
    str | None, typer.Option(help="Knowledge base of the rag systems (skipped without).")
]
_ModelOpt = Annotated[
    str | None,
    typer.Option(help="Base model reference (default: llm.model; with --server: served)."),
]
_AdapterOpt = Annotated[
    str | None,
    typer.Option(
        help="LoRA adapter folder (with --server: the adapter's served model name); "
        "the lora systems are skipped without it."
    ),
]
_SystemsOpt = Annotated[
    str | None, typer.Option(help="Comma-separated: base,rag,lora,rag+lora (eval.systems).")
]
_RepeatsOpt = Annotated[
    int | None, typer.Option(help="Times each question is asked per system (eval.repeats).")
]
_TemperatureOpt = Annotated[
    float | None,
    typer.Option(help="Sampling temperature; 0 greedy (eval.temperature). >0: seed per repeat."),
]
_MaxTokensOpt = Annotated[
    int | None, typer.Option(help="Answer budget of every system (eval.max_tokens).")
]
_TopKOpt = Annotated[
    int | None, typer.Option(help="Passages retrieved by the rag systems (eval.top_k).")
]
_SearchModeOpt = Annotated[
    str | None, typer.Option(help="dense|keyword|hybrid (eval.search_mode).")
]
_NegativesOpt = Annotated[
    Path | None,
    typer.Option(help="Off-topic questions (JSONL or one a line): refusal is right."),
]
_LimitOpt = Annotated[
    int | None, typer.Option(help="Only the first N questions of --qa (a subset).")
]
_ServerOpt = Annotated[
    str | None, typer.Option(help="Evaluate a running kbqa at this URL instead.")
]
_ApiKeyOpt = Annotated[
    str | None,
    typer.Option(help="API key for --server (default: eval.api_key, KBQA_EVAL__API_KEY)."),
]
_RestartOpt = Annotated[
    bool, typer.Option(help="Discard the results already in --out instead of resuming.")
]
_LikelihoodOpt = Annotated[
    bool | None,
    typer.Option(
        "--likelihood/--no-likelihood",
        help="Gold-answer likelihood (NLL, perplexity) under each system's prompt; "
        "in-process only (eval.likelihood).",
        show_default=False,
    ),
]
_ProbeOpt = Annotated[
    bool | None,
    typer.Option(
        "--probe/--no-probe",
        help="Forgetting probe: general questions asked of base and lora when a lora "
        "system runs (eval.probe).",
        show_default=False,
    ),
]
_ProbeFileOpt = Annotated[
    Path | None,
    typer.Option(help="Questions of the forgetting probe, JSONL (eval.probe_file)."),
]
_SamplingTemperatureOpt = Annotated[
    float | None,
    typer.Option(
        help="After the main run, ask every question again --sampling-repeats times at "
        "this temperature; 0: no sampled run (eval.sampling_temperature)."
    ),
]
_SamplingRepeatsOpt = Annotated[
    int | None,
    typer.Option(help="Answers per question in the sampled run (eval.sampling_repeats)."),
]
_LogLevelOpt = Annotated[str, typer.Option(help="Log level.")]


@eval_app.command("compare")
def compare_cmd(
    qa: _QaOpt,
    out: _OutOpt,
    kb: _KbOpt = None,
    model: _ModelOpt = None,
    adapter: _AdapterOpt = None,
    systems: _SystemsOpt = None,
    repeats: _RepeatsOpt = None,
    temperature: _TemperatureOpt = None,
    max_tokens: _MaxTokensOpt = None,
    top_k: _TopKOpt = None,
    search_mode: _SearchModeOpt = None,
    negatives: _NegativesOpt = None,
    limit: _LimitOpt = None,
    server: _ServerOpt = None,
    api_key: _ApiKeyOpt = None,
    restart: _RestartOpt = False,
    likelihood: _LikelihoodOpt = None,
    probe: _ProbeOpt = None,
    probe_file: _ProbeFileOpt = None,
    sampling_temperature: _SamplingTemperatureOpt = None,
    sampling_repeats: _SamplingRepeatsOpt = None,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    log_level: _LogLevelOpt = "warning",
) -> None:
    """Ask every question of --qa N times per system, score, and write the report.

    Resumable: answers are appended to OUT/results.jsonl as they come; a re-run asks only
    what is missing. Also: the gold-answer likelihood (OUT/likelihood.jsonl), the forgetting
    probe (OUT/probe.jsonl) and, with --sampling-temperature, a sampled run next to the main one.
    """
    import httpx

    from eval.compare import CompareError
    from eval.data import QAError
    from eval.experiment import Experiment, run_experiment

    settings = settings_or_exit(
        config,
        **{
            "data_dir": data_dir,
            "llm.model": model if server is None else None,
            "eval.systems": systems,
            "eval.repeats": repeats,
            "eval.temperature": temperature,
            "eval.max_tokens": max_tokens,
            "eval.top_k": top_k,
            "eval.search_mode": search_mode,
            "eval.api_key": api_key,
            "eval.likelihood": likelihood,
            "eval.probe": probe,
            "eval.probe_file": probe_file,
            "eval.sampling_temperature": sampling_temperature,
            "eval.sampling_repeats": sampling_repeats,
        },
    )
    setup_logging(log_level)
    experiment = Experiment(
        qa=qa,
        out=out,
        kb=kb,
        model=model,
        adapter=adapter,
        server=server,
        negatives=negatives,
        limit=limit,
        restart=restart,
    )
    progress, on_start, on_answer = _progress()
    try:
        with progress:
            result = asyncio.run(
                run_experiment(settings, experiment, on_start=on_start, on_answer=on_answer)
            )
    except (QAError, CompareError) as exc:
        raise _fail(str(exc)) from exc
    except (OSError, httpx.HTTPError) as exc:
        raise _fail(f"{type(exc).__name__}: {exc}", 1) from exc
    _print_result(result)


def _progress() -> tuple[Any, Callable[[int, int], None], Callable[[dict[str, Any]], None]]:
    """A progress bar of the comparison and its two callbacks (start, each answer)."""
    progress = progress_bar()
    task = progress.add_task("loading", total=None)

    def on_start(total: int, done: int) -> None:
        progress.update(task, description="answers", total=total, completed=done)

    def on_answer(row: dict[str, Any]) -> None:
        progress.update(task, advance=1, description=f"{row['system']:<8} {row['id']}")

    return progress, on_start, on_answer


def _print_result(result: ExperimentResult) -> None:
    from rich.console import Console

    from eval.report import rich_table

    run = result.run
    for system, reason in run.skipped.items():
        typer.secho(f"skipped {system}: {reason}", fg=typer.colors.YELLOW, err=True)
    for instrument, reason in run.notes.items():
        typer.secho(f"no {instrument}: {reason}", fg=typer.colors.YELLOW, err=True)
    Console().print(rich_table(result.summary))
    typer.echo(
        f"asked={run.asked} reused={run.reused} failed={run.failed} wall_s={run.wall_s:.1f} "
        f"probe_asked={run.probe_asked} likelihood_scored={run.likelihood_scored} "
        f"report={result.paths['html']}"
    )
    if run.failed:
        typer.secho(
            f"{run.failed} answers failed (see the log); re-run the same command to retry them",
            fg=typer.colors.YELLOW,
            err=True,
        )


@eval_app.command("report")
def report_cmd(
    out: Annotated[Path, typer.Argument(help="Folder of an earlier `kbqa eval compare`.")],
    config: ConfigOpt = None,
) -> None:
    """Rebuild summary.json and the reports from OUT/results.jsonl (e.g. after an interrupt)."""
    from rich.console import Console

    from eval.experiment import ExperimentError, rebuild_report
    from eval.report import rich_table

    settings = settings_or_exit(config)
    try:
        summary, paths = rebuild_report(settings.eval, out)
    except ExperimentError as exc:
        raise _fail(str(exc)) from exc
    Console().print(rich_table(summary))
    typer.echo(f"report={paths['html']}")


def register(cli: typer.Typer) -> None:
    """Add the ``eval`` sub-app to the CLI."""
    cli.add_typer(eval_app, name="eval")
