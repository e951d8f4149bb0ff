"""The ``kbqa`` command line. Each area adds its own sub-app module here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from app.cli.common import ConfigOpt, settings_or_exit, setup_logging
from app.cli.eval import register as _register_eval
from app.cli.finetune import register as _register_finetune
from app.cli.ingest import register as _register_ingest
from app.cli.models import models_app
from app.settings import masked_dump

cli = typer.Typer(
    name="kbqa",
    help="Knowledge-base QA: stable, sourced answers over your documents.",
    no_args_is_help=True,
    add_completion=False,
)
config_app = typer.Typer(help="Inspect the settings.", no_args_is_help=True)
cli.add_typer(config_app, name="config")


@config_app.command("show")
def config_show(config: ConfigOpt = None) -> None:
    """Print the effective settings (secrets masked) as JSON."""
    settings = settings_or_exit(config)
    typer.echo(json.dumps(masked_dump(settings), indent=2, ensure_ascii=False))


@cli.command()
def serve(
    config: ConfigOpt = None,
    host: Annotated[str | None, typer.Option(help="Interface to bind.")] = None,
    port: Annotated[int | None, typer.Option(help="TCP port.")] = None,
    model: Annotated[
        str | None, typer.Option(help="Model reference (dir, hub id, packaged name).")
    ] = None,
    backend: Annotated[
        str | None, typer.Option(help="LLM backend: auto|llamacpp|transformers|openai|none.")
    ] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Data directory.")] = None,
) -> None:
    """Run the HTTP service (OpenAI-compatible API under /v1)."""
    import uvicorn

    from app.main import create_app

    settings = settings_or_exit(
        config,
        **{
            "server.host": host,
            "server.port": port,
            "llm.model": model,
            "llm.backend": backend,
            "data_dir": data_dir,
        },
    )
    setup_logging(settings.server.log_level)
    from app.services.factory import backend_kind

    kind = backend_kind(settings)
    if kind in {"transformers", "llamacpp"}:
        # a wrong model reference is reported here, plainly, not as a start-up traceback
        from app.llm.models import ModelReferenceError, gguf_of, resolve_model

        try:
            if kind == "llamacpp":
                gguf_of(settings.llm.model, settings.resolved_models_dir)
            else:
                resolve_model(settings.llm.model, settings.resolved_models_dir)
        except ModelReferenceError as exc:
            typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
            raise typer.Exit(2) from exc
    from app.api.http_errors import http_protocol

    uvicorn.run(
        create_app(settings),
        host=settings.server.host,
        port=settings.server.port,
        log_level=settings.server.log_level,
        http=http_protocol(),
    )


def main() -> None:
    cli()


# the other sub-apps, in the order ``kbqa --help`` lists them
cli.add_typer(models_app, name="models")
_register_ingest(cli)
_register_finetune(cli)
_register_eval(cli)
