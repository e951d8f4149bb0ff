"""Knowledge-base answer settings: prompts, context budget, relevance gate, refusal, reranker."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from app.settings.base import Section

# Tuned for the small CPU default (bench/answer_quality.py): the passages first, the question
# last, and the passage's own sentence as the answer. On 40 cmrc2018-trial questions:
# Qwen2.5-Coder-1.5B contains 0.55 / F1 0.64; with PROMPT_ZH_CITE Qwen-0.5B gave 0.05 / 0.04.
# No citation or refusal instructions: a small model answers "[1]" alone, or refuses when the
# answer is in passage 1; the relevance gate refuses off-topic questions before the model is
# called, and the sources come with every answer. Larger models (ChatGLM3-6B) can be asked
# to cite: see PROMPT_ZH_CITE.
PROMPT_ZH = (
    "资料：\n{context}\n\n"
    "根据上面的资料回答问题。找出资料中回答这个问题的原句，照原文写出，不要改写，不要解释。\n"
    "问题：{question}"
)
PROMPT_EN = (
    "Passages:\n{context}\n\n"
    "Answer the question from the passages above: find the sentence of the passages that "
    "answers it and write it out as it stands, without rewording or explaining.\n"
    "Question: {question}"
)
PROMPT_ZH_CITE = (
    "请只根据下面编号的资料回答问题。回答时用 [1]、[2] 这样的编号标明依据的资料。"
    "如果资料中没有答案，就回答“根据已有资料无法回答该问题”，不要编造。\n\n"
    "资料：\n{context}\n\n问题：{question}\n回答："
)
PASSAGE_ZH = "[{index}] 《{title}》\n{text}"
PASSAGE_EN = "[{index}] ({title})\n{text}"
REFUSAL_ZH = "抱歉，知识库中没有找到与这个问题相关的内容，无法回答。"
REFUSAL_EN = "Sorry, the knowledge base has nothing that answers this question."


class RerankerSettings(Section):
    model: str | None = Field(
        None,
        description="Cross-encoder reranker: a local path or a hub id from the local cache "
        "(e.g. `BAAI/bge-reranker-base`). None: no reranking (the default).",
        examples=["BAAI/bge-reranker-v2-m3", "/models/bge-reranker-base"],
    )
    candidates: int = Field(
        20, ge=1, le=200, description="Passages retrieved and rescored by the reranker."
    )
    device: str | None = Field(None, description="Device of the reranker (default: auto).")
    batch_size: int = Field(16, ge=1, description="Passage pairs scored per reranker call.")


class RagSettings(Section):
    """How a question over knowledge bases becomes an answer with sources."""

    prompt_zh: str = Field(
        PROMPT_ZH,
        description="Prompt for Chinese questions; `{context}` gets the numbered passages, "
        "`{question}` the question. Sent as the user turn (with the chat template).",
    )
    prompt_en: str = Field(PROMPT_EN, description="Prompt for other questions (same fields).")
    passage_zh: str = Field(
        PASSAGE_ZH,
        description="How one passage is written into a Chinese prompt: `{index}`, `{title}` "
        "(heading path or file name), `{text}`.",
    )
    passage_en: str = Field(PASSAGE_EN, description="How one passage is written (other).")
    system_prompt: str | None = Field(
        None,
        description="System message sent before the prompt (None: none, the chat template's "
        "own default applies).",
    )
    zh_ratio: float = Field(
        0.2,
        ge=0,
        le=1,
        description="A question is Chinese when CJK characters are at least this share of its "
        "letters; it picks the prompt and refusal language.",
    )
    no_answer_policy: Literal["refuse", "fallback"] = Field(
        "refuse",
        description="When no passage passes the threshold: `refuse` answers the fixed refusal "
        "message without calling the LLM; `fallback` lets the model answer alone and flags "
        "the answer as not grounded.",
    )
    refusal_zh: str = Field(REFUSAL_ZH, description="Refusal message for Chinese questions.")
    refusal_en: str = Field(REFUSAL_EN, description="Refusal message for other questions.")
    min_dense_score: float = Field(
        0.87,
        ge=0,
        le=1,
        description="Relevance gate: a passage is relevant when its dense cosine similarity "
        "reaches this ... (calibrated for the packaged multilingual-e5-small with "
        "`bench/rag.py --calibrate` on cmrc2018-trial: 0.87/0.6 keep 97% of answerable "
        "questions and refuse 91% of off-topic Chinese and 100% of English ones; other "
        "embedding models need their own values)",
    )
    min_keyword_score: float = Field(
        0.6,
        ge=0,
        le=1,
        description="... or its keyword score bm25/(bm25+retrieval.keyword_score_half) reaches "
        "this. No relevant passage: the no-answer policy applies. 0 for both: no gate.",
    )
    score_threshold: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Minimum search score of a passage used for an answer (the search's 0-1 "
        "scale); None: `retrieval.score_threshold`.",
    )
    top_k: int | None = Field(
        3,
        ge=1,
        le=50,
        description="Passages used per answer; None: `retrieval.top_k`. 3: the gold passage "
        "is among the top 3 for 98% of cmrc2018-trial questions, and each passage costs "
        "prefill time on a CPU.",
    )
    passage_max_chars: int = Field(
        300,
        ge=0,
        description="A passage longer than this is cut to its sentences most related to the "
        "question (shared terms), neighbours included, in document order; 0: whole passages. "
        "Short prompts make small models faster and more accurate (bench/answer_quality.py).",
    )
    max_tokens: int | None = Field(
        None,
        ge=1,
        description="Answer budget of a knowledge-base answer; None: `llm.max_new_tokens`.",
    )
    context_margin_tokens: int = Field(
        16,
        ge=0,
        description="Tokens kept free besides the answer budget when fitting passages into the "
        "model's context window (template tokens the count cannot see).",
    )
    history_turns: int = Field(
        6,
        ge=0,
        description="Earlier messages kept for a follow-up question (included in the prompt "
        "within the context budget, newest first; older ones dropped when they do not fit).",
    )
    history_budget_share: float = Field(
        0.25,
        gt=0,
        le=1,
        description="Most of the prompt budget (after the answer budget) that history may take; "
        "the passages get the rest.",
    )
    history_query_turns: int = Field(
        1,
        ge=0,
        description="Earlier user questions put in front of the retrieval query of a follow-up "
        "when the question alone finds no relevant passage, so 'and its population?' still "
        "finds the passage about the city named before (a new topic uses its own words).",
    )
    passages_max: int = Field(
        20,
        ge=1,
        description="Most passages returned by `answer_mode: passages` (retrieval only).",
    )
    reranker: RerankerSettings = Field(
        default_factory=RerankerSettings,  # type: ignore[arg-type]
        description="Optional cross-encoder reranker (off by default).",
    )

    @model_validator(mode="after")
    def _templates_have_fields(self) -> RagSettings:
        for name in ("prompt_zh", "prompt_en"):
            text = getattr(self, name)
            if "{context}" not in text or "{question}" not in text:
                raise ValueError(f"rag.{name} must contain {{context}} and {{question}}")
        for name in ("passage_zh", "passage_en"):
            if "{text}" not in getattr(self, name):
                raise ValueError(f"rag.{name} must contain {{text}}")
        return self
