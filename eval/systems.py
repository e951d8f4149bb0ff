"""The four systems of a comparison, asked in-process (the services) or over a kbqa server.

``base``: the LLM alone; ``rag``: the service's retrieval + LLM answer; ``lora``: the LLM with
the LoRA adapter, no retrieval; ``rag+lora``: retrieval with the adapter answering.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.settings.base import SearchMode

if TYPE_CHECKING:
    from app.settings import Settings

logger = logging.getLogger(__name__)

RAG_SYSTEMS = ("rag", "rag+lora")
LORA_SYSTEMS = ("lora", "rag+lora")
_SOURCE_KEYS = (
    "index",
    "kb",
    "doc_id",
    "filename",
    "page",
    "heading_path",
    "chunk_id",
    "chunk_index",
    "score",
)
SOURCE_TEXT_CHARS = 200


@dataclass
class Ask:
    """How one question is asked (shared by every system)."""

    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    top_k: int | None = None
    search_mode: SearchMode | None = None


@dataclass
class Output:
    answer: str
    sources: list[dict[str, Any]] = field(default_factory=list)
    refused: bool | None = None  # None: the system has no refusal flag
    grounded: bool | None = None
    finish_reason: str = ""
    model: str = ""
    timings: dict[str, float] = field(default_factory=dict)


def slim_sources(sources: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Sources as stored in results.jsonl: their identity and score, text cut short."""
    out = []
    for source in sources:
        item = {k: source[k] for k in _SOURCE_KEYS if k in source}
        text = str(source.get("text") or "")
        item["text"] = text[:SOURCE_TEXT_CHARS] + ("…" if len(text) > SOURCE_TEXT_CHARS else "")
        out.append(item)
    return out


def _chat_timings(start: float, prompt_tokens: int, completion_tokens: int) -> dict[str, float]:
    total_s = time.perf_counter() - start
    return {
        "total_ms": round(total_s * 1000, 1),
        "generation_ms": round(total_s * 1000, 1),
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "tokens_per_s": round(completion_tokens / total_s, 2) if total_s > 0 else 0.0,
    }


class Runner(abc.ABC):
    """Asks the systems; ``start`` says which of them can run (a note for each that cannot)."""

    where: str = ""

    @abc.abstractmethod
    async def start(self, systems: list[str]) -> dict[str, str]:
        """Prepare; return {system: reason} for the systems that must be skipped."""

    @abc.abstractmethod
    async def ask(self, system: str, question: str, how: Ask) -> Output:
        """One answer of one system."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release what ``start`` built."""

    def describe(self) -> dict[str, Any]:
        return {"where": self.where}

    async def prepare_likelihood(self) -> str | None:
        """Get ready to score gold answers; a reason when this runner cannot."""
        return "gold-answer likelihood needs the model's weights in this process"

    async def likelihood(
        self, system: str, question: str, answers: list[str], how: Ask
    ) -> dict[str, Any]:
        """Teacher-forced likelihood of the best accepted answer under the system's prompt
        (eval/likelihood.py): ``nll``, ``perplexity``, ``gold``, token counts; ``nll`` None
        with a ``reason`` when the system sends the model no prompt."""
        raise NotImplementedError


class InProcessRunner(Runner):
    """The services built from the settings in this process (the default)."""

    def __init__(
        self,
        settings: Settings,
        *,
        kb: str | None,
        adapter: Path | None,
        adapter_name: str,
    ) -> None:
        self.settings = settings
        self.kb = kb
        self.adapter = adapter
        self.adapter_name = adapter_name
        self.services: Any = None
        self.scorer: Any = None
        self.where = "in-process"

    @classmethod
    def settings_for(
        cls, settings: Settings, *, model: str | None, adapter: Path | None, adapter_name: str
    ) -> Settings:
        """The settings with the compared model, the adapter loaded, no ingest worker."""
        update: dict[str, Any] = {"ingest": settings.ingest.model_copy(update={"workers": 0})}
        llm: dict[str, Any] = {}
        if model:
            llm["model"] = model
        if adapter is not None and adapter.is_dir():
            llm["adapters"] = {**settings.llm.adapters, adapter_name: str(adapter)}
        if llm:
            update["llm"] = settings.llm.model_copy(update=llm)
        return settings.model_copy(update=update)

    async def start(self, systems: list[str]) -> dict[str, str]:
        from app.services.factory import build_services

        skipped: dict[str, str] = {}
        if self.adapter is None:
            for system in LORA_SYSTEMS:
                skipped[system] = "no --adapter given"
        elif not self.adapter.is_dir():
            for system in LORA_SYSTEMS:
                skipped[system] = f"adapter directory {self.adapter} not found"
        if any(s in RAG_SYSTEMS for s in systems):
            reason = None
            if not self.kb:
                reason = "no --kb given"
            if reason:
                for system in RAG_SYSTEMS:
                    skipped.setdefault(system, reason)
        self.services = await build_services(self.settings)
        if any(s in RAG_SYSTEMS and s not in skipped for s in systems):
            reason = self._rag_missing()
            if reason:
                for system in RAG_SYSTEMS:
                    skipped.setdefault(system, reason)
        return {s: r for s, r in skipped.items() if s in systems}

    def _rag_missing(self) -> str | None:
        if getattr(self.services, "rag", None) is None:
            return "this kbqa has no RAG service (app.services.rag)"
        kb_service = self.services.kb
        try:
            kb_service.get_kb(self.kb)
        except Exception as exc:  # ingest.errors.NotFound and friends
            return f"knowledge base {self.kb!r} not available: {exc}"
        return None

    def describe(self) -> dict[str, Any]:
        llm = self.settings.llm
        return {
            "where": self.where,
            "backend": llm.backend,
            "model": llm.model,
            "device": getattr(getattr(self.services, "llm", None), "device", None),
        }

    @staticmethod
    def _params(how: Ask) -> Any:
        from app.llm.base import GenerationParams

        return GenerationParams(
            max_tokens=how.max_tokens,
            temperature=how.temperature,
            top_p=how.top_p if how.temperature > 0 else 1.0,
            seed=how.seed,
        )

    def _model(self, system: str) -> str | None:
        return self.adapter_name if system in LORA_SYSTEMS else None

    async def ask(self, system: str, question: str, how: Ask) -> Output:
        from app.llm.base import ChatMessage

        params = self._params(how)
        model = self._model(system)
        if system in RAG_SYSTEMS:
            from app.services.rag import RagOptions

            options = RagOptions(top_k=how.top_k, search_mode=how.search_mode)
            start = time.perf_counter()
            answer = await self.services.rag.answer(
                question, [self.kb], options=options, params=params, model=model
            )
            timings = dict(answer.timings or {})
            timings.setdefault("total_ms", round((time.perf_counter() - start) * 1000, 1))
            for name in ("prompt_tokens", "completion_tokens"):
                timings.setdefault(name, int(getattr(answer, name, 0) or 0))
            return Output(
                answer=answer.answer,
                sources=[p.to_dict() for p in answer.sources],
                refused=bool(answer.refused),
                grounded=bool(answer.grounded),
                finish_reason=str(answer.finish_reason),
                model=str(answer.model),
                timings=timings,
            )
        start = time.perf_counter()
        completion = await self.services.chat.complete(
            [ChatMessage("user", question)], params, model=model
        )
        return Output(
            answer=completion.text,
            finish_reason=completion.finish_reason,
            model=model or self.settings.llm.model,
            timings=_chat_timings(start, completion.prompt_tokens, completion.completion_tokens),
        )

    async def prompt(self, system: str, question: str, how: Ask) -> list[Any] | None:
        """The chat messages ``system`` sends the model for ``question`` (what ``ask`` sends):
        base/lora the question as the user turn; rag/rag+lora the RAG chain's messages with
        its retrieved passages (None when the gate refuses and the model is not asked)."""
        from app.llm.base import ChatMessage

        if system in RAG_SYSTEMS:
            from app.services.rag import RagOptions

            prompt = await self.services.rag.prompt_messages(
                question,
                [self.kb],
                options=RagOptions(top_k=how.top_k, search_mode=how.search_mode),
                params=self._params(how),
                model=self._model(system),
            )
            return None if prompt.messages is None else list(prompt.messages)
        return [ChatMessage("user", question)]

    async def prepare_likelihood(self) -> str | None:
        from eval.likelihood import LikelihoodScorer

        if self.scorer is not None:
            return None
        llm = getattr(self.services, "llm", None)
        try:
            if getattr(llm, "kind", None) == "transformers":
                self.scorer = LikelihoodScorer.from_backend(llm)
            else:
                self.scorer = await asyncio.to_thread(
                    LikelihoodScorer.load, self.settings.llm, self.settings.resolved_models_dir
                )
        except Exception as exc:  # a GGUF file without a transformers copy, memory, ...
            logger.warning("event=likelihood_unavailable error=%r", str(exc)[:300])
            model = self.settings.llm.model
            return f"the transformers copy of {model!r} could not be loaded: {exc}"
        return None

    async def likelihood(
        self, system: str, question: str, answers: list[str], how: Ask
    ) -> dict[str, Any]:
        messages = await self.prompt(system, question, how)
        if messages is None:
            return {"nll": None, "reason": "refused: the model is not asked"}
        adapter = self._model(system)
        result = await asyncio.to_thread(self.scorer.best, messages, answers, adapter)
        return dict(result.to_dict())

    async def close(self) -> None:
        if self.scorer is not None:
            self.scorer.close()
            self.scorer = None
        if self.services is not None:
            self.services.close()
            self.services = None


class HttpRunner(Runner):
    """A running kbqa (and so a vLLM-backed one) through its API."""

    def __init__(
        self,
        url: str,
        *,
        kb: str | None,
        adapter: str | None,
        model: str | None,
        api_key: str | None,
        timeout_s: float,
    ) -> None:
        self.url = url.rstrip("/")
        self.kb = kb
        self.adapter = adapter
        self.model = model
        self.api_key = api_key
        self.timeout_s = timeout_s
        self.client: Any = None
        self.where = self.url

    async def start(self, systems: list[str]) -> dict[str, str]:
        import httpx

        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        self.client = httpx.AsyncClient(base_url=self.url, headers=headers, timeout=self.timeout_s)
        response = await self.client.get("/v1/models")
        response.raise_for_status()
        served = [m["id"] for m in response.json().get("data", [])]
        if self.model is None or self.model not in served:
            if self.model is not None:
                logger.warning(
                    "event=model_not_served model=%s served=%s using=%s",
                    self.model,
                    ",".join(served),
                    served[0] if served else "-",
                )
            self.model = served[0] if served else self.model
        skipped: dict[str, str] = {}
        if not self.adapter:
            for system in LORA_SYSTEMS:
                skipped[system] = "no --adapter (the adapter's served name) given"
        elif self.adapter not in served:
            for system in LORA_SYSTEMS:
                skipped[system] = f"adapter {self.adapter!r} not served (served: {served})"
        if not self.kb:
            for system in RAG_SYSTEMS:
                skipped.setdefault(system, "no --kb given")
        elif any(s in RAG_SYSTEMS for s in systems):
            kb = await self.client.get(f"/v1/knowledge_bases/{self.kb}")
            if kb.status_code != 200:
                for system in RAG_SYSTEMS:
                    skipped.setdefault(system, f"knowledge base {self.kb!r}: HTTP {kb.status_code}")
        return {s: r for s, r in skipped.items() if s in systems}

    def describe(self) -> dict[str, Any]:
        return {"where": self.where, "backend": "http", "model": self.model}

    async def prepare_likelihood(self) -> str | None:
        return (
            "not measured with --server: it needs the model's weights in this process "
            "(run the comparison without --server)"
        )

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = await self.client.post(path, json=body)
        if response.status_code >= 400:
            raise RuntimeError(f"POST {path}: HTTP {response.status_code}: {response.text[:300]}")
        return dict(response.json())

    async def ask(self, system: str, question: str, how: Ask) -> Output:
        model = self.adapter if system in LORA_SYSTEMS else self.model
        sampling: dict[str, Any] = {"max_tokens": how.max_tokens, "temperature": how.temperature}
        if how.temperature > 0:
            sampling["seed"] = how.seed
        start = time.perf_counter()
        if system in RAG_SYSTEMS:
            body: dict[str, Any] = {"question": question, "model": model, **sampling}
            if how.top_k is not None:
                body["top_k"] = how.top_k
            if how.search_mode is not None:
                body["search_mode"] = how.search_mode
            data = await self._post(f"/v1/knowledge_bases/{self.kb}/ask", body)
            timings = dict(data.get("timings") or {})
            timings.setdefault("total_ms", round((time.perf_counter() - start) * 1000, 1))
            usage = data.get("usage") or {}
            for key in ("prompt_tokens", "completion_tokens"):
                if key in usage:
                    timings.setdefault(key, usage[key])
            return Output(
                answer=str(data.get("answer") or ""),
                sources=list(data.get("sources") or []),
                refused=bool(data.get("refused")),
                grounded=data.get("grounded"),
                finish_reason=str(data.get("finish_reason") or ""),
                model=str(data.get("model") or model),
                timings=timings,
            )
        if how.temperature > 0:
            sampling["top_p"] = how.top_p
        data = await self._post(
            "/v1/chat/completions",
            {"model": model, "messages": [{"role": "user", "content": question}], **sampling},
        )
        choice = data["choices"][0]
        usage = data.get("usage") or {}
        return Output(
            answer=str(choice["message"].get("content") or ""),
            finish_reason=str(choice.get("finish_reason") or ""),
            model=str(data.get("model") or model),
            timings=_chat_timings(
                start, int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))
            ),
        )

    async def close(self) -> None:
        if self.client is not None:
            await self.client.aclose()
            self.client = None
