"""Metric functions against hand-computed values (fast: no model, no services)."""

from __future__ import annotations

import math

import pytest

from eval import metrics
from eval.data import QAError, QAItem, read_qa
from eval.summary import SummaryOptions, summarize

# ----------------------------------------------------------------------------- CMRC 2018


def test_cmrc_segmentation_is_per_cjk_character_and_words_otherwise() -> None:
    assert metrics.cmrc_segments("2018年CMRC比赛，") == ["2018", "年", "cmrc", "比", "赛"]
    assert metrics.cmrc_segments("《红楼梦》", remove_punct=False) == [
        "《",
        "红",
        "楼",
        "梦",
        "》",
    ]


def test_cmrc_exact_match_ignores_its_punctuation_and_case() -> None:
    assert metrics.exact_match("《红楼梦》。", "红楼梦", "zh") == 1.0
    assert metrics.exact_match("红楼梦的作者", "红楼梦", "zh") == 0.0
    assert metrics.exact_match("ABC公司", "abc公司", "zh") == 1.0


def test_cmrc_f1_by_hand() -> None:
    # 5 prediction tokens, 3 gold, common substring 3: P 3/5, R 1 -> 0.75
    assert metrics.token_f1("曹雪芹写的", "曹雪芹", "zh") == pytest.approx(0.75)
    # longest common *substring*, not bag overlap: 北京大学 vs 北大 share one token in a row
    # P 1/4, R 1/2 -> 1/3 (a bag-of-characters F1 would say 2/3)
    assert metrics.token_f1("北京大学", "北大", "zh") == pytest.approx(1 / 3)
    assert metrics.token_f1("上海", "北京", "zh") == 0.0
    # best of several accepted answers
    scores = metrics.score_answer("踢爆", ["被踢爆", "踢爆"], "zh")
    assert scores["em"] == 1.0 and scores["f1"] == 1.0


# ----------------------------------------------------------------------------- SQuAD


def test_squad_normalization_and_f1_by_hand() -> None:
    assert metrics.squad_normalize("The  Eiffel Tower!") == "eiffel tower"
    assert metrics.exact_match("The Eiffel Tower!", "eiffel tower", "en") == 1.0
    # [eiffel, tower, in, paris] vs [eiffel, tower]: P 1/2, R 1 -> 2/3
    assert metrics.token_f1("Eiffel Tower in Paris", "the Eiffel Tower", "en") == pytest.approx(
        2 / 3
    )
    # bag of words: repeated tokens count once per occurrence on both sides
    assert metrics.token_f1("a cat cat", "cat", "en") == pytest.approx(2 * 0.5 * 1 / 1.5)


# ----------------------------------------------------------------------------- ROUGE / BLEU


def test_rouge_l_by_hand() -> None:
    # LCS of [a b c d] and [a c d e f] is a c d: P 3/4, R 3/5 -> 2/3
    assert metrics.rouge_l(["a", "b", "c", "d"], ["a", "c", "d", "e", "f"]) == pytest.approx(2 / 3)
    # jieba tokens: 我/爱/北京/天安门 vs 我/爱/北京: P 3/4, R 1 -> 6/7
    pred = metrics.gen_tokens("我爱北京天安门", "zh")
    assert pred == ["我", "爱", "北京", "天安门"]
    assert metrics.rouge_l(pred, metrics.gen_tokens("我爱北京", "zh")) == pytest.approx(6 / 7)


def test_bleu4_by_hand() -> None:
    pred = ["the", "cat", "sat", "on", "the", "mat"]
    ref = ["the", "cat", "is", "on", "the", "mat"]
    # clipped precisions 5/6, 3/5, 1/4, and 0/3 smoothed (method3) to 1/(2*3); BP 1
    expected = (5 / 6 * 3 / 5 * 1 / 4 * 1 / 6) ** 0.25
    assert metrics.bleu4(pred, ref) == pytest.approx(expected)
    assert metrics.bleu4(ref, ref) == pytest.approx(1.0)
    # shorter than the reference: brevity penalty exp(1 - 6/3)
    short = ["the", "cat", "is"]
    expected_short = math.exp(1 - 6 / 3) * (1 * 1 * 1 * (1 / 2)) ** 0.25
    assert metrics.bleu4(short, ref) == pytest.approx(expected_short)
    assert metrics.bleu4(["dog"], ref) == 0.0


def test_contains_and_citations() -> None:
    assert metrics.contains("答案是踢爆。", "踢爆", "zh") == 1.0
    assert metrics.contains("The answer is Paris.", "paris", "en") == 1.0
    assert metrics.contains("Parisian", "Paris", "en") == 0.0  # word boundaries in English
    assert metrics.strip_citations("踢爆[1]。见[2, 3]") == "踢爆。见"
    assert metrics.language("踢爆") == "zh" and metrics.language("Paris") == "en"


def test_refusal_and_similarity() -> None:
    patterns = ["无法回答", "cannot answer"]
    assert metrics.is_refusal("抱歉，根据已有资料无法回答该问题", patterns)
    assert metrics.is_refusal("I CANNOT ANSWER that.", patterns)
    assert not metrics.is_refusal("Paris", patterns)
    assert metrics.similarity("曹雪芹", "曹雪芹 ", "zh") == 1.0
    assert metrics.similarity("曹雪芹写的", "曹雪芹", "zh") == pytest.approx(0.75)


# ----------------------------------------------------------------------------- retrieval


def test_gold_rank_counts_distinct_documents() -> None:
    sources = [{"filename": "a.txt"}, {"filename": "a.txt"}, {"filename": "docs/b.txt"}]
    assert metrics.gold_rank(sources, "a.txt") == 1
    assert metrics.gold_rank(sources, "b.txt") == 2
    assert metrics.gold_rank(sources, "c.txt") is None


def test_statistics() -> None:
    assert metrics.percentile([1, 2, 3, 4], 50) == pytest.approx(2.5)
    assert metrics.percentile([1, 2, 3, 4], 95) == pytest.approx(3.85)
    assert metrics.percentile([], 50) is None
    ci = metrics.bootstrap_ci([0.5] * 10)
    assert ci is not None and ci.mean == ci.low == ci.high == 0.5
    ci = metrics.bootstrap_ci([0.0, 1.0] * 50, samples=2000, seed=1)
    assert ci is not None and ci.low < 0.5 < ci.high and ci.high - ci.low < 0.25


# ----------------------------------------------------------------------------- QA and summary


def test_read_qa(tmp_path) -> None:
    path = tmp_path / "qa.jsonl"
    path.write_text(
        '{"id": "q1", "question": "谁?", "answers": ["甲"], "source": "a.txt"}\n\n'
        '{"id": "q2", "question": "off topic?", "answers": [], "answerable": false}\n',
        encoding="utf-8",
    )
    items = read_qa(path)
    assert [(i.id, i.answerable, i.source) for i in items] == [
        ("q1", True, "a.txt"),
        ("q2", False, None),
    ]
    negatives = tmp_path / "neg.txt"
    negatives.write_text("What is the weather?\n", encoding="utf-8")
    assert read_qa(negatives, negative=True)[0].answerable is False
    path.write_text('{"id": "x", "question": "q", "answers": []}\n', encoding="utf-8")
    with pytest.raises(QAError, match="at least one answer"):
        read_qa(path)


def _row(qid: str, system: str, repeat: int, answer: str, gold: str) -> dict:
    scores = metrics.score_answer(answer, [gold], "en")
    scores["refused"] = False
    return {
        "id": qid,
        "system": system,
        "repeat": repeat,
        "lang": "en",
        "scored_answer": answer,
        "scores": scores,
        "timings": {"total_ms": 100.0 * (repeat + 1), "completion_tokens": 2},
    }


def test_summary_stability_and_paired_counts() -> None:
    items = [QAItem("q1", "capital of France?", ["Paris"]), QAItem("q2", "2+2?", ["four"])]
    rows = [
        # rag: the same answer every time
        *[_row("q1", "rag", r, "Paris", "Paris") for r in range(2)],
        *[_row("q2", "rag", r, "four", "four") for r in range(2)],
        # lora: sometimes right, sometimes wrong on q1; wrong twice on q2
        _row("q1", "lora", 0, "Paris", "Paris"),
        _row("q1", "lora", 1, "Lyon", "Paris"),
        _row("q2", "lora", 0, "five", "four"),
        _row("q2", "lora", 1, "five", "four"),
    ]
    summary = summarize(rows, items, ["rag", "lora"], SummaryOptions(samples=200))
    rag, lora = summary["systems"]["rag"], summary["systems"]["lora"]
    assert {k: v for k, v in rag["stability"].items() if not k.endswith("_ci")} == {
        "questions": 2,
        "repeats": 2,
        "identical": 1.0,
        "pairwise_similarity": 1.0,
        "mixed_correctness": 0.0,
        "mixed_questions": 0,
    }
    assert rag["stability"]["identical_ci"] == {"mean": 1.0, "low": 1.0, "high": 1.0}
    assert lora["stability"]["identical"] == 0.5
    assert lora["stability"]["mixed_correctness"] == 0.5
    assert rag["em"]["mean"] == 1.0 and lora["em"]["mean"] == pytest.approx(0.25)
    assert rag["latency_ms"]["p50"] == 150.0
    pair = summary["paired"][0]
    assert (pair["a"], pair["b"], pair["a_wins"], pair["b_wins"], pair["ties"]) == (
        "rag",
        "lora",
        2,
        0,
        0,
    )
    assert [d["id"] for d in summary["disagreements"]] == ["q2", "q1"]
