"""LoRA SFT training benchmark: `kbqa finetune train` vs a minimal plain peft + Trainer run.

Both arms train the same model on the same examples (the first N questions of
cmrc2018-trial/qa.jsonl, built with `kbqa finetune data`) with the same hyperparameters, each
in its own process, in the same run. Printed per arm: train samples/s (the Trainer's own figure)
and peak RSS of the process; then the ratio kbqa/baseline (target >= 0.9).

The baseline is what a user would write by hand: `apply_chat_template` over the whole
conversation, prompt tokens masked by the length of the rendered prompt, peft `get_peft_model`,
`DataCollatorForSeq2Seq`, `Trainer.train()`.

Usage: .venv/bin/python bench/finetune.py [DATA_DIR] [--examples 200] [--max-steps 20]
       [--model smollm2-135m-instruct] [--batch-size 4] [--max-length 256] [--threads N]
       [--rounds N]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# run as a script, bench/ comes first on sys.path and this file would shadow the package
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
KBQA = [sys.executable, "-c", "from app.cli import main; main()"]


def hyperparameters(args: argparse.Namespace) -> dict[str, Any]:
    """The one set of settings both arms use (a kbqa finetune config file)."""
    values: dict[str, Any] = {
        "r": 8,
        "alpha": 16,
        "dropout": 0.05,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
        "learning_rate": 2e-4,
        "lr_scheduler": "cosine",
        "warmup_ratio": 0.1,
        "max_steps": args.max_steps,
        "batch_size": args.batch_size,
        "gradient_accumulation": 1,
        "max_length": args.max_length,
        "seed": 42,
        "logging_steps": 5,
        "save_steps": 10_000,
        "device": "cpu",
        "precision": "fp32",
    }
    if args.threads:
        values["threads"] = args.threads
    return values


# ------------------------------------------------------------------------------ baseline


def baseline(model_dir: str, data: str, config_path: str, out: str) -> None:
    """Plain peft + transformers Trainer, the way the peft docs show it."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainingArguments,
    )

    hp = json.loads(Path(config_path).read_text())
    if hp.get("threads"):
        torch.set_num_threads(hp["threads"])
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rows = []
    for line in Path(data).read_text(encoding="utf-8").splitlines():
        messages = json.loads(line)["messages"]
        prompt = tokenizer.apply_chat_template(
            messages[:-1], tokenize=False, add_generation_prompt=True
        )
        full = tokenizer.apply_chat_template(messages, tokenize=False)
        ids = tokenizer(full, add_special_tokens=False)["input_ids"]
        n_prompt = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        labels = [-100] * n_prompt + ids[n_prompt:]
        rows.append({"input_ids": ids[-hp["max_length"] :], "labels": labels[-hp["max_length"] :]})
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model = get_peft_model(
        base,
        LoraConfig(
            task_type="CAUSAL_LM",
            r=hp["r"],
            lora_alpha=hp["alpha"],
            lora_dropout=hp["dropout"],
            target_modules=hp["target_modules"],
        ),
    )
    trainer = Trainer(
        model=model,
        args=TrainingArguments(
            output_dir=out,
            per_device_train_batch_size=hp["batch_size"],
            gradient_accumulation_steps=hp["gradient_accumulation"],
            learning_rate=hp["learning_rate"],
            lr_scheduler_type=hp["lr_scheduler"],
            warmup_steps=hp["warmup_ratio"],
            max_steps=hp["max_steps"],
            logging_steps=hp["logging_steps"],
            save_strategy="no",
            seed=hp["seed"],
            use_cpu=True,
            report_to=[],
            disable_tqdm=True,
        ),
        train_dataset=rows,
        data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True),
    )
    metrics = trainer.train().metrics
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"samples_per_s": metrics["train_samples_per_second"], "peak_rss": peak}))


# ------------------------------------------------------------------------------ driver


def fit_examples(train_file: Path, model_dir: str, max_length: int) -> int:
    """Keep the examples that fit whole into max_length, so both arms train on identical
    sequences (kbqa would skip the others, the baseline would truncate them)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    lines = train_file.read_text(encoding="utf-8").splitlines()
    kept = []
    for line in lines:
        full = tokenizer.apply_chat_template(json.loads(line)["messages"], tokenize=False)
        if len(tokenizer(full, add_special_tokens=False)["input_ids"]) <= max_length:
            kept.append(line)
    train_file.write_text("\n".join(kept) + "\n", encoding="utf-8")
    return len(kept)


def run(cmd: list[str]) -> str:
    result = subprocess.run(cmd, env=ENV, capture_output=True, text=True, cwd=ROOT)
    if result.returncode != 0:
        sys.stderr.write(result.stdout + result.stderr)
        raise SystemExit(f"failed: {' '.join(cmd[:6])}...")
    return result.stdout


def run_kbqa(
    args: argparse.Namespace, train_file: Path, config: Path, out: Path
) -> dict[str, float]:
    started = time.perf_counter()
    cmd = ["finetune", "train", "--model", args.model, "--data", str(train_file)]
    run([*KBQA, *cmd, "--out", str(out), "--config", str(config), "--no-progress"])
    metrics = json.loads((out / "metrics.json").read_text())
    return {
        "samples_per_s": metrics["train_samples_per_second"],
        "peak_rss": metrics["peak_rss_bytes"],
        "wall_s": time.perf_counter() - started,
    }


def run_baseline(model_dir: Path, train_file: Path, config: Path, out: Path) -> dict[str, float]:
    started = time.perf_counter()
    cmd = [sys.executable, __file__, "--baseline-run", str(model_dir), str(train_file)]
    line = run([*cmd, str(config), str(out)])
    result = json.loads(line.strip().splitlines()[-1])
    return {**result, "wall_s": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("data", nargs="?", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--examples", type=int, default=200)
    parser.add_argument("--max-steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--threads", type=int, default=0, help="0 = torch's default")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument(
        "--rounds", type=int, default=1, help="repeat both arms (order alternates), keep the best"
    )
    parser.add_argument("--baseline-run", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline_run:
        baseline(*args.baseline_run)
        return

    from app.llm.models import resolve_model
    from app.settings import load_settings

    settings = load_settings()
    model_dir = resolve_model(args.model, settings.resolved_models_dir).path  # convert once
    work = Path(tempfile.mkdtemp(prefix="kbqa-bench-finetune-"))
    qa_lines = (Path(args.data) / "cmrc2018-trial" / "qa.jsonl").read_text().splitlines()
    subset = work / "qa.jsonl"
    subset.write_text("\n".join(qa_lines[: args.examples]) + "\n", encoding="utf-8")
    train_file = work / "train.jsonl"
    run([*KBQA, "finetune", "data", str(subset), "--out", str(train_file)])
    kept = fit_examples(train_file, str(model_dir), args.max_length)
    config = work / "lora.json"
    config.write_text(json.dumps(hyperparameters(args)))
    print(
        f"model={args.model} examples={kept}/{args.examples} (fitting max_length) "
        f"max_steps={args.max_steps} rounds={args.rounds} "
        f"batch={args.batch_size} max_length={args.max_length} threads={args.threads or 'default'}"
    )

    kbqa_runs: list[dict[str, float]] = []
    base_runs: list[dict[str, float]] = []
    for round_ in range(args.rounds):
        arms = [("kbqa", kbqa_runs), ("base", base_runs)]
        for name, results in arms if round_ % 2 == 0 else arms[::-1]:
            if name == "kbqa":
                results.append(run_kbqa(args, train_file, config, work / f"kbqa-run-{round_}"))
            else:
                results.append(run_baseline(model_dir, train_file, config, work / f"base-{round_}"))
    kbqa = max(kbqa_runs, key=lambda r: r["samples_per_s"])
    base = max(base_runs, key=lambda r: r["samples_per_s"])
    mb = 2**20
    print(
        f"kbqa finetune train: samples_per_s={kbqa['samples_per_s']:.3f} "
        f"peak_rss_mb={kbqa['peak_rss'] / mb:.0f} wall_s={kbqa['wall_s']:.0f} "
        f"all_samples_per_s={[round(r['samples_per_s'], 3) for r in kbqa_runs]}"
    )
    print(
        f"plain peft+Trainer:  samples_per_s={base['samples_per_s']:.3f} "
        f"peak_rss_mb={base['peak_rss'] / mb:.0f} wall_s={base['wall_s']:.0f} "
        f"all_samples_per_s={[round(r['samples_per_s'], 3) for r in base_runs]}"
    )
    print(
        f"ratio kbqa/baseline samples_per_s={kbqa['samples_per_s'] / base['samples_per_s']:.3f} "
        f"(target >= 0.9) peak_rss={kbqa['peak_rss'] / base['peak_rss']:.3f}"
    )


if __name__ == "__main__":
    main()
