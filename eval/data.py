"""The questions of a comparison: a ``qa.jsonl`` test file and optional off-topic negatives."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class QAError(ValueError):
    """A QA file that cannot be used, with file and line."""


@dataclass
class QAItem:
    id: str
    question: str
    answers: list[str] = field(default_factory=list)
    source: str | None = None
    answerable: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "question": self.question,
            "answers": self.answers,
            "source": self.source,
            "answerable": self.answerable,
        }


def _item(record: Any, where: str, default_id: str, negative: bool) -> QAItem:
    if isinstance(record, str):
        record = {"question": record}
    if not isinstance(record, dict):
        raise QAError(f"{where}: expected a JSON object")
    question = record.get("question")
    if not isinstance(question, str) or not question.strip():
        raise QAError(f"{where}: 'question' must be a non-empty string")
    answers = record.get("answers", record.get("answer", []))
    if isinstance(answers, str):
        answers = [answers]
    if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
        raise QAError(f"{where}: 'answers' must be a list of strings")
    answerable = not negative and record.get("answerable", True) is not False
    if answerable and not [a for a in answers if a.strip()]:
        raise QAError(f"{where}: an answerable question needs at least one answer")
    source = record.get("source")
    return QAItem(
        id=str(record.get("id") or default_id),
        question=question.strip(),
        answers=[a for a in answers if a.strip()],
        source=str(source) if source else None,
        answerable=answerable,
    )


def read_qa(path: Path, *, negative: bool = False) -> list[QAItem]:
    """Questions of a JSONL file (``{"id", "question", "answers", "source", "answerable"}``).

    With ``negative`` every question is off-topic (``answerable: false``); such a file may
    also be plain text, one question a line.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise QAError(f"{path}: file not found") from exc
    prefix = "neg" if negative else path.stem
    items: list[QAItem] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record: Any = json.loads(line)
        except json.JSONDecodeError as exc:
            if not negative:
                raise QAError(f"{path}:{lineno}: invalid JSON: {exc.msg}") from exc
            record = line.strip()
        items.append(_item(record, f"{path}:{lineno}", f"{prefix}-{lineno}", negative))
    if not items:
        raise QAError(f"{path}: no questions")
    seen: set[str] = set()
    for item in items:
        if item.id in seen:
            raise QAError(f"{path}: duplicate id {item.id!r} (results are joined on ids)")
        seen.add(item.id)
    return items


def fingerprint(items: list[QAItem]) -> str:
    """A short hash of the questions (recorded with a run)."""
    digest = hashlib.sha256()
    for item in items:
        digest.update(json.dumps(item.to_dict(), ensure_ascii=False, sort_keys=True).encode())
    return digest.hexdigest()[:16]
