"""The three instruments of `kbqa eval compare`: gold-answer likelihood (checked against a hand
computation on the packaged SmolLM2, base and with a LoRA adapter), the forgetting probe (a
real adapter whose weights are zero changes nothing; a hand-built count), and the sampled run
next to the main one (rows marked, seeds, resume; "sometimes right, sometimes wrong" counted on
hand-built rows)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from app.llm.base import ChatMessage
from eval import metrics
from eval.compare import DEFAULT_PROBE, CompareOptions, run_compare
from eval.data import QAItem, read_qa
from eval.report import write_reports
from eval.summary import SummaryOptions, forgetting, summarize
from eval.systems import Ask, Output, Runner

MODEL = "smollm2-135m-instruct"
QUESTION = "What is the capital of France?"


def _adapter(models_dir: Path, out: Path, *, zero: bool) -> Path:
    """A LoRA adapter on SmolLM2: peft's default init (B = 0: changes nothing) or random
    non-zero weights (changes the logits)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from app.llm.models import resolve_model

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(resolve_model(MODEL, models_dir).path)
    config = LoraConfig(
        r=4,
        lora_alpha=64,
        target_modules=["q_proj", "v_proj"],
        init_lora_weights=zero,  # True: peft's default init, B = 0
    )
    get_peft_model(base, config).save_pretrained(out)
    return out


def _hand_nll(model: Any, tokenizer: Any, question: str, answer: str) -> float:
    """A plain forward pass over prompt + answer ids, log-softmax, the answer tokens picked."""
    import torch

    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
    )
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    ids = prompt_ids + answer_ids
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].double()
    logp = torch.log_softmax(logits, dim=-1)
    picked = [float(logp[len(prompt_ids) + i - 1, t]) for i, t in enumerate(answer_ids)]
    return -sum(picked) / len(picked)


def test_gold_answer_nll_equals_a_hand_computation(models_dir: Path, tmp_path: Path) -> None:
    """The scorer loads the model the way the transformers backend does, with the adapter on
    the same base model; its NLL equals the hand computation, base and with the adapter."""
    from app.settings import load_settings
    from eval.likelihood import LikelihoodScorer

    adapter = _adapter(models_dir, tmp_path / "adapter", zero=False)
    settings = load_settings(
        **{"models_dir": models_dir, "llm.model": MODEL, "llm.adapters": {"t": str(adapter)}}
    )
    scorer = LikelihoodScorer.load(settings.llm, models_dir)
    try:
        messages = [ChatMessage("user", QUESTION)]
        model, tokenizer = scorer.model, scorer.tokenizer
        base = scorer.score(messages, "Paris", None)
        with model.disable_adapter():
            hand_base = _hand_nll(model, tokenizer, QUESTION, "Paris")
        assert base.nll == pytest.approx(hand_base, abs=1e-5)
        assert base.tokens == len(tokenizer("Paris", add_special_tokens=False)["input_ids"])
        assert base.perplexity == pytest.approx(2.718281828**hand_base, rel=1e-6)

        lora = scorer.score(messages, "Paris", "t")
        model.set_adapter("t")
        hand_lora = _hand_nll(model, tokenizer, QUESTION, "Paris")
        assert lora.nll == pytest.approx(hand_lora, abs=1e-5)
        assert abs(lora.nll - base.nll) > 1e-3  # the adapter's weights are not zero

        # several accepted answers: the likeliest counts
        best = scorer.best(messages, ["Paris", "Lyon, the second city"], None)
        other = scorer.score(messages, "Lyon, the second city", None)
        assert best.nll == min(base.nll, other.nll)
        assert best.answer == ("Paris" if base.nll <= other.nll else "Lyon, the second city")
        # a sensible model finds the right capital likelier than a wrong one
        assert base.nll < scorer.score(messages, "Berlin", None).nll
    finally:
        scorer.close()


def test_zero_adapter_changes_no_probe_answer_nor_likelihood(
    models_dir: Path, tmp_path: Path
) -> None:
    """A real adapter whose weights are zero: the probe's base and lora answers are identical
    (changed 0.0, similarity 1.0) and so are the gold-answer likelihoods."""
    from app.settings import load_settings
    from eval.systems import InProcessRunner

    adapter = _adapter(models_dir, tmp_path / "zero", zero=True)
    settings = InProcessRunner.settings_for(
        load_settings(
            **{"data_dir": tmp_path / "data", "models_dir": models_dir, "ingest.workers": 0}
        ),
        model=MODEL,
        adapter=adapter,
        adapter_name="eval-lora",
    )
    runner = InProcessRunner(settings, kb=None, adapter=adapter, adapter_name="eval-lora")
    probe = read_qa(DEFAULT_PROBE)
    options = CompareOptions(
        systems=["base", "lora"], repeats=1, max_tokens=6, likelihood=True, identity={"m": 1}
    )
    items = [QAItem("q1", QUESTION, ["Paris"])]
    out = tmp_path / "out"
    run = asyncio.run(run_compare(items, runner, options, out, probe_items=probe[:4]))
    # likelihood: the question under base and lora, and the 4 probe questions under both
    assert run.failed == 0 and run.probe_asked == 8 and run.likelihood_scored == 2 + 8
    assert {(r["id"], r["system"]) for r in run.probe_rows} == {
        (i.id, s) for i in probe[:4] for s in ("base", "lora")
    }
    nll = {r["system"]: r["nll"] for r in run.likelihood_rows if not r.get("probe")}
    assert nll["lora"] == pytest.approx(nll["base"], abs=1e-6)
    summary = summarize(
        run.rows,
        items,
        options.systems,
        SummaryOptions(samples=200),
        likelihood_rows=run.likelihood_rows,
        probe_rows=run.probe_rows,
    )
    f = summary["forgetting"]
    assert f["questions"] == 4 and f["changed"]["mean"] == 0.0 and f["changed_questions"] == 0
    assert f["similarity"]["mean"] == 1.0
    assert f["contains"]["base"] == f["contains"]["lora"]
    assert f["nll"]["base"]["mean"] == pytest.approx(f["nll"]["lora"]["mean"], abs=1e-6)
    assert f["nll_difference"]["mean"] == pytest.approx(0.0, abs=1e-6)
    assert summary["systems"]["base"]["likelihood"]["scored"] == 1

    # resumed: nothing asked or scored again (a fresh runner: the first one was closed)
    again = InProcessRunner(settings, kb=None, adapter=adapter, adapter_name="eval-lora")
    rerun = asyncio.run(run_compare(items, again, options, out, probe_items=probe[:4]))
    assert (rerun.asked, rerun.probe_asked, rerun.likelihood_scored) == (0, 0, 0)
    assert rerun.likelihood_rows == run.likelihood_rows


def test_shipped_probe_is_general_and_mixed() -> None:
    probe = read_qa(DEFAULT_PROBE)
    assert len(probe) == 30 and all(i.answerable and i.answers for i in probe)
    langs = [metrics.language(i.question) for i in probe]
    assert langs.count("zh") >= 10 and langs.count("en") >= 10


def _probe_row(qid: str, system: str, answer: str, gold: str) -> dict[str, Any]:
    lang = metrics.language(gold)
    return {
        "id": qid,
        "question": f"question {qid}",
        "answers": [gold],
        "system": system,
        "answer": answer,
        "scored_answer": answer,
        "lang": lang,
        "scores": metrics.score_answer(answer, [gold], lang),
    }


def test_forgetting_counts_changed_answers() -> None:
    rows = [
        _probe_row("p1", "base", "Paris", "Paris"),
        _probe_row("p1", "lora", "Paris", "Paris"),  # same
        _probe_row("p2", "base", "It is blue.", "blue"),
        _probe_row("p2", "lora", "It is blue", "blue"),  # changed (one character), still right
        _probe_row("p3", "base", "7", "7"),
        _probe_row("p3", "lora", "北京", "7"),  # changed, now wrong
        _probe_row("p4", "base", "honey", "honey"),
        _probe_row("p4", "lora", " honey ", "honey"),  # only whitespace: not changed
        _probe_row("p5", "base", "cold", "cold"),  # no lora answer: not counted
        {**_probe_row("p6", "lora", "x", "y"), "error": "RuntimeError: boom"},
    ]
    f = forgetting(rows, SummaryOptions(samples=200))
    assert f is not None
    assert f["questions"] == 4 and f["changed_questions"] == 2
    assert f["changed"]["mean"] == 0.5
    assert f["contains"]["base"]["mean"] == 1.0 and f["contains"]["lora"]["mean"] == 0.75
    assert f["contains_difference"]["mean"] == -0.25
    # similarity: 1 (same), F1("it is blue", "it is blue") = 1, 0 (nothing shared), 1
    assert f["similarity"]["mean"] == pytest.approx(0.75)
    assert [e["id"] for e in f["examples"]] == ["p2", "p3"]
    assert forgetting([_probe_row("p1", "base", "a", "a")], SummaryOptions()) is None


def _row(qid: str, system: str, repeat: int, answer: str, run: str) -> dict[str, Any]:
    scores = metrics.score_answer(answer, ["Paris"], "en")
    scores["refused"] = False
    row = {
        "id": qid,
        "question": f"question {qid}",
        "system": system,
        "repeat": repeat,
        "run": run,
        "lang": "en",
        "answer": answer,
        "scored_answer": answer,
        "scores": scores,
        "timings": {"total_ms": 100.0},
    }
    if run == "sampled":
        row.update(temperature=0.7, top_p=1.0)
    return row


def test_sampling_stability_counts_sometimes_right_sometimes_wrong(tmp_path: Path) -> None:
    """Right in 2 of 5 samples counts; always right or always wrong does not."""
    items = [QAItem(q, f"question {q}", ["Paris"]) for q in ("q1", "q2", "q3")]
    greedy = [_row(q, "lora", 0, "Paris", "main") for q in ("q1", "q2", "q3")]
    greedy += [_row(q, "lora", 1, "Paris", "main") for q in ("q1", "q2", "q3")]
    sampled = [
        *[_row("q1", "lora", r, a, "sampled") for r, a in enumerate(["Paris", "Lyon"] * 2)],
        _row("q1", "lora", 4, "Paris is it", "sampled"),  # q1: right in 3 of 5
        *[_row("q2", "lora", r, "Paris", "sampled") for r in range(5)],  # always right
        *[_row("q3", "lora", r, f"Lyon {r}", "sampled") for r in range(5)],  # always wrong
    ]
    summary = summarize(greedy + sampled, items, ["lora"], SummaryOptions(samples=200))
    lora = summary["systems"]["lora"]
    # the main run is computed from the main rows only
    assert lora["answers"] == 6 and lora["stability"]["identical"] == 1.0
    assert lora["stability"]["mixed_correctness"] == 0.0
    s = lora["sampled"]
    assert (s["temperature"], s["repeats"], s["questions"]) == (0.7, 5, 3)
    assert s["mixed_questions"] == 1 and s["mixed_correctness"] == pytest.approx(1 / 3, abs=1e-4)
    assert s["mixed_correctness_ci"]["mean"] == pytest.approx(1 / 3)
    assert s["identical"] == pytest.approx(
        1 / 3, abs=1e-4
    )  # only q2's five answers are all the same
    assert s["contains"]["mean"] == pytest.approx((3 / 5 + 1 + 0) / 3)

    # a question right in exactly 2 of 5 samples counts as mixed too
    two_of_five = [
        _row("q1", "lora", r, a, "sampled")
        for r, a in enumerate(["Paris", "Lyon", "Nice", "Paris", "Lille"])
    ]
    s2 = summarize(greedy + two_of_five, items[:1], ["lora"], SummaryOptions(samples=200))
    assert s2["systems"]["lora"]["sampled"]["mixed_questions"] == 1

    paths = write_reports(summary, tmp_path)
    html = paths["html"].read_text()
    assert "Stability: main run vs sampled run" in html and "instruments" in paths
    assert html.count("data:image/png;base64,") == 3
    md = paths["markdown"].read_text()
    assert "sampled: mixed right/wrong" in md and "33.3 [" in md


class SampledRunner(Runner):
    """Right when the seed is even (greedy: right)."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, str, int | None, float]] = []
        self.where = "scripted"

    async def start(self, systems: list[str]) -> dict[str, str]:
        return {}

    async def ask(self, system: str, question: str, how: Ask) -> Output:
        self.asked.append((system, question, how.seed, how.temperature))
        right = (how.seed or 0) % 2 == 0
        return Output("Paris" if right else "Lyon", timings={"total_ms": 10.0})


def test_sampled_run_follows_the_main_run_and_resumes(tmp_path: Path) -> None:
    items = [QAItem("q1", "question q1", ["Paris"]), QAItem("q2", "question q2", ["Paris"])]

    def options(**extra: Any) -> CompareOptions:
        values: dict[str, Any] = {
            "systems": ["base", "lora"],
            "repeats": 2,
            "max_tokens": 8,
            "seed": 10,
            "sampling_temperature": 0.7,
            "sampling_repeats": 5,
            "likelihood": True,
        }
        values.update(extra)
        return CompareOptions(**values)

    runner = SampledRunner()
    probe = [QAItem("p1", "general?", ["Paris"])]
    run = asyncio.run(run_compare(items, runner, options(), tmp_path, probe_items=probe))
    # 2 questions x 2 systems: 2 greedy answers, then 5 sampled ones (seeds 10..14)
    assert run.asked == 2 * 2 * (2 + 5) and len(run.rows) == 28
    assert {(seed, t) for _, _, seed, t in runner.asked[:8]} == {(None, 0.0)}
    sampled = runner.asked[8:28]
    assert {t for *_, t in sampled} == {0.7} and {s for _, _, s, _ in sampled} == set(range(10, 15))
    assert run.probe_asked == 2  # base and lora, greedy
    assert {t for *_, t in runner.asked[28:]} == {0.0}
    # a runner without the model's weights: no likelihood, with the reason
    assert "likelihood" in run.notes and run.likelihood_rows == []
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert {r["run"] for r in rows} == {"main", "sampled"}
    assert all(r["temperature"] == 0.7 for r in rows if r["run"] == "sampled")

    summary = summarize(run.rows, items, ["base", "lora"], SummaryOptions(samples=100))
    s = summary["systems"]["lora"]
    assert s["stability"]["identical"] == 1.0 and s["stability"]["mixed_correctness"] == 0.0
    # seeds 10, 12, 14 right, 11, 13 wrong: every question sometimes right, sometimes wrong
    assert s["sampled"]["mixed_correctness"] == 1.0

    # resumed: nothing asked; another sampling temperature asks the sampled run again only
    again = SampledRunner()
    rerun = asyncio.run(run_compare(items, again, options(), tmp_path, probe_items=probe))
    assert rerun.asked == 0 and rerun.probe_asked == 0 and len(rerun.rows) == 28
    hotter = SampledRunner()
    third = asyncio.run(
        run_compare(items, hotter, options(sampling_temperature=1.0), tmp_path, probe_items=probe)
    )
    assert third.asked == 20 and {t for *_, t in hotter.asked} == {1.0}
    assert third.reused == 8

    # `kbqa eval report` rebuilds the summary from the files: the sampled rows of the last
    # sampling options only, and the probe; what did not run, and why, stays in it
    from typer.testing import CliRunner

    from eval.report import write_reports

    write_reports(
        summarize(run.rows, items, ["base", "lora"], SummaryOptions(samples=100), notes=run.notes),
        tmp_path,
    )

    from app.cli import cli

    result = CliRunner().invoke(cli, ["eval", "report", str(tmp_path)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    rebuilt = json.loads((tmp_path / "summary.json").read_text())
    lora = rebuilt["systems"]["lora"]
    assert lora["answers"] == 4 and lora["sampled"]["temperature"] == 1.0
    assert lora["sampled"]["mixed_correctness"] == 1.0 and lora["sampled"]["repeats"] == 5
    assert rebuilt["forgetting"]["questions"] == 1
    assert rebuilt["forgetting"]["changed"]["mean"] == 0.0
    assert rebuilt["notes"] == run.notes and "likelihood" in rebuilt["notes"]
    report = (tmp_path / "report.md").read_text()
    assert f"No likelihood measurement: {run.notes['likelihood']}" in report


def test_the_shipped_forgetting_probe_is_30_answerable_questions() -> None:
    """The default probe (eval/forgetting_probe.jsonl; the end-to-end test asks only its
    first questions): 30 general questions, each with its answers, ids unique."""
    from eval.compare import DEFAULT_PROBE
    from eval.data import read_qa

    items = read_qa(DEFAULT_PROBE)
    assert len(items) == 30 and len({i.id for i in items}) == 30
    assert all(i.answerable and i.answers and i.question.strip() for i in items)
