"""What the llamacpp backend adds beyond the shared contract (tests/app/test_llm_contract.py):
the packaged Qwen (joined from its wheels, checked), the CPU default, parallel slots, exact
prompt counts, and Chinese answers from the real default model."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.llm.base import ChatMessage, GenerationParams
from app.llm.llamacpp_backend import LlamaCppBackend
from app.llm.models import (
    PACKAGED,
    QWEN_05B,
    GgufParts,
    ModelReferenceError,
    gguf_of,
    join_parts,
)
from app.services.factory import backend_kind
from app.settings import load_settings

QWEN = "qwen2.5-coder-0.5b-instruct"
PASSAGE = "等级保护2.0采用的防护理念是“一个中心，三重防护”。"


def load_qwen(models_dir: Path, **overrides: object) -> LlamaCppBackend:
    settings = load_settings(
        **{"llm.backend": "llamacpp", "llm.model": QWEN, "models_dir": models_dir, **overrides}
    )
    return LlamaCppBackend.load(settings.llm, settings.resolved_models_dir)


@pytest.fixture(scope="module")
def qwen(models_dir: Path) -> Iterator[LlamaCppBackend]:
    llm = load_qwen(models_dir, **{"llm.max_concurrency": 2})
    yield llm
    llm.close()


def test_packaged_qwen_is_joined_and_checked(models_dir: Path) -> None:
    path = gguf_of(QWEN, models_dir)
    assert path is not None and path.stat().st_size == QWEN_05B.size
    assert PACKAGED[QWEN].license.startswith("Apache-2.0")


def test_a_join_with_the_wrong_hash_is_refused(tmp_path: Path) -> None:
    tampered = dataclasses.replace(QWEN_05B, sha256="0" * 64)
    dest = tmp_path / "model.gguf"
    with pytest.raises(ModelReferenceError, match="sha256") as caught:
        join_parts(tampered, "tampered", dest)
    assert "pip install --force-reinstall" in str(caught.value)
    assert not dest.exists() and list(tmp_path.iterdir()) == []  # nothing half-written left


def test_missing_wheels_name_the_install_command(tmp_path: Path) -> None:
    missing = GgufParts(
        ("kbqa-no-such-part1",), "1.0", "x/part{index:02d}.bin", 1, "0" * 64, "r.txt"
    )
    with pytest.raises(ModelReferenceError, match=r"not installed.*--require-hashes -r r\.txt"):
        join_parts(missing, "missing", tmp_path / "m.gguf")


def test_auto_is_llamacpp_for_gguf_on_cpu_and_transformers_for_dirs(tmp_path: Path) -> None:
    def kind(**overrides: object) -> str:
        return backend_kind(load_settings(**{"llm.backend": "auto", **overrides}))

    assert kind(**{"llm.model": QWEN}) == "llamacpp"
    assert kind(**{"llm.model": str(tmp_path / "model.gguf")}) == "llamacpp"
    assert kind(**{"llm.model": str(tmp_path)}) == "transformers"
    assert kind(**{"llm.model": "Qwen/Qwen2.5-7B-Instruct"}) == "transformers"


def test_service_default_is_the_packaged_qwen_on_llamacpp(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KBQA_LLM__MODEL", raising=False)
    monkeypatch.delenv("KBQA_LLM__BACKEND", raising=False)
    settings = load_settings()
    assert settings.llm.model == "qwen2.5-coder-1.5b-instruct" and settings.llm.backend == "auto"
    assert backend_kind(settings) == "llamacpp"  # this machine has no CUDA or MPS


def test_answers_chinese_from_its_passage(qwen: LlamaCppBackend) -> None:
    messages = [ChatMessage("user", f"资料：{PASSAGE}\n问题：等级保护2.0采用的防护理念是什么？")]
    answer = asyncio.run(qwen.complete(messages, GenerationParams(max_tokens=48)))
    assert "一个中心，三重防护" in answer.text
    assert answer.prompt_tokens == qwen.count_prompt_tokens(messages)  # exact, template included


def test_prompt_lookup_drafts_an_answer_that_copies_its_passage(
    qwen: LlamaCppBackend, models_dir: Path
) -> None:
    """Prompt-lookup decoding is on by default (llm.llamacpp.lookup_draft_tokens): copying
    the passage, the answer is drafted from the prompt and most drafts are accepted. Off,
    nothing is drafted and the answer is the same copy."""
    sentence = "等级保护2.0采用的防护理念是“一个中心，三重防护”。"
    rest = "它在原有的基础上扩展了云计算、移动互联、物联网和工业控制系统的安全要求。"
    messages = [ChatMessage("user", f"资料：{sentence}{rest}\n照原文抄写资料的第一句话。")]
    params = GenerationParams(max_tokens=48)

    drafted, accepted = qwen.drafted, qwen.draft_accepted
    answer = asyncio.run(qwen.complete(messages, params))
    assert sentence in answer.text
    drafted, accepted = qwen.drafted - drafted, qwen.draft_accepted - accepted
    assert 0 < accepted <= drafted
    assert accepted >= answer.completion_tokens // 2  # most of the copy came from drafts

    plain = load_qwen(models_dir, **{"llm.llamacpp.lookup_draft_tokens": 0})
    try:
        assert sentence in asyncio.run(plain.complete(messages, params)).text
        assert plain.drafted == 0
    finally:
        plain.close()


def test_greedy_answers_repeat_exactly_with_other_requests_between(
    qwen: LlamaCppBackend,
) -> None:
    """One exact answer per question: no prompt cache by default, so a repeated question is
    computed the same way every time, whatever ran in its slot before."""
    first = [ChatMessage("user", "用一句话介绍北京。")]
    other = [ChatMessage("user", "用一句话介绍北京和上海的区别。")]
    params = GenerationParams(max_tokens=24)

    async def sequence() -> list[str]:
        return [(await qwen.complete(q, params)).text for q in (first, other, first, first)]

    answers = asyncio.run(sequence())
    assert answers[0] == answers[2] == answers[3]


def test_both_slots_run_at_once(qwen: LlamaCppBackend) -> None:
    """With two slots, two requests decode in llama.cpp at the same moment (continuous
    batching, measured in bench/llm_backends.py), not one queued behind the other: llama.cpp's
    own /slots shows both processing."""
    seen = 0

    async def watch(task: asyncio.Future[object]) -> None:
        nonlocal seen
        while not task.done():
            seen = max(seen, await asyncio.to_thread(qwen.processing))
            await asyncio.sleep(0.02)

    async def main() -> None:
        params = GenerationParams(max_tokens=48, stop=["never-appears-xyz"])
        both = asyncio.gather(
            *(qwen.complete([ChatMessage("user", f"数到{n}。")], params) for n in (40, 50))
        )
        await watch(both)
        await both

    asyncio.run(main())
    assert seen == 2
