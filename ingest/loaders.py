"""File loaders: bytes of a .txt/.md/.pdf/.docx/.html file -> segments in reading order.

Every failure is a ``DocumentError`` whose message tells a person what is wrong with the file.
"""

from __future__ import annotations

import html
import io
import logging
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import PurePosixPath, PureWindowsPath
from typing import TYPE_CHECKING

from ingest.errors import DocumentError, InvalidNameError, UnsupportedTypeError
from ingest.models import Segment

if TYPE_CHECKING:
    from bs4 import Tag

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
    """The text of a .txt/.md/.html file, whatever common encoding it was saved in.

    Tried in this order (the first that fits wins):

    1. a byte order mark: UTF-8, UTF-16 LE/BE or UTF-32 LE/BE;
    2. NUL bytes, which text in one-byte encodings never has: UTF-32 or UTF-16 without a BOM
       (each byte order decoded strictly and scored; the one giving plausible text wins),
       else the file is refused as binary;
    3. UTF-8;
    4. UTF-16 without a BOM and without NUL bytes (text with no ASCII at all, e.g. pure
       Chinese): accepted only when at least 16 characters decode strictly and 95% of them
       are CJK characters or punctuation. GBK bytes read this way fail: their trail bytes
       land on Hangul, private-use and surrogate code points;
    5. GB18030 (a superset of GBK and GB2312);
    6. charset-normalizer's best guess (Big5, Shift_JIS, Latin-1, ...).

    A file whose last character is cut off (an odd trailing byte of UTF-16, half a surrogate
    pair, an incomplete UTF-8 sequence) is read without that character, with a warning in the
    log: losing a partial last character is better than refusing the whole document. Any
    other decoding problem is a ``DocumentError`` that says what the file is not and what to
    do about it.
    """
    if not data.strip():
        raise DocumentError(f"{filename}: the file is empty")
    for bom, codec in _BOMS:
        if data.startswith(bom):
            text = _decode_declared(data[len(bom) :], codec, filename)
            break
    else:
        wide = b"\x00" in data  # one-byte encodings never have NUL bytes
        text = _decode_wide(data, filename) if wide else _decode_narrow(data, filename)
    if not text.strip():
        raise DocumentError(f"{filename}: the file is empty")
    return text


# UTF-32 LE before UTF-16 LE: its BOM starts with UTF-16 LE's
_BOMS = (
    (b"\xff\xfe\x00\x00", "utf-32-le"),
    (b"\x00\x00\xfe\xff", "utf-32-be"),
    (b"\xef\xbb\xbf", "utf-8"),
    (b"\xff\xfe", "utf-16-le"),
    (b"\xfe\xff", "utf-16-be"),
)
_WIDE = ("utf-32-le", "utf-32-be", "utf-16-le", "utf-16-be")
_CANNOT_DECODE = (
    "could not read it as text: it is not UTF-8, UTF-16, UTF-32 or GB18030, and no other "
    "text encoding fits (is it a binary file with a text extension?); save it as UTF-8 and "
    "upload again"
)


def _decode_declared(data: bytes, codec: str, filename: str) -> str:
    """Bytes after a byte order mark: decoded, a few bad characters replaced, else refused."""
    end = _complete_end(data, codec)
    _log_cut(filename, codec, len(data) - end)
    text = data[:end].decode(codec, errors="replace")
    if _mostly_text(text):
        return text
    label = codec[:6].upper()  # UTF-8, UTF-16, UTF-32
    raise DocumentError(
        f"{filename}: could not read it as text: it starts with a {label} byte order mark "
        f"but is not {label} text (invalid bytes or control characters); the file is damaged "
        "or mislabelled: save it again as UTF-8 and upload again"
    )


def _decode_wide(data: bytes, filename: str) -> str:
    """UTF-32 or UTF-16 text without a byte order mark (the data has NUL bytes).

    Each byte order must decode strictly to text without control characters; of those, the
    one whose text is the most plausible wins (ASCII in UTF-16 BE read as LE gives
    CJK-looking characters, all with a zero low byte, which the score counts against).
    """
    sample = data[:65536]
    best: tuple[float, str] | None = None
    for codec in _WIDE:
        text = _strict(sample, codec)
        if not text or not _mostly_text(text):
            continue
        score = _plausible_share(text)
        if score >= 0.9 and (best is None or score > best[0]):
            best = (score, codec)
    text = None if best is None else _strict(data, best[1], filename)
    if text is None:
        raise DocumentError(
            f"{filename}: looks like a binary file (it has NUL bytes and is not UTF-16 or "
            "UTF-32 text), not text; upload the original document format instead"
        )
    return text


def _decode_narrow(data: bytes, filename: str) -> str:
    """Text without NUL bytes: UTF-8, pure-CJK UTF-16, GB18030, then charset-normalizer."""
    text = _strict(data, "utf-8", filename)
    if text is None:
        for codec in ("utf-16-le", "utf-16-be"):
            wide = _strict(data, codec)
            if wide is not None and len(wide) >= 16 and _cjk_share(wide) >= 0.95:
                _log_cut(filename, codec, len(data) - _complete_end(data, codec))
                return wide
        try:
            text = data.decode("gb18030")
        except UnicodeDecodeError:
            text = None
    if text is not None and _mostly_text(text):
        return text
    from charset_normalizer import from_bytes

    best = from_bytes(data).best()
    if best is not None:
        text = str(best)
        if _mostly_text(text):
            return text
    raise DocumentError(f"{filename}: {_CANNOT_DECODE}")


def _strict(data: bytes, codec: str, filename: str | None = None) -> str | None:
    """``data`` decoded strictly, a cut-off last character dropped (logged when ``filename``
    is given), or None."""
    try:
        return data.decode(codec)
    except UnicodeDecodeError:
        end = _complete_end(data, codec)
    if end == len(data):
        return None
    try:
        text = data[:end].decode(codec)
    except UnicodeDecodeError:
        return None
    if filename is not None:
        _log_cut(filename, codec, len(data) - end)
    return text


def _complete_end(data: bytes, codec: str) -> int:
    """Where ``data`` ends without a cut-off last character."""
    if codec == "utf-8":
        try:
            data.decode(codec)
        except UnicodeDecodeError as exc:
            if exc.reason == "unexpected end of data":
                return exc.start
        return len(data)
    unit = 4 if codec.startswith("utf-32") else 2
    end = len(data) - len(data) % unit
    if unit == 2 and end >= 2:  # a high surrogate without its low half
        high = data[end - 1] if codec == "utf-16-le" else data[end - 2]
        if 0xD8 <= high <= 0xDB:
            end -= 2
    return end


def _log_cut(filename: str, codec: str, dropped: int) -> None:
    if dropped:
        logger.warning(
            "event=text_truncated file=%s encoding=%s dropped_bytes=%d note=last character "
            "cut off, read without it",
            filename,
            codec,
            dropped,
        )


def _mostly_text(text: str) -> bool:
    if not text:
        return False
    bad = sum(1 for ch in text if (ord(ch) < 32 and ch not in "\t\n\r\f") or ch == "\ufffd")
    return bad / len(text) < 0.01


def _is_cjk(ch: str) -> bool:
    """A CJK ideograph, kana, CJK or full-width punctuation."""
    code = ord(ch)
    return (
        0x4E00 <= code <= 0x9FFF  # CJK unified ideographs
        or 0x3400 <= code <= 0x4DBF  # extension A
        or 0x3000 <= code <= 0x30FF  # CJK punctuation, kana
        or 0xFF00 <= code <= 0xFFEF  # full-width forms
    )


def _cjk_share(text: str) -> float:
    return sum(1 for ch in text if _is_cjk(ch)) / len(text)


def _plausible_share(text: str) -> float:
    """Share of characters common in documents: printable ASCII and white space, Latin
    letters, general punctuation, CJK. A non-ASCII character whose low byte is zero does not
    count: a run of them is ASCII read in the wrong byte order."""
    return sum(1 for ch in text if _plausible(ch)) / len(text)


def _plausible(ch: str) -> bool:
    code = ord(ch)
    if 32 <= code < 127 or ch in "\t\n\r\f":
        return True
    if not code & 0xFF:
        return False
    return 0xA0 <= code <= 0x24F or 0x2010 <= code <= 0x205E or _is_cjk(ch)


def load_text(data: bytes, filename: str) -> list[Segment]:
    text = decode_text(data, filename)
    return [Segment(line) for line in text.splitlines() if line.strip()]


def load_markdown(data: bytes, filename: str) -> list[Segment]:
    """Lines of a Markdown file; HTML blocks are parsed (tables into rows), inline tags stripped.

    Fenced code blocks are kept verbatim.
    """
    text = decode_text(data, filename)
    lines = text.splitlines()
    segments: list[Segment] = []
    fence: str | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        marker = stripped[:3] if stripped.startswith(("```", "~~~")) else None
        if fence is None and marker is None and _starts_html_block(line):
            end = _html_block_end(lines, i)
            segments.extend(_markdown_html_block("\n".join(lines[i:end])))
            i = end
            continue
        i += 1
        if marker is not None and (fence is None or marker == fence):
            fence = marker if fence is None else None
        elif fence is None:
            line = _strip_inline_html(line)
        if not line.strip():
            continue
        match = None if fence is not None else _MD_HEADING.match(line)
        if match:
            segments.append(Segment(line, heading_level=len(match.group(1))))
        elif fence is None and _MD_TABLE_ROW.match(line):
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


def _check_zip(
    data: bytes, filename: str, max_total: int, max_ratio: float, max_xml: int | None = None
) -> None:
    """Refuse a DOCX before parsing it: not a zip, a zip bomb, or XML too large to parse.

    The sizes are the ones the zip's headers declare; they bound what is read, as Python's
    zipfile stops at the declared size (and fails the CRC check of a member that lies).
    """
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as exc:
        raise DocumentError(
            f"{filename}: not a valid DOCX (a DOCX is a zip archive; this is not one)"
        ) from exc
    total = xml = 0
    largest: zipfile.ZipInfo | None = None
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
            if info.filename.lower().endswith((".xml", ".rels")):
                xml += info.file_size
                if largest is None or info.file_size > largest.file_size:
                    largest = info
    if max_xml is not None and xml > max_xml and largest is not None:
        raise DocumentError(
            f"{filename}: too large to read: its XML parts unpack to {_mb(xml)} "
            f"({largest.filename} alone {_mb(largest.file_size)}), over the limit of "
            f"{_mb(max_xml)} (setting ingest.max_xml_bytes); split the document into smaller "
            "files, or raise the limit if the server has the memory and time for it"
        )


def _mb(size: int) -> str:
    return f"{size / 1_048_576:.1f} MB"


def load_docx(
    data: bytes,
    filename: str,
    max_total: int = 200 * 1024 * 1024,
    max_ratio: float = 200.0,
    max_xml: int | None = None,
) -> list[Segment]:
    if not data.strip():
        raise DocumentError(f"{filename}: the file is empty")
    _check_zip(data, filename, max_total, max_ratio, max_xml)
    import docx
    from docx.table import Table
    from docx.text.paragraph import Paragraph

    try:
        document = docx.Document(io.BytesIO(data))
    except Exception as exc:
        raise DocumentError(f"{filename}: not a readable DOCX ({exc}); check the file") from exc
    segments: list[Segment] = []
    # python-docx looks a paragraph's style up by scanning all styles (~1 ms a paragraph:
    # minutes for a long document); the levels are read once per style id instead
    levels: dict[str | None, int | None] = {}
    for block in document.element.body.iterchildren():
        tag = block.tag.rsplit("}", 1)[-1]
        if tag == "p":
            para = Paragraph(block, document)
            text = para.text.strip()
            if not text:
                continue
            style_id = block.style
            if style_id not in levels:
                style = para.style
                levels[style_id] = _heading_level((style.name if style is not None else "") or "")
            segments.append(Segment(text, heading_level=levels[style_id]))
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

    segments = _html_segments(BeautifulSoup(text, "html.parser"))
    if not segments:
        raise DocumentError(f"{filename}: the HTML page holds no text")
    return segments


# --- HTML (pages, and HTML blocks inside Markdown) -----------------------------------------

_HTML_BLOCKS = ["h1", "h2", "h3", "h4", "h5", "h6", "p", "li", "pre", "blockquote", "dt", "dd"]
_HEADING_TAGS = ["h1", "h2", "h3", "h4", "h5", "h6"]
# CommonMark's HTML block start conditions 1 and 6 (a line opening one of these tags)
_HTML_RAW_TAGS = frozenset({"pre", "script", "style", "textarea"})
_HTML_BLOCK_TAGS = _HTML_RAW_TAGS | frozenset(
    re.findall(
        r"\w+",
        "address article aside base basefont blockquote body caption center col colgroup dd "
        "details dialog dir div dl dt fieldset figcaption figure footer form frame frameset h1 h2 "
        "h3 h4 h5 h6 head header hr html iframe legend li link main menu menuitem nav noframes ol "
        "optgroup option p param search section summary table tbody td tfoot th thead title tr "
        "track ul",
    )
)
_HTML_INLINE_TAGS = frozenset(
    re.findall(
        r"\w+",
        "a abbr b bdi bdo big br cite code data del dfn em font i img ins kbd mark q rp rt ruby s "
        "samp small span strike strong sub sup time tt u var wbr",
    )
)
_HTML_BLOCK_START = re.compile(r"^ {0,3}(?:<!--|</?([A-Za-z][A-Za-z0-9]*)(?=[\s/>]|$))")
_INLINE_TAG = re.compile(r"<!--.*?-->|</?([A-Za-z][A-Za-z0-9]*)(?:\s[^<>]*)?/?>")
_ENTITY = re.compile(r"&(?:#[0-9]{1,7}|#[xX][0-9A-Fa-f]{1,6}|[A-Za-z][A-Za-z0-9]{1,31});")
_CODE_SPAN = re.compile(r"(`+[^`]*`+)")
_AUTOLINK = re.compile(r"<((?:https?|ftp)://[^\s<>]+|mailto:[^\s<>]+)>", re.I)


def _starts_html_block(line: str) -> bool:
    match = _HTML_BLOCK_START.match(line)
    return match is not None and (match.group(1) or "").lower() in {"", *_HTML_BLOCK_TAGS}


def _html_block_end(lines: list[str], start: int) -> int:
    """The index after the last line of the HTML block starting at ``lines[start]``.

    CommonMark's rules: a comment ends at ``-->``, ``<pre>``/``<script>``/... at their closing
    tag, any other block at a blank line, except that an open ``<table>`` runs to its end.
    """
    first = lines[start]
    match = _HTML_BLOCK_START.match(first)
    name = (match.group(1) or "").lower() if match else ""
    if not name or name in _HTML_RAW_TAGS:
        close = f"</{name}" if name else "-->"
        begin = first.find("<!--") + 4 if not name else 0
        for j in range(start, len(lines)):
            if close in lines[j].lower()[begin if j == start else 0 :]:
                return j + 1
        return len(lines)
    depth = 0
    for j in range(start, len(lines)):
        if not lines[j].strip() and depth <= 0:
            return j
        lower = lines[j].lower()
        depth += len(re.findall(r"<table[\s>]", lower)) - lower.count("</table")
    if depth <= 0:
        return len(lines)
    # a table that is never closed: the block ends at the first blank line
    return next((j for j in range(start, len(lines)) if not lines[j].strip()), len(lines))


def _markdown_html_block(fragment: str) -> list[Segment]:
    """An HTML block of a Markdown file as segments; its headings written as Markdown ones."""
    from bs4 import BeautifulSoup

    segments = _html_segments(BeautifulSoup(fragment, "html.parser"))
    for seg in segments:
        if seg.heading_level is not None:
            seg.text = "#" * seg.heading_level + " " + seg.text
    return segments


def _strip_inline_html(line: str) -> str:
    """A Markdown line without its HTML tags (``<br>`` becomes a space) and entities decoded;
    code spans are left as they are."""
    if "<" not in line and "&" not in line:
        return line
    parts = _CODE_SPAN.split(line)
    for k in range(0, len(parts), 2):  # the odd parts are code spans
        stripped = _AUTOLINK.sub(r"\1", parts[k])
        stripped = _INLINE_TAG.sub(_inline_tag_text, stripped)
        stripped = _ENTITY.sub(lambda m: html.unescape(m.group()), stripped)
        if stripped != parts[k]:
            parts[k] = re.sub(r"(?<=\S)[ \t\xa0]{2,}", " ", stripped.replace("\xa0", " "))
    return "".join(parts).rstrip()


def _inline_tag_text(match: re.Match[str]) -> str:
    name = (match.group(1) or "").lower()
    if match.group().startswith("<!--"):
        return ""
    if name not in _HTML_INLINE_TAGS and name not in _HTML_BLOCK_TAGS:
        return match.group()  # not HTML: `List<T>`, an autolink, ...
    return " " if name == "br" else ""


def _html_segments(root: Tag) -> list[Segment]:
    """Blocks of parsed HTML in reading order: headings, paragraphs, list items, table rows."""
    for tag in root(["script", "style", "noscript", "template"]):
        tag.decompose()
    segments: list[Segment] = []
    found = root.find_all([*_HTML_BLOCKS, "table", "tr"])
    for element in found:
        in_table = element.find_parent("table") is not None
        if element.name == "table":
            if not in_table:  # a nested table is read with the cell holding it
                segments.extend(_table_segments(element))
            continue
        if in_table:
            continue
        if element.name == "tr":  # a row without a table (a cut fragment)
            segments.extend(_table_segments(element))
            continue
        if element.find_parent(_HTML_BLOCKS) is not None:
            continue  # nested: its text is in the outer block
        value = _block_text(element)
        if not value:
            continue
        name = element.name
        level = int(name[1]) if name in _HEADING_TAGS else None
        segments.append(Segment(value, heading_level=level))
    if not found:  # no block structure: plain text lines
        body = root.get_text("\n")
        segments = [Segment(line.strip()) for line in body.splitlines() if line.strip()]
    return segments


def _block_text(element: Tag) -> str:
    if element.find("table") is None:
        return element.get_text(" ", strip=True)
    from bs4.element import NavigableString, PreformattedString

    return " ".join(  # the tables inside are rows of their own
        text.strip()
        for text in element.find_all(string=True)
        if isinstance(text, NavigableString)
        and not isinstance(text, PreformattedString)
        and text.strip()
        and text.find_parent("table") is None
    )


# --- tables ---------------------------------------------------------------------------------

_MARKS = {"√", "✓", "✔", "☑", "✅"}  # a check: "applies"
_NO_MARKS = {"", "×", "✗", "✘", "✕", "-", "—", "/", "空"}  # an empty check cell
_LEVEL_NAME = re.compile(
    r"^(?:第?[一二三四五六七八九十\d]+级|[SAG]\d(?:[SAG]\d)*|(?:level|tier)\s*\d+)$", re.I
)
_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")


@dataclass(eq=False)
class _Cell:
    text: str
    header: bool  # a <th>
    heading_level: int | None  # a cell holding an <h1>..<h6>: a heading over the rows it spans
    row: int  # the row the cell starts in


def _table_segments(table: Tag) -> list[Segment]:
    """A table (or a lone ``<tr>``) as segments: each body row one line of text, table_row.

    Row and column spans are resolved (a cell with rowspan N belongs to the next N rows). Cells
    holding a heading (``<h3>`` ...) become heading segments when they start, so that the rows
    under them carry them as their heading path. A row reads ``header：value；header：value``;
    with one text column the row is that text, and columns of check marks (√) are listed by
    the names of the marked columns: ``text（适用等级：二级、三级）``. A table without a
    header row keeps the ``| a | b |`` form. Repeated rows (same headings, same text) are
    dropped.
    """
    rows = [table] if table.name == "tr" else _own_rows(table)
    grid = _table_grid(rows)
    if not grid:
        return []
    cjk = any(_CJK.search(cell.text) for line in grid for cell in line if cell is not None)
    head = 0
    while head < len(grid) and _is_header_row(grid[head], rows[head]):
        head += 1
    names: list[list[str]] = [[] for _ in grid[0]]
    for line in grid[:head]:
        for col, cell in enumerate(line):
            if cell is not None and cell.text and cell.text not in names[col]:
                names[col].append(cell.text)
    body = range(head, len(grid))
    if head and head == len(grid):  # a header and nothing under it
        body = range(head - 1, len(grid))
        head = 0
    marks = _mark_columns(grid, body, names) if head else []
    text_columns = {
        col
        for r in body
        for col, cell in enumerate(grid[r])
        if col not in marks and cell is not None and cell.heading_level is None and cell.text
    }
    label = _marks_label([names[col] for col in marks], cjk)

    segments: list[Segment] = []
    path: list[tuple[int, str]] = []  # the headings over the current row
    unsent: list[tuple[int, str]] = []  # ... of which not yet emitted (no row under them yet)
    seen: set[tuple[tuple[tuple[int, str], ...], str]] = set()
    for r in body:
        line = grid[r]
        if head and all(c is None or c.text in names[col][-1:] for col, c in enumerate(line)):
            continue  # the header repeated (or an empty row)
        fields: list[tuple[str, str]] = []
        marked: list[str] = []
        for col, cell in enumerate(line):
            if cell is None or (col and line[col - 1] is cell):
                continue
            if cell.heading_level is not None:
                if cell.row == r:
                    level = cell.heading_level
                    path = [h for h in path if h[0] < level] + [(level, cell.text)]
                    unsent = [h for h in unsent if h[0] < level] + [(level, cell.text)]
                continue
            if col in marks:
                if cell.text in _MARKS:
                    marked.append(names[col][-1])
                continue
            wide = col + 1 < len(line) and line[col + 1] is cell  # spans several columns
            header = "" if wide or not names[col] else "/".join(names[col])
            fields.append((header, cell.text))
        if not head:
            text = "| " + " | ".join(value for _, value in fields) + " |"
            if not any(value for _, value in fields):
                continue
        else:
            fields = [(h, v) for h, v in fields if v]
            text = _row_text(fields, marked, label, cjk, single=len(text_columns) == 1)
            if not text:
                continue
        key = (tuple(path), text)
        if key in seen:
            continue
        seen.add(key)
        segments.extend(Segment(title, heading_level=level) for level, title in unsent)
        unsent = []
        segments.append(Segment(text, table_row=True))
    return segments


# the marks ``_row_text`` puts after a one-sentence row: "（适用等级：三级、四级）",
# "(applies to: 3, 4)"
_ROW_MARKS = re.compile(r"(?:（([^（）：\n]+)：([^（）\n]+)）| \(([^()\n:]+): ([^()\n]+)\))\s*$")


def row_marks(row: str) -> set[str]:
    """The names of the marked columns a row read by ``_row_text`` ends with
    ("…（适用等级：三级、四级）" -> {"三级", "四级"}); empty for a row without them."""
    found = _ROW_MARKS.search(row)
    if not found:
        return set()
    listed = found.group(2) if found.group(2) is not None else found.group(4)
    return {name.strip() for name in re.split(r"[、,]", listed) if name.strip()}


def row_requirement(row: str) -> str:
    """The row without the marks ``_row_text`` put after it, nor its final full stop."""
    found = _ROW_MARKS.search(row)
    return (row[: found.start()] if found else row).strip().rstrip("。.；;")


def _row_text(
    fields: list[tuple[str, str]], marked: list[str], label: str, cjk: bool, *, single: bool
) -> str:
    colon, sep, comma = ("：", "；", "、") if cjk else (": ", "; ", ", ")
    listed = comma.join(marked)
    if single and len(fields) == 1 and _sentence(fields[0][1]):
        text = fields[0][1]  # the row's text (no "说明：" before it), the marks after it
        if not listed:
            return text
        return f"{text}（{label}：{listed}）" if cjk else f"{text} ({label}: {listed})"
    parts = [f"{name}{colon}{value}" if name and name != value else value for name, value in fields]
    if listed:
        parts.append(f"{label}{colon}{listed}")
    return sep.join(parts)


def _sentence(text: str) -> bool:
    """Text that reads on its own, without its column's name before it."""
    return len(text) >= 20 or re.search(r"[。！？；.!?;][”’\"')）)]*$", text) is not None


def _own_rows(table: Tag) -> list[Tag]:
    return [tr for tr in table.find_all("tr") if tr.find_parent("table") is table]


def _table_grid(rows: list[Tag]) -> list[list[_Cell | None]]:
    """The rows' cells on a grid, spans resolved, columns that always share one cell merged."""
    grid: list[list[_Cell | None]] = []
    spanning: dict[int, tuple[_Cell, int]] = {}  # column -> (cell, rows it still covers)

    def carry(line: list[_Cell | None]) -> None:
        cell, left = spanning.pop(len(line))
        line.append(cell)
        if left > 1:
            spanning[len(line) - 1] = (cell, left - 1)

    for r, tr in enumerate(rows):
        line: list[_Cell | None] = []
        for td in tr.find_all(["td", "th"], recursive=False):
            while len(line) in spanning:
                carry(line)
            heading = td.find(_HEADING_TAGS)
            cell = _Cell(
                text=_cell_text(td),
                header=td.name == "th",
                heading_level=int(heading.name[1]) if heading is not None else None,
                row=r,
            )
            rowspan = _span(td.get("rowspan"), len(rows) - r)
            for _ in range(_span(td.get("colspan"), 1000)):
                if rowspan > 1:
                    spanning[len(line)] = (cell, rowspan - 1)
                line.append(cell)
        while spanning and max(spanning) >= len(line):
            if len(line) in spanning:
                carry(line)
            else:
                line.append(None)
        grid.append(line)
    width = max((len(line) for line in grid), default=0)
    for line in grid:
        line.extend([None] * (width - len(line)))
    keep = [
        col
        for col in range(width)
        if col == 0 or any(line[col] is not line[col - 1] for line in grid)
    ]
    return [[line[col] for col in keep] for line in grid]


def _span(value: object, limit: int) -> int:
    """A rowspan/colspan attribute as a number in 1..limit (0 = the rest of the table)."""
    match = re.match(r"\s*(\d+)", str(value or ""))  # lenient: `rowspan=5"` is 5
    number = int(match.group(1)) if match else 1
    return limit if number == 0 else max(1, min(number, limit))


def _cell_text(td: Tag) -> str:
    from bs4 import Tag
    from bs4.element import NavigableString, PreformattedString

    parts: list[str] = []
    for node in td.descendants:
        if isinstance(node, Tag) and (node.name == "br" or node.name in _HTML_BLOCK_TAGS):
            parts.append(" ")
        elif isinstance(node, NavigableString) and not isinstance(node, PreformattedString):
            parts.append(str(node))
    return " ".join("".join(parts).split())


def _is_header_row(line: list[_Cell | None], tr: Tag) -> bool:
    """A row of <th> (or in <thead>); not a row that is one heading cell (a section title)."""
    cells = list({id(cell): cell for cell in line if cell is not None}.values())
    if not cells or (len(cells) == 1 and cells[0].heading_level is not None):
        return False
    return all(cell.header for cell in cells) or tr.find_parent("thead") is not None


def _mark_columns(grid: list[list[_Cell | None]], body: range, names: list[list[str]]) -> list[int]:
    """The columns whose body cells are all check marks (√) or empty, at least one marked."""
    columns = []
    for col, name in enumerate(names):
        values = {
            cell.text
            for r in body
            if (cell := grid[r][col]) is not None and cell.heading_level is None
        }
        if name and values & _MARKS and values <= _MARKS | _NO_MARKS:
            columns.append(col)
    return columns


def _marks_label(names: list[list[str]], cjk: bool) -> str:
    """What the marked columns are: their common group header, else 适用等级 / 适用."""
    groups = {tuple(n[:-1]) for n in names}
    if len(groups) == 1 and (group := next(iter(groups))):
        return group[-1]
    if not cjk:
        return "applies to"
    return "适用等级" if names and all(_LEVEL_NAME.match(n[-1]) for n in names) else "适用"


def load(
    data: bytes,
    filename: str,
    *,
    max_unzipped_bytes: int = 200 * 1024 * 1024,
    max_zip_ratio: float = 200.0,
    max_xml_bytes: int | None = 32 * 1024 * 1024,
) -> list[Segment]:
    """Read one file. Raises ``UnsupportedTypeError`` or ``DocumentError``."""
    kind = file_type(filename)
    loaders: dict[str, Callable[[bytes, str], list[Segment]]] = {
        ".txt": load_text,
        ".md": load_markdown,
        ".pdf": load_pdf,
        ".html": load_html,
        ".docx": lambda d, f: load_docx(d, f, max_unzipped_bytes, max_zip_ratio, max_xml_bytes),
    }
    segments = loaders[kind](data, filename)
    if not any(s.text.strip() for s in segments):
        raise DocumentError(f"{filename}: no text found in the file")
    return segments
