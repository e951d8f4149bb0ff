"""Merge a LoRA adapter into its base model: a plain model directory (for vLLM and friends)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from app.llm.models import resolve_model

logger = logging.getLogger(__name__)


class MergeError(RuntimeError):
    """An adapter that cannot be merged, with what to do about it."""


@dataclass
class MergeResult:
    out: Path
    base: str
    adapter: Path
    dtype: str
    seconds: float


def merge_adapter(
    *,
    model: str,
    adapter: Path,
    out: Path,
    models_dir: Path,
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto",
) -> MergeResult:
    """Load ``model``, apply the adapter at ``adapter``, fold it into the weights, save to ``out``
    with the tokenizer (and the chat template kbqa used for training, when it had to supply one).
    """
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (adapter / "adapter_config.json").is_file():
        raise MergeError(f"{adapter} has no adapter_config.json: not a LoRA adapter directory")
    if out.exists() and any(out.iterdir()):
        raise MergeError(f"{out} exists and is not empty; choose an empty --out")
    start = time.perf_counter()
    resolved = resolve_model(model, models_dir)
    torch_dtype: Any = "auto" if dtype == "auto" else getattr(torch, dtype)
    base = AutoModelForCausalLM.from_pretrained(resolved.path, dtype=torch_dtype)
    peft_model = PeftModel.from_pretrained(base, str(adapter))
    merged = peft_model.merge_and_unload()
    out.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(str(out))
    # the adapter dir holds the tokenizer training used (with any template kbqa supplied)
    source = adapter if (adapter / "tokenizer_config.json").is_file() else resolved.path
    tokenizer = AutoTokenizer.from_pretrained(str(source))
    if resolved.chat_template and not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = resolved.chat_template
    tokenizer.save_pretrained(str(out))
    seconds = time.perf_counter() - start
    logger.info(
        "event=adapter_merged model=%s adapter=%s out=%s dtype=%s seconds=%.1f",
        model,
        adapter,
        out,
        merged.dtype,
        seconds,
    )
    return MergeResult(out, model, adapter, str(merged.dtype).removeprefix("torch."), seconds)
