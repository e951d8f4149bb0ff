"""OpenAI-compatible chat schemas."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.api.schemas.passage import PassageOut
from app.api.schemas.text import Seed, Text
from app.rag.passage import Passage
from app.settings.base import SearchMode

# declared in the schema (maxItems), so a client generated from the spec knows the limit
StopList = Annotated[list[Text], Field(max_length=4)]


class ContentPart(BaseModel):
    type: Literal["text"] = Field(description="Only text parts are supported.")
    text: Text


class ChatMessageIn(BaseModel):
    role: Literal["system", "user", "assistant", "developer"] = Field(
        description="Who speaks; `developer` is treated as `system`."
    )
    content: Text | list[ContentPart] = Field(
        description="The text, or a list of text parts.", examples=["等级保护2.0有几个级别？"]
    )

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(BaseModel):
    include_usage: bool = Field(False, description="Accepted; usage is always in the last chunk.")


AnswerModeField = Literal["generate", "passages"]


class RagFields(BaseModel):
    """The knowledge-base knobs shared by /v1/chat/completions and /ask."""

    top_k: int | None = Field(
        None, ge=1, le=50, description="Passages used for the answer (default: settings)."
    )
    score_threshold: float | None = Field(
        None, ge=0, le=1, description="Minimum search score (0-1) of a passage."
    )
    search_mode: SearchMode | None = Field(
        None, description="dense, keyword or hybrid (default: retrieval.mode)."
    )
    answer_mode: AnswerModeField = Field(
        "generate",
        description="`generate`: the LLM answers from the passages. `passages`: retrieval only, "
        "the best passages with no LLM call.",
    )
    return_sources: bool = Field(True, description="Send the passages used as `sources`.")


class ChatFields(BaseModel):
    """The OpenAI fields of a chat completion request (and ``knowledge_base``)."""

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
    stop: Text | StopList | None = Field(None, description="Up to 4 stop strings.")
    seed: Seed | None = None
    n: int = Field(1, ge=1, le=1, description="Only 1 choice is supported.")
    # kbqa extensions (the openai SDK sends them with `extra_body`)
    knowledge_base: str | list[str] | None = Field(
        None,
        description="Answer from this knowledge base (or these): retrieval, numbered passages, "
        "citations, `sources` in the response. Absent: the plain model.",
        examples=["dengbao"],
    )


# On /v1/chat/completions the knowledge-base knobs apply only with `knowledge_base`; their
# documentation there says so (the fields themselves are RagFields').
_WITH_KNOWLEDGE_BASE = {
    "top_k": "Passages used (knowledge_base).",
    "score_threshold": "Minimum search score of a passage (knowledge_base).",
    "search_mode": "Search mode (knowledge_base).",
    "answer_mode": "`passages`: retrieval only, no LLM call (knowledge_base).",
    "return_sources": "Include `sources` (knowledge_base).",
}


def _describe_with_knowledge_base(schema: dict[str, Any]) -> None:
    for name, description in _WITH_KNOWLEDGE_BASE.items():
        schema["properties"][name]["description"] = description


# The OpenAI fields, then the knowledge-base knobs (RagFields, shared with /ask), in this order
# in the schema. Unknown OpenAI parameters (logprobs, user, ...) are accepted and ignored.
class ChatCompletionRequest(RagFields, ChatFields):
    model_config = ConfigDict(extra="ignore", json_schema_extra=_describe_with_knowledge_base)

    def knowledge_bases(self) -> list[str]:
        if self.knowledge_base is None:
            return []
        if isinstance(self.knowledge_base, str):
            return [self.knowledge_base]
        return list(self.knowledge_base)

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


class Source(PassageOut):
    """A passage of an answer: the search hit's fields and how it was used."""

    truncated: bool = Field(False, description="Cut at a sentence end to fit the context.")
    relevant: bool | None = Field(
        None, description="answer_mode=passages: whether it passes the relevance gate."
    )

    @classmethod
    def of(cls, passage: Passage) -> Source:
        return cls.model_validate(passage.to_dict())


class Timings(BaseModel):
    retrieval_ms: float = Field(description="Search (embedding the query included).")
    prompt_ms: float = Field(description="Fitting passages into the context budget.")
    ttft_ms: float | None = Field(None, description="Request start to first answer token.")
    generation_ms: float = Field(description="LLM time (queue wait, prefill, decoding).")
    total_ms: float
    tokens_per_s: float = Field(description="Answer tokens per second of generation.")


class KBChatCompletionResponse(ChatCompletionResponse):
    """A chat completion answered from knowledge bases."""

    sources: list[Source] = Field(default_factory=list)
    refused: bool = Field(
        False, description="No passage passed the threshold: the fixed refusal, no LLM call."
    )
    grounded: bool = Field(True, description="False when answered by the model alone.")
    timings: Timings | None = None


class AskRequest(RagFields):
    question: Text = Field(min_length=1, examples=["三级系统的身份鉴别有哪些要求？"])
    knowledge_bases: list[str] = Field(
        default_factory=list, description="More knowledge bases searched with the one in the URL."
    )
    history: list[ChatMessageIn] = Field(
        default_factory=list, description="Earlier turns (user/assistant) for a follow-up."
    )
    model: str | None = Field(None, description="Base model or adapter name (/v1/models).")
    max_tokens: int | None = Field(None, ge=1, description="Answer budget in tokens.")
    temperature: float | None = Field(None, ge=0, le=2, description="0 or absent: greedy.")
    seed: Seed | None = None


class AskResponse(BaseModel):
    answer: str
    sources: list[Source]
    refused: bool
    grounded: bool
    model: str
    finish_reason: str
    timings: Timings
    usage: Usage
