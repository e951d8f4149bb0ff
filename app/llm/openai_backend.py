"""The remote backend: any OpenAI-compatible server (vLLM, Ollama, another kbqa)."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal

from app.llm.base import (
    BackendUnavailableError,
    ChatMessage,
    Completion,
    GenerationParams,
    LLMBackend,
    ModelInfo,
    ModelNotFoundError,
    OverloadedError,
    PromptTooLongError,
    StreamChunk,
)
from app.llm.prompting import encode_prompt, render_prompt
from app.settings.llm import LLMSettings

logger = logging.getLogger(__name__)
_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
_WORD = re.compile(r"[A-Za-z0-9_]+|[^\sA-Za-z0-9_\u3400-\u9fff\uf900-\ufaff]")


def estimate_tokens(text: str) -> int:
    """A tokenizer-free estimate: one per CJK character, 4/3 per word or symbol."""
    cjk = len(_CJK.findall(text))
    other = len(_WORD.findall(_CJK.sub(" ", text)))
    return cjk + (other * 4 + 2) // 3


class OpenAIBackend(LLMBackend):
    kind = "openai"

    def __init__(
        self,
        client: Any,
        *,
        name: str,
        remote_model: str,
        context_length: int,
        tokenizer: Any = None,
        chat_template: str | None = None,
    ) -> None:
        self.client = client
        self.name = name
        self.remote_model = remote_model
        self.device = str(client.base_url)
        self._context = context_length
        self._remote_models: list[str] = []
        self.tokenizer = tokenizer  # counts tokens exactly when the remote model's is known
        self.chat_template = chat_template

    @classmethod
    def from_settings(cls, settings: LLMSettings, models_dir: Path | None = None) -> OpenAIBackend:
        from openai import AsyncOpenAI

        tokenizer, template = None, settings.prompt_template
        if settings.openai.tokenizer:
            from transformers import AutoTokenizer

            from app.llm.models import resolve_model

            if models_dir is None:
                raise ValueError("llm.openai.tokenizer needs the models dir to resolve it")
            resolved = resolve_model(settings.openai.tokenizer, models_dir)
            tokenizer = AutoTokenizer.from_pretrained(
                resolved.path, trust_remote_code=settings.trust_remote_code
            )
            template = template or resolved.chat_template

        remote = settings.openai.model or settings.model
        client = AsyncOpenAI(
            base_url=settings.openai.base_url,
            api_key=settings.openai.api_key.get_secret_value(),
            timeout=settings.openai.timeout_s,
            max_retries=0,
        )
        return cls(
            client,
            name=settings.served_name or remote,
            remote_model=remote,
            context_length=settings.context_length or settings.openai.context_length,
            tokenizer=tokenizer,
            chat_template=template,
        )

    async def start(self) -> None:
        """Learn which models the server has (adapters served by vLLM show up here)."""
        try:
            page = await self.client.models.list()
            self._remote_models = [m.id for m in page.data]
        except Exception as exc:
            logger.warning("event=remote_models_unavailable url=%s error=%r", self.device, exc)

    def models(self) -> list[ModelInfo]:
        others = [m for m in self._remote_models if m not in {self.remote_model, self.name}]
        return [ModelInfo(self.name)] + [ModelInfo(m, parent=self.name) for m in others]

    def context_length(self) -> int:
        return self._context

    def count_tokens(self, text: str) -> int:
        if self.tokenizer is None:
            return estimate_tokens(text)
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def count_prompt_tokens(self, messages: list[ChatMessage]) -> int:
        if self.tokenizer is None:
            return super().count_prompt_tokens(messages)
        prompt = render_prompt(self.tokenizer, messages, self.chat_template)
        return len(encode_prompt(self.tokenizer, prompt))

    def _remote_name(self, model: str | None) -> str:
        adapter = self.resolve_model(model)
        return self.remote_model if adapter is None else adapter

    def _request(
        self, messages: list[ChatMessage], params: GenerationParams, model: str | None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self._remote_name(model),
            "messages": [{"role": m.role, "content": m.content} for m in messages],
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
        }
        if params.stop:
            body["stop"] = params.stop
        if params.seed is not None:
            body["seed"] = params.seed
        return body

    async def complete(
        self, messages: list[ChatMessage], params: GenerationParams, model: str | None = None
    ) -> Completion:
        body = self._request(messages, params, model)
        try:
            response = await self.client.chat.completions.create(**body)
        except Exception as exc:
            raise _map_error(exc) from exc
        choice = response.choices[0]
        usage = response.usage
        return Completion(
            choice.message.content or "",
            _reason(choice.finish_reason),
            usage.prompt_tokens if usage else 0,
            usage.completion_tokens if usage else 0,
        )

    async def stream(
        self, messages: list[ChatMessage], params: GenerationParams, model: str | None = None
    ) -> AsyncIterator[StreamChunk]:
        body = self._request(messages, params, model)
        try:
            stream = await self.client.chat.completions.create(
                **body, stream=True, stream_options={"include_usage": True}
            )
        except Exception as exc:
            raise _map_error(exc) from exc
        reason: Literal["stop", "length"] | None = None
        prompt_tokens = completion_tokens = 0
        try:
            async for chunk in stream:
                if chunk.usage is not None:
                    prompt_tokens = chunk.usage.prompt_tokens
                    completion_tokens = chunk.usage.completion_tokens
                for choice in chunk.choices:
                    if choice.delta and choice.delta.content:
                        yield StreamChunk(choice.delta.content)
                    if choice.finish_reason:
                        reason = _reason(choice.finish_reason)
        except Exception as exc:
            raise _map_error(exc) from exc
        finally:
            await stream.close()  # closing early tells the server to stop generating
        yield StreamChunk("", reason or "stop", prompt_tokens, completion_tokens)

    def close(self) -> None:
        pass


def _reason(value: str | None) -> Literal["stop", "length"]:
    return "length" if value == "length" else "stop"


def _map_error(exc: Exception) -> Exception:
    import openai

    message = getattr(exc, "message", None) or str(exc)
    if isinstance(exc, openai.NotFoundError):
        return ModelNotFoundError(message)
    if isinstance(exc, openai.APIStatusError):
        if exc.status_code == 413 or "context" in message.lower():
            return PromptTooLongError(message)
        if exc.status_code in {429, 503}:
            return OverloadedError(message)
    if isinstance(exc, openai.APIConnectionError | openai.APITimeoutError):
        return BackendUnavailableError(f"LLM server unreachable: {message}")
    return exc
