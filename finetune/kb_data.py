"""SFT data from a knowledge base, end to end: its chunks read through the knowledge-base
service, and question/answer pairs written by the configured LLM (``--generate-qa``).

``finetune/kb.py`` holds the pure parts (chunk -> example, reply parsing, the keep/drop
rules); this module wires them to the services, so the command line only shows progress.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

from app.settings.finetune import FinetuneDataSettings
from finetune.data import DataError
from finetune.kb import GeneratedQA, KBChunk, generate_qa, read_chunks, spread

if TYPE_CHECKING:
    from app.settings import Settings


def load_chunks(settings: Settings, kb: str, data: FinetuneDataSettings) -> list[KBChunk]:
    """The ready chunks of ``kb`` (at most ``data.kb_max_chunks``, evenly spaced)."""
    from ingest.errors import IngestError
    from ingest.service import KnowledgeBaseService

    service = KnowledgeBaseService.from_settings(settings)
    try:
        chunks = read_chunks(service, kb)
    except IngestError as exc:
        raise DataError(str(exc)) from exc
    finally:
        service.close()
    if not chunks:
        raise DataError(f"knowledge base {kb!r} has no ready chunks; ingest documents first")
    return spread(chunks, data.kb_max_chunks)


def generate_with_configured_llm(
    settings: Settings,
    chunks: list[KBChunk],
    data: FinetuneDataSettings,
    on_chunk: Callable[[int, int], None] | None = None,
) -> GeneratedQA:
    """Question/answer pairs for ``chunks`` from the LLM the settings configure (greedy)."""
    from app.llm.base import ChatMessage, GenerationParams, LLMError
    from app.services.factory import build_llm

    loop = asyncio.new_event_loop()
    try:
        try:
            llm = loop.run_until_complete(build_llm(settings))
        except (LLMError, OSError, ImportError) as exc:
            raise DataError(f"--generate-qa: the configured LLM did not load: {exc}") from exc
        if llm is None:
            raise DataError("--generate-qa needs an LLM: llm.backend is `none`")
        params = GenerationParams(max_tokens=data.generate_qa_max_tokens, temperature=0.0)

        def ask(prompt: str) -> str:
            messages = [ChatMessage("user", prompt)]
            return loop.run_until_complete(llm.complete(messages, params)).text

        try:
            return generate_qa(chunks, ask, data, on_chunk)
        finally:
            llm.close()
    finally:
        loop.close()
