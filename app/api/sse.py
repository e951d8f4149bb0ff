"""Server-sent events: the one encoder of OpenAI ``chat.completion.chunk`` streams, used by the
plain chat answer and the knowledge-base answer of /v1/chat/completions.

A stream is ``data: {chunk}`` events, then ``data: [DONE]``. Each route turns what its service
yields into ``Piece`` objects (the first one with ``role``, text pieces, the last with
``finish_reason`` and ``usage``); an ``LLMError`` in the middle of the stream becomes an error
event in OpenAI's shape (the status line is sent already), and the source is closed however
the stream ends, which stops the generation when the client goes away.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from app.api.errors import error_body, from_llm_error
from app.llm.base import LLMError

logger = logging.getLogger(__name__)
DONE = "data: [DONE]\n\n"
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


@dataclass
class Piece:
    """One chunk's delta: the opening (``role``), a text piece, or the end (``finish_reason``);
    ``extra`` goes at the chunk's top level after ``choices`` (usage, sources, timings)."""

    content: str | None = None
    role: bool = False
    finish_reason: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def delta(self) -> dict[str, Any]:
        if self.role:
            return {"role": "assistant", "content": self.content or ""}
        return {} if self.content is None else {"content": self.content}


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


async def chat_chunks(
    pieces: AsyncIterator[Piece],
    completion_id: str,
    created: int,
    model: str,
    retry_after_s: int,
) -> AsyncIterator[str]:
    """``pieces`` as OpenAI chunk events, then ``data: [DONE]``."""
    base = {"id": completion_id, "object": "chat.completion.chunk", "created": created}
    base["model"] = model
    try:
        async for piece in pieces:
            choice = {"index": 0, "delta": piece.delta(), "finish_reason": piece.finish_reason}
            yield sse({**base, "choices": [choice], **piece.extra})
    except LLMError as exc:
        err = from_llm_error(exc, retry_after_s)
        logger.warning("event=stream_error status=%s error=%s", err.status_code, err.message)
        yield sse(error_body(err.message, err.type, err.code))
    finally:
        aclose = getattr(pieces, "aclose", None)
        if aclose is not None:
            await aclose()
    yield DONE
