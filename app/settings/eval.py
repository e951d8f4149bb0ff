"""Settings of `kbqa eval compare` (the RAG-vs-finetune comparison)."""

from __future__ import annotations

from app.settings.base import Section


class EvalSettings(Section):
    """Defaults of `kbqa eval compare`; every flag of the command falls back to a field here."""
