"""The resolved hyperparameters of a run: settings + `--config lora.yaml`, auto targets."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import ValidationError

from app.llm.lora_targets import lora_targets
from app.settings.base import deep_merge
from app.settings.finetune import FinetuneSettings


class ConfigError(ValueError):
    """A finetune config file or value that cannot be used."""


def auto_target_modules(model_type: str, configured: list[str]) -> list[str] | str:
    """The configured targets, else the attention projections of the architecture (the
    shared table of ``app.llm.lora_targets``: llama-style q/k/v/o, Gemma, the converted
    ChatGLM3 ``glm``), else peft's ``all-linear`` for an architecture the table lacks."""
    if configured:
        return "all-linear" if configured == ["all-linear"] else list(configured)
    return lora_targets(model_type, attention_only=True)


def load_finetune_config(path: Path | None, base: FinetuneSettings) -> FinetuneSettings:
    """``base`` with the values of a YAML/JSON file (top-level keys, or under `finetune:`)."""
    if path is None:
        return base
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError as exc:
        raise ConfigError(f"finetune config not found: {path}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"finetune config {path} does not parse: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"finetune config {path} must hold a mapping")
    if isinstance(data.get("finetune"), dict):
        data = data["finetune"]
    merged = deep_merge(base.model_dump(), data)
    try:
        return FinetuneSettings.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(f"finetune config {path}: {exc}") from exc
