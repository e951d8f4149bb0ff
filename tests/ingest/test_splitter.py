"""The Chinese-aware, structure-aware splitter."""

from __future__ import annotations

import itertools

from ingest.models import Segment
from ingest.splitter import Splitter, clause_heading, split_sentences


def test_sentences_not_cut_in_numbers_urls_clauses() -> None:
    text = "圆周率约为3.14。见 https://a.example.com/x.html 说明！8.1.4.1 条适用；Done. Next"
    parts = [text[s:e] for s, e in split_sentences(text)]
    assert parts == [
        "圆周率约为3.14。",
        "见 https://a.example.com/x.html 说明！",
        "8.1.4.1 条适用；",
        "Done.",
        "Next",
    ]


def test_ellipsis_and_quotes() -> None:
    parts = [t for t in (split_sentences("他说：“好……”然后走了。"))]
    assert len(parts) == 2


def test_a_title_ends_no_sentence() -> None:
    """《卡拉OK.LIVE！‧台北‧我》 is one album's name: its "！" ends no sentence, so a quoted answer
    does not start halfway through the name (as it did for "张雨生的第六张国语专辑是什么？")."""
    text = "《卡拉OK.LIVE！‧台北‧我》是张雨生的第六张专辑。他唱《好！》。"
    parts = [text[s:e] for s, e in split_sentences(text)]
    assert parts == ["《卡拉OK.LIVE！‧台北‧我》是张雨生的第六张专辑。", "他唱《好！》。"]
    # a 《 never closed on its line, or closed too far on, is no title: sentences end as before
    for text in ("他读了《论语。后来\n他走了》。", "《开头！" + "字" * 80 + "》完。"):
        assert len(split_sentences(text)) == 2


def test_an_abbreviation_or_an_initial_ends_no_sentence() -> None:
    """ "St. John" was cut at "St." and a quote of the sentence lost the rest (cmrc2018-trial,
    TRIAL_658_QUERY_3); an English paper's "et al." and "Fig. 3" were cut the same way."""

    def parts(text: str) -> list[str]:
        return [text[s:e] for s, e in split_sentences(text)]

    assert parts("教堂名为St. John's Church。It was built in 1850. Then it burned.") == [
        "教堂名为St. John's Church。",
        "It was built in 1850.",
        "Then it burned.",
    ]
    assert parts("As Smith et al. show in Fig. 3, e.g. the loss drops. It works.") == [
        "As Smith et al. show in Fig. 3, e.g. the loss drops.",
        "It works.",
    ]
    assert parts(
        "J. R. R. Tolkien wrote it. See No. 5. The answer is no. Made in the U.S. Sold."
    ) == [
        "J. R. R. Tolkien wrote it.",
        "See No. 5.",
        "The answer is no.",
        "Made in the U.S.",
        "Sold.",
    ]


def test_clause_headings() -> None:
    assert clause_heading("8.1.4.1 身份鉴别") == (4, "8.1.4.1 身份鉴别")
    assert clause_heading("第三章 技术要求") == (1, "第三章 技术要求")
    assert clause_heading("3.14 is pi.") is None
    assert clause_heading("3 apples") is None


def test_structure_starts_chunks_and_heading_path() -> None:
    segments = [
        Segment("# 安全通用要求", heading_level=1),
        Segment("8.1.4.1 身份鉴别"),
        Segment("本项要求包括："),
        Segment("a) 应对登录的用户进行身份标识和鉴别；"),
        Segment("b) 应具有登录失败处理功能。"),
        Segment("8.1.4.2 访问控制"),
        Segment("应对登录的用户分配账户和权限。"),
    ]
    text, chunks = Splitter(200, 20).split(segments)
    assert [c.text for c in chunks] == [
        "# 安全通用要求\n8.1.4.1 身份鉴别\n本项要求包括：",
        "a) 应对登录的用户进行身份标识和鉴别；",
        "b) 应具有登录失败处理功能。",
        "8.1.4.2 访问控制\n应对登录的用户分配账户和权限。",
    ]
    assert chunks[1].heading_path == ["安全通用要求", "8.1.4.1 身份鉴别"]
    assert chunks[3].heading_path == ["安全通用要求", "8.1.4.2 访问控制"]
    for chunk in chunks:
        assert text[chunk.start : chunk.end] == chunk.text
    assert [c.index for c in chunks] == [0, 1, 2, 3]


def test_size_overlap_and_table_rows_whole() -> None:
    sentence = "这是一个用于测试切分长度的句子。"  # 16 chars
    rows = [Segment(f"| 行{i} | 数值{i}数值{i}数值{i} |", table_row=True) for i in range(12)]
    segments = [Segment(sentence * 12), *rows]
    _text, chunks = Splitter(60, 20).split(segments)
    assert all(len(c.text) <= 60 for c in chunks)
    body = [c for c in chunks if "|" not in c.text]
    # overlap: each next chunk starts with the last sentence of the one before
    for a, b in itertools.pairwise(body):
        assert b.start < a.end
    for chunk in chunks:
        for line in chunk.text.split("\n"):
            if "|" in line:
                assert line.startswith("| 行") and line.endswith(" |")  # whole rows only


def test_long_unit_is_cut_by_characters() -> None:
    _, chunks = Splitter(50, 10).split([Segment("字" * 130)])
    assert [len(c.text) for c in chunks] == [50, 50, 50]
    assert chunks[1].start == 40


def test_chunks_do_not_span_pages() -> None:
    lines = [f"Sentence number {i} of the operations guide is here." for i in range(6)]
    segments = [Segment(text=line, page=1 + i // 3) for i, line in enumerate(lines)]
    _, chunks = Splitter(chunk_size=200, chunk_overlap=60).split(segments)
    assert [c.page for c in chunks] == [1, 2]
    assert "number 3" not in chunks[0].text and chunks[1].text.startswith("Sentence number 3")


def test_numbered_titles_rank_below_the_loaders_headings() -> None:
    segments = [
        Segment("## 概述", heading_level=2),
        Segment("01. 安全物理环境"),
        Segment("针对物理机房提出的安全控制要求。"),
        Segment("### 细则", heading_level=3),
        Segment("机房应设置灭火设备。"),
    ]
    _, chunks = Splitter(200, 20).split(segments)
    # "01. 安全物理环境" is a title under "## 概述", not a level-1 heading above it
    assert [c.heading_path for c in chunks] == [["概述", "01. 安全物理环境"], ["概述", "细则"]]


def test_a_chunk_of_table_rows_counts_them() -> None:
    """``Chunk.rows``: how many table rows a chunk ends with, when all of its lines but its
    headings are rows (a requirement table's section: a list question's answer)."""
    row = "应对登录的用户分配账户和权限。（适用等级：一级、二级、三级）"
    segments = [
        Segment("#### 安全计算环境", heading_level=4),
        Segment("##### 访问控制", heading_level=5),
        *[Segment(row.replace("账户", f"账户{i}"), table_row=True) for i in range(3)],
        Segment("##### 安全审计", heading_level=5),
        Segment(row, table_row=True),
        Segment("审计记录应定期备份。"),  # prose under the same heading
    ]
    _, chunks = Splitter(500, 80).split(segments)
    assert [(c.heading_path[-1], c.rows) for c in chunks] == [("访问控制", 3), ("安全审计", 0)]
    lines = chunks[0].text.splitlines()
    assert lines[:2] == ["#### 安全计算环境", "##### 访问控制"] and len(lines) == 5
    # rows packed over several chunks: each chunk counts its own
    _, small = Splitter(70, 0).split(segments[:5])
    assert [c.rows for c in small] == [1, 2] and all("账户" in c.text for c in small)
