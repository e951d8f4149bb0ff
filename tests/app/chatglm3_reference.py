"""Test helpers: a synthetic ChatGLM3 checkpoint and independent references.

Written from ChatGLM3's published architecture and tokenizer logic (MODELS.md; the public
``modeling_chatglm.py`` / ``tokenization_chatglm.py``), not from the converter:

- :func:`train_sentencepiece` trains a tiny SentencePiece BPE model with ChatGLM3's
  normalization choices (byte fallback, no whitespace normalization, dummy prefix).
- :func:`write_checkpoint` writes random weights in ChatGLM3's exact tensor names and config
  fields, sharded with an index file, as ``pytorch_model-*.bin`` or safetensors.
- :func:`reference_logits` is ChatGLM3's forward pass in plain torch, on the original
  (fused, unconverted) tensors.
- :func:`reference_chat_ids` is ChatGLM3's chat prompt built the way its tokenizer does:
  ``[gMASK] sop`` then per message role id + sp.encode(metadata + "\\n") + sp.encode(text).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

ORIGINAL_SPECIALS = [
    "[MASK]",
    "[gMASK]",
    "[sMASK]",
    "sop",
    "eop",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|observation|>",
]

CHINESE = [
    "知识库问答系统根据上传的文档回答问题，并给出答案所依据的段落。",
    "等级保护制度要求网络运营者按照网络安全等级保护制度的要求履行安全保护义务。",
    "第三级信息系统应当每年至少进行一次等级测评。",
    "用户可以通过接口上传文件，系统会自动切分、向量化并写入检索索引。",
    "如果问题在知识库中没有答案，系统应当明确说明无法回答。",
    "模型在本地运行，支持显卡加速，也可以在苹果电脑上使用。",
    "北京是中华人民共和国的首都，也是全国的政治和文化中心。",
    "今天天气很好，我们去公园散步吧。",
    "请问这份文件的主要内容是什么？",
    "数据安全法和个人信息保护法共同构成了数据保护的法律框架。",
]
ENGLISH = [
    "The knowledge base answers questions with the passages they came from.",
    "Upload a document, wait for the job to finish, then ask a question.",
    "Retrieval augmented generation compares well with finetuning on small data.",
    "The quick brown fox jumps over the lazy dog.",
    "Models run locally on CUDA, Apple silicon or a plain CPU.",
    "    def answer(question):  return retriever.search(question)",
    "Numbers like 2024, 3.14 and 42 appear in text too.",
]


def train_sentencepiece(workdir: Path, vocab_size: int = 700) -> Path:
    """A tiny BPE tokenizer.model with ChatGLM3's settings; returns its path."""
    import sentencepiece as spm

    workdir.mkdir(parents=True, exist_ok=True)
    corpus = workdir / "corpus.txt"
    lines = []
    for i in range(30):
        lines.append(CHINESE[i % len(CHINESE)] + CHINESE[(i * 3 + 1) % len(CHINESE)])
        lines.append(ENGLISH[i % len(ENGLISH)] + " " + ENGLISH[(i * 2 + 1) % len(ENGLISH)])
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    prefix = workdir / "tokenizer"
    spm.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(prefix),
        model_type="bpe",
        vocab_size=vocab_size,
        character_coverage=0.995,  # rare characters fall back to bytes, as in ChatGLM3
        byte_fallback=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=True,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        hard_vocab_limit=False,
        num_threads=1,
        minloglevel=2,
    )
    return prefix.with_suffix(".model")


def chatglm3_config(sp_vocab: int, *, rope_ratio: float | None = None) -> dict[str, Any]:
    """config.json with ChatGLM3-6B's fields at tiny dimensions."""
    padded = ((sp_vocab + len(ORIGINAL_SPECIALS) + 63) // 64) * 64
    config: dict[str, Any] = {
        "_name_or_path": "THUDM/chatglm3-6b",
        "model_type": "chatglm",
        "architectures": ["ChatGLMModel"],
        "auto_map": {
            "AutoConfig": "configuration_chatglm.ChatGLMConfig",
            "AutoModel": "modeling_chatglm.ChatGLMForConditionalGeneration",
            "AutoModelForCausalLM": "modeling_chatglm.ChatGLMForConditionalGeneration",
        },
        "add_bias_linear": False,
        "add_qkv_bias": True,
        "apply_query_key_layer_scaling": True,
        "apply_residual_connection_post_layernorm": False,
        "attention_dropout": 0.0,
        "attention_softmax_in_fp32": True,
        "bias_dropout_fusion": True,
        "ffn_hidden_size": 96,
        "fp32_residual_connection": False,
        "hidden_dropout": 0.0,
        "hidden_size": 64,
        "kv_channels": 16,
        "layernorm_epsilon": 1e-05,
        "multi_query_attention": True,
        "multi_query_group_num": 2,
        "num_attention_heads": 4,
        "num_layers": 2,
        "original_rope": True,
        "padded_vocab_size": padded,
        "post_layer_norm": True,
        "rmsnorm": True,
        "seq_length": 8192,
        "use_cache": True,
        "torch_dtype": "float32",
        "transformers_version": "4.30.2",
        "tie_word_embeddings": False,
        "eos_token_id": 2,
        "pad_token_id": 0,
    }
    if rope_ratio is not None:  # the -32k variant
        config["rope_ratio"] = rope_ratio
        config["seq_length"] = 32768
    return config


def random_weights(config: dict[str, Any], seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors under ChatGLM3's names (norm weights near 1, like a trained model)."""
    gen = torch.Generator().manual_seed(seed)
    h, ffn = config["hidden_size"], config["ffn_hidden_size"]
    hd, heads, groups = config["kv_channels"], config["num_attention_heads"], 0
    groups = config["multi_query_group_num"]
    qkv = heads * hd + 2 * groups * hd
    vocab = config["padded_vocab_size"]

    def rnd(*shape: int, scale: float = 0.08) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) * scale

    weights = {"transformer.embedding.word_embeddings.weight": rnd(vocab, h, scale=1.0)}
    # the original checkpoints carry the rotary buffer; the converter must drop it
    weights["transformer.rotary_pos_emb.inv_freq"] = 1.0 / (
        10000 ** (torch.arange(0, hd // 2, 2, dtype=torch.float32) / (hd // 2))
    )
    for i in range(config["num_layers"]):
        p = f"transformer.encoder.layers.{i}."
        weights[p + "input_layernorm.weight"] = 1.0 + rnd(h, scale=0.1)
        weights[p + "self_attention.query_key_value.weight"] = rnd(qkv, h)
        weights[p + "self_attention.query_key_value.bias"] = rnd(qkv, scale=0.2)
        weights[p + "self_attention.dense.weight"] = rnd(h, heads * hd)
        weights[p + "post_attention_layernorm.weight"] = 1.0 + rnd(h, scale=0.1)
        weights[p + "mlp.dense_h_to_4h.weight"] = rnd(2 * ffn, h)
        weights[p + "mlp.dense_4h_to_h.weight"] = rnd(h, ffn)
    weights["transformer.encoder.final_layernorm.weight"] = 1.0 + rnd(h, scale=0.1)
    weights["transformer.output_layer.weight"] = rnd(vocab, h, scale=0.5)
    return weights


def write_checkpoint(
    out: Path,
    tokenizer_model: Path,
    *,
    fmt: str = "bin",
    shards: int = 3,
    rope_ratio: float | None = None,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """A ChatGLM3 directory: config.json, tokenizer.model, sharded weights + index."""
    import shutil

    import sentencepiece as spm

    out.mkdir(parents=True, exist_ok=True)
    sp_vocab = spm.SentencePieceProcessor(model_file=str(tokenizer_model)).vocab_size()
    config = chatglm3_config(sp_vocab, rope_ratio=rope_ratio)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    shutil.copy(tokenizer_model, out / "tokenizer.model")
    (out / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "ChatGLMTokenizer", "auto_map": {}}, indent=2)
    )
    weights = random_weights(config, seed)
    names = list(weights)
    per = math.ceil(len(names) / shards)
    weight_map = {}
    ext = "bin" if fmt == "bin" else "safetensors"
    stem = "pytorch_model" if fmt == "bin" else "model"
    for s in range(shards):
        part = {n: weights[n].clone() for n in names[s * per : (s + 1) * per]}
        fname = f"{stem}-{s + 1:05d}-of-{shards:05d}.{ext}"
        if fmt == "bin":
            torch.save(part, out / fname)
        else:
            from safetensors.torch import save_file

            save_file(part, str(out / fname))
        weight_map.update({n: fname for n in part})
    index_name = "pytorch_model.bin.index.json" if fmt == "bin" else "model.safetensors.index.json"
    (out / index_name).write_text(
        json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}, indent=2)
    )
    return weights


# ---------------------------------------------------------------- ChatGLM3 forward pass


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    variance = x.pow(2).mean(-1, keepdim=True)
    return weight * (x * torch.rsqrt(variance + eps))


def _rotary(x: torch.Tensor, positions: torch.Tensor, base: float) -> torch.Tensor:
    """ChatGLM3 rotary: the first half of each head's dims, rotated in interleaved pairs
    (x[2i], x[2i+1]); the second half passes through. x: [seq, heads, head_dim]."""
    head_dim = x.shape[-1]
    rot = head_dim // 2
    theta = 1.0 / (base ** (torch.arange(0, rot, 2, dtype=torch.float32) / rot))
    angles = torch.outer(positions.float(), theta)  # [seq, rot/2]
    cos, sin = angles.cos()[:, None, :], angles.sin()[:, None, :]
    x_rot, x_pass = x[..., :rot], x[..., rot:]
    pairs = x_rot.reshape(*x_rot.shape[:-1], rot // 2, 2)
    a, b = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack([a * cos - b * sin, b * cos + a * sin], dim=-1).flatten(-2)
    return torch.cat([rotated, x_pass], dim=-1)


@torch.no_grad()
def reference_logits(
    weights: dict[str, torch.Tensor], config: dict[str, Any], input_ids: list[int]
) -> torch.Tensor:
    """ChatGLM3's forward pass for one sequence; returns logits [seq, padded_vocab]."""
    eps = config["layernorm_epsilon"]
    heads, hd = config["num_attention_heads"], config["kv_channels"]
    groups = config["multi_query_group_num"]
    base = 10000.0 * config.get("rope_ratio", 1.0)
    ids = torch.tensor(input_ids)
    seq = len(input_ids)
    positions = torch.arange(seq)
    x = weights["transformer.embedding.word_embeddings.weight"][ids].float()
    causal = torch.ones(seq, seq, dtype=torch.bool).tril()
    for i in range(config["num_layers"]):
        p = f"transformer.encoder.layers.{i}."
        h = _rms_norm(x, weights[p + "input_layernorm.weight"], eps)
        mixed = h @ weights[p + "self_attention.query_key_value.weight"].T
        mixed = mixed + weights[p + "self_attention.query_key_value.bias"]
        q, k, v = mixed.split([heads * hd, groups * hd, groups * hd], dim=-1)
        q = _rotary(q.view(seq, heads, hd), positions, base)
        k = _rotary(k.view(seq, groups, hd), positions, base)
        v = v.view(seq, groups, hd)
        # multi-query groups: group g serves heads g*(heads/groups) ... consecutively
        k = k.repeat_interleave(heads // groups, dim=1)
        v = v.repeat_interleave(heads // groups, dim=1)
        scores = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(hd)
        scores = scores.masked_fill(~causal, float("-inf"))
        context = torch.einsum("hqk,khd->qhd", scores.softmax(-1), v).reshape(seq, heads * hd)
        x = x + context @ weights[p + "self_attention.dense.weight"].T
        h = _rms_norm(x, weights[p + "post_attention_layernorm.weight"], eps)
        gate, up = (h @ weights[p + "mlp.dense_h_to_4h.weight"].T).chunk(2, dim=-1)
        x = x + (torch.nn.functional.silu(gate) * up) @ weights[p + "mlp.dense_4h_to_h.weight"].T
    x = _rms_norm(x, weights["transformer.encoder.final_layernorm.weight"], eps)
    return x @ weights["transformer.output_layer.weight"].T


# ---------------------------------------------------------------- ChatGLM3 prompt ids


def reference_special_ids(sp: Any) -> dict[str, int]:
    """ChatGLM3's ``SPTokenizer.special_tokens``: name -> id, numbered after the SentencePiece
    vocabulary; ``convert_tokens_to_ids`` looks these names up before the vocabulary."""
    n = sp.vocab_size()
    return {tok: n + i for i, tok in enumerate(ORIGINAL_SPECIALS)}


def reference_chat_ids(
    sp: Any, messages: list[dict[str, str]], *, add_generation_prompt: bool = True
) -> list[int]:
    """ChatGLM3's tokenizer logic: prefix, then role id + sp(metadata+"\\n") + sp(text).
    Message text is always SentencePiece text: a "sop" in it never becomes the token."""
    special = reference_special_ids(sp)
    ids = [special["[gMASK]"], special["sop"]]
    for message in messages:
        ids.append(special[f"<|{message['role']}|>"])
        ids += sp.encode(message.get("metadata", "") + "\n")
        ids += sp.encode(message["content"])
    if add_generation_prompt:
        ids.append(special["<|assistant|>"])
    return ids
