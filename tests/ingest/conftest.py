"""Fixtures of the ingest tests: the real packaged embedder (loaded once), a KB service over a
temporary data dir, a real Chroma server, and generated documents."""

from __future__ import annotations

import io
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from app.settings import Settings
from ingest.embeddings import NamedEmbeddings, build_embeddings
from ingest.service import KnowledgeBaseService

CJK_FONT = Path("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc")  # apt: fonts-wqy-microhei


@pytest.fixture(scope="session")
def embeddings() -> NamedEmbeddings:
    from app.settings.ingest import EmbeddingsSettings

    return build_embeddings(EmbeddingsSettings())  # type: ignore[call-arg]


def make_settings(data_dir: Path, **ingest: object) -> Settings:
    values = {"chunk_size": 120, "chunk_overlap": 20, "workers": 0, **ingest}
    return Settings.model_validate(
        {"data_dir": data_dir, "ingest": values, "llm": {"backend": "none"}}
    )


@pytest.fixture
def service(tmp_path: Path, embeddings: NamedEmbeddings) -> Iterator[KnowledgeBaseService]:
    svc = KnowledgeBaseService.from_settings(make_settings(tmp_path / "data"), embeddings)
    yield svc
    svc.close()


@pytest.fixture(scope="session")
def chroma_server(
    tmp_path_factory: pytest.TempPathFactory, free_ports: Callable[[], int]
) -> Iterator[tuple[str, int]]:
    """A real `chroma run` on 127.0.0.1, stopped after the session."""
    import httpx

    port = free_ports()
    path = tmp_path_factory.mktemp("chroma-server")
    chroma = Path(sys.executable).parent / "chroma"
    proc = subprocess.Popen(
        [str(chroma), "run", "--path", str(path), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/api/v2/heartbeat", timeout=1).is_success:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("chroma server did not start")
            time.sleep(0.3)
        yield "127.0.0.1", port
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def make_pdf(lines_per_page: list[list[str]], cjk: bool = False) -> bytes:
    from fpdf import FPDF

    pdf = FPDF()
    if cjk:
        pdf.add_font("wqy", fname=str(CJK_FONT))
        pdf.set_font("wqy", size=12)
    else:
        pdf.set_font("helvetica", size=12)
    for lines in lines_per_page:
        pdf.add_page()
        for line in lines:
            pdf.cell(0, 10, line, new_x="LMARGIN", new_y="NEXT")
    return bytes(pdf.output())


def make_docx(blocks: list[tuple[str, str]], table: list[list[str]] | None = None) -> bytes:
    """blocks: (style, text) with style 'h1', 'h2' or 'p'."""
    import docx

    document = docx.Document()
    for style, text in blocks:
        if style.startswith("h"):
            document.add_heading(text, level=int(style[1]))
        else:
            document.add_paragraph(text)
    if table:
        grid = document.add_table(rows=len(table), cols=len(table[0]))
        for r, row in enumerate(table):
            for c, value in enumerate(row):
                grid.cell(r, c).text = value
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


_W = 'xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"'


def docx_with_body(body: str) -> bytes:
    """A real DOCX (python-docx's default package) whose document body is ``body`` (WordML)."""
    import zipfile

    source = zipfile.ZipFile(io.BytesIO(make_docx([("p", "x")])))
    document = (
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
        f"<w:document {_W}><w:body>{body}<w:sectPr/></w:body></w:document>"
    )
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for info in source.infolist():
            if info.filename == "word/document.xml":
                archive.writestr(info.filename, document)
            else:
                archive.writestr(info.filename, source.read(info.filename))
    return out.getvalue()


def huge_docx(xml_bytes: int) -> bytes:
    """A DOCX whose document.xml is at least ``xml_bytes`` of ordinary, formatted paragraphs
    (numbered, so it compresses like real text, ~30x: no zip-bomb ratio)."""
    run = (
        '<w:r><w:rPr><w:rFonts w:ascii="Calibri" w:eastAsia="宋体"/><w:sz w:val="21"/></w:rPr>'
        '<w:t xml:space="preserve">{}</w:t></w:r>'
    )
    paragraphs = []
    size = i = 0
    while size < xml_bytes:
        text = run.format(f"第{i}段：网络安全等级保护的第{i}条要求。") + run.format(f" Clause {i}.")
        paragraphs.append(f'<w:p><w:pPr><w:jc w:val="both"/></w:pPr>{text}</w:p>')
        size += len(paragraphs[-1].encode())
        i += 1
    return docx_with_body("".join(paragraphs))


def merged_table_docx(rows: int) -> bytes:
    """A small DOCX that is slow to read: a table whose first column is one cell merged down
    all ``rows`` rows. python-docx finds a merged cell's text by walking up row by row, with a
    list search per step: reading the table takes time growing with the square of ``rows``."""
    restart = '<w:tcPr><w:vMerge w:val="restart"/></w:tcPr>'
    merged = "<w:tcPr><w:vMerge/></w:tcPr>"

    def cell(text: str, props: str = "") -> str:
        return f"<w:tc>{props}<w:p><w:r><w:t>{text}</w:t></w:r></w:p></w:tc>"

    body = ["<w:tbl><w:tblGrid><w:gridCol/><w:gridCol/></w:tblGrid>"]
    for r in range(rows):
        first = cell("merged", restart) if r == 0 else cell("", merged)
        body.append(f"<w:tr>{first}{cell(f'row {r}')}</w:tr>")
    body.append("</w:tbl>")
    return docx_with_body("".join(body))
