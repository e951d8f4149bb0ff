"""``kbqa finetune``: build SFT data, train a LoRA adapter, merge it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer

from app.cli.common import DataDirOpt, progress_bar, settings_or_exit, setup_logging

if TYPE_CHECKING:
    from app.settings import Settings
    from app.settings.finetune import FinetuneSettings

finetune_app = typer.Typer(
    help="LoRA supervised finetuning: SFT data, training, merging.", no_args_is_help=True
)

FinetuneConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="Finetune config (YAML/JSON): hyperparameters at the top level or under "
        "`finetune:`, over the settings (KBQA_CONFIG, KBQA_FINETUNE__*).",
    ),
]


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code)


def _settings(
    config: Path | None, data_dir: Path | None, overrides: dict[str, Any] | None = None
) -> tuple[Settings, FinetuneSettings]:
    """The kbqa settings (env, KBQA_CONFIG), and their finetune section with the ``--config``
    file over it and the command's flags (``overrides``, None values ignored) over that."""
    from pydantic import ValidationError

    from app.settings.base import deep_merge, nest_dotted
    from app.settings.finetune import FinetuneSettings
    from finetune.config import ConfigError, load_finetune_config

    settings = settings_or_exit(None, data_dir=data_dir)
    try:
        ft = load_finetune_config(config, settings.finetune)
    except ConfigError as exc:
        raise _fail(str(exc)) from exc
    given = nest_dotted(overrides or {})
    if given:
        try:
            ft = FinetuneSettings.model_validate(deep_merge(ft.model_dump(), given))
        except ValidationError as exc:
            raise _fail(str(exc)) from exc
    return settings, ft


# ------------------------------------------------------------------------------------ data


def _kb_examples(
    settings: Settings, kb: str, generate: bool, ft: FinetuneSettings
) -> tuple[list[Any], Any]:
    """Knowledge-injection examples of a knowledge base (+ LLM-written QA pairs, with a
    progress bar), and the generation's result (None without ``generate``)."""
    from rich.progress import TextColumn

    from finetune.data import DataError
    from finetune.kb import chunk_examples
    from finetune.kb_data import generate_with_configured_llm, load_chunks

    try:
        chunks = load_chunks(settings, kb, ft.data)
        examples = chunk_examples(chunks, ft.data)
        if not generate:
            return examples, None
        with progress_bar(
            TextColumn("pairs {task.fields[kept]}  dropped {task.fields[dropped]}")
        ) as progress:
            task = progress.add_task("generate-qa", total=len(chunks), kept=0, dropped=0)
            totals = {"kept": 0, "dropped": 0}

            def on_chunk(kept: int, dropped: int) -> None:
                totals["kept"] += kept
                totals["dropped"] += dropped
                progress.update(task, advance=1, kept=totals["kept"], dropped=totals["dropped"])

            generated = generate_with_configured_llm(settings, chunks, ft.data, on_chunk)
    except DataError as exc:
        raise _fail(str(exc)) from exc
    return examples + generated.examples, generated


_DataInputsOpt = Annotated[
    list[Path] | None,
    typer.Argument(
        help="QA (question, answers, source), alpaca (instruction, input, output) or "
        "conversations/messages files: JSONL, or a JSON list."
    ),
]
_DataOutOpt = Annotated[Path, typer.Option("--out", "-o", help="Train JSONL to write.")]
_DataKbOpt = Annotated[
    str | None,
    typer.Option(help="Also use this knowledge base: its chunks as knowledge examples."),
]
_DataGenerateQaOpt = Annotated[
    bool,
    typer.Option("--generate-qa", help="With --kb: QA pairs written by the configured LLM."),
]
_DataHoldoutOpt = Annotated[
    float | None,
    typer.Option(help="Fraction held out as a test split (written as <out>.holdout.jsonl)."),
]
_DataHoldoutByOpt = Annotated[
    str | None, typer.Option(help="Holdout unit: question or source (document).")
]
_DataSeedOpt = Annotated[int | None, typer.Option(help="Seed of the holdout split.")]
_DataMaxChunksOpt = Annotated[
    int | None,
    typer.Option(help="With --kb: at most this many chunks, evenly spaced (0: all)."),
]


@finetune_app.command("data")
def data_cmd(
    inputs: _DataInputsOpt = None,
    out: _DataOutOpt = Path("train.jsonl"),
    kb: _DataKbOpt = None,
    generate_qa: _DataGenerateQaOpt = False,
    holdout: _DataHoldoutOpt = None,
    holdout_by: _DataHoldoutByOpt = None,
    seed: _DataSeedOpt = None,
    max_chunks: _DataMaxChunksOpt = None,
    config: FinetuneConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Build SFT examples (JSONL) from QA/alpaca/conversations files and/or a knowledge base."""
    from finetune.data import DataError, build_dataset, read_examples

    if not inputs and not kb:
        raise _fail("give input files, --kb NAME, or both")
    if generate_qa and not kb:
        raise _fail("--generate-qa needs --kb")
    settings, ft = _settings(
        config,
        data_dir,
        {
            "data.holdout": holdout,
            "data.holdout_by": holdout_by,
            "data.holdout_seed": seed,
            "data.kb_max_chunks": max_chunks,
        },
    )
    setup_logging("warning")
    try:
        for path in inputs or []:  # a bad file fails before any knowledge-base or LLM work
            read_examples(path)
    except DataError as exc:
        raise _fail(str(exc)) from exc
    extra, generated = _kb_examples(settings, kb, generate_qa, ft) if kb else ([], None)
    try:
        report = build_dataset(
            list(inputs or []),
            out,
            holdout=ft.data.holdout,
            holdout_by=ft.data.holdout_by,
            holdout_seed=ft.data.holdout_seed,
            extra=extra,
        )
    except DataError as exc:
        raise _fail(str(exc)) from exc
    line = f"train={report.train} out={report.train_path}"
    if report.holdout_path is not None:
        line += f" holdout={report.holdout} holdout_out={report.holdout_path}"
    if kb:
        line += f" kb_examples={len(extra)}"
    if generated is not None:
        # how many generated pairs were kept, and why the others were dropped
        report_path = out.with_name(f"{out.stem}.generate-qa.json")
        report_path.write_text(json.dumps(generated.report(), indent=2) + "\n", encoding="utf-8")
        dropped = " ".join(f"{k}={v}" for k, v in generated.report()["dropped"].items())
        line += (
            f" generated_kept={len(generated.examples)} generated_skipped={generated.skipped}"
            f" ({dropped}) generate_report={report_path}"
        )
    typer.echo(line)


# ----------------------------------------------------------------------------------- train


@finetune_app.command("train")
def train_cmd(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory of the run.")],
    model: Annotated[
        str | None,
        typer.Option(help="Base model reference (dir, hub id, packaged name); default llm.model."),
    ] = None,
    data: Annotated[Path | None, typer.Option(help="Train JSONL (kbqa finetune data).")] = None,
    eval_data: Annotated[
        Path | None, typer.Option("--eval", help="Dev JSONL: eval loss during training.")
    ] = None,
    config: FinetuneConfigOpt = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the run in --out from its last checkpoint.")
    ] = False,
    max_steps: Annotated[
        int | None, typer.Option(help="Override max_steps (> 0 beats epochs).")
    ] = None,
    epochs: Annotated[float | None, typer.Option(help="Override epochs.")] = None,
    progress: Annotated[
        bool, typer.Option(help="Progress bar (else key=value log lines per logging step).")
    ] = True,
    data_dir: DataDirOpt = None,
) -> None:
    """Train a LoRA adapter on SFT examples (transformers Trainer + peft); Ctrl-C saves a
    resumable checkpoint."""
    from app.llm.base import LLMError
    from finetune.config import ConfigError
    from finetune.data import DataError
    from finetune.train import TrainError, train

    updates = {k: v for k, v in {"max_steps": max_steps, "epochs": epochs}.items() if v is not None}
    settings, ft = _settings(config, data_dir, updates)
    if not resume and data is None:
        raise _fail("--data is required (except with --resume)")
    setup_logging("warning" if progress else "info")
    callbacks: list[Any] = []
    if progress:
        from finetune.progress import RichProgressCallback

        callbacks.append(RichProgressCallback())
    try:
        result = train(
            model=model or (None if resume else settings.llm.model),
            data=data,
            eval_data=eval_data,
            out=out,
            settings=ft,
            models_dir=settings.resolved_models_dir,
            resume=resume,
            prompt_template=settings.llm.prompt_template,
            callbacks=callbacks,
            overrides=updates if resume else None,
        )
    except (TrainError, ConfigError, DataError, LLMError) as exc:
        raise _fail(str(exc)) from exc
    finally:
        for callback in callbacks:
            callback.close()
    if result.interrupted:
        typer.echo(
            f"interrupted at step {result.global_step}; checkpoint={result.checkpoint}\n"
            f"continue with: kbqa finetune train --out {out} --resume"
        )
        raise typer.Exit(130)
    m = result.metrics
    typer.echo(
        f"adapter={out} steps={result.global_step} train_loss={_fmt(m.get('train_loss_mean'))} "
        f"eval_loss={_fmt(m.get('final_eval_loss'))} "
        f"samples_per_s={_fmt(m.get('train_samples_per_second'))} "
        f"runtime_s={_fmt(m.get('train_runtime_s'))} "
        f"peak_rss_mb={(m.get('peak_rss_bytes') or 0) / 2**20:.0f} skipped={result.skipped}"
    )
    typer.echo(f"serve it with: KBQA_LLM__ADAPTERS={out.name}={out.resolve()} kbqa serve")


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, int | float) else "-"


# ----------------------------------------------------------------------------------- merge


@finetune_app.command("merge")
def merge_cmd(
    adapter: Annotated[Path, typer.Option(help="Adapter directory (kbqa finetune train --out).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory of the merged model.")],
    model: Annotated[
        str | None, typer.Option(help="Base model reference; default: the one trained on.")
    ] = None,
    dtype: Annotated[
        str | None, typer.Option(help="auto, float32, float16 or bfloat16 (merge_dtype).")
    ] = None,
    config: FinetuneConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Fold a LoRA adapter into its base model: a plain model directory (for vLLM)."""
    import yaml

    from app.llm.base import LLMError
    from finetune.merge import MergeError, merge_adapter
    from finetune.train import CONFIG_FILE

    settings, ft = _settings(config, data_dir)
    setup_logging("info")
    if model is None and (adapter / CONFIG_FILE).is_file():
        saved = yaml.safe_load((adapter / CONFIG_FILE).read_text(encoding="utf-8")) or {}
        model = saved.get("model")
    if model is None:
        raise _fail("--model is required (the adapter dir does not say which model it trained)")
    chosen = dtype or ft.merge_dtype
    if chosen not in {"auto", "float32", "float16", "bfloat16"}:
        raise _fail(f"--dtype must be auto, float32, float16 or bfloat16, not {chosen!r}")
    merge_dtype: Literal["auto", "float32", "float16", "bfloat16"] = chosen  # type: ignore[assignment]
    try:
        result = merge_adapter(
            model=model,
            adapter=adapter,
            out=out,
            models_dir=settings.resolved_models_dir,
            dtype=merge_dtype,
        )
    except (MergeError, LLMError, OSError, ValueError) as exc:
        raise _fail(str(exc)) from exc
    typer.echo(
        f"merged={result.out} base={model} dtype={result.dtype} seconds={result.seconds:.0f}"
    )
    typer.echo(f"serve it with vLLM: vllm serve {result.out}  (or kbqa serve --model {result.out})")


def register(cli: typer.Typer) -> None:
    """Add the ``finetune`` sub-app to the CLI."""
    cli.add_typer(finetune_app, name="finetune")
