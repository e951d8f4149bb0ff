"""Convert a ChatGLM3 checkpoint (remote-code layout) into transformers' native ``GlmForCausalLM``.

Reads THUDM/chatglm3-6b, -base and -32k directories (``pytorch_model-*.bin`` shards or
safetensors, ``config.json``, ``tokenizer.model``) and writes safetensors shards, a
``GlmConfig``, a generation config whose eos set includes ``<|user|>`` and
``<|observation|>``, and a fast tokenizer with a token-exact chat template.

Weight mapping (MODELS.md; checked against the original modeling code):

==========================================================  ===================================
ChatGLM3                                                    GlmForCausalLM
==========================================================  ===================================
transformer.embedding.word_embeddings.weight                model.embed_tokens.weight
transformer.encoder.layers.N.input_layernorm.weight         model.layers.N.input_layernorm.weight
...self_attention.query_key_value.{weight,bias}             ...self_attn.{q,k,v}_proj (row split)
...self_attention.dense.weight                              ...self_attn.o_proj.weight
...post_attention_layernorm.weight                          ...post_attention_layernorm.weight
...mlp.dense_h_to_4h.weight  (fused [gate; up])             ...mlp.gate_up_proj.weight
...mlp.dense_4h_to_h.weight                                 ...mlp.down_proj.weight
transformer.encoder.final_layernorm.weight                  model.norm.weight
transformer.output_layer.weight                             lm_head.weight
transformer.rotary_pos_emb.inv_freq                         (dropped; recomputed)
==========================================================  ===================================

Memory: one input shard at a time is loaded (memory-mapped when possible), converted and
written as one output shard before the next is read, so the peak is about one shard.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.llm.base import LLMError
from app.llm.chatglm3.tokenizer import save_tokenizer

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

ROPE_BASE = 10000.0


class ConversionError(LLMError):
    """The source directory is not a ChatGLM3 checkpoint this converter understands."""


@dataclass(frozen=True)
class ChatGLMLayout:
    """What the converter needs from ChatGLM3's config.json."""

    num_layers: int
    hidden_size: int
    num_heads: int
    head_dim: int
    kv_groups: int
    ffn_hidden_size: int
    vocab_size: int
    eps: float
    rope_ratio: float
    seq_length: int
    qkv_bias: bool
    torch_dtype: str

    @property
    def q_rows(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_rows(self) -> int:
        return self.kv_groups * self.head_dim


@dataclass
class ConversionReport:
    source: Path
    target: Path
    input_shards: int = 0
    output_shards: int = 0
    tensors_written: int = 0
    parameters: int = 0
    seconds: float = 0.0
    special_token_ids: dict[str, int] = field(default_factory=dict)


def is_chatglm_dir(path: Path) -> bool:
    config = Path(path) / "config.json"
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text(encoding="utf-8")).get("model_type") == "chatglm"
    except json.JSONDecodeError:
        return False


def read_layout(src: Path) -> ChatGLMLayout:
    """Validate ChatGLM3's config.json and extract the layout; refuse other GLM generations."""
    config_path = src / "config.json"
    if not config_path.is_file():
        raise ConversionError(f"{src} has no config.json: not a ChatGLM3 checkpoint directory")
    cfg = json.loads(config_path.read_text(encoding="utf-8"))
    if cfg.get("model_type") != "chatglm":
        raise ConversionError(
            f"{config_path}: model_type is {cfg.get('model_type')!r}, expected 'chatglm'"
        )
    required = ["num_layers", "hidden_size", "num_attention_heads", "ffn_hidden_size"]
    missing = [k for k in required if k not in cfg]
    if missing:
        raise ConversionError(f"{config_path} lacks {missing}: not a ChatGLM2/3 config")
    unsupported = {
        "rmsnorm": (cfg.get("rmsnorm", True), True),
        "post_layer_norm": (cfg.get("post_layer_norm", True), True),
        "add_bias_linear": (cfg.get("add_bias_linear", False), False),
        "apply_residual_connection_post_layernorm": (
            cfg.get("apply_residual_connection_post_layernorm", False),
            False,
        ),
    }
    wrong = {k: v for k, (v, want) in unsupported.items() if v != want}
    if wrong:
        raise ConversionError(f"{config_path}: unsupported ChatGLM variant {wrong}")
    heads = int(cfg["num_attention_heads"])
    hidden = int(cfg["hidden_size"])
    head_dim = int(cfg.get("kv_channels") or hidden // heads)
    groups = int(cfg["multi_query_group_num"]) if cfg.get("multi_query_attention") else heads
    if heads % groups:
        raise ConversionError(f"{heads} heads are not divisible into {groups} key/value groups")
    return ChatGLMLayout(
        num_layers=int(cfg["num_layers"]),
        hidden_size=hidden,
        num_heads=heads,
        head_dim=head_dim,
        kv_groups=groups,
        ffn_hidden_size=int(cfg["ffn_hidden_size"]),
        vocab_size=int(cfg.get("padded_vocab_size") or cfg["vocab_size"]),
        eps=float(cfg.get("layernorm_epsilon", 1e-5)),
        rope_ratio=float(cfg.get("rope_ratio", 1.0)),
        seq_length=int(cfg.get("seq_length", 8192)),
        qkv_bias=bool(cfg.get("add_qkv_bias", True) or cfg.get("add_bias_linear", False)),
        torch_dtype=str(cfg.get("torch_dtype", "float16")),
    )


def weight_files(src: Path) -> list[Path]:
    """The checkpoint's weight shards in order (index file first, then single files)."""
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = src / index_name
        if index.is_file():
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            files = sorted(set(weight_map.values()))
            missing = [f for f in files if not (src / f).is_file()]
            if missing:
                raise ConversionError(f"{index} names shards that are missing: {missing[:3]}")
            return [src / f for f in files]
    for single in ("model.safetensors", "pytorch_model.bin"):
        if (src / single).is_file():
            return [src / single]
    found = sorted(src.glob("*.safetensors")) or sorted(src.glob("pytorch_model*.bin"))
    if not found:
        raise ConversionError(f"{src} holds no pytorch_model*.bin or *.safetensors weights")
    return found


def load_shard(path: Path) -> dict[str, torch.Tensor]:
    """One shard's tensors; .bin files are memory-mapped so untouched pages stay on disk."""
    import torch

    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # legacy (non-zip) serialization cannot be memory-mapped
        return torch.load(str(path), map_location="cpu", weights_only=True)


_LAYER = re.compile(r"^transformer\.encoder\.layers\.(\d+)\.(.+)$")
_LAYER_RENAMES = {
    "input_layernorm.weight": "input_layernorm.weight",
    "post_attention_layernorm.weight": "post_attention_layernorm.weight",
    "self_attention.dense.weight": "self_attn.o_proj.weight",
    "mlp.dense_h_to_4h.weight": "mlp.gate_up_proj.weight",
    "mlp.dense_4h_to_h.weight": "mlp.down_proj.weight",
}
_GLOBAL_RENAMES = {
    "transformer.embedding.word_embeddings.weight": "model.embed_tokens.weight",
    "transformer.encoder.final_layernorm.weight": "model.norm.weight",
    "transformer.output_layer.weight": "lm_head.weight",
}
_DROPPED = {"transformer.rotary_pos_emb.inv_freq"}


def map_tensor(
    name: str, tensor: torch.Tensor, layout: ChatGLMLayout
) -> Iterator[tuple[str, torch.Tensor]]:
    """Native (name, tensor) pairs for one ChatGLM3 tensor; nothing for dropped buffers."""
    if name in _DROPPED:
        return
    if name in _GLOBAL_RENAMES:
        yield _GLOBAL_RENAMES[name], tensor
        return
    match = _LAYER.match(name)
    if match is None:
        raise ConversionError(
            f"unexpected tensor {name!r}: not part of the ChatGLM3 layout (P-tuning prefix "
            "encoders and quantized checkpoints are not supported; convert the base weights)"
        )
    index, rest = int(match.group(1)), match.group(2)
    if index >= layout.num_layers:
        raise ConversionError(f"tensor {name!r} names layer {index} of {layout.num_layers}")
    prefix = f"model.layers.{index}."
    if rest in _LAYER_RENAMES:
        yield prefix + _LAYER_RENAMES[rest], tensor
        return
    if rest in ("self_attention.query_key_value.weight", "self_attention.query_key_value.bias"):
        kind = rest.rsplit(".", 1)[1]
        expected = layout.q_rows + 2 * layout.kv_rows
        if tensor.shape[0] != expected:
            raise ConversionError(
                f"{name}: {tensor.shape[0]} rows, expected {expected} "
                f"({layout.num_heads} heads + 2 x {layout.kv_groups} groups of {layout.head_dim})"
            )
        q, k, v = tensor.split([layout.q_rows, layout.kv_rows, layout.kv_rows], dim=0)
        for proj, part in (("q_proj", q), ("k_proj", k), ("v_proj", v)):
            yield f"{prefix}self_attn.{proj}.{kind}", part.clone()
        return
    raise ConversionError(f"unexpected tensor {name!r} in a ChatGLM3 layer")


def expected_names(layout: ChatGLMLayout) -> set[str]:
    names = set(_GLOBAL_RENAMES.values())
    per_layer = [
        "input_layernorm.weight",
        "post_attention_layernorm.weight",
        "self_attn.q_proj.weight",
        "self_attn.k_proj.weight",
        "self_attn.v_proj.weight",
        "self_attn.o_proj.weight",
        "mlp.gate_up_proj.weight",
        "mlp.down_proj.weight",
    ]
    if layout.qkv_bias:
        per_layer += ["self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias"]
    for i in range(layout.num_layers):
        names.update(f"model.layers.{i}.{p}" for p in per_layer)
    return names


def glm_config(layout: ChatGLMLayout, eos_ids: list[int], dtype: str) -> Any:
    from transformers import GlmConfig

    config = GlmConfig(
        vocab_size=layout.vocab_size,
        hidden_size=layout.hidden_size,
        intermediate_size=layout.ffn_hidden_size,
        num_hidden_layers=layout.num_layers,
        num_attention_heads=layout.num_heads,
        num_key_value_heads=layout.kv_groups,
        head_dim=layout.head_dim,
        hidden_act="silu",
        attention_dropout=0.0,
        max_position_embeddings=layout.seq_length,
        rms_norm_eps=layout.eps,
        tie_word_embeddings=False,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": ROPE_BASE * layout.rope_ratio,
            "partial_rotary_factor": 0.5,
        },
        pad_token_id=0,
        eos_token_id=eos_ids,
        bos_token_id=None,
        attention_bias=layout.qkv_bias,
    )
    config.architectures = ["GlmForCausalLM"]
    config.dtype = dtype
    return config


def _dtype_of(name: str | None) -> torch.dtype | None:
    import torch

    if name in (None, "", "keep"):
        return None
    table = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
    if name not in table:
        raise ConversionError(f"unknown dtype {name!r}: use keep, float16, bfloat16 or float32")
    return table[name]


def convert_chatglm3(
    src: Path,
    dst: Path,
    *,
    dtype: str | None = None,
    overwrite: bool = False,
    shard_loader: Callable[[Path], dict[str, torch.Tensor]] | None = None,
) -> ConversionReport:
    """Convert ``src`` (ChatGLM3 layout) into ``dst`` (native ``GlmForCausalLM``).

    ``dtype`` None keeps each tensor's stored dtype. The output appears atomically: it is
    written into a temporary sibling directory and renamed when complete.
    """
    start = time.perf_counter()
    src, dst = Path(src).expanduser().resolve(), Path(dst).expanduser().resolve()
    layout = read_layout(src)
    _check_paths(src, dst, overwrite)
    files = weight_files(src)
    cast = _dtype_of(dtype)
    report = ConversionReport(source=src, target=dst, input_shards=len(files))

    work = dst.parent / f".{dst.name}.tmp-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        ids = save_tokenizer(src / "tokenizer.model", work)
        report.special_token_ids = ids
        shards = _convert_shards(files, shard_loader or load_shard, layout, cast, work, report)
        missing = sorted(expected_names(layout) - set(shards.weight_map))
        if missing:
            raise ConversionError(f"the source lacks {len(missing)} tensors, e.g. {missing[:3]}")
        _rename_shards(work, shards.weight_map, report.output_shards)
        if report.output_shards > 1:
            index = {
                "metadata": {"total_size": shards.total_bytes},
                "weight_map": dict(sorted(shards.weight_map.items())),
            }
            (work / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        out_dtype = str(cast or shards.stored_dtype).replace("torch.", "")
        _write_configs(work, src, layout, ids, out_dtype)
        if dst.exists():
            shutil.rmtree(dst)
        os.replace(work, dst)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report.seconds = time.perf_counter() - start
    logger.info(
        "event=chatglm3_converted target=%s shards=%d params=%d seconds=%.1f",
        dst,
        report.output_shards,
        report.parameters,
        report.seconds,
    )
    return report


def _check_paths(src: Path, dst: Path, overwrite: bool) -> None:
    if not (src / "tokenizer.model").is_file():
        raise ConversionError(f"{src} has no tokenizer.model (ChatGLM3's SentencePiece model)")
    if dst.exists():
        if not overwrite:
            raise ConversionError(f"{dst} already exists; pass --overwrite to replace it")
        if dst == src:
            raise ConversionError("the destination must differ from the source")


@dataclass
class _Shards:
    """What the converted shards hold: tensor name -> shard file, bytes, the stored dtype."""

    weight_map: dict[str, str] = field(default_factory=dict)
    total_bytes: int = 0
    stored_dtype: torch.dtype | None = None


def _convert_shards(
    files: list[Path],
    loader: Callable[[Path], dict[str, torch.Tensor]],
    layout: ChatGLMLayout,
    cast: torch.dtype | None,
    work: Path,
    report: ConversionReport,
) -> _Shards:
    """Each source shard renamed, split and cast into one output shard, one at a time (peak
    memory: about one shard)."""
    from safetensors.torch import save_file

    shards = _Shards()
    for number, path in enumerate(files, start=1):
        out_name = f"model-{number:05d}-of-{len(files):05d}.safetensors"
        tensors = loader(path)
        converted: dict[str, torch.Tensor] = {}
        for name in list(tensors):
            tensor = tensors.pop(name)
            for new_name, new_tensor in map_tensor(name, tensor, layout):
                if new_name in shards.weight_map or new_name in converted:
                    raise ConversionError(f"tensor {new_name} appears twice in the source")
                shards.stored_dtype = shards.stored_dtype or new_tensor.dtype
                out = new_tensor.to(cast) if cast is not None else new_tensor
                converted[new_name] = out.contiguous()
            del tensor
        del tensors  # drop this shard before the next one is read
        if converted:
            save_file(converted, str(work / out_name), metadata={"format": "pt"})
            for new_name, tensor in converted.items():
                shards.weight_map[new_name] = out_name
                shards.total_bytes += tensor.numel() * tensor.element_size()
                report.parameters += tensor.numel()
            report.output_shards += 1
            report.tensors_written += len(converted)
        logger.info(
            "event=chatglm3_shard index=%d of=%d source=%s tensors=%d",
            number,
            len(files),
            path.name,
            len(converted),
        )
        del converted
    return shards


def _write_configs(
    work: Path, src: Path, layout: ChatGLMLayout, ids: dict[str, int], out_dtype: str
) -> None:
    """config.json, generation_config.json and kbqa_conversion.json of the converted model."""
    from transformers import GenerationConfig

    eos_ids = [2, ids["<|user|>"], ids["<|observation|>"]]
    glm_config(layout, eos_ids, out_dtype).save_pretrained(str(work))
    GenerationConfig(eos_token_id=eos_ids, pad_token_id=0).save_pretrained(str(work))
    (work / "kbqa_conversion.json").write_text(
        json.dumps(
            {
                "source": str(src),
                "converter": "kbqa models convert-chatglm3",
                "layout": layout.__dict__,
                "special_token_ids": ids,
            },
            indent=2,
        )
        + "\n"
    )


def _rename_shards(work: Path, weight_map: dict[str, str], count: int) -> None:
    """Shard names say ``-of-N`` with N the shards actually written (empty inputs skipped)."""
    written = sorted(set(weight_map.values()))
    if len(written) == 1 and count == 1:
        os.replace(work / written[0], work / "model.safetensors")
        renames = {written[0]: "model.safetensors"}
    else:
        renames = {
            old: f"model-{i:05d}-of-{count:05d}.safetensors" for i, old in enumerate(written, 1)
        }
        for old, new in renames.items():
            if old != new:
                os.replace(work / old, work / new)
    for name, shard in weight_map.items():
        weight_map[name] = renames[shard]
