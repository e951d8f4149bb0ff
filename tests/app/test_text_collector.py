"""The streaming text collector with the packaged SmolLM2 tokenizer (byte-level BPE, where a
Chinese character can take several tokens)."""

from __future__ import annotations

from pathlib import Path

import torch

from app.llm.models import resolve_model
from app.llm.transformers_backend import _TextCollector


def test_answer_cut_inside_a_character_has_no_replacement_mark(models_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(
        resolve_model("smollm2-135m-instruct", models_dir).path
    )
    ids = tokenizer("大熊猫吃竹子", add_special_tokens=False)["input_ids"]
    cut = next(
        n for n in range(1, len(ids)) if tokenizer.decode(ids[:n]).endswith("\ufffd")
    )  # a prefix that ends inside a character
    pieces: list[str] = []
    collector = _TextCollector(tokenizer, [], pieces.append)
    collector.put(torch.tensor([0]))  # generate() hands over the prompt first
    for token in ids[:cut]:
        collector.put(torch.tensor([token]))
    collector.end()
    text = "".join(pieces)
    assert "\ufffd" not in text
    assert "大熊猫吃竹子".startswith(text)

    whole: list[str] = []
    collector = _TextCollector(tokenizer, [], whole.append)
    collector.put(torch.tensor([0]))
    for token in ids:
        collector.put(torch.tensor([token]))
    collector.end()
    assert "".join(whole) == "大熊猫吃竹子"
