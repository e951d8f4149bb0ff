"""Optional cross-encoder reranker (sentence-transformers ``CrossEncoder``)."""

from __future__ import annotations

import logging
import threading
from typing import Any

logger = logging.getLogger(__name__)


class CrossEncoderReranker:
    """Rescores (question, passage) pairs with a cross-encoder; scores mapped to 0-1."""

    def __init__(self, model: str, device: str | None = None, batch_size: int = 16) -> None:
        try:
            from sentence_transformers import CrossEncoder
        except ImportError as exc:  # pragma: no cover - a core dependency
            raise ImportError("the reranker needs sentence-transformers") from exc
        self.name = model
        self.batch_size = batch_size
        try:
            self._model: Any = CrossEncoder(model, device=device, local_files_only=_offline())
        except OSError as exc:
            raise OSError(
                f"reranker {model!r} could not be loaded: give a local directory, or fetch the "
                f"hub id into the local cache first (`hf download {model}`) ({exc})"
            ) from exc
        self._lock = threading.Lock()
        logger.info("event=reranker_loaded model=%s", model)

    def scores(self, query: str, passages: list[str]) -> list[float]:
        """One 0-1 score per passage (sigmoid of the cross-encoder's logit)."""
        if not passages:
            return []
        import torch

        with self._lock:
            raw = self._model.predict(
                [(query, p) for p in passages],
                batch_size=self.batch_size,
                activation_fn=torch.nn.Sigmoid(),
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return [float(x) for x in raw.reshape(len(passages), -1)[:, -1]]


def _offline() -> bool:
    import os

    return os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0", "false", "False")
