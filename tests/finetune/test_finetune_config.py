"""The finetune config: file over settings, errors, auto LoRA targets per architecture."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.settings import load_settings
from app.settings.finetune import FinetuneSettings
from finetune.config import ConfigError, auto_target_modules, load_finetune_config


@pytest.mark.parametrize(
    ("model_type", "expected"),
    [
        ("llama", ["q_proj", "k_proj", "v_proj", "o_proj"]),
        ("gemma3_text", ["q_proj", "k_proj", "v_proj", "o_proj"]),
        ("glm", ["q_proj", "k_proj", "v_proj", "o_proj"]),  # converted ChatGLM3
        ("chatglm", ["query_key_value", "dense"]),  # original remote-code layout
        ("some_new_arch", "all-linear"),
    ],
)
def test_auto_targets_by_architecture(model_type: str, expected: object) -> None:
    assert auto_target_modules(model_type, []) == expected


def test_configured_targets_win() -> None:
    assert auto_target_modules("llama", ["q_proj"]) == ["q_proj"]
    assert auto_target_modules("llama", ["all-linear"]) == "all-linear"


def test_file_overrides_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KBQA_FINETUNE__R", "4")
    monkeypatch.setenv("KBQA_FINETUNE__TARGET_MODULES", "q_proj,v_proj")
    base = load_settings().finetune
    assert (base.r, base.target_modules) == (4, ["q_proj", "v_proj"])
    path = tmp_path / "lora.yaml"
    path.write_text("finetune:\n  alpha: 64\n  max_steps: 7\n  data:\n    holdout: 0.2\n")
    merged = load_finetune_config(path, base)
    assert (merged.r, merged.alpha, merged.max_steps, merged.data.holdout) == (4, 64, 7, 0.2)
    path.write_text("r: 2\nlearning_rate: 0.01\n")  # top-level keys work too
    assert load_finetune_config(path, base).r == 2


@pytest.mark.parametrize(
    ("text", "message"),
    [("lr: 0.1\n", "lr"), ("r: 0\n", "r"), ("- a\n", "mapping"), ("r: [\n", "parse")],
)
def test_bad_config_is_a_clear_error(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "lora.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_finetune_config(path, FinetuneSettings.model_validate({}))
    with pytest.raises(ConfigError, match="not found"):
        load_finetune_config(tmp_path / "missing.yaml", FinetuneSettings.model_validate({}))
