"""``kbqa finetune``: build SFT data, train a LoRA adapter, merge it."""

from __future__ import annotations

import typer


def register(cli: typer.Typer) -> None:
    """Add the ``finetune`` sub-app to the CLI."""
