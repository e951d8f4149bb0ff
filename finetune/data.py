"""SFT examples: read QA / alpaca / conversations files, split a holdout, write JSONL.

An SFT example is one JSON line ``{"id", "messages": [{"role", "content"}...], "source",
"question", "answers"}``: ``messages`` is what training renders through the chat template;
``question``/``answers``/``source`` keep the ``qa.jsonl`` shape so a holdout file is a test
file for the eval as it is.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tempfile
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

logger = logging.getLogger(__name__)

ROLES = {"system", "user", "assistant"}
# ChatGLM3 finetune_demo roles beyond the OpenAI three; tool turns keep their text as user
_ROLE_ALIASES = {"observation": "user", "tool": "user", "human": "user", "gpt": "assistant"}


class DataError(ValueError):
    """A data file that cannot be used, with file and line number."""


@dataclass
class SFTExample:
    id: str
    messages: list[dict[str, str]]
    source: str | None = None
    answers: list[str] = field(default_factory=list)
    # a knowledge-injection example (a chunk's text): always trained on, never held out
    knowledge: bool = False

    @property
    def question(self) -> str:
        users = [m["content"] for m in self.messages if m["role"] == "user"]
        return users[-1] if users else ""

    def to_json(self) -> dict[str, Any]:
        answers = self.answers or [
            next(m["content"] for m in reversed(self.messages) if m["role"] == "assistant")
        ]
        return {
            "id": self.id,
            "question": self.question,
            "answers": answers,
            "source": self.source,
            "messages": self.messages,
        }


def _str(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{what} must be a non-empty string")
    return value


def _from_qa(record: dict[str, Any], rid: str) -> SFTExample:
    question = _str(record.get("question"), "'question'")
    answers = record.get("answers")
    if isinstance(answers, str):
        answers = [answers]
    if "answer" in record and not answers:
        answers = [record["answer"]]
    if not isinstance(answers, list) or not answers:
        raise ValueError("'answers' must be a non-empty list of strings")
    answers = [_str(a, "every answer") for a in answers]
    source = record.get("source")
    return SFTExample(
        rid,
        [{"role": "user", "content": question}, {"role": "assistant", "content": answers[0]}],
        str(source) if source is not None else None,
        answers,
    )


def _from_alpaca(record: dict[str, Any], rid: str) -> SFTExample:
    instruction = _str(record.get("instruction"), "'instruction'")
    extra = record.get("input") or ""
    if not isinstance(extra, str):
        raise ValueError("'input' must be a string")
    output = _str(record.get("output"), "'output'")
    prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": output}]
    system = record.get("system")
    if isinstance(system, str) and system.strip():
        messages.insert(0, {"role": "system", "content": system})
    source = record.get("source")
    return SFTExample(rid, messages, str(source) if source is not None else None)


def _from_messages(turns: Any, rid: str, source: Any, key: str) -> SFTExample:
    if not isinstance(turns, list) or not turns:
        raise ValueError(f"'{key}' must be a non-empty list of turns")
    messages: list[dict[str, str]] = []
    for index, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise ValueError(f"'{key}'[{index}] must be an object with role and content")
        role = turn.get("role", turn.get("from"))
        content = turn.get("content", turn.get("value"))
        role = _ROLE_ALIASES.get(str(role), role)
        if role not in ROLES:
            raise ValueError(f"'{key}'[{index}] has role {role!r}; expected one of {sorted(ROLES)}")
        if not isinstance(content, str):
            raise ValueError(f"'{key}'[{index}] content must be a string")
        messages.append({"role": role, "content": content})
    if messages[-1]["role"] != "assistant" or not messages[-1]["content"].strip():
        raise ValueError(f"'{key}' must end with a non-empty assistant turn")
    if not any(m["role"] == "user" for m in messages):
        raise ValueError(f"'{key}' has no user turn")
    return SFTExample(rid, messages, str(source) if source is not None else None)


def parse_record(record: Any, rid: str) -> SFTExample:
    """One input record in any supported shape -> an SFT example (ValueError when invalid)."""
    if not isinstance(record, dict):
        raise ValueError("expected a JSON object")
    rid = str(record.get("id") or rid)
    if "messages" in record:
        return _from_messages(record["messages"], rid, record.get("source"), "messages")
    if "conversations" in record:
        return _from_messages(record["conversations"], rid, record.get("source"), "conversations")
    if "instruction" in record:
        return _from_alpaca(record, rid)
    if "question" in record:
        return _from_qa(record, rid)
    raise ValueError(
        "unknown record shape: expected QA (question, answers), alpaca (instruction, input, "
        "output), or conversations/messages (list of role/content turns)"
    )


def _records(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed JSON) of a JSONL file, or of a JSON list file (alpaca style)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise DataError(f"{path}: file not found") from exc
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc})") from exc
    stripped = text.lstrip()
    if path.suffix == ".json" and stripped.startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from exc
        # a JSON list has no line per record: report the item index (1-based) instead
        yield from ((index + 1, item) for index, item in enumerate(items))
        return
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{lineno}: invalid JSON: {exc.msg}") from exc


def read_examples(path: Path) -> list[SFTExample]:
    """Every record of ``path`` as an SFT example; the first invalid one raises DataError."""
    examples: list[SFTExample] = []
    for lineno, record in _records(path):
        try:
            examples.append(parse_record(record, f"{path.stem}-{lineno}"))
        except ValueError as exc:
            raise DataError(f"{path}:{lineno}: {exc}") from exc
    if not examples:
        raise DataError(f"{path}: no records")
    return examples


def _normalise(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(text.split())


def _group_key(example: SFTExample, by: Literal["question", "source"]) -> str:
    if by == "source":
        return example.source or f"id:{example.id}"
    return _normalise(example.question)


def holdout_split(
    examples: list[SFTExample],
    fraction: float,
    by: Literal["question", "source"] = "question",
    seed: int = 0,
) -> tuple[list[SFTExample], list[SFTExample]]:
    """Deterministic (train, holdout): groups ordered by a seeded hash, the first
    ceil(fraction x groups) held out. Same input and seed -> same split; no group on both sides.
    Knowledge examples (``knowledge``: a chunk's text) are never test questions: by question
    they always train, by source they are left out with their held-out document.
    """
    if fraction <= 0:
        return list(examples), []
    # knowledge examples (a chunk's text) always train: the test asks questions, not chunks
    groups = sorted({_group_key(e, by) for e in examples if not e.knowledge})
    if len(groups) < 2:
        raise DataError(f"holdout by {by} needs at least 2 distinct {by}s, got {len(groups)}")

    def rank(key: str) -> str:
        return hashlib.sha256(f"{seed}\x00{key}".encode()).hexdigest()

    n_hold = min(len(groups) - 1, max(1, math.ceil(fraction * len(groups))))
    held = set(sorted(groups, key=rank)[:n_hold])
    # by question a knowledge example always trains; by source it follows its document (a
    # held-out document stays unseen), and it is never a test question
    train = [
        e for e in examples if (e.knowledge and by == "question") or _group_key(e, by) not in held
    ]
    holdout = [e for e in examples if not e.knowledge and _group_key(e, by) in held]
    return train, holdout


def holdout_path(train_path: Path) -> Path:
    """Where the holdout split of ``train.jsonl`` goes: ``train.holdout.jsonl`` beside it."""
    return train_path.with_name(f"{train_path.stem}.holdout.jsonl")


def write_jsonl_atomic(files: dict[Path, Iterable[dict[str, Any]]]) -> None:
    """Write several JSONL files so that either all of them appear complete, or none changes."""
    temps: list[tuple[Path, Path]] = []
    try:
        for target, rows in files.items():
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
            temps.append((Path(tmp_name), target))
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                for row in rows:
                    handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        for tmp, target in temps:
            os.replace(tmp, target)
    finally:
        for tmp, _ in temps:
            tmp.unlink(missing_ok=True)


@dataclass
class BuildReport:
    train: int
    holdout: int
    train_path: Path
    holdout_path: Path | None
    skipped: int = 0


def build_dataset(
    inputs: list[Path],
    out: Path,
    *,
    holdout: float = 0.0,
    holdout_by: Literal["question", "source"] = "question",
    holdout_seed: int = 0,
    extra: list[SFTExample] | None = None,
) -> BuildReport:
    """Read every input (all validated before anything is written), split, write JSONL."""
    examples: list[SFTExample] = []
    for path in inputs:
        examples.extend(read_examples(path))
    examples.extend(extra or [])
    if not examples:
        raise DataError("no examples to write")
    seen: dict[str, int] = {}
    for example in examples:  # ids must be unique for the eval to join on them
        count = seen.get(example.id, 0)
        seen[example.id] = count + 1
        if count:
            example.id = f"{example.id}#{count}"
    train, held = holdout_split(examples, holdout, holdout_by, holdout_seed)
    files: dict[Path, Iterable[dict[str, Any]]] = {out: [e.to_json() for e in train]}
    held_path = holdout_path(out) if holdout > 0 else None
    if held_path is not None:
        files[held_path] = [e.to_json() for e in held]
    write_jsonl_atomic(files)
    logger.info(
        "event=sft_data_written train=%d holdout=%d out=%s holdout_by=%s",
        len(train),
        len(held),
        out,
        holdout_by,
    )
    return BuildReport(len(train), len(held), out, held_path)
