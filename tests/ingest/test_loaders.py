"""Loaders on real files the tests generate: encodings, PDF, DOCX, HTML and bad input."""

from __future__ import annotations

import io
import os
import zipfile

import pytest
from conftest import CJK_FONT, huge_docx, make_docx, make_pdf

from ingest.errors import DocumentError, InvalidNameError, UnsupportedTypeError
from ingest.loaders import check_filename, load
from ingest.splitter import Splitter

TEXT = "网络安全等级保护分为五级。第一级为自主保护级。"


@pytest.mark.parametrize(
    "data",
    [
        TEXT.encode("utf-8"),
        b"\xef\xbb\xbf" + TEXT.encode("utf-8"),
        TEXT.encode("gbk"),
        TEXT.encode("gb18030"),
    ],
    ids=["utf8", "utf8-bom", "gbk", "gb18030"],
)
def test_text_encodings(data: bytes) -> None:
    assert [s.text for s in load(data, "a.txt")] == [TEXT]


# English, Chinese with ASCII (its newline and digits give NUL bytes in UTF-16), and Chinese
# with no ASCII at all (UTF-16 without NUL bytes: told from GBK by the characters it decodes to)
WIDE_TEXTS = {
    "en": "The knowledge base answers questions.\nLevel 3 systems: tested every year!",
    "zh": "第八章 安全要求\n第三级系统应当每年至少进行1次等级测评。",
    "zh-pure": "网络安全等级保护分为五级。自主保护级、指导保护级、监督保护级。",
}
WIDE_CODECS = {
    "utf16le": "utf-16-le",
    "utf16be": "utf-16-be",
    "utf16le-bom": "utf-16",  # Python writes the BOM, little endian
    "utf16be-bom": "BOM:utf-16-be",
    "utf32le": "utf-32-le",
    "utf32be": "utf-32-be",
    "utf32-bom": "utf-32",
}


def _encode(text: str, codec: str) -> bytes:
    if codec.startswith("BOM:"):
        return "\ufeff".encode(codec[4:]) + text.encode(codec[4:])
    return text.encode(codec)


@pytest.mark.parametrize("codec", WIDE_CODECS.values(), ids=WIDE_CODECS.keys())
@pytest.mark.parametrize("lang", WIDE_TEXTS)
def test_utf16_and_utf32_with_or_without_bom(lang: str, codec: str) -> None:
    text = WIDE_TEXTS[lang]
    lines = [line for line in text.splitlines() if line]
    assert [s.text for s in load(_encode(text, codec), "a.txt")] == lines


@pytest.mark.parametrize("codec", ["utf-16", "utf-16-le", "utf-16-be", "utf-32"])
@pytest.mark.parametrize("lang", ["en", "zh-pure"])
def test_truncated_wide_text_is_read_without_its_cut_last_character(lang: str, codec: str) -> None:
    """An odd trailing byte (a UTF-16 file cut short, or one byte too many) and a surrogate
    pair cut in half lose that last character only; the rest of the file is read."""
    text = WIDE_TEXTS[lang]
    data = _encode(text, codec)
    assert load(data[:-1], "cut.txt")[-1].text == text.splitlines()[-1][:-1]
    assert load(data + b"\x41", "extra.txt")[-1].text == text.splitlines()[-1]
    emoji = _encode(text + "🙂", codec)  # a surrogate pair in UTF-16
    assert load(emoji[:-2], "pair.txt")[-1].text == text.splitlines()[-1]


def test_damaged_utf16_says_what_is_wrong() -> None:
    data = "\ufeff".encode("utf-16-le") + bytes(range(256)) * 8
    with pytest.raises(DocumentError, match="starts with a UTF-16 byte order mark but is not"):
        load(data, "broken.txt")


def test_binary_disguised_as_text_is_refused() -> None:
    png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 4
    with pytest.raises(DocumentError, match="binary"):
        load(png, "photo.txt")


@pytest.mark.parametrize("kind", ["executable", "docx", "gzip"])
def test_real_binary_files_are_refused(kind: str) -> None:
    import gzip
    import sys
    from pathlib import Path

    data = {
        "executable": lambda: Path(sys.executable).resolve().read_bytes()[:200_000],
        "docx": lambda: make_docx([("p", "网络安全等级保护")]),
        "gzip": lambda: gzip.compress(TEXT.encode() * 200),
    }[kind]()
    with pytest.raises(DocumentError, match=r"binary|could not read it as text"):
        load(data, "renamed.txt")


def test_undecodable_text_names_the_encodings_tried() -> None:
    data = bytes(range(1, 256)) * 40  # no NUL byte: not refused as binary up front
    with pytest.raises(DocumentError) as caught:
        load(data, "odd.txt")
    message = str(caught.value)
    assert message.startswith("odd.txt: could not read it as text")
    assert "not UTF-8, UTF-16, UTF-32 or GB18030" in message and "save it as UTF-8" in message


def test_empty_file_is_refused() -> None:
    with pytest.raises(DocumentError, match="empty"):
        load(b"  \n", "a.md")


def test_unsupported_type_lists_accepted() -> None:
    with pytest.raises(UnsupportedTypeError, match=r"accepted: \.txt"):
        load(b"x", "a.exe")


@pytest.mark.parametrize("name", ["../etc/passwd.txt", "/abs/a.txt", "a/../../b.txt", "C:\\x.txt"])
def test_bad_filenames(name: str) -> None:
    with pytest.raises(InvalidNameError):
        check_filename(name)


def test_nested_filename_is_kept() -> None:
    assert check_filename("sub/dir/a.txt") == "sub/dir/a.txt"


def test_markdown_headings_and_table_rows() -> None:
    md = "# 总则\n\n正文。\n\n| a | b |\n|---|---|\n| 1 | 2 |\n```\n# not a heading\n```\n"
    segs = load(md.encode(), "a.md")
    assert segs[0].heading_level == 1
    assert [s.text for s in segs if s.table_row] == ["| a | b |", "|---|---|", "| 1 | 2 |"]
    assert not any(s.heading_level for s in segs if "not a heading" in s.text)


def test_pdf_pages_kept() -> None:
    segs = load(make_pdf([["Access control policy."], ["Audit logs are kept."]]), "a.pdf")
    assert [(s.text, s.page) for s in segs] == [
        ("Access control policy.", 1),
        ("Audit logs are kept.", 2),
    ]


def test_pdf_with_cjk_font() -> None:
    cjk = CJK_FONT.is_file()  # the Debian package fonts-wqy-microhei; English text otherwise
    if not cjk and os.environ.get("CI") == "true":
        pytest.fail(f"CI must test a Chinese PDF: install fonts-wqy-microhei ({CJK_FONT})")
    line = "身份鉴别和访问控制" if cjk else "identification and access control"
    segs = load(make_pdf([[line]], cjk=cjk), "c.pdf")
    assert segs[0].text == line


def test_encrypted_pdf_is_refused() -> None:
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter()
    for page in PdfReader(io.BytesIO(make_pdf([["secret"]]))).pages:
        writer.add_page(page)
    writer.encrypt("s3cret")
    out = io.BytesIO()
    writer.write(out)
    with pytest.raises(DocumentError, match="encrypted"):
        load(out.getvalue(), "locked.pdf")


def test_corrupt_pdf_is_refused() -> None:
    with pytest.raises(DocumentError, match="PDF"):
        load(b"%PDF-1.4\n garbage without objects", "bad.pdf")


def test_docx_headings_paragraphs_table() -> None:
    data = make_docx(
        [("h1", "第八章 安全要求"), ("p", "应对登录用户进行身份鉴别。")],
        table=[["级别", "名称"], ["第一级", "自主保护级"]],
    )
    segs = load(data, "a.docx")
    assert (segs[0].text, segs[0].heading_level) == ("第八章 安全要求", 1)
    assert segs[1].text == "应对登录用户进行身份鉴别。"
    assert [s.text for s in segs if s.table_row] == ["| 级别 | 名称 |", "| 第一级 | 自主保护级 |"]


def test_docx_not_a_zip() -> None:
    with pytest.raises(DocumentError, match="not a valid DOCX"):
        load(b"this is plain text pretending", "fake.docx")


def test_docx_with_huge_xml_is_refused_before_parsing() -> None:
    """The report's file: a DOCX of ordinary size and compression ratio whose document.xml
    unpacks to 45 MB. It passes the zip bomb check but not the XML budget."""
    data = huge_docx(45 * 1024 * 1024)
    assert len(data) < 5 * 1024 * 1024
    with pytest.raises(DocumentError) as caught:
        load(data, "big.docx")
    message = str(caught.value)
    assert "zip bomb" not in message
    assert "word/document.xml" in message and "45.0 MB" in message
    assert "32.0 MB (setting ingest.max_xml_bytes)" in message
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert archive.testzip() is None  # a sound archive, refused for its size only


def test_docx_zip_bomb() -> None:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("word/document.xml", b"\0" * 20_000_000)
    with pytest.raises(DocumentError, match="zip bomb"):
        load(out.getvalue(), "bomb.docx")


def test_html_blocks() -> None:
    html = (
        "<html><head><style>p{}</style><script>var x</script></head><body>"
        "<h2>范围</h2><p>本标准规定了<b>安全</b>要求。</p>"
        "<table><tr><th>a</th><td>b</td></tr></table></body></html>"
    )
    segs = load(html.encode(), "a.html")
    assert [(s.text, s.heading_level, s.table_row) for s in segs] == [
        ("范围", 2, False),
        ("本标准规定了 安全 要求。", None, False),
        ("| a | b |", None, True),
    ]


GRADE_TABLE = """\
## 等级保护

<table>
  <tr>
    <th colspan="2">类别</th><th colspan="2">环境</th><th>评测项</th><th>说明</th>
    <th>一级</th><th>二级</th><th>三级</th>
  </tr>
  <tr>
    <td colspan="2" rowspan="5"><h3>安全通用要求</h3></td>
    <td colspan="2" rowspan="3"><h4>安全物理环境</h4></td>
    <td rowspan="2"><h5>物理位置选择</h5></td>
    <td>机房场地应选择在能防震、防风和防雨的建筑内。</td>
    <td></td><td>√</td><td>√</td>
  </tr>
  <tr>
    <td>机房场地应选择在能防震、防风和防雨的建筑内。</td>
    <td></td><td>√</td><td>√</td>
  </tr>
  <tr>
    <td rowspan=1"><h5>防火</h5></td>
    <td>机房应设置灭火设备。</td><td>✓</td><td></td><td></td>
  </tr>
  <tr>
    <td colspan="2"><h4>安全通信网络</h4></td><td><h5>网络架构</h5></td>
    <td>应划分不同的网络区域。</td><td></td><td></td><td>✔</td>
  </tr>
  <tr>
    <td colspan="2"><h4>安全物理环境</h4></td><td><h5>防火</h5></td>
    <td>机房应设置灭火设备。</td><td>✓</td><td></td><td></td>
  </tr>
</table>

正文继续。
"""


def test_markdown_html_table_heading_cells_and_marks() -> None:
    segs = load(GRADE_TABLE.encode(), "grade.md")
    assert [(s.text, s.heading_level, s.table_row) for s in segs] == [
        ("## 等级保护", 2, False),
        ("### 安全通用要求", 3, False),
        ("#### 安全物理环境", 4, False),
        ("##### 物理位置选择", 5, False),
        # the duplicate row under it is dropped
        ("机房场地应选择在能防震、防风和防雨的建筑内。（适用等级：二级、三级）", None, True),
        ("##### 防火", 5, False),  # rowspan=1" (a broken attribute) still reads as 1
        ("机房应设置灭火设备。（适用等级：一级）", None, True),
        ("#### 安全通信网络", 4, False),
        ("##### 网络架构", 5, False),
        ("应划分不同的网络区域。（适用等级：三级）", None, True),
        # the repeated 安全物理环境 > 防火 row is dropped, its headings too
        ("正文继续。", None, False),
    ]
    assert not any("<" in s.text or ">" in s.text for s in segs)
    _, chunks = Splitter(500, 80).split(segs)
    by_text = {line: c.heading_path for c in chunks for line in c.text.splitlines()}
    assert by_text["应划分不同的网络区域。（适用等级：三级）"] == [
        "等级保护",
        "安全通用要求",
        "安全通信网络",
        "网络架构",
    ]
    fire = by_text["机房应设置灭火设备。（适用等级：一级）"]
    assert fire == ["等级保护", "安全通用要求", "安全物理环境", "防火"]


def test_html_page_table_is_read_like_the_markdown_one() -> None:
    start, end = GRADE_TABLE.index("<table>"), GRADE_TABLE.index("</table>") + 8
    segs = load(f"<html><body>{GRADE_TABLE[start:end]}</body></html>".encode(), "grade.html")
    md = load(GRADE_TABLE.encode(), "grade.md")[1:-1]
    assert [(s.text, s.heading_level, s.table_row) for s in segs] == [
        (s.text.lstrip("#").strip(), s.heading_level, s.table_row) for s in md
    ]


def test_markdown_generic_html_table() -> None:
    md = (
        "<table>\n<thead><tr><th>姓名</th><th>部门</th><th>电话</th></tr></thead>\n"
        "<tbody>\n<tr><td>张三</td><td rowspan='2'>安全部</td><td>123</td></tr>\n\n"  # blank line
        "<tr><td>李四</td><td>456</td></tr>\n</tbody>\n</table>\n"
        "<table><tr><td>a</td><td>b</td></tr></table>\n"
        "<table><tr><th>Requirement</th><th>Level 1</th><th>Level 2</th></tr>"
        "<tr><td>Use MFA.</td><td></td><td>✔</td></tr></table>\n"
    )
    segs = load(md.encode(), "people.md")
    assert [(s.text, s.table_row) for s in segs] == [
        ("姓名：张三；部门：安全部；电话：123", True),
        ("姓名：李四；部门：安全部；电话：456", True),
        ("| a | b |", True),  # no header row: the | a | b | form
        ("Use MFA. (applies to: Level 2)", True),
    ]


def test_markdown_inline_html_is_stripped() -> None:
    TAIL = "List<T> 与 a < b。"  # not HTML: kept
    md = (
        '## <a name="scope"></a>范围\n'
        '第一行<br>第二行，<b>加粗</b>与<font color="red">红字</font>&amp;，'
        "见 <https://example.com/a>，`<b>code</b>`，" + TAIL + "\n"
        "<!-- 注释\n跨行 -->\n"
        '<div align="center">\n<img src="a.png"><br>图 1 架构\n</div>\n\n'
        "![图](img/a.png)\n"
    )
    segs = load(md.encode(), "a.md")
    assert [(s.text, s.heading_level) for s in segs] == [
        ("## 范围", 2),
        ("第一行 第二行，加粗与红字&，见 https://example.com/a，`<b>code</b>`，" + TAIL, None),
        ("图 1 架构", None),
        ("![图](img/a.png)", None),
    ]


def test_markdown_fenced_html_is_kept_verbatim() -> None:
    lines = ["```html", "<table>", "  <tr><td><h3>x</h3></td></tr>", "</table>", "```"]
    segs = load(("\n".join(["# 示例", *lines, "<b>后</b>"]) + "\n").encode(), "code.md")
    assert [s.text for s in segs] == ["# 示例", *lines, "后"]
    assert not any(s.heading_level or s.table_row for s in segs[1:])
