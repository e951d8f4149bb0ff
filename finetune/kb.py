"""SFT examples from a knowledge base: its chunks as knowledge-injection examples, and
optionally question/answer pairs that an LLM writes from each chunk (``--generate-qa``).

Nothing here knows the ingest package or an LLM backend: the chunks come from any object with
``list_documents(kb)`` / ``list_chunks(kb, doc_id)`` (the knowledge-base service), and the LLM
is a plain ``ask(prompt) -> reply`` callable that the caller builds.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from app.settings.finetune import FinetuneDataSettings
from finetune.data import SFTExample

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class KBChunk:
    """One chunk of a knowledge-base document."""

    chunk_id: str
    document: str  # file name in the knowledge base
    heading: str  # heading path joined with " > ", may be empty
    text: str

    @property
    def title(self) -> str:
        return self.heading or self.document


class ChunkSource(Protocol):
    """What a knowledge-base service offers for reading its chunks."""

    def list_documents(self, kb: str) -> list[Any]: ...

    def list_chunks(self, kb: str, doc_id: str) -> list[Any]: ...


def read_chunks(source: ChunkSource, kb: str) -> list[KBChunk]:
    """Every chunk of the ready documents of ``kb``, in document and chunk order."""
    chunks: list[KBChunk] = []
    for doc in sorted(source.list_documents(kb), key=lambda d: d.filename):
        if getattr(doc, "status", "ready") != "ready":
            continue
        for index, hit in enumerate(source.list_chunks(kb, doc.doc_id)):
            meta = dict(hit.metadata or {})
            heading = meta.get("heading_path") or []
            if isinstance(heading, str):
                heading = [heading]
            chunks.append(
                KBChunk(
                    chunk_id=str(meta.get("chunk_id") or f"{doc.doc_id}-{index}"),
                    document=str(meta.get("filename") or doc.filename),
                    heading=" > ".join(str(h) for h in heading if str(h).strip()),
                    text=str(hit.text),
                )
            )
    return chunks


def spread(chunks: list[KBChunk], limit: int) -> list[KBChunk]:
    """At most ``limit`` chunks, evenly spaced over the list (deterministic); 0: all."""
    if limit <= 0 or len(chunks) <= limit:
        return list(chunks)
    step = len(chunks) / limit
    return [chunks[int(i * step)] for i in range(limit)]


def _qa_example(
    example_id: str, question: str, answer: str, chunk: KBChunk, knowledge: bool = False
) -> SFTExample:
    """One user question and its assistant answer, sourced to the chunk's document."""
    return SFTExample(
        id=example_id,
        messages=[
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer},
        ],
        source=chunk.document,
        answers=[answer],
        knowledge=knowledge,
    )


def chunk_examples(chunks: Iterable[KBChunk], settings: FinetuneDataSettings) -> list[SFTExample]:
    """Knowledge-injection examples: "what does <title> say?" -> the chunk text.

    When several chunks share a title, each question gets a part suffix so that no question
    has two different answers.
    """
    chunks = [c for c in chunks if c.text.strip()]
    per_title = Counter(c.title for c in chunks)
    seen: Counter[str] = Counter()
    examples: list[SFTExample] = []
    for chunk in chunks:
        seen[chunk.title] += 1
        question = settings.kb_question_template.format(
            title=chunk.title, document=chunk.document, heading=chunk.heading
        )
        if per_title[chunk.title] > 1:
            question += settings.kb_part_template.format(
                part=seen[chunk.title], parts=per_title[chunk.title]
            )
        examples.append(
            _qa_example(f"kb-{chunk.chunk_id}", question, chunk.text.strip(), chunk, knowledge=True)
        )
    return examples


_QA_LINE = re.compile(r"^\s*(?:\d+[.)]\s*)?(Q|Question|A|Answer)\s*[:：]\s*(.+?)\s*$", re.I)


def parse_qa_reply(reply: str) -> tuple[list[tuple[str, str]], int]:
    """(question, answer) pairs of an LLM reply, and how many attempted pairs were unusable.

    Accepts JSON objects one per line (or one JSON list), or ``Q: ...`` / ``A: ...`` lines.
    """
    pairs: list[tuple[str, str]] = []
    bad = 0
    text = reply.strip()
    if text.startswith("```"):
        text = re.sub(r"^```[a-zA-Z]*\n?|```$", "", text).strip()
    objects: list[Any] = []
    try:
        parsed = json.loads(text)
        objects = parsed if isinstance(parsed, list) else [parsed]
    except json.JSONDecodeError:
        for line in text.splitlines():
            line = line.strip().rstrip(",")
            if line.startswith("{"):
                try:
                    objects.append(json.loads(line))
                except json.JSONDecodeError:
                    bad += 1
    if objects:
        for item in objects:
            question = item.get("question") if isinstance(item, dict) else None
            answer = item.get("answer") if isinstance(item, dict) else None
            if (
                isinstance(question, str)
                and isinstance(answer, str)
                and question.strip()
                and answer.strip()
            ):
                pairs.append((question.strip(), answer.strip()))
                continue
            bad += 1
        return pairs, bad
    pending: str | None = None
    for line in text.splitlines():
        match = _QA_LINE.match(line)
        if not match:
            continue
        kind, value = match.group(1).lower(), match.group(2)
        if kind.startswith("q"):
            if pending is not None:
                bad += 1  # a question without an answer
            pending = value
        elif pending is not None:
            pairs.append((pending, value))
            pending = None
        else:
            bad += 1
    if pending is not None:
        bad += 1
    return pairs, bad


_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
_LETTER = re.compile(r"[^\W\d_]", re.UNICODE)
DROP_REASONS = ("missing", "failed_call", "too_long", "not_in_chunk", "duplicate")


def is_chinese(text: str, ratio: float) -> bool:
    """Whether at least ``ratio`` of the text's letters are CJK characters."""
    letters = _LETTER.findall(text)
    return bool(letters) and sum(1 for c in letters if _CJK.match(c)) / len(letters) >= ratio


def support(answer: str, text: str) -> float:
    """The share of the answer's CJK characters and words that the text has (1.0: every one;
    an answer copied from the text, in any order)."""
    from app.rag.quote import units

    wanted = units(answer)
    total = sum(wanted.values())
    return sum((wanted & units(text)).values()) / total if total else 0.0


def _question_key(question: str) -> str:
    return re.sub(r"[\W_]+", "", question, flags=re.UNICODE).casefold()


@dataclass
class GeneratedQA:
    examples: list[SFTExample]
    skipped: int  # pairs asked for and not kept (the sum of ``dropped``)
    failed_chunks: int
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> pairs (DROP_REASONS)
    asked: int = 0  # pairs asked for (chunks x generate_qa_per_chunk)

    def report(self) -> dict[str, Any]:
        """What a person checks before training on generated pairs."""
        return {
            "asked": self.asked,
            "kept": len(self.examples),
            "dropped": {reason: self.dropped.get(reason, 0) for reason in DROP_REASONS},
            "failed_chunks": self.failed_chunks,
        }


def generate_qa(
    chunks: Iterable[KBChunk],
    ask: Callable[[str], str],
    settings: FinetuneDataSettings,
    on_chunk: Callable[[int, int], None] | None = None,
) -> GeneratedQA:
    """Ask the LLM for question/answer pairs about each chunk, keep the usable ones.

    A pair is dropped, and counted by reason, when it did not come back usable (``missing``:
    unparsed, empty, or fewer pairs than asked; ``failed_call``: the LLM call failed), its
    answer is longer than ``generate_qa_max_answer_chars`` (``too_long``) or not taken from
    its chunk (``not_in_chunk``: less than ``generate_qa_min_support`` of it is in the chunk),
    or its question was already kept (``duplicate``, any chunk, punctuation and case aside).
    ``on_chunk(pairs_kept, pairs_dropped)`` is called after each chunk (progress display).
    """
    per_chunk = settings.generate_qa_per_chunk
    examples: list[SFTExample] = []
    dropped: Counter[str] = Counter()
    seen: set[str] = set()
    failed = asked = 0
    for chunk in chunks:
        text = chunk.text.strip()
        if not text:
            continue
        asked += per_chunk
        template = (
            settings.generate_qa_prompt_zh
            if is_chinese(text, settings.generate_qa_zh_ratio)
            else settings.generate_qa_prompt
        )
        try:
            reply = ask(template.format(n=per_chunk, title=chunk.title, text=text))
        except Exception as exc:  # one failing call must not lose the others
            failed += 1
            dropped["failed_call"] += per_chunk
            logger.warning(
                "event=generate_qa_failed chunk=%s error=%s", chunk.chunk_id, type(exc).__name__
            )
            if on_chunk:
                on_chunk(0, per_chunk)
            continue
        pairs, _ = parse_qa_reply(reply)
        pairs = pairs[:per_chunk]
        before = sum(dropped.values())
        dropped["missing"] += per_chunk - len(pairs)
        kept = _keep_pairs(pairs, chunk, text, settings, seen, dropped)
        examples += kept
        if on_chunk:
            on_chunk(len(kept), sum(dropped.values()) - before)
    result = GeneratedQA(
        examples, sum(dropped.values()), failed, {k: v for k, v in dropped.items() if v}, asked
    )
    logger.info(
        "event=generate_qa_done asked=%d kept=%d dropped=%s failed_chunks=%d",
        asked,
        len(examples),
        json.dumps(result.report()["dropped"]),
        failed,
    )
    return result


def _keep_pairs(
    pairs: list[tuple[str, str]],
    chunk: KBChunk,
    text: str,
    settings: FinetuneDataSettings,
    seen: set[str],
    dropped: Counter[str],
) -> list[SFTExample]:
    """The usable pairs of one chunk as examples; the others counted in ``dropped``."""
    kept: list[SFTExample] = []
    for question, answer in pairs:
        key = _question_key(question)
        if len(answer) > settings.generate_qa_max_answer_chars:
            dropped["too_long"] += 1
        elif support(answer, text) < settings.generate_qa_min_support:
            dropped["not_in_chunk"] += 1
        elif key in seen:
            dropped["duplicate"] += 1
        else:
            seen.add(key)
            kept.append(
                _qa_example(f"gen-{chunk.chunk_id}-{len(kept) + 1}", question, answer, chunk)
            )
    return kept
