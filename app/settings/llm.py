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


class LlamaCppSettings(Section):
    n_ctx: int = Field(
        4096,
        gt=0,
        description="Context window of one request on llama.cpp, in tokens (each of the "
        "`llm.max_concurrency` slots gets this much KV cache); `llm.context_length` overrides.",
    )
    batch_size: int = Field(
        512, ge=32, description="Prompt tokens llama.cpp processes per batch (n_batch)."
    )
    ubatch_size: int = Field(
        512, ge=32, description="Physical micro-batch of prompt processing (n_ubatch)."
    )
    threads_batch: int | None = Field(
        None, ge=1, description="Threads for prompt processing (default: `llm.threads`)."
    )
    gpu_layers: int = Field(
        0,
        ge=-1,
        description="Layers offloaded to a GPU by a GPU build of xllamacpp (-1: all). The "
        "PyPI wheel is CPU-only; 0 keeps everything on the CPU.",
    )
    cache_prompt: bool = Field(
        False,
        description="Reuse a slot's KV cache for a repeated prompt prefix (only new tokens are "
        "processed). Off by default: a prefix computed in another batch can differ in the "
        "last bits and flip a greedy answer, and one exact answer per question comes first.",
    )
    lookup_draft_tokens: int = Field(
        8,
        ge=0,
        le=64,
        description="Prompt-lookup decoding (llama.cpp's `ngram-simple` self-speculation): up "
        "to this many tokens that followed the last `lookup_ngram` tokens earlier in the prompt "
        "or answer are drafted and checked in one batch, no draft model needed. A "
        "knowledge-base answer copies its passage, so most drafts are accepted: decode "
        "16.1 -> 21.5 tok/s on the 1.5B's KB answers (bench/llm_backends.py), KB answer p50 "
        "7.7 -> 7.0 s (bench/answer_quality.py). Checking drafts in a batch can tip a near-tie "
        "of greedy decoding (299 of 300 answers stayed the same); a repeated question still "
        "gets the same answer. 0: off.",
    )
    lookup_ngram: int = Field(
        3,
        ge=1,
        le=16,
        description="Tokens that must match earlier text before a prompt-lookup draft is made "
        "(`lookup_draft_tokens`).",
    )
    verbose: bool = Field(False, description="Let llama.cpp write its own log to stderr.")


class LLMSettings(Section):
    backend: Literal["auto", "llamacpp", "transformers", "openai", "none"] = Field(
        "auto",
        description="`llamacpp`: a GGUF model on llama.cpp in this process (fast on a CPU; "
        "parallel slots). `transformers`: a local causal LM in this process (CUDA, MPS, "
        "adapters trained here). `openai`: any OpenAI-compatible server (the scale-out path: "
        "kbqa in front of vLLM). `none`: no LLM (retrieval-only service; chat answers 503). "
        "`auto`: llamacpp for a GGUF model (a packaged one or a `.gguf` file) on a machine "
        "without CUDA or MPS, transformers otherwise.",
    )
    model: str = Field(
        "qwen2.5-coder-1.5b-instruct",
        description="Model reference: a local directory, a Hugging Face hub id (loaded from the "
        "local cache), a `.gguf` file (llamacpp), or a packaged offline model "
        "(`qwen2.5-coder-0.5b-instruct`, `qwen2.5-coder-1.5b-instruct`, "
        "`smollm2-135m-instruct`, `gemma-3-270m`).",
        examples=[
            "qwen2.5-coder-1.5b-instruct",
            "/models/chatglm3-6b-hf",
            "/models/qwen2.5-7b-instruct-q4_k_m.gguf",
        ],
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
    max_chars_per_token: int = Field(
        16,
        ge=1,
        description="Messages longer than the context window times this many characters are "
        "refused (413) before they are tokenized: no tokenizer packs more characters into one "
        "token on real text, and tokenizing megabytes would hold the request (and memory) for "
        "minutes before the exact context check refuses it anyway.",
    )
    adapters: Annotated[dict[str, str], NoDecode, BeforeValidator(parse_mapping)] = Field(
        default_factory=dict,
        description="LoRA adapters loaded at start, `name=path` pairs; a request picks one by "
        "model name. The base model stays shared in memory.",
        examples=[{"dengbao-lora": "/models/adapters/dengbao"}],
    )
    prompt_lookup_tokens: int = Field(
        8,
        ge=0,
        le=64,
        description="transformers backend: prompt-lookup decoding (transformers' "
        "`prompt_lookup_num_tokens`): up to this many tokens that followed the answer's last "
        "tokens earlier in the prompt are checked in one forward pass. A knowledge-base answer "
        "copies its passage, so most are accepted (bench/llm_backends.py). 0: off. On llamacpp "
        "see `llm.llamacpp.lookup_draft_tokens`.",
    )
    max_concurrency: int = Field(
        1,
        ge=1,
        description="Generations that run at the same time on the one model instance (on "
        "llamacpp: parallel slots, batched together; answers computed in a batch can differ "
        "from answers computed alone, so keep 1 where repeatable answers matter most).",
    )
    max_queue: int = Field(
        16, ge=0, description="Requests that may wait for a generation slot; beyond: 503."
    )
    queue_timeout_s: float = Field(
        120.0, gt=0, description="Longest a request waits for a slot before a 503."
    )
    retry_after_s: int = Field(5, ge=1, description="Retry-After header sent with a 503.")
    threads: int | None = Field(
        None,
        ge=1,
        description="CPU threads of the model (default: torch's own choice on transformers, "
        "all cores on llamacpp).",
    )
    llamacpp: LlamaCppSettings = Field(
        default_factory=LlamaCppSettings,  # type: ignore[arg-type]
        description="The `llamacpp` backend.",
    )
    openai: OpenAIBackendSettings = Field(
        default_factory=OpenAIBackendSettings,  # type: ignore[arg-type]
        description="The `openai` backend.",
    )
