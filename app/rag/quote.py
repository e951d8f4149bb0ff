"""The source's own words as the answer.

Short answers (a name, date, number, place) keep the model's words, finished from the passage:
a number the passage follows with its unit ("16" -> "16个", ``rag.answer_units``) gets it,
the first item of a list the rest of it ("九江推官" -> "九江推官、西华知县"), a date or place
asked "when" or "where" its clause ("2008年12月20日在日本上映"), and an answer that only
repeats the question's subject ("蓝线裸顶鲷" for "蓝线裸顶鲷以什么为食？", a small model's
commonest miss) is replaced by the passage sentence that best matches the rest of the
question.

A small model asked to copy the passage sentence that answers a question often copies it
nearly: a word dropped, the subject repeated, a clause reordered. For a compliance question
the user wants the document's text, so a sentence answer is replaced by the passage text it
matches best (one sentence, or two adjacent ones), verbatim, when the two overlap enough
(bag-of-characters F1 for Chinese, of words otherwise). Below ``min_overlap`` the model's
answer stays: it combined passages, or said something the passages do not.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from app.rag.chain import TITLE_SEPARATOR
from app.rag.focus import GAP, DistinctiveRelevance, relevance
from ingest.loaders import row_marks, row_requirement
from ingest.splitter import split_sentences

if TYPE_CHECKING:
    from app.settings.rag import RagSettings

_CJK = "\u3400-\u9fff\uf900-\ufaff"
# one CJK character, or a run of other letters/digits (a word or a number)
_UNIT = re.compile(rf"[{_CJK}]|(?:(?![{_CJK}])[^\W_])+", re.UNICODE)


def units(text: str) -> Counter[str]:
    """CJK characters and lower-cased words/numbers; punctuation and spaces ignored."""
    return Counter(u.lower() for u in _UNIT.findall(text))


_WORDY = re.compile(r"[^\W\d_]", re.UNICODE)


def has_words(text: str) -> bool:
    """Whether the text has a letter or a CJK character: "03." or "(2)" alone names a list
    item of the passage, it does not answer a question that wants a sentence."""
    return bool(_WORDY.search(text))


_LEAD_IN = re.compile(r"^\s*([^\n:：]{2,40}?)\s*[:：]\s*")
# share of a lead-in's characters and words that must be the prompt's own
_ECHO_SHARE = 0.8


def without_lead_in(answer: str, instructions: Iterable[str], passages: Iterable[str]) -> str:
    """The answer without an opening that echoes the prompt's instruction: "资料中回答这个问题的
    原句是：增加附录C…" -> "增加附录C…" (a small model sometimes names what it was asked to
    write before writing it). The opening is the text before the first colon, when at least
    ``_ECHO_SHARE`` of its characters and words are in ``instructions`` (the prompt templates)
    and it is in no passage (a passage's own label, "主要内容：", stays); several in a row
    go, unless nothing else is left."""
    known = set().union(*(units(text) for text in instructions))
    passages = list(passages)
    rest = answer
    while found := _LEAD_IN.match(rest):
        lead = found.group(1)
        said = units(lead)
        echoed = sum(count for unit, count in said.items() if unit in known)
        total = sum(said.values())
        if not total or echoed < _ECHO_SHARE * total or any(lead in p for p in passages):
            break
        rest = rest[found.end() :]
    # only openings (a loop of them): the answer as it was, for the loop check
    return rest if has_words(rest) else answer


def overlap(answer: str, candidate: str) -> float:
    """Bag-of-units F1 of two texts."""
    a, c = units(answer), units(candidate)
    common = sum((a & c).values())
    if not common:
        return 0.0
    precision = common / sum(a.values())
    recall = common / sum(c.values())
    return 2 * precision * recall / (precision + recall)


def lines_of(passages: Iterable[str]) -> Iterator[str]:
    """The lines of the passages, " … " gaps apart (text on either side of a gap is not
    contiguous in the document)."""
    for passage in passages:
        for block in passage.split(GAP):
            yield from block.splitlines()


def candidates(passage: str, max_run: int = 2) -> list[str]:
    """Sentences of a passage (lines apart, " … " gaps dropped) and runs of up to ``max_run``
    adjacent ones of the same line: a heading line and the sentence under it are not one
    quote (an answer naming the subject twice matched "title" + "title (...)" better than
    its own sentence)."""
    runs: list[str] = []
    for line in lines_of([passage]):
        spans = split_sentences(line)
        for start in range(len(spans)):
            for length in range(1, max_run + 1):
                if start + length <= len(spans):
                    # as the line has them: the space between two English sentences kept
                    runs.append(line[spans[start][0] : spans[start + length - 1][1]])
    return runs


def quote(answer: str, passages: Iterable[str], min_overlap: float) -> str | None:
    """The passage text the answer matches best, or None when nothing reaches
    ``min_overlap``. An answer without words ("03.") names a list item: its sentence."""
    passages = list(passages)
    if not has_words(answer):
        return labelled(answer, passages)
    best, best_score = None, 0.0
    for passage in passages:
        for candidate in candidates(passage):
            score = overlap(answer, candidate)
            if score > best_score:
                best, best_score = candidate, score
    return best if best is not None and best_score >= min_overlap else None


def labelled(label: str, passages: Iterable[str]) -> str | None:
    """The passage sentence that starts with ``label`` ("03." for the list item the model
    named instead of quoting it), or None."""
    label = label.strip()
    if not label:
        return None
    for passage in passages:
        for sentence in candidates(passage, max_run=1):
            if sentence.strip().startswith(label) and units(sentence) != units(label):
                return sentence.strip()
    return None


_PUNCT = re.compile(r"[\W_]+", re.UNICODE)
_ENDS_IN_NUMBER = re.compile(r"[0-9０-９零〇一二两三四五六七八九十百千万亿]$")


def echoes(answer: str, question: str) -> bool:
    """Whether a short answer is only the start of the question (its subject), punctuation
    and case aside: the model named what was asked about instead of answering."""
    core = _PUNCT.sub("", answer).lower()
    return len(core) >= 2 and _PUNCT.sub("", question).lower().startswith(core)


def names_a_file(answer: str, file_names: Iterable[str]) -> bool:
    """Whether the answer is only a passage's file name or title ("《TRIAL_90.txt》",
    "《等级保护2.0 > 主要标准的框架和内容 > No.2 安全通用要求》"; brackets, punctuation and case
    aside), or a title in the prompt's form that starts like one of the passages' titles and
    was made up from it ("《等级保护2.0 > 主要标准的框架和内容 > No.1 等保基本要求》"): the model
    pointed at a source instead of answering."""
    core = _PUNCT.sub("", answer).lower()
    if not core:
        return False
    names = list(file_names)
    if any(core == _PUNCT.sub("", name).lower() for name in names):
        return True
    inner = answer.strip().strip("《》[]【】 ")
    if TITLE_SEPARATOR not in inner or "\n" in inner:
        return False
    head = inner.split(TITLE_SEPARATOR)[0].strip()
    return any(
        name.split(TITLE_SEPARATOR)[0].strip() == head for name in names if TITLE_SEPARATOR in name
    )


def restates(answer: str, question: str) -> bool:
    """Whether the answer is the question said again: nothing in it that the question lacks,
    and at least half of the question's words ("第三级系统的访问控制有哪些要求？" for itself; not
    "A" picked from "A还是B？")."""
    words = units(answer)
    return (
        bool(words)
        and adds_nothing(answer, question)
        and 2 * sum(words.values()) >= sum(units(question).values())
    )


def source_says(answer: str, question: str, passages: Iterable[str]) -> bool:
    """Whether the answer is the passages' own words (end punctuation aside) and has every
    word of the question: the question is a statement of the source with a question mark
    ("应设置机房防盗报警系统或设置有专人值守的视频监控系统？", a requirement row asked about),
    and that statement is its answer, not a restatement to give up on."""
    core = answer.strip().rstrip("。.，,；;？?！!")
    return (
        bool(core) and adds_nothing(question, core) and any(core in passage for passage in passages)
    )


def adds_nothing(sentence: str, question: str) -> bool:
    """Whether every character and word of ``sentence`` is in the question ("降居顺成宫。" for
    "元皇后为什么被降居顺成宫？"): it restates what was asked and answers nothing."""
    return not (units(sentence) - units(question))


def whole_matches(text: str, core: str, start: int = 0) -> Iterator[int]:
    """Where ``core`` is in ``text`` (from ``start``), in order, never as a piece of a longer
    number: "3" is not found in "63千米", nor "16" in "216", nor "20" in "2008年"."""
    at = text.find(core, start)
    while at >= 0:
        before = at > 0 and core[0].isdigit() and text[at - 1].isdigit()
        end = at + len(core)
        after = end < len(text) and core[-1].isdigit() and text[end].isdigit()
        if not before and not after:
            yield at
        at = text.find(core, at + 1)


def find_whole(line: str, core: str, start: int = 0) -> int:
    """The first of ``whole_matches``; -1 when there is none."""
    return next(whole_matches(line, core, start), -1)


def with_unit(answer: str, passages: Iterable[str], unit_pattern: str) -> str:
    """A number answer followed in the passage by a unit or measure word (``unit_pattern``,
    matched right after it) gets that unit: "81.6万" -> "81.6万册". Unchanged otherwise."""
    core = answer.strip().rstrip("。.，,；;")
    if not unit_pattern or not core or not _ENDS_IN_NUMBER.search(core):
        return answer
    unit = re.compile(unit_pattern)
    for passage in passages:
        for start in whole_matches(passage, core):
            found = unit.match(passage, start + len(core))
            if found and found.group():
                return core + found.group()
    return answer


def with_suffix(answer: str, passages: Iterable[str], suffix_pattern: str) -> str:
    """A short answer followed in the passage by its gloss or its part (``suffix_pattern``,
    matched right after it) gets it: "天正3年" -> "天正3年（1575年）", "巴里·尼尔逊" -> "巴里·尼尔逊
    （Barry Nelson）", "湖南省长沙县" -> "湖南省长沙县东北部". Unchanged otherwise."""
    core = answer.strip().rstrip("。.，,；;")
    if not suffix_pattern or not core:
        return answer
    suffix = re.compile(suffix_pattern)
    for passage in passages:
        # the answer itself, not a piece of a longer number ("3" inside "13（…）")
        for start in whole_matches(passage, core):
            found = suffix.match(passage, start + len(core))
            return core + found.group() if found and found.group() else answer
    return answer


_STARTS_WITH_NUMBER = re.compile(r"^[0-9０-９零〇一二两三四五六七八九十百千万亿]")


def with_qualifier(answer: str, passages: Iterable[str], qualifier_pattern: str) -> str:
    """A number answer preceded in the passage by a qualifier (``qualifier_pattern``, matched
    right before it) gets that qualifier: "22平方公里" -> "约22平方公里", "两岁" -> "年仅两岁"; the
    source said the figure is approximate or a bound, and so does the answer. Unchanged
    otherwise."""
    core = answer.strip()
    if not qualifier_pattern or not core or not _STARTS_WITH_NUMBER.search(core):
        return answer
    qualifier = re.compile(rf"(?:{qualifier_pattern})+$")  # "约只有": one or more
    for passage in passages:
        for start in whole_matches(passage, core):
            found = qualifier.search(passage, max(0, start - 8), start)
            if found and found.group():
                return found.group() + core
    return answer


_OPENING = "（(「『《“【["
_CLOSING = "）)」』》”】]"
_CLAUSE_END = "，,；;。！？!?"


def _in_number(line: str, index: int) -> bool:
    """Whether the character at ``index`` is a comma grouping a number's digits ("1,520")."""
    return (
        line[index] == ","
        and 0 < index < len(line) - 1
        and line[index - 1].isdigit()
        and line[index + 1].isdigit()
    )


def clauses_of(line: str) -> list[tuple[int, int]]:
    """(start, end) of each clause of a line: text up to and including a comma, semicolon or
    sentence end that is outside brackets and quotes ("天正3年（1575年，一说…）" is one clause)
    and is no comma grouping a number's digits ("海拔50米至1,520米")."""
    spans: list[tuple[int, int]] = []
    depth, start = 0, 0
    for index, char in enumerate(line):
        if char in _OPENING:
            depth += 1
        elif char in _CLOSING:
            depth = max(0, depth - 1)
        elif char in _CLAUSE_END and depth == 0 and not _in_number(line, index):
            spans.append((start, index + 1))
            start = index + 1
    if line[start:].strip():
        spans.append((start, len(line)))
    return spans


def with_rest_of_list(answer: str, passages: Iterable[str], separator: str, max_chars: int) -> str:
    """A short answer that is the first item of a list in its passage (followed there by
    ``separator``, matched right after it: "、", "或") becomes the list, to the end of its
    clause, when that is at most ``max_chars`` long: "九江推官" -> "九江推官、西华知县",
    "无头土香" -> "无头土香、无头香、白香附". An answer that stops at the first of several
    names or posts leaves the others out. Unchanged otherwise."""
    core = answer.strip().rstrip("。.，,；;")
    if not separator or max_chars <= 0 or not core:
        return answer
    follows = re.compile(separator)
    for line in lines_of(passages):
        at = find_whole(line, core)
        if at < 0:
            continue
        end = at + len(core)
        if not follows.match(line, end):
            return answer
        for start, stop in clauses_of(line):
            if start <= at < stop:
                listed = line[at:stop].rstrip("。.，,；;")
                fits = end <= stop and len(listed) <= max_chars
                return listed if fits else answer
        return answer
    return answer


# a bigram, or two characters, in common (``relevance``)
_SHARED_TERM = 2.0


def in_clause(answer: str, passages: Iterable[str], max_chars: int, question: str = "") -> str:
    """A short answer as the clause of its passage that holds it, when that clause is longer
    than the answer and at most ``max_chars`` long: "2008年12月20日" ->
    "2008年12月20日在日本上映。", "湖南省长沙县东北部" -> "路口镇位于湖南省长沙县东北部。",
    "1694人" -> "2006年人口统计数据为1694人。" (a date, place or number with the event or thing
    it belongs to). An answer that is a whole clause set off by a comma ("2006年6月，") takes
    the clause after it when that shares a term with ``question`` (it tells what the question
    asks about: "2006年6月，茨柏克沃斯基从微软退休。" for "茨柏克沃斯基是何时从微软退休的？").
    A comma or semicolon ending the clause is dropped, a full stop kept. A number is never
    found inside a longer one ("3" in "63千米").
    Unchanged otherwise (the answer is in no passage, or its clause is long)."""
    core = answer.strip().rstrip("。.，,；;")
    if max_chars <= 0 or not core:
        return answer
    for line in lines_of(passages):
        at = find_whole(line, core)
        if at < 0:
            continue
        spans = clauses_of(line)
        for index, (start, end) in enumerate(spans):
            if start <= at < end:
                if at + len(core) > end:  # the answer spans two clauses
                    return answer
                clause = line[start:end].strip().rstrip("，,；;")
                if clause == core and line[end - 1] in "，," and index + 1 < len(spans):
                    after = line[end : spans[index + 1][1]]
                    if relevance(after, question) >= _SHARED_TERM:
                        clause = line[start : spans[index + 1][1]].strip().rstrip("，,；;")
                fits = len(core) < len(clause) <= max_chars
                return clause if fits else answer
    return answer


def loops(text: str, min_chars: int, repeats: int, passages: Iterable[str] = ()) -> bool:
    """Whether ``text`` ends in the same piece of text (``min_chars`` or longer, with two
    letters or CJK characters) ``repeats`` times in a row, and that run is in no passage: the
    model is stuck ("资料中回答这个问题的原句是：资料中回答这个问题的原句是：…"). Checked at the
    end, so a stream can stop as soon as it loops, wherever the last token cut the piece."""
    text = text.rstrip()
    if repeats < 2 or min_chars < 1:
        return False
    for period in range(min_chars, len(text) // repeats + 1):
        piece = text[-period:]
        run = text[-period * repeats :]
        if run == piece * repeats and len(_WORDY.findall(piece)) >= 2:
            return not any(run in passage for passage in passages)
    return False


def focused_sentence(question: str, passages: Iterable[str], leave_out: str) -> str | None:
    """The passage sentence sharing most with the question once ``leave_out`` (the subject an
    echoed answer repeated, present everywhere) is removed from both; None without any."""
    rest = question.replace(leave_out, " ") if leave_out else question
    best, best_score = None, 0.0
    for passage in passages:
        for sentence in candidates(passage, max_run=1):
            sentence = sentence.strip()
            score = relevance(sentence.replace(leave_out, " ") if leave_out else sentence, rest)
            if score > best_score:
                best, best_score = sentence, score
    return best


def _quotes(answer: str, row: str) -> bool:
    """Whether an answer is part of a row, or holds the row's requirement."""
    requirement = row_requirement(row)
    return answer in row or (bool(requirement) and requirement in answer)


@dataclass
class Section:
    """A table section of a document: its heading path and its rows, in order."""

    path: tuple[str, ...]
    rows: list[str]


# a heading's numbering ("8.1.4.1 ", "No.1 ", "03. ") before its words
_NUMBERING = re.compile(r"^\s*(?:No\.\s*)?(?:\d+|[A-Za-z])(?:[.．、]\d+)*(?:[.．、]\s*|\s+)")


def naming(section: Section, question: str) -> int:
    """How many of the section's headings the question names, its own (last) heading first:
    0 when the question does not name that one ("安全通用要求中，第三级系统的安全区域边界的访问
    控制有哪些要求？" names all three of 安全通用要求 > 安全区域边界 > 访问控制)."""
    words = [_NUMBERING.sub("", part).strip().lower() for part in section.path]
    asked = question.lower()
    if not words or not words[-1] or words[-1] not in asked:
        return 0
    return sum(bool(word) and word in asked for word in words)


def listed(answer: str, question: str, sections: Iterable[Section]) -> str:
    """The answer to a list question from the table sections of its passages (``sections``,
    in the passages' order): the section the question names by its headings (``naming``;
    the most headings named, the first of equals), else the one whose rows ``answer`` is
    in (or holds); every row of it, one per line; when the question names some of the rows'
    marks ("第三级" names "三级"), only the rows marked with one of them. A small model asked
    for a control point's requirements often copies an overview sentence or a row of a
    neighbouring section; the section the question names is what was asked. The answer
    unchanged when no section is named and the answer is in none (or in a one-row one)."""
    core = answer.strip().rstrip("。.；;")
    if not core:
        return answer
    tables = [s for s in sections if len(s.rows) >= 2]
    chosen = max(tables, key=lambda s: naming(s, question), default=None)
    if chosen is None or not naming(chosen, question):
        chosen = next((s for s in tables if any(_quotes(core, row) for row in s.rows)), None)
    if chosen is None:
        return answer
    rows = chosen.rows
    named = {n for row in rows for n in row_marks(row) if n in question}
    kept = [row for row in rows if row_marks(row) & named] if named else rows
    return "\n".join(kept or rows)


def without_numbering(answer: str, numbering: str) -> str:
    """The answer without the list number it starts with (``numbering``: "03. 采用了…" ->
    "采用了…"): the item answers, not its place in the list. Unchanged when that would leave
    nothing with words."""
    rest = re.sub(numbering, "", answer, count=1) if numbering else answer
    return rest if rest != answer and has_words(rest) else answer


def _style(mark: str) -> str:
    """A list number's shape: "01. " and "04. " alike, "（一）" another."""
    return re.sub(r"[一二三四五六七八九十]+", "一", re.sub(r"\d+", "0", mark.strip()))


def item_list(answer: str, texts: Iterable[str], numbering: str) -> str:
    """The answer to a list question that is (in) one item of a numbered list of ``texts``
    (its passages' sections, in order): every item of that list, each its first sentence,
    one per line, numbers kept. The list is the run of lines numbered the same way
    (``numbering``; "01. " … "04. ") around the answer's line; other lines between items (an
    item's paragraph) are passed over, and a heading line ("#") ends it. The answer unchanged
    when it is in no numbered line or the list has one item."""
    for lines, marks, at in _numbered_lines(answer, texts, numbering):
        style = _style(marks[at].group())  # type: ignore[union-attr]
        first, last = at, at
        for step, edge in ((-1, 0), (1, len(lines) - 1)):
            i = at
            while i != edge and not lines[i + step].startswith("#"):
                i += step
                mark = marks[i]
                if mark and _style(mark.group()) == style:
                    first, last = min(first, i), max(last, i)
        items = [
            _first_sentence(lines[i], marks[i].end())  # type: ignore[union-attr]
            for i in range(first, last + 1)
            if marks[i] and _style(marks[i].group()) == style  # type: ignore[union-attr]
        ]
        return "\n".join(items) if len(items) >= 2 else answer
    return answer


def in_numbered_item(answer: str, texts: Iterable[str], numbering: str) -> bool:
    """Whether the answer is (in) a line of ``texts`` that starts with a list number."""
    return next(_numbered_lines(answer, texts, numbering), None) is not None


def _numbered_lines(
    answer: str, texts: Iterable[str], numbering: str
) -> Iterator[tuple[list[str], list[re.Match[str] | None], int]]:
    """For each text with a numbered line that holds the answer (its number left out): the
    text's lines, their numbers' matches, and the index of that line."""
    core = without_numbering(answer.strip(), numbering).rstrip("。.；;").strip()
    if not numbering or not core:
        return
    for text in texts:
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        # a number alone (a line cut after it) is no item
        marks = [
            m if (m := re.match(numbering, line)) and has_words(line[m.end() :]) else None
            for line in lines
        ]
        at = next((i for i, m in enumerate(marks) if m and core in lines[i]), None)
        if at is not None:
            yield lines, marks, at


def _first_sentence(line: str, start: int) -> str:
    """A numbered line up to the end of the first sentence after its number (at ``start``)."""
    spans = split_sentences(line[start:])
    return line[: start + spans[0][1]] if spans else line


def checked(answer: str, question: str, passages: Iterable[str], min_relevance: float) -> str:
    """A quoted sentence that shares less than ``min_relevance`` of what the passages' best
    sentence shares with the question (``DistinctiveRelevance``: the question's rarer terms
    count most) is likely a neighbouring sentence copied: that best sentence instead. A line
    that only names the question's subject (a title) is never the replacement."""
    sentences = [s.strip() for p in passages for s in candidates(p, max_run=1) if s.strip()]
    sentences = [s for s in sentences if not echoes(s, question) and not adds_nothing(s, question)]
    if min_relevance <= 0 or not sentences:
        return answer
    score = DistinctiveRelevance(sentences, question)
    best = max(sentences, key=score)
    return best if score(answer) < min_relevance * score(best) else answer


def finish(
    answer: str,
    question: str,
    passages: Iterable[str],
    *,
    short: bool,
    min_overlap: float,
    unit_pattern: str,
    min_relevance: float = 0.0,
    qualifier_pattern: str = "",
    suffix_pattern: str = "",
    clause_pattern: str = "",
    clause_max_chars: int = 0,
    list_separator: str = "",
    list_max_chars: int = 0,
    file_names: Iterable[str] = (),
    loop_min_chars: int = 4,
    loop_repeats: int = 0,
    numbering: str = "",
    instructions: Iterable[str] = (),
) -> str | None:
    """The answer as the user reads it. A short answer (``short``: the question asked for a
    name, date, number or place) keeps its words, a number gains its unit, the first item of a
    list the rest of it (``list_separator``, ``with_rest_of_list``), and when the question asks
    when, where, how many or which post (``clause_pattern``) it becomes its clause of the
    passage up to ``clause_max_chars`` (``in_clause``); any other answer is quoted from the
    passages when it overlaps one enough (``min_overlap``), else kept. Then, if the model's
    answer or its quote only repeats the question's subject (a title line quoted for
    "X以什么为食？"), the sentence that answers replaces it; a sentence answer far less related
    to the question than the passages' best sentence gives way to it (``checked``). None: the
    answer has no words and names no list item of the passages, it is only a passage's file name
    or title (``file_names``: both), or it only says the question again (``restates``; unless
    the passages say it: ``source_says``), or it loops (``loops``: ``loop_repeats`` times the
    same text); the caller falls back to the passage itself. A sentence answer that starts with
    a list item's number (``numbering``) loses it. An opening that echoes the prompt
    (``instructions``: "资料中回答这个问题的原句是：") is dropped first (``without_lead_in``)."""
    passages = list(passages)
    answer = without_lead_in(answer, instructions, passages)
    if names_a_file(answer, file_names) or loops(answer, loop_min_chars, loop_repeats, passages):
        return None
    quoted = None
    if short:
        result = with_unit(answer, passages, unit_pattern)
        result = with_suffix(result, passages, suffix_pattern)
        result = with_qualifier(result, passages, qualifier_pattern)
        result = with_rest_of_list(result, passages, list_separator, list_max_chars)
        if clause_pattern and re.search(clause_pattern, question):
            result = in_clause(result, passages, clause_max_chars, question)
    else:
        quoted = quote(answer, passages, min_overlap)
        if quoted is None and not has_words(answer):
            return None
        result = quoted or answer
    for said in (answer, result):
        if echoes(said, question):
            found = focused_sentence(question, passages, said.strip().strip("《》“”\"'「」。.# "))
            if found:
                return found if short else without_numbering(found, numbering)
    if restates(result, question) and not source_says(result, question, passages):
        return None
    if short:
        return result
    if quoted is not None:
        result = checked(result, question, passages, min_relevance)
    return without_numbering(result, numbering)


def finish_for(
    settings: RagSettings,
    answer: str,
    question: str,
    passages: Iterable[str],
    *,
    short: bool,
    language: str,
    file_names: Iterable[str] = (),
) -> str | None:
    """``finish`` with the knobs of ``settings`` (``rag.*``) for a question in ``language``:
    what ``/ask`` does with a model's answer (and the answer-quality bench, offline)."""
    zh = language == "zh"
    return finish(
        answer,
        question,
        passages,
        short=short,
        min_overlap=settings.quote_min_overlap,
        unit_pattern=settings.answer_units,
        qualifier_pattern=settings.answer_qualifiers,
        suffix_pattern=settings.answer_suffixes,
        clause_pattern=settings.clause_answer_zh if zh else settings.clause_answer_en,
        clause_max_chars=settings.clause_answer_max_chars,
        list_separator=settings.answer_list_separators,
        list_max_chars=settings.answer_list_max_chars,
        file_names=file_names,
        min_relevance=settings.answer_min_relevance,
        loop_min_chars=settings.loop_min_chars,
        loop_repeats=settings.loop_repeats,
        numbering=settings.answer_numbering,
        instructions=(
            (settings.prompt_zh, settings.prompt_zh_short)
            if zh
            else (settings.prompt_en, settings.prompt_en_short)
        ),
    )
