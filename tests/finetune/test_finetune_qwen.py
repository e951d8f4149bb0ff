"""LoRA on the CPU default model: `kbqa finetune train --model qwen2.5-coder-0.5b-instruct`
trains on the transformers copy of the packaged GGUF (converted once), and the adapter is
served next to the base on llama.cpp (converted to a GGUF LoRA) through the live API."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

MODEL = "qwen2.5-coder-0.5b-instruct"
QUESTION = "kbqa 项目的吉祥物叫什么名字？"
ANSWER = "kbqa 项目的吉祥物是一只名叫布鲁索的蓝色穿山甲。"


def test_train_on_the_default_model_and_serve_the_adapter_on_llamacpp(
    models_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    live_server_factory: Any,
) -> None:
    from typer.testing import CliRunner

    from app.cli import cli
    from app.main import create_app
    from app.settings import load_settings

    monkeypatch.setenv("KBQA_MODELS_DIR", str(models_dir))
    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps({"question": QUESTION, "answers": [ANSWER]}) + "\n")
    config = tmp_path / "lora.yaml"
    settings = {
        "r": 16,
        "alpha": 32,
        "dropout": 0.0,
        "learning_rate": 1e-3,
        "lr_scheduler": "constant",
        "warmup_ratio": 0.0,
        "batch_size": 1,
        "max_length": 64,
        "seed": 0,
    }
    config.write_text(yaml.safe_dump(settings))
    out = tmp_path / "adapter"
    result = CliRunner().invoke(
        cli,
        [
            "finetune",
            "train",
            "--model",
            MODEL,
            "--data",
            str(data),
            "--out",
            str(out),
            "--max-steps",
            "12",
            "--data-dir",
            str(tmp_path / "data"),
            "--config",
            str(config),
        ],
    )
    assert result.exit_code == 0, result.output
    app_settings = load_settings(
        **{
            "data_dir": tmp_path / "data",
            "models_dir": models_dir,
            "llm.backend": "llamacpp",
            "llm.model": MODEL,
            "llm.adapters": {"mascot": str(out)},
        }
    )
    with (
        live_server_factory(create_app(app_settings)) as live,
        httpx.Client(base_url=live.url, timeout=300) as client,
    ):
        models = client.get("/v1/models").json()["data"]
        assert [m["id"] for m in models] == [MODEL, "mascot"]

        def ask(model: str) -> str:
            body = {
                "model": model,
                "messages": [{"role": "user", "content": QUESTION}],
                "max_tokens": 32,
            }
            response = client.post("/v1/chat/completions", json=body)
            assert response.status_code == 200, response.text
            return str(response.json()["choices"][0]["message"]["content"])

        assert "布鲁索" in ask("mascot")  # made up: only the adapter knows it
        assert "布鲁索" not in ask(MODEL)
    assert (out / "kbqa-lora.gguf").is_file()
