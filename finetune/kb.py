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
from dataclasses import dataclass
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
        answer = chunk.text.strip()
        examples.append(
            SFTExample(
                id=f"kb-{chunk.chunk_id}",
                messages=[
                    {"role": "user", "content": question},
                    {"role": "assistant", "content": answer},
                ],
                source=chunk.document,
                answers=[answer],
            )
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


@dataclass
class GeneratedQA:
    examples: list[SFTExample]
    skipped: int  # pairs asked for that did not come back usable (unparsed, empty, failed call)
    failed_chunks: int


def generate_qa(
    chunks: Iterable[KBChunk],
    ask: Callable[[str], str],
    settings: FinetuneDataSettings,
    on_chunk: Callable[[int, int], None] | None = None,
) -> GeneratedQA:
    """Ask the LLM for question/answer pairs about each chunk; count what had to be skipped.

    ``on_chunk(pairs_kept, pairs_skipped)`` is called after each chunk (progress display).
    """
    examples: list[SFTExample] = []
    skipped = failed = 0
    for chunk in chunks:
        if not chunk.text.strip():
            continue
        prompt = settings.generate_qa_prompt.format(
            n=settings.generate_qa_per_chunk, title=chunk.title, text=chunk.text.strip()
        )
        try:
            reply = ask(prompt)
        except Exception as exc:  # one failing call must not lose the others
            failed += 1
            skipped += settings.generate_qa_per_chunk
            logger.warning(
                "event=generate_qa_failed chunk=%s error=%s", chunk.chunk_id, type(exc).__name__
            )
            if on_chunk:
                on_chunk(0, settings.generate_qa_per_chunk)
            continue
        pairs, bad = parse_qa_reply(reply)
        pairs = pairs[: settings.generate_qa_per_chunk]
        # skipped: the pairs asked for that did not come back usable
        bad = max(0, settings.generate_qa_per_chunk - len(pairs))
        skipped += bad
        for number, (question, answer) in enumerate(pairs, start=1):
            examples.append(
                SFTExample(
                    id=f"gen-{chunk.chunk_id}-{number}",
                    messages=[
                        {"role": "user", "content": question},
                        {"role": "assistant", "content": answer},
                    ],
                    source=chunk.document,
                    answers=[answer],
                )
            )
        if on_chunk:
            on_chunk(len(pairs), bad)
    logger.info(
        "event=generate_qa_done pairs=%d skipped=%d failed_chunks=%d",
        len(examples),
        skipped,
        failed,
    )
    return GeneratedQA(examples, skipped, failed)
