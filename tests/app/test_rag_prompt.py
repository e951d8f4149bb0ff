"""``RagService.prompt_messages``: the messages an answer sends the model, without generating
(the evaluation scores gold answers after them)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from app.llm.base import ChatMessage
from app.settings import load_settings

TEXT = (
    "The first sentence talks about towers. The second sentence talks about bridges! "
    "Does the third sentence ask a question? The fourth sentence ends the passage."
)


def test_prompt_messages_are_what_the_answer_sends(models_dir: Path, tmp_path: Path) -> None:
    from app.services.factory import build_services
    from app.services.rag import RagOptions

    settings = load_settings(
        **{
            "data_dir": tmp_path,
            "models_dir": models_dir,
            "llm.max_new_tokens": 4,
            "ingest.workers": 0,
        }
    )

    async def run() -> None:
        services = await build_services(settings)
        try:
            assert services.kb is not None and services.rag is not None
            llm: Any = services.llm
            seen: list[list[ChatMessage]] = []
            original = llm.stream

            def spy(messages: list[ChatMessage], *args: Any, **kwargs: Any) -> Any:
                seen.append(list(messages))
                return original(messages, *args, **kwargs)

            llm.stream = spy
            services.kb.create_kb("k")
            services.kb.upload("k", "towers.txt", TEXT.encode())
            services.kb.pipeline.run_pending(max_jobs=5)
            question = "What does the second sentence talk about?"
            options = RagOptions(top_k=2)
            answer = await services.rag.answer(question, ["k"], options=options)
            assert len(seen) == 1
            prompt = await services.rag.prompt_messages(question, ["k"], options=options)
            assert len(seen) == 1  # the model was not asked
            assert prompt.messages == seen[0] and not prompt.refused
            assert "bridges" in prompt.messages[-1].content
            assert [s.chunk_id for s in prompt.sources] == [s.chunk_id for s in answer.sources]
            # the gate refuses: the chain never calls the model, so there is no prompt
            off = await services.rag.prompt_messages("Qu'est-ce que la photosynthèse?", ["k"])
            assert off.messages is None and off.refused and off.sources == []
        finally:
            services.close()

    asyncio.run(run())
