"""`kbqa eval compare` end to end with the packaged SmolLM2: a tiny knowledge base and a LoRA
adapter trained here, every system in-process (files, consistency, resume), then the same
comparison through a live kbqa server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from app.cli import cli
from app.settings import Settings, load_settings
from app.settings.finetune import FinetuneSettings
from eval.compare import DEFAULT_PROBE

DOCS = {
    "panda.txt": "Giant pandas live in the mountains of Sichuan in China. "
    "Their diet is almost entirely bamboo.",
    "tower.txt": "The Eiffel Tower stands in Paris. It was completed in 1889 "
    "and is about 330 metres tall.",
    "moon.txt": "Apollo 11 landed on the Moon in July 1969. "
    "Neil Armstrong was the first person to walk on the Moon.",
}
QA = [
    {
        "id": "q1",
        "question": "What do giant pandas eat?",
        "answers": ["bamboo"],
        "source": "panda.txt",
    },
    {
        "id": "q2",
        "question": "In which year was the Eiffel Tower completed?",
        "answers": ["1889"],
        "source": "tower.txt",
    },
    {
        "id": "q3",
        "question": "Who was the first person to walk on the Moon?",
        "answers": ["Neil Armstrong"],
        "source": "moon.txt",
    },
]
NEGATIVE = "What is a good recipe for chocolate cake?"
SYSTEMS = ["base", "rag", "lora", "rag+lora"]
REPEATS = 2
PROBE = 3  # forgetting-probe questions
MAX_TOKENS = 8


def _settings(data_dir: Path, models_dir: Path, **extra: Any) -> Settings:
    return load_settings(
        **{
            "data_dir": data_dir,
            "models_dir": models_dir,
            "ingest.workers": 0,
            "ingest.chunk_size": 200,
            **extra,
        }
    )


@pytest.fixture(scope="module")
def setup(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """A data dir with the knowledge base `facts`, a trained adapter, the QA files."""
    from finetune.train import train
    from ingest.service import KnowledgeBaseService

    tmp = tmp_path_factory.mktemp("eval-e2e")
    data_dir = tmp / "data"
    settings = _settings(data_dir, models_dir)
    data_dir.mkdir(parents=True)
    kb = KnowledgeBaseService.from_settings(settings)
    kb.create_kb("facts")
    for name, text in DOCS.items():
        kb.upload("facts", name, text.encode())
    done = kb.pipeline.run_pending(max_jobs=len(DOCS))
    assert [j.state for j in done] == ["succeeded"] * len(DOCS)
    kb.close()

    train_file = tmp / "train.jsonl"
    train_file.write_text(
        "".join(json.dumps(q, ensure_ascii=False) + "\n" for q in QA), encoding="utf-8"
    )
    adapter = tmp / "adapter"
    result = train(
        model="smollm2-135m-instruct",
        data=train_file,
        out=adapter,
        settings=FinetuneSettings(
            max_steps=2, batch_size=3, learning_rate=1e-3, logging_steps=1, max_length=128
        ),
        models_dir=models_dir,
    )
    assert not result.interrupted and (adapter / "adapter_config.json").is_file()

    qa = tmp / "test.jsonl"
    qa.write_text("".join(json.dumps(q) + "\n" for q in QA), encoding="utf-8")
    negatives = tmp / "negatives.txt"
    negatives.write_text(NEGATIVE + "\n", encoding="utf-8")
    # the forgetting probe: the first questions of the shipped one (all 30 would be 54 more
    # generations and as many likelihoods under base and lora, most of this test's time)
    probe = tmp / "probe.jsonl"
    shipped = DEFAULT_PROBE.read_text(encoding="utf-8").splitlines()
    probe.write_text("\n".join(shipped[:PROBE]) + "\n", encoding="utf-8")
    yield {
        "tmp": tmp,
        "data_dir": data_dir,
        "models_dir": models_dir,
        "adapter": adapter,
        "qa": qa,
        "negatives": negatives,
        "probe": probe,
    }


def _compare(setup: dict, out: Path, *extra: str) -> Any:
    args = [
        "eval",
        "compare",
        "--qa",
        str(setup["qa"]),
        "--negatives",
        str(setup["negatives"]),
        "--kb",
        "facts",
        "--out",
        str(out),
        "--repeats",
        str(REPEATS),
        "--max-tokens",
        str(MAX_TOKENS),
        "--data-dir",
        str(setup["data_dir"]),
        "--probe-file",
        str(setup["probe"]),
        *extra,
    ]
    env = {"KBQA_MODELS_DIR": str(setup["models_dir"]), "KBQA_INGEST__WORKERS": "0"}
    result = CliRunner().invoke(cli, args, env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def test_compare_in_process_files_consistency_and_resume(setup: dict) -> None:
    out = setup["tmp"] / "report"
    items = len(QA) + 1
    total = items * len(SYSTEMS) * REPEATS
    first = _compare(
        setup,
        out,
        "--model",
        "smollm2-135m-instruct",
        "--adapter",
        str(setup["adapter"]),
        "--systems",
        ",".join(SYSTEMS),
    )
    assert f"asked={total} reused=0 failed=0" in first.output
    for name in ("results.jsonl", "summary.json", "report.md", "report.html", "run.json"):
        assert (out / name).is_file(), name
    assert (out / "metrics.png").stat().st_size > 1000
    assert (out / "stability.png").stat().st_size > 1000

    rows = _rows(out)
    assert len(rows) == total and not any(r.get("error") for r in rows)
    assert {(r["id"], r["system"], r["repeat"]) for r in rows} == {
        (i, s, r) for i in [*(q["id"] for q in QA), "neg-1"] for s in SYSTEMS for r in range(2)
    }
    for row in rows:
        scores = row["scores"]
        assert row["timings"]["total_ms"] > 0
        if row["answerable"]:
            assert 0 <= scores["em"] <= scores["contains"] <= 1
            assert scores["em"] <= scores["f1"] <= 1
        if row["system"] in ("rag", "rag+lora") and row["answerable"]:
            assert scores["hit@1"] <= scores["hit@k"]
            assert row["sources"] or row["refused_flag"]
        else:
            assert "hit@1" not in scores
    # the two rag systems retrieve the same passages for the same question
    ranks = {(r["id"], r["system"]): r["scores"].get("gold_rank") for r in rows}
    assert all(ranks[(q["id"], "rag")] == ranks[(q["id"], "rag+lora")] for q in QA)
    # the adapter changes answers somewhere (it was trained, its weights are not zero)
    answers = {(r["id"], r["system"], r["repeat"]): r["answer"] for r in rows}
    assert any(answers[(q["id"], "base", 0)] != answers[(q["id"], "lora", 0)] for q in QA)

    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["systems"]) == SYSTEMS and summary["skipped"] == {}
    for name in SYSTEMS:
        system = summary["systems"][name]
        assert system["answers"] == items * REPEATS
        # greedy decoding: every repeat gives the same answer
        assert system["stability"]["identical"] == 1.0
        assert system["stability"]["pairwise_similarity"] == 1.0
        assert system["stability"]["mixed_correctness"] == 0.0
        ci = system["f1"]
        assert ci["low"] <= ci["mean"] <= ci["high"]
        assert system["latency_ms"]["p50"] <= system["latency_ms"]["p95"]
        # the rate is what the rows say of the one off-topic question
        refused = {
            r["scores"]["refused"] for r in rows if r["system"] == name and not r["answerable"]
        }
        assert len(refused) == 1  # greedy: both repeats agree
        assert system["unanswerable"] == 1 and system["refusal_rate"] == float(refused.pop())
    # the relevance gate refuses the cake recipe without asking the model
    assert summary["systems"]["rag"]["refusal_rate"] == 1.0
    assert summary["systems"]["rag+lora"]["refusal_rate"] == 1.0
    rag = summary["systems"]["rag"]["retrieval"]
    assert rag["questions"] == len(QA) and rag["hit@1"]["mean"] <= rag["hit@k"]["mean"]
    pair = summary["paired"][0]
    assert (pair["a"], pair["b"]) == ("rag", "lora")
    assert pair["a_wins"] + pair["b_wins"] + pair["ties"] == len(QA)
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "rag+lora" in html
    assert "| system |" in (out / "report.md").read_text()

    # gold-answer likelihood: every answerable question under each system's own prompt
    # (3 questions x 4 systems, and the probe questions under base and lora)
    assert f"likelihood_scored={len(QA) * len(SYSTEMS) + 2 * PROBE}" in first.output
    lines = (out / "likelihood.jsonl").read_text().splitlines()
    likelihood = [r for r in map(json.loads, lines) if not r.get("probe")]
    assert len(lines) == len(QA) * len(SYSTEMS) + 2 * PROBE
    assert len(likelihood) == len(QA) * len(SYSTEMS)
    assert {(r["id"], r["system"]) for r in likelihood} == {
        (q["id"], s) for q in QA for s in SYSTEMS
    }
    by = {(r["id"], r["system"]): r for r in likelihood}
    for q in QA:
        base = by[(q["id"], "base")]
        assert base["nll"] > 0 and base["gold"] in q["answers"]
        # the trained adapter moves the likelihood; the rag prompt carries the passages
        assert by[(q["id"], "lora")]["nll"] != base["nll"]
        rag = by[(q["id"], "rag")]
        assert rag["nll"] is None or rag["prompt_tokens"] > base["prompt_tokens"] + 20
    for name in SYSTEMS:
        lik = summary["systems"][name]["likelihood"]
        assert lik["questions"] == len(QA)
        if lik["nll"]:
            assert lik["nll"]["low"] <= lik["nll"]["mean"] <= lik["nll"]["high"]
            assert lik["perplexity"]["mean"] == pytest.approx(
                2.718281828 ** lik["nll"]["mean"], rel=1e-4
            )
    assert "nll_difference" in summary["paired"][0]
    # the forgetting probe: general questions, base against lora
    assert f"probe_asked={2 * PROBE}" in first.output
    forgetting = summary["forgetting"]
    assert forgetting["questions"] == PROBE
    assert forgetting["nll"]["base"]["mean"] > 0 and forgetting["nll_difference"] is not None
    assert 0 <= forgetting["changed"]["low"] <= forgetting["changed"]["high"] <= 1
    assert (out / "instruments.png").stat().st_size > 1000
    assert "Forgetting probe" in html and "Gold-answer likelihood" in html

    # resume: nothing left to ask
    again = _compare(
        setup,
        out,
        "--adapter",
        str(setup["adapter"]),
        "--model",
        "smollm2-135m-instruct",
        "--systems",
        ",".join(SYSTEMS),
    )
    assert f"asked=0 reused={total} failed=0" in again.output
    assert "probe_asked=0 likelihood_scored=0" in again.output
    assert len(_rows(out)) == total
    # an interrupted run (last answers missing, a torn line) asks only what is missing
    lines = (out / "results.jsonl").read_text().splitlines()
    (out / "results.jsonl").write_text("\n".join(lines[:-3]) + '\n{"id": "q', encoding="utf-8")
    third = _compare(
        setup,
        out,
        "--adapter",
        str(setup["adapter"]),
        "--model",
        "smollm2-135m-instruct",
        "--systems",
        ",".join(SYSTEMS),
    )
    assert f"asked=3 reused={total - 3} failed=0" in third.output
    resumed = {
        (r["id"], r["system"], r["repeat"]): r["answer"] for r in _rows(out) if "answer" in r
    }
    assert resumed == answers  # greedy: the re-asked answers are the same
    # other answer-changing options: refused instead of mixed into the same file
    changed = CliRunner().invoke(
        cli,
        [
            *("eval", "compare", "--qa", str(setup["qa"]), "--kb", "facts", "--out", str(out)),
            *("--max-tokens", "5", "--data-dir", str(setup["data_dir"])),
        ],
        env={"KBQA_MODELS_DIR": str(setup["models_dir"])},
    )
    assert changed.exit_code == 2 and "--restart" in changed.output


def test_missing_inputs_are_skipped_with_a_note(setup: dict) -> None:
    out = setup["tmp"] / "skipped"
    result = _compare(
        setup, out, "--systems", "base,lora,rag+lora", "--repeats", "1", "--limit", "1"
    )
    assert "skipped lora: no --adapter given" in result.output
    assert "no probe: no lora system runs" in result.output
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["systems"]) == ["base"]
    assert set(summary["skipped"]) == {"lora", "rag+lora"}


def test_compare_through_a_live_server(setup: dict, live_server_factory: Any) -> None:
    from app.main import create_app

    settings = _settings(
        setup["data_dir"],
        setup["models_dir"],
        **{"api_keys": ["k-eval"], "llm.adapters": {"facts-lora": str(setup["adapter"])}},
    )
    out = setup["tmp"] / "server-report"
    with live_server_factory(create_app(settings)) as live:
        result = _compare(
            setup,
            out,
            "--server",
            live.url,
            "--api-key",
            "k-eval",
            "--adapter",
            "facts-lora",
            "--systems",
            "rag,lora",
            "--repeats",
            "1",
            "--no-probe",
        )
    assert "failed=0" in result.output
    assert "no likelihood: not measured with --server" in result.output
    rows = _rows(out)
    assert {r["system"] for r in rows} == {"rag", "lora"} and len(rows) == 2 * (len(QA) + 1)
    # the same greedy answers as in-process
    local = {
        (r["id"], r["system"]): r["answer"]
        for r in _rows(setup["tmp"] / "report")
        if r["repeat"] == 0
    }
    for row in rows:
        assert row["answer"] == local[(row["id"], row["system"])], row["id"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["meta"]["backend"] == "http"
    assert summary["systems"]["rag"]["retrieval"]["questions"] == len(QA)
