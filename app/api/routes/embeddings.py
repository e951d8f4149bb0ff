"""POST /v1/embeddings in OpenAI's shape, with the knowledge bases' embedding model."""

from __future__ import annotations

import base64
import struct

import anyio.from_thread
from fastapi import APIRouter, Request

from app.api.deps import KbServiceDep
from app.api.errors import APIError
from app.api.schemas.ingest import (
    EmbeddingItem,
    EmbeddingsRequest,
    EmbeddingsResponse,
    EmbeddingsUsage,
)

router = APIRouter(tags=["embeddings"])


def _b64(vector: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


@router.post("/embeddings", response_model=EmbeddingsResponse)
def embeddings(
    body: EmbeddingsRequest, service: KbServiceDep, request: Request
) -> EmbeddingsResponse:
    """Limits (embeddings.max_inputs, max_input_chars) are checked before any work; the work
    runs batch by batch and stops when the client disconnects."""
    texts = [body.input] if isinstance(body.input, str) else list(body.input)
    if not texts or any(not t for t in texts):
        raise APIError(400, "input must be a non-empty string or list of them", param="input")

    def cancelled() -> bool:  # this route runs in a worker thread: ask the event loop
        return bool(anyio.from_thread.run(request.is_disconnected))

    vectors = service.embedder.embed(texts, body.input_type, cancelled=cancelled)
    tokens = sum(len(t) for t in texts)  # characters: the packaged engines expose no tokenizer
    return EmbeddingsResponse(
        data=[
            EmbeddingItem(index=i, embedding=_b64(v) if body.encoding_format == "base64" else v)
            for i, v in enumerate(vectors)
        ],
        model=service.embeddings.name,
        usage=EmbeddingsUsage(prompt_tokens=tokens, total_tokens=tokens),
    )
