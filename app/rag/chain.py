"""The RetrievalQA chain: retrieve -> fit passages into the context budget -> prompt -> LLM.

Built with LangChain's LCEL ``create_retrieval_chain`` + ``create_stuff_documents_chain``
rather than the legacy ``RetrievalQA`` class: RetrievalQA is deprecated, cannot stream
the answer token by token next to its source documents, and takes a plain retriever, while
``create_retrieval_chain`` accepts any runnable that returns documents (here: the retriever
followed by the token-budget fit and numbering) and streams ``context`` before ``answer``,
which is exactly the order the API sends them in. A ``RunnableBranch`` answers with the fixed
refusal (no LLM call) or the model alone (fallback) when no passage passed the gate.

Multi-turn: history is included in the prompt within the budget (newest messages first,
up to ``rag.history_budget_share`` of it). Retrieval uses the question alone first (a new
topic in the same chat finds its own passages); only when nothing passes the relevance gate
is it retried with the previous user question(s) in front, so an elliptical follow-up
("and when was it completed?") still finds the passage about what was named before.
Condensing the question with an LLM call was not chosen: it doubles the latency of every
follow-up, and a small model condenses badly.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from langchain_classic.chains import create_retrieval_chain
from langchain_classic.chains.combine_documents import create_stuff_documents_chain
from langchain_core.documents import Document
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import (
    ChatPromptTemplate,
    MessagesPlaceholder,
    PromptTemplate,
    format_document,
)
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import Runnable, RunnableBranch, RunnableLambda

from app.llm.base import ChatMessage
from app.rag.focus import focus
from app.settings.rag import RagSettings
from ingest.splitter import split_sentences

Language = Literal["zh", "en"]
_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
_LETTER = re.compile(r"[^\W\d_]", re.UNICODE)
SEPARATOR = "\n\n"


def question_language(text: str, zh_ratio: float) -> Language:
    """zh when CJK characters are at least ``zh_ratio`` of the letters."""
    letters = _LETTER.findall(text)
    if not letters:
        return "en"
    cjk = sum(1 for ch in letters if _CJK.match(ch))
    return "zh" if cjk / len(letters) >= zh_ratio else "en"


@dataclass
class Prompts:
    """The texts of one language."""

    language: Language
    prompt: str
    passage: str
    refusal: str
    short: bool = False  # the short-answer prompt (a name, date, number or place is asked)
    listing: bool = False  # a list is asked for (a table row answers with its section's rows)

    @classmethod
    def of(cls, settings: RagSettings, language: Language, question: str = "") -> Prompts:
        """The texts of ``language``; the short-answer prompt when the question matches
        ``rag.short_answer_<language>`` (and is no list question: it matches
        ``rag.list_answer_<language>``)."""
        zh = language == "zh"
        listed = settings.list_answer_zh if zh else settings.list_answer_en
        listing = bool(listed and question and re.search(listed, question))
        pattern = settings.short_answer_zh if zh else settings.short_answer_en
        # "包括哪几项" asks for the items, not for a number
        short = not listing and bool(pattern and question and re.search(pattern, question))
        if zh:
            prompt = settings.prompt_zh_short if short else settings.prompt_zh
            return cls("zh", prompt, settings.passage_zh, settings.refusal_zh, short, listing)
        prompt = settings.prompt_en_short if short else settings.prompt_en
        return cls("en", prompt, settings.passage_en, settings.refusal_en, short, listing)

    def document_prompt(self) -> PromptTemplate:
        return PromptTemplate.from_template(self.passage.replace("{text}", "{page_content}"))


# how a passage's heading path is written as its title in the prompt
TITLE_SEPARATOR = " > "


def title_of(doc: Document) -> str:
    path = [p for p in doc.metadata.get("heading_path") or [] if p]
    name = str(doc.metadata.get("filename") or "")
    return TITLE_SEPARATOR.join(path) if path else name


@dataclass
class Budget:
    """Token budget of one prompt: context window - answer budget - margin - fixed parts."""

    count_tokens: Callable[[str], int]
    count_prompt: Callable[[list[ChatMessage]], int]
    context_length: int
    answer_tokens: int
    margin: int

    def room(self, fixed: list[ChatMessage]) -> int:
        """Tokens left for passages once ``fixed`` (rendered with the chat template: system
        prompt, history, the prompt without passages) and the answer budget are counted."""
        used = self.count_prompt(fixed)
        return self.context_length - self.answer_tokens - self.margin - used

    def fit_passages(
        self, docs: list[Document], document_prompt: PromptTemplate, room: int
    ) -> list[Document]:
        """Passages in order while they fit; the first that does not fit is cut after its last
        whole sentence that fits (never mid-sentence) or dropped; later ones are dropped."""
        kept: list[Document] = []
        for doc in docs:
            cost = self.count_tokens(format_document(doc, document_prompt) + SEPARATOR)
            if cost <= room:
                kept.append(doc)
                room -= cost
                continue
            cut = self._cut(doc, document_prompt, room)
            if cut is not None:
                kept.append(cut)
            break
        return kept

    def _cut(self, doc: Document, document_prompt: PromptTemplate, room: int) -> Document | None:
        spans = split_sentences(doc.page_content)
        best: Document | None = None
        low, high = 1, len(spans) - 1  # a proper prefix of whole sentences, binary searched
        while low <= high:
            mid = (low + high) // 2
            text = doc.page_content[: spans[mid - 1][1]]
            trial = Document(
                page_content=text, metadata={**doc.metadata, "truncated": True}, id=doc.id
            )
            if self.count_tokens(format_document(trial, document_prompt) + SEPARATOR) <= room:
                best, low = trial, mid + 1
            else:
                high = mid - 1
        return best


def focused(doc: Document, question: str, max_chars: int) -> Document:
    """The passage cut to its sentences that matter for the question (app.rag.focus)."""
    text = focus(doc.page_content, question, max_chars)
    if text == doc.page_content:
        return doc
    return Document(page_content=text, metadata={**doc.metadata, "focused": True}, id=doc.id)


def shell_messages(
    prompts: Prompts, question: str, system_prompt: str | None, history: list[ChatMessage]
) -> list[ChatMessage]:
    """The prompt's messages without passages: what the budget counts as fixed."""
    shell = prompts.prompt.replace("{context}", "").replace("{question}", question)
    head = [ChatMessage("system", system_prompt)] if system_prompt else []
    return [*head, *history, ChatMessage("user", shell)]


def number_documents(docs: list[Document]) -> list[Document]:
    """Citation numbers 1..n in prompt order, and the title shown with each passage."""
    for index, doc in enumerate(docs, start=1):
        doc.metadata["index"] = index
        doc.metadata["title"] = title_of(doc)
    return docs


@dataclass
class ChainTimings:
    retrieval_ms: float = 0.0
    prompt_ms: float = 0.0
    marks: dict[str, float] = field(default_factory=dict)


def build_rag_chain(
    retriever: BaseRetriever,
    llm: Runnable,
    prompts: Prompts,
    budget: Budget,
    *,
    system_prompt: str | None,
    no_answer_policy: Literal["refuse", "fallback"],
    timings: ChainTimings | None = None,
    passage_max_chars: int = 0,
    first_passage_max_chars: int = 0,
) -> Runnable:
    """The chain for one request. Input keys: ``input`` and ``question`` (the question as
    asked), ``query`` (the question with earlier ones in front: retrieval's second try),
    ``history`` (LangChain messages, already fitted) and ``chat_history`` (the same as
    kbqa messages, for the budget). Output keys add ``context`` (the numbered passages
    used) and ``answer``."""
    timings = timings if timings is not None else ChainTimings()
    document_prompt = prompts.document_prompt()
    head: list[Any] = [("system", system_prompt)] if system_prompt else []
    qa_prompt = ChatPromptTemplate.from_messages(
        [*head, MessagesPlaceholder("history"), ("human", prompts.prompt)]
    )
    plain_prompt = ChatPromptTemplate.from_messages(
        [*head, MessagesPlaceholder("history"), ("human", "{input}")]
    )

    def fixed_messages(inputs: dict[str, Any]) -> list[ChatMessage]:
        return shell_messages(prompts, inputs["input"], system_prompt, inputs["chat_history"])

    async def context(inputs: dict[str, Any]) -> list[Document]:
        start = time.perf_counter()
        docs = await retriever.ainvoke(inputs["input"])
        if not docs and inputs["query"] != inputs["input"]:
            # an elliptical follow-up ("and when was it built?") finds nothing on its own:
            # retrieve again with the earlier question(s) in front
            docs = await retriever.ainvoke(inputs["query"])
        fitted = time.perf_counter()
        timings.retrieval_ms = (fitted - start) * 1000
        docs = [
            focused(
                doc, inputs["input"], first_passage_max_chars if index == 0 else passage_max_chars
            )
            for index, doc in enumerate(docs)
        ]
        # numbered before fitting (the count sees the text as sent); the kept passages are a
        # prefix, so their numbers stay 1..n
        docs = number_documents(docs)
        docs = budget.fit_passages(docs, document_prompt, budget.room(fixed_messages(inputs)))
        timings.prompt_ms = (time.perf_counter() - fitted) * 1000
        return docs

    def context_sync(inputs: dict[str, Any]) -> list[Document]:  # pragma: no cover
        raise RuntimeError("the kbqa RAG chain runs asynchronously: use ainvoke/astream")

    stuff = create_stuff_documents_chain(
        llm,
        qa_prompt,
        document_prompt=document_prompt,
        document_separator=SEPARATOR,
    )
    if no_answer_policy == "refuse":
        nothing: Runnable = RunnableLambda(lambda _: prompts.refusal, name="refuse")
    else:
        nothing = (plain_prompt | llm | StrOutputParser()).with_config(run_name="fallback")
    answer = RunnableBranch((lambda x: bool(x["context"]), stuff), nothing)
    retrieval = RunnableLambda(context_sync, afunc=context, name="retrieve_and_fit")
    return create_retrieval_chain(retrieval, answer)
