"""The resolved hyperparameters of a run: settings + `--config lora.yaml`, auto targets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from app.settings.finetune import FinetuneSettings

# LoRA target modules per transformers `model_type` (attention projections: the usual
# knowledge-injection choice). `glm` is ChatGLM3 converted to the native GlmForCausalLM.
_FALLBACK_TARGETS: dict[str, list[str]] = {
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen3": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "gemma": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "gemma2": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "gemma3": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "gemma3_text": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "glm": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "glm4": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "phi3": ["qkv_proj", "o_proj"],
    "chatglm": ["query_key_value", "dense"],
}

try:  # the shared table, when the LLM package provides one
    from app.llm.lora_targets import LORA_TARGETS as _SHARED_TARGETS  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on the app version
    _SHARED_TARGETS = {}

LORA_TARGETS: dict[str, list[str]] = {**_FALLBACK_TARGETS, **_SHARED_TARGETS}


class ConfigError(ValueError):
    """A finetune config file or value that cannot be used."""


def auto_target_modules(model_type: str, configured: list[str]) -> list[str] | str:
    """The configured targets, else the table's entry, else peft's `all-linear`."""
    if configured:
        return "all-linear" if configured == ["all-linear"] else list(configured)
    return list(LORA_TARGETS.get(model_type, [])) or "all-linear"


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
    merged = _deep_merge(base.model_dump(), data)
    try:
        return FinetuneSettings.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(f"finetune config {path}: {exc}") from exc


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out
