"""File loaders: bytes of a .txt/.md/.pdf/.docx/.html file -> segments in reading order.

Every failure is a ``DocumentError`` whose message tells a person what is wrong with the file.
"""

from __future__ import annotations

import io
import logging
import re
import zipfile
from collections.abc import Callable
from pathlib import PurePosixPath, PureWindowsPath

from ingest.errors import DocumentError, InvalidNameError, UnsupportedTypeError
from ingest.models import Segment

logger = logging.getLogger(__name__)

ACCEPTED_TYPES = (".txt", ".md", ".markdown", ".pdf", ".docx", ".html", ".htm")
_MD_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
_MD_TABLE_ROW = re.compile(r"^\s*\|.*\|\s*$")


def check_filename(filename: str) -> str:
    """Refuse absolute paths and ``..``; return the name in POSIX form (sub-folders allowed)."""
    if not filename or "\x00" in filename or len(filename) > 512:
        raise InvalidNameError(f"invalid filename {filename!r}: empty, too long or has NUL")
    win = PureWindowsPath(filename)
    if win.is_absolute() or win.drive or filename.startswith(("/", "\\")):
        raise InvalidNameError(f"invalid filename {filename!r}: absolute paths are not accepted")
    parts = [p for p in re.split(r"[\\/]+", filename) if p not in ("", ".")]
    if not parts or any(p == ".." for p in parts):
        raise InvalidNameError(f"invalid filename {filename!r}: `..` is not allowed in a name")
    return str(PurePosixPath(*parts))


def file_type(filename: str) -> str:
    suffix = PurePosixPath(filename.lower()).suffix
    if suffix not in ACCEPTED_TYPES:
        raise UnsupportedTypeError(
            f"unsupported file type {suffix or '(none)'!r} for {filename!r}; "
            f"accepted: {', '.join(ACCEPTED_TYPES)}"
        )
    return {".markdown": ".md", ".htm": ".html"}.get(suffix, suffix)


def decode_text(data: bytes, filename: str) -> str:
    """UTF-8 (with or without BOM), GB18030/GBK, else charset-normalizer's best guess."""
    if not data.strip():
        raise DocumentError(f"{filename}: the file is empty")
    if data.startswith(b"\xef\xbb\xbf"):
        return data[3:].decode("utf-8", errors="replace")
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16")
    if b"\x00" in data[:8192]:
        raise DocumentError(
            f"{filename}: looks like a binary file (NUL bytes), not text; "
            "upload the original document format instead"
        )
    for encoding in ("utf-8", "gb18030"):
        try:
            text = data.decode(encoding)
        except UnicodeDecodeError:
            continue
        if _mostly_text(text):
            return text
        break
    from charset_normalizer import from_bytes

    best = from_bytes(data).best()
    if best is not None:
        text = str(best)
        if _mostly_text(text):
            return text
    raise DocumentError(
        f"{filename}: not readable as text (unknown encoding or binary content); "
        "save it as UTF-8 and upload again"
    )


def _mostly_text(text: str) -> bool:
    if not text:
        return False
    bad = sum(1 for ch in text if (ord(ch) < 32 and ch not in "\t\n\r\f") or ch == "\ufffd")
    return bad / len(text) < 0.01


def load_text(data: bytes, filename: str) -> list[Segment]:
    text = decode_text(data, filename)
    return [Segment(line) for line in text.splitlines() if line.strip()]


def load_markdown(data: bytes, filename: str) -> list[Segment]:
    text = decode_text(data, filename)
    segments: list[Segment] = []
    in_fence = False
    for line in text.splitlines():
        if line.strip().startswith("```"):
            in_fence = not in_fence
        if not line.strip():
            continue
        match = None if in_fence else _MD_HEADING.match(line)
        if match:
            segments.append(Segment(line, heading_level=len(match.group(1))))
        elif not in_fence and _MD_TABLE_ROW.match(line):
            segments.append(Segment(line, table_row=True))
        else:
            segments.append(Segment(line))
    return segments


def load_pdf(data: bytes, filename: str) -> list[Segment]:
    if not data.strip():
        raise DocumentError(f"{filename}: the file is empty")
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            try:
                opened = bool(reader.decrypt(""))
            except Exception:
                opened = False
            if not opened:
                raise DocumentError(
                    f"{filename}: the PDF is encrypted with a password; "
                    "remove the protection and upload again"
                )
        segments: list[Segment] = []
        for number, page in enumerate(reader.pages, start=1):
            text = page.extract_text() or ""
            segments.extend(
                Segment(line, page=number) for line in text.splitlines() if line.strip()
            )
    except DocumentError:
        raise
    except (PdfReadError, ValueError, KeyError, TypeError, OSError) as exc:
        raise DocumentError(f"{filename}: not a readable PDF ({exc}); check the file") from exc
    if not segments:
        raise DocumentError(
            f"{filename}: the PDF has no text layer (a scan?); run OCR on it and upload again"
        )
    return segments


def _check_zip(data: bytes, filename: str, max_total: int, max_ratio: float) -> None:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as exc:
        raise DocumentError(
            f"{filename}: not a valid DOCX (a DOCX is a zip archive; this is not one)"
        ) from exc
    total = 0
    with archive:
        for info in archive.infolist():
            total += info.file_size
            ratio = info.file_size / max(info.compress_size, 1)
            if total > max_total or (info.file_size > 1_000_000 and ratio > max_ratio):
                raise DocumentError(
                    f"{filename}: refused as a zip bomb (member {info.filename!r} unpacks to "
                    f"{info.file_size} bytes, ratio {ratio:.0f}); limits: {max_total} bytes, "
                    f"ratio {max_ratio:.0f}"
                )


def load_docx(
    data: bytes, filename: str, max_total: int = 200 * 1024 * 1024, max_ratio: float = 200.0
) -> list[Segment]:
    if not data.strip():
        raise DocumentError(f"{filename}: the file is empty")
    _check_zip(data, filename, max_total, max_ratio)
    import docx
    from docx.table import Table
    from docx.text.paragraph import Paragraph

    try:
        document = docx.Document(io.BytesIO(data))
    except Exception as exc:
        raise DocumentError(f"{filename}: not a readable DOCX ({exc}); check the file") from exc
    segments: list[Segment] = []
    for block in document.element.body.iterchildren():
        tag = block.tag.rsplit("}", 1)[-1]
        if tag == "p":
            para = Paragraph(block, document)
            text = para.text.strip()
            if not text:
                continue
            style = (para.style.name if para.style is not None else "") or ""
            level = _heading_level(style)
            segments.append(Segment(text, heading_level=level))
        elif tag == "tbl":
            table = Table(block, document)
            for row in table.rows:
                cells: list[str] = []
                for cell in row.cells:
                    value = cell.text.strip().replace("\n", " ")
                    if not cells or cells[-1] != value:  # merged cells repeat
                        cells.append(value)
                if any(cells):
                    segments.append(Segment("| " + " | ".join(cells) + " |", table_row=True))
    if not segments:
        raise DocumentError(f"{filename}: the DOCX holds no text")
    return segments


def _heading_level(style: str) -> int | None:
    match = re.match(r"^(?:Heading|标题)\s*(\d)$", style.strip(), re.IGNORECASE)
    if match:
        return int(match.group(1))
    if style.strip().lower() == "title":
        return 1
    return None


def load_html(data: bytes, filename: str) -> list[Segment]:
    text = decode_text(data, filename)
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(text, "html.parser")
    for tag in soup(["script", "style", "noscript", "template"]):
        tag.decompose()
    segments: list[Segment] = []
    blocks = ["h1", "h2", "h3", "h4", "h5", "h6", "p", "li", "tr", "pre", "blockquote", "dt", "dd"]
    found = soup.find_all(blocks)
    for element in found:
        if element.find_parent(blocks) is not None and element.name != "tr":
            continue  # nested: its text is in the outer block
        name = element.name
        if name == "tr":
            cells = [c.get_text(" ", strip=True) for c in element.find_all(["td", "th"])]
            if any(cells):
                segments.append(Segment("| " + " | ".join(cells) + " |", table_row=True))
            continue
        value = element.get_text(" ", strip=True)
        if not value:
            continue
        level = int(name[1]) if name in {"h1", "h2", "h3", "h4", "h5", "h6"} else None
        segments.append(Segment(value, heading_level=level))
    if not found:  # no block structure: plain text lines
        body = soup.get_text("\n")
        segments = [Segment(line.strip()) for line in body.splitlines() if line.strip()]
    if not segments:
        raise DocumentError(f"{filename}: the HTML page holds no text")
    return segments


def load(
    data: bytes,
    filename: str,
    *,
    max_unzipped_bytes: int = 200 * 1024 * 1024,
    max_zip_ratio: float = 200.0,
) -> list[Segment]:
    """Read one file. Raises ``UnsupportedTypeError`` or ``DocumentError``."""
    kind = file_type(filename)
    loaders: dict[str, Callable[[bytes, str], list[Segment]]] = {
        ".txt": load_text,
        ".md": load_markdown,
        ".pdf": load_pdf,
        ".html": load_html,
        ".docx": lambda d, f: load_docx(d, f, max_unzipped_bytes, max_zip_ratio),
    }
    segments = loaders[kind](data, filename)
    if not any(s.text.strip() for s in segments):
        raise DocumentError(f"{filename}: no text found in the file")
    return segments
