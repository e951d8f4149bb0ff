"""The llama.cpp backend: a GGUF model in llama.cpp's own server, run in-process by xllamacpp.

Why: on a CPU, llama.cpp decodes a quantized model several times faster than transformers
de-quantized to fp32 (bench/llm_backends.py), and its server batches parallel requests
(``llm.max_concurrency`` slots, continuous batching). xllamacpp ships it as a prebuilt wheel.

How it is wired: ``xllamacpp.Server`` loads the model and answers OpenAI-shaped chat requests
through ``handle_chat_completions`` (a call that releases the GIL; streaming through a
callback whose ``True`` return cancels the task). The same server also listens on a random
loopback port, guarded by a random API key, for what the Python binding does not expose:
``/apply-template`` and ``/tokenize``, so prompt-token counts are llama.cpp's own (exact,
chat template included) for the RAG budget. LoRA adapters trained with peft are converted to
GGUF LoRA files once (``app.llm.gguf_lora``), loaded at start with scale 0, and switched on
per request by the ``lora`` field. A knowledge-base answer copies its passage, so llama.cpp
drafts its next tokens from the prompt and checks them in one pass (prompt-lookup decoding,
``llm.llamacpp.lookup_draft_tokens``; ``drafted``/``draft_accepted`` count them).
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

from app.llm.base import (
    BackendUnavailableError,
    ChatMessage,
    GenerationParams,
    InProcessBackend,
    LLMError,
    ModelInfo,
    ModelNotFoundError,
    OverloadedError,
    PromptTooLongError,
    StreamChunk,
)
from app.llm.models import PACKAGED, ModelReferenceError, gguf_of
from app.settings.llm import LLMSettings

logger = logging.getLogger(__name__)

_Emit = Callable[[str], None]


class LlamaCppBackend(InProcessBackend):
    kind = "llamacpp"

    def __init__(
        self,
        server: Any,
        *,
        name: str,
        gguf: Path,
        api_key: str,
        context_length: int,
        stop: list[str] | None = None,
        adapters: list[str] | None = None,
        max_concurrency: int = 1,
        request_timeout_s: float = 60.0,
    ) -> None:
        import httpx

        self.server = server
        self.name = name
        self.gguf = gguf
        self.device = "cpu"  # the PyPI wheel is a CPU build (GPU builds: llm.llamacpp.gpu_layers)
        self._context = context_length
        self.default_stop = list(stop or [])
        self.adapters = list(adapters or [])
        self._http = httpx.Client(
            base_url=server.listening_address,
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=request_timeout_s,
            trust_env=False,  # loopback: never through a proxy
        )
        self._executor = ThreadPoolExecutor(
            max(2, max_concurrency + 1), thread_name_prefix="kbqa-llamacpp"
        )
        self.active = 0  # generations running now (health, tests)
        self.cancelled = 0  # generations stopped because their client went away
        # prompt-lookup decoding (llm.llamacpp.lookup_draft_tokens): tokens drafted, and of
        # them accepted, over all generations (llama.cpp's own timings)
        self.drafted = 0
        self.draft_accepted = 0
        self._lock = threading.Lock()

    # ---------------------------------------------------------------- loading
    @classmethod
    def load(cls, settings: LLMSettings, models_dir: Path) -> LlamaCppBackend:
        try:
            import xllamacpp
        except ImportError as exc:  # pragma: no cover - a declared dependency
            raise ModelReferenceError(
                "the llamacpp backend needs the xllamacpp package: pip install xllamacpp"
            ) from exc
        gguf = gguf_of(settings.model, models_dir)
        if gguf is None:
            raise ModelReferenceError(
                f"llm.backend=llamacpp needs a GGUF file or a packaged model, got "
                f"{settings.model!r}; packaged: {sorted(PACKAGED)}. For a transformers model "
                "directory or hub id use llm.backend=transformers."
            )
        spec = PACKAGED.get(settings.model)
        opts = settings.llamacpp
        n_ctx = settings.context_length or opts.n_ctx
        slots = settings.max_concurrency
        threads = settings.threads or os.cpu_count() or 1
        params = xllamacpp.CommonParams()
        params.model.path = str(gguf)
        params.n_ctx = n_ctx * slots  # every slot gets the whole window
        params.n_parallel = slots
        params.kv_unified = False
        params.n_batch = opts.batch_size
        params.n_ubatch = min(opts.ubatch_size, opts.batch_size)
        params.cpuparams.n_threads = threads
        params.cpuparams_batch.n_threads = opts.threads_batch or threads
        params.n_gpu_layers = opts.gpu_layers
        params.cache_prompt = opts.cache_prompt
        # llama.cpp's cross-slot RAM prompt cache does not record which LoRA adapter a prompt
        # was computed with (it answered from the wrong adapter's cache, llama.cpp #30129),
        # and a reused prefix can flip a greedy answer: off
        params.cache_ram_mib = 0
        if opts.lookup_draft_tokens:
            _prompt_lookup(xllamacpp, params, opts.lookup_ngram, opts.lookup_draft_tokens)
        params.verbosity = 1 if opts.verbose else -1
        params.port = 0  # a free loopback port, for /tokenize and /apply-template only
        api_key = secrets.token_urlsafe(24)
        params.api_keys = [api_key]
        params.use_jinja = True
        template = settings.prompt_template or (spec.chat_template if spec else None)
        if template:
            params.chat_template = template
        adapter_names = _attach_adapters(xllamacpp, params, settings.adapters, gguf)
        start = time.perf_counter()
        try:
            server = xllamacpp.Server(params)
        except RuntimeError as exc:
            raise ModelReferenceError(
                f"llama.cpp could not load {gguf}: {exc} (set llm.llamacpp.verbose=true to see "
                "its log)"
            ) from exc
        logger.info(
            "event=model_loaded backend=llamacpp model=%s path=%s threads=%d slots=%d n_ctx=%d "
            "lookup_draft=%d adapters=%s seconds=%.1f",
            settings.model,
            gguf,
            threads,
            slots,
            n_ctx,
            opts.lookup_draft_tokens,
            ",".join(adapter_names) or "-",
            time.perf_counter() - start,
        )
        stop = [*(spec.stop if spec else ()), *settings.stop]
        return cls(
            server,
            name=settings.served_name or settings.model,
            gguf=gguf,
            api_key=api_key,
            context_length=n_ctx,
            stop=stop,
            adapters=adapter_names,
            max_concurrency=slots,
        )

    # ---------------------------------------------------------------- interface
    def models(self) -> list[ModelInfo]:
        return [ModelInfo(self.name)] + [ModelInfo(a, parent=self.name) for a in self.adapters]

    def context_length(self) -> int:
        return self._context

    def count_tokens(self, text: str) -> int:
        return len(self._tokenize(text, special=False))

    def count_prompt_tokens(self, messages: list[ChatMessage]) -> int:
        return len(self._tokenize(self.render(messages), special=True))

    def processing(self) -> int:
        """llama.cpp slots decoding right now (its own /slots view, not this process's)."""
        slots = self._http.get("/slots").json()
        return sum(1 for slot in slots if slot.get("is_processing"))

    def render(self, messages: list[ChatMessage]) -> str:
        """The prompt as llama.cpp renders it (the GGUF's chat template or the configured)."""
        body = {"messages": [{"role": m.role, "content": m.content} for m in messages]}
        return str(self._post("/apply-template", body)["prompt"])

    def _tokenize(self, text: str, *, special: bool) -> list[int]:
        body = {"content": text, "add_special": special, "parse_special": special}
        return list(self._post("/tokenize", body)["tokens"])

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        import httpx

        try:
            response = self._http.post(path, json=body)
        except httpx.HTTPError as exc:
            raise BackendUnavailableError(f"llama.cpp server not answering: {exc}") from exc
        if response.status_code != 200:
            raise _error_of(response.json() if response.content else {})
        result: dict[str, Any] = response.json()
        return result

    def _room(self, messages: list[ChatMessage], params: GenerationParams) -> int:
        """Answer tokens that fit after the prompt; refuses a prompt that leaves none."""
        prompt = self.count_prompt_tokens(messages)
        room = self._context - prompt
        if room < 1:
            raise PromptTooLongError(
                f"prompt is {prompt} tokens; the model's context window is {self._context}"
            )
        return min(params.max_tokens, room)

    async def check(
        self, messages: list[ChatMessage], params: GenerationParams, model: str | None = None
    ) -> None:
        self.resolve_model(model)
        await asyncio.to_thread(self._room, messages, params)

    def close(self) -> None:
        super().close()
        self._http.close()

    # ---------------------------------------------------------------- generation
    def request_body(
        self, messages: list[ChatMessage], params: GenerationParams, adapter: str | None
    ) -> dict[str, Any]:
        """The llama.cpp server request: OpenAI semantics (no top-k/min-p of its own)."""
        body: dict[str, Any] = {
            "messages": [{"role": m.role, "content": m.content} for m in messages],
            "max_tokens": self._room(messages, params),
            "temperature": params.temperature,
            "top_p": params.top_p,
            "top_k": 0,
            "min_p": 0.0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        stop = [s for s in [*self.default_stop, *params.stop] if s]
        if stop:
            body["stop"] = stop
        if params.seed is not None:
            # llama.cpp's seed is 32-bit and 0xFFFFFFFF means "random": fold the API's
            # 64-bit seed into the rest
            body["seed"] = params.seed % 0xFFFFFFFF
        if self.adapters:
            body["lora"] = [
                {"id": index, "scale": 1.0 if name == adapter else 0.0}
                for index, name in enumerate(self.adapters)
            ]
        return body

    def _generate(
        self,
        messages: list[ChatMessage],
        params: GenerationParams,
        model: str | None,
        emit: _Emit,
        cancel: threading.Event,
    ) -> StreamChunk:
        body = self.request_body(messages, params, self.resolve_model(model))
        with self._lock:
            self.active += 1
        try:
            return self._run(body, emit, cancel)
        finally:
            with self._lock:
                self.active -= 1

    def _run(self, body: dict[str, Any], emit: _Emit, cancel: threading.Event) -> StreamChunk:
        state = _StreamState(emit)

        def on_chunk(data: dict[str, Any]) -> bool:
            state.take(data)
            return cancel.is_set() or state.error is not None

        self.server.handle_chat_completions(body, on_chunk)
        with self._lock:
            self.drafted += state.drafted
            self.draft_accepted += state.draft_accepted
        if state.error is not None:
            raise state.error
        if cancel.is_set() and state.reason is None:
            with self._lock:
                self.cancelled += 1
            logger.info("event=generation_cancelled tokens=%d", state.completion_tokens)
        if state.reason is None and not cancel.is_set():
            raise BackendUnavailableError("llama.cpp ended the answer without a finish reason")
        return StreamChunk("", state.reason or "stop", state.prompt_tokens, state.completion_tokens)


class _StreamState:
    """Turns llama.cpp's OpenAI-shaped chunks into StreamChunks (leading whitespace dropped,
    as the transformers backend does)."""

    def __init__(self, emit: _Emit) -> None:
        self.emit = emit
        self.started = False
        self.reason: Literal["stop", "length"] | None = None
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.drafted = 0
        self.draft_accepted = 0
        self.error: LLMError | None = None

    def take(self, data: dict[str, Any]) -> None:
        if "error" in data or ("code" in data and "message" in data):
            self.error = _error_of(data)
            return
        usage = data.get("usage")
        if usage:
            self.prompt_tokens = int(usage.get("prompt_tokens", 0))
            self.completion_tokens = int(usage.get("completion_tokens", 0))
        timings = data.get("timings") or {}
        if "draft_n" in timings:
            self.drafted = int(timings["draft_n"])
            self.draft_accepted = int(timings.get("draft_n_accepted", 0))
        for choice in data.get("choices") or []:
            text = (choice.get("delta") or {}).get("content") or ""
            if not self.started:
                text = text.lstrip()
                self.started = bool(text)
            if text:
                self.emit(text)
            if choice.get("finish_reason"):
                self.reason = "length" if choice["finish_reason"] == "length" else "stop"


def _error_of(data: dict[str, Any]) -> LLMError:
    """llama.cpp's error body as the backend error the API maps to a status."""
    error = data.get("error", data)
    if not isinstance(error, dict):
        return LLMError(str(error))
    message = str(error.get("message") or error)
    kind = str(error.get("type") or "")
    code = int(error.get("code") or 500)
    if kind == "exceed_context_size_error" or ("context" in message.lower() and code == 400):
        return PromptTooLongError(message)
    if code == 404:
        return ModelNotFoundError(message)
    if code in {429, 503}:
        return OverloadedError(message)
    return LLMError(f"llama.cpp: {message}")


def _prompt_lookup(xllamacpp: Any, params: Any, ngram: int, draft_tokens: int) -> None:
    """Prompt-lookup decoding: llama.cpp drafts the ``draft_tokens`` tokens that followed the
    last earlier occurrence of the answer's last ``ngram`` tokens (in the prompt or the answer
    so far) and checks them in one batch; no draft model."""
    spec = params.speculative
    spec.types = [xllamacpp.common_speculative_type.COMMON_SPECULATIVE_TYPE_NGRAM_SIMPLE]
    spec.ngram_simple.size_n = ngram
    spec.ngram_simple.size_m = draft_tokens
    spec.draft.n_max = draft_tokens


def _attach_adapters(
    xllamacpp: Any, params: Any, adapters: dict[str, str], base: Path
) -> list[str]:
    """Convert each peft adapter to a GGUF LoRA (once) and load it at scale 0; a request
    picks its adapter by model name."""
    if not adapters:
        return []
    from app.llm.gguf_lora import ensure_gguf_adapter

    infos = []
    for name, path in adapters.items():
        if not Path(path).is_dir():
            raise FileNotFoundError(f"adapter {name!r}: directory {path} not found")
        info = xllamacpp.CommonAdapterLoraInfo(str(ensure_gguf_adapter(Path(path), base)), 0.0)
        infos.append(info)
    params.lora_adapters = infos
    params.lora_init_without_apply = True
    return list(adapters)
