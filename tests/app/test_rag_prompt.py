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


def test_the_first_passage_gets_its_own_cut(models_dir: Path, tmp_path: Path) -> None:
    """``rag.first_passage_max_chars``: the most relevant passage keeps more of its text than
    the others (``rag.passage_max_chars``): the answer is most often in it, and a short cut
    left it out (cmrc2018-trial: the gold answer kept for 90% of questions at 300 characters,
    97% at 500)."""
    from app.services.factory import build_services
    from app.services.rag import RagOptions

    first = "".join(f"Towers sentence {n} is about towers and their bridges. " for n in range(6))
    other = "".join(f"Bridges sentence {n} is about other bridges. " for n in range(6))

    def prompt_text(**overrides: Any) -> tuple[str, str]:
        settings = load_settings(
            **{
                "data_dir": tmp_path / str(len(list(tmp_path.iterdir()))),
                "models_dir": models_dir,
                "ingest.workers": 0,
                "rag.passage_max_chars": 120,
                "rag.no_answer_policy": "fallback",
                "rag.min_dense_score": 0.0,
                "rag.min_keyword_score": 0.0,
                "rag.min_question_coverage": 0.0,
                **overrides,
            }
        )

        async def run() -> tuple[str, str]:
            services = await build_services(settings)
            try:
                assert services.kb is not None and services.rag is not None
                services.kb.create_kb("k")
                services.kb.upload("k", "towers.txt", first.encode())
                services.kb.upload("k", "bridges.txt", other.encode())
                services.kb.pipeline.run_pending(max_jobs=5)
                question = "What are the towers and their bridges about?"
                prompt = await services.rag.prompt_messages(
                    question, ["k"], options=RagOptions(top_k=2)
                )
                assert prompt.messages is not None
                assert [s.filename for s in prompt.sources] == ["towers.txt", "bridges.txt"]
                return prompt.sources[0].text, prompt.sources[1].text
            finally:
                services.close()

        return asyncio.run(run())

    same_first, same_other = prompt_text(**{"rag.first_passage_max_chars": 120})
    assert len(same_first) <= 120 and len(same_other) <= 120
    default_first, default_other = prompt_text()  # the default: 500 for the first
    assert default_first == first.strip() and default_other == same_other
    wide_first, wide_other = prompt_text(**{"rag.first_passage_max_chars": 0})
    assert wide_first == first.strip() and wide_other == same_other
    cut_first, _ = prompt_text(**{"rag.first_passage_max_chars": 200})
    assert 120 < len(cut_first) <= 200
