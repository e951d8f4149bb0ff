"""Convert a peft LoRA adapter into llama.cpp's GGUF LoRA format.

The ``llamacpp`` backend runs the base model from its GGUF file, while kbqa trains LoRA
adapters with peft on a transformers copy of the same weights. llama.cpp loads an adapter as a
GGUF file of ``<base tensor>.lora_a`` / ``.lora_b`` pairs named after the base model's own
tensors (``blk.3.attn_q.weight.lora_a``), with ``general.type = "adapter"``,
``adapter.type = "lora"`` and ``adapter.lora.alpha``; it scales every pair by
``alpha / rank`` (the rank read from ``lora_b``), as peft does.

Layouts (numpy order; ggml's ``ne`` is the reverse), as llama.cpp's ``convert_lora_to_gguf.py``
writes them and ``llama_adapter_lora_init`` checks them:

- linear layers: ``lora_a`` = peft ``lora_A`` ``[r, in]``, ``lora_b`` = peft ``lora_B``
  ``[out, r]``, unchanged;
- ``token_embd``: ``lora_a`` = ``lora_embedding_A.T`` ``[vocab, r]``, ``lora_b`` =
  ``lora_embedding_B`` ``[hidden, r]``;
- ``llama`` only: the GGUF stores ``attn_q``/``attn_k`` with rows permuted for llama.cpp's
  rotary layout, so ``lora_B`` of ``q_proj``/``k_proj`` gets the same row permutation.

Only what maps exactly is converted; anything else (DoRA, modules_to_save, per-module rank or
alpha patterns, fused or unknown modules) is refused with a ``ValueError`` naming it.
"""

from __future__ import annotations

import json
import logging
import math
import mmap
import os
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

logger = logging.getLogger(__name__)

ADAPTER_FILE = "kbqa-lora.gguf"  # the cached conversion inside an adapter dir
SIGNATURE_KEY = "kbqa.base_signature"  # which base model a cached conversion was made for

# GGUF architecture -> whether llama.cpp's converter permutes q/k rows (rotary layout)
ARCHITECTURES: dict[str, bool] = {"llama": True, "qwen2": False}
# transformers model_type -> GGUF architecture, for conversions without a base GGUF
MODEL_TYPES: dict[str, str] = {"llama": "llama", "qwen2": "qwen2"}

# per-layer module (below model.layers.N.) -> llama.cpp tensor in blk.N.
BLOCK_MODULES: dict[str, str] = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
TOP_MODULES: dict[str, str] = {"model.embed_tokens": "token_embd", "lm_head": "output"}
EMBEDDING = "token_embd"

_KEY = re.compile(
    r"^base_model\.model\.(?P<module>.+)\."
    r"(?P<part>lora_A\.weight|lora_B\.weight|lora_embedding_A|lora_embedding_B)$"
)
_BLOCK = re.compile(r"^model\.layers\.(?P<n>\d+)\.(?P<name>.+)$")


@dataclass(frozen=True)
class BaseModel:
    """What the conversion needs to know of the model llama.cpp runs the adapter on."""

    architecture: str
    n_head: int | None = None
    n_head_kv: int | None = None
    # GGUF tensor name -> shape in numpy order ([out, in]); None when no base GGUF was given
    shapes: Mapping[str, tuple[int, ...]] | None = None
    signature: str = ""


@dataclass
class LoraPair:
    """peft's ``lora_A`` ``[r, in]`` and ``lora_B`` ``[out, r]`` of one module, float32."""

    a: np.ndarray | None = None
    b: np.ndarray | None = None


# --- public API -----------------------------------------------------------------------------


def convert_peft_to_gguf(
    adapter_dir: Path,
    out_path: Path,
    base_gguf: Path | None = None,
    *,
    architecture: str | None = None,
    dtype: Literal["f32", "f16"] = "f32",
) -> Path:
    """Write the peft LoRA adapter in ``adapter_dir`` as a llama.cpp GGUF LoRA at ``out_path``.

    The architecture and head counts come from ``base_gguf`` when given (which also checks
    every tensor's shape against the base model), else from ``architecture`` or the
    ``config.json`` of the adapter's ``base_model_name_or_path``. Raises ``ValueError`` for
    anything llama.cpp cannot apply exactly as peft does.
    """
    adapter_dir = Path(adapter_dir)
    config = read_adapter_config(adapter_dir)
    check_supported(config)
    base = (
        read_base_gguf(Path(base_gguf))
        if base_gguf is not None
        else base_from_config(config, architecture)
    )
    if base_gguf is not None and architecture and architecture != base.architecture:
        raise ValueError(
            f"architecture={architecture!r} contradicts the base GGUF ({base.architecture!r})"
        )
    pairs = load_pairs(adapter_dir / "adapter_model.safetensors")
    alpha = gguf_alpha(config, pairs)
    tensors = to_gguf_tensors(pairs, base)
    write_adapter(Path(out_path), base, alpha, tensors, dtype, name=adapter_dir.name)
    logger.info(
        "event=lora_converted adapter=%s out=%s arch=%s tensors=%d alpha=%g",
        adapter_dir,
        out_path,
        base.architecture,
        len(tensors),
        alpha,
    )
    return Path(out_path)


def ensure_gguf_adapter(adapter_dir: Path, base_gguf: Path) -> Path:
    """The adapter converted for ``base_gguf``, cached as ``<adapter_dir>/kbqa-lora.gguf``.

    Converted again when the adapter's files are newer than the cached file or the cached file
    was made for another base model.
    """
    adapter_dir = Path(adapter_dir)
    target = adapter_dir / ADAPTER_FILE
    base = read_base_gguf(Path(base_gguf))
    if _is_fresh(target, adapter_dir, base):
        return target
    return convert_peft_to_gguf(adapter_dir, target, Path(base_gguf))


# --- reading the adapter --------------------------------------------------------------------


def read_adapter_config(adapter_dir: Path) -> dict[str, Any]:
    """``adapter_config.json`` of a peft adapter folder."""
    path = adapter_dir / "adapter_config.json"
    if not path.is_file():
        raise ValueError(f"{adapter_dir} has no adapter_config.json: not a peft adapter folder")
    if not (adapter_dir / "adapter_model.safetensors").is_file():
        raise ValueError(f"{adapter_dir} has no adapter_model.safetensors")
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not a JSON object")
    return data


def check_supported(config: Mapping[str, Any]) -> None:
    """Refuse peft options that llama.cpp's LoRA format cannot express."""
    peft_type = str(config.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        raise ValueError(f"peft_type {peft_type}: only LoRA adapters convert to llama.cpp")
    refusals = {
        "use_dora": "DoRA (use_dora=true): llama.cpp has no magnitude vector",
        "modules_to_save": "modules_to_save {value}: full module copies are not LoRA tensors",
        "rank_pattern": "rank_pattern {value}: per-module ranks are not supported",
        "alpha_pattern": "alpha_pattern {value}: llama.cpp has one alpha per adapter",
        "fan_in_fan_out": "fan_in_fan_out=true (Conv1D weights) is not supported",
        "lora_bias": "lora_bias=true: llama.cpp LoRA has no bias term",
        "layer_replication": "layer_replication {value} changes the layer layout",
        "target_parameters": "target_parameters {value}: LoRA on bare parameters",
        "trainable_token_indices": "trainable_token_indices {value}: token deltas",
        "alora_invocation_tokens": "aLoRA (alora_invocation_tokens) is not supported",
        "use_qalora": "QALoRA (use_qalora=true) is not supported",
        "use_bdlora": "BD-LoRA (use_bdlora) is not supported",
        "arrow_config": "Arrow routing (arrow_config) is not supported",
        "kasa_config": "KaSA (kasa_config) is not supported",
        "monteclora_config": "MonteCLoRA (monteclora_config) is not supported",
    }
    for key, message in refusals.items():
        if config.get(key):
            raise ValueError(f"unsupported adapter: {message.format(value=config[key])}")
    if config.get("bias", "none") != "none":
        raise ValueError(f"unsupported adapter: bias={config['bias']!r} (trained base biases)")
    if float(config.get("lora_alpha") or 0) <= 0 or int(config.get("r") or 0) <= 0:
        raise ValueError("unsupported adapter: r and lora_alpha must be positive")


def load_pairs(path: Path) -> dict[str, LoraPair]:
    """The adapter's A/B matrices (float32) keyed by llama.cpp tensor name (``blk.0.attn_q``)."""
    from safetensors.torch import load_file

    pairs: dict[str, LoraPair] = {}
    for key, tensor in load_file(str(path), device="cpu").items():
        match = _KEY.match(key)
        if match is None:
            raise ValueError(f"unsupported adapter tensor {key!r}: not a LoRA A/B matrix")
        name = gguf_tensor_base(match["module"])
        pair = pairs.setdefault(name, LoraPair())
        array = tensor.float().numpy()
        if match["part"].startswith(("lora_A", "lora_embedding_A")):
            pair.a = array
        else:
            pair.b = array
    for name, pair in pairs.items():
        if pair.a is None or pair.b is None:
            raise ValueError(f"adapter tensor {name}: lora_A or lora_B is missing")
    if not pairs:
        raise ValueError(f"{path} holds no LoRA tensors")
    return pairs


def gguf_tensor_base(module: str) -> str:
    """llama.cpp tensor name (without ``.weight``) for a transformers module path."""
    if module in TOP_MODULES:
        return TOP_MODULES[module]
    block = _BLOCK.match(module)
    if block is not None and block["name"] in BLOCK_MODULES:
        return f"blk.{block['n']}.{BLOCK_MODULES[block['name']]}"
    known = ", ".join([*BLOCK_MODULES, *TOP_MODULES])
    raise ValueError(
        f"unsupported LoRA module {module!r}: llama.cpp's llama/qwen2 layout has no tensor for "
        f"it (fused or unknown module); supported modules: {known}"
    )


def gguf_alpha(config: Mapping[str, Any], pairs: Mapping[str, LoraPair]) -> float:
    """``adapter.lora.alpha`` that makes llama.cpp's ``alpha / r`` equal peft's scaling."""
    rank = int(config["r"])
    for name, pair in pairs.items():
        assert pair.b is not None
        if pair.b.shape[-1] != rank:
            raise ValueError(f"adapter tensor {name} has rank {pair.b.shape[-1]}, config r={rank}")
    alpha = float(config["lora_alpha"])
    # rsLoRA scales by alpha / sqrt(r); llama.cpp always divides by r
    return alpha * math.sqrt(rank) if config.get("use_rslora") else alpha


# --- the base model -------------------------------------------------------------------------


def read_base_gguf(path: Path) -> BaseModel:
    """Architecture, head counts and tensor shapes of a GGUF model (header only: fast)."""
    metadata, shapes = read_gguf_header(path)
    arch = str(metadata.get("general.architecture", ""))
    _check_architecture(arch, f"base GGUF {path}")
    n_head = metadata.get(f"{arch}.attention.head_count")
    n_head_kv = metadata.get(f"{arch}.attention.head_count_kv", n_head)
    signature = " ".join(
        f"{key}={metadata.get(f'{arch}.{key}')}"
        for key in ("block_count", "embedding_length", "feed_forward_length")
    )
    signature = f"{arch} {signature} heads={n_head}/{n_head_kv} output={'output.weight' in shapes}"
    return BaseModel(
        arch,
        int(n_head) if n_head is not None else None,
        int(n_head_kv) if n_head_kv is not None else None,
        shapes,
        signature,
    )


def base_from_config(config: Mapping[str, Any], architecture: str | None) -> BaseModel:
    """Base facts without a GGUF: ``architecture`` or the base model's local config.json."""
    hf: dict[str, Any] = {}
    base_path = config.get("base_model_name_or_path")
    if base_path and (Path(base_path) / "config.json").is_file():
        hf = json.loads((Path(base_path) / "config.json").read_text(encoding="utf-8"))
    arch = architecture or MODEL_TYPES.get(str(hf.get("model_type")), "")
    _check_architecture(arch, "adapter (pass base_gguf or architecture)")
    n_head = hf.get("num_attention_heads")
    return BaseModel(arch, n_head, hf.get("num_key_value_heads", n_head))


def _check_architecture(arch: str, source: str) -> None:
    if arch not in ARCHITECTURES:
        raise ValueError(
            f"architecture {arch or 'unknown'!r} of {source} is not supported "
            f"(supported: {', '.join(ARCHITECTURES)})"
        )


# --- mapping to llama.cpp tensors -----------------------------------------------------------


def to_gguf_tensors(pairs: Mapping[str, LoraPair], base: BaseModel) -> dict[str, np.ndarray]:
    """``<name>.weight.lora_a`` / ``.lora_b`` arrays in llama.cpp's layout, shape-checked."""
    tensors: dict[str, np.ndarray] = {}
    for name, pair in sorted(pairs.items()):
        assert pair.a is not None and pair.b is not None
        a, b = pair.a, pair.b
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
            raise ValueError(f"adapter tensor {name}: A {a.shape} and B {b.shape} do not chain")
        _check_shape(name, a, b, base)
        if name == EMBEDDING:
            a = a.T  # llama.cpp gathers rows of lora_a per token, see llm_build_inp_embd()
        elif ARCHITECTURES[base.architecture] and name.endswith((".attn_q", ".attn_k")):
            b = permute_rows(b, _heads(name, base))
        tensors[f"{name}.weight.lora_a"] = np.ascontiguousarray(a)
        tensors[f"{name}.weight.lora_b"] = np.ascontiguousarray(b)
    return tensors


def _check_shape(name: str, a: np.ndarray, b: np.ndarray, base: BaseModel) -> None:
    """The delta ``B @ A`` must have the base weight's shape (embeddings: transposed)."""
    if name in (EMBEDDING, "output") and (
        base.shapes is None or "output.weight" not in base.shapes
    ):
        raise ValueError(
            f"LoRA on {name} needs a base GGUF with a separate output.weight: with tied "
            "embeddings (or without base_gguf) llama.cpp would apply it to the output layer too"
        )
    if base.shapes is None:
        return
    shape = base.shapes.get(f"{name}.weight")
    if shape is None:
        raise ValueError(f"adapter targets {name}, which the base GGUF does not have")
    delta = (a.shape[1], b.shape[0]) if name == EMBEDDING else (b.shape[0], a.shape[1])
    if tuple(shape) != delta:
        raise ValueError(
            f"adapter tensor {name} has shape {delta}, the base GGUF {tuple(shape)}: "
            "adapter trained for another model?"
        )


def _heads(name: str, base: BaseModel) -> int:
    heads = base.n_head_kv if name.endswith(".attn_k") else base.n_head
    if not heads:
        raise ValueError(
            f"{name}: the {base.architecture} layout needs the attention head counts; "
            "pass base_gguf (or a base_model_name_or_path with config.json)"
        )
    return heads


def permute_rows(b: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's q/k row permutation (``LlamaModel.permute``), applied to ``lora_B``."""
    out = b.shape[0]
    if out % (2 * n_head):
        raise ValueError(f"{out} rows do not split into {n_head} rotary heads")
    return b.reshape(n_head, 2, out // n_head // 2, *b.shape[1:]).swapaxes(1, 2).reshape(b.shape)


# --- writing --------------------------------------------------------------------------------


def write_adapter(
    path: Path,
    base: BaseModel,
    alpha: float,
    tensors: Mapping[str, np.ndarray],
    dtype: Literal["f32", "f16"],
    *,
    name: str = "",
) -> None:
    """Write the GGUF atomically (a temporary file renamed into place)."""
    import gguf

    if dtype not in ("f32", "f16"):
        raise ValueError(f"dtype must be 'f32' or 'f16', not {dtype!r}")
    np_dtype = np.float16 if dtype == "f16" else np.float32
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    writer = gguf.GGUFWriter(str(tmp), base.architecture)
    try:
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
        if name:
            writer.add_name(name)
        if base.signature:
            writer.add_string(SIGNATURE_KEY, base.signature)
        for tensor_name, array in tensors.items():
            writer.add_tensor(tensor_name, array.astype(np_dtype))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, path)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise


def _is_fresh(target: Path, adapter_dir: Path, base: BaseModel) -> bool:
    if not target.is_file():
        return False
    sources = [adapter_dir / "adapter_model.safetensors", adapter_dir / "adapter_config.json"]
    newest = max((s.stat().st_mtime_ns for s in sources if s.exists()), default=0)
    if target.stat().st_mtime_ns < newest:
        return False
    metadata, _ = read_gguf_header(target)
    return metadata.get(SIGNATURE_KEY) == base.signature


# --- a GGUF header reader (gguf.GGUFReader parses every tokenizer array: ~13 s on Qwen) ----

_SCALARS: dict[int, str] = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?"}
_SCALARS.update({10: "Q", 11: "q", 12: "d"})
_STRING, _ARRAY = 8, 9


class _Cursor:
    def __init__(self, buf: mmap.mmap) -> None:
        self.buf, self.pos = buf, 0

    def take(self, fmt: str) -> Any:
        (value,) = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        size = self.take("Q")
        self.pos += size
        return bytes(self.buf[self.pos - size : self.pos]).decode("utf-8", errors="replace")

    def value(self, kind: int) -> Any:
        if kind in _SCALARS:
            return self.take(_SCALARS[kind])
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:  # skipped: nothing here needs arrays
            item, count = self.take("I"), self.take("Q")
            if item in _SCALARS:
                self.pos += struct.calcsize(_SCALARS[item]) * count
            elif item == _STRING:
                for _ in range(count):
                    self.pos += 8 + struct.unpack_from("<Q", self.buf, self.pos)[0]
            else:
                for _ in range(count):
                    self.value(item)
            return None
        raise ValueError(f"unknown GGUF value type {kind}")


def read_gguf_header(path: Path) -> tuple[dict[str, Any], dict[str, tuple[int, ...]]]:
    """Scalar metadata and tensor shapes (numpy order) of a GGUF file; arrays are skipped."""
    with open(path, "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        cur = _Cursor(buf)
        if bytes(buf[:4]) != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file")
        cur.pos = 4
        version, n_tensors, n_kv = cur.take("I"), cur.take("Q"), cur.take("Q")
        if version not in (2, 3):
            raise ValueError(f"{path}: unsupported GGUF version {version}")
        metadata = {}
        for _ in range(n_kv):
            key = cur.string()
            metadata[key] = cur.value(cur.take("I"))
        shapes = {}
        for _ in range(n_tensors):
            name = cur.string()
            dims = [cur.take("Q") for _ in range(cur.take("I"))]
            cur.take("I")  # ggml type
            cur.take("Q")  # data offset
            shapes[name] = tuple(reversed(dims))
    return metadata, shapes
