"""Builds the services of one app instance from the settings (called in the lifespan)."""

from __future__ import annotations

import asyncio
import logging

from app.llm.base import LLMBackend
from app.services.chat import ChatService
from app.services.container import Services
from app.services.gate import GenerationGate
from app.settings import Settings

logger = logging.getLogger(__name__)


async def build_llm(settings: Settings) -> LLMBackend | None:
    if settings.llm.backend == "none":
        return None
    if settings.llm.backend == "openai":
        from app.llm.openai_backend import OpenAIBackend

        remote = OpenAIBackend.from_settings(settings.llm)
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
    return ChatService(llm, gate)


async def build_services(settings: Settings) -> Services:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    llm = await build_llm(settings)
    services = Services(llm=llm, chat=build_chat(settings, llm))
    if llm is not None:
        services.closables.append(llm)
    return services
