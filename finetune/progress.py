"""Trainer callbacks: key=value log lines per logged step, and a rich progress bar."""

from __future__ import annotations

import logging
import time
from typing import Any

from transformers import TrainerCallback

logger = logging.getLogger("finetune.train")


def _samples_per_step(args: Any) -> int:
    return int(args.per_device_train_batch_size * args.gradient_accumulation_steps) * max(
        1, int(getattr(args, "world_size", 1) or 1)
    )


class _Rate:
    """Samples per second over the steps since the last measurement."""

    def __init__(self) -> None:
        self.step = 0
        self.time = time.perf_counter()

    def reset(self, step: int) -> None:
        self.step, self.time = step, time.perf_counter()

    def measure(self, step: int, samples_per_step: int) -> float | None:
        now = time.perf_counter()
        if step <= self.step or now <= self.time:
            return None
        rate = (step - self.step) * samples_per_step / (now - self.time)
        self.step, self.time = step, now
        return rate


class LogCallback(TrainerCallback):
    """One ``event=train_log step=.. loss=.. lr=.. samples_per_s=..`` line per logging step."""

    def __init__(self) -> None:
        self.rate = _Rate()

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.rate.reset(state.global_step)

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any
    ) -> None:
        logs = logs or {}
        if "loss" in logs:
            rate = self.rate.measure(state.global_step, _samples_per_step(args))
            logger.info(
                "event=train_log step=%d/%d epoch=%.2f loss=%.4f lr=%.3g samples_per_s=%s",
                state.global_step,
                state.max_steps,
                state.epoch or 0.0,
                logs["loss"],
                logs.get("learning_rate", 0.0),
                f"{rate:.2f}" if rate is not None else "-",
            )
        elif "eval_loss" in logs:
            logger.info(
                "event=eval_log step=%d eval_loss=%.4f", state.global_step, logs["eval_loss"]
            )


class RichProgressCallback(TrainerCallback):
    """A progress bar of optimizer steps with the last loss, lr and samples/s."""

    def __init__(self, description: str = "train") -> None:
        self.description = description
        self.progress: Any = None
        self.task: Any = None
        self.rate = _Rate()
        self.samples_per_s: float | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[stats]}"),
        )
        self.progress.start()
        self.task = self.progress.add_task(
            self.description, total=state.max_steps, completed=state.global_step, stats=""
        )
        self.rate.reset(state.global_step)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.progress is not None:
            rate = self.rate.measure(state.global_step, _samples_per_step(args))
            if rate is not None:
                # smoothed: the per-step rate jumps with example lengths
                self.samples_per_s = (
                    rate if self.samples_per_s is None else 0.7 * self.samples_per_s + 0.3 * rate
                )
            self.progress.update(self.task, completed=state.global_step)

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any
    ) -> None:
        if self.progress is None or not logs or "loss" not in logs:
            return
        rate = f"{self.samples_per_s:.2f}" if self.samples_per_s is not None else "-"
        lr = logs.get("learning_rate", 0.0)
        stats = f"loss {logs['loss']:.4f}  lr {lr:.2e}  {rate} samples/s"
        self.progress.update(self.task, stats=stats)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.close()

    def close(self) -> None:
        """Stop the bar (also after an error, when on_train_end never came)."""
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
