"""LoRA target modules per transformers ``model_type`` (the finetune module imports this).

Names are the Linear modules of each architecture's attention and MLP. A ChatGLM3 checkpoint
converted by ``kbqa models convert-chatglm3`` is ``glm`` (``GlmForCausalLM``): q/k/v/o plus
the fused SwiGLU ``gate_up_proj`` and ``down_proj``. The original remote-code ChatGLM layout
(``chatglm``) is listed for adapters trained with THUDM's finetune demo.
"""

from __future__ import annotations

_LLAMA_LIKE = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
_FUSED_MLP = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_up_proj", "down_proj"]

LORA_TARGETS: dict[str, list[str]] = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "mixtral": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "gemma2": _LLAMA_LIKE,
    "gemma3": _LLAMA_LIKE,
    "gemma3_text": _LLAMA_LIKE,
    "glm": _FUSED_MLP,  # converted ChatGLM3 and GLM-4 (HF format)
    "glm4": _FUSED_MLP,
    "phi3": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
    "chatglm": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
}

# Attention-only subsets: fewer trainable parameters, the usual choice on small GPUs.
ATTENTION_TARGETS: dict[str, list[str]] = {
    name: [m for m in mods if m in {"q_proj", "k_proj", "v_proj", "o_proj", "qkv_proj"}] or mods[:2]
    for name, mods in LORA_TARGETS.items()
}


def lora_targets(model_type: str, *, attention_only: bool = False) -> list[str] | str:
    """Target module names for ``model_type``; ``"all-linear"`` (peft) for unknown types."""
    table = ATTENTION_TARGETS if attention_only else LORA_TARGETS
    return list(table[model_type]) if model_type in table else "all-linear"
