"""SFT data: record shapes, line-numbered errors, atomic writing, the holdout split, examples
from a knowledge base (chunks and LLM-written pairs), and the `kbqa finetune data` command."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from app.cli import cli
from app.settings.finetune import FinetuneDataSettings
from finetune.data import DataError, build_dataset, holdout_split, read_examples
from finetune.kb import KBChunk, chunk_examples, generate_qa, parse_qa_reply, read_chunks


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text(
        "".join(
            (r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows
        ),
        encoding="utf-8",
    )
    return path


def qa_rows(n: int, sources: int = 5) -> list[dict[str, Any]]:
    return [
        {
            "id": f"q{i}",
            "question": f"Question number {i}?",
            "answers": [f"answer {i}"],
            "source": f"doc{i % sources}.txt",
        }
        for i in range(n)
    ]


def test_reads_qa_alpaca_and_conversations(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "mixed.jsonl",
        [
            {"question": "问题一？", "answers": ["答案一", "答一"], "source": "a.txt"},
            {"instruction": "Translate", "input": "chat", "output": "猫", "system": "Be brief."},
            {
                "conversations": [
                    {"role": "system", "content": "You are ChatGLM3."},
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": "hello"},
                    {"role": "user", "content": "code?"},
                    {"role": "assistant", "content": "42"},
                ]
            },
        ],
    )
    qa, alpaca, conv = read_examples(path)
    assert qa.messages == [
        {"role": "user", "content": "问题一？"},
        {"role": "assistant", "content": "答案一"},
    ]
    assert qa.answers == ["答案一", "答一"] and qa.source == "a.txt"
    assert alpaca.messages[0] == {"role": "system", "content": "Be brief."}
    assert alpaca.messages[1]["content"] == "Translate\n\nchat"
    assert [m["role"] for m in conv.messages] == [
        "system",
        "user",
        "assistant",
        "user",
        "assistant",
    ]
    assert conv.to_json()["question"] == "code?" and conv.to_json()["answers"] == ["42"]


def test_alpaca_json_list_file(tmp_path: Path) -> None:
    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps([{"instruction": "a", "input": "", "output": "b"}] * 2))
    assert [e.messages[-1]["content"] for e in read_examples(path)] == ["b", "b"]


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("{not json", "invalid JSON"),
        ({"question": "q?"}, "'answers'"),
        ({"question": "q?", "answers": []}, "'answers'"),
        ({"instruction": "x", "output": ""}, "'output'"),
        ({"conversations": [{"role": "user", "content": "hi"}]}, "assistant"),
        ({"conversations": [{"role": "robot", "content": "hi"}]}, "role 'robot'"),
        ({"text": "plain"}, "unknown record shape"),
        ([1, 2], "JSON object"),
    ],
)
def test_invalid_record_names_file_and_line(tmp_path: Path, bad: Any, message: str) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", [qa_rows(1)[0], "", bad, qa_rows(2)[1]])
    with pytest.raises(DataError) as info:
        read_examples(path)
    assert f"{path}:3:" in str(info.value)  # the blank line 2 still counts
    assert message in str(info.value)


def test_nothing_half_written(tmp_path: Path) -> None:
    good = write_jsonl(tmp_path / "good.jsonl", qa_rows(6))
    bad = write_jsonl(tmp_path / "bad.jsonl", [*qa_rows(3), "{oops"])
    out = tmp_path / "out" / "train.jsonl"
    build_dataset([good], out, holdout=0.3)
    before = {p.name: p.read_bytes() for p in out.parent.iterdir()}
    with pytest.raises(DataError, match=r"bad\.jsonl:4:"):
        build_dataset([good, bad], out, holdout=0.3)
    assert {p.name: p.read_bytes() for p in out.parent.iterdir()} == before  # no temp files left


@pytest.mark.parametrize("by", ["question", "source"])
def test_holdout_is_deterministic_and_disjoint(tmp_path: Path, by: Any) -> None:
    rows = qa_rows(40, sources=8)
    rows.append({**rows[0], "id": "dup"})  # the same question twice must stay on one side
    examples = read_examples(write_jsonl(tmp_path / "qa.jsonl", rows))
    train, held = holdout_split(examples, 0.25, by, seed=3)
    train2, held2 = holdout_split(list(reversed(examples)), 0.25, by, seed=3)
    assert {e.id for e in held} == {e.id for e in held2}
    assert {e.id for e in train} == {e.id for e in train2}
    assert len(train) + len(held) == len(examples) and held and train
    key = (lambda e: e.question) if by == "question" else (lambda e: e.source)
    assert not {key(e) for e in train} & {key(e) for e in held}
    other_train, _ = holdout_split(examples, 0.25, by, seed=4)
    assert {e.id for e in other_train} != {e.id for e in train}


def test_build_dataset_writes_train_and_holdout_side_by_side(tmp_path: Path) -> None:
    qa = write_jsonl(tmp_path / "qa.jsonl", qa_rows(20))
    out = tmp_path / "sft" / "train.jsonl"
    report = build_dataset([qa], out, holdout=0.2, holdout_by="source")
    assert report.holdout_path == tmp_path / "sft" / "train.holdout.jsonl"
    train = [json.loads(line) for line in out.read_text().splitlines()]
    held = [json.loads(line) for line in report.holdout_path.read_text().splitlines()]
    assert (len(train), len(held)) == (report.train, report.holdout) == (16, 4)
    assert set(held[0]) >= {"id", "question", "answers", "source", "messages"}  # qa.jsonl shape
    assert {r["source"] for r in held} == {"doc" + held[0]["source"][3:]}
    assert not {r["id"] for r in train} & {r["id"] for r in held}


# ------------------------------------------------------------------------ knowledge base


@dataclass
class FakeDoc:
    doc_id: str
    filename: str
    status: str = "ready"


@dataclass
class FakeHit:
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)


class FakeKB:
    """The two reading methods of the knowledge-base service."""

    def list_documents(self, kb: str) -> list[FakeDoc]:
        return [FakeDoc("d2", "b.md"), FakeDoc("d1", "a.txt"), FakeDoc("d3", "c.txt", "failed")]

    def list_chunks(self, kb: str, doc_id: str) -> list[FakeHit]:
        return {
            "d1": [
                FakeHit("Alpha one.", {"chunk_id": "c1", "filename": "a.txt"}),
                FakeHit("Alpha two.", {"chunk_id": "c2", "filename": "a.txt"}),
            ],
            "d2": [
                FakeHit("Install it.", {"chunk_id": "c3", "heading_path": ["Guide", "Setup"]}),
                FakeHit("  ", {"chunk_id": "c4"}),
            ],
        }[doc_id]


def test_chunks_become_knowledge_examples() -> None:
    chunks = read_chunks(FakeKB(), "kb")
    assert [c.chunk_id for c in chunks] == ["c1", "c2", "c3", "c4"]  # failed document skipped
    examples = chunk_examples(chunks, FinetuneDataSettings.model_validate({}))
    assert [(e.question, e.messages[-1]["content"], e.source) for e in examples] == [
        ("What does a.txt say? (part 1 of 2)", "Alpha one.", "a.txt"),
        ("What does a.txt say? (part 2 of 2)", "Alpha two.", "a.txt"),
        ("What does Guide > Setup say?", "Install it.", "b.md"),
    ]


def test_at_most_n_chunks_evenly_spaced() -> None:
    from finetune.kb import spread

    chunks = [KBChunk(f"c{i}", "doc.txt", "", f"text {i}") for i in range(10)]
    assert [c.chunk_id for c in spread(chunks, 4)] == ["c0", "c2", "c5", "c7"]
    assert spread(chunks, 0) == chunks and spread(chunks, 20) == chunks


def test_parse_qa_reply_shapes() -> None:
    assert parse_qa_reply('{"question": "A?", "answer": "a"}\n{"question": "B?"}\nnoise') == (
        [("A?", "a")],
        1,
    )
    assert parse_qa_reply('```json\n[{"question": "A?", "answer": "a"}]\n```') == ([("A?", "a")], 0)
    assert parse_qa_reply("Q: one?\nA: 1\nQ: two?\nQ: three?\nA: 3") == (
        [("one?", "1"), ("three?", "3")],
        1,
    )


def test_generate_qa_counts_skipped_pairs() -> None:
    chunks = [KBChunk(f"c{i}", "doc.txt", "", f"text {i}") for i in range(3)]
    asked: list[str] = []

    def ask(prompt: str) -> str:
        asked.append(prompt)
        if "text 0" in prompt:
            return '{"question": "Q0?", "answer": "text 0"}\n{"question": "", "answer": "x"}'
        if "text 1" in prompt:
            raise TimeoutError("LLM down")
        return "I cannot help with that."

    progress: list[tuple[int, int]] = []
    settings = FinetuneDataSettings.model_validate({"generate_qa_per_chunk": 2})
    result = generate_qa(chunks, ask, settings, lambda k, s: progress.append((k, s)))
    assert [e.messages for e in result.examples] == [
        [{"role": "user", "content": "Q0?"}, {"role": "assistant", "content": "text 0"}]
    ]
    assert result.examples[0].source == "doc.txt" and not result.examples[0].knowledge
    assert (result.skipped, result.failed_chunks) == (1 + 2 + 2, 1)
    assert result.report() == {
        "asked": 6,
        "kept": 1,
        "dropped": {
            "missing": 3,
            "failed_call": 2,
            "too_long": 0,
            "not_in_chunk": 0,
            "duplicate": 0,
        },
        "failed_chunks": 1,
    }
    assert progress == [(1, 1), (0, 2), (0, 2)]
    assert "Write 2 different questions" in asked[0] and "text 0" in asked[0]


def test_generated_pairs_are_dropped_by_reason() -> None:
    """Kept: an answer taken from its chunk, once per question. Dropped: a duplicate question
    (any chunk, punctuation and case aside), an answer the chunk does not hold, a too-long
    one. A Chinese chunk gets the Chinese prompt."""
    from finetune.kb import is_chinese, support

    zh = "等级保护2.0采用的防护理念是“一个中心，三重防护”。第三级系统每年至少测评一次。"
    chunks = [
        KBChunk("c0", "dengbao.md", "总则", zh),
        KBChunk("c1", "guide.txt", "", "Level 3 systems are assessed once a year."),
    ]
    replies = {
        "c0": [
            {"question": "防护理念是什么？", "answer": "一个中心，三重防护"},
            {"question": "第三级系统多久测评一次？", "answer": "每年至少测评一次"},
            {"question": "谁负责测评？", "answer": "公安机关指定的测评机构"},  # not in the chunk
        ],
        "c1": [
            {"question": "防护理念是什么?", "answer": "Level 3"},  # duplicate question
            {"question": "How often are Level 3 systems assessed?", "answer": "once a year"},
            {"question": "What is assessed?", "answer": "Level 3 systems " * 20},  # too long
        ],
    }
    prompts: list[str] = []

    def ask(prompt: str) -> str:
        prompts.append(prompt)
        chunk = "c0" if "防护理念" in prompt else "c1"
        return "\n".join(json.dumps(r, ensure_ascii=False) for r in replies[chunk])

    settings = FinetuneDataSettings.model_validate({"generate_qa_max_answer_chars": 100})
    result = generate_qa(chunks, ask, settings)
    assert [e.question for e in result.examples] == [
        "防护理念是什么？",
        "第三级系统多久测评一次？",
        "How often are Level 3 systems assessed?",
    ]
    assert result.report()["dropped"] == {
        "missing": 0,
        "failed_call": 0,
        "too_long": 1,
        "not_in_chunk": 1,
        "duplicate": 1,
    }
    assert result.report()["kept"] == 3 and result.skipped == 3
    assert prompts[0].startswith("阅读下面的资料，提出3个不同的问题")
    assert prompts[1].startswith("Write 3")
    assert is_chinese(zh, 0.3) and not is_chinese("Level 3 系统", 0.5)
    assert support("三重防护，一个中心", zh) == 1.0 and support("公安机关", zh) == 0.0


def test_knowledge_examples_are_never_test_questions() -> None:
    from finetune.data import SFTExample, holdout_split

    def example(i: int, source: str, knowledge: bool = False) -> SFTExample:
        return SFTExample(
            id=f"e{i}",
            messages=[
                {"role": "user", "content": f"question {i}?"},
                {"role": "assistant", "content": f"answer {i}"},
            ],
            source=source,
            knowledge=knowledge,
        )

    qa = [example(i, f"d{i % 4}.txt") for i in range(20)]
    chunks = [example(100 + i, f"d{i}.txt", knowledge=True) for i in range(4)]
    train, held = holdout_split(qa + chunks, 0.25, "question", 0)
    assert held and not any(e.knowledge for e in held)
    assert all(c in train for c in chunks)  # by question: every chunk trains
    train, held = holdout_split(qa + chunks, 0.25, "source", 0)
    held_sources = {e.source for e in held}
    assert held_sources and not any(e.knowledge for e in held)
    # by source: a held-out document's chunk is not trained on either
    assert {c.source for c in chunks if c in train} == {f"d{i}.txt" for i in range(4)} - (
        held_sources
    )


# ------------------------------------------------------------------------------------ CLI


def test_cli_data_line_numbered_error_and_exit_code(tmp_path: Path) -> None:
    bad = write_jsonl(tmp_path / "bad.jsonl", [*qa_rows(2), {"question": "no answers"}])
    out = tmp_path / "train.jsonl"
    result = CliRunner().invoke(cli, ["finetune", "data", str(bad), "--out", str(out)])
    assert result.exit_code == 2
    assert f"{bad}:3: 'answers' must be a non-empty list" in result.output
    assert not out.exists()


def test_cli_data_writes_train_and_holdout(tmp_path: Path) -> None:
    qa = write_jsonl(tmp_path / "qa.jsonl", qa_rows(10))
    out = tmp_path / "train.jsonl"
    args = ["finetune", "data", str(qa), "--out", str(out), "--holdout", "0.2"]
    result = CliRunner().invoke(cli, [*args, "--holdout-by", "source"])
    assert result.exit_code == 0, result.output
    assert f"train=8 out={out} holdout=2" in result.output
    assert len((tmp_path / "train.holdout.jsonl").read_text().splitlines()) == 2
    result = CliRunner().invoke(cli, [*args, "--holdout-by", "chapter"])
    assert result.exit_code == 2 and "holdout_by" in result.output


def test_cli_generate_qa_writes_its_report(tmp_path: Path, models_dir: Path) -> None:
    """`kbqa finetune data --kb K --generate-qa` with the real tiny model: the chunks train as
    knowledge examples, and `<out>.generate-qa.json` says how many generated pairs were kept
    and why the others were dropped (every pair asked for is accounted for)."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "tower.txt").write_text(
        "The Eiffel Tower in Paris was completed in 1889. It is 330 metres tall.",
        encoding="utf-8",
    )
    env = {
        "KBQA_DATA_DIR": str(tmp_path / "data"),
        "KBQA_MODELS_DIR": str(models_dir),
        "KBQA_INGEST__WORKERS": "0",
        "KBQA_FINETUNE__DATA__GENERATE_QA_MAX_TOKENS": "64",
    }
    runner = CliRunner()
    ingested = runner.invoke(cli, ["ingest", str(docs), "--kb", "facts"], env=env)
    assert ingested.exit_code == 0, ingested.output
    out = tmp_path / "train.jsonl"
    args = ["finetune", "data", "--kb", "facts", "--generate-qa", "--out", str(out)]
    result = runner.invoke(cli, [*args, "--max-chunks", "1"], env=env)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "train.generate-qa.json").read_text())
    assert report["asked"] == 3 and report["failed_chunks"] == 0
    assert report["kept"] + sum(report["dropped"].values()) == report["asked"]
    assert f"generated_kept={report['kept']}" in result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[0]["answers"] == [
        "The Eiffel Tower in Paris was completed in 1889. It is 330 metres tall."
    ]
    assert len(rows) == 1 + report["kept"]
