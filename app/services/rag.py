"""Answers over knowledge bases: the RetrievalQA chain behind the API and the eval.

``RagService.stream`` yields events in the order the API sends them: ``sources`` (before any
token: the numbered passages the answer may cite), ``token`` pieces, then ``done`` with the
finish reason, token counts and timings. ``answer`` collects the same events, so streamed and
whole answers are identical by construction.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from langchain_core.documents import Document
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage

from app.llm.base import (
    ChatGenerator,
    ChatMessage,
    GenerationParams,
    LLMBackend,
    Releasable,
    StreamChunk,
)
from app.llm.chat import ChatService
from app.rag.chain import (
    Budget,
    ChainTimings,
    Prompts,
    build_rag_chain,
    question_language,
    shell_messages,
    title_of,
)
from app.rag.chat_model import GenerationStats, KbqaChatModel
from app.rag.citations import CitationFilter, ContentGate
from app.rag.focus import best_sentence
from app.rag.passage import Passage
from app.rag.quote import Section, finish_for, in_numbered_item, item_list, listed, loops
from app.rag.retriever import KnowledgeBaseRetriever
from app.rag.search import KnowledgeBaseSearch
from app.settings.base import SearchMode
from app.settings.rag import RagSettings
from ingest.models import row_lines

if TYPE_CHECKING:
    from app.rag.reranker import CrossEncoderReranker
    from app.settings import Settings
    from ingest.catalog import SqlCatalog
    from ingest.service import KnowledgeBaseService

AnswerMode = Literal["generate", "passages"]


@dataclass
class RagOptions:
    """Per-request knobs; None takes the settings' default."""

    top_k: int | None = None
    score_threshold: float | None = None
    search_mode: SearchMode | None = None
    answer_mode: AnswerMode | None = None
    return_sources: bool = True


@dataclass
class RagEvent:
    kind: Literal["sources", "token", "done"]
    text: str = ""
    sources: list[Passage] = field(default_factory=list)
    refused: bool = False
    grounded: bool = True
    finish_reason: str = "stop"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class RagAnswer:
    answer: str
    sources: list[Passage]
    refused: bool
    grounded: bool
    finish_reason: str
    model: str
    timings: dict[str, float]
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class RagPrompt:
    """What the chain would send the model for one question (``RagService.prompt_messages``)."""

    messages: list[ChatMessage] | None  # None: the model is not called (refused)
    sources: list[Passage]
    refused: bool


class _Released:
    def release(self) -> None:
        return None


class _PromptRecorder:
    """A ``ChatGenerator`` that keeps the messages it is given and answers nothing."""

    def __init__(self, chat: ChatGenerator) -> None:
        self.chat = chat
        self.messages: list[ChatMessage] | None = None

    @property
    def llm(self) -> LLMBackend:
        return self.chat.llm

    async def open_stream(
        self, messages: list[ChatMessage], params: GenerationParams, model: str | None = None
    ) -> tuple[Releasable, AsyncIterator[StreamChunk]]:
        self.messages = list(messages)

        async def nothing() -> AsyncIterator[StreamChunk]:
            yield StreamChunk("", "stop")

        return _Released(), nothing()


def extractive_answer(question: str, docs: list[Document]) -> str:
    """The sentence of the first passage that shares most with the question, cited."""
    return f"{best_sentence(docs[0].page_content, question)} [1]"


def to_lc_messages(history: list[ChatMessage]) -> list[BaseMessage]:
    kinds = {"user": HumanMessage, "assistant": AIMessage, "system": SystemMessage}
    return [kinds[m.role](content=m.content) for m in history]


def section_runs(
    catalog: SqlCatalog, docs: list[Document], reach: int, *, tables: bool, numbering: str = ""
) -> list[tuple[tuple[str, ...], list[tuple[str, dict[str, Any]]]]]:
    """For each passage (``tables``: only those made of table rows, ``rows`` in the metadata),
    its heading path and the run of its document's chunks under the same headings around it,
    in the document's order (a section longer than a chunk spans several), as (text, chunk
    metadata); each section once. With ``numbering`` (text sections) the run takes the
    sub-sections too, and a passage whose own heading is a numbered item
    (``numbering``: "07. 安全管理机构") is read with its sibling sections, the run under its
    parent heading: its list is the list of those headings. At most ``reach`` chunks are read
    on each side of the passage (``rag.list_max_chunks``): the work is bounded by the
    setting, not the document's size."""
    runs: list[tuple[tuple[str, ...], list[tuple[str, dict[str, Any]]]]] = []
    seen: set[tuple[str, str, tuple[str, ...]]] = set()
    for doc in docs:
        meta = doc.metadata
        kb, doc_id, at = meta.get("kb"), meta.get("doc_id"), meta.get("chunk_index")
        path = tuple(meta.get("heading_path") or [])
        if (tables and not meta.get("rows")) or not kb or not doc_id or at is None:
            continue
        if numbering and path and re.match(numbering, path[-1]):
            path = path[:-1]
        if (kb, doc_id, path) in seen:
            continue
        seen.add((kb, doc_id, path))
        window = catalog.chunks_of(kb, doc_id, int(at) - reach, int(at) + reach)
        # a table: its own headings; a text: its headings or below them (its sub-sections)
        depth = len(path) if numbering else None
        under = [tuple(chunk.get("heading_path") or [])[:depth] == path for _, _, chunk in window]
        mine = next((i for i, (_, _, c) in enumerate(window) if c.get("chunk_index") == at), None)
        if mine is None:
            continue
        # the passage's own run of chunks under its headings (not another section of the
        # same path further on)
        first, last = mine, mine
        while first > 0 and under[first - 1]:
            first -= 1
        while last + 1 < len(window) and under[last + 1]:
            last += 1
        runs.append((path, [(text, chunk) for _, text, chunk in window[first : last + 1]]))
    return runs


def table_sections(catalog: SqlCatalog, docs: list[Document], reach: int) -> list[Section]:
    """The rows of the table section of each passage made of table rows: the rows of its
    section's run of chunks (``section_runs``), their overlap read once."""
    sections: list[Section] = []
    for path, run in section_runs(catalog, docs, reach, tables=True):
        rows: list[str] = []
        for text, chunk in run:
            rows += [row for row in row_lines(text, int(chunk.get("rows") or 0)) if row not in rows]
        sections.append(Section(path, rows))
    return sections


def section_texts(
    catalog: SqlCatalog, docs: list[Document], reach: int, numbering: str
) -> list[str]:
    """The text of each passage's section (``section_runs``; a numbered section with its
    siblings), its chunks' overlap read once: a line already read is not read again, and a
    line a chunk ends in the middle of is completed by the next chunk's whole line."""
    texts: list[str] = []
    for _, run in section_runs(catalog, docs, reach, tables=False, numbering=numbering):
        lines: list[str] = []
        for text, _ in run:
            for line in text.splitlines():
                if lines and lines[-1].strip() and line.startswith(lines[-1]):
                    lines[-1] = line
                elif not line.strip() or line not in lines:
                    lines.append(line)
        texts.append("\n".join(lines))
    return texts


class RagService:
    def __init__(
        self,
        chat: ChatService,
        kb: KnowledgeBaseService,
        settings: RagSettings,
        *,
        default_top_k: int,
        default_score_threshold: float,
        default_mode: SearchMode,
        default_max_tokens: int,
        reranker: CrossEncoderReranker | None = None,
    ) -> None:
        self.chat = chat
        self.kb = kb
        self.search = KnowledgeBaseSearch(kb)
        self.settings = settings
        self.default_top_k = default_top_k
        self.default_score_threshold = default_score_threshold
        self.default_mode = default_mode
        self.default_max_tokens = default_max_tokens
        self.reranker = reranker

    @classmethod
    def from_settings(
        cls, settings: Settings, chat: ChatService, kb: KnowledgeBaseService
    ) -> RagService:
        reranker = None
        if settings.rag.reranker.model:
            from app.rag.reranker import CrossEncoderReranker

            r = settings.rag.reranker
            reranker = CrossEncoderReranker(r.model or "", r.device, r.batch_size)
        return cls(
            chat,
            kb,
            settings.rag,
            default_top_k=settings.rag.top_k or settings.retrieval.top_k,
            default_score_threshold=(
                settings.rag.score_threshold
                if settings.rag.score_threshold is not None
                else settings.retrieval.score_threshold
            ),
            default_mode=settings.retrieval.mode,
            default_max_tokens=settings.rag.max_tokens or settings.llm.max_new_tokens,
            reranker=reranker,
        )

    # ---------------------------------------------------------------------------- pieces
    def retriever(
        self, knowledge_bases: list[str], options: RagOptions, gate: bool = True
    ) -> KnowledgeBaseRetriever:
        return KnowledgeBaseRetriever(
            search=self.search,
            knowledge_bases=knowledge_bases,
            top_k=options.top_k or self.default_top_k,
            score_threshold=(
                self.default_score_threshold
                if options.score_threshold is None
                else options.score_threshold
            ),
            search_mode=options.search_mode or self.default_mode,
            min_dense_score=self.settings.min_dense_score if gate else 0.0,
            min_keyword_score=self.settings.min_keyword_score if gate else 0.0,
            min_coverage=self.settings.min_question_coverage if gate else 0.0,
            dense_score_alone=self.settings.min_dense_score_alone if gate else 0.0,
            dense_alone_margin=self.settings.dense_alone_margin,
            dense_reference_rank=self.settings.dense_reference_rank,
            coverage_by_rarity=self.settings.coverage_by_rarity,
            rarity_max_chunks=self.settings.rarity_max_chunks,
            rarity_prior_chunks=self.settings.rarity_prior_chunks,
            reranker=self.reranker,
            rerank_candidates=self.settings.reranker.candidates,
        )

    def retrieval_query(self, question: str, history: list[ChatMessage]) -> str:
        turns = self.settings.history_query_turns
        earlier = [m.content for m in history if m.role == "user"][-turns:] if turns else []
        return "\n".join([*earlier, question])

    def fit_history(
        self, history: list[ChatMessage], budget: Budget, fixed: list[ChatMessage]
    ) -> list[ChatMessage]:
        """The newest messages (at most ``history_turns``) that fit the history share."""
        if not history or self.settings.history_turns == 0:
            return []
        room = int(budget.room(fixed) * self.settings.history_budget_share)
        kept: list[ChatMessage] = []
        for message in reversed(history[-self.settings.history_turns :]):
            cost = budget.count_tokens(message.content) + 4  # + the template's turn markers
            if cost > room:
                break
            kept.append(message)
            room -= cost
        kept.reverse()
        # a prompt must not start with an orphan assistant turn
        while kept and kept[0].role == "assistant":
            kept.pop(0)
        return kept

    # ------------------------------------------------------------------------------ API
    async def answer(
        self,
        question: str,
        knowledge_bases: list[str],
        *,
        history: list[ChatMessage] | None = None,
        options: RagOptions | None = None,
        params: GenerationParams | None = None,
        model: str | None = None,
        system_prompt: str | None = None,
    ) -> RagAnswer:
        text: list[str] = []
        first = done = None
        async for event in self.stream(
            question,
            knowledge_bases,
            history=history,
            options=options,
            params=params,
            model=model,
            system_prompt=system_prompt,
        ):
            if event.kind == "sources":
                first = event
            elif event.kind == "token":
                text.append(event.text)
            else:
                done = event
        assert first is not None and done is not None
        return RagAnswer(
            answer="".join(text),
            sources=first.sources,
            refused=first.refused,
            grounded=first.grounded,
            finish_reason=done.finish_reason,
            model=model or self.chat.llm.name,
            timings=done.timings,
            prompt_tokens=done.prompt_tokens,
            completion_tokens=done.completion_tokens,
        )

    async def stream(
        self,
        question: str,
        knowledge_bases: list[str],
        *,
        history: list[ChatMessage] | None = None,
        options: RagOptions | None = None,
        params: GenerationParams | None = None,
        model: str | None = None,
        system_prompt: str | None = None,
    ) -> AsyncIterator[RagEvent]:
        """Events of one answer. Every error a request can hit (unknown knowledge base or
        model, no LLM, overload) is raised before the first token event."""
        async for event in self._events(
            question, knowledge_bases, history, options, params, model, system_prompt, self.chat
        ):
            yield event

    async def prompt_messages(
        self,
        question: str,
        knowledge_bases: list[str],
        *,
        history: list[ChatMessage] | None = None,
        options: RagOptions | None = None,
        params: GenerationParams | None = None,
        model: str | None = None,
        system_prompt: str | None = None,
    ) -> RagPrompt:
        """The chat messages ``answer`` would send the model for this question, without
        generating: the same chain (retrieval, gate, passage fit, prompts, history) runs with a
        generator that records the messages and answers nothing. ``messages`` is None when the
        chain does not call the model (no passage passed the gate under the refuse policy).
        (Used by the evaluation's gold-answer likelihood.)"""
        recorder = _PromptRecorder(self.chat)
        sources: list[Passage] = []
        refused = False
        async for event in self._events(
            question, knowledge_bases, history, options, params, model, system_prompt, recorder
        ):
            if event.kind == "sources":
                sources, refused = event.sources, event.refused
        return RagPrompt(recorder.messages, sources, refused)

    async def _events(
        self,
        question: str,
        knowledge_bases: list[str],
        history: list[ChatMessage] | None,
        options: RagOptions | None,
        params: GenerationParams | None,
        model: str | None,
        system_prompt: str | None,
        generator: ChatGenerator,
    ) -> AsyncIterator[RagEvent]:
        """``stream`` over ``generator`` (the chat service, or a recorder of the prompt)."""
        start = time.perf_counter()
        options = options or RagOptions()
        history = list(history or [])
        self._check(question, knowledge_bases)
        language = question_language(question, self.settings.zh_ratio)
        prompts = Prompts.of(self.settings, language, question)
        query = self.retrieval_query(question, history)
        if (options.answer_mode or "generate") == "passages":
            async for event in self._passages(query, knowledge_bases, options, prompts, start):
                yield event
            return
        llm = self.chat.llm  # BackendUnavailableError -> 503
        llm.resolve_model(model)  # ModelNotFoundError -> 404
        # PromptTooLongError -> 413 by characters, before the history is tokenized
        self.chat.check_size([*history, ChatMessage("user", question)])
        params = params or GenerationParams(max_tokens=self.default_max_tokens)
        system = system_prompt if system_prompt is not None else self.settings.system_prompt
        budget = Budget(
            llm.count_tokens,
            llm.count_prompt_tokens,
            llm.context_length(),
            params.max_tokens,
            self.settings.context_margin_tokens,
        )
        history = self.fit_history(history, budget, shell_messages(prompts, question, system, []))
        stats = GenerationStats()
        timings = ChainTimings()
        chain = build_rag_chain(
            self.retriever(knowledge_bases, options),
            _chat_model(generator, model, params, stats),
            prompts,
            budget,
            system_prompt=system,
            no_answer_policy=self.settings.no_answer_policy,
            timings=timings,
            passage_max_chars=self.settings.passage_max_chars,
            first_passage_max_chars=self.settings.first_passage_max_chars,
        )
        inputs = {
            "input": question,
            "question": question,
            "query": query,
            "history": to_lc_messages(history),
            "chat_history": history,
        }
        answer = _AnswerState()
        async for event in self._answer_events(chain, inputs, question, prompts, options, answer):
            yield event
        stats.cut(llm)  # the counts of a generation stopped early (a loop)
        end = time.perf_counter()
        ttft = (stats.first_token - start) * 1000 if stats.first_token else None
        generation_ms = (
            (stats.finished - stats.started) * 1000 if stats.finished and stats.started else 0.0
        )
        yield RagEvent(
            "done",
            refused=answer.refused,
            grounded=answer.grounded,
            finish_reason=stats.finish_reason or "stop",
            prompt_tokens=stats.prompt_tokens,
            completion_tokens=stats.completion_tokens,
            timings=_timings(
                timings.retrieval_ms,
                timings.prompt_ms,
                ttft,
                generation_ms,
                (end - start) * 1000,
                stats.completion_tokens,
            ),
        )

    def _check(self, question: str, knowledge_bases: list[str]) -> None:
        """The request's own errors, before any work."""
        if not question.strip():
            raise ValueError("the question is empty")
        if not knowledge_bases:
            raise ValueError("name at least one knowledge base")
        self.kb.embedder.check_text(
            question, "question"
        )  # InputTooLargeError -> 413, before any work
        for name in knowledge_bases:
            self.kb.get_kb(name, counts=False)  # NotFoundError -> 404

    async def _answer_events(
        self,
        chain: Any,
        inputs: dict[str, Any],
        question: str,
        prompts: Prompts,
        options: RagOptions,
        answer: _AnswerState,
    ) -> AsyncIterator[RagEvent]:
        """The sources event, then the answer's tokens: citation markers checked against the
        passages, and (``rag.quote_answers``) a grounded answer held until complete and finished
        from the passages (app.rag.quote)."""
        citations = CitationFilter(0)
        gate = ContentGate()
        docs: list[Document] = []
        quoting = self.settings.quote_answers
        held: list[str] = []
        said = ""  # the model's words so far, to stop a loop (rag.loop_repeats)
        texts: list[str] = []
        async with aclosing(chain.astream(inputs)) as parts:
            async for part in parts:
                if "context" in part:
                    docs = part["context"]
                    texts = [d.page_content for d in docs]
                    citations = CitationFilter(len(docs))
                    answer.grounded = bool(docs)
                    answer.refused = not docs and self.settings.no_answer_policy == "refuse"
                    yield RagEvent(
                        "sources",
                        sources=[Passage.of(d) for d in docs] if options.return_sources else [],
                        refused=answer.refused,
                        grounded=answer.grounded,
                    )
                elif part.get("answer"):
                    text = gate.feed(citations.feed(part["answer"]))
                    if text and quoting and answer.grounded:
                        held.append(text)
                    elif text:
                        yield RagEvent("token", text=text)
                    said += part["answer"]
                    if loops(said, self.settings.loop_min_chars, self.settings.loop_repeats, texts):
                        break  # closing the stream stops the generation
        rest = gate.feed(citations.flush())
        if rest and quoting and answer.grounded:
            held.append(rest)
        elif rest:
            yield RagEvent("token", text=rest)
        if held:
            final = finish_for(
                self.settings,
                "".join(held),
                question,
                texts,
                short=prompts.short,
                language=prompts.language,
                # what the prompt names each passage by: its file, its title
                file_names=[
                    *(str(d.metadata.get("filename") or "") for d in docs),
                    *(title_of(d) for d in docs),
                ],
            )
            # None: a list number that names no item of the passages, or only a file name
            final = final or extractive_answer(question, docs)
            if prompts.listing and any(d.metadata.get("rows") for d in docs):
                sections = await asyncio.to_thread(self.table_sections, docs)
                final = listed(final, question, sections)
            numbering = self.settings.answer_numbering
            if (
                prompts.listing
                and self.settings.list_item_answers
                and in_numbered_item(final, texts, numbering)
            ):
                # the answer is an item of a numbered list: the whole list, read from the
                # passages' sections (a cut passage or a chunk may hold only part of it)
                sections_read = await asyncio.to_thread(self.section_texts, docs)
                final = item_list(final, sections_read or texts, numbering)
            yield RagEvent("token", text=final)
        if not gate.answered and answer.grounded:
            # the model said nothing but markers: the passage's own best sentence instead
            yield RagEvent("token", text=extractive_answer(question, docs))

    def table_sections(self, docs: list[Document]) -> list[Section]:
        return table_sections(self.kb.catalog, docs, self.settings.list_max_chunks)

    def section_texts(self, docs: list[Document]) -> list[str]:
        return section_texts(
            self.kb.catalog, docs, self.settings.list_max_chunks, self.settings.answer_numbering
        )

    async def _passages(
        self,
        query: str,
        knowledge_bases: list[str],
        options: RagOptions,
        prompts: Prompts,
        start: float,
    ) -> AsyncIterator[RagEvent]:
        """Retrieval only: the best passages, no LLM call (the gate is reported, not applied)."""
        retriever = self.retriever(knowledge_bases, options, gate=False)
        gate = self.retriever(knowledge_bases, options)
        docs = await retriever.ainvoke(query)
        retrieval_ms = (time.perf_counter() - start) * 1000
        docs = docs[: self.settings.passages_max]
        for index, doc in enumerate(docs, start=1):
            doc.metadata["index"] = index
            doc.metadata["relevant"] = gate.relevant(doc, query)
        sources = [Passage.of(d) for d in docs]
        refused = not docs
        yield RagEvent(
            "sources", sources=sources if options.return_sources else [], refused=refused
        )
        if refused:
            text = prompts.refusal
        else:
            document_prompt = prompts.document_prompt()
            text = "\n\n".join(
                document_prompt.format(
                    page_content=d.page_content,
                    index=d.metadata["index"],
                    title=str(d.metadata.get("filename") or ""),
                )
                for d in docs
            )
        yield RagEvent("token", text=text)
        total = (time.perf_counter() - start) * 1000
        yield RagEvent(
            "done",
            refused=refused,
            timings=_timings(retrieval_ms, 0.0, None, 0.0, total, 0),
        )


def _timings(
    retrieval_ms: float,
    prompt_ms: float,
    ttft_ms: float | None,
    generation_ms: float,
    total_ms: float,
    completion_tokens: int,
) -> dict[str, float]:
    out = {
        "retrieval_ms": round(retrieval_ms, 2),
        "prompt_ms": round(prompt_ms, 2),
        "generation_ms": round(generation_ms, 2),
        "total_ms": round(total_ms, 2),
        "tokens_per_s": round(completion_tokens / (generation_ms / 1000), 2)
        if generation_ms > 0 and completion_tokens
        else 0.0,
    }
    if ttft_ms is not None:
        out["ttft_ms"] = round(ttft_ms, 2)
    return out


@dataclass
class _AnswerState:
    """What the answer's events found out, for its closing event."""

    refused: bool = False
    grounded: bool = False


def _chat_model(
    generator: ChatGenerator, model: str | None, params: GenerationParams, stats: GenerationStats
) -> Any:
    """The chain's LangChain chat model over ``generator``, with the request's parameters."""
    chat_model: Any = KbqaChatModel(
        chat=generator,
        model=model,
        max_tokens=params.max_tokens,
        temperature=params.temperature,
        top_p=params.top_p,
        seed=params.seed,
        stats=stats,
    )
    return chat_model.bind(stop=params.stop) if params.stop else chat_model
