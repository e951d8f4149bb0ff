"""``kbqa eval``: compare RAG and finetuning on the same questions."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, Any

import typer

from app.cli.common import ConfigOpt, settings_or_exit, setup_logging

eval_app = typer.Typer(
    help="Measure which answers better on your documents: retrieval or finetuning.",
    no_args_is_help=True,
)


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code)


@eval_app.command("compare")
def compare_cmd(
    qa: Annotated[
        Path,
        typer.Option(help="Test questions, JSONL: {id, question, answers, source?, answerable?}."),
    ],
    out: Annotated[
        Path, typer.Option(help="Output folder (results.jsonl, summary.json, reports).")
    ],
    kb: Annotated[
        str | None, typer.Option(help="Knowledge base of the rag systems (skipped without).")
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(help="Base model reference (default: llm.model; with --server: served)."),
    ] = None,
    adapter: Annotated[
        str | None,
        typer.Option(
            help="LoRA adapter folder (with --server: the adapter's served model name); "
            "the lora systems are skipped without it."
        ),
    ] = None,
    systems: Annotated[
        str | None, typer.Option(help="Comma-separated: base,rag,lora,rag+lora (eval.systems).")
    ] = None,
    repeats: Annotated[
        int | None, typer.Option(help="Times each question is asked per system (eval.repeats).")
    ] = None,
    temperature: Annotated[
        float | None,
        typer.Option(
            help="Sampling temperature; 0 greedy (eval.temperature). >0: seed per repeat."
        ),
    ] = None,
    max_tokens: Annotated[
        int | None, typer.Option(help="Answer budget of every system (eval.max_tokens).")
    ] = None,
    top_k: Annotated[
        int | None, typer.Option(help="Passages retrieved by the rag systems (eval.top_k).")
    ] = None,
    search_mode: Annotated[
        str | None, typer.Option(help="dense|keyword|hybrid (eval.search_mode).")
    ] = None,
    negatives: Annotated[
        Path | None,
        typer.Option(help="Off-topic questions (JSONL or one a line): refusal is right."),
    ] = None,
    limit: Annotated[
        int | None, typer.Option(help="Only the first N questions of --qa (a subset).")
    ] = None,
    server: Annotated[
        str | None, typer.Option(help="Evaluate a running kbqa at this URL instead.")
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(help="API key for --server (default: eval.api_key, KBQA_EVAL__API_KEY)."),
    ] = None,
    restart: Annotated[
        bool, typer.Option(help="Discard the results already in --out instead of resuming.")
    ] = False,
    likelihood: Annotated[
        bool | None,
        typer.Option(
            "--likelihood/--no-likelihood",
            help="Gold-answer likelihood (NLL, perplexity) under each system's prompt; "
            "in-process only (eval.likelihood).",
            show_default=False,
        ),
    ] = None,
    probe: Annotated[
        bool | None,
        typer.Option(
            "--probe/--no-probe",
            help="Forgetting probe: general questions asked of base and lora when a lora "
            "system runs (eval.probe).",
            show_default=False,
        ),
    ] = None,
    probe_file: Annotated[
        Path | None,
        typer.Option(help="Questions of the forgetting probe, JSONL (eval.probe_file)."),
    ] = None,
    sampling_temperature: Annotated[
        float | None,
        typer.Option(
            help="After the main run, ask every question again --sampling-repeats times at "
            "this temperature; 0: no sampled run (eval.sampling_temperature)."
        ),
    ] = None,
    sampling_repeats: Annotated[
        int | None,
        typer.Option(help="Answers per question in the sampled run (eval.sampling_repeats)."),
    ] = None,
    config: ConfigOpt = None,
    data_dir: Annotated[Path | None, typer.Option(help="Data directory.")] = None,
    log_level: Annotated[str, typer.Option(help="Log level.")] = "warning",
) -> None:
    """Ask every question of --qa N times per system, score, and write the report.

    Resumable: answers are appended to OUT/results.jsonl as they come; a re-run asks only
    what is missing. Also: the gold-answer likelihood (OUT/likelihood.jsonl), the forgetting
    probe (OUT/probe.jsonl) and, with --sampling-temperature, a sampled run next to the main one.
    """
    import httpx
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from eval.compare import DEFAULT_PROBE, CompareError, CompareOptions, run_compare
    from eval.data import QAError, read_qa
    from eval.report import rich_table, write_reports
    from eval.summary import SummaryOptions, summarize
    from eval.systems import HttpRunner, InProcessRunner, Runner

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
    ev = settings.eval
    probe_path = (ev.probe_file or DEFAULT_PROBE) if ev.probe else None
    try:
        items = read_qa(qa)
        if limit is not None:
            items = items[:limit]
        if negatives is not None:
            items += read_qa(negatives, negative=True)
        probe_items = read_qa(probe_path) if probe_path is not None else []
    except QAError as exc:
        raise _fail(str(exc)) from exc

    runner: Runner
    if server:
        key = ev.api_key.get_secret_value() if ev.api_key else None
        runner = HttpRunner(
            server, kb=kb, adapter=adapter, model=model, api_key=key, timeout_s=ev.server_timeout_s
        )
        identity: dict[str, Any] = {"server": server, "model": model, "adapter": adapter}
    else:
        adapter_dir = Path(adapter).resolve() if adapter else None
        run_settings = InProcessRunner.settings_for(
            settings, model=model, adapter=adapter_dir, adapter_name=ev.adapter_name
        )
        runner = InProcessRunner(
            run_settings, kb=kb, adapter=adapter_dir, adapter_name=ev.adapter_name
        )
        identity = {
            "server": None,
            "model": run_settings.llm.model,
            "adapter": str(adapter_dir) if adapter_dir else None,
        }
    identity["kb"] = kb
    options = CompareOptions(
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
    console = Console()
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
    )
    task = progress.add_task("loading", total=None)

    def on_start(total: int, done: int) -> None:
        progress.update(task, description="answers", total=total, completed=done)

    def on_answer(row: dict[str, Any]) -> None:
        progress.update(task, advance=1, description=f"{row['system']:<8} {row['id']}")

    try:
        with progress:
            run = asyncio.run(
                run_compare(
                    items,
                    runner,
                    options,
                    out,
                    restart=restart,
                    probe_items=probe_items,
                    on_start=on_start,
                    on_answer=on_answer,
                )
            )
    except CompareError as exc:
        raise _fail(str(exc)) from exc
    except (OSError, httpx.HTTPError) as exc:
        raise _fail(f"{type(exc).__name__}: {exc}", 1) from exc
    for system, reason in run.skipped.items():
        typer.secho(f"skipped {system}: {reason}", fg=typer.colors.YELLOW, err=True)
    for instrument, reason in run.notes.items():
        typer.secho(f"no {instrument}: {reason}", fg=typer.colors.YELLOW, err=True)
    meta = {
        **run.runner,
        "adapter": identity.get("adapter"),
        "kb": kb,
        "qa": str(qa),
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
        SummaryOptions(
            samples=ev.bootstrap_samples,
            level=ev.confidence,
            seed=ev.seed,
            tie_margin=ev.tie_margin,
            disagreements=ev.disagreements,
        ),
        skipped=run.skipped,
        meta=meta,
        likelihood_rows=run.likelihood_rows,
        probe_rows=run.probe_rows,
        notes=run.notes,
    )
    paths = write_reports(summary, out)
    console.print(rich_table(summary))
    typer.echo(
        f"asked={run.asked} reused={run.reused} failed={run.failed} wall_s={run.wall_s:.1f} "
        f"probe_asked={run.probe_asked} likelihood_scored={run.likelihood_scored} "
        f"report={paths['html']}"
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

    from eval.compare import (
        LIKELIHOOD,
        PROBE,
        RESULTS,
        RUN,
        SAMPLED,
        likelihood_set,
        load_results,
        run_of,
    )
    from eval.data import QAItem
    from eval.report import rich_table, write_reports
    from eval.summary import SummaryOptions, summarize

    settings = settings_or_exit(config)
    rows = [r for r in load_results(out / RESULTS) if not r.get("error")]
    if not rows:
        raise _fail(f"{out / RESULTS} holds no answers")
    items: dict[str, QAItem] = {}
    for row in rows:
        items.setdefault(
            row["id"],
            QAItem(
                row["id"], row["question"], row["answers"], row.get("source"), row["answerable"]
            ),
        )
    run = json.loads((out / RUN).read_text(encoding="utf-8")) if (out / RUN).is_file() else {}
    systems = [s for s in run.get("options", {}).get("systems", []) if s] or sorted(
        {r["system"] for r in rows}
    )
    opts = run.get("options", {})
    # the sampled answers of the last run's sampling options (a row per repeat: the last wins)
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

    ev = settings.eval
    summary = summarize(
        list(latest.values()),
        list(items.values()),
        systems,
        SummaryOptions(
            ev.bootstrap_samples, ev.confidence, ev.seed, ev.tie_margin, ev.disagreements
        ),
        meta={k: v for k, v in run.get("fixed", {}).items() if v is not None},
        likelihood_rows=last_per_question(LIKELIHOOD),
        probe_rows=last_per_question(PROBE),
    )
    paths = write_reports(summary, out)
    Console().print(rich_table(summary))
    typer.echo(f"report={paths['html']}")


def register(cli: typer.Typer) -> None:
    """Add the ``eval`` sub-app to the CLI."""
    cli.add_typer(eval_app, name="eval")
