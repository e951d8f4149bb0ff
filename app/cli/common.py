"""What every ``kbqa`` command shares: the ``--config`` option, loading the settings, logging,
the progress bar.

The sub-app modules import this at the top; ``app.cli`` imports them (never the reverse)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

import typer

from app.settings import Settings, SettingsError, load_settings

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="Config file (TOML or YAML); also KBQA_CONFIG."),
]
DataDirOpt = Annotated[Path | None, typer.Option(help="Data directory (settings data_dir).")]


def settings_or_exit(config: Path | None, **overrides: object) -> Settings:
    """Load settings for a command; print a readable error and exit 2 when they are wrong."""
    try:
        return load_settings(config, **overrides)
    except SettingsError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from exc


def setup_logging(level: str = "info") -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s level=%(levelname)s logger=%(name)s %(message)s",
    )


def progress_bar(*extra: Any) -> Any:
    """A rich progress bar: description, bar, done/total, elapsed and remaining time, then
    the ``extra`` columns."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        *extra,
    )
