"""Chat formatting shared by serving and finetuning, so an adapter trains on what it will see."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from app.llm.base import ChatMessage


def as_dicts(messages: Sequence[ChatMessage | dict[str, Any]]) -> list[dict[str, str]]:
    out = []
    for message in messages:
        if isinstance(message, ChatMessage):
            out.append({"role": message.role, "content": message.content})
        else:
            out.append({"role": str(message["role"]), "content": str(message["content"])})
    return out


def render_prompt(
    tokenizer: Any,
    messages: Sequence[ChatMessage | dict[str, Any]],
    chat_template: str | None = None,
    *,
    add_generation_prompt: bool = True,
) -> str:
    """The prompt text for ``messages``: the override template, else the tokenizer's own.

    A model with neither gets a clear error that names the setting to use.
    """
    template = chat_template or getattr(tokenizer, "chat_template", None)
    if not template:
        raise ValueError(
            "this model has no chat template: set llm.prompt_template (KBQA_LLM__PROMPT_TEMPLATE)"
            " to a Jinja template over `messages`"
        )
    text = tokenizer.apply_chat_template(
        as_dicts(messages),
        chat_template=template,
        tokenize=False,
        add_generation_prompt=add_generation_prompt,
    )
    return str(text)


def encode_prompt(tokenizer: Any, prompt: str) -> list[int]:
    """Token ids of a rendered prompt (the template already placed any BOS token)."""
    return list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
