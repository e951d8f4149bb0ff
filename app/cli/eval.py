"""``kbqa eval``: compare RAG and finetuning on the same questions."""

from __future__ import annotations

import typer


def register(cli: typer.Typer) -> None:
    """Add the ``eval`` sub-app to the CLI."""
