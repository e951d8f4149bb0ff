"""GET / and /web/{asset}: the static web page (no API key needed: it holds no data; the page
sends the key the user enters with each API call)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from app.api.errors import APIError

router = APIRouter(tags=["web"], include_in_schema=False)

WEB_DIR = Path(__file__).resolve().parents[2] / "web"
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
# the page talks to its own origin only: no CDN, font or analytics request can leave it
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'; form-action 'none'"
)
_HEADERS = {
    "Cache-Control": "no-cache",
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def _assets() -> dict[str, Path]:
    """The files the page may be served: by name, never by a client-given path."""
    return {p.name: p for p in WEB_DIR.iterdir() if p.is_file() and p.suffix in _TYPES}


def _file(path: Path) -> FileResponse:
    return FileResponse(path, media_type=_TYPES[path.suffix], headers=_HEADERS)


@router.get("/")
def index() -> FileResponse:
    return _file(WEB_DIR / "index.html")


@router.get("/web/{name}")
def asset(name: str) -> FileResponse:
    path = _assets().get(name)
    if path is None:
        raise APIError(404, f"no such asset: {name}", type="not_found_error", code="not_found")
    return _file(path)


@router.get("/favicon.ico")
def favicon() -> FileResponse:
    return _file(WEB_DIR / "favicon.svg")
