"""The compare loop with a scripted runner (fast): seeds per repeat, skipped systems, failed
answers retried on resume, refusals, and the reports written from the rows."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from eval.compare import CompareError, CompareOptions, run_compare
from eval.data import QAItem
from eval.report import write_reports
from eval.summary import SummaryOptions, summarize
from eval.systems import Ask, Output, Runner

ITEMS = [
    QAItem("q1", "熊猫吃什么？", ["竹子"], "panda.txt"),
    QAItem("q2", "埃菲尔铁塔哪年建成？", ["1889年"], "tower.txt"),
    QAItem("n1", "今天天气怎么样？", [], None, answerable=False),
]


class ScriptedRunner(Runner):
    """rag: right and stable; lora: depends on the seed (sometimes right, sometimes wrong)."""

    def __init__(self, fail_once: set[tuple[str, str]] | None = None) -> None:
        self.asked: list[tuple[str, str, int | None, float]] = []
        self.fail_once = set(fail_once or ())
        self.where = "scripted"

    async def start(self, systems: list[str]) -> dict[str, str]:
        return {"base": "no base model in this test"} if "base" in systems else {}

    async def ask(self, system: str, question: str, how: Ask) -> Output:
        self.asked.append((system, question, how.seed, how.temperature))
        if (system, question) in self.fail_once:
            self.fail_once.discard((system, question))
            raise RuntimeError("backend hiccup")
        item = next(i for i in ITEMS if i.question == question)
        timings = {"total_ms": 100.0, "completion_tokens": 4, "generation_ms": 80.0}
        if system == "rag":
            if not item.answerable:
                return Output(
                    "抱歉，知识库中没有找到相关内容。", [], True, False, "stop", "m", timings
                )
            sources = [
                {"index": 1, "filename": "other.txt", "text": "x"},
                {"index": 2, "filename": item.source, "text": "y" * 500},
            ]
            return Output(f"{item.answers[0]}[2]", sources, False, True, "stop", "m", timings)
        right = (how.seed or 0) % 2 == 0
        answer = item.answers[0] if item.answers and right else "我不确定，可能是别的。"
        return Output(answer, [], None, None, "length", "lora", timings)


def _options(**extra: object) -> CompareOptions:
    values: dict = {
        "systems": ["base", "rag", "lora"],
        "repeats": 3,
        "max_tokens": 16,
        "temperature": 0.7,
        "seed": 10,
        "refusal_patterns": ["没有找到"],
        "identity": {"model": "m"},
    }
    values.update(extra)
    return CompareOptions(**values)  # type: ignore[arg-type]


def test_sampled_repeats_use_their_own_seed_and_failures_are_retried(tmp_path: Path) -> None:
    runner = ScriptedRunner(fail_once={("lora", "熊猫吃什么？")})
    run = asyncio.run(run_compare(ITEMS, runner, _options(), tmp_path))
    assert run.skipped == {"base": "no base model in this test"}
    assert {seed for _, _, seed, _ in runner.asked} == {10, 11, 12}
    assert run.failed == 1 and run.asked == 3 * 2 * 3 - 1
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    assert sum("error" in json.loads(line) for line in lines) == 1

    again = ScriptedRunner()
    rerun = asyncio.run(run_compare(ITEMS, again, _options(), tmp_path))
    assert rerun.asked == 1 and rerun.reused == 17 and len(rerun.rows) == 18
    assert again.asked == [("lora", "熊猫吃什么？", 10, 0.7)]

    rows = {(r["id"], r["system"], r["repeat"]): r for r in rerun.rows}
    rag = rows[("q1", "rag", 0)]
    assert rag["scored_answer"] == "竹子" and rag["scores"]["em"] == 1.0
    assert rag["scores"]["gold_rank"] == 2 and rag["scores"]["rr"] == 0.5
    assert len(rag["sources"][1]["text"]) == 201  # stored sources are cut short
    assert rows[("n1", "rag", 0)]["scores"]["refused"] is True

    summary = summarize(
        rerun.rows, ITEMS, _options().systems, SummaryOptions(samples=200), skipped=rerun.skipped
    )
    rag_s, lora_s = summary["systems"]["rag"], summary["systems"]["lora"]
    assert rag_s["stability"]["identical"] == 1.0 and rag_s["refusal_rate"] == 1.0
    assert rag_s["retrieval"]["hit@1"]["mean"] == 0.0 and rag_s["retrieval"]["mrr"]["mean"] == 0.5
    assert lora_s["stability"]["mixed_correctness"] == 1.0
    assert lora_s["em"]["mean"] == pytest.approx(2 / 3)  # seeds 10 and 12 right, 11 wrong
    assert lora_s["refusal_rate"] == 0.0 and lora_s["tokens_per_s"] == 50.0
    paths = write_reports(summary, tmp_path)
    assert paths["html"].read_text().count("data:image/png;base64,") == 2
    assert "Skipped base" in paths["markdown"].read_text()


def test_greedy_runs_have_no_seed_and_changed_options_refuse_to_resume(tmp_path: Path) -> None:
    runner = ScriptedRunner()
    asyncio.run(run_compare(ITEMS, runner, _options(temperature=0.0, repeats=1), tmp_path))
    assert {seed for _, _, seed, _ in runner.asked} == {None}
    with pytest.raises(CompareError, match="max_tokens"):
        asyncio.run(
            run_compare(ITEMS, ScriptedRunner(), _options(temperature=0.0, max_tokens=5), tmp_path)
        )
    # more repeats or systems extend the same run; --restart starts over
    extended = asyncio.run(
        run_compare(ITEMS, ScriptedRunner(), _options(temperature=0.0, repeats=2), tmp_path)
    )
    assert extended.reused == 6 and extended.asked == 6
    fresh = asyncio.run(
        run_compare(ITEMS, ScriptedRunner(), _options(max_tokens=5), tmp_path, restart=True)
    )
    assert fresh.reused == 0


def test_resume_rescores_reused_answers_and_reasks_changed_questions(tmp_path: Path) -> None:
    options = _options(temperature=0.0, repeats=1, systems=["rag"])
    asyncio.run(run_compare(ITEMS, ScriptedRunner(), options, tmp_path))
    changed = [
        QAItem("q1", "熊猫吃什么？", ["箭竹"], "panda.txt"),  # other accepted answer: re-scored
        QAItem("q2", "埃菲尔铁塔高多少米？", ["330米"], "tower.txt"),  # other question: re-asked
        ITEMS[2],
    ]
    runner = ScriptedRunner()
    rerun = asyncio.run(run_compare(changed, runner, options, tmp_path))
    # only the changed question is asked again (the scripted runner cannot answer it)
    assert [q for _, q, _, _ in runner.asked] == ["埃菲尔铁塔高多少米？"]
    assert rerun.asked == 0 and rerun.failed == 1 and rerun.reused == 2
    q1 = next(r for r in rerun.rows if r["id"] == "q1")
    assert q1["answers"] == ["箭竹"] and q1["scores"]["em"] == 0.0
    assert q1["scores"]["f1"] == pytest.approx(2 * 0.5 * 0.5)  # 竹 of 竹子 vs 箭竹


def test_the_report_says_how_generated_test_questions_were_made(tmp_path: Path) -> None:
    from eval.experiment import generation_note

    qa = tmp_path / "train.holdout.jsonl"
    qa.write_text("", encoding="utf-8")
    assert generation_note(qa) is None  # written by hand: nothing to say
    report = {"asked": 36, "kept": 25, "dropped": {"missing": 6, "too_long": 0, "duplicate": 3}}
    (tmp_path / "train.generate-qa.json").write_text(json.dumps(report), encoding="utf-8")
    assert generation_note(qa) == (
        "generated by the model: 36 pairs written, 25 kept (dropped: missing 6, duplicate 3); "
        "train.generate-qa.json"
    )
    (tmp_path / "train.generate-qa.json").write_text("{not json", encoding="utf-8")
    assert generation_note(qa) is None
