"""LoRA SFT on a causal LM with the transformers Trainer and peft.

Phases: resolve the config -> load the tokenizer and encode the examples with the service's
chat template (loss on answer tokens only) -> load the model and wrap it in LoRA -> train
(checkpoints every N steps, eval loss, Ctrl-C saves a resumable checkpoint) -> write the
adapter, tokenizer, resolved config, metrics.json and loss.png.
"""

from __future__ import annotations

import json
import logging
import math
import resource
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from app.llm.device import pick_device, pick_training_precision
from app.llm.models import ResolvedModel, resolve_model
from app.llm.prompting import render_prompt
from app.settings.finetune import FinetuneSettings
from finetune.config import ConfigError, auto_target_modules
from finetune.data import read_examples

logger = logging.getLogger(__name__)

CONFIG_FILE = "finetune_config.yaml"
METRICS_FILE = "metrics.json"
PLOT_FILE = "loss.png"
CHECKPOINTS = "checkpoints"
IGNORE_INDEX = -100


class TrainError(RuntimeError):
    """A training run that cannot start or continue, with what to do about it."""


@dataclass
class EncodedExample:
    input_ids: list[int]
    labels: list[int]


@dataclass
class TrainResult:
    out: Path
    global_step: int
    interrupted: bool
    checkpoint: Path | None
    metrics: dict[str, Any] = field(default_factory=dict)
    skipped: int = 0


# ----------------------------------------------------------------------------- encoding


def _segments(
    tokenizer: Any, messages: list[dict[str, str]], chat_template: str | None
) -> list[tuple[str, bool]]:
    """Split a conversation's rendered text into (text, is_answer) pieces.

    Each prompt piece is exactly what the service renders before that answer
    (``add_generation_prompt=True``); each answer piece is what the template adds for the
    assistant turn (its content and end-of-turn marker).
    """
    pieces: list[tuple[str, bool]] = []
    done = ""
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = render_prompt(tokenizer, messages[:index], chat_template)
        full = render_prompt(
            tokenizer, messages[: index + 1], chat_template, add_generation_prompt=False
        )
        if not prompt.startswith(done) or not full.startswith(prompt):
            raise TrainError(
                "the chat template does not render conversations as growing prefixes "
                "(prompt + answer); set finetune via a simpler template (llm.prompt_template)"
            )
        pieces.append((prompt[len(done) :], False))
        pieces.append((full[len(prompt) :], True))
        done = full
    return pieces


def encode_example(
    tokenizer: Any,
    messages: list[dict[str, str]],
    chat_template: str | None,
    max_length: int,
    system_prompt: str | None = None,
) -> EncodedExample | None:
    """Token ids and labels (prompt tokens masked with -100); None when the answer alone
    does not fit in ``max_length``."""
    if system_prompt and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": system_prompt}, *messages]
    input_ids: list[int] = []
    labels: list[int] = []
    pieces = _segments(tokenizer, messages, chat_template)
    eos = tokenizer.eos_token_id
    last_answer = 0
    for number, (text, is_answer) in enumerate(pieces):
        ids = list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []
        if is_answer and number == len(pieces) - 1 and eos is not None and eos not in ids:
            ids.append(eos)  # teach the model to stop where the template has no end marker
        if is_answer:
            last_answer = len(ids)
        input_ids.extend(ids)
        labels.extend(ids if is_answer else [IGNORE_INDEX] * len(ids))
    if len(input_ids) > max_length:
        if last_answer >= max_length:
            return None
        # keep the answer: drop prompt tokens from the left
        input_ids, labels = input_ids[-max_length:], labels[-max_length:]
    if all(label == IGNORE_INDEX for label in labels):
        return None
    return EncodedExample(input_ids, labels)


def encode_file(
    path: Path,
    tokenizer: Any,
    chat_template: str | None,
    max_length: int,
    system_prompt: str | None,
) -> tuple[list[dict[str, list[int]]], int]:
    rows: list[dict[str, list[int]]] = []
    skipped = 0
    for example in read_examples(path):
        encoded = encode_example(
            tokenizer, example.messages, chat_template, max_length, system_prompt
        )
        if encoded is None:
            skipped += 1
            continue
        rows.append({"input_ids": encoded.input_ids, "labels": encoded.labels})
    if not rows:
        raise TrainError(f"{path}: no example fits in max_length={max_length}")
    return rows, skipped


class PadCollator:
    """Right-pads a batch; labels padded with -100."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, rows: Sequence[dict[str, list[int]]]) -> dict[str, Any]:
        import torch

        width = max(len(r["input_ids"]) for r in rows)
        ids, labels, mask = [], [], []
        for row in rows:
            pad = width - len(row["input_ids"])
            ids.append(row["input_ids"] + [self.pad_id] * pad)
            labels.append(row["labels"] + [IGNORE_INDEX] * pad)
            mask.append([1] * len(row["input_ids"]) + [0] * pad)
        return {
            "input_ids": torch.tensor(ids, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
            "attention_mask": torch.tensor(mask, dtype=torch.long),
        }


# ----------------------------------------------------------------------------- runtime


def peak_memory() -> dict[str, int | None]:
    """Peak resident memory of this process (bytes) and, on CUDA, peak allocated memory."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss_bytes = rss if sys.platform == "darwin" else rss * 1024
    cuda: int | None = None
    try:
        import torch

        if torch.cuda.is_available():
            cuda = int(torch.cuda.max_memory_allocated())
    except ImportError:  # pragma: no cover
        pass
    return {"peak_rss_bytes": int(rss_bytes), "peak_cuda_bytes": cuda}


class _Interrupt:
    """First Ctrl-C: finish the step, save a checkpoint, stop. Second: stop at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> _Interrupt:
        import threading

        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        logger.warning("event=interrupt_requested action=save_checkpoint_and_stop")

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _interrupt_callback(interrupt: _Interrupt) -> Any:
    from transformers import TrainerCallback

    class InterruptCallback(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            if interrupt.requested:
                control.should_save = True
                control.should_training_stop = True
            return control

    return InterruptCallback()


# ----------------------------------------------------------------------------- outputs


def split_log_history(history: list[dict[str, Any]]) -> tuple[list[dict], list[dict]]:
    train = [
        {k: h[k] for k in ("step", "epoch", "loss", "learning_rate", "grad_norm") if k in h}
        for h in history
        if "loss" in h
    ]
    evals = [
        {k: h[k] for k in ("step", "epoch", "eval_loss") if k in h}
        for h in history
        if "eval_loss" in h
    ]
    return train, evals


def plot_loss(train: list[dict], evals: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot([t["step"] for t in train], [t["loss"] for t in train], label="train loss")
    if evals:
        ax.plot(
            [e["step"] for e in evals], [e["eval_loss"] for e in evals], "o-", label="eval loss"
        )
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("LoRA SFT loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def read_saved_config(out: Path) -> dict[str, Any]:
    path = out / CONFIG_FILE
    if not path.is_file():
        raise TrainError(f"{out} has no {CONFIG_FILE}: nothing to resume")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return dict(data)


def last_checkpoint(out: Path) -> Path | None:
    from transformers.trainer_utils import get_last_checkpoint

    folder = out / CHECKPOINTS
    if not folder.is_dir():
        return None
    found = get_last_checkpoint(str(folder))
    return Path(found) if found else None


# ----------------------------------------------------------------------------- training


def train(
    *,
    model: str | None,
    data: Path | None,
    out: Path,
    settings: FinetuneSettings,
    models_dir: Path,
    eval_data: Path | None = None,
    resume: bool = False,
    prompt_template: str | None = None,
    callbacks: Sequence[Any] = (),
    overrides: dict[str, Any] | None = None,
) -> TrainResult:
    """Run (or, with ``resume``, continue) a LoRA SFT run writing into ``out``.

    With ``resume`` the run's saved config is used; ``overrides`` (e.g. a larger
    ``max_steps``) change it, and the saved config file is updated with them.
    """
    # --- phase: config
    if resume:
        saved = read_saved_config(out)
        checkpoint = last_checkpoint(out)
        if checkpoint is None:
            raise TrainError(f"no checkpoint under {out / CHECKPOINTS} to resume from")
        model = model or saved["model"]
        data = data or Path(saved["data"])
        if eval_data is None and saved.get("eval"):
            eval_data = Path(saved["eval"])
        settings = FinetuneSettings.model_validate({**saved["finetune"], **(overrides or {})})
        prompt_template = prompt_template or saved.get("chat_template_override")
    else:
        checkpoint = None
        if last_checkpoint(out) is not None:
            raise TrainError(
                f"{out} holds checkpoints of an earlier run: pass --resume to continue it, "
                "or choose another --out"
            )
    if model is None or data is None:
        raise TrainError("--model and --data are required (except with --resume)")
    resolved = resolve_model(model, models_dir)
    import torch

    previous_threads = torch.get_num_threads()
    if settings.threads:
        torch.set_num_threads(settings.threads)
    try:
        return _run(
            model=model,
            resolved=resolved,
            data=data,
            out=out,
            settings=settings,
            eval_data=eval_data,
            resume=resume,
            checkpoint=checkpoint,
            chat_template=prompt_template or resolved.chat_template,
            callbacks=callbacks,
            overrides=overrides,
        )
    finally:  # torch's thread count is process-wide: give it back
        torch.set_num_threads(previous_threads)


def _run(
    *,
    model: str,
    resolved: ResolvedModel,
    data: Path,
    out: Path,
    settings: FinetuneSettings,
    eval_data: Path | None,
    resume: bool,
    checkpoint: Path | None,
    chat_template: str | None,
    callbacks: Sequence[Any],
    overrides: dict[str, Any] | None,
) -> TrainResult:
    """The phases after the config: data, model, resolved config, train, outputs."""
    from transformers import set_seed

    set_seed(settings.seed)
    device = pick_device(settings.device)
    precision = pick_training_precision(settings.precision, device)
    if settings.quantization == "4bit" and device != "cuda":
        raise ConfigError("quantization=4bit (QLoRA) needs CUDA")
    grad_ckpt = (
        settings.gradient_checkpointing
        if settings.gradient_checkpointing is not None
        else device == "cuda"
    )
    tokenizer, train_rows, eval_rows, skipped = _encode_data(
        resolved, data, eval_data, chat_template, settings
    )
    peft_model, targets, model_type = _lora_model(resolved, settings, precision, grad_ckpt)
    trainable, total = peft_model.get_nb_trainable_parameters()
    # the resolved config goes into the output dir before training: resume reads it
    out.mkdir(parents=True, exist_ok=True)
    if not resume or overrides:
        config = {
            "model": model,
            "model_path": str(resolved.path),
            "model_type": model_type,
            "data": str(Path(data).resolve()),
            "eval": str(Path(eval_data).resolve()) if eval_data else None,
            "chat_template_override": chat_template,
            "device": device,
            "precision": precision,
            "gradient_checkpointing": grad_ckpt,
            "target_modules": targets,
            "train_examples": len(train_rows),
            "eval_examples": len(eval_rows) if eval_rows else 0,
            "skipped_examples": skipped,
            "trainable_params": int(trainable),
            "total_params": int(total),
            "finetune": settings.model_dump(mode="json"),
            **({"resumed_with": dict(overrides or {})} if resume else {}),
        }
        (out / CONFIG_FILE).write_text(
            yaml.safe_dump(config, allow_unicode=True, sort_keys=False), encoding="utf-8"
        )
    logger.info(
        "event=finetune_start model=%s device=%s precision=%s examples=%d trainable=%d "
        "targets=%s resume_from=%s",
        model,
        device,
        precision,
        len(train_rows),
        trainable,
        targets,
        checkpoint or "-",
    )
    run = _Training(out, settings, device, precision, grad_ckpt, train_rows, eval_rows, skipped)
    return run.train(peft_model, tokenizer, resolved, checkpoint, callbacks)


def _encode_data(
    resolved: ResolvedModel,
    data: Path,
    eval_data: Path | None,
    chat_template: str | None,
    settings: FinetuneSettings,
) -> tuple[Any, list[dict[str, list[int]]], list[dict[str, list[int]]] | None, int]:
    """The tokenizer, the encoded train (and eval) examples, and how many were skipped."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolved.path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    train_rows, skipped = encode_file(
        data, tokenizer, chat_template, settings.max_length, settings.system_prompt
    )
    eval_rows = None
    if eval_data is not None:
        eval_rows, _ = encode_file(
            eval_data, tokenizer, chat_template, settings.max_length, settings.system_prompt
        )
    if skipped:
        logger.warning(
            "event=examples_skipped count=%d reason=answer_longer_than_max_length", skipped
        )
    return tokenizer, train_rows, eval_rows, skipped


def _lora_model(
    resolved: ResolvedModel, settings: FinetuneSettings, precision: str, grad_ckpt: bool
) -> tuple[Any, list[str] | str, str]:
    """The base model (4-bit on CUDA for QLoRA) wrapped in LoRA, the target modules and the
    base model's type."""
    import torch
    from transformers import AutoModelForCausalLM

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    load_kwargs: dict[str, Any] = {"dtype": dtype}
    if settings.quantization == "4bit":
        try:
            import bitsandbytes  # noqa: F401
            from transformers import BitsAndBytesConfig
        except ImportError as exc:
            raise ConfigError(
                "quantization=4bit needs bitsandbytes: pip install 'kbqa[cuda]'"
            ) from exc
        load_kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        )
        load_kwargs["device_map"] = {"": 0}
    base = AutoModelForCausalLM.from_pretrained(resolved.path, **load_kwargs)
    base.config.use_cache = False
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if settings.quantization == "4bit":
        base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=grad_ckpt)
    elif grad_ckpt:
        base.enable_input_require_grads()
    targets = auto_target_modules(base.config.model_type, settings.target_modules)
    lora = LoraConfig(
        task_type="CAUSAL_LM",
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=targets,
    )
    return get_peft_model(base, lora), targets, str(base.config.model_type)


@dataclass
class _Training:
    """The Trainer run of one LoRA model and what it writes when it ends."""

    out: Path
    settings: FinetuneSettings
    device: str
    precision: str
    grad_ckpt: bool
    train_rows: list[dict[str, list[int]]]
    eval_rows: list[dict[str, list[int]]] | None
    skipped: int

    def arguments(self) -> Any:
        from transformers import TrainingArguments

        s = self.settings
        eval_steps = s.eval_steps or s.save_steps
        return TrainingArguments(
            output_dir=str(self.out / CHECKPOINTS),
            per_device_train_batch_size=s.batch_size,
            per_device_eval_batch_size=s.batch_size,
            gradient_accumulation_steps=s.gradient_accumulation,
            learning_rate=s.learning_rate,
            lr_scheduler_type=s.lr_scheduler,
            warmup_steps=s.warmup_ratio,
            weight_decay=s.weight_decay,
            max_grad_norm=s.max_grad_norm,
            num_train_epochs=s.epochs,
            max_steps=s.max_steps,
            logging_steps=s.logging_steps,
            save_strategy="steps",
            save_steps=s.save_steps,
            save_total_limit=s.save_total_limit,
            eval_strategy="steps" if self.eval_rows else "no",
            eval_steps=eval_steps if self.eval_rows else None,
            seed=s.seed,
            bf16=self.precision == "bf16",
            fp16=self.precision == "fp16",
            activation_checkpointing=self.grad_ckpt,
            activation_checkpointing_kwargs={"use_reentrant": False} if self.grad_ckpt else None,
            use_cpu=self.device == "cpu",
            report_to=[],
            disable_tqdm=True,
            remove_unused_columns=False,
            dataloader_num_workers=0,
        )

    def train(
        self,
        peft_model: Any,
        tokenizer: Any,
        resolved: ResolvedModel,
        checkpoint: Path | None,
        callbacks: Sequence[Any],
    ) -> TrainResult:
        from transformers import PrinterCallback, Trainer

        from finetune.progress import LogCallback

        interrupt = _Interrupt()
        trainer = Trainer(
            model=peft_model,
            args=self.arguments(),
            train_dataset=self.train_rows,
            eval_dataset=self.eval_rows,
            data_collator=PadCollator(int(tokenizer.pad_token_id)),
            processing_class=tokenizer,
            callbacks=[_interrupt_callback(interrupt), LogCallback(), *callbacks],
        )
        trainer.remove_callback(PrinterCallback)
        start = time.perf_counter()
        with interrupt:
            output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        step = trainer.state.global_step
        if interrupt.requested:
            saved_ckpt = last_checkpoint(self.out)
            logger.warning("event=finetune_interrupted step=%d checkpoint=%s", step, saved_ckpt)
            return TrainResult(self.out, step, True, saved_ckpt, skipped=self.skipped)
        peft_model.save_pretrained(str(self.out))
        if resolved.chat_template and not getattr(tokenizer, "chat_template", None):
            tokenizer.chat_template = resolved.chat_template
        tokenizer.save_pretrained(str(self.out))
        metrics = self.metrics(trainer, output, time.perf_counter() - start, checkpoint)
        (self.out / METRICS_FILE).write_text(json.dumps(metrics, indent=2), encoding="utf-8")
        plot_loss(metrics["train"], metrics["eval"], self.out / PLOT_FILE)
        logger.info(
            "event=finetune_done out=%s step=%d samples_per_s=%s peak_rss_mb=%.0f",
            self.out,
            step,
            metrics["train_samples_per_second"],
            (metrics["peak_rss_bytes"] or 0) / 2**20,
        )
        return TrainResult(self.out, step, False, last_checkpoint(self.out), metrics, self.skipped)

    def metrics(
        self, trainer: Any, output: Any, wall_s: float, checkpoint: Path | None
    ) -> dict[str, Any]:
        """metrics.json: the run's figures, the loss history and the final eval loss."""
        step = trainer.state.global_step
        _, evals_so_far = split_log_history(trainer.state.log_history)
        if evals_so_far and evals_so_far[-1].get("step") == step:
            final_eval = {"eval_loss": evals_so_far[-1]["eval_loss"]}  # evaluated at this step
        else:
            final_eval = trainer.evaluate() if self.eval_rows else {}
        train_log, eval_log = split_log_history(trainer.state.log_history)
        return {
            "global_step": step,
            "epochs": trainer.state.epoch,
            "train_runtime_s": output.metrics.get("train_runtime"),
            "train_samples_per_second": output.metrics.get("train_samples_per_second"),
            "train_steps_per_second": output.metrics.get("train_steps_per_second"),
            "train_loss_mean": output.metrics.get("train_loss"),
            "final_eval_loss": final_eval.get("eval_loss"),
            "wall_s": round(wall_s, 3),
            "resumed_from_step": _checkpoint_step(checkpoint),
            "train_examples": len(self.train_rows),
            "skipped_examples": self.skipped,
            "device": self.device,
            "precision": self.precision,
            **peak_memory(),
            "train": train_log,
            "eval": eval_log,
        }


def _checkpoint_step(checkpoint: Path | None) -> int | None:
    if checkpoint is None:
        return None
    try:
        return int(checkpoint.name.rsplit("-", 1)[-1])
    except ValueError:
        return None


def steps_per_epoch(examples: int, settings: FinetuneSettings) -> int:
    return max(1, math.ceil(examples / (settings.batch_size * settings.gradient_accumulation)))
