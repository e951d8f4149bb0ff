"""The in-process backend: a local causal LM through transformers, LoRA adapters by peft."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from app.llm.base import (
    ChatMessage,
    GenerationParams,
    InProcessBackend,
    ModelInfo,
    PromptTooLongError,
    StreamChunk,
)
from app.llm.device import check_memory, load_kwargs, needs_move, pick_device, pick_dtype
from app.llm.prompting import encode_prompt, render_prompt
from app.settings.llm import LLMSettings

logger = logging.getLogger(__name__)


@dataclass
class _Prepared:
    input_ids: list[int]
    max_new_tokens: int
    adapter: str | None


class _TextCollector:
    """Receives generated token ids, decodes incrementally, applies stop strings.

    Text that could still be the start of a stop string is held back until it cannot.
    """

    def __init__(self, tokenizer: Any, stops: list[str], emit: Callable[[str], None]) -> None:
        self.tokenizer = tokenizer
        self.stops = [s for s in stops if s]
        self.emit = emit
        self.ids: list[int] = []
        self.sent = 0
        self.stopped = False
        self._skip_prompt = True

    def put(self, value: Any) -> None:
        if self._skip_prompt:  # generate() first hands over the prompt
            self._skip_prompt = False
            return
        if self.stopped:
            return
        self.ids.extend(int(i) for i in value.reshape(-1).tolist())
        text = self._decode()
        for stop in self.stops:
            index = text.find(stop)
            if index != -1:
                text = text[:index]
                self.stopped = True
        if self.stopped:
            self._send(text, len(text))
            return
        if text.endswith("\ufffd"):  # a multi-byte character not complete yet
            return
        self._send(text, len(text) - self._holdback(text))

    def end(self) -> None:
        if not self.stopped:
            # an answer cut by max_tokens inside a multi-byte character ends in U+FFFD
            # replacement marks: drop them rather than send a broken character
            text = self._decode().rstrip("\ufffd")
            self._send(text, len(text))

    def _decode(self) -> str:
        # Leading whitespace is dropped: ChatGLM3 opens every answer with its (empty)
        # metadata line, and other chat models often start with a space or newline.
        return str(self.tokenizer.decode(self.ids, skip_special_tokens=True)).lstrip()

    def _send(self, text: str, upto: int) -> None:
        if upto > self.sent:
            self.emit(text[self.sent : upto])
            self.sent = upto

    def _holdback(self, text: str) -> int:
        longest = 0
        for stop in self.stops:
            for k in range(min(len(stop) - 1, len(text)), 0, -1):
                if text.endswith(stop[:k]):
                    longest = max(longest, k)
                    break
        return longest


class TransformersBackend(InProcessBackend):
    kind = "transformers"

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        name: str,
        device: str,
        chat_template: str | None = None,
        stop: list[str] | None = None,
        context_length: int | None = None,
        adapters: list[str] | None = None,
        max_concurrency: int = 1,
        prompt_lookup_tokens: int = 0,
    ) -> None:
        self.model = model
        self.prompt_lookup_tokens = prompt_lookup_tokens
        self.tokenizer = tokenizer
        self.name = name
        self.device = device
        self.chat_template = chat_template
        self.default_stop = list(stop or [])
        self.adapters = list(adapters or [])
        config = getattr(model, "config", None)
        self._context: int = int(
            context_length  # type: ignore[arg-type]
            or getattr(config, "max_position_embeddings", None)
            or getattr(tokenizer, "model_max_length", 2048)
        )
        self._executor = ThreadPoolExecutor(max_concurrency, thread_name_prefix="kbqa-gen")
        # Switching peft adapters changes model-wide state: with adapters loaded, one
        # generation runs at a time on the shared base model.
        self._adapter_lock = threading.Lock() if self.adapters else None
        eos = model.generation_config.eos_token_id
        self.active = 0  # generations running now (health, tests)
        self.cancelled = 0  # generations stopped because their client went away
        self._eos_ids = {eos} if isinstance(eos, int) else set(eos or [])
        if tokenizer.eos_token_id is not None:
            self._eos_ids.add(tokenizer.eos_token_id)

    # ---------------------------------------------------------------- loading
    @classmethod
    def load(cls, settings: LLMSettings, models_dir: Path) -> TransformersBackend:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from app.llm.models import resolve_model

        if settings.threads:
            torch.set_num_threads(settings.threads)
        resolved = resolve_model(settings.model, models_dir)
        device = pick_device(settings.device)
        kwargs = load_kwargs(settings, device)
        if settings.memory_check:
            check_memory(
                resolved.path,
                pick_dtype(settings.dtype, device),
                device,
                quantization=settings.quantization,
                max_memory=settings.max_memory or None,
                overhead=settings.memory_overhead,
            )
        start = time.perf_counter()
        tokenizer = AutoTokenizer.from_pretrained(
            resolved.path, trust_remote_code=settings.trust_remote_code
        )
        model: Any = AutoModelForCausalLM.from_pretrained(
            resolved.path, trust_remote_code=settings.trust_remote_code, **kwargs
        )
        if needs_move(kwargs):
            model.to(device)
        model.eval()
        adapter_names: list[str] = []
        if settings.adapters:
            from peft import PeftModel

            for index, (adapter, path) in enumerate(settings.adapters.items()):
                if not Path(path).is_dir():
                    raise FileNotFoundError(f"adapter {adapter!r}: directory {path} not found")
                if index == 0:
                    model = PeftModel.from_pretrained(model, path, adapter_name=adapter)
                else:
                    model.load_adapter(path, adapter_name=adapter)
                adapter_names.append(adapter)
            model.eval()
        logger.info(
            "event=model_loaded model=%s path=%s device=%s dtype=%s adapters=%s seconds=%.1f",
            settings.model,
            resolved.path,
            device,
            kwargs.get("dtype"),
            ",".join(adapter_names) or "-",
            time.perf_counter() - start,
        )
        return cls(
            model,
            tokenizer,
            name=settings.served_name or settings.model,
            device=device,
            chat_template=settings.prompt_template or resolved.chat_template,
            stop=[*resolved.stop, *settings.stop],
            context_length=settings.context_length,
            adapters=adapter_names,
            max_concurrency=settings.max_concurrency,
            prompt_lookup_tokens=settings.prompt_lookup_tokens,
        )

    # ---------------------------------------------------------------- interface
    def models(self) -> list[ModelInfo]:
        return [ModelInfo(self.name)] + [ModelInfo(a, parent=self.name) for a in self.adapters]

    def context_length(self) -> int:
        return self._context

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def count_prompt_tokens(self, messages: list[ChatMessage]) -> int:
        return len(encode_prompt(self.tokenizer, self.render(messages)))

    def render(self, messages: list[ChatMessage]) -> str:
        return render_prompt(self.tokenizer, messages, self.chat_template)

    def prepare(
        self, messages: list[ChatMessage], params: GenerationParams, model: str | None
    ) -> _Prepared:
        adapter = self.resolve_model(model)
        ids = encode_prompt(self.tokenizer, self.render(messages))
        room = self._context - len(ids)
        if room < 1:
            raise PromptTooLongError(
                f"prompt is {len(ids)} tokens; the model's context window is {self._context}"
            )
        return _Prepared(ids, min(params.max_tokens, room), adapter)

    async def check(
        self, messages: list[ChatMessage], params: GenerationParams, model: str | None = None
    ) -> None:
        await asyncio.get_running_loop().run_in_executor(
            None, self.prepare, messages, params, model
        )

    # ---------------------------------------------------------------- generation
    def _generate(
        self,
        messages: list[ChatMessage],
        params: GenerationParams,
        model: str | None,
        emit: Callable[[str], None],
        cancel: threading.Event,
    ) -> StreamChunk:
        self.active += 1
        try:
            return self._generate_inner(messages, params, model, emit, cancel)
        finally:
            self.active -= 1

    def _generate_inner(
        self,
        messages: list[ChatMessage],
        params: GenerationParams,
        model: str | None,
        emit: Callable[[str], None],
        cancel: threading.Event,
    ) -> StreamChunk:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        prepared = self.prepare(messages, params, model)
        collector = _TextCollector(self.tokenizer, [*self.default_stop, *params.stop], emit)

        class _Stop(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                done = cancel.is_set() or collector.stopped
                return torch.full((input_ids.shape[0],), done, dtype=torch.bool)

        device = self._input_device()
        input_ids = torch.tensor([prepared.input_ids], device=device)
        kwargs: dict[str, Any] = {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "max_new_tokens": prepared.max_new_tokens,
            "streamer": collector,
            "stopping_criteria": StoppingCriteriaList([_Stop()]),
            "pad_token_id": self.tokenizer.pad_token_id
            if self.tokenizer.pad_token_id is not None
            else next(iter(self._eos_ids), 0),
        }
        if params.temperature > 0:
            kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if self.prompt_lookup_tokens:
            # the answer's next tokens drafted from where its last tokens stand in the prompt
            # (a knowledge-base answer copies its passage), checked in one forward pass
            kwargs["prompt_lookup_num_tokens"] = self.prompt_lookup_tokens

        with self._adapter_lock or _nullcontext():
            if self.adapters:
                if prepared.adapter is None:
                    context: Any = self.model.disable_adapter()
                else:
                    self.model.set_adapter(prepared.adapter)
                    context = _nullcontext()
            else:
                context = _nullcontext()
            with context, torch.inference_mode():
                if params.seed is not None:
                    torch.manual_seed(params.seed)
                output = self.model.generate(**kwargs)
        collector.end()
        new_tokens = output.shape[-1] - len(prepared.input_ids)
        if cancel.is_set():
            self.cancelled += 1
            logger.info("event=generation_cancelled tokens=%d", new_tokens)
        last = int(output[0, -1]) if new_tokens else None
        reason: Literal["stop", "length"] = "stop"
        if (
            not collector.stopped
            and not cancel.is_set()
            and new_tokens >= prepared.max_new_tokens
            and last not in self._eos_ids
        ):
            reason = "length"
        return StreamChunk("", reason, len(prepared.input_ids), int(new_tokens))

    def _input_device(self) -> Any:
        try:
            return self.model.get_input_embeddings().weight.device
        except AttributeError:
            return self.device


class _nullcontext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
