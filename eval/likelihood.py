"""Gold-answer likelihood: how probable each system makes the accepted answer.

Generated text from a small model is a noisy judge of what it knows; the likelihood of the
accepted answer, teacher-forced after the exact prompt a system sends, shows whether the
knowledge went in (a LoRA that learnt the facts lowers it; passages that hold the answer lower
it for the rag systems).

For one prompt and one answer: the prompt's chat messages are rendered with the model's chat
template and the assistant turn opened (as generation does), the answer's tokens are appended
(tokenized alone, no special tokens, no end-of-turn token), and one forward pass gives the
log-probability of every answer token given everything before it. The value is the mean
negative log-likelihood per answer token (nats); perplexity is ``exp`` of it. With several
accepted answers the lowest NLL counts (every other metric also takes the best answer).

The transformers copy of the compared model is loaded once with the transformers backend's own
loading code (a packaged GGUF model has a converted copy, see ``app.llm.models``), with the
LoRA adapter on the same base model: the base systems run with the adapter disabled, the lora
systems with it enabled. When the service already runs on transformers, its loaded model is
used as it is.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.llm.base import ChatMessage
from app.llm.prompting import encode_prompt

logger = logging.getLogger(__name__)


@dataclass
class AnswerNLL:
    """Teacher-forced likelihood of one accepted answer after one prompt."""

    answer: str
    nll: float  # mean negative log-likelihood per answer token (nats)
    tokens: int  # answer tokens scored
    prompt_tokens: int

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll)

    def to_dict(self) -> dict[str, Any]:
        return {
            "gold": self.answer,
            "nll": round(self.nll, 6),
            "perplexity": round(self.perplexity, 4),
            "answer_tokens": self.tokens,
            "prompt_tokens": self.prompt_tokens,
        }


def answer_nll(model: Any, prompt_ids: Sequence[int], answer_ids: Sequence[int]) -> float:
    """Mean NLL of ``answer_ids`` following ``prompt_ids``: one forward pass over both; the
    logits at the positions before each answer token, log-softmax in float64, the answer
    token's log-probability picked."""
    import torch

    if not answer_ids or not prompt_ids:
        raise ValueError("the prompt and the answer need at least one token each")
    device = _input_device(model)
    ids = torch.tensor([[*prompt_ids, *answer_ids]], device=device)
    start = len(prompt_ids) - 1  # the logits at position i predict token i + 1
    with torch.inference_mode():
        logits = model(input_ids=ids).logits[0, start : start + len(answer_ids)]
        logp = torch.log_softmax(logits.double(), dim=-1)
        target = torch.tensor(list(answer_ids), device=logp.device)
        picked = logp.gather(1, target.unsqueeze(1)).squeeze(1)
    return float(-picked.mean())


def _input_device(model: Any) -> Any:
    try:
        return model.get_input_embeddings().weight.device
    except AttributeError:
        return "cpu"


class LikelihoodScorer:
    """Scores accepted answers under a prompt, with or without a LoRA adapter."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        render: Callable[[list[ChatMessage]], str],
        *,
        adapters: Sequence[str] = (),
        context_length: int | None = None,
        owned: Any = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.render = render
        self.adapters = list(adapters)
        self.context_length = context_length
        self._owned = owned  # a backend loaded for the scorer alone: closed with it

    @classmethod
    def from_backend(cls, backend: Any, *, owned: bool = False) -> LikelihoodScorer:
        """The model, tokenizer, chat template and adapters of a transformers backend."""
        return cls(
            backend.model,
            backend.tokenizer,
            backend.render,
            adapters=backend.adapters,
            context_length=backend.context_length(),
            owned=backend if owned else None,
        )

    @classmethod
    def load(cls, llm_settings: Any, models_dir: Path) -> LikelihoodScorer:
        """The transformers copy of ``llm_settings.model`` with ``llm_settings.adapters``,
        loaded by the transformers backend's own code."""
        from app.llm.transformers_backend import TransformersBackend

        start = time.perf_counter()
        backend = TransformersBackend.load(
            llm_settings.model_copy(update={"backend": "transformers", "max_concurrency": 1}),
            models_dir,
        )
        logger.info(
            "event=likelihood_model_loaded model=%s seconds=%.1f",
            llm_settings.model,
            time.perf_counter() - start,
        )
        return cls.from_backend(backend, owned=True)

    def prompt_ids(self, messages: list[ChatMessage]) -> list[int]:
        """The prompt as generation sees it: chat template, assistant turn opened."""
        return encode_prompt(self.tokenizer, self.render(messages))

    def answer_ids(self, answer: str) -> list[int]:
        return list(self.tokenizer(answer, add_special_tokens=False)["input_ids"])

    @contextlib.contextmanager
    def _adapter(self, adapter: str | None) -> Iterator[None]:
        if not self.adapters:
            if adapter is not None:
                raise ValueError(f"adapter {adapter!r} is not loaded")
            yield
            return
        if adapter is None:
            with self.model.disable_adapter():
                yield
            return
        if adapter not in self.adapters:
            raise ValueError(f"adapter {adapter!r} is not loaded (loaded: {self.adapters})")
        self.model.set_adapter(adapter)
        yield

    def score(
        self, messages: list[ChatMessage], answer: str, adapter: str | None = None
    ) -> AnswerNLL:
        """Likelihood of one answer after ``messages`` (``adapter`` None: the base model)."""
        prompt = self.prompt_ids(messages)
        gold = self.answer_ids(answer)
        if self.context_length and len(prompt) + len(gold) > self.context_length:
            # keep the answer whole and the end of the prompt (the question comes last)
            prompt = prompt[len(prompt) + len(gold) - self.context_length :]
        with self._adapter(adapter):
            nll = answer_nll(self.model, prompt, gold)
        return AnswerNLL(answer, nll, len(gold), len(prompt))

    def best(
        self, messages: list[ChatMessage], answers: Sequence[str], adapter: str | None = None
    ) -> AnswerNLL:
        """The accepted answer the model finds most likely (lowest mean NLL)."""
        scored = [self.score(messages, a, adapter) for a in answers if a.strip()]
        if not scored:
            raise ValueError("no accepted answer to score")
        return min(scored, key=lambda s: s.nll)

    def close(self) -> None:
        if self._owned is not None:
            self._owned.close()
            self._owned = None
