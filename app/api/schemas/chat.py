"""OpenAI-compatible chat schemas."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class ContentPart(BaseModel):
    type: Literal["text"] = Field(description="Only text parts are supported.")
    text: str


class ChatMessageIn(BaseModel):
    role: Literal["system", "user", "assistant", "developer"] = Field(
        description="Who speaks; `developer` is treated as `system`."
    )
    content: str | list[ContentPart] = Field(
        description="The text, or a list of text parts.", examples=["等级保护2.0有几个级别？"]
    )

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(BaseModel):
    include_usage: bool = Field(False, description="Accepted; usage is always in the last chunk.")


class ChatCompletionRequest(BaseModel):
    # unknown OpenAI parameters (logprobs, user, ...) are accepted and ignored
    model_config = ConfigDict(extra="ignore")

    model: str | None = Field(
        None,
        description="Base model or a loaded adapter's name (see /v1/models); default: base.",
        examples=["smollm2-135m-instruct"],
    )
    messages: list[ChatMessageIn] = Field(min_length=1, description="The conversation so far.")
    stream: bool = Field(False, description="Send the answer as server-sent events.")
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(
        None, ge=0, le=2, description="0 or absent: greedy decoding (same answer every time)."
    )
    top_p: float | None = Field(
        None, gt=0, le=1, description="Nucleus sampling (with temperature)."
    )
    max_tokens: int | None = Field(None, ge=1, description="Answer budget in tokens.")
    max_completion_tokens: int | None = Field(None, ge=1, description="Alias of max_tokens.")
    stop: str | list[str] | None = Field(None, description="Up to 4 stop strings.")
    seed: int | None = Field(None, description="Seed for sampling (temperature > 0).")
    n: int = Field(1, ge=1, le=1, description="Only 1 choice is supported.")

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 4:
            raise ValueError("at most 4 stop strings")
        return value

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatMessageOut(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: ChatMessageOut
    finish_reason: Literal["stop", "length"]


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    parent: str | None = Field(None, description="Base model of an adapter.")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    model_loaded: bool
    model: str | None = None
    backend: str
    device: str | None = None
    extra: dict[str, Any] = Field(default_factory=dict)
