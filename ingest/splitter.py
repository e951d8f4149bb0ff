"""Chinese-aware, structure-aware splitting of loaded segments into chunks.

- Sentences end at 。！？；… and at ASCII . ! ? ; followed by white space or the end of a line,
  so numbers (3.14), clause numbers (8.1.4.1) and URLs are never cut; nor is a sentence at the
  full stop of an abbreviation or an initial ("e.g.", "et al.", "Fig. 3", "St. John", "J. R. R.
  Tolkien").
- Headings (Markdown, DOCX, HTML) and numbered clauses of standards ("8.1.4.1 身份鉴别",
  "第三章", "a)") start a new chunk; each chunk carries the heading path above it.
- Table rows are atomic: a row is never cut in half (only a single row longer than the chunk
  size is cut, by characters).
- Sentences are packed up to ``chunk_size`` characters; the next chunk repeats whole trailing
  sentences of up to ``chunk_overlap`` characters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ingest.models import Chunk, Segment

_SENTENCE_END = re.compile(r"(?:[。！？；]+|…+|[.!?;]+(?=\s|$))[”’\"'）)】」』]*")
_CLAUSE_NUMBER = re.compile(r"^\s*(\d{1,3}(?:\.\d{1,3})+)\.?\s+\S")
_CLAUSE_TITLE = re.compile(r"^\s*(\d{1,3}(?:\.\d{1,3})*)\.?\s+(\S.{0,40})$")
_CHAPTER = re.compile(r"^\s*第[一二三四五六七八九十百零〇\d]+[章节篇部分]\s*\S{0,40}$")
_LETTER_ITEM = re.compile(r"^\s*(?:[a-z]|[ivx]{1,4})[)）]\s*\S")
_TERMINAL = "。！？；.!?;:：，,"
# Words whose full stop ends no sentence (lower case; "no" only before a number: "No. 5").
_ABBREVIATIONS = frozenset(
    {"e.g", "i.e", "cf", "al", "vs", "fig", "figs", "eq", "eqs", "ref", "refs", "sec"}
    | {"ch", "vol", "pp", "approx", "mr", "mrs", "ms", "dr", "prof", "st", "jr", "sr"}
    | {"gen", "lt", "col", "sgt", "rev", "hon", "mt", "ft"}
)
_WORD_BEFORE = re.compile(r"(?<![A-Za-z0-9.])([A-Za-z](?:[A-Za-z.]*[A-Za-z])?)$")
_TITLE_MAX = 60  # a book or work title 《…》 is at most this long: a longer span is no title


def _abbreviation(text: str, index: int) -> bool:
    """Whether the "." at ``index`` ends an abbreviation or an initial, not a sentence."""
    if text[index] != ".":
        return False
    found = _WORD_BEFORE.search(text, max(0, index - 12), index)
    if not found:
        return False
    word = found.group(1)
    if len(word) == 1 and word.isupper():
        return True  # an initial: "J. Smith"
    if word.lower() == "no":
        return bool(re.match(r"\.\s*\d", text[index : index + 4]))
    return word.lower() in _ABBREVIATIONS


def _inside_title(text: str, index: int) -> bool:
    """Whether ``index`` lies inside a title 《…》 on one line (《卡拉OK.LIVE！‧台北‧我》: its "！"
    ends no sentence). An unclosed 《 or one further back than ``_TITLE_MAX`` does not count."""
    line_start = text.rfind("\n", 0, index) + 1
    opened = text.rfind("《", line_start, index)
    if opened < 0 or index - opened > _TITLE_MAX or text.rfind("》", opened, index) >= 0:
        return False
    closed = text.find("》", index, opened + _TITLE_MAX + 1)
    return closed >= 0 and "\n" not in text[index:closed]


@dataclass
class _Unit:
    start: int
    end: int
    page: int | None
    hard: bool = False  # an atomic unit (table row): never merged across a cut
    heading: bool = False
    row: bool = False  # a table row


def split_sentences(text: str) -> list[tuple[int, int]]:
    """Spans of the sentences of ``text`` (whitespace between them left out)."""
    spans: list[tuple[int, int]] = []
    pos = 0
    for match in _SENTENCE_END.finditer(text):
        if _inside_title(text, match.start()) or _abbreviation(text, match.start()):
            continue
        end = match.end()
        if text[pos:end].strip():
            spans.append((pos, end))
        pos = end
    if text[pos:].strip():
        spans.append((pos, len(text)))
    result = []
    for start, end in spans:
        while start < end and text[start].isspace():
            start += 1
        while end > start and text[end - 1].isspace():
            end -= 1
        if end > start:
            result.append((start, end))
    return result


def clause_heading(line: str) -> tuple[int, str] | None:
    """(level, title) when ``line`` is a numbered clause title or a chapter line."""
    stripped = line.strip()
    if _CHAPTER.match(stripped):
        return 1, stripped
    match = _CLAUSE_TITLE.match(stripped)
    if match and stripped[-1] not in _TERMINAL:
        number = match.group(1)
        if "." not in number and not re.search(r"[\u4e00-\u9fff]", match.group(2)[:1]):
            return None  # "3 apples" is not a clause; "3 范围" is
        return number.count(".") + 1, stripped
    return None


def starts_clause(line: str) -> bool:
    return bool(_CLAUSE_NUMBER.match(line) or _LETTER_ITEM.match(line))


class Splitter:
    def __init__(self, chunk_size: int = 500, chunk_overlap: int = 80) -> None:
        if chunk_overlap >= chunk_size:
            raise ValueError("chunk_overlap must be smaller than chunk_size")
        self.chunk_size = chunk_size
        self.chunk_overlap = chunk_overlap

    def join(self, segments: list[Segment]) -> tuple[str, list[int]]:
        """The document text (segments joined by newlines) and each segment's start offset."""
        starts: list[int] = []
        pos = 0
        for seg in segments:
            starts.append(pos)
            pos += len(seg.text) + 1
        return "\n".join(seg.text for seg in segments), starts

    def split(self, segments: list[Segment]) -> tuple[str, list[Chunk]]:
        text, starts = self.join(segments)
        sections: list[tuple[list[str], list[_Unit]]] = []
        path: list[tuple[int, str, bool]] = []  # (level, title, marked by the loader)
        current: list[_Unit] = []
        current_path: list[str] = []

        carry: list[_Unit] = []  # heading lines of a section without body yet

        def close() -> None:
            nonlocal current, carry
            if current and any(not u.heading for u in current):
                sections.append((current_path, current))
                carry = []
            else:  # only headings: they lead the next section's first chunk
                carry = current
            current = []

        for seg, offset in zip(segments, starts, strict=True):
            level: int | None = seg.heading_level
            title = seg.text.strip().lstrip("#").strip()
            marked = level is not None
            if level is None and not seg.table_row:
                found = clause_heading(seg.text)
                if found is not None:
                    # a numbered title ranks below the loader's headings above it ("01. 范围"
                    # under a "## 概述" is not a top-level heading)
                    base = max((lvl for lvl, _, explicit in path if explicit), default=0)
                    level, title = base + found[0], found[1]
            if level is not None:
                close()
                while path and path[-1][0] >= level:
                    path.pop()
                path.append((level, title, marked))
                current_path = [t for _, t, _ in path]
                current = [*carry, _Unit(offset, offset + len(seg.text), seg.page, heading=True)]
                carry = []
                continue
            if not seg.table_row and starts_clause(seg.text) and self._has_body(current):
                close()
                current_path = [t for _, t, _ in path]
            if seg.table_row:
                current.append(_Unit(offset, offset + len(seg.text), seg.page, hard=True, row=True))
            else:
                for s, e in split_sentences(seg.text):
                    current.append(_Unit(offset + s, offset + e, seg.page))
        close()
        if carry:  # a document of headings only
            sections.append((current_path, carry))

        chunks: list[Chunk] = []
        for heading_path, units in sections:
            tabled = any(u.row for u in units)
            for start, end, page in self._pack(units):
                inside = [u for u in units if start <= u.start and u.end <= end] if tabled else []
                body = [u for u in inside if not u.heading]
                chunks.append(
                    Chunk(
                        text=text[start:end],
                        index=len(chunks),
                        start=start,
                        end=end,
                        page=page,
                        heading_path=list(heading_path),
                        rows=len(body) if body and all(u.row for u in body) else 0,
                    )
                )
        return text, chunks

    @staticmethod
    def _has_body(units: list[_Unit]) -> bool:
        return len(units) > 0

    def _pieces(self, units: list[_Unit]) -> list[_Unit]:
        """Units longer than the chunk size cut by characters (with overlap)."""
        out: list[_Unit] = []
        step = self.chunk_size - self.chunk_overlap
        for unit in units:
            if unit.end - unit.start <= self.chunk_size:
                out.append(unit)
                continue
            pos = unit.start
            while pos < unit.end:
                end = min(pos + self.chunk_size, unit.end)
                out.append(_Unit(pos, end, unit.page, hard=True))
                if end == unit.end:
                    break
                pos += step
        return out

    def _pack(self, units: list[_Unit]) -> list[tuple[int, int, int | None]]:
        pieces = self._pieces(units)
        result: list[tuple[int, int, int | None]] = []
        i = 0
        while i < len(pieces):
            first = pieces[i]
            j = i + 1
            # a new page starts a new chunk: every chunk has the one page it cites
            while (
                j < len(pieces)
                and pieces[j].end - first.start <= self.chunk_size
                and pieces[j].page == first.page
            ):
                j += 1
            result.append((first.start, pieces[j - 1].end, first.page))
            if j >= len(pieces):
                break
            # overlap: whole trailing units of this chunk, within chunk_overlap characters
            k = j
            while (
                k - 1 > i
                and pieces[j - 1].end - pieces[k - 1].start <= self.chunk_overlap
                and pieces[k - 1].end - pieces[k - 1].start < self.chunk_overlap
                and pieces[j].end - pieces[k - 1].start <= self.chunk_size
                and pieces[k - 1].page == pieces[j].page
            ):
                k -= 1
            i = k
        return result
