"""Device, dtype, quantization and memory decisions (app/llm/device.py), on a CPU machine.

CUDA and MPS do not exist here: where a test needs them, their availability (and CUDA's
memory figures) are monkeypatched, and the test name says so.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from app.llm import device as dev
from app.llm.device import (
    DeviceError,
    InsufficientMemoryError,
    check_memory,
    count_parameters,
    load_kwargs,
    needs_move,
    parse_max_memory,
    pick_device,
    pick_dtype,
    pick_training_precision,
)
from app.settings.llm import LLMSettings


def fake_availability(monkeypatch: pytest.MonkeyPatch, *, cuda: bool, mps: bool) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)


def test_pick_device_on_this_machine() -> None:
    cuda, mps = torch.cuda.is_available(), torch.backends.mps.is_available()
    assert pick_device("auto") == ("cuda" if cuda else "mps" if mps else "cpu")
    assert pick_device("cpu") == "cpu"


@pytest.mark.parametrize(
    ("cuda", "mps", "expected"),
    [(True, True, "cuda"), (False, True, "mps"), (False, False, "cpu")],
)
def test_pick_device_auto_order_with_monkeypatched_availability(
    monkeypatch: pytest.MonkeyPatch, cuda: bool, mps: bool, expected: str
) -> None:
    fake_availability(monkeypatch, cuda=cuda, mps=mps)
    assert pick_device("auto") == expected


def test_pick_device_explicit_but_absent_with_monkeypatched_availability(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_availability(monkeypatch, cuda=False, mps=False)
    with pytest.raises(DeviceError, match="no CUDA device"):
        pick_device("cuda")
    with pytest.raises(DeviceError, match="mps"):
        pick_device("mps")
    with pytest.raises(DeviceError, match="unknown device"):
        pick_device("tpu")


@pytest.mark.parametrize(
    ("setting", "device", "expected"),
    [
        ("auto", "cuda", torch.float16),
        ("auto", "mps", torch.float16),
        ("auto", "cpu", torch.float32),
        ("bfloat16", "mps", torch.bfloat16),
        ("float32", "cuda", torch.float32),
        ("bfloat16", "cpu", torch.bfloat16),
    ],
)
def test_pick_dtype(setting: str, device: str, expected: torch.dtype) -> None:
    assert pick_dtype(setting, device) == expected


def test_load_kwargs_cpu_default_moves_the_model() -> None:
    kwargs = load_kwargs(LLMSettings(), "cpu")
    assert kwargs == {"dtype": torch.float32}
    assert needs_move(kwargs)


def test_load_kwargs_two_16gb_gpus() -> None:
    settings = LLMSettings(device_map="auto", max_memory={"0": "15GiB", "1": "15GiB"})
    kwargs = load_kwargs(settings, "cuda")
    assert kwargs["dtype"] == torch.float16
    assert kwargs["device_map"] == "auto"
    assert kwargs["max_memory"] == {0: "15GiB", 1: "15GiB"}
    assert not needs_move(kwargs)
    # max_memory alone implies an automatic device map (it only acts through one)
    only_caps = load_kwargs(LLMSettings(max_memory={"0": "15GiB", "cpu": "30GiB"}), "cuda")
    assert only_caps["device_map"] == "auto"
    assert only_caps["max_memory"] == {0: "15GiB", "cpu": "30GiB"}


def test_max_memory_keys() -> None:
    assert parse_max_memory({"cuda:1": "7GiB", "cpu": "20GiB"}) == {1: "7GiB", "cpu": "20GiB"}
    with pytest.raises(DeviceError, match="GPU index"):
        parse_max_memory({"gpu0": "1GiB"})


@pytest.mark.parametrize("quant", ["4bit", "8bit"])
@pytest.mark.parametrize("device", ["cpu", "mps"])
def test_quantization_off_cuda_is_a_clear_error(quant: str, device: str) -> None:
    with pytest.raises(DeviceError, match="needs a CUDA GPU"):
        load_kwargs(LLMSettings(quantization=quant), device)


def test_quantization_without_bitsandbytes_names_the_cuda_extra_with_monkeypatched_absence(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        dev.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "bitsandbytes" else real(name, *a),
    )
    with pytest.raises(ImportError, match=r"kbqa\[cuda\]"):
        load_kwargs(LLMSettings(quantization="4bit"), "cuda")


def test_quantization_config_on_cuda_with_monkeypatched_bitsandbytes_presence(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str, *args: Any) -> Any:
        return object() if name == "bitsandbytes" else real(name, *args)

    monkeypatch.setattr(dev.importlib.util, "find_spec", find_spec)
    four = load_kwargs(LLMSettings(quantization="4bit"), "cuda")
    config = four["quantization_config"]
    assert config.load_in_4bit and config.bnb_4bit_quant_type == "nf4"
    assert config.bnb_4bit_compute_dtype == torch.float16
    assert four["device_map"] == {"": 0}
    eight = load_kwargs(LLMSettings(quantization="8bit"), "cuda")
    assert eight["quantization_config"].load_in_8bit


def _tiny_safetensors(directory: Path, numel: int) -> Path:
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    save_file({"a": torch.zeros(numel // 2), "b": torch.zeros(numel - numel // 2)},
              str(directory / "model.safetensors"))  # fmt: skip
    return directory


def test_count_parameters_from_headers_and_bin_sizes(tmp_path: Path) -> None:
    assert count_parameters(_tiny_safetensors(tmp_path / "st", 1000)) == 1000
    bins = tmp_path / "bin"
    bins.mkdir()
    (bins / "config.json").write_text(json.dumps({"torch_dtype": "float16"}))
    (bins / "pytorch_model-00001-of-00001.bin").write_bytes(b"\0" * 4000)
    assert count_parameters(bins) == 2000
    with pytest.raises(DeviceError, match="no"):
        count_parameters(tmp_path / "st" / "..")


def test_check_memory_fits_on_this_cpu(tmp_path: Path) -> None:
    estimate = check_memory(_tiny_safetensors(tmp_path, 1000), torch.float32, "cpu")
    assert estimate.parameters == 1000
    assert estimate.weights_bytes == 4000 and estimate.needed_bytes == 4800
    assert estimate.fits()


def test_check_memory_shortage_on_cuda_with_monkeypatched_memory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    model = _tiny_safetensors(tmp_path, 6_000)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i: (5_000, 16_000))
    with pytest.raises(InsufficientMemoryError) as info:
        check_memory(model, torch.float16, "cuda")  # 12 kB x 1.2 > 5 kB on GPU 0
    message = str(info.value)
    assert "not enough memory" in message and "cuda:0" in message
    assert "QUANTIZATION=8bit" in message and "MAX_MEMORY=0=15GiB,1=15GiB" in message
    # spread over the two GPUs, capped by max_memory: 2 x 5 kB free is still short ...
    with pytest.raises(InsufficientMemoryError):
        check_memory(model, torch.float16, "cuda", max_memory={"0": "15GiB", "1": "15GiB"})
    # ... and 4-bit fits: 6k params x (0.9 x 0.5 + 0.1 x 2) x 1.2 = 4.7 kB < 10 kB
    estimate = check_memory(
        model, torch.float16, "cuda", quantization="4bit", max_memory={"0": "15GiB", "1": "15GiB"}
    )
    assert estimate.available_bytes == 10_000
    with pytest.raises(DeviceError, match="GPU 3"):
        check_memory(model, torch.float16, "cuda", max_memory={"3": "15GiB"})


def test_check_memory_shortage_on_cpu_with_monkeypatched_ram(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import psutil

    class FakeVirtualMemory:
        available = 1_000

    monkeypatch.setattr(psutil, "virtual_memory", lambda: FakeVirtualMemory())
    with pytest.raises(InsufficientMemoryError, match="RAM"):
        check_memory(_tiny_safetensors(tmp_path, 1000), torch.float32, "cpu")


def test_training_precision_with_monkeypatched_bf16_support(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """finetune.precision: auto is fp32 off CUDA, bf16 on a CUDA GPU that has it, else fp16;
    fp16/bf16 asked for on a CPU or MPS are refused with the way out."""
    assert pick_training_precision("auto", "cpu") == "fp32"
    assert pick_training_precision("auto", "mps") == "fp32"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert pick_training_precision("auto", "cuda") == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert pick_training_precision("auto", "cuda") == "fp16"
    assert pick_training_precision("fp16", "cuda") == "fp16"
    for device in ("cpu", "mps"):
        with pytest.raises(DeviceError, match="use fp32"):
            pick_training_precision("bf16", device)
