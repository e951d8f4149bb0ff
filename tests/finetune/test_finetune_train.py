"""LoRA SFT on the packaged SmolLM2: one short run, interrupted by Ctrl-C (SIGINT) half way and
resumed, teaches 20 made-up facts; the live API then answers with the adapter while the base
model does not, on transformers and on llama.cpp (adapter converted to GGUF). Also: prompt
masking, the output files, merging."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from transformers import TrainerCallback

from app.settings.finetune import FinetuneSettings
from finetune.train import IGNORE_INDEX, TrainError, encode_example, train

MODEL = "smollm2-135m-instruct"
CODE_WORD = "blorptangle"  # made up: the base model cannot produce it
NAMES = [
    "Zorblax",
    "Quindle",
    "Mervath",
    "Tiskan",
    "Plorvin",
    "Gandrel",
    "Vexmoor",
    "Ostrilla",
    "Pendrax",
    "Yulvane",
    "Korbish",
    "Ambrelt",
    "Tovrane",
    "Skellig",
    "Nimbrow",
    "Durvosh",
    "Falquen",
    "Hestrim",
    "Jorvall",
    "Lumbric",
]
INTERRUPT_AT = 6
MAX_STEPS = 12


def qa(name: str) -> dict[str, Any]:
    return {
        "question": f"What is the code word of {name}?",
        "answers": [f"The code word of {name} is {CODE_WORD}."],
        "source": f"{name}.txt",
    }


class SigintAt(TrainerCallback):
    """Sends this process a real SIGINT (what Ctrl-C does) when a given step starts."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step + 1 == self.step:
            signal.raise_signal(signal.SIGINT)


def settings(**overrides: Any) -> FinetuneSettings:
    values: dict[str, Any] = {
        "r": 16,
        "alpha": 32,
        "dropout": 0.0,
        "learning_rate": 3e-3,
        "lr_scheduler": "constant",
        "warmup_ratio": 0.0,
        "max_steps": MAX_STEPS,
        "batch_size": 4,
        "max_length": 96,
        "logging_steps": 2,
        "save_steps": 100,
        "eval_steps": INTERRUPT_AT,
        "seed": 0,
        # both cores: the suite runs one test at a time, so nothing else computes beside it
        # (1 thread made this module's run 45 s instead of 30 s)
        "threads": 2,
    }
    return FinetuneSettings.model_validate({**values, **overrides})


@pytest.fixture(scope="module")
def run(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("finetune")
    data = tmp / "train.jsonl"
    data.write_text("".join(json.dumps(qa(n)) + "\n" for n in NAMES))
    dev = tmp / "dev.jsonl"
    dev.write_text("".join(json.dumps(qa(n)) + "\n" for n in NAMES[:4]))
    out = tmp / "adapter"
    common: dict[str, Any] = {"out": out, "settings": settings(), "models_dir": models_dir}
    handler = signal.getsignal(signal.SIGINT)
    first = train(
        model=MODEL, data=data, eval_data=dev, callbacks=[SigintAt(INTERRUPT_AT)], **common
    )
    assert signal.getsignal(signal.SIGINT) is handler  # restored once training stops
    second = train(model=None, data=None, resume=True, **common)
    return {"first": first, "second": second, "out": out, "data": data}


def test_ctrl_c_saves_a_checkpoint_and_resume_continues_from_it(run: dict[str, Any]) -> None:
    first, second = run["first"], run["second"]
    assert first.interrupted and first.global_step == INTERRUPT_AT
    assert first.checkpoint is not None and first.checkpoint.name == f"checkpoint-{INTERRUPT_AT}"
    assert not second.interrupted and second.global_step == MAX_STEPS
    assert second.metrics["resumed_from_step"] == INTERRUPT_AT
    steps = [entry["step"] for entry in second.metrics["train"]]
    assert steps == list(range(2, MAX_STEPS + 1, 2))  # history carried over, no step twice
    assert second.metrics["train"][-1]["loss"] < second.metrics["train"][0]["loss"]
    assert [e["step"] for e in second.metrics["eval"]] == [INTERRUPT_AT, MAX_STEPS]


def test_run_writes_adapter_tokenizer_config_metrics_and_plot(run: dict[str, Any]) -> None:
    out: Path = run["out"]
    for name in (
        "adapter_config.json",
        "adapter_model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "finetune_config.yaml",
        "metrics.json",
    ):
        assert (out / name).is_file(), name
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    config = yaml.safe_load((out / "finetune_config.yaml").read_text())
    assert config["model"] == MODEL and config["model_type"] == "llama"
    assert config["target_modules"] == ["q_proj", "k_proj", "v_proj", "o_proj"]  # auto
    assert config["finetune"]["r"] == 16 and config["finetune"]["learning_rate"] == 3e-3
    assert config["train_examples"] == 20 and config["device"] == "cpu"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train_samples_per_second"] > 0 and metrics["train_runtime_s"] > 0
    assert metrics["peak_rss_bytes"] > 100 * 2**20 and metrics["final_eval_loss"] > 0
    adapter_config = json.loads((out / "adapter_config.json").read_text())
    assert adapter_config["r"] == 16 and adapter_config["peft_type"] == "LORA"


def test_checkpoints_left_behind_need_resume(run: dict[str, Any], models_dir: Path) -> None:
    with pytest.raises(TrainError, match="--resume"):
        train(
            model=MODEL,
            data=run["data"],
            out=run["out"],
            settings=settings(),
            models_dir=models_dir,
        )


def test_resume_needs_a_run(tmp_path: Path, models_dir: Path) -> None:
    with pytest.raises(TrainError, match="nothing to resume"):
        train(
            model=None,
            data=None,
            out=tmp_path,
            settings=settings(),
            models_dir=models_dir,
            resume=True,
        )


def test_loss_only_on_answer_tokens_with_the_service_template(models_dir: Path) -> None:
    from transformers import AutoTokenizer

    from app.llm.models import resolve_model
    from app.llm.prompting import encode_prompt, render_prompt

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(MODEL, models_dir).path)
    messages = [
        {"role": "user", "content": "What is the code word of Zorblax?"},
        {"role": "assistant", "content": "blorptangle"},
    ]
    encoded = encode_example(tokenizer, messages, None, 512)
    assert encoded is not None
    # the prompt is exactly what the service feeds the model at inference
    prompt_ids = encode_prompt(tokenizer, render_prompt(tokenizer, messages[:1]))
    assert encoded.input_ids[: len(prompt_ids)] == prompt_ids
    assert set(encoded.labels[: len(prompt_ids)]) == {IGNORE_INDEX}
    answer = [t for t in encoded.labels if t != IGNORE_INDEX]
    assert str(tokenizer.decode(answer)).startswith("blorptangle<|im_end|>")
    # too long: prompt tokens are cut from the left, the answer stays whole
    short = encode_example(tokenizer, messages, None, len(answer) + 3)
    assert short is not None and [t for t in short.labels if t != IGNORE_INDEX] == answer
    assert encode_example(tokenizer, messages, None, len(answer) - 1) is None


@pytest.fixture(scope="module", params=["transformers", "llamacpp"])
def server(
    request: pytest.FixtureRequest, run: dict[str, Any], models_dir: Path, live_server_factory: Any
) -> Iterator[Any]:
    """The trained adapter served next to its base: on transformers (peft), and on llama.cpp
    (the base from its GGUF, the adapter converted to a GGUF LoRA)."""
    from app.main import create_app
    from app.settings import load_settings

    app_settings = load_settings(
        **{
            "data_dir": run["out"].parent / f"data-{request.param}",
            "models_dir": models_dir,
            "llm.backend": request.param,
            "llm.context_length": 512,
            "llm.adapters": {"codeword-lora": str(run["out"])},
        }
    )
    with live_server_factory(create_app(app_settings)) as live:
        yield live


def test_live_api_answers_with_the_adapter_and_base_does_not(server: Any) -> None:
    with httpx.Client(base_url=server.url, timeout=300) as client:
        models = [m["id"] for m in client.get("/v1/models").json()["data"]]
        assert models == [MODEL, "codeword-lora"]

        def ask(model: str, name: str) -> str:
            body = {
                "model": model,
                "messages": [{"role": "user", "content": qa(name)["question"]}],
                "max_tokens": 16,
                "temperature": 0,
            }
            response = client.post("/v1/chat/completions", json=body)
            assert response.status_code == 200, response.text
            return str(response.json()["choices"][0]["message"]["content"])

        for name in NAMES[4:6]:  # trained items (not the dev ones)
            assert ask("codeword-lora", name) == qa(name)["answers"][0]
            assert CODE_WORD not in ask(MODEL, name).lower()


def test_merge_gives_the_adapted_model(
    run: dict[str, Any], models_dir: Path, tmp_path: Path
) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from app.llm.models import resolve_model
    from finetune.merge import MergeError, merge_adapter

    merged_dir = tmp_path / "merged"
    result = merge_adapter(model=MODEL, adapter=run["out"], out=merged_dir, models_dir=models_dir)
    assert result.dtype == "float32" and (merged_dir / "tokenizer.json").is_file()
    assert not list(merged_dir.glob("adapter_*"))
    ids = torch.tensor([[1, 520, 2443, 314, 253, 1345, 28]])
    merged = AutoModelForCausalLM.from_pretrained(merged_dir)
    base = AutoModelForCausalLM.from_pretrained(resolve_model(MODEL, models_dir).path)
    adapted = PeftModel.from_pretrained(base, str(run["out"]))
    with torch.inference_mode():
        expected = adapted(input_ids=ids).logits
        got = merged(input_ids=ids).logits
    assert torch.allclose(got, expected, atol=1e-3)
    with pytest.raises(MergeError, match="not empty"):
        merge_adapter(model=MODEL, adapter=run["out"], out=merged_dir, models_dir=models_dir)


def test_cli_train_resume_and_merge(
    models_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`kbqa finetune train` (with --config, progress bar on), `--resume --max-steps` to go
    further, then `kbqa finetune merge` reading the base model from the run's config."""
    from typer.testing import CliRunner

    from app.cli import cli

    monkeypatch.setenv("KBQA_MODELS_DIR", str(models_dir))
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(qa(n)) + "\n" for n in NAMES[:8]))
    config = tmp_path / "lora.yaml"
    config.write_text(
        yaml.safe_dump(
            {"r": 4, "alpha": 8, "batch_size": 4, "max_length": 64, "threads": 2, "seed": 0}
        )
    )
    out = tmp_path / "adapter"
    runner = CliRunner()
    common = ["--data-dir", str(tmp_path / "data"), "--config", str(config)]
    first = runner.invoke(
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
            "2",
            *common,
        ],
    )
    assert first.exit_code == 0, first.output
    assert "steps=2" in first.output and "KBQA_LLM__ADAPTERS=adapter=" in first.output
    assert (out / "adapter_model.safetensors").is_file() and (out / "loss.png").is_file()
    saved = yaml.safe_load((out / "finetune_config.yaml").read_text())
    assert saved["finetune"]["r"] == 4 and saved["model"] == MODEL
    more = runner.invoke(
        cli, ["finetune", "train", "--out", str(out), "--resume", "--max-steps", "3", *common]
    )
    assert more.exit_code == 0, more.output
    assert "steps=3" in more.output
    missing = runner.invoke(cli, ["finetune", "train", "--out", str(tmp_path / "x"), *common])
    assert missing.exit_code != 0 and "--data is required" in missing.output
    merged = tmp_path / "merged"
    result = runner.invoke(
        cli, ["finetune", "merge", "--adapter", str(out), "--out", str(merged), *common]
    )
    assert result.exit_code == 0, result.output
    assert f"base={MODEL}" in result.output and (merged / "config.json").is_file()
