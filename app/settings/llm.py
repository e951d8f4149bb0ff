"""LLM backend settings."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, SecretStr
from pydantic_settings import NoDecode

from app.settings.base import Section, parse_mapping, split_csv


class OpenAIBackendSettings(Section):
    base_url: str = Field(
        "http://127.0.0.1:8000/v1",
        description="Base URL of the OpenAI-compatible server (vLLM, Ollama, another kbqa).",
    )
    api_key: SecretStr = Field(
        SecretStr("EMPTY"), description="API key sent as `Authorization: Bearer` to that server."
    )
    model: str | None = Field(
        None,
        description="Model name to request from the server; defaults to `llm.model`.",
    )
    timeout_s: float = Field(120.0, gt=0, description="Per-request timeout towards the server.")
    context_length: int = Field(
        4096, gt=0, description="Context window of the remote model, in tokens (used to budget)."
    )
    tokenizer: str | None = Field(
        None,
        description="A model reference (local dir, cached hub id or packaged name) whose "
        "tokenizer and chat template count the remote model's tokens exactly, e.g. the "
        "converted ChatGLM3 dir that vLLM serves. Unset: a tokenizer-free estimate (one token "
        "per CJK character, 4/3 per word) that budgets conservatively.",
        examples=["/models/chatglm3-6b-hf"],
    )


class LLMSettings(Section):
    backend: Literal["transformers", "openai", "none"] = Field(
        "transformers",
        description="`transformers`: a local causal LM in this process. `openai`: any "
        "OpenAI-compatible server (the scale-out path: kbqa in front of vLLM). `none`: no LLM "
        "(retrieval-only service; chat answers 503).",
    )
    model: str = Field(
        "smollm2-135m-instruct",
        description="Model reference: a local directory, a Hugging Face hub id (loaded from the "
        "local cache), or a packaged offline model (`smollm2-135m-instruct`, `gemma-3-270m`).",
        examples=["smollm2-135m-instruct", "/models/chatglm3-6b-hf", "Qwen/Qwen2.5-1.5B-Instruct"],
    )
    served_name: str | None = Field(
        None, description="Name under which /v1/models lists the base model (default: `model`)."
    )
    device: Literal["auto", "cuda", "mps", "cpu"] = Field(
        "auto", description="Device for the transformers backend; auto picks cuda > mps > cpu."
    )
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", description="Weights dtype; auto is float16 on CUDA/MPS and float32 on CPU."
    )
    quantization: Literal["none", "8bit", "4bit"] = Field(
        "none", description="bitsandbytes quantization on CUDA (extra `cuda`)."
    )
    bnb_4bit_quant_type: Literal["nf4", "fp4"] = Field(
        "nf4", description="4-bit quantization data type (bitsandbytes)."
    )
    bnb_4bit_double_quant: bool = Field(
        True, description="4-bit: also quantize the quantization constants (saves ~0.4 bit/param)."
    )
    memory_overhead: float = Field(
        1.2,
        ge=1.0,
        description="Memory check before loading: weights size x this factor (activations, KV "
        "cache, allocator slack) must fit in the free memory of the device(s).",
    )
    memory_check: bool = Field(
        True, description="Refuse to load a model that will not fit, with a clear error."
    )
    device_map: str | None = Field(
        None,
        description="transformers `device_map` (e.g. `auto` to spread a model over several GPUs).",
    )
    max_memory: Annotated[dict[str, str], NoDecode, BeforeValidator(parse_mapping)] = Field(
        default_factory=dict,
        description="Per-device memory cap for `device_map`, e.g. `0=15GiB,1=15GiB,cpu=30GiB`.",
    )
    trust_remote_code: bool = Field(
        False, description="Allow a model directory's own Python code. Off: kbqa loads natively."
    )
    prompt_template: str | None = Field(
        None,
        description="Jinja chat template for models without one (overrides the tokenizer's). "
        "Gets `messages` and `add_generation_prompt`.",
    )
    stop: Annotated[list[str], NoDecode, BeforeValidator(split_csv)] = Field(
        default_factory=list, description="Stop strings always applied, besides the request's."
    )
    max_new_tokens: int = Field(
        256, gt=0, description="Default answer budget when a request gives no `max_tokens`."
    )
    max_new_tokens_limit: int = Field(
        2048, gt=0, description="Upper bound a request's `max_tokens` may ask for."
    )
    context_length: int | None = Field(
        None, gt=0, description="Override the model's context window (tokens)."
    )
    adapters: Annotated[dict[str, str], NoDecode, BeforeValidator(parse_mapping)] = Field(
        default_factory=dict,
        description="LoRA adapters loaded at start, `name=path` pairs; a request picks one by "
        "model name. The base model stays shared in memory.",
        examples=[{"dengbao-lora": "/models/adapters/dengbao"}],
    )
    max_concurrency: int = Field(
        1, ge=1, description="Generations that run at the same time on the one model instance."
    )
    max_queue: int = Field(
        16, ge=0, description="Requests that may wait for a generation slot; beyond: 503."
    )
    queue_timeout_s: float = Field(
        120.0, gt=0, description="Longest a request waits for a slot before a 503."
    )
    retry_after_s: int = Field(5, ge=1, description="Retry-After header sent with a 503.")
    threads: int | None = Field(
        None, ge=1, description="torch CPU threads (default: torch's own choice)."
    )
    openai: OpenAIBackendSettings = Field(
        default_factory=OpenAIBackendSettings,  # type: ignore[arg-type]
        description="The `openai` backend.",
    )
