"""Builds the services of one app instance from the settings (called in the lifespan)."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from app.llm.base import LLMBackend
from app.llm.chat import ChatService
from app.llm.gate import GenerationGate
from app.services.container import Services
from app.settings import Settings

if TYPE_CHECKING:
    from app.services.rag import RagService
    from ingest.service import KnowledgeBaseService

logger = logging.getLogger(__name__)


def backend_kind(settings: Settings) -> str:
    """The backend ``llm.backend`` means on this machine (``auto`` resolved)."""
    kind = settings.llm.backend
    if kind != "auto":
        return kind
    from app.llm.models import is_gguf_reference

    if not is_gguf_reference(settings.llm.model):
        return "transformers"
    from app.llm.device import pick_device

    return "llamacpp" if pick_device(settings.llm.device) == "cpu" else "transformers"


async def build_llm(settings: Settings) -> LLMBackend | None:
    kind = backend_kind(settings)
    if kind == "none":
        return None
    if kind == "llamacpp":
        from app.llm.llamacpp_backend import LlamaCppBackend

        return await asyncio.to_thread(
            LlamaCppBackend.load, settings.llm, settings.resolved_models_dir
        )
    if kind == "openai":
        from app.llm.openai_backend import OpenAIBackend

        remote = await asyncio.to_thread(
            OpenAIBackend.from_settings, settings.llm, settings.resolved_models_dir
        )
        await remote.start()
        return remote
    from app.llm.transformers_backend import TransformersBackend

    return await asyncio.to_thread(
        TransformersBackend.load, settings.llm, settings.resolved_models_dir
    )


def build_chat(settings: Settings, llm: LLMBackend | None) -> ChatService:
    gate = GenerationGate(
        settings.llm.max_concurrency, settings.llm.max_queue, settings.llm.queue_timeout_s
    )
    return ChatService(llm, gate, settings.llm.max_chars_per_token)


def build_kb(settings: Settings, closables: list) -> KnowledgeBaseService:
    """The knowledge-base service, and its worker threads when ``ingest.workers`` > 0."""
    from ingest.service import KnowledgeBaseService
    from ingest.worker import Worker

    kb = KnowledgeBaseService.from_settings(settings)
    closables.append(kb)
    if settings.ingest.workers > 0:
        closables.append(
            Worker(kb.pipeline, settings.ingest.workers, settings.ingest.poll_interval_s).start()
        )
    return kb


async def build_services(settings: Settings) -> Services:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    llm = await build_llm(settings)
    services = Services(llm=llm, chat=build_chat(settings, llm))
    if llm is not None:
        services.closables.append(llm)
    services.kb = await asyncio.to_thread(build_kb, settings, services.closables)
    services.rag = await asyncio.to_thread(build_rag, settings, services)
    return services


def build_rag(settings: Settings, services: Services) -> RagService:
    """Knowledge-base answers over the chat service (and the reranker when configured)."""
    from app.services.rag import RagService

    assert services.chat is not None and services.kb is not None
    return RagService.from_settings(settings, services.chat, services.kb)
