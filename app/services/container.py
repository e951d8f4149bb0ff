"""The service objects one app instance uses, built in the lifespan handler.

Each area adds its own field here; tests build a ``Services`` with what they need.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from app.llm.base import LLMBackend
from app.llm.chat import ChatService

if TYPE_CHECKING:
    from app.services.rag import RagService
    from ingest.service import KnowledgeBaseService


@dataclass
class Services:
    llm: LLMBackend | None = None
    chat: ChatService | None = None
    kb: KnowledgeBaseService | None = None
    rag: RagService | None = None
    # closables are shut down in reverse order when the app stops
    closables: list[Any] = field(default_factory=list)

    def close(self) -> None:
        for item in reversed(self.closables):
            close = getattr(item, "close", None)
            if close is not None:
                close()
        self.closables.clear()
