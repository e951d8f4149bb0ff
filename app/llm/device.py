"""Device, dtype, quantization and memory decisions for loading a local causal LM.

The transformers backend calls, in this order::

    device = pick_device(settings.device)
    dtype = pick_dtype(settings.dtype, device)
    check_memory(model_dir, dtype, device, quantization=..., max_memory=..., overhead=...)
    kwargs = load_kwargs(settings, device)
    model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
    if needs_move(kwargs):
        model.to(device)

Every function is small and takes its inputs explicitly, so each decision is unit-tested on a
CPU machine with the availability of CUDA/MPS monkeypatched. LoRA training (finetune/train.py)
picks its device and mixed precision here too (``pick_device``, ``pick_training_precision``).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.llm.base import LLMError

if TYPE_CHECKING:
    import torch

    from app.settings.llm import LLMSettings

logger = logging.getLogger(__name__)

GIB = 1024**3
CUDA_EXTRA_HINT = "install the CUDA extra: pip install 'kbqa[cuda]' (bitsandbytes)"


class DeviceError(LLMError):
    """A device, dtype or quantization choice that cannot work on this machine."""


class InsufficientMemoryError(DeviceError):
    """The model will not fit in the memory available on the chosen device(s)."""


# ----------------------------------------------------------------------------- device


def cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def mps_available() -> bool:
    import torch

    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def pick_device(setting: str) -> str:
    """``auto`` picks cuda > mps > cpu; an explicit device must be present."""
    if setting == "auto":
        if cuda_available():
            return "cuda"
        if mps_available():
            return "mps"
        return "cpu"
    if setting == "cuda" and not cuda_available():
        raise DeviceError(
            "llm.device=cuda but torch sees no CUDA device (a CPU-only torch build, or no "
            "driver). Install a CUDA build of torch, or set KBQA_LLM__DEVICE=auto."
        )
    if setting == "mps" and not mps_available():
        raise DeviceError(
            "llm.device=mps but torch.backends.mps is not available (needs Apple silicon and "
            "macOS 12.3+). Set KBQA_LLM__DEVICE=auto."
        )
    if setting not in {"cuda", "mps", "cpu"}:
        raise DeviceError(f"unknown device {setting!r}: use auto, cuda, mps or cpu")
    return setting


# ----------------------------------------------------------------------------- dtype

_DTYPE_NAMES = {"float32": "float32", "float16": "float16", "bfloat16": "bfloat16"}


def pick_dtype(setting: str, device: str) -> torch.dtype:
    """The weights dtype: the setting, or the best default for the device.

    auto:
    - CUDA: float16. ChatGLM3 ships fp16 weights, every CUDA GPU runs fp16 kernels, and the
      first users' A4000s hold the 6B model in fp16 on one card (~12.5 GB).
    - MPS: float16. bfloat16 on MPS needs macOS 14+ and a recent torch, and Apple GPUs of
      the M1/M2 generation have no native bf16 arithmetic (it is emulated, slower), while
      fp16 works on every MPS-capable macOS and is the dtype ChatGLM3's weights are stored
      in, so loading costs no rounding. bf16 stays available by setting it explicitly.
    - CPU: float32. fp16 matmuls on CPU are slow or missing in many kernels, and bf16 is
      only fast on CPUs with AVX512-BF16/AMX; fp32 is correct everywhere (memory: 4 bytes a
      parameter, ~25 GB for a 6B model).
    """
    import torch

    if setting != "auto":
        if setting not in _DTYPE_NAMES:
            raise DeviceError(f"unknown dtype {setting!r}: use auto, float32, float16, bfloat16")
        dtype = getattr(torch, _DTYPE_NAMES[setting])
        if device == "cpu" and dtype == torch.float16:
            logger.warning("event=dtype_slow device=cpu dtype=float16 hint=use_float32")
        if device == "mps" and dtype == torch.bfloat16:
            logger.info("event=dtype_note device=mps dtype=bfloat16 note=needs_macos14")
        return dtype
    if device in {"cuda", "mps"}:
        return torch.float16
    return torch.float32


def pick_training_precision(setting: str, device: str) -> str:
    """Mixed precision of a LoRA training run (``finetune.precision``): ``auto`` is bf16 on a
    CUDA GPU that has it, else fp16 on CUDA, fp32 elsewhere; fp16/bf16 need CUDA."""
    if setting != "auto":
        if setting in {"fp16", "bf16"} and device != "cuda":
            raise DeviceError(f"finetune.precision={setting} needs CUDA; use fp32 on {device}")
        return setting
    if device == "cuda":
        import torch

        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


# ----------------------------------------------------------------------------- kwargs


def parse_max_memory(raw: dict[str, str]) -> dict[int | str, str]:
    """``{"0": "15GiB", "cpu": "30GiB"}`` -> ``{0: "15GiB", "cpu": "30GiB"}`` (GPU keys int)."""
    out: dict[int | str, str] = {}
    for key, value in raw.items():
        name = str(key).strip()
        if name.isdigit():
            out[int(name)] = str(value).strip()
        elif name.startswith("cuda:") and name[5:].isdigit():
            out[int(name[5:])] = str(value).strip()
        elif name in {"cpu", "mps", "disk"}:
            out[name] = str(value).strip()
        else:
            raise DeviceError(
                f"max_memory key {name!r}: use a GPU index (0, 1, ...), cpu, mps or disk"
            )
    return out


def bitsandbytes_config(
    quantization: str, device: str, dtype: torch.dtype, settings: LLMSettings | None = None
) -> Any:
    """A ``BitsAndBytesConfig`` for 8-bit/4-bit loading; CUDA only."""
    if quantization == "none":
        return None
    if quantization not in {"8bit", "4bit"}:
        raise DeviceError(f"unknown quantization {quantization!r}: use none, 8bit or 4bit")
    if device != "cuda":
        raise DeviceError(
            f"llm.quantization={quantization} needs a CUDA GPU (bitsandbytes); the device is "
            f"{device}. On {device} use llm.quantization=none"
            + (" with float16 (~13 GB for ChatGLM3-6B)." if device == "mps" else ".")
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ImportError(f"llm.quantization={quantization} needs bitsandbytes: {CUDA_EXTRA_HINT}")
    from transformers import BitsAndBytesConfig

    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    quant_type = settings.bnb_4bit_quant_type if settings is not None else "nf4"
    double = settings.bnb_4bit_double_quant if settings is not None else True
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_compute_dtype=dtype,
        bnb_4bit_quant_type=quant_type,
        bnb_4bit_use_double_quant=double,
    )


def load_kwargs(settings: LLMSettings, device: str) -> dict[str, Any]:
    """Keyword arguments for ``AutoModelForCausalLM.from_pretrained`` on ``device``.

    Without ``device_map`` in the result the caller moves the model: ``model.to(device)``
    (see :func:`needs_move`). With quantization or ``max_memory`` a device map is always set
    (bitsandbytes quantizes while placing weights; ``max_memory`` only acts through one).
    Two 16 GB GPUs: ``device_map=auto`` with ``max_memory={0: "15GiB", 1: "15GiB"}``.
    """
    dtype = pick_dtype(settings.dtype, device)
    kwargs: dict[str, Any] = {"dtype": dtype}
    quant = bitsandbytes_config(settings.quantization, device, dtype, settings)
    if quant is not None:
        kwargs["quantization_config"] = quant
    max_memory = parse_max_memory(settings.max_memory) if settings.max_memory else {}
    if max_memory and device not in {"cuda", "cpu"} and any(isinstance(k, int) for k in max_memory):
        raise DeviceError(f"max_memory names GPU indexes but the device is {device}")
    if settings.device_map:
        kwargs["device_map"] = settings.device_map
    elif max_memory:
        kwargs["device_map"] = "auto"
    elif quant is not None:
        kwargs["device_map"] = {"": 0}
    if max_memory:
        kwargs["max_memory"] = max_memory
    if "device_map" in kwargs and importlib.util.find_spec("accelerate") is None:
        raise ImportError("device_map/max_memory need accelerate: pip install accelerate")
    return kwargs


def needs_move(kwargs: dict[str, Any]) -> bool:
    """True when the loaded model still sits on CPU and must be moved with ``.to(device)``."""
    return "device_map" not in kwargs


# ----------------------------------------------------------------------------- memory

_ST_DTYPE_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
    "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1,
}  # fmt: skip
_CONFIG_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


@dataclass(frozen=True)
class MemoryEstimate:
    parameters: int
    weights_bytes: int  # after dtype/quantization
    needed_bytes: int  # weights x overhead
    available_bytes: int
    where: str  # what "available" measured

    def fits(self) -> bool:
        return self.needed_bytes <= self.available_bytes


def count_parameters(model_dir: Path) -> int:
    """Parameters of a checkpoint without loading it: safetensors headers, else file sizes."""
    model_dir = Path(model_dir)
    st_files = sorted(model_dir.glob("*.safetensors"))
    if st_files:
        total = 0
        for path in st_files:
            with path.open("rb") as fh:
                (length,) = struct.unpack("<Q", fh.read(8))
                header = json.loads(fh.read(length))
            for name, info in header.items():
                if name == "__metadata__":
                    continue
                numel = 1
                for dim in info["shape"]:
                    numel *= int(dim)
                total += numel
        return total
    bin_files = sorted(model_dir.glob("*.bin"))
    bin_files = [p for p in bin_files if p.name != "training_args.bin"]
    if not bin_files:
        raise DeviceError(f"{model_dir} holds no *.safetensors or *.bin weights")
    stored = 2
    config = model_dir / "config.json"
    if config.is_file():
        data = json.loads(config.read_text(encoding="utf-8"))
        name = str(data.get("torch_dtype") or data.get("dtype") or "float16")
        stored = _CONFIG_DTYPE_BYTES.get(name, 2)
    return sum(p.stat().st_size for p in bin_files) // stored


def weights_bytes(parameters: int, dtype: torch.dtype, quantization: str = "none") -> int:
    """Weights in memory: 8-bit ~1 byte and 4-bit ~0.5 byte a parameter, plus the layers
    bitsandbytes leaves in ``dtype`` (embeddings, head, norms: ~10 % of ChatGLM3)."""
    import torch

    per = 4 if dtype == torch.float32 else 2
    if quantization == "8bit":
        return int(parameters * (0.9 * 1 + 0.1 * per))
    if quantization == "4bit":
        return int(parameters * (0.9 * 0.5 + 0.1 * per))
    return parameters * per


def _parse_size(text: str) -> int:
    units = {"GIB": GIB, "MIB": 1024**2, "KIB": 1024, "GB": 10**9, "MB": 10**6, "KB": 10**3}
    raw = text.strip().upper().replace(" ", "")
    for unit, factor in units.items():
        if raw.endswith(unit):
            return int(float(raw[: -len(unit)]) * factor)
    return int(float(raw))


def available_bytes(device: str, max_memory: dict[int | str, str] | None = None) -> tuple[int, str]:
    """Free memory where the weights will go, and a description of what was measured."""
    if device == "cuda":
        import torch

        count = torch.cuda.device_count()
        gpus = [k for k in (max_memory or {}) if isinstance(k, int)] or [0]
        total, parts = 0, []
        for index in gpus:
            if index >= count:
                raise DeviceError(f"max_memory names GPU {index} but torch sees {count} GPU(s)")
            free, _ = torch.cuda.mem_get_info(index)
            if max_memory and index in max_memory:
                free = min(free, _parse_size(max_memory[index]))
            total += free
            parts.append(f"cuda:{index}={free / GIB:.1f}GiB")
        if max_memory and "cpu" in max_memory:  # offload allowed
            cpu_free, _ = available_bytes("cpu")
            cpu = min(cpu_free, _parse_size(max_memory["cpu"]))
            total += cpu
            parts.append(f"cpu={cpu / GIB:.1f}GiB")
        return total, " + ".join(parts) + " free"
    import psutil

    free = int(psutil.virtual_memory().available)
    if device == "mps":
        # unified memory: the GPU share is capped by Metal's recommended working set
        try:
            import torch

            cap = int(torch.mps.recommended_max_memory())
            free = min(free, cap) if cap > 0 else free
        except (AttributeError, RuntimeError):
            pass
        return free, f"unified memory {free / GIB:.1f}GiB available to MPS"
    return free, f"RAM {free / GIB:.1f}GiB available"


def check_memory(
    model_dir: Path,
    dtype: torch.dtype,
    device: str,
    *,
    quantization: str = "none",
    max_memory: dict[str, str] | None = None,
    overhead: float = 1.2,
) -> MemoryEstimate:
    """Raise :class:`InsufficientMemoryError` when the model will not fit; else the estimate.

    ``overhead`` multiplies the weights for activations, KV cache and allocator slack.
    """
    params = count_parameters(Path(model_dir))
    need_weights = weights_bytes(params, dtype, quantization)
    needed = int(need_weights * overhead)
    parsed = parse_max_memory(max_memory) if max_memory else None
    free, where = available_bytes(device, parsed)
    estimate = MemoryEstimate(params, need_weights, needed, free, where)
    logger.info(
        "event=memory_check device=%s params=%d needed_gib=%.1f available_gib=%.1f",
        device,
        params,
        needed / GIB,
        free / GIB,
    )
    if not estimate.fits():
        raise InsufficientMemoryError(_shortage_message(estimate, dtype, device, quantization))
    return estimate


def _shortage_message(est: MemoryEstimate, dtype: Any, device: str, quantization: str) -> str:
    name = str(dtype).replace("torch.", "")
    hints = []
    if device == "cuda":
        if quantization == "none":
            hints.append("KBQA_LLM__QUANTIZATION=8bit (~8 GB for 6B) or 4bit (~5.5 GB)")
        hints.append(
            "spread over GPUs: KBQA_LLM__DEVICE_MAP=auto KBQA_LLM__MAX_MEMORY=0=15GiB,1=15GiB"
        )
    elif device == "mps":
        hints.append("close other apps (unified memory), or use float16 rather than float32")
    else:
        hints.append("free RAM, use a smaller model, or serve from a GPU machine through vLLM")
    return (
        f"not enough memory to load the model on {device}: {est.parameters / 1e9:.2f}B "
        f"parameters in {name}"
        + (f" ({quantization})" if quantization != "none" else "")
        + f" need ~{est.needed_bytes / GIB:.1f} GiB (weights {est.weights_bytes / GIB:.1f} GiB "
        f"plus working memory), {est.where}. Try: " + "; ".join(hints) + "."
    )
