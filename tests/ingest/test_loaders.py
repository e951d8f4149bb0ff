"""Loaders on real files the tests generate: encodings, PDF, DOCX, HTML and bad input."""

from __future__ import annotations

import io
import os
import zipfile

import pytest
from conftest import CJK_FONT, make_docx, make_pdf

from ingest.errors import DocumentError, InvalidNameError, UnsupportedTypeError
from ingest.loaders import check_filename, load

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


def test_binary_disguised_as_text_is_refused() -> None:
    png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 4
    with pytest.raises(DocumentError, match="binary"):
        load(png, "photo.txt")


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
